//! The frame-capture device: the CMA client that needs contiguous buffers.
//!
//! - [`device`]: commands, buffers as CMA grants, frames;
//! - [`event_handler`]: the device thread's event-loop glue.

pub mod device;
pub mod event_handler;

pub use device::{CaptureDevice, CaptureMetrics};
