//! Sizing the metadata carve-out and building the allocator from the boot memory map.
//!
//! ```text
//!  carve-out (kernel, from RAM above its image; zeroed, as fresh guest RAM is):
//!  ┌──────────────────────────────┬────────────────────────┬─ pad to 4 KiB
//!  │ frames: [Frame; frames()]    │ [Pageblock; blocks()]  │
//!  └──────────────────────────────┴────────────────────────┘
//!  0                    pageblocks_offset()                 bytes()
//! ```
//!
//! Boot-time pageblock types: RAM → MOVABLE (as Linux's `memmap_init` does; unmovable
//! allocations steal pageblocks when they need them), lent CMA regions → CMA; private
//! regions and Reserved entries get no type and no free pages, and neither do the
//! ranges the kernel reserves (its image, this carve-out). Cost: O(pageblocks) to set
//! types, then O(log) free calls per range edge and one per max-order block.

use super::buddy::Buddy;
use super::frame::{Frame, FrameMap, PAGEBLOCK_PAGES};
use super::pageblock::{Migratetype, Pageblock};
use super::{LentRegions, Mm, PhysRange, Stats};
use protocol::boot::{BootInfo, MemKind};
use protocol::layout::{
    MMIO_HOLE_END, MMIO_HOLE_START, PAGE_SIZE, PAGEBLOCK_ORDER, align_down, align_up,
};

/// Why the allocator could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The memory map needs more frames than a `u32` index names.
    MapTooLarge,
    /// The frame slice is shorter than [`MetaLayout::frames`].
    FramesTooShort,
    /// The pageblock slice is shorter than [`MetaLayout::pageblocks`].
    PageblocksTooShort,
    /// A lent region lies (partly) outside the memory the frames cover.
    RegionOutsideMemory(u32),
}

/// How much metadata a boot memory map needs, and where it goes in the carve-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLayout {
    map: FrameMap,
}

impl MetaLayout {
    /// The layout for `info`'s memory map: frames for every pfn up to the end of the
    /// last RAM or lent CMA entry (minus the MMIO hole), one pageblock entry per 2 MiB.
    pub fn new(info: &BootInfo) -> Result<Self, InitError> {
        let end = managed_entries(info).map(|(r, _)| r.end).max().unwrap_or(0);
        let map = FrameMap::covering(end).ok_or(InitError::MapTooLarge)?;
        Ok(MetaLayout { map })
    }

    /// Number of [`Frame`]s.
    pub fn frames(&self) -> usize {
        self.map.frames() as usize
    }

    /// Number of [`Pageblock`]s.
    pub fn pageblocks(&self) -> usize {
        self.map.pageblocks() as usize
    }

    /// Byte offset of the pageblock array in the carve-out.
    pub fn pageblocks_offset(&self) -> usize {
        self.frames() * size_of::<Frame>()
    }

    /// Size of the carve-out in bytes, a multiple of the page size.
    pub fn bytes(&self) -> u64 {
        let raw = (self.pageblocks_offset() + self.pageblocks() * size_of::<Pageblock>()) as u64;
        align_up(raw, PAGE_SIZE).unwrap_or(raw)
    }

    /// The frame map this layout describes.
    pub fn frame_map(&self) -> FrameMap {
        self.map
    }
}

/// Memory-map entries the allocator manages, with the pageblock type they get.
fn managed_entries(info: &BootInfo) -> impl Iterator<Item = (PhysRange, Migratetype)> + '_ {
    info.mem_map().iter().filter_map(|e| {
        let mt = match e.kind {
            MemKind::Ram => Migratetype::Movable,
            MemKind::Cma if info.region(e.region).is_some_and(|r| r.is_lent()) => Migratetype::Cma,
            _ => return None,
        };
        Some((PhysRange::new(e.base, e.base.saturating_add(e.size)), mt))
    })
}

