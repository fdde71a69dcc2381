//! The memory manager's hardware: guest-physical memory through the identity map, and the
//! workload's window through our own 4 KiB page tables.

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use guest_agent::mm::{Mmu, Pfn, PhysMem};
use guest_agent::workload::page_va;
use protocol::layout::PAGE_SIZE;

use crate::arch::paging::PageTables;

/// Direct map + page tables.
pub struct KernelHw {
    tables: PageTables,
}

impl KernelHw {
    /// Use `tables` (already active, with the workload window prepared).
    pub fn new(tables: PageTables) -> Self {
        KernelHw { tables }
    }
}

impl PhysMem for KernelHw {
    fn read_u64(&self, gpa: u64) -> u64 {
        // SAFETY: all RAM is identity-mapped; callers pass 8-byte aligned RAM addresses
        // they own (allocator metadata, manifest, frames being migrated).
        unsafe { read_volatile(gpa as *const u64) }
    }

    fn write_u64(&mut self, gpa: u64, value: u64) {
        // SAFETY: as `read_u64`.
        unsafe { write_volatile(gpa as *mut u64, value) }
    }

    fn copy_page(&mut self, src: Pfn, dst: Pfn) {
        // `rep movsq`: KVM's instruction emulator, which runs this guest on nested KVM,
        // handles one element per step, so eight bytes per step beat `rep movsb` 8 to 1.
        // SAFETY: two distinct identity-mapped RAM frames chosen by the allocator.
        unsafe {
            asm!("rep movsq",
                 inout("rcx") PAGE_SIZE / 8 => _,
                 inout("rsi") src.gpa() => _,
                 inout("rdi") dst.gpa() => _,
                 options(nostack, preserves_flags));
        }
    }
}

impl Mmu for KernelHw {
    fn map(&mut self, id: u32, pfn: Pfn) {
        self.tables.map_4k(page_va(id), pfn.gpa());
    }

    fn unmap(&mut self, id: u32) {
        self.tables.unmap_4k(page_va(id));
    }

    fn read(&self, id: u32, offset: usize) -> u64 {
        // SAFETY: the workload reads only pages it has mapped, at offsets inside the page.
        unsafe { read_volatile((page_va(id) + offset as u64) as *const u64) }
    }

    fn write(&mut self, id: u32, offset: usize, value: u64) {
        // SAFETY: as `read`.
        unsafe { write_volatile((page_va(id) + offset as u64) as *mut u64, value) }
    }
}
