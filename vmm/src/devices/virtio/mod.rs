//! Virtio devices on the virtio-mmio transport.
pub mod agent;
pub mod capture;
pub mod mmio;
