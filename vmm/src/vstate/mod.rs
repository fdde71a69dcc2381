//! KVM state, one concept per file: guest memory, memory slots, the VM, vCPUs.
pub mod memory;
pub mod slots;
pub mod vcpu;
pub mod vm;
