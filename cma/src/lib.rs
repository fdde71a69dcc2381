//! The VMM's Contiguous Memory Allocator: the counterpart of Linux's `mm/cma.c` for guest
//! memory, with the v9 series' regions API, pin/unpin and compaction.
//!
//! Regions come from the validated configuration ([`crate::config::RegionSpec`], map rules
//! [`crate::config::MapRule`]). Each has a bitmap (one bit per `2^order_per_bit` pages) and a
//! lock of its own; allocations in different regions never wait for each other.
//!
//! An allocation: pick the first free range that fits (size, alignment, offset) and mark it
//! under the region's lock; with no lock held, ask the [`Claim`] callback (the guest's
//! eviction) for it; on a busy page, clear the bits and go on past that page; on success
//! hand out a [`Chunk`]. A free: [`Release`] with no lock held, then clear the bits.
//!
//! - [`bitmap`]: the word-at-a-time search and its summary level;
//! - [`request`]: a request and its alignment in a region's bit terms;
//! - `area`: one region (bitmap, chunk table, counters, lock);
//! - `alloc`: [`Cma`], the regions API, map rules, the allocation loop;
//! - `compact`: moving unpinned chunks;
//! - [`metrics`]: counters, latency histograms, statistics;
//! - [`hooks`]: the callbacks; [`chunk`]: handles; [`error`]: [`CmaError`].

mod alloc;
mod area;
pub mod bitmap;
pub mod chunk;
mod compact;
pub mod error;
pub mod hooks;
pub mod metrics;
pub mod region;
pub mod request;

pub use alloc::Cma;
pub use chunk::{Chunk, ChunkId, ChunkMoved, MoveListener, ParseChunkIdError};
pub use compact::CompactReport;
pub use error::CmaError;
pub use hooks::{Claim, ClaimOutcome, Mover, Release};
pub use metrics::{LatencyHistogram, LatencySummary, RegionStats, RegionsInfo};
pub use region::{
    ANY_DEVICE, MAX_ORDER_PER_BIT, MAX_REGION_SIZE, MapRule, PAGE_SHIFT, PAGE_SIZE,
    ParseMapRuleError, RegionSpec, parse_map_rules,
};
pub use request::{AllocRequest, DEFAULT_MAX_ATTEMPTS};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;
