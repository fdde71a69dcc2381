//! Device drivers.
pub mod agent;
pub mod virtio;
