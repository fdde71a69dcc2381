//! The reference guest's hardware-independent parts, unit-tested natively on the host.
//!
//! The kernel binary (`src/main.rs`) adds the x86-64 and virtio layers on top.

#![cfg_attr(not(test), no_std)]

pub mod agent;
pub mod cmdline;
pub mod mm;
pub mod workload;
