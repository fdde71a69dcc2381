//! Legacy port-I/O devices: the serial console, the platform ports, the CMOS clock, and the
//! power-off and reset paths of Linux guests.
pub mod platform;
pub mod power;
pub mod rtc;
pub mod serial;
