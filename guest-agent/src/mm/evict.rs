//! Evict and Return: Linux's `alloc_contig_range()` / `free_contig_range()`, driven by
//! the VMM.
//!
//! ```text
//!  evict(range)                                     on failure
//!   1 validate: aligned, non-empty, inside ONE lent region ........ Invalid
//!   2 isolate the pageblocks covering the range .................... Busy (already)
//!   3 pre-scan: host-owned page → Invalid; pinned or unmovable → Busy{first}
//!   4 migrate every movable page in the range, in batches ......... NoMemory / Failed
//!   5 check the range is all free, take it: free blocks leave the lists, blocks
//!     straddling an edge are split, the inside becomes Host blocks .. Busy{first}
//!   6 undo isolation (always): types back, free blocks back to CMA lists
//!
//!  a 64 KiB range inside a free order-9 block:
//!   [ free 9 ] ──take──▶ [f4][f5][f6]..[f8] [Host 4] [f4]..  (outside halves go back)
//! ```
//! Every failure path undoes the isolation; pages already migrated stay migrated (as in
//! Linux), everything else is as it was.

use super::Mm;
use super::buddy::Block;
use super::frame::Kind;
use super::frame::PAGEBLOCK_PAGES;
use super::isolate::pageblocks_of;
use super::migrate::{Batch, CopyMode, PageMover};
use protocol::layout::PAGE_SIZE;
use protocol::msg::Status;

/// Why a range named by the VMM makes no sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Empty range.
    Empty,
    /// Start or length not a multiple of the page size.
    Unaligned,
    /// Start + length overflows.
    Overflow,
    /// Not entirely inside one lent CMA region.
    NotLent,
    /// Evict: a page of the range is already the host's.
    HostOwned,
    /// Return: a page of the range is not the host's.
    NotHostOwned,
}

/// Why an eviction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictError {
    /// The request makes no sense; nothing changed.
    Invalid(Invalid),
    /// A page that cannot move (pinned or unmovable) is at `first_busy`; nothing moved.
    Busy {
        /// Guest-physical address of the first such page.
        first_busy: u64,
    },
    /// No free destination page; `migrated` pages had moved already.
    NoMemory {
        /// Pages migrated before memory ran out.
        migrated: u64,
    },
    /// The copy engine failed; its batch was rolled back, earlier batches stay moved.
    CopyFailed {
        /// The engine's code.
        code: u64,
        /// Pages migrated in earlier batches.
        migrated: u64,
    },
}

impl EvictError {
    /// The status to answer the VMM with.
    pub fn status(&self) -> Status {
        match *self {
            EvictError::Invalid(_) => Status::Invalid,
            EvictError::Busy { first_busy } => Status::Busy { first_busy },
            EvictError::NoMemory { .. } => Status::NoMemory,
            EvictError::CopyFailed { code, .. } => Status::Failed { code },
        }
    }

    /// Pages migrated before the failure.
    pub fn migrated(&self) -> u64 {
        match *self {
            EvictError::NoMemory { migrated } | EvictError::CopyFailed { migrated, .. } => migrated,
            _ => 0,
        }
    }
}

impl From<Invalid> for EvictError {
    fn from(e: Invalid) -> Self {
        EvictError::Invalid(e)
    }
}

/// Which way [`Mm::carve`] converts a block's pages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carve {
    /// Free → Host inside the range; the outside goes back to the free lists.
    Take,
    /// Host → free inside the range; the outside stays the host's.
    Return,
}

