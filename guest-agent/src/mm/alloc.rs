//! Allocation policy: which free lists an allocation may use, in which order (Linux's
//! `__rmqueue` and its fallbacks), and free / pin / unpin.
//!
//! ```text
//!  kind        tries, in order                                   never
//!  Unmovable   UNMOVABLE, steal from MOVABLE                     CMA, ISOLATE
//!  Movable     CmaUse::First    CMA, MOVABLE, steal UNMOVABLE    ISOLATE
//!              CmaUse::Balanced like First if CMA holds more than half of the free
//!                               pages, else MOVABLE, CMA, steal  (Linux's rule)
//!              CmaUse::Last     MOVABLE, steal UNMOVABLE, CMA
//! ```
//! Stealing (`__rmqueue_fallback`) takes the largest free block of the other type; if
//! it is a whole pageblock, or at least half of its pageblock is free, the pageblock
//! changes type (Linux's `try_to_claim_block`, counting free pages only), otherwise
//! only the block is taken and the pageblock keeps its type. CMA and ISOLATE pageblocks
//! are never stolen.

use super::frame::{Kind, MAX_PINS, PAGEBLOCK_PAGES};
use super::pageblock::Migratetype;
use super::{Mm, Pfn};
use protocol::layout::PAGEBLOCK_ORDER;

/// Where a movable allocation looks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmaUse {
    /// Linux's rule: CMA first when CMA pageblocks hold more than half of the free pages.
    Balanced,
    /// Fill lent memory first (the workload: the VMM lends regions to be used).
    First,
    /// Ordinary memory first (migration destinations: the VMM tends to evict
    /// neighbouring ranges next, and a page moved into one would move twice).
    Last,
}

/// Why a page operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageError {
    /// The pfn has no metadata.
    NotManaged,
    /// The frame is not the head of an allocated block.
    NotAllocated,
    /// The page is pinned.
    Pinned,
    /// The page is not pinned.
    NotPinned,
    /// The pin count is at its maximum.
    TooManyPins,
}

#[derive(Clone, Copy)]
enum Source {
    List(Migratetype),
    Steal,
}

