//! One CMA region: its bitmap, its chunk table and its counters behind one lock (Linux's
//! `struct cma` and `cma->lock`).
//!
//! Every method takes the lock for a bounded time and returns: callbacks (claims that wait
//! for the guest, releases, copies, move listeners) run in `alloc.rs` and `compact.rs` with
//! no lock held. The chunk table records every range whose bits are set, in every state, so
//! that the bitmap is exactly the union of the table's ranges at every point:
//!
//! ```text
//!  Claiming ──claimed──▶ Granted ──free──▶ Releasing ──▶ (gone, bits cleared)
//!     │                  │    ▲
//!  busy/failed       compact  └── moved, or move abandoned
//!     ▼                  ▼    │
//!  (gone, bits cleared)  Moving { other }: holds the chunk's range and a second one
//! ```

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::bitmap::Bitmap;
use crate::chunk::{Chunk, ChunkId, ChunkMoved, MoveListener};
use crate::metrics::{AreaMetrics, RegionStats};
use crate::region::PAGE_SHIFT;
use crate::region::RegionSpec;
use crate::request::Placement;

/// One region's allocator state.
pub(crate) struct Area {
    id: u32,
    instance: u32,
    base: u64,
    /// A bit covers `1 << shift` bytes.
    shift: u32,
    state: Mutex<AreaState>,
}

struct AreaState {
    bitmap: Bitmap,
    /// Ranges with bits set, by serial number.
    chunks: BTreeMap<u64, Entry>,
    metrics: AreaMetrics,
}

/// A range the allocator has marked taken.
struct Entry {
    /// First bit.
    start: u64,
    /// Bit count and alignment: a move keeps the chunk's alignment.
    placement: Placement,
    pinned: bool,
    state: ChunkState,
    listener: Option<MoveListener>,
}

/// Where a chunk is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Bits set, the claim callback is running; its handle is not out yet.
    Claiming,
    /// Owned by the caller.
    Granted,
    /// Compaction also holds the range at bit `other`: the destination until the copy
    /// commits, the old range after.
    Moving { other: u64 },
    /// Being freed: the release callback is running.
    Releasing,
    /// Just moved; its owner's move listener is being called (with no lock held). Neither
    /// moved again nor freed until that returns: a second move's notice could otherwise
    /// find the listener out and be lost, and the owner keep the older address.
    Notifying,
}

/// Why a chunk operation was refused by the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No granted chunk with that serial here.
    Missing,
    /// The chunk is being freed.
    Releasing,
    /// The chunk is being moved.
    Moving,
}

impl Area {
    /// The allocator state of `spec`, whose size is a whole number of bits.
    pub(crate) fn new(spec: &RegionSpec, instance: u32) -> Area {
        let shift = PAGE_SHIFT + spec.order_per_bit;
        Area {
            id: spec.id,
            instance,
            base: spec.base,
            shift,
            state: Mutex::new(AreaState {
                bitmap: Bitmap::new(spec.size >> shift),
                chunks: BTreeMap::new(),
                metrics: AreaMetrics::default(),
            }),
        }
    }

    /// A bit covers `1 << shift()` bytes.
    pub(crate) fn shift(&self) -> u32 {
        self.shift
    }

