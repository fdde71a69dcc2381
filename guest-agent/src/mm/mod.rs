//! The guest's memory manager: a buddy page allocator with Linux's migratetypes, and
//! Linux's `alloc_contig_range()` split across the hypervisor boundary (isolate the
//! pageblocks, migrate the movable pages out, take the range, give it back later).
//!
//! No hardware access and no heap: metadata lives in memory the caller hands in (the
//! kernel's boot carve-out, or a `Vec` in host tests); memory contents, page tables and
//! the VMM's copy are reached through small traits ([`PhysMem`], [`Mmu`],
//! [`PageMover`], [`CopyEngine`]). So everything here runs natively under `cargo test`.
//!
//! ```text
//!  Mm ─┬─ map: FrameMap        pfn <-> frame index (the MMIO hole has no frames)
//!      ├─ frames: [Frame]      16 B per 4 KiB frame (0.39 %), zeroed = valid
//!      │     ┌────────┬────────┬───────┬──────────────────────────────┐
//!      │     │ link_a │ link_b │ owner │ kind:3 | order:4 | pins:16   │
//!      │     └────────┴────────┴───────┴──────────────────────────────┘
//!      ├─ pageblocks: [Pageblock]  2 B per 2 MiB: migratetype + type saved by isolation
//!      ├─ free lists: head[migratetype][order 0..=9] ─▶ frame ⇄ frame ⇄ frame  (u32)
//!      ├─ lent: the VMM's lent CMA regions (what Evict/Return may name)
//!      └─ counters
//!
//!  one pageblock (512 frames), only block heads carry a kind:
//!   ┌── Free, order 8 (256 frames) ──┬─ M ─┬─ M ─┬ Free o1 ┬── Host, order 6 ──┬ ...
//!   │ head + 255 tails               │owner│owner│         │ taken by the VMM  │
//!   └────────────────────────────────┴─────┴─────┴─────────┴───────────────────┘
//! ```
//!
//! Modules: [`frame`] and [`pageblock`] (metadata), `freelist` and `buddy` (the buddy
//! core), `init` (sizing the carve-out, building from the boot map), `alloc`
//! (migratetype policy), `isolate`, `migrate` (plan / copy / commit), `evict`
//! (Evict and Return), `debug` (invariants and state queries), [`hw`] (traits).

mod alloc;
mod buddy;
mod debug;
mod evict;
pub mod frame;
mod freelist;
pub mod hw;
mod init;
mod isolate;
mod migrate;
pub mod pageblock;

#[cfg(test)]
pub(crate) mod testutil;

pub use alloc::{CmaUse, PageError};
pub use debug::{InvariantError, PageState};
pub use evict::{EvictError, Invalid};
pub use frame::{Frame, FrameMap};
pub use hw::{Mmu, PhysMem};
pub use init::{InitError, MetaLayout};
pub use migrate::{CopyEngine, CopyError, CopyMode, PageMover};
pub use pageblock::{Migratetype, Pageblock};

use buddy::Buddy;
use protocol::boot::MAX_REGIONS;
use protocol::layout::PAGE_SHIFT;

/// A page frame number: guest-physical address >> 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The frame's guest-physical address.
    pub const fn gpa(self) -> u64 {
        self.0 << PAGE_SHIFT
    }

    /// The frame holding guest-physical address `gpa`.
    pub const fn of_gpa(gpa: u64) -> Self {
        Pfn(gpa >> PAGE_SHIFT)
    }
}

/// A guest-physical range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysRange {
    /// `[start, end)`.
    pub const fn new(start: u64, end: u64) -> Self {
        PhysRange { start, end }
    }

    /// Whether `[start, end)` lies inside this range.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.start <= start && end <= self.end
    }
}

/// Counters, for the agent's [`protocol::msg::Report`] and for debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Free pages, all migratetypes.
    pub free_pages: u64,
    /// Free pages in CMA pageblocks.
    pub free_cma_pages: u64,
    /// Allocated movable pages.
    pub movable_pages: u64,
    /// Allocated unmovable pages.
    pub unmovable_pages: u64,
    /// Pages taken by the host (evicted, not returned).
    pub host_pages: u64,
    /// Allocated pages with a pin count above zero.
    pub pinned_pages: u64,
    /// Pages migrated since boot.
    pub pages_migrated: u64,
    /// Evictions that answered Done.
    pub evictions: u64,
    /// Evictions that failed (Invalid, Busy, NoMemory, copy failure).
    pub evict_failures: u64,
    /// Ranges returned.
    pub returns: u64,
}

/// The lent CMA regions, as the boot information listed them.
#[derive(Debug, Clone, Copy)]
struct LentRegions {
    ranges: [PhysRange; MAX_REGIONS],
    len: usize,
}

impl LentRegions {
    fn as_slice(&self) -> &[PhysRange] {
        &self.ranges[..self.len]
    }
}

/// The memory manager: page allocator, isolation, migration, eviction.
pub struct Mm<'a> {
    buddy: Buddy<'a>,
    map: FrameMap,
    lent: LentRegions,
    stats: Stats,
}

impl Mm<'_> {
    /// Current counters.
    pub fn stats(&self) -> Stats {
        use Migratetype::*;
        let lists = &self.buddy.lists;
        Stats {
            free_pages: [Unmovable, Movable, Cma, Isolate]
                .iter()
                .map(|&mt| lists.free_pages(mt))
                .sum(),
            free_cma_pages: lists.free_pages(Cma),
            ..self.stats
        }
    }

    /// The lent CMA regions.
    pub fn lent_regions(&self) -> &[PhysRange] {
        self.lent.as_slice()
    }

    /// The frame map (which pfns have metadata).
    pub fn frame_map(&self) -> FrameMap {
        self.map
    }

    fn index(&self, pfn: Pfn) -> Option<u32> {
        self.map.index(pfn.0)
    }

    fn pfn(&self, idx: u32) -> Pfn {
        Pfn(self.map.pfn(idx))
    }
}
