//! Page migration in batches: plan, copy, commit (or roll back).
//!
//! ```text
//!  plan    for each source: allocate a destination outside every isolated pageblock
//!          (CmaUse::Last), unmap the source (nothing may write it now), chain it into
//!          the batch, hand the pair to the copy engine (host mode)
//!  copy    host mode: CopyEngine::copy (the VMM copies the batch at host speed)
//!          guest mode: PageMover::copy_page for each pair (4 KiB through the direct map)
//!  commit  map the destination under the owner's id, free the source
//!  rollback (the copy failed): map the source again, free the destination
//!
//!  the batch lives in the sources' own metadata (an allocated page uses no list links):
//!   head ─▶ src A {link_a: dst A, link_b: B} ─▶ src B {dst B, NIL}
//! ```
//! Linux's `migrate_pages_batch` has the same shape: unmap a batch, move it, remap it.

use super::frame::{Kind, NIL};
use super::{CmaUse, Mm, Pfn};
use protocol::msg::{MAX_MIGRATE_PAIRS, MigratePair};

/// How migration reaches the owners of movable pages, and the CPU copy.
pub trait PageMover {
    /// Stop every access to `owner`'s page (unmap it, flush the TLB): it is about to be
    /// copied.
    fn unmap(&mut self, owner: u32);

    /// `owner`'s page now lives in frame `pfn`: map it there and record the move. Called
    /// after a copy with the destination, or on rollback with the original frame.
    fn map(&mut self, owner: u32, pfn: Pfn);

    /// Copy the 4 KiB frame `src` to `dst` (guest-copy mode).
    fn copy_page(&mut self, src: Pfn, dst: Pfn);
}

/// The VMM's copy: batches of (source, destination) guest-physical pairs.
pub trait CopyEngine {
    /// Most pairs one [`CopyEngine::copy`] takes (at most [`MAX_MIGRATE_PAIRS`]).
    fn capacity(&self) -> usize {
        MAX_MIGRATE_PAIRS
    }

    /// Queue one pair for the next [`CopyEngine::copy`].
    fn push(&mut self, pair: MigratePair);

    /// Copy every queued pair. The queue is empty afterwards, whatever the outcome.
    fn copy(&mut self) -> Result<(), CopyError>;
}

/// The copy engine failed; nothing of the batch may be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyError {
    /// Engine-defined code (goes back to the VMM in `Status::Failed`).
    pub code: u64,
}

/// Who copies page contents during an eviction.
pub enum CopyMode<'e> {
    /// The guest copies each page through [`PageMover::copy_page`].
    Guest,
    /// The VMM copies each batch ([`protocol::msg::GuestMsg::Migrate`]).
    Host(&'e mut dyn CopyEngine),
}

impl CopyMode<'_> {
    /// Pages per batch.
    fn batch_size(&self) -> usize {
        match self {
            CopyMode::Guest => MAX_MIGRATE_PAIRS,
            CopyMode::Host(e) => e.capacity().clamp(1, MAX_MIGRATE_PAIRS),
        }
    }
}

/// No free page for a migration destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoDestination;

/// Planned sources, chained through their frames.
pub(crate) struct Batch {
    first: u32,
    last: u32,
    len: usize,
    limit: usize,
}

impl Batch {
    /// An empty batch sized for `mode`.
    pub(crate) fn new(mode: &CopyMode) -> Self {
        Batch {
            first: NIL,
            last: NIL,
            len: 0,
            limit: mode.batch_size(),
        }
    }

    /// Whether the batch must be flushed before planning more.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.limit
    }
}

impl Mm<'_> {
    /// Plan the move of movable page `src`: destination, unmap, chain, queue.
    pub(crate) fn plan(
        &mut self,
        batch: &mut Batch,
        src: u32,
        mover: &mut dyn PageMover,
        mode: &mut CopyMode,
    ) -> Result<(), NoDestination> {
        let owner = self.buddy.frame(src).owner();
        let dst = self
            .alloc_movable_idx(owner, CmaUse::Last)
            .ok_or(NoDestination)?;
        mover.unmap(owner);
        self.buddy.frame_mut(src).set_plan(dst);
        if batch.last == NIL {
            batch.first = src;
        } else {
            self.buddy.frame_mut(batch.last).set_plan_next(src);
        }
        batch.last = src;
        batch.len += 1;
        if let CopyMode::Host(engine) = mode {
            engine.push(MigratePair {
                src: self.pfn(src).gpa(),
                dst: self.pfn(dst).gpa(),
            });
        }
        Ok(())
    }

    /// Copy, then commit or roll back, the batch; it is empty afterwards. Returns the
    /// number of pages moved.
    pub(crate) fn flush(
        &mut self,
        batch: &mut Batch,
        mover: &mut dyn PageMover,
        mode: &mut CopyMode,
    ) -> Result<u64, CopyError> {
        if batch.len == 0 {
            return Ok(0);
        }
        let copied = match mode {
            CopyMode::Host(engine) => engine.copy(),
            CopyMode::Guest => {
                self.for_each_planned(batch, |_, src, dst| mover.copy_page(src, dst));
                Ok(())
            }
        };
        let moved = batch.len as u64;
        let first = batch.first;
        *batch = Batch {
            first: NIL,
            last: NIL,
            len: 0,
            limit: batch.limit,
        };
        match copied {
            Ok(()) => {
                self.commit(first, mover);
                Ok(moved)
            }
            Err(e) => {
                self.rollback(first, mover);
                Err(e)
            }
        }
    }

    /// Map each destination, free each source.
    fn commit(&mut self, first: u32, mover: &mut dyn PageMover) {
        self.walk_chain(first, |mm, src, dst| {
            let owner = mm.buddy.frame(src).owner();
            mover.map(owner, mm.pfn(dst));
            mm.release_movable(src);
            mm.stats.pages_migrated += 1;
        });
    }

    /// Map each source again, free each destination (its contents are a copy of the
    /// source or untouched, so the frame-contents rule holds).
    fn rollback(&mut self, first: u32, mover: &mut dyn PageMover) {
        self.walk_chain(first, |mm, src, dst| {
            let owner = mm.buddy.frame(src).owner();
            mover.map(owner, mm.pfn(src));
            mm.release_movable(dst);
        });
    }

    fn release_movable(&mut self, idx: u32) {
        debug_assert_eq!(self.buddy.frame(idx).kind(), Kind::Movable);
        self.stats.movable_pages -= 1;
        self.buddy.free(idx, 0);
    }

    fn for_each_planned(&self, batch: &Batch, mut f: impl FnMut(&Self, Pfn, Pfn)) {
        let mut src = batch.first;
        while src != NIL {
            let (dst, next) = self.buddy.frame(src).plan();
            f(self, self.pfn(src), self.pfn(dst));
            src = next;
        }
    }

    /// Visit `(src, dst)` of a chain; `f` may free `src` (the link is read first).
    fn walk_chain(&mut self, first: u32, mut f: impl FnMut(&mut Self, u32, u32)) {
        let mut src = first;
        while src != NIL {
            let (dst, next) = self.buddy.frame(src).plan();
            f(self, src, dst);
            src = next;
        }
    }
}