    /// The lock. No method panics while holding it and no callback runs under it, so a
    /// poisoned lock still guards a consistent state.
    fn lock(&self) -> MutexGuard<'_, AreaState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gpa(&self, bit: u64) -> u64 {
        self.base + (bit << self.shift)
    }

    fn chunk(&self, serial: u64, e: &Entry) -> Chunk {
        Chunk {
            id: ChunkId::from_parts(self.instance, self.id, serial),
            region: self.id,
            gpa: self.gpa(e.start),
            len: e.placement.count << self.shift,
            pinned: e.pinned,
        }
    }

    /// Find the first fit at or after bit `start`, mark it and record it as being claimed
    /// (Linux: `bitmap_find_next_zero_area_off` + `bitmap_set` under `cma->lock`).
    pub(crate) fn reserve(
        &self,
        start: u64,
        p: &Placement,
        serial: u64,
        pinned: bool,
    ) -> Option<Chunk> {
        let mut s = self.lock();
        let began = Instant::now();
        let found = s.bitmap.find_area(start, p.count, p.mask, p.offset);
        if let Some(bit) = found {
            s.bitmap.set_range(bit, p.count);
        }
        s.metrics.search_latency.record(began.elapsed());
        let bit = found?;
        let entry = Entry {
            start: bit,
            placement: *p,
            pinned,
            state: ChunkState::Claiming,
            listener: None,
        };
        let chunk = self.chunk(serial, &entry);
        s.chunks.insert(serial, entry);
        Some(chunk)
    }

    /// The claim succeeded: hand the chunk out.
    pub(crate) fn grant(&self, serial: u64, pages_migrated: u64, latency: Duration) {
        let mut s = self.lock();
        if let Some(e) = s.chunks.get_mut(&serial) {
            e.state = ChunkState::Granted;
        }
        s.metrics.allocs_ok += 1;
        s.metrics.pages_migrated += pages_migrated;
        s.metrics.alloc_latency.record(latency);
    }

    /// The claim did not succeed: clear the candidate's bits and forget it.
    pub(crate) fn cancel(&self, serial: u64, busy: bool) {
        let mut s = self.lock();
        if let Some(e) = s.chunks.remove(&serial) {
            s.bitmap.clear_range(e.start, e.placement.count);
        }
        if busy {
            s.metrics.busy_retries += 1;
        }
    }

    /// Count an allocation that failed in this region.
    pub(crate) fn note_failed(&self) {
        self.lock().metrics.allocs_failed += 1;
    }

    /// The bit to search from after candidate `c` was reported busy at `at`: past the busy
    /// bit when `at` is inside the candidate, else past the candidate's first bit (the guest
    /// is untrusted; either way the search moves forward).
    pub(crate) fn resume_after(&self, c: &Chunk, at: u64) -> u64 {
        let first = (c.gpa - self.base) >> self.shift;
        if at >= c.gpa && at - c.gpa < c.len {
            ((at - self.base) >> self.shift) + 1
        } else {
            first + 1
        }
    }

    /// Start freeing a granted chunk: it becomes Releasing, so it cannot be freed twice.
    pub(crate) fn begin_free(&self, serial: u64) -> Result<Chunk, Refusal> {
        let mut s = self.lock();
        let e = s.chunks.get_mut(&serial).ok_or(Refusal::Missing)?;
        match e.state {
            ChunkState::Granted => e.state = ChunkState::Releasing,
            ChunkState::Claiming => return Err(Refusal::Missing),
            ChunkState::Releasing => return Err(Refusal::Releasing),
            ChunkState::Moving { .. } | ChunkState::Notifying => return Err(Refusal::Moving),
        }
        Ok(self.chunk(serial, e))
    }

    /// The range is back with the guest: clear its bits (Linux's `cma_clear_bitmap`).
    pub(crate) fn finish_free(&self, serial: u64, latency: Duration) {
        let mut s = self.lock();
        let entry = s.chunks.remove(&serial);
        if let Some(e) = &entry {
            s.bitmap.clear_range(e.start, e.placement.count);
        }
        s.metrics.frees += 1;
        s.metrics.free_latency.record(latency);
        drop(s);
        // The entry's listener is dropped outside the lock: what it captured is the caller's.
        drop(entry);
    }

    /// Pin or unpin a granted chunk. Pinning a chunk that is being moved makes the move
    /// abandon at its commit, so once `pin` returns the chunk's address no longer changes.
    pub(crate) fn set_pinned(&self, serial: u64, pinned: bool) -> Result<(), Refusal> {
        let mut s = self.lock();
        let e = s.owned_mut(serial)?;
        e.pinned = pinned;
        Ok(())
    }

    /// Install the callback told about every move of a granted chunk.
    pub(crate) fn set_listener(&self, serial: u64, f: MoveListener) -> Result<(), Refusal> {
        let mut s = self.lock();
        let old = s.owned_mut(serial)?.listener.replace(f);
        drop(s);
        // The old listener is dropped outside the lock: what it captured is the caller's.
        drop(old);
        Ok(())
    }

    /// A granted chunk (possibly being moved).
    pub(crate) fn granted(&self, serial: u64) -> Option<Chunk> {
        let mut s = self.lock();
        let e = s.owned_mut(serial).ok()?;
        Some(self.chunk(serial, e))
    }

    /// Every granted chunk, by serial.
    pub(crate) fn granted_chunks(&self) -> Vec<Chunk> {
        let s = self.lock();
        s.chunks
            .iter()
            .filter(|(_, e)| e.is_owned())
            .map(|(&serial, e)| self.chunk(serial, e))
            .collect()
    }

    /// Whether any range with this serial is recorded here, in any state.
    pub(crate) fn holds(&self, serial: u64) -> bool {
        self.lock().chunks.contains_key(&serial)
    }

    /// Whether any bit covering `[gpa, gpa + len)` (inside this region) is set: a range
    /// being claimed, granted, moved or released.
    pub(crate) fn is_taken(&self, gpa: u64, len: u64) -> bool {
        let first = (gpa - self.base) >> self.shift;
        let last = (gpa + len - 1 - self.base) >> self.shift;
        !self.lock().bitmap.is_range_free(first, last - first + 1)
    }

    /// Free bytes and the largest free run in bytes.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let s = self.lock();
        let free = s.bitmap.nbits() - s.bitmap.count_used();
        (free << self.shift, s.bitmap.largest_free() << self.shift)
    }

    /// Statistics of the region.
    pub(crate) fn stats(&self, spec: &RegionSpec) -> RegionStats {
        let s = self.lock();
        let m = &s.metrics;
        let used = s.bitmap.count_used() << self.shift;
        RegionStats {
            id: spec.id,
            name: spec.name.clone(),
            base: spec.base,
            size: spec.size,
            order_per_bit: spec.order_per_bit,
            private: spec.private,
            granule: 1 << self.shift,
            used,
            free: (s.bitmap.nbits() << self.shift) - used,
            largest_free: s.bitmap.largest_free() << self.shift,
            chunks: s.chunks.len() as u64,
            bitmap: s.bitmap.to_hex(),
            allocs_ok: m.allocs_ok,
            allocs_failed: m.allocs_failed,
            busy_retries: m.busy_retries,
            pages_migrated: m.pages_migrated,
            frees: m.frees,
            compactions: m.compactions,
            chunks_moved: m.chunks_moved,
            moves_failed: m.moves_failed,
            alloc_latency: m.alloc_latency.summary(),
            search_latency: m.search_latency.summary(),
            free_latency: m.free_latency.summary(),
            metadata_bytes: s.bitmap.heap_bytes()
                + s.chunks.len() as u64 * std::mem::size_of::<Entry>() as u64
                + m.alloc_latency.heap_bytes()
                + m.search_latency.heap_bytes()
                + m.free_latency.heap_bytes(),
        }
    }

    /// No bit set and no chunk recorded.
    pub(crate) fn is_empty(&self) -> bool {
        let s = self.lock();
        s.chunks.is_empty() && s.bitmap.count_used() == 0
    }

    /// Serials of the granted, unpinned chunks, lowest address first: compaction's work list.
    pub(crate) fn movable(&self) -> Vec<u64> {
        let s = self.lock();
        let mut v: Vec<(u64, u64)> = s
            .chunks
            .iter()
            .filter(|(_, e)| e.state == ChunkState::Granted && !e.pinned)
            .map(|(&serial, e)| (e.start, serial))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, serial)| serial).collect()
    }

    /// Pick a destination for a granted, unpinned chunk and mark it: the first fit below
    /// the chunk (same size and alignment) whose free run is smaller than the run the move
    /// would leave behind. Filling a smaller run to open a larger one never lowers the
    /// region's largest free run. Returns the chunk and the destination address.
    pub(crate) fn begin_move(&self, serial: u64) -> Option<(Chunk, u64)> {
        let mut s = self.lock();
        let e = s.chunks.get(&serial)?;
        if e.state != ChunkState::Granted || e.pinned {
            return None;
        }
        let (old, p) = (e.start, e.placement);
        let dest = s.pick_destination(old, &p)?;
        s.bitmap.set_range(dest, p.count);
        let e = s.chunks.get_mut(&serial)?;
        e.state = ChunkState::Moving { other: dest };
        Some((self.chunk(serial, e), self.gpa(dest)))
    }

    /// The contents are at the destination: make it the chunk's range. Refused (`false`)
    /// if the chunk was pinned meanwhile; the caller then abandons the move.
    pub(crate) fn commit_move(&self, serial: u64) -> bool {
        let mut s = self.lock();
        let Some(e) = s.chunks.get_mut(&serial) else {
            return false;
        };
        match e.state {
            ChunkState::Moving { other: dest } if !e.pinned => {
                e.state = ChunkState::Moving { other: e.start };
                e.start = dest;
                true
            }
            _ => false,
        }
    }

    /// Abandon a move before its commit: clear the destination, the chunk stays put.
    pub(crate) fn abort_move(&self, serial: u64) {
        let mut s = self.lock();
        let Some(e) = s.chunks.get_mut(&serial) else {
            return;
        };
        if let ChunkState::Moving { other: dest } = e.state {
            e.state = ChunkState::Granted;
            let count = e.placement.count;
            s.bitmap.clear_range(dest, count);
        }
        s.metrics.moves_failed += 1;
    }

    /// The old range is back with the guest: clear it and hand out the move listener, to
    /// be called with no lock held.
    pub(crate) fn finish_move(&self, serial: u64) -> (Option<MoveListener>, Option<ChunkMoved>) {
        let mut s = self.lock();
        let Some(e) = s.chunks.get_mut(&serial) else {
            return (None, None);
        };
        let ChunkState::Moving { other: old } = e.state else {
            return (None, None);
        };
        let count = e.placement.count;
        let moved = ChunkMoved {
            id: ChunkId::from_parts(self.instance, self.id, serial),
            old_gpa: self.gpa(old),
            new_gpa: self.gpa(e.start),
            len: count << self.shift,
        };
        let listener = e.listener.take();
        e.state = if listener.is_some() {
            ChunkState::Notifying
        } else {
            ChunkState::Granted
        };
        s.bitmap.clear_range(old, count);
        s.metrics.chunks_moved += 1;
        (listener, Some(moved))
    }

    /// Put a move listener back after calling it (unless the chunk has a new one meanwhile)
    /// and let the chunk be moved or freed again.
    pub(crate) fn return_listener(&self, serial: u64, f: MoveListener) {
        let mut s = self.lock();
        if let Ok(e) = s.owned_mut(serial) {
            if e.state == ChunkState::Notifying {
                e.state = ChunkState::Granted;
            }
            if e.listener.is_none() {
                e.listener = Some(f);
            }
        }
    }

    /// Count pages the guest migrated for a compaction destination.
    pub(crate) fn note_pages(&self, pages: u64) {
        self.lock().metrics.pages_migrated += pages;
    }

    /// Count one compaction.
    pub(crate) fn note_compaction(&self) {
        self.lock().metrics.compactions += 1;
    }

    /// The bitmap is exactly the union of the recorded ranges, no two overlap, every range
    /// meets its alignment and the summary agrees (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        let s = self.lock();
        let mut fresh = Bitmap::new(s.bitmap.nbits());
        for (serial, e) in &s.chunks {
            let mut ranges = vec![e.start];
            if let ChunkState::Moving { other } = e.state {
                ranges.push(other);
            }
            for start in ranges {
                let p = e.placement;
                if !fresh.is_range_free(start, p.count) {
                    return Err(format!("chunk {serial} at bit {start} overlaps or leaves"));
                }
                if (start + p.offset) & p.mask != 0 {
                    return Err(format!("chunk {serial} at bit {start} is misaligned"));
                }
                fresh.set_range(start, p.count);
            }
        }
        if fresh != s.bitmap {
            return Err(format!("region {}: bitmap != union of chunks", self.id));
        }
        match s.bitmap.summary_is_consistent() {
            true => Ok(()),
            false => Err("summary disagrees with the bitmap".into()),
        }
    }
}

