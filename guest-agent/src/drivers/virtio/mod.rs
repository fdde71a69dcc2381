//! Virtio drivers: the transport and the split virtqueue, apart from any device.
pub mod queue;
pub mod transport;
