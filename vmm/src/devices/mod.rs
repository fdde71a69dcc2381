//! Devices: the I/O buses, legacy port devices, and virtio devices.
pub mod bus;
pub mod legacy;
pub mod virtio;
