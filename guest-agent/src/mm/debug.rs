//! State queries and the invariant checker, in one place (tests, debug commands).

use super::frame::{Kind, NIL};
use super::freelist::ORDERS;
use super::pageblock::{MIGRATETYPES, Migratetype};
use super::{Mm, Pfn};
use protocol::layout::PAGEBLOCK_ORDER;

/// What a page is, as seen from outside the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// No metadata, or never handed to the allocator (reserved, private, the hole).
    Reserved,
    /// Part of a free block.
    Free,
    /// Part of an allocated unmovable block.
    Unmovable,
    /// An allocated movable page.
    Movable {
        /// The owner id (the workload's logical page id).
        owner: u32,
        /// Its pin count.
        pins: u32,
    },
    /// Taken by the host.
    Host,
}

/// A broken invariant: what, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvariantError {
    /// Which rule.
    pub what: &'static str,
    /// The frame it was found at.
    pub pfn: u64,
}

#[derive(Default)]
struct Census {
    free: [u64; MIGRATETYPES],
    free_blocks: [[u64; ORDERS]; MIGRATETYPES],
    movable: u64,
    unmovable: u64,
    host: u64,
    pinned: u64,
}

impl Mm<'_> {
    /// The state of page `pfn`.
    pub fn page_state(&self, pfn: Pfn) -> PageState {
        let Some(b) = self.index(pfn).and_then(|idx| self.buddy.block_at(idx)) else {
            return PageState::Reserved;
        };
        let f = self.buddy.frame(b.head);
        match b.kind {
            Kind::Free => PageState::Free,
            Kind::Unmovable => PageState::Unmovable,
            Kind::Movable => PageState::Movable {
                owner: f.owner(),
                pins: f.pins(),
            },
            Kind::Host => PageState::Host,
            Kind::Tail => PageState::Reserved,
        }
    }

    /// The migratetype of the pageblock holding `pfn`, if it has metadata.
    pub fn pageblock_type(&self, pfn: Pfn) -> Option<Migratetype> {
        self.index(pfn).map(|idx| self.buddy.mt_of(idx))
    }

    /// Check every structural rule; O(frames). Blocks aligned, inside one pageblock,
    /// tails really tails; free lists consistent with the frames both ways; no
    /// unmovable page in a CMA or isolated pageblock; movable pages are single pages;
    /// host blocks inside lent regions; every counter equal to a recount.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let census = self.census()?;
        self.check_lists(&census)?;
        let s = &self.stats;
        let err = |what| Err(InvariantError { what, pfn: 0 });
        for mt in Migratetype::ALL {
            if census.free[mt.index()] != self.buddy.lists.free_pages(mt) {
                return err("free-page counter differs from the frames");
            }
        }
        if (census.movable, census.unmovable) != (s.movable_pages, s.unmovable_pages) {
            return err("allocated-page counters differ from the frames");
        }
        if (census.host, census.pinned) != (s.host_pages, s.pinned_pages) {
            return err("host or pinned counters differ from the frames");
        }
        Ok(())
    }

    /// Walk every frame block by block, checking each block and counting.
    fn census(&self) -> Result<Census, InvariantError> {
        let mut c = Census::default();
        let n = self.map.frames();
        let mut idx = 0;
        while idx < n {
            let f = *self.buddy.frame(idx);
            if f.kind() == Kind::Tail {
                idx += 1;
                continue;
            }
            let (order, mt) = (f.order(), self.buddy.mt_of(idx));
            let fail = |what| InvariantError {
                what,
                pfn: self.map.pfn(idx),
            };
            if order > PAGEBLOCK_ORDER || idx % (1 << order) != 0 {
                return Err(fail("block misaligned or too big"));
            }
            let end = idx + (1 << order);
            if (idx + 1..end).any(|t| self.buddy.frame(t).kind() != Kind::Tail) {
                return Err(fail("a block head inside another block"));
            }
            let pages = 1u64 << order;
            c.pinned += u64::from(f.pins() > 0);
            match f.kind() {
                Kind::Free => {
                    c.free[mt.index()] += pages;
                    c.free_blocks[mt.index()][order as usize] += 1;
                }
                Kind::Unmovable if matches!(mt, Migratetype::Cma | Migratetype::Isolate) => {
                    return Err(fail("unmovable page in a CMA or isolated pageblock"));
                }
                Kind::Unmovable => c.unmovable += pages,
                Kind::Movable if order != 0 => return Err(fail("movable block above order 0")),
                Kind::Movable => c.movable += 1,
                Kind::Host => {
                    let (s, e) = (self.pfn(idx).gpa(), self.pfn(end - 1).gpa() + 4096);
                    if !self.lent.as_slice().iter().any(|r| r.contains(s, e)) {
                        return Err(fail("host block outside the lent regions"));
                    }
                    c.host += pages;
                }
                Kind::Tail => {}
            }
            if f.pins() > 0 && !matches!(f.kind(), Kind::Movable | Kind::Unmovable) {
                return Err(fail("pins on a page that is not allocated"));
            }
            idx = end;
        }
        Ok(c)
    }

    /// Walk every free list: each entry a free head of the list's order in a pageblock
    /// of the list's type, back links right, as many entries as the census found.
    fn check_lists(&self, c: &Census) -> Result<(), InvariantError> {
        for mt in Migratetype::ALL {
            for order in 0..ORDERS as u32 {
                let mut count = 0;
                let mut prev = NIL;
                let mut cur = self.buddy.lists.first(mt, order).unwrap_or(NIL);
                while cur != NIL {
                    let f = self.buddy.frame(cur);
                    let ok = f.kind() == Kind::Free
                        && f.order() == order
                        && self.buddy.mt_of(cur) == mt
                        && f.links().1 == prev;
                    count += 1;
                    if !ok || count > c.free_blocks[mt.index()][order as usize] {
                        return Err(InvariantError {
                            what: "free list entry inconsistent with its frame",
                            pfn: self.map.pfn(cur),
                        });
                    }
                    prev = cur;
                    cur = f.links().0;
                }
                if count != c.free_blocks[mt.index()][order as usize] {
                    return Err(InvariantError {
                        what: "free block missing from its list",
                        pfn: 0,
                    });
                }
            }
        }
        Ok(())
    }
}