impl<'a> Mm<'a> {
    /// Build the allocator over zeroed metadata.
    ///
    /// `frames` and `pageblocks` come from the carve-out sized by [`MetaLayout`] (longer
    /// slices are fine); they must be zeroed. `reserved` lists the ranges of RAM the
    /// kernel keeps for itself (its image, stack, this carve-out): they are never freed.
    pub fn new(
        info: &BootInfo,
        reserved: &[PhysRange],
        frames: &'a mut [Frame],
        pageblocks: &'a mut [Pageblock],
    ) -> Result<Self, InitError> {
        let layout = MetaLayout::new(info)?;
        let frames = frames
            .get_mut(..layout.frames())
            .ok_or(InitError::FramesTooShort)?;
        let pageblocks = pageblocks
            .get_mut(..layout.pageblocks())
            .ok_or(InitError::PageblocksTooShort)?;
        let mut mm = Mm {
            buddy: Buddy::new(frames, pageblocks),
            map: layout.map,
            lent: lent_regions(info, layout.map)?,
            stats: Stats::default(),
        };
        for (range, mt) in managed_entries(info) {
            mm.for_each_covered(range, |mm, first, end| {
                mm.set_pageblock_types(first, end, mt)
            });
        }
        for (range, _) in managed_entries(info) {
            for_each_unreserved(range, reserved, |piece| {
                mm.for_each_covered(piece, |mm, first, end| mm.free_range(first, end));
            });
        }
        Ok(mm)
    }

    /// Call `f` with the frame-index ranges of `range`'s covered parts (below and above
    /// the MMIO hole).
    fn for_each_covered(&mut self, range: PhysRange, mut f: impl FnMut(&mut Self, u32, u32)) {
        let parts = [
            PhysRange::new(range.start, range.end.min(MMIO_HOLE_START)),
            PhysRange::new(range.start.max(MMIO_HOLE_END), range.end),
        ];
        for p in parts {
            let (start, end) = (align_up(p.start, PAGE_SIZE), align_down(p.end, PAGE_SIZE));
            if let Some((first, end)) = start.and_then(|s| self.map.index_range(s, end)) {
                f(self, first, end);
            }
        }
    }

    fn set_pageblock_types(&mut self, first: u32, end: u32, mt: Migratetype) {
        for pb in first / PAGEBLOCK_PAGES..end.div_ceil(PAGEBLOCK_PAGES) {
            self.buddy.blocks[pb as usize].set(mt);
        }
    }

    /// Free frames `[first, end)` as naturally aligned blocks, largest first.
    fn free_range(&mut self, first: u32, end: u32) {
        let mut idx = first;
        while idx < end {
            let order = idx
                .trailing_zeros()
                .min((end - idx).ilog2())
                .min(PAGEBLOCK_ORDER);
            self.buddy.free(idx, order);
            idx += 1 << order;
        }
    }
}

/// The lent regions, each checked to lie inside the frames.
fn lent_regions(info: &BootInfo, map: FrameMap) -> Result<LentRegions, InitError> {
    let mut lent = LentRegions {
        ranges: [PhysRange::default(); protocol::boot::MAX_REGIONS],
        len: 0,
    };
    for r in info.regions().iter().filter(|r| r.is_lent()) {
        let range = PhysRange::new(r.base, r.base.saturating_add(r.size));
        map.index_range(range.start, range.end)
            .ok_or(InitError::RegionOutsideMemory(r.id))?;
        lent.ranges[lent.len] = range;
        lent.len += 1;
    }
    Ok(lent)
}

/// Call `f` with the parts of `range` that no reserved range overlaps (reserved ranges
/// rounded out to whole pages, in any order, possibly overlapping).
fn for_each_unreserved(range: PhysRange, reserved: &[PhysRange], mut f: impl FnMut(PhysRange)) {
    let mut cur = range.start;
    while cur < range.end {
        let next = reserved
            .iter()
            .map(|r| round_out(*r))
            .filter(|r| r.end > cur && r.start < range.end && r.start < r.end)
            .min_by_key(|r| r.start);
        let Some(r) = next else {
            f(PhysRange::new(cur, range.end));
            return;
        };
        if r.start > cur {
            f(PhysRange::new(cur, r.start));
        }
        cur = r.end;
    }
}

