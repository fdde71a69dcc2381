//! The one error type of the CMA allocator.

use crate::chunk::ChunkId;

/// Why a CMA operation was refused or failed. Every argument a caller controls maps to one of
/// these; nothing in the allocator panics on bad input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmaError {
    /// A request for zero bytes.
    #[error("cannot allocate zero bytes")]
    ZeroSize,
    /// A request larger than the region it was tried in.
    #[error("{size} bytes do not fit in CMA region '{region}' of {region_size} bytes")]
    TooLarge {
        /// Region name.
        region: String,
        /// Bytes requested.
        size: u64,
        /// The region's size.
        region_size: u64,
    },
    /// An alignment that is not a power of two.
    #[error("alignment {0:#x} is not a power of two")]
    BadAlign(u64),
    /// An alignment offset that is not below the alignment.
    #[error("alignment offset {offset:#x} is not below the alignment {align:#x}")]
    BadOffset {
        /// The offset.
        offset: u64,
        /// The alignment (a page when 0 was given).
        align: u64,
    },
    /// An alignment and offset no chunk of the region can meet, given its base and bit size.
    #[error(
        "CMA region '{region}' (base {base:#x}, {granule:#x}-byte bits) cannot start a chunk at {offset:#x} modulo {align:#x}"
    )]
    Unreachable {
        /// Region name.
        region: String,
        /// The region's base.
        base: u64,
        /// Bytes per bitmap bit.
        granule: u64,
        /// The alignment.
        align: u64,
        /// The offset.
        offset: u64,
    },
    /// A region name that does not exist.
    #[error("unknown CMA region '{0}'")]
    UnknownRegion(String),
    /// A region id that does not exist.
    #[error("unknown CMA region id {0}")]
    UnknownRegionId(u32),
    /// An empty list of regions.
    #[error("no CMA region to allocate from")]
    NoRegions,
    /// A device that no map rule names (and no `*` rule exists).
    #[error("device '{0}' matches no CMA map rule")]
    UnmappedDevice(String),
    /// A device that reaches only private regions, and only through `*`.
    #[error(
        "device '{device}' reaches private CMA region '{region}' only through '*': private regions are reachable by name only"
    )]
    PrivateRegion {
        /// The device.
        device: String,
        /// The private region.
        region: String,
    },
    /// Freeing a chunk that is already freed or being freed.
    #[error("chunk {0} is already freed")]
    DoubleFree(ChunkId),
    /// A chunk handle made by another allocator instance.
    #[error("chunk {0} belongs to another CMA instance")]
    ForeignChunk(ChunkId),
    /// A chunk handle whose region is not the region holding the chunk.
    #[error("chunk {chunk} names region {named} but lives in region {actual}")]
    WrongRegion {
        /// The handle.
        chunk: ChunkId,
        /// The region the handle names.
        named: u32,
        /// The region that holds the chunk.
        actual: u32,
    },
    /// A chunk handle that names no granted chunk (pin, unpin, listener, or a free of a handle
    /// never handed out).
    #[error("unknown chunk {0}")]
    UnknownChunk(ChunkId),
    /// Freeing a chunk while compaction moves it; retry once the move has finished.
    #[error("chunk {0} is being moved by compaction; free it again once the move is done")]
    ChunkMoving(ChunkId),
    /// No free range of the size and alignment asked for.
    #[error("no free range of {size} bytes in CMA region '{region}'")]
    NoSpace {
        /// Region name.
        region: String,
        /// Bytes requested.
        size: u64,
    },
    /// Every candidate range tried was busy (the guest could not evict it).
    #[error(
        "CMA region '{region}': {attempts} candidate ranges were busy (last busy at {last_busy:#x})"
    )]
    Busy {
        /// Region name.
        region: String,
        /// Claim attempts made.
        attempts: u32,
        /// The busy address the last claim reported.
        last_busy: u64,
    },
    /// The claim callback failed for a reason other than a busy page; the allocation stops.
    #[error("claiming [{gpa:#x}, +{len:#x}) in CMA region '{region}' failed: {reason}")]
    ClaimFailed {
        /// Region name.
        region: String,
        /// Start of the candidate.
        gpa: u64,
        /// Its length.
        len: u64,
        /// What the claim callback said.
        reason: String,
    },
    /// A region table or map that the allocator cannot use.
    #[error("invalid CMA region table: {0}")]
    BadRegionTable(String),
}

impl CmaError {
    /// How much a per-region failure tells the caller: when every region fails, the most
    /// telling error is returned (a busy guest says more than a region that was too small).
    pub(crate) fn rank(&self) -> u8 {
        match self {
            CmaError::Busy { .. } => 3,
            CmaError::NoSpace { .. } => 2,
            CmaError::TooLarge { .. } | CmaError::Unreachable { .. } => 1,
            _ => 0,
        }
    }
}
