//! x86-64: the CPU set-up the guest needs and nothing else — GDT/TSS, IDT, page tables,
//! local APIC, port I/O. Everything else in the guest is architecture-independent.

pub mod apic;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod interrupts;
pub mod paging;
pub mod port;

/// Install the guest's own GDT and IDT.
pub fn init_cpu() {
    gdt::init();
    idt::init();
}
