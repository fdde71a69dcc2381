//! Boot-time memory set-up: carve the allocator's metadata, the workload manifest and the
//! page tables out of low RAM, build the page allocator, switch to our own page tables.
//!
//! ```text
//!  first RAM entry below 4 GiB big enough:
//!  ┌──────────────────────┬─────────────────────┬──────────────────────┐
//!  │ frames + pageblocks  │ workload manifest   │ page-table pages     │ → reserved
//!  └──────────────────────┴─────────────────────┴──────────────────────┘
//! ```
//! Everything carved is fresh, zeroed guest RAM below 4 GiB, so it is reachable through
//! the VMM's boot identity map before our own tables exist, and needs no clearing.

use guest_agent::mm::{Frame, MetaLayout, Mm, Pageblock, PhysRange};
use guest_agent::workload::{WORKLOAD_VA_BASE, manifest_bytes};
use protocol::boot::{BootInfo, MemKind};
use protocol::layout::{KERNEL_LOAD_ADDR, MMIO_HOLE_END, PAGE_SIZE};

use crate::arch::paging::{FrameSource, PageTables};
use crate::console::Dec;
use crate::hw::KernelHw;

/// Hands out the carve-out's page-table pages, in order.
struct Bump {
    next: u64,
    end: u64,
}

impl FrameSource for Bump {
    fn zeroed_page(&mut self) -> Option<u64> {
        (self.next < self.end).then(|| {
            self.next += PAGE_SIZE;
            self.next - PAGE_SIZE
        })
    }
}

/// Page-table pages for the identity map of `[0, top)` and `pages` workload pages.
fn table_pages(top: u64, pages: u32) -> u64 {
    let gib = top.div_ceil(1 << 30);
    let pts = u64::from(pages).div_ceil(512) + 1;
    let pds = u64::from(pages).div_ceil(512 * 512) + 1;
    // PML4, the identity PDPT and its PDs, the workload's PDPT, PDs and PTs.
    1 + 1 + gib + 1 + pds + pts
}

unsafe extern "C" {
    /// End of the loaded image, `.bss` included (linker script).
    static __image_end: u8;
}

/// What the boot carve-out holds, for the allocator report.
pub struct Carved {
    /// Allocator metadata bytes (frames and pageblocks).
    pub metadata: u64,
    /// Workload manifest bytes.
    pub manifest: u64,
    /// The manifest's address.
    pub manifest_gpa: u64,
}

/// Build the allocator and the page tables.
pub fn init(info: &BootInfo, pages: u32) -> Result<(Mm<'static>, KernelHw, Carved), &'static str> {
    // The VMM must keep our image, stacks included, out of RAM: never trust it blindly.
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    if info
        .mem_map()
        .iter()
        .any(|e| e.kind != MemKind::Reserved && e.base < image_end && e.end() > KERNEL_LOAD_ADDR)
    {
        return Err("the memory map hands out part of the guest image");
    }
    let layout = MetaLayout::new(info).map_err(|_| "the memory map is too large")?;
    let top = info
        .mem_map()
        .iter()
        .map(|e| e.end())
        .max()
        .unwrap_or(0)
        .max(MMIO_HOLE_END);
    let tables = table_pages(top, pages) * PAGE_SIZE;
    let need = layout.bytes() + manifest_bytes(pages) + tables;
    let base = info
        .mem_map()
        .iter()
        .find(|e| e.kind == MemKind::Ram && e.size >= need && e.end() <= MMIO_HOLE_END)
        .map(|e| e.base)
        .ok_or("no RAM below 4 GiB for the allocator's metadata")?;
    let manifest = base + layout.bytes();
    let tables_base = manifest + manifest_bytes(pages);
    // SAFETY: `[base, base + need)` is fresh RAM below 4 GiB (identity-mapped, zero),
    // reserved from the allocator below, and used only through these slices from now on.
    // `Frame` and `Pageblock` are `repr(C)` plain integers for which zero is valid.
    let (frames, pageblocks) = unsafe {
        (
            core::slice::from_raw_parts_mut(base as *mut Frame, layout.frames()),
            core::slice::from_raw_parts_mut(
                (base + layout.pageblocks_offset() as u64) as *mut Pageblock,
                layout.pageblocks(),
            ),
        )
    };
    let reserved = [PhysRange::new(base, base + need)];
    let mm = Mm::new(info, &reserved, frames, pageblocks).map_err(|_| "allocator set-up failed")?;
    let mut bump = Bump {
        next: tables_base,
        end: base + need,
    };
    let pt = PageTables::new(top, &mut bump).map_err(|_| "out of page-table pages")?;
    pt.prepare_4k(WORKLOAD_VA_BASE, u64::from(pages) * PAGE_SIZE, &mut bump)
        .map_err(|_| "out of page-table pages")?;
    pt.activate();
    let carved = Carved {
        metadata: layout.bytes(),
        manifest: manifest_bytes(pages),
        manifest_gpa: manifest,
    };
    Ok((mm, KernelHw::new(pt), carved))
}

/// One line about the allocator (the memory benchmark reads it).
pub fn print_stats(mm: &Mm, carved: &Carved) {
    let s = mm.stats();
    println!(
        "cma-guest: page allocator: {} free pages, {} in lent CMA regions; managing {} pages with metadata {} bytes; manifest {} bytes",
        Dec(s.free_pages),
        Dec(s.free_cma_pages),
        Dec(mm.frame_map().frames().into()),
        Dec(carved.metadata),
        Dec(carved.manifest)
    );
}
