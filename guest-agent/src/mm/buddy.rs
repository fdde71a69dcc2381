//! The buddy core: split, merge, find the block holding a frame, move a pageblock's free
//! blocks to another migratetype. Works on frame indices; knows nothing of policy.
//!
//! ```text
//!  order 2 block at 8:  [8 9 10 11]   its buddy: 8 ^ 4 = 12 → [12 13 14 15]
//!  free(8, 2) with 12 free at order 2  →  one order-3 block at 8 (12 becomes a tail)
//!  take_smallest(order 0) from a free order-2 block at 8 → returns 8, frees 10/1 and 9/0
//! ```
//! Blocks never exceed a pageblock (max order = `PAGEBLOCK_ORDER`), so a block's
//! migratetype is simply its pageblock's.

use super::frame::{Frame, Kind, PAGEBLOCK_PAGES};
use super::freelist::FreeLists;
use super::pageblock::{Migratetype, Pageblock};
use protocol::layout::PAGEBLOCK_ORDER;

/// A block: `2^order` frames from `head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    /// Index of the first frame.
    pub head: u32,
    /// log2 of the size in frames.
    pub order: u32,
    /// What the block is.
    pub kind: Kind,
}

impl Block {
    /// One past the last frame.
    pub fn end(&self) -> u32 {
        self.head + (1 << self.order)
    }
}

/// Frames, pageblocks and free lists.
pub(crate) struct Buddy<'a> {
    pub frames: &'a mut [Frame],
    pub blocks: &'a mut [Pageblock],
    pub lists: FreeLists,
}

impl<'a> Buddy<'a> {
    /// A buddy over zeroed (or otherwise all-tail) metadata, with no free memory.
    pub fn new(frames: &'a mut [Frame], blocks: &'a mut [Pageblock]) -> Self {
        Buddy {
            frames,
            blocks,
            lists: FreeLists::new(),
        }
    }

    /// The migratetype of the pageblock holding frame `idx`.
    pub fn mt_of(&self, idx: u32) -> Migratetype {
        self.blocks[(idx / PAGEBLOCK_PAGES) as usize].migratetype()
    }

    /// The frame `idx`.
    pub fn frame(&self, idx: u32) -> &Frame {
        &self.frames[idx as usize]
    }

    /// The frame `idx`, mutably.
    pub fn frame_mut(&mut self, idx: u32) -> &mut Frame {
        &mut self.frames[idx as usize]
    }

    /// Make `idx` a free head of `order` on its pageblock's list, without merging.
    pub fn add_free(&mut self, idx: u32, order: u32) {
        let mt = self.mt_of(idx);
        self.frames[idx as usize].set_head(Kind::Free, order);
        self.lists.push(self.frames, idx, mt, order);
    }

    /// Take free head `idx` off its list; it becomes a tail (the caller says what next).
    pub fn remove_free(&mut self, idx: u32) -> u32 {
        let order = self.frames[idx as usize].order();
        let mt = self.mt_of(idx);
        self.lists.unlink(self.frames, idx, mt, order);
        self.frames[idx as usize].clear();
        order
    }

    /// Free the block at `idx` of `order`, merging with free buddies (`__free_one_page`).
    pub fn free(&mut self, idx: u32, order: u32) {
        let (mut idx, mut order) = (idx, order);
        self.frames[idx as usize].clear();
        while order < PAGEBLOCK_ORDER {
            let buddy = idx ^ (1 << order);
            if !self.is_free_head(buddy, order) {
                break;
            }
            self.remove_free(buddy);
            idx &= buddy;
            order += 1;
        }
        self.add_free(idx, order);
    }

    fn is_free_head(&self, idx: u32, order: u32) -> bool {
        self.frames
            .get(idx as usize)
            .is_some_and(|f| f.kind() == Kind::Free && f.order() == order)
    }

    /// Take the smallest free block of at least `order` from the lists of `mt`, split it
    /// down to `order` (`__rmqueue_smallest`). The returned head is a tail: the caller
    /// marks it allocated.
    pub fn take_smallest(&mut self, mt: Migratetype, order: u32) -> Option<u32> {
        let (idx, found) =
            (order..=PAGEBLOCK_ORDER).find_map(|o| self.lists.first(mt, o).map(|idx| (idx, o)))?;
        self.remove_free(idx);
        self.split(idx, found, order);
        Some(idx)
    }

    /// The largest free block of at least `order` on the lists of `mt`.
    pub fn largest_free(&self, mt: Migratetype, order: u32) -> Option<Block> {
        (order..=PAGEBLOCK_ORDER).rev().find_map(|o| {
            self.lists.first(mt, o).map(|head| Block {
                head,
                order: o,
                kind: Kind::Free,
            })
        })
    }

    /// Split the (removed) block at `idx` from `from` down to `to`, freeing the upper
    /// halves on their pageblock's lists (`expand`).
    pub fn split(&mut self, idx: u32, from: u32, to: u32) {
        for o in (to..from).rev() {
            self.add_free(idx + (1 << o), o);
        }
    }

