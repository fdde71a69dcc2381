//! Device drivers.
pub mod agent;
pub mod capture;
pub mod virtio;
