//! cma-vmm: a minimal KVM VMM whose guest memory holds CMA regions.
//!
//! - [`config`]: the VM configuration in its three forms, validated and placed;
//! - [`vstate`]: guest memory, KVM memory slots, the VM, vCPUs;
//! - [`arch`], [`boot`]: 64-bit boot state, the guest image and boot information;
//! - [`devices`]: port-I/O and MMIO buses, the serial console, platform ports;
//! - [`grant`]: granting chunks to devices: eviction by the guest agent, revocation, scrub
//!   (the allocator itself is the [`cma`] crate; its claim and release hooks are here);
//! - [`machine`]: build, run and stop a VM;
//! - [`occupancy`]: a picture of each region's occupancy (free, populated, granted, pinned);
//! - [`cli`], [`commands`]: the `cma-vmm` command line;
//! - [`api`], [`ctl`]: the runtime control API on a Unix socket, its client, metrics;
//! - [`sync`]: small helpers (a mutex lock that survives poisoning).

pub mod api;
pub mod arch;
pub mod bench;
pub mod boot;
pub mod cli;
pub mod commands;
pub mod config;
pub mod ctl;
pub mod devices;
pub mod exercise;
pub mod grant;
pub mod host_cache;
pub mod integrity;
pub mod machine;
pub mod occupancy;
pub mod progress;
pub mod soak;
pub mod stop;
pub mod sync;
pub mod vstate;