impl Mm<'_> {
    /// Evict `[gpa, gpa+len)`: isolate, migrate every movable page out, take the range
    /// for the host. Returns the number of pages migrated.
    pub fn evict(
        &mut self,
        gpa: u64,
        len: u64,
        mover: &mut dyn PageMover,
        mut mode: CopyMode,
    ) -> Result<u64, EvictError> {
        let result = self.try_evict(gpa, len, mover, &mut mode);
        match result {
            Ok(_) => self.stats.evictions += 1,
            Err(_) => self.stats.evict_failures += 1,
        }
        result
    }

    fn try_evict(
        &mut self,
        gpa: u64,
        len: u64,
        mover: &mut dyn PageMover,
        mode: &mut CopyMode,
    ) -> Result<u64, EvictError> {
        let (first, end) = self.lent_range(gpa, len)?;
        let pbs = pageblocks_of(first, end);
        if let Err(pb) = self.buddy.isolate(pbs.clone()) {
            let first_busy = self.pfn(first.max(pb * PAGEBLOCK_PAGES)).gpa();
            return Err(EvictError::Busy { first_busy });
        }
        let result = self
            .prescan(first, end)
            .and_then(|()| self.migrate_range(first, end, mover, mode))
            .and_then(|moved| self.take(first, end).map(|()| moved));
        self.buddy.unisolate(pbs);
        result
    }

    /// Give `[gpa, gpa+len)` back to the guest as CMA. Every page must be the host's;
    /// otherwise nothing changes. The VMM zeroes a range before returning it.
    pub fn return_range(&mut self, gpa: u64, len: u64) -> Result<u64, Invalid> {
        let (first, end) = self.lent_range(gpa, len)?;
        if self.first_not(Kind::Host, first, end).is_some() {
            return Err(Invalid::NotHostOwned);
        }
        self.for_each_block(first, end, |mm, b| {
            mm.buddy.frame_mut(b.head).clear();
            mm.carve(b.head, b.order, (first, end), Carve::Return);
        });
        let pages = u64::from(end - first);
        self.stats.host_pages -= pages;
        self.stats.returns += 1;
        Ok(pages)
    }

    /// Check the range the VMM names and turn it into frame indices `[first, end)`.
    fn lent_range(&self, gpa: u64, len: u64) -> Result<(u32, u32), Invalid> {
        if len == 0 {
            return Err(Invalid::Empty);
        }
        if !gpa.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(Invalid::Unaligned);
        }
        let end = gpa.checked_add(len).ok_or(Invalid::Overflow)?;
        if !self.lent.as_slice().iter().any(|r| r.contains(gpa, end)) {
            return Err(Invalid::NotLent);
        }
        self.map.index_range(gpa, end).ok_or(Invalid::NotLent)
    }

    /// Find pages that would refuse to move before moving anything. Linux migrates
    /// first and finds a pinned page only when its migration fails (after moving the
    /// others for nothing); here a Busy eviction costs one read-only pass.
    fn prescan(&self, first: u32, end: u32) -> Result<(), EvictError> {
        let mut busy = None;
        let mut idx = first;
        while idx < end {
            let Some(b) = self.buddy.block_at(idx) else {
                return Err(Invalid::NotLent.into());
            };
            let f = self.buddy.frame(b.head);
            match b.kind {
                Kind::Host => return Err(Invalid::HostOwned.into()),
                Kind::Unmovable => busy = busy.or(Some(idx)),
                Kind::Movable if f.pins() > 0 => busy = busy.or(Some(idx)),
                _ => {}
            }
            idx = b.end();
        }
        match busy {
            Some(idx) => Err(EvictError::Busy {
                first_busy: self.pfn(idx).gpa(),
            }),
            None => Ok(()),
        }
    }

    /// Migrate every movable page of `[first, end)` out, batch by batch.
    fn migrate_range(
        &mut self,
        first: u32,
        end: u32,
        mover: &mut dyn PageMover,
        mode: &mut CopyMode,
    ) -> Result<u64, EvictError> {
        let mut batch = Batch::new(mode);
        let mut moved = 0;
        let mut idx = first;
        while idx < end {
            let b = self.block_or_page(idx);
            if b.kind == Kind::Movable {
                let planned = self.plan(&mut batch, b.head, mover, mode);
                if planned.is_err() || batch.is_full() {
                    moved += self
                        .flush(&mut batch, mover, mode)
                        .map_err(|e| copy_failed(e.code, moved))?;
                }
                if planned.is_err() {
                    return Err(EvictError::NoMemory { migrated: moved });
                }
            }
            idx = b.end();
        }
        moved += self
            .flush(&mut batch, mover, mode)
            .map_err(|e| copy_failed(e.code, moved))?;
        Ok(moved)
    }

    /// Linux's `test_pages_isolated` then `isolate_freepages_range`: the whole range
    /// must be free now; take it for the host.
    fn take(&mut self, first: u32, end: u32) -> Result<(), EvictError> {
        if let Some(idx) = self.first_not(Kind::Free, first, end) {
            return Err(EvictError::Busy {
                first_busy: self.pfn(idx).gpa(),
            });
        }
        self.for_each_block(first, end, |mm, b| {
            mm.buddy.remove_free(b.head);
            mm.carve(b.head, b.order, (first, end), Carve::Take);
        });
        self.stats.host_pages += u64::from(end - first);
        Ok(())
    }

    /// Convert the (detached) block `head`/`order`: the part inside `range` one way, the
    /// rest the other, splitting only the halves that straddle an edge.
    fn carve(&mut self, head: u32, order: u32, range: (u32, u32), how: Carve) {
        let end = head + (1 << order);
        let inside = range.0 <= head && end <= range.1;
        let outside = end <= range.0 || range.1 <= head;
        match (inside, outside, how) {
            (true, _, Carve::Take) | (_, true, Carve::Return) => {
                self.buddy.frame_mut(head).set_head(Kind::Host, order);
            }
            (_, true, Carve::Take) => self.buddy.add_free(head, order),
            (true, _, Carve::Return) => self.buddy.free(head, order),
            (false, false, _) => {
                let half = 1 << (order - 1);
                self.carve(head, order - 1, range, how);
                self.carve(head + half, order - 1, range, how);
            }
        }
    }

    /// The first frame of `[first, end)` whose block is not of `kind`.
    fn first_not(&self, kind: Kind, first: u32, end: u32) -> Option<u32> {
        let mut idx = first;
        while idx < end {
            let b = self.block_or_page(idx);
            if b.kind != kind {
                return Some(idx);
            }
            idx = b.end();
        }
        None
    }

    /// Visit the blocks covering `[first, end)`; `f` may change the block it is given.
    fn for_each_block(&mut self, first: u32, end: u32, mut f: impl FnMut(&mut Self, Block)) {
        let mut idx = first;
        while idx < end {
            let b = self.block_or_page(idx);
            f(self, b);
            idx = b.end();
        }
    }

    /// The block holding `idx`, or a one-page Tail block for unmanaged frames.
    fn block_or_page(&self, idx: u32) -> Block {
        self.buddy.block_at(idx).unwrap_or(Block {
            head: idx,
            order: 0,
            kind: Kind::Tail,
        })
    }
}

