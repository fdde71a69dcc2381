//! Legacy port-I/O devices: the serial console and the platform ports.
pub mod platform;
pub mod serial;
