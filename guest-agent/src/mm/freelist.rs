//! Free lists per (migratetype, order): intrusive doubly linked lists of frame indices,
//! threaded through the head frames of free blocks.
//!
//! ```text
//!  heads[Cma][3] ──▶ frame 4096 ⇄ frame 8200 ⇄ frame 520 ──▶ NIL
//!                    (next/prev are the frames' link fields; the heads live here)
//! ```

use super::frame::{Frame, NIL};
use super::pageblock::{MIGRATETYPES, Migratetype};
use protocol::layout::PAGEBLOCK_ORDER;

/// Number of orders: 0 ..= PAGEBLOCK_ORDER.
pub(crate) const ORDERS: usize = PAGEBLOCK_ORDER as usize + 1;

/// The list heads and the free-page count of each migratetype.
#[derive(Debug, Clone)]
pub(crate) struct FreeLists {
    heads: [[u32; ORDERS]; MIGRATETYPES],
    pages: [u64; MIGRATETYPES],
}

impl FreeLists {
    /// Empty lists.
    pub(crate) const fn new() -> Self {
        FreeLists {
            heads: [[NIL; ORDERS]; MIGRATETYPES],
            pages: [0; MIGRATETYPES],
        }
    }

    /// First block of list (`mt`, `order`).
    pub(crate) fn first(&self, mt: Migratetype, order: u32) -> Option<u32> {
        let head = self.heads[mt.index()][order as usize];
        (head != NIL).then_some(head)
    }

    /// Free pages on the lists of `mt`.
    pub(crate) fn free_pages(&self, mt: Migratetype) -> u64 {
        self.pages[mt.index()]
    }

    /// Push block `idx` at the front of list (`mt`, `order`).
    pub(crate) fn push(&mut self, frames: &mut [Frame], idx: u32, mt: Migratetype, order: u32) {
        let head = &mut self.heads[mt.index()][order as usize];
        if *head != NIL {
            frames[*head as usize].set_prev(idx);
        }
        let f = &mut frames[idx as usize];
        f.set_next(*head);
        f.set_prev(NIL);
        *head = idx;
        self.pages[mt.index()] += 1 << order;
    }

    /// Remove block `idx` from list (`mt`, `order`).
    pub(crate) fn unlink(&mut self, frames: &mut [Frame], idx: u32, mt: Migratetype, order: u32) {
        let (next, prev) = frames[idx as usize].links();
        if prev == NIL {
            self.heads[mt.index()][order as usize] = next;
        } else {
            frames[prev as usize].set_next(next);
        }
        if next != NIL {
            frames[next as usize].set_prev(prev);
        }
        self.pages[mt.index()] -= 1 << order;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_unlink_keeps_links_and_counts() {
        let mut frames = [Frame::default(); 8];
        let mut l = FreeLists::new();
        let mt = Migratetype::Movable;
        for i in [0, 2, 4] {
            l.push(&mut frames, i, mt, 1);
        }
        assert_eq!(l.first(mt, 1), Some(4));
        assert_eq!(l.free_pages(mt), 6);
        l.unlink(&mut frames, 2, mt, 1);
        assert_eq!(frames[4].links(), (0, NIL));
        assert_eq!(frames[0].links(), (NIL, 4));
        l.unlink(&mut frames, 4, mt, 1);
        assert_eq!(l.first(mt, 1), Some(0));
        l.unlink(&mut frames, 0, mt, 1);
        assert_eq!((l.first(mt, 1), l.free_pages(mt)), (None, 0));
    }
}
