//! Per-frame metadata (16 bytes per 4 KiB frame) and the pfn ↔ frame-index map.
//!
//! ```text
//!  Frame (repr(C), 16 bytes; every bit pattern is valid, all-zero = "not a block head")
//!  ┌──────────┬──────────┬──────────┬─────────────────────────────────────────┐
//!  │ link_a   │ link_b   │ owner    │ info: kind 0..3 │ order 4..8 │ pins 16..32 │
//!  └──────────┴──────────┴──────────┴─────────────────────────────────────────┘
//!   free head:        link_a = next, link_b = prev in its free list
//!   planned source:   link_a = destination frame, link_b = next source of the batch
//!   movable page:     owner = the logical page id (the reverse map migration uses)
//! ```
//!
//! Only the first frame of a block (free, allocated or host-owned) says what the block
//! is, as Linux's `PageBuddy` + `buddy_order` do; the other frames stay `Kind::Tail`.
//! That is why zeroed memory is a valid state and why init and big frees cost
//! O(blocks), never O(pages).

use protocol::layout::{MMIO_HOLE_END, MMIO_HOLE_START, PAGE_SHIFT, PAGEBLOCK_ORDER};

/// "No frame" in a link field.
pub(crate) const NIL: u32 = u32::MAX;

/// Pages per pageblock.
pub(crate) const PAGEBLOCK_PAGES: u32 = 1 << PAGEBLOCK_ORDER;

/// What the block starting at a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not the head of a block: inside a bigger block, or never managed (reserved).
    Tail = 0,
    /// A free buddy block, on the free list of its pageblock's migratetype.
    Free = 1,
    /// An allocated unmovable block (kernel memory).
    Unmovable = 2,
    /// An allocated movable page (order 0) with an owner.
    Movable = 3,
    /// A block taken by the host (evicted, not yet returned).
    Host = 4,
}

const KIND_MASK: u32 = 0x7;
const ORDER_SHIFT: u32 = 4;
const ORDER_MASK: u32 = 0xf;
const PINS_SHIFT: u32 = 16;
/// The largest pin count a frame holds.
pub(crate) const MAX_PINS: u32 = 0xffff;

/// Metadata of one 4 KiB frame.
///
/// All fields are plain integers, so any bytes are a valid `Frame`: the kernel may view
/// its zeroed boot carve-out as `[Frame]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Frame {
    link_a: u32,
    link_b: u32,
    owner: u32,
    info: u32,
}

impl Frame {
    /// What block this frame heads (garbage kinds read as [`Kind::Tail`]).
    pub(crate) fn kind(&self) -> Kind {
        match self.info & KIND_MASK {
            1 => Kind::Free,
            2 => Kind::Unmovable,
            3 => Kind::Movable,
            4 => Kind::Host,
            _ => Kind::Tail,
        }
    }

    /// log2 of the block's size in pages (meaningful on heads only).
    pub(crate) fn order(&self) -> u32 {
        (self.info >> ORDER_SHIFT) & ORDER_MASK
    }

    /// Pin count (like a GUP pin: a pinned page refuses to migrate).
    pub(crate) fn pins(&self) -> u32 {
        self.info >> PINS_SHIFT
    }

    /// Make this frame the head of a block of `kind` and `order`, unpinned.
    pub(crate) fn set_head(&mut self, kind: Kind, order: u32) {
        self.info = kind as u32 | (order << ORDER_SHIFT);
    }

    /// Make this frame a tail again.
    pub(crate) fn clear(&mut self) {
        self.info = 0;
    }

    /// Set the pin count (at most [`MAX_PINS`]).
    pub(crate) fn set_pins(&mut self, pins: u32) {
        self.info = (self.info & ((1 << PINS_SHIFT) - 1)) | (pins << PINS_SHIFT);
    }

    /// Owner id of a movable page.
    pub(crate) fn owner(&self) -> u32 {
        self.owner
    }

    /// Set the owner id of a movable page.
    pub(crate) fn set_owner(&mut self, owner: u32) {
        self.owner = owner;
    }

    /// Free-list links `(next, prev)` of a free head.
    pub(crate) fn links(&self) -> (u32, u32) {
        (self.link_a, self.link_b)
    }

    /// Set the next link of a free head.
    pub(crate) fn set_next(&mut self, next: u32) {
        self.link_a = next;
    }

    /// Set the prev link of a free head.
    pub(crate) fn set_prev(&mut self, prev: u32) {
        self.link_b = prev;
    }

    /// A planned migration source: its destination and the next source of the batch.
    /// An allocated page is on no free list, so the links are free to hold the plan.
    pub(crate) fn plan(&self) -> (u32, u32) {
        (self.link_a, self.link_b)
    }

    /// Record the destination of a planned source (end of the batch chain).
    pub(crate) fn set_plan(&mut self, dst: u32) {
        self.link_a = dst;
        self.link_b = NIL;
    }

    /// Chain the next planned source after this one.
    pub(crate) fn set_plan_next(&mut self, next: u32) {
        self.link_b = next;
    }
}

