//! Chunk handles: what a caller holds after a successful allocation.

use std::fmt;

/// The handle of a granted chunk. It names the allocator instance, the region and a serial
/// number, so that a handle from another instance or region is recognised, never misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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

/// A string that is not a chunk handle in its display form `cma<instance>:<region>:<serial>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunk id '{0}': expected cma<instance>:<region>:<serial>, e.g. cma1:0:42")]
pub struct ParseChunkIdError(pub String);

impl std::str::FromStr for ChunkId {
    type Err = ParseChunkIdError;

    /// Parse the [`fmt::Display`] form back: decimal numbers only, no signs, no spaces,
    /// no leading zeros (so that one handle has exactly one spelling).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseChunkIdError(s.chars().take(64).collect());
        let rest = s.strip_prefix("cma").ok_or_else(bad)?;
        let mut parts = rest.split(':');
        let (Some(i), Some(r), Some(n), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(ChunkId {
            instance: decimal(i).ok_or_else(bad)?,
            region: decimal(r).ok_or_else(bad)?,
            serial: decimal(n).ok_or_else(bad)?,
        })
    }
}

/// A canonical decimal number: digits only, no leading zero unless it is `0`.
fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// A granted chunk as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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

    #[test]
    fn handle_parses_from_its_display_form() {
        for id in [
            ChunkId::from_parts(3, 1, 42),
            ChunkId::from_parts(0, 0, 0),
            ChunkId::from_parts(u32::MAX, u32::MAX, u64::MAX),
        ] {
            assert_eq!(id.to_string().parse::<ChunkId>(), Ok(id));
        }
    }

    #[test]
    fn malformed_handles_are_refused() {
        for s in [
            "",
            "cma",
            "cma1:0",
            "cma1:0:42:7",
            "1:0:42",
            "CMA1:0:42",
            "cma1:0:-42",
            "cma1:0:+42",
            "cma1: 0:42",
            "cma1:0:42 ",
            "cma01:0:42",
            "cma1::42",
            "cma4294967296:0:1",
            "cma1:0:18446744073709551616",
            "cma1:0:0x2a",
            "cma١:0:42",
        ] {
            let e = s.parse::<ChunkId>().unwrap_err();
            assert!(e.to_string().contains("malformed chunk id"), "{s:?}");
        }
    }
}