impl Mm<'_> {
    /// Allocate `2^order` contiguous unmovable pages (`order` ≤ 9). Their contents are
    /// zero except perhaps the workload's written words (see [`crate::workload`]).
    pub fn alloc_unmovable(&mut self, order: u32) -> Option<Pfn> {
        if order > PAGEBLOCK_ORDER {
            return None;
        }
        let idx = self
            .buddy
            .take_smallest(Migratetype::Unmovable, order)
            .or_else(|| self.steal(Migratetype::Unmovable, order))?;
        self.buddy.frame_mut(idx).set_head(Kind::Unmovable, order);
        self.stats.unmovable_pages += 1 << order;
        Some(self.pfn(idx))
    }

    /// Allocate one movable page for `owner` (the id migration hands to the
    /// [`super::PageMover`] when the page moves).
    pub fn alloc_movable(&mut self, owner: u32, cma: CmaUse) -> Option<Pfn> {
        self.alloc_movable_idx(owner, cma).map(|idx| self.pfn(idx))
    }

    pub(super) fn alloc_movable_idx(&mut self, owner: u32, cma: CmaUse) -> Option<u32> {
        let idx = movable_sources(cma, self.cma_holds_most_free())
            .into_iter()
            .find_map(|src| match src {
                Source::List(mt) => self.buddy.take_smallest(mt, 0),
                Source::Steal => self.steal(Migratetype::Movable, 0),
            })?;
        let f = self.buddy.frame_mut(idx);
        f.set_head(Kind::Movable, 0);
        f.set_owner(owner);
        self.stats.movable_pages += 1;
        Some(idx)
    }

    fn cma_holds_most_free(&self) -> bool {
        let l = &self.buddy.lists;
        let cma = l.free_pages(Migratetype::Cma);
        2 * cma > cma + l.free_pages(Migratetype::Movable) + l.free_pages(Migratetype::Unmovable)
    }

    /// Take a block of at least `order` from the other ordinary type for `want`.
    fn steal(&mut self, want: Migratetype, order: u32) -> Option<u32> {
        let from = match want {
            Migratetype::Unmovable => Migratetype::Movable,
            Migratetype::Movable => Migratetype::Unmovable,
            _ => return None,
        };
        let b = self.buddy.largest_free(from, order)?;
        let pb = b.head / PAGEBLOCK_PAGES;
        if b.order == PAGEBLOCK_ORDER
            || 2 * self.buddy.free_in_pageblock(pb) >= u64::from(PAGEBLOCK_PAGES)
        {
            self.buddy.retype(pb, want);
            return self.buddy.take_smallest(want, order);
        }
        self.buddy.remove_free(b.head);
        self.buddy.split(b.head, b.order, order);
        Some(b.head)
    }

    /// Free the allocated block starting at `pfn` (any order; pinned pages cannot be
    /// freed). Its contents must be zero except perhaps the workload's written words.
    pub fn free(&mut self, pfn: Pfn) -> Result<(), PageError> {
        let idx = self.index(pfn).ok_or(PageError::NotManaged)?;
        let f = *self.buddy.frame(idx);
        let counter = match f.kind() {
            Kind::Movable => &mut self.stats.movable_pages,
            Kind::Unmovable => &mut self.stats.unmovable_pages,
            _ => return Err(PageError::NotAllocated),
        };
        if f.pins() > 0 {
            return Err(PageError::Pinned);
        }
        *counter -= 1 << f.order();
        self.buddy.free(idx, f.order());
        Ok(())
    }

    /// Pin the allocated page at `pfn` (a GUP pin: it now refuses to migrate). Returns
    /// the new pin count.
    pub fn pin(&mut self, pfn: Pfn) -> Result<u32, PageError> {
        let idx = self.allocated(pfn)?;
        let pins = self.buddy.frame(idx).pins();
        if pins == MAX_PINS {
            return Err(PageError::TooManyPins);
        }
        self.buddy.frame_mut(idx).set_pins(pins + 1);
        self.stats.pinned_pages += u64::from(pins == 0);
        Ok(pins + 1)
    }

    /// Drop one pin of the page at `pfn`. Returns the new pin count.
    pub fn unpin(&mut self, pfn: Pfn) -> Result<u32, PageError> {
        let idx = self.allocated(pfn)?;
        let pins = self.buddy.frame(idx).pins();
        if pins == 0 {
            return Err(PageError::NotPinned);
        }
        self.buddy.frame_mut(idx).set_pins(pins - 1);
        self.stats.pinned_pages -= u64::from(pins == 1);
        Ok(pins - 1)
    }

    fn allocated(&self, pfn: Pfn) -> Result<u32, PageError> {
        let idx = self.index(pfn).ok_or(PageError::NotManaged)?;
        match self.buddy.frame(idx).kind() {
            Kind::Movable | Kind::Unmovable => Ok(idx),
            _ => Err(PageError::NotAllocated),
        }
    }
}

