//! Chunk handles: what a caller holds after a successful allocation.

use std::fmt;

use serde::Serialize;

/// The handle of a granted chunk. It names the allocator instance, the region and a serial
/// number, so that a handle from another instance or region is recognised, never misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ChunkId {
    instance: u32,
    region: u32,
    serial: u64,
}

impl ChunkId {
    /// A handle from its parts, e.g. when a control API gets one back as numbers. Any value
    /// is accepted; the allocator checks it on use.
    pub fn from_parts(instance: u32, region: u32, serial: u64) -> Self {
        ChunkId {
            instance,
            region,
            serial,
        }
    }

    /// The allocator instance that made the handle.
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// The region id the chunk lives in.
    pub fn region(&self) -> u32 {
        self.region
    }

    /// The serial number, unique within the instance.
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cma{}:{}:{}", self.instance, self.region, self.serial)
    }
}

/// A granted chunk as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Chunk {
    /// The handle.
    pub id: ChunkId,
    /// Region id.
    pub region: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes: the request rounded up to the region's bit size.
    pub len: u64,
    /// Pinned chunks never move; unpinned ones may be moved by compaction.
    pub pinned: bool,
}

/// What a move listener is told when compaction has moved its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChunkMoved {
    /// The chunk.
    pub id: ChunkId,
    /// Where it was.
    pub old_gpa: u64,
    /// Where it is now.
    pub new_gpa: u64,
    /// Its length.
    pub len: u64,
}

/// A callback told about every move of one chunk.
pub type MoveListener = Box<dyn FnMut(ChunkMoved) + Send>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_round_trips_its_parts() {
        let id = ChunkId::from_parts(3, 1, 42);
        assert_eq!((id.instance(), id.region(), id.serial()), (3, 1, 42));
        assert_eq!(id.to_string(), "cma3:1:42");
    }
}