    /// The block holding frame `idx`; `None` for frames no block covers (never managed).
    /// One load for a head; otherwise at most one probe per order, as Linux's
    /// `is_free_buddy_page` does.
    pub fn block_at(&self, idx: u32) -> Option<Block> {
        (0..=PAGEBLOCK_ORDER)
            .find_map(|o| {
                let head = idx & !((1 << o) - 1);
                let f = self.frames[head as usize];
                (f.kind() != Kind::Tail).then_some(Block {
                    head,
                    order: f.order(),
                    kind: f.kind(),
                })
            })
            // The first head met going down is the only candidate: blocks are naturally
            // aligned and disjoint, so if it does not reach `idx`, nothing does.
            .filter(|b| idx < b.end())
    }

    /// Give pageblock `pb` migratetype `mt`, moving its free blocks to `mt`'s lists
    /// (`move_freepages_block`). Returns the number of free pages moved. Walks the
    /// pageblock block by block: at most 512 steps, fewer when blocks are big.
    pub fn retype(&mut self, pb: u32, mt: Migratetype) -> u64 {
        let old = self.blocks[pb as usize].migratetype();
        let mut moved = 0;
        self.for_each_block(pb, |buddy, b| {
            if b.kind == Kind::Free {
                buddy.lists.unlink(buddy.frames, b.head, old, b.order);
                buddy.lists.push(buddy.frames, b.head, mt, b.order);
                moved += 1 << b.order;
            }
        });
        self.blocks[pb as usize].set(mt);
        moved
    }

    /// Free pages in pageblock `pb`.
    pub fn free_in_pageblock(&mut self, pb: u32) -> u64 {
        let mut free = 0;
        self.for_each_block(pb, |_, b| {
            if b.kind == Kind::Free {
                free += 1 << b.order;
            }
        });
        free
    }

    /// Visit every block head of pageblock `pb` (unmanaged frames are skipped one by one).
    fn for_each_block(&mut self, pb: u32, mut visit: impl FnMut(&mut Self, Block)) {
        let (mut idx, end) = (pb * PAGEBLOCK_PAGES, (pb + 1) * PAGEBLOCK_PAGES);
        while idx < end {
            let f = self.frames[idx as usize];
            if f.kind() == Kind::Tail {
                idx += 1;
                continue;
            }
            let b = Block {
                head: idx,
                order: f.order(),
                kind: f.kind(),
            };
            visit(self, b);
            idx = b.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_buddy(test: impl FnOnce(&mut Buddy)) {
        let mut frames = vec![Frame::default(); 2 * PAGEBLOCK_PAGES as usize];
        let mut blocks = vec![Pageblock::default(); 2];
        blocks[0].set(Migratetype::Movable);
        blocks[1].set(Migratetype::Movable);
        let mut b = Buddy::new(&mut frames, &mut blocks);
        test(&mut b);
    }

    #[test]
    fn freeing_single_pages_merges_up_to_a_pageblock_and_no_further() {
        with_buddy(|b| {
            for i in 0..2 * PAGEBLOCK_PAGES {
                b.free(i, 0);
            }
            let mt = Migratetype::Movable;
            assert_eq!(b.lists.first(mt, PAGEBLOCK_ORDER), Some(PAGEBLOCK_PAGES));
            assert_eq!(b.lists.free_pages(mt), 2 * u64::from(PAGEBLOCK_PAGES));
            for i in 1..PAGEBLOCK_PAGES {
                assert_eq!(b.frame(i).kind(), Kind::Tail);
            }
        });
    }

    #[test]
    fn take_smallest_splits_and_leaves_buddies_free() {
        with_buddy(|b| {
            b.free(0, 2);
            let idx = b.take_smallest(Migratetype::Movable, 0).unwrap();
            assert_eq!(idx, 0);
            assert_eq!(b.frame(1).kind(), Kind::Free);
            assert_eq!((b.frame(2).kind(), b.frame(2).order()), (Kind::Free, 1));
            assert_eq!(b.take_smallest(Migratetype::Cma, 0), None);
        });
    }

    #[test]
    fn block_at_finds_the_covering_head_or_nothing() {
        with_buddy(|b| {
            b.add_free(8, 3);
            b.frame_mut(4).set_head(Kind::Movable, 0);
            assert_eq!(b.block_at(13).map(|x| x.head), Some(8));
            assert_eq!(b.block_at(4).map(|x| x.kind), Some(Kind::Movable));
            assert_eq!(b.block_at(5), None);
            assert_eq!(b.block_at(0), None);
        });
    }

    #[test]
    fn retype_moves_free_blocks_between_lists() {
        with_buddy(|b| {
            b.free(0, 4);
            b.frame_mut(16).set_head(Kind::Unmovable, 0);
            b.free(17, 0);
            assert_eq!(b.free_in_pageblock(0), 17);
            assert_eq!(b.retype(0, Migratetype::Isolate), 17);
            assert_eq!(b.lists.free_pages(Migratetype::Isolate), 17);
            assert_eq!(b.lists.free_pages(Migratetype::Movable), 0);
            assert_eq!(b.blocks[0].saved(), Migratetype::Movable);
        });
    }
}
