//! The CMA agent channel: a virtio device of our own between the VMM and the guest agent.
//!
//! - [`channel`]: the callers' side (send a request, wait for its answer);
//! - [`device`]: the queues (requests out, answers and Migrate copies in);
//! - [`event_handler`]: the agent thread's event-loop glue.

pub mod channel;
pub mod device;
pub mod event_handler;

pub use channel::{AgentChannel, AgentError};
pub use device::{AGENT_DEVICE_ID, AgentDevice};