/// `r` widened to whole pages.
fn round_out(r: PhysRange) -> PhysRange {
    let end = align_up(r.end, PAGE_SIZE).unwrap_or(align_down(u64::MAX, PAGE_SIZE));
    PhysRange::new(align_down(r.start, PAGE_SIZE), end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::testutil::{MB, boot_info};
    use crate::mm::{Migratetype as Mt, Pfn};

    #[test]
    fn layout_counts_frames_and_pageblocks() {
        let info = boot_info();
        let l = MetaLayout::new(&info).unwrap();
        // The test map ends at 14 MiB: 3584 frames, 7 pageblocks.
        assert_eq!((l.frames(), l.pageblocks()), (3584, 7));
        assert_eq!(l.pageblocks_offset(), 3584 * 16);
        assert_eq!(l.bytes(), 61440);
    }

    #[test]
    fn init_types_pageblocks_and_frees_only_managed_memory() {
        let info = boot_info();
        let l = MetaLayout::new(&info).unwrap();
        let mut frames = vec![Frame::default(); l.frames()];
        let mut blocks = vec![Pageblock::default(); l.pageblocks()];
        let reserved = [PhysRange::new(MB, 2 * MB + 100)];
        let mm = Mm::new(&info, &reserved, &mut frames, &mut blocks).unwrap();
        let types: Vec<_> = (0..7)
            .flat_map(|pb| mm.pageblock_type(Pfn(pb * 512)))
            .collect();
        use Mt::*;
        assert_eq!(types, [Movable, Movable, Movable, Cma, Cma, Unmovable, Cma]);
        let s = mm.stats();
        // RAM 1..6 MiB minus 1 MiB + 1 page reserved; CMA 6..10 and 12..14 MiB.
        assert_eq!(s.free_pages, (4 * MB / 4096 - 1) + 6 * MB / 4096);
        assert_eq!(s.free_cma_pages, 6 * MB / 4096);
        assert_eq!(
            mm.page_state(Pfn(2 * MB / 4096)),
            crate::mm::PageState::Reserved
        );
        assert_eq!(
            mm.page_state(Pfn(11 * MB / 4096)),
            crate::mm::PageState::Reserved
        );
        mm.check_invariants().unwrap();
    }

    #[test]
    fn init_touches_block_heads_only() {
        let info = boot_info();
        let l = MetaLayout::new(&info).unwrap();
        let mut frames = vec![Frame::default(); l.frames()];
        let mut blocks = vec![Pageblock::default(); l.pageblocks()];
        Mm::new(&info, &[], &mut frames, &mut blocks).unwrap();
        let touched = frames.iter().filter(|f| **f != Frame::default()).count();
        // 1..2 MiB: one order-8 block; 2..6, 6..10, 12..14 MiB: 5 pageblocks.
        assert_eq!(touched, 1 + 5);
    }

    #[test]
    fn short_slices_and_outside_regions_are_errors() {
        let info = boot_info();
        let mut frames = vec![Frame::default(); 10];
        let mut blocks = vec![Pageblock::default(); 10];
        assert_eq!(
            Mm::new(&info, &[], &mut frames, &mut blocks).err(),
            Some(InitError::FramesTooShort)
        );
    }

    #[test]
    fn unreserved_pieces() {
        let mut out = vec![];
        let reserved = [
            PhysRange::new(10, 20),
            PhysRange::new(0x3000, 0x5000),
            PhysRange::new(0x4000, 0x6000),
        ];
        for_each_unreserved(PhysRange::new(0, 0x8000), &reserved, |r| out.push(r));
        assert_eq!(
            out,
            [
                PhysRange::new(0x1000, 0x3000),
                PhysRange::new(0x6000, 0x8000)
            ]
        );
    }
}
