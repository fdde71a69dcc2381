//! What the VMM and the guest agent share.
//!
//! Everything here is `no_std`, allocation-free and little-endian: fixed-size records that
//! both sides encode and decode by hand. Decoding is total — any byte string gives a value
//! or an error, never a panic — because the VMM decodes what an untrusted guest wrote.
//!
//! - [`layout`]: the guest-physical address map (boot structures, image, MMIO, ports);
//! - [`boot`]: the versioned boot-information block the VMM writes for the guest;
//! - [`msg`]: the agent channel's message set;
//! - [`agent_config`]: the agent device's configuration space (the regions, for drivers
//!   that have no boot information, such as Linux's);
//! - [`page`]: the self-checking contents of workload pages, so the host can verify them;
//! - [`capture`]: the frame-capture device's commands and test pattern.

#![cfg_attr(not(test), no_std)]

pub mod agent_config;
pub mod boot;
pub mod capture;
pub mod layout;
pub mod msg;
pub mod page;
mod wire;

pub use wire::{DecodeError, fnv1a};
