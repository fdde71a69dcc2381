//! The guest's own page tables.
//!
//! ```text
//!  PML4[0] ── PDPT ── PD(0..n) ── 2 MiB pages: identity map of [0, 4 GiB) and of all RAM
//!                                  (the MMIO hole [3 GiB, 4 GiB) uncached)
//!  PML4[i] ── PDPT ── PD ── PT ── 4 KiB pages: the workload's movable pages, one per
//!                                  logical page id, remapped when a page migrates
//! ```
//! Page-table pages come from the boot allocator, so they are never movable.

use protocol::layout::{MMIO_HOLE_END, MMIO_HOLE_START, PAGE_SIZE};

use super::cpu;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const TWO_MIB: u64 = 2 << 20;

/// Hands out zeroed, identity-mapped physical pages for page tables.
pub trait FrameSource {
    /// A zeroed page, or `None` when out of memory.
    fn zeroed_page(&mut self) -> Option<u64>;
}

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// No page for a page table.
    OutOfMemory,
}

/// The page-table root and the operations on it.
pub struct PageTables {
    pml4: u64,
}

fn table(pa: u64) -> *mut u64 {
    pa as *mut u64
}

fn read(pa: u64, index: u64) -> u64 {
    // SAFETY: `pa` is a page-table page we allocated, identity-mapped; index < 512.
    unsafe { core::ptr::read_volatile(table(pa).add(index as usize)) }
}

fn write(pa: u64, index: u64, value: u64) {
    // SAFETY: as `read`.
    unsafe { core::ptr::write_volatile(table(pa).add(index as usize), value) };
}

impl PageTables {
    /// Identity-map `[0, 4 GiB)` and every RAM byte up to `ram_top` with 2 MiB pages.
    pub fn new(ram_top: u64, frames: &mut dyn FrameSource) -> Result<Self, MapError> {
        let pml4 = frames.zeroed_page().ok_or(MapError::OutOfMemory)?;
        let pt = PageTables { pml4 };
        let top = ram_top.max(MMIO_HOLE_END);
        let mut va = 0;
        while va < top {
            let pd = pt.next_level(pml4, va >> 39, frames)?;
            let pd = pt.next_level(pd, (va >> 30) & 511, frames)?;
            let mut flags = PRESENT | WRITABLE | HUGE;
            if (MMIO_HOLE_START..MMIO_HOLE_END).contains(&va) {
                flags |= CACHE_DISABLE | WRITE_THROUGH;
            }
            write(pd, (va >> 21) & 511, va | flags);
            va += TWO_MIB;
        }
        Ok(pt)
    }

    /// Switch the CPU to these tables.
    pub fn activate(&self) {
        // SAFETY: the tables identity-map all RAM, which holds the running image, stacks
        // and data, exactly as the boot tables did.
        unsafe { cpu::write_cr3(self.pml4) };
    }

    /// The table `parent[index]` points to, allocating it if absent.
    fn next_level(
        &self,
        parent: u64,
        index: u64,
        frames: &mut dyn FrameSource,
    ) -> Result<u64, MapError> {
        let e = read(parent, index);
        if e & PRESENT != 0 {
            return Ok(e & ADDR_MASK);
        }
        let page = frames.zeroed_page().ok_or(MapError::OutOfMemory)?;
        write(parent, index, page | PRESENT | WRITABLE);
        Ok(page)
    }

    /// Make sure the page tables for 4 KiB pages in `[va, va+len)` exist (boot time, so
    /// that later remaps never allocate).
    pub fn prepare_4k(
        &self,
        va: u64,
        len: u64,
        frames: &mut dyn FrameSource,
    ) -> Result<(), MapError> {
        let mut v = va;
        while v < va + len {
            let pdpt = self.next_level(self.pml4, v >> 39, frames)?;
            let pd = self.next_level(pdpt, (v >> 30) & 511, frames)?;
            self.next_level(pd, (v >> 21) & 511, frames)?;
            v += TWO_MIB;
        }
        Ok(())
    }

    /// The last-level entry for `va`, which must have been prepared.
    fn pte(&self, va: u64) -> Option<(u64, u64)> {
        let mut t = self.pml4;
        for shift in [39u64, 30, 21] {
            let e = read(t, (va >> shift) & 511);
            if e & PRESENT == 0 || e & HUGE != 0 {
                return None;
            }
            t = e & ADDR_MASK;
        }
        Some((t, (va >> 12) & 511))
    }

    /// Map the 4 KiB page at `va` to `pa` (prepared area only; returns false otherwise).
    pub fn map_4k(&self, va: u64, pa: u64) -> bool {
        match self.pte(va) {
            Some((t, i)) => {
                write(t, i, (pa & ADDR_MASK) | PRESENT | WRITABLE);
                cpu::invlpg(va);
                true
            }
            None => false,
        }
    }

    /// Unmap the 4 KiB page at `va`.
    pub fn unmap_4k(&self, va: u64) {
        if let Some((t, i)) = self.pte(va) {
            write(t, i, 0);
            cpu::invlpg(va);
        }
    }

    /// Bytes of page-table pages under `len` bytes of 4 KiB mappings (for sizing).
    pub const fn tables_for_4k(len: u64) -> u64 {
        (len / TWO_MIB + 2) * PAGE_SIZE
    }
}
