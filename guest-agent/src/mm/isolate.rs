//! Pageblock isolation (Linux's `start_isolate_page_range` / `undo_isolate_page_range`):
//! an isolated pageblock's free blocks sit on the ISOLATE lists, which no allocation
//! uses, and pages freed inside it land there too. Its previous type is kept in the
//! pageblock and restored when isolation ends.

use super::buddy::Buddy;
use super::frame::PAGEBLOCK_PAGES;
use super::pageblock::Migratetype;
use core::ops::Range;

/// The pageblocks covering frames `[first, end)`.
pub(crate) fn pageblocks_of(first: u32, end: u32) -> Range<u32> {
    first / PAGEBLOCK_PAGES..end.div_ceil(PAGEBLOCK_PAGES)
}

impl Buddy<'_> {
    /// Isolate every pageblock of `pbs`. If one already is (another eviction owns it),
    /// undo the ones done and return it, like Linux's `-EBUSY`.
    pub(crate) fn isolate(&mut self, pbs: Range<u32>) -> Result<(), u32> {
        for pb in pbs.clone() {
            if self.blocks[pb as usize].migratetype() == Migratetype::Isolate {
                self.unisolate(pbs.start..pb);
                return Err(pb);
            }
            self.retype(pb, Migratetype::Isolate);
        }
        Ok(())
    }

    /// Give every pageblock of `pbs` back its pre-isolation type, free blocks included.
    pub(crate) fn unisolate(&mut self, pbs: Range<u32>) {
        for pb in pbs {
            let saved = self.blocks[pb as usize].saved();
            self.retype(pb, saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::testutil::{MB, with_mm};
    use crate::mm::{CmaUse, Pfn};

    #[test]
    fn covering_pageblocks() {
        assert_eq!(pageblocks_of(0, 1), 0..1);
        assert_eq!(pageblocks_of(511, 513), 0..2);
        assert_eq!(pageblocks_of(512, 1024), 1..2);
    }

    #[test]
    fn nothing_is_allocated_in_an_isolated_pageblock_and_undo_restores() {
        with_mm(|mm| {
            // Isolate region b (12..14 MiB, pageblock 6): allocations go elsewhere.
            mm.buddy.isolate(6..7).unwrap();
            assert_eq!(mm.buddy.isolate(5..7), Err(6));
            assert_eq!(
                mm.pageblock_type(Pfn(5 * 512)),
                Some(Migratetype::Unmovable)
            );
            while let Some(p) = mm.alloc_movable(1, CmaUse::First) {
                assert!(p.gpa() < 12 * MB, "{p:?} in an isolated pageblock");
            }
            mm.check_invariants().unwrap();
            mm.buddy.unisolate(6..7);
            assert_eq!(mm.pageblock_type(Pfn(6 * 512)), Some(Migratetype::Cma));
            assert_eq!(mm.stats().free_cma_pages, 512);
            mm.check_invariants().unwrap();
        });
    }
}