fn copy_failed(code: u64, migrated: u64) -> EvictError {
    EvictError::CopyFailed { code, migrated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::testutil::{MB, REGION_A, REGION_B, World};
    use crate::mm::{CopyMode, Migratetype, PageState, Pfn};

    const LEN_A: u64 = 4 * MB;

    /// Pages (id, generation, flags), the lent pageblocks' types, host, pinned and
    /// unmovable page counts.
    type Outline = (Vec<(u32, u32, u32)>, Vec<Option<Migratetype>>, [u64; 3]);

    /// Everything a failed request must leave as it was (pages may have moved, and a
    /// destination may have stolen an ordinary pageblock).
    fn outline(w: &World) -> Outline {
        let pages = w.present().into_iter();
        let pages = pages.map(|(id, e)| (id, e.generation, e.flags));
        let types = [3, 4, 6].map(|pb| w.mm.pageblock_type(Pfn(pb * 512)));
        let s = w.mm.stats();
        let counts = [s.host_pages, s.pinned_pages, s.unmovable_pages];
        (pages.collect(), types.to_vec(), counts)
    }

    fn assert_sound(w: &World) {
        w.mm.check_invariants().unwrap();
        w.verify_all();
        for pb in 0..7 {
            assert_ne!(
                w.mm.pageblock_type(Pfn(pb * 512)),
                Some(Migratetype::Isolate)
            );
        }
    }

    fn assert_host_owned(w: &World, gpa: u64, len: u64) {
        for p in (gpa..gpa + len).step_by(4096) {
            assert_eq!(w.mm.page_state(Pfn::of_gpa(p)), PageState::Host, "{p:#x}");
        }
        assert!(
            w.present()
                .iter()
                .all(|(_, e)| e.gpa < gpa || e.gpa >= gpa + len)
        );
    }

    #[test]
    fn host_copy_evicts_a_full_region_in_batches() {
        let mut w = World::new(1536);
        w.populate();
        let got = w.wl.evict(
            &mut w.mm,
            &mut w.hw,
            REGION_A.start,
            LEN_A,
            CopyMode::Host(&mut w.engine),
        );
        assert_eq!(got, Ok(1024));
        assert_eq!(w.engine.calls, 1024 / 64);
        assert_host_owned(&w, REGION_A.start, LEN_A);
        assert_eq!(w.mm.stats().host_pages, 1024);
        assert_eq!(w.mm.stats().pages_migrated, 1024);
        assert_sound(&w);
    }

    #[test]
    fn guest_copy_evicts_a_64k_range_inside_a_pageblock() {
        let mut w = World::new(1536);
        w.populate();
        let gpa = REGION_B.start + 0x1_0000;
        let got =
            w.wl.evict(&mut w.mm, &mut w.hw, gpa, 0x1_0000, CopyMode::Guest);
        assert_eq!(got, Ok(16));
        assert_host_owned(&w, gpa, 0x1_0000);
        // Neighbours in the same pageblock did not move.
        assert!(matches!(
            w.mm.page_state(Pfn::of_gpa(gpa - 4096)),
            PageState::Movable { .. }
        ));
        assert!(matches!(
            w.mm.page_state(Pfn::of_gpa(gpa + 0x1_0000)),
            PageState::Movable { .. }
        ));
        assert_eq!(w.mm.stats().host_pages, 16);
        assert_sound(&w);
    }

    #[test]
    fn an_empty_range_is_taken_by_splitting_and_returned_by_merging() {
        let mut w = World::new(0);
        let gpa = REGION_B.start + 0x1_0000;
        assert_eq!(
            w.wl.evict(&mut w.mm, &mut w.hw, gpa, 0x1_0000, CopyMode::Guest),
            Ok(0)
        );
        assert_eq!(w.mm.stats().free_cma_pages, 1536 - 16);
        assert_host_owned(&w, gpa, 0x1_0000);
        assert_sound(&w);
        assert_eq!(w.mm.return_range(gpa, 0x1_0000), Ok(16));
        assert_eq!(w.mm.stats().free_cma_pages, 1536);
        // Merged back into one order-9 block.
        assert_eq!(w.mm.buddy.block_at(3 * 1024 + 40).map(|b| b.order), Some(9));
        assert_sound(&w);
    }

    #[test]
    fn a_pinned_page_makes_the_eviction_busy_before_anything_moves() {
        let mut w = World::new(1536);
        w.populate();
        // Pin some page inside region A.
        let inside = |gpa| (REGION_A.start + MB..REGION_A.end).contains(&gpa);
        let (id, e) = *w.present().iter().find(|(_, e)| inside(e.gpa)).unwrap();
        w.mm.pin(Pfn::of_gpa(e.gpa)).unwrap();
        let before = (outline(&w), w.present());
        let got =
            w.wl.evict(&mut w.mm, &mut w.hw, REGION_A.start, LEN_A, CopyMode::Guest);
        assert_eq!(
            got,
            Err(EvictError::Busy { first_busy: e.gpa }),
            "page {id}"
        );
        assert_eq!((outline(&w), w.present()), before);
        assert_eq!(w.mm.stats().pages_migrated, 0);
        assert_sound(&w);
    }

    #[test]
    fn no_memory_keeps_every_page_and_undoes_isolation() {
        let mut w = World::new(1536);
        w.populate();
        while w.mm.stats().free_pages > 24 {
            w.mm.alloc_unmovable(0).unwrap();
        }
        let before = outline(&w);
        let got = w.wl.evict(
            &mut w.mm,
            &mut w.hw,
            REGION_A.start,
            LEN_A,
            CopyMode::Host(&mut w.engine),
        );
        assert_eq!(got, Err(EvictError::NoMemory { migrated: 24 }));
        assert_eq!(got.unwrap_err().status(), Status::NoMemory);
        assert_eq!(outline(&w), before);
        assert_sound(&w);
    }

    #[test]
    fn a_failed_copy_rolls_its_batch_back() {
        let mut w = World::new(1536);
        w.populate();
        w.engine.fail_at = Some(1);
        let before = outline(&w);
        let got = w.wl.evict(
            &mut w.mm,
            &mut w.hw,
            REGION_A.start,
            LEN_A,
            CopyMode::Host(&mut w.engine),
        );
        assert_eq!(
            got,
            Err(EvictError::CopyFailed {
                code: 77,
                migrated: 64
            })
        );
        assert_eq!(got.unwrap_err().status(), Status::Failed { code: 77 });
        assert_eq!(outline(&w), before);
        assert_eq!(w.mm.stats().pages_migrated, 64);
        assert_sound(&w);
    }

    #[test]
    fn nonsense_ranges_are_invalid_and_change_nothing() {
        let mut w = World::new(1536);
        w.populate();
        let a = REGION_A.start;
        let cases = [
            (a, 0, Invalid::Empty),
            (a + 1, 4096, Invalid::Unaligned),
            (a, 4095, Invalid::Unaligned),
            (u64::MAX - 4095, 8192, Invalid::Overflow),
            (2 * MB, 4096, Invalid::NotLent),
            (10 * MB, 4096, Invalid::NotLent),
            (REGION_A.end - 4096, 3 * MB, Invalid::NotLent),
            (1 << 40, 4096, Invalid::NotLent),
        ];
        let before = (outline(&w), w.present());
        for (gpa, len, why) in cases {
            let got = w.wl.evict(&mut w.mm, &mut w.hw, gpa, len, CopyMode::Guest);
            assert_eq!(got, Err(EvictError::Invalid(why)), "{gpa:#x}+{len:#x}");
            assert_eq!(w.mm.return_range(gpa, len), Err(why));
        }
        assert_eq!((outline(&w), w.present()), before);
        // Already the host's: Invalid, nothing moves.
        w.wl.evict(&mut w.mm, &mut w.hw, a, 0x8000, CopyMode::Guest)
            .unwrap();
        let before = (outline(&w), w.present());
        let got = w.wl.evict(&mut w.mm, &mut w.hw, a, 2 * MB, CopyMode::Guest);
        assert_eq!(got, Err(EvictError::Invalid(Invalid::HostOwned)));
        assert_eq!((outline(&w), w.present()), before);
        assert_sound(&w);
    }

    #[test]
    fn return_takes_host_pages_only_and_may_split_a_host_block() {
        let mut w = World::new(0);
        let a = REGION_A.start;
        w.wl.evict(&mut w.mm, &mut w.hw, a, MB, CopyMode::Guest)
            .unwrap();
        assert_eq!(w.mm.return_range(a, 2 * MB), Err(Invalid::NotHostOwned));
        assert_eq!(w.mm.stats().host_pages, 256);
        // The middle first: the host keeps both ends.
        assert_eq!(w.mm.return_range(a + 0x4_0000, 0x4_0000), Ok(64));
        assert_eq!(w.mm.page_state(Pfn::of_gpa(a)), PageState::Host);
        assert_eq!(w.mm.page_state(Pfn::of_gpa(a + 0x4_0000)), PageState::Free);
        assert_eq!(
            w.mm.return_range(a + 0x4_0000, 4096),
            Err(Invalid::NotHostOwned)
        );
        assert_eq!(w.mm.return_range(a, 0x4_0000), Ok(64));
        assert_eq!(w.mm.return_range(a + 0x8_0000, MB - 0x8_0000), Ok(128));
        assert_eq!(w.mm.stats().free_cma_pages, 1536);
        assert_eq!(w.mm.stats().returns, 3);
        assert_sound(&w);
    }

    #[test]
    fn neighbouring_ranges_of_one_pageblock_are_evicted_separately() {
        let mut w = World::new(1536);
        w.populate();
        let b = REGION_B.start;
        for gpa in [b, b + 0x1_0000] {
            let got = w.wl.evict(
                &mut w.mm,
                &mut w.hw,
                gpa,
                0x1_0000,
                CopyMode::Host(&mut w.engine),
            );
            assert_eq!(got, Ok(16));
        }
        assert_host_owned(&w, b, 0x2_0000);
        assert_eq!(w.mm.return_range(b, 0x2_0000), Ok(32));
        assert_sound(&w);
        // The workload refills the returned pages.
        w.wl.release(&mut w.mm, &mut w.hw, 10);
        w.populate();
        assert_sound(&w);
    }
}