/// The order in which a movable allocation tries the lists.
fn movable_sources(cma: CmaUse, cma_holds_most_free: bool) -> [Source; 3] {
    use Migratetype::{Cma, Movable};
    match cma {
        CmaUse::First => [Source::List(Cma), Source::List(Movable), Source::Steal],
        CmaUse::Balanced if cma_holds_most_free => {
            [Source::List(Cma), Source::List(Movable), Source::Steal]
        }
        CmaUse::Balanced => [Source::List(Movable), Source::List(Cma), Source::Steal],
        CmaUse::Last => [Source::List(Movable), Source::Steal, Source::List(Cma)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::testutil::{MB, with_mm};

    fn pfn_in(pfn: Pfn, start_mb: u64, end_mb: u64) -> bool {
        (start_mb * MB..end_mb * MB).contains(&pfn.gpa())
    }

    #[test]
    fn unmovable_steals_a_movable_pageblock_and_never_touches_cma() {
        with_mm(|mm| {
            let first = mm.alloc_unmovable(0).unwrap();
            let pb = Pfn(first.0 & !511);
            assert_eq!(mm.pageblock_type(pb), Some(Migratetype::Unmovable));
            let mut n = 1;
            while let Some(p) = mm.alloc_unmovable(0) {
                assert!(pfn_in(p, 1, 6), "unmovable page at {p:?}");
                n += 1;
            }
            assert_eq!(n, mm.stats().unmovable_pages);
            assert_eq!(mm.stats().free_pages, mm.stats().free_cma_pages);
            mm.check_invariants().unwrap();
        });
    }

    #[test]
    fn movable_policies_pick_cma_or_ram() {
        with_mm(|mm| {
            let p = mm.alloc_movable(1, CmaUse::First).unwrap();
            assert_eq!(mm.pageblock_type(p), Some(Migratetype::Cma));
            let p = mm.alloc_movable(2, CmaUse::Last).unwrap();
            assert_eq!(mm.pageblock_type(p), Some(Migratetype::Movable));
            // 1536 free CMA pages against 1023 of RAM: Linux's rule picks CMA.
            let p = mm.alloc_movable(3, CmaUse::Balanced).unwrap();
            assert_eq!(mm.pageblock_type(p), Some(Migratetype::Cma));
            mm.check_invariants().unwrap();
        });
    }

    #[test]
    fn movable_falls_back_to_cma_when_ram_is_full_and_never_to_isolate() {
        with_mm(|mm| {
            let mut cma = 0;
            while let Some(p) = mm.alloc_movable(0, CmaUse::Last) {
                cma += u64::from(mm.pageblock_type(p) == Some(Migratetype::Cma));
            }
            assert_eq!(cma, 1536);
            assert_eq!(mm.stats().free_pages, 0);
            mm.check_invariants().unwrap();
        });
    }

    #[test]
    fn free_pin_unpin_rules() {
        with_mm(|mm| {
            let p = mm.alloc_movable(5, CmaUse::First).unwrap();
            assert_eq!(mm.pin(p), Ok(1));
            assert_eq!(mm.pin(p), Ok(2));
            assert_eq!(mm.free(p), Err(PageError::Pinned));
            assert_eq!(mm.stats().pinned_pages, 1);
            assert_eq!(mm.unpin(p), Ok(1));
            assert_eq!(mm.unpin(p), Ok(0));
            assert_eq!(mm.unpin(p), Err(PageError::NotPinned));
            assert_eq!(mm.free(p), Ok(()));
            assert_eq!(mm.free(p), Err(PageError::NotAllocated));
            assert_eq!(mm.pin(p), Err(PageError::NotAllocated));
            assert_eq!(mm.free(Pfn(1 << 40)), Err(PageError::NotManaged));
            let big = mm.alloc_unmovable(3).unwrap();
            assert_eq!(mm.free(Pfn(big.0 + 1)), Err(PageError::NotAllocated));
            assert_eq!(mm.free(big), Ok(()));
            assert_eq!(mm.alloc_unmovable(PAGEBLOCK_ORDER + 1), None);
            mm.check_invariants().unwrap();
        });
    }

    #[test]
    fn frees_merge_back_to_the_initial_free_count() {
        with_mm(|mm| {
            let before = mm.stats();
            let pages: Vec<_> = (0..700)
                .map(|i| mm.alloc_movable(i, CmaUse::Balanced).unwrap())
                .collect();
            let big: Vec<_> = (0..5).map(|_| mm.alloc_unmovable(4).unwrap()).collect();
            for p in pages.into_iter().chain(big) {
                mm.free(p).unwrap();
            }
            assert_eq!(mm.stats().free_pages, before.free_pages);
            mm.check_invariants().unwrap();
        });
    }
}
