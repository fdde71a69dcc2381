//! cma-vmm: a minimal KVM VMM whose guest memory holds CMA regions.
pub mod config;
