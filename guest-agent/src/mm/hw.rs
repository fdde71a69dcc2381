//! The hardware the memory manager and the workload need, as traits the kernel
//! implements (direct map, its own page tables) and host tests fake (a `Vec<u8>`).

use super::Pfn;

/// Guest-physical memory, as the kernel's identity direct map reaches it.
pub trait PhysMem {
    /// The little-endian `u64` at guest-physical `gpa` (8-byte aligned).
    fn read_u64(&self, gpa: u64) -> u64;

    /// Store `value` at guest-physical `gpa` (8-byte aligned).
    fn write_u64(&mut self, gpa: u64, value: u64);

    /// Copy the whole 4 KiB frame `src` to `dst` (the guest-copy migration path).
    fn copy_page(&mut self, src: Pfn, dst: Pfn);
}

/// The workload's virtual mappings: logical page `id` lives at
/// [`crate::workload::page_va`]`(id)`, mapped to one frame with a 4 KiB PTE.
///
/// `map` and `unmap` must not allocate (migration calls them with the allocator busy):
/// the kernel builds the page tables for the whole workload window up front.
pub trait Mmu {
    /// Point page `id` at frame `pfn` (replacing any mapping) and flush its TLB entry.
    fn map(&mut self, id: u32, pfn: Pfn);

    /// Remove page `id`'s mapping and flush its TLB entry: any access now faults.
    fn unmap(&mut self, id: u32);

    /// Load the `u64` at byte `offset` of page `id`, through its virtual mapping.
    fn read(&self, id: u32, offset: usize) -> u64;

    /// Store `value` at byte `offset` of page `id`, through its virtual mapping.
    fn write(&mut self, id: u32, offset: usize, value: u64);
}
