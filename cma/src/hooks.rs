//! The callbacks through which the allocator reaches the guest: claim a range (evict it),
//! release it (scrub it and give it back), and move a chunk for compaction.
//!
//! The allocator calls every one of them with no lock held: a claim waits for the guest,
//! for up to seconds, and may call back into the allocator.

use crate::region::RegionSpec;

/// The answer of a claim: the guest evicted the range, or could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The range is ours; the guest migrated this many pages out of it.
    Claimed {
        /// Pages the guest moved elsewhere (statistics only).
        pages_migrated: u64,
    },
    /// A page at `at` could not be moved (pinned, in use): try the next candidate after it.
    Busy {
        /// The first busy guest-physical address (untrusted: it may lie anywhere).
        at: u64,
    },
    /// Something else went wrong (timeout, guest error): the allocation stops.
    Failed(String),
}

/// Evicts a candidate range. Called with the range's bits already marked and no lock held.
pub trait Claim {
    /// Make `[gpa, gpa + len)` of `region` free of guest pages.
    fn claim(&mut self, region: &RegionSpec, gpa: u64, len: u64) -> ClaimOutcome;
}

impl<F: FnMut(&RegionSpec, u64, u64) -> ClaimOutcome> Claim for F {
    fn claim(&mut self, region: &RegionSpec, gpa: u64, len: u64) -> ClaimOutcome {
        self(region, gpa, len)
    }
}

/// Gives a range back to the guest. Called before its bits are cleared, with no lock held.
pub trait Release {
    /// Scrub `[gpa, gpa + len)` of `region` and return it to the guest.
    fn release(&mut self, region: &RegionSpec, gpa: u64, len: u64);
}

impl<F: FnMut(&RegionSpec, u64, u64)> Release for F {
    fn release(&mut self, region: &RegionSpec, gpa: u64, len: u64) {
        self(region, gpa, len)
    }
}

/// What compaction needs to move a chunk: claim the destination, copy, release the old range.
pub trait Mover {
    /// Evict the destination range, as [`Claim::claim`].
    fn claim(&mut self, region: &RegionSpec, gpa: u64, len: u64) -> ClaimOutcome;
    /// Copy the chunk's contents.
    fn copy(&mut self, from_gpa: u64, to_gpa: u64, len: u64) -> Result<(), String>;
    /// Give a range back to the guest, as [`Release::release`]: the old range after a move,
    /// or the destination when a move is abandoned after its claim.
    fn release(&mut self, region: &RegionSpec, gpa: u64, len: u64);
}
