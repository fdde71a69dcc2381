//! Compaction: move unpinned chunks so the region's largest free run grows (the
//! defragmentation CMA v6 proposed with pin/unpin and never built).
//!
//! One move, with every callback outside the lock and the bitmap equal to the union of the
//! recorded ranges at every step:
//!
//! ```text
//!  begin_move   mark the destination      chunk: Moving { other: dest }
//!  claim        evict the destination     (busy or failed: abort_move, chunk stays)
//!  copy         old -> destination        (failed: release dest, abort_move)
//!  commit_move  chunk now at destination  (pinned meanwhile: release dest, abort_move)
//!  release      old range to the guest
//!  finish_move  clear the old range       chunk: Granted; then tell its listener
//! ```

use crate::alloc::Cma;
use crate::area::Area;
use crate::error::CmaError;
use crate::hooks::{ClaimOutcome, Mover};
use crate::region::RegionSpec;

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CompactReport {
    /// Region id.
    pub region: u32,
    /// Largest free run before, in bytes.
    pub largest_free_before: u64,
    /// Largest free run after, in bytes.
    pub largest_free_after: u64,
    /// Chunks moved.
    pub chunks_moved: u32,
    /// Moves abandoned (destination busy, copy failed, chunk pinned meanwhile).
    pub moves_failed: u32,
    /// Pages the guest migrated to free destinations.
    pub pages_migrated: u64,
    /// Why compaction stopped early: a destination claim failed (not busy).
    pub stopped: Option<String>,
}

/// How one move ended.
enum Move {
    /// There was no better place for the chunk, or it was not movable any more.
    Skipped,
    /// The chunk moved; the guest migrated this many pages for the destination.
    Moved(u64),
    /// The chunk stayed where it was.
    Abandoned(u64),
    /// The destination claim failed: stop compacting.
    Failed(String),
}

impl Cma {
    /// Move the region's unpinned chunks, lowest first, each to the first fit below it that
    /// opens a larger free run than the one it fills, so the largest free run never shrinks.
    ///
    /// Each move goes through the [`Mover`]: claim the destination from the guest, copy the
    /// chunk, release the old range; then the chunk's [move
    /// listener](Cma::set_move_listener) hears of it. Pinned chunks (the default for
    /// [`AllocRequest`](crate::AllocRequest)) stay where they are.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// use cma::{AllocRequest, ClaimOutcome, Cma, Mover, RegionSpec};
    ///
    /// /// Claims every destination; records the copies it is asked for.
    /// #[derive(Default)]
    /// struct Copier {
    ///     copies: Vec<(u64, u64, u64)>,
    /// }
    ///
    /// impl Mover for Copier {
    ///     fn claim(&mut self, _: &RegionSpec, _gpa: u64, _len: u64) -> ClaimOutcome {
    ///         ClaimOutcome::Claimed { pages_migrated: 0 }
    ///     }
    ///     fn copy(&mut self, from: u64, to: u64, len: u64) -> Result<(), String> {
    ///         self.copies.push((from, to, len));
    ///         Ok(())
    ///     }
    ///     fn release(&mut self, _: &RegionSpec, _gpa: u64, _len: u64) {}
    /// }
    ///
    /// const MIB: u64 = 1 << 20;
    /// let region = RegionSpec {
    ///     id: 0,
    ///     name: "video".into(),
    ///     base: 32 * MIB,
    ///     size: 8 * MIB,
    ///     private: false,
    ///     order_per_bit: 0,
    /// };
    /// let cma = Cma::new(&[region], &[])?;
    /// let mut evict = |_: &RegionSpec, _gpa: u64, _len: u64| ClaimOutcome::Claimed {
    ///     pages_migrated: 0,
    /// };
    /// let two = AllocRequest::new(2 * MIB);
    /// let a = cma.alloc_from("video", &two.unpinned(), &mut evict)?; // [32, 34) MiB
    /// let b = cma.alloc_from("video", &two, &mut evict)?; //            [34, 36), pinned
    /// let c = cma.alloc_from("video", &two.unpinned(), &mut evict)?; // [36, 38)
    /// cma.free(a.id, &mut |_: &RegionSpec, _gpa: u64, _len: u64| {})?;
    /// assert_eq!(cma.stats()[0].largest_free, 2 * MIB); // [32, 34) and [38, 40)
    ///
    /// // c's owner wants to hear where its buffer went.
    /// let (tx, moves) = mpsc::channel();
    /// cma.set_move_listener(c.id, Box::new(move |m| tx.send(m).unwrap()))?;
    ///
    /// let mut mover = Copier::default();
    /// let report = cma.compact(0, &mut mover)?;
    /// assert_eq!(report.chunks_moved, 1);
    /// assert_eq!(report.largest_free_after, 4 * MIB); // [36, 40)
    /// assert_eq!(mover.copies, [(36 * MIB, 32 * MIB, 2 * MIB)]);
    /// assert_eq!(moves.try_recv()?.new_gpa, 32 * MIB);
    /// assert_eq!(cma.chunk(c.id).map(|c| c.gpa), Some(32 * MIB));
    /// assert_eq!(cma.chunk(b.id).map(|b| b.gpa), Some(34 * MIB)); // pinned: stayed
    ///
    /// // Unpinned b could go down now, but there is no better place for it; pinning c
    /// // again makes its address final.
    /// cma.unpin(b.id)?;
    /// cma.pin(c.id)?;
    /// assert_eq!(cma.compact(0, &mut mover)?.chunks_moved, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact(&self, region: u32, mover: &mut dyn Mover) -> Result<CompactReport, CmaError> {
        let area = self.area(region)?;
        let spec = &self.regions()[region as usize];
        let mut report = CompactReport {
            region,
            largest_free_before: area.usage().1,
            ..CompactReport::default()
        };
        for serial in area.movable() {
            match move_chunk(area, spec, serial, mover) {
                Move::Skipped => {}
                Move::Moved(pages) => {
                    report.chunks_moved += 1;
                    report.pages_migrated += pages;
                }
                Move::Abandoned(pages) => {
                    report.moves_failed += 1;
                    report.pages_migrated += pages;
                }
                Move::Failed(reason) => {
                    report.moves_failed += 1;
                    report.stopped = Some(reason);
                    break;
                }
            }
        }
        area.note_compaction();
        report.largest_free_after = area.usage().1;
        Ok(report)
    }
}

fn move_chunk(area: &Area, spec: &RegionSpec, serial: u64, mover: &mut dyn Mover) -> Move {
    let Some((chunk, dest)) = area.begin_move(serial) else {
        return Move::Skipped;
    };
    let len = chunk.len;
    let pages = match mover.claim(spec, dest, len) {
        ClaimOutcome::Claimed { pages_migrated } => pages_migrated,
        ClaimOutcome::Busy { .. } => {
            area.abort_move(serial);
            return Move::Abandoned(0);
        }
        ClaimOutcome::Failed(reason) => {
            area.abort_move(serial);
            return Move::Failed(reason);
        }
    };
    area.note_pages(pages);
    if mover.copy(chunk.gpa, dest, len).is_err() || !area.commit_move(serial) {
        // The destination was claimed from the guest: give it back before clearing its bits.
        mover.release(spec, dest, len);
        area.abort_move(serial);
        return Move::Abandoned(pages);
    }
    mover.release(spec, chunk.gpa, len);
    if let (Some(mut listener), Some(moved)) = area.finish_move(serial) {
        listener(moved);
        area.return_listener(serial, listener);
    }
    Move::Moved(pages)
}