/// The frames the metadata covers: guest-physical memory below the MMIO hole, then the
/// memory above 4 GiB, each rounded up to whole pageblocks.
///
/// ```text
///  pfn:   0 ........ low ····(MMIO hole, no frames)···· HOLE_END .. HOLE_END+high
///  index: 0 ........ low                                low ...... low+high
/// ```
/// `low` is a multiple of a pageblock, so buddy arithmetic on indices equals buddy
/// arithmetic on pfns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMap {
    low: u32,
    high: u32,
}

const HOLE_START_PFN: u64 = MMIO_HOLE_START >> PAGE_SHIFT;
const HOLE_END_PFN: u64 = MMIO_HOLE_END >> PAGE_SHIFT;

impl FrameMap {
    /// Frames for managed memory ending at guest-physical address `end`; `None` if that
    /// needs more frames than a `u32` index can name.
    pub fn covering(end: u64) -> Option<Self> {
        let pages = end.div_ceil(1 << PAGE_SHIFT);
        let round = |p: u64| p.div_ceil(u64::from(PAGEBLOCK_PAGES)) * u64::from(PAGEBLOCK_PAGES);
        let low = round(pages.min(HOLE_START_PFN));
        let high = round(pages.saturating_sub(HOLE_END_PFN));
        if low + high >= u64::from(NIL) {
            return None;
        }
        Some(FrameMap {
            low: low as u32,
            high: high as u32,
        })
    }

    /// Number of frames.
    pub fn frames(&self) -> u32 {
        self.low + self.high
    }

    /// Number of pageblocks.
    pub fn pageblocks(&self) -> u32 {
        self.frames() / PAGEBLOCK_PAGES
    }

    /// The frame index of `pfn`, if the metadata covers it.
    pub fn index(&self, pfn: u64) -> Option<u32> {
        if pfn < u64::from(self.low) {
            return Some(pfn as u32);
        }
        let above = pfn.checked_sub(HOLE_END_PFN)?;
        (above < u64::from(self.high)).then(|| self.low + above as u32)
    }

    /// The pfn of frame `idx`.
    pub fn pfn(&self, idx: u32) -> u64 {
        if idx < self.low {
            u64::from(idx)
        } else {
            HOLE_END_PFN + u64::from(idx - self.low)
        }
    }

    /// The frame-index range of the guest-physical range `[start, end)` (page aligned),
    /// if it is covered and does not cross the hole.
    pub fn index_range(&self, start: u64, end: u64) -> Option<(u32, u32)> {
        if end <= start {
            return None;
        }
        let first = self.index(start >> PAGE_SHIFT)?;
        let last = self.index((end >> PAGE_SHIFT) - 1)?;
        // Both ends covered and as far apart as the range: it does not cross the hole.
        (u64::from(last) + 1 == u64::from(first) + ((end - start) >> PAGE_SHIFT))
            .then_some((first, last + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_16_bytes_and_zero_is_a_tail() {
        assert_eq!(core::mem::size_of::<Frame>(), 16);
        assert_eq!(Frame::default().kind(), Kind::Tail);
    }

    #[test]
    fn fields_do_not_overlap() {
        let mut f = Frame::default();
        f.set_head(Kind::Movable, 9);
        f.set_pins(MAX_PINS);
        f.set_owner(7);
        assert_eq!(
            (f.kind(), f.order(), f.pins(), f.owner()),
            (Kind::Movable, 9, MAX_PINS, 7)
        );
        f.set_pins(0);
        assert_eq!((f.kind(), f.order()), (Kind::Movable, 9));
        f.set_head(Kind::Free, 3);
        assert_eq!(f.pins(), 0);
    }

    #[test]
    fn garbage_kinds_read_as_tail() {
        let f = Frame {
            info: 7,
            ..Frame::default()
        };
        assert_eq!(f.kind(), Kind::Tail);
    }

    #[test]
    fn map_skips_the_mmio_hole() {
        let m = FrameMap::covering(MMIO_HOLE_END + (1 << 30)).unwrap();
        let low = (MMIO_HOLE_START >> PAGE_SHIFT) as u32;
        assert_eq!(m.frames(), low + (1 << 18));
        assert_eq!(m.index(HOLE_START_PFN), None);
        assert_eq!(m.index(HOLE_END_PFN), Some(low));
        assert_eq!(m.pfn(low), HOLE_END_PFN);
        assert_eq!(m.index(HOLE_END_PFN + (1 << 18)), None);
        assert_eq!(
            m.index_range(MMIO_HOLE_START - 4096, MMIO_HOLE_END + 4096),
            None
        );
    }

    #[test]
    fn small_guests_round_up_to_a_pageblock() {
        let m = FrameMap::covering(3 << 20).unwrap();
        assert_eq!(m.frames(), 1024);
        assert_eq!(m.pageblocks(), 2);
        assert_eq!(m.index_range(0x1000, 0x3000), Some((1, 3)));
        assert_eq!(m.index_range(0x1000, 0x1000), None);
        assert_eq!(m.index_range(0, 5 << 20), None);
    }
}