impl AreaState {
    /// The entry of a chunk its owner holds (granted, or being moved).
    fn owned_mut(&mut self, serial: u64) -> Result<&mut Entry, Refusal> {
        match self.chunks.get_mut(&serial) {
            Some(e) if e.is_owned() => Ok(e),
            _ => Err(Refusal::Missing),
        }
    }

    /// See [`Area::begin_move`].
    fn pick_destination(&self, old: u64, p: &Placement) -> Option<u64> {
        let (left, right) = self.bitmap.free_span(old, old + p.count);
        let mut from = 0;
        loop {
            let dest = self.bitmap.find_area(from, p.count, p.mask, p.offset)?;
            if dest + p.count > old {
                return None;
            }
            let (hole_start, hole_end) = self.bitmap.free_span(dest, dest);
            // The run the move leaves behind merges with what is left of the hole when the
            // hole touches the chunk.
            let opened_start = if hole_end == old {
                dest + p.count
            } else {
                left
            };
            if right - opened_start > hole_end - hole_start {
                return Some(dest);
            }
            from = hole_end;
        }
    }
}

impl Entry {
    fn is_owned(&self) -> bool {
        matches!(
            self.state,
            ChunkState::Granted | ChunkState::Moving { .. } | ChunkState::Notifying
        )
    }
}
