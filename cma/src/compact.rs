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
