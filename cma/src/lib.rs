//! A contiguous memory allocator for virtual machine monitors: Linux's `mm/cma.c`, one
//! level down, for guest-physical memory.
//!
//! Devices need large physically contiguous buffers; reserving them for good wastes memory
//! while no device uses them. Linux's CMA reserves *regions* but lends them to the page
//! allocator for movable pages only, and when a driver asks for a chunk it picks a range
//! with its own bitmap allocator, migrates the pages out of it and hands it over. A VMM
//! can do the same with its guest: it declares regions of guest memory, lends them to the
//! guest for movable pages, and when a device model needs a buffer it asks the guest to
//! evict a range. This crate is the allocator half of that: which range, in which region,
//! for whom, and what happens when the guest cannot give a range up. It has no idea how
//! memory is mapped, how the guest is asked, or how a page is copied: the caller plugs
//! that in through [`hooks`]. It depends on no KVM, guest-memory or protocol crate.
//!
//! # The model
//!
//! - **Regions** ([`RegionSpec`]): named ranges of guest-physical memory, placed by the
//!   caller, each with a bitmap of one bit per `2^order_per_bit` pages and a lock of its
//!   own (allocations in different regions never wait for each other).
//! - **Lending.** A free range of a region is the guest's to use; the allocator does not
//!   track the guest's pages, it only records which ranges it has taken back. A *private*
//!   region is never lent (the claim hook has nothing to evict there) and is reachable only
//!   by name.
//! - **Map rules** ([`MapRule`], `cma_map=` syntax in [`parse_map_rules`]): which regions a
//!   device allocates from, in order; the first rule naming the device wins, `*` matches any
//!   device. [`Cma::alloc`] goes through the rules, [`Cma::alloc_from`] names the regions
//!   (`"r1,r2"`, the v9 "regions API"), [`Cma::info_about`] sums them up.
//! - **Claim hook** ([`Claim`]): once a candidate range is picked *and its bits are marked*,
//!   the allocator calls the caller's claim with no lock held. The caller takes the range
//!   back from the guest (isolate, migrate, revoke access, whatever its design needs) and
//!   answers [`ClaimOutcome::Claimed`], [`ClaimOutcome::Busy`] with the address of a page
//!   that would not move, or [`ClaimOutcome::Failed`].
//! - **Retry on busy.** A busy answer clears the candidate's bits and the search resumes at
//!   the next aligned candidate past the busy page (past the candidate's first bit if the
//!   reported address lies outside it: the guest is not trusted to say where), at most
//!   [`AllocRequest::max_attempts`] times per region. A failed answer ends the allocation.
//! - **Release hook** ([`Release`]): [`Cma::free`] calls it with the bits still set, so the
//!   range is handed to nobody while the caller scrubs it and gives it back to the guest.
//! - **Pin, unpin, compaction.** Chunks are granted pinned unless asked otherwise
//!   ([`AllocRequest::unpinned`]). [`Cma::compact`] moves unpinned chunks down to open a
//!   larger free run, through a [`Mover`] (claim the destination, copy, release the old
//!   range); the owner hears of each move through its [move listener](Cma::set_move_listener).
//! - **Statistics** ([`Cma::stats`]): per region, what Linux's CMA debugfs and sysfs show
//!   (used, largest free chunk, the bitmap, allocations, failures, busy retries, pages
//!   migrated) plus latency summaries.
//!
//! # Guaranteed, and not
//!
//! Guaranteed, whatever the hooks answer and whatever the arguments:
//!
//! - a range is offered to one claim at a time and granted to one owner at a time; the bits
//!   of a region are exactly the union of the ranges being claimed, granted, moved or
//!   released, at every step (the property tests check it after every operation);
//! - no lock is held while a hook runs: a claim may wait for seconds, call back into the
//!   allocator, or run on any thread ([`Cma`] is `Send + Sync`; share it as `Arc<Cma>`);
//! - the search always moves forward and the number of claims per allocation is bounded;
//! - a chunk starts at its requested alignment and offset in *guest-physical* terms,
//!   whatever its region's base, or the request is refused
//!   ([`CmaError::Unreachable`]), never under-aligned;
//! - compaction never shrinks a region's largest free run and never moves a pinned chunk;
//!   once [`Cma::pin`] returns, the chunk's address is final;
//! - a bad argument (zero size, bad alignment, unknown region, a handle that is foreign,
//!   stale, edited or freed twice) is a [`CmaError`], never a panic or a wrong answer.
//!
//! Not guaranteed, or not the allocator's business:
//!
//! - the memory itself: the allocator never reads, writes, maps or unmaps it. "Claimed"
//!   means what the caller's hook says; isolating, migrating, revoking the guest's access
//!   and zeroing on free are the hooks' job;
//! - success when a fitting range exists: a guest that keeps reporting busy pages makes an
//!   allocation fail after `max_attempts`, as pinned pages do in Linux;
//! - best fit or fairness: the search is first fit from the region's start, and concurrent
//!   allocations in one region are served in whatever order they take its lock;
//! - a [`Chunk`] is a snapshot: an unpinned chunk may move, [`Cma::chunk`] gives its
//!   current address;
//! - latencies in [`RegionStats`] are histogram estimates, within 12.5%.
//!
//! # Allocating, with a guest that will not give up a page
//!
//! ```
//! use cma::{AllocRequest, ClaimOutcome, Cma, RegionSpec, parse_map_rules};
//!
//! const MIB: u64 = 1 << 20;
//! let video = RegionSpec {
//!     id: 0,
//!     name: "video".into(),
//!     base: 64 * MIB,
//!     size: 16 * MIB,
//!     private: false,
//!     order_per_bit: 0,
//! };
//! let cma = Cma::new(&[video], &parse_map_rules("*=video")?)?;
//!
//! // The claim hook evicts the guest's pages from [gpa, gpa + len). This guest has a
//! // pinned page 12 KiB into the region, so the first candidate is busy.
//! let pinned = 64 * MIB + 12 * 1024;
//! let mut tried = Vec::new();
//! let mut evict = |_: &RegionSpec, gpa: u64, len: u64| {
//!     tried.push(gpa);
//!     if (gpa..gpa + len).contains(&pinned) {
//!         ClaimOutcome::Busy { at: pinned }
//!     } else {
//!         ClaimOutcome::Claimed { pages_migrated: len / cma::PAGE_SIZE }
//!     }
//! };
//! let request = AllocRequest::new(64 << 10).aligned(64 << 10, 0);
//! let chunk = cma.alloc("video-dev", &request, &mut evict)?;
//!
//! // The retry started at the next 64 KiB boundary past the busy page.
//! assert_eq!(tried, [64 * MIB, 64 * MIB + (64 << 10)]);
//! assert_eq!((chunk.gpa, chunk.len), (64 * MIB + (64 << 10), 64 << 10));
//! assert_eq!(cma.stats()[0].busy_retries, 1);
//!
//! // Free: the release hook scrubs the range and gives it back to the guest.
//! cma.free(chunk.id, &mut |_: &RegionSpec, _gpa: u64, _len: u64| {})?;
//! assert!(cma.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! More on [`Cma::alloc_from`] (the regions API, private regions) and [`Cma::compact`]
//! (pin, unpin, moves).
//!
//! # How it maps to Linux
//!
//! | Linux (`mm/cma.c`; the v6–v9 CMA patch series) | here |
//! | --- | --- |
//! | `struct cma`: base, count, bitmap, `order_per_bit`, `cma->lock` | a [`RegionSpec`] and its bitmap, chunk table and lock inside [`Cma`] |
//! | `cma_declare_contiguous()`, `cma=` regions | the [`RegionSpec`] table given to [`Cma::new`] (placing it is the caller's job) |
//! | `bitmap_find_next_zero_area_off()` | [`bitmap::Bitmap::find_area`], a word at a time, with summary levels |
//! | `cma_bitmap_aligned_mask()` / `_offset()` / `pages_to_bits()` | [`request::Placement`] |
//! | `cma_alloc()`: mark, `alloc_contig_range()`, on `-EBUSY` clear and retry further on | [`Cma::alloc`], [`Cma::alloc_in`] |
//! | `alloc_contig_range()`: isolate, migrate, check | the caller's [`Claim`] (e.g. a guest agent's eviction) |
//! | `cma_release()` | [`Cma::free`] and the caller's [`Release`] |
//! | v9 `cma_alloc_from("r1,r2", size, align)`, `cma_info_about()` | [`Cma::alloc_from`], [`Cma::info_about`] |
//! | v9 `cma_map=` device rules with `*`, private regions | [`MapRule`], [`parse_map_rules`], [`RegionSpec::private`] |
//! | v6 `cma_pin()` / `cma_unpin()` (defragmentation never built) | [`Cma::pin`], [`Cma::unpin`], [`Cma::compact`] |
//! | debugfs `used`, `maxchunk`, `bitmap`; sysfs `alloc_pages_success/fail` | [`Cma::stats`] |
//!
//! Differences: Linux retries until the area is exhausted, here claims are bounded (each may
//! wait for a guest); an alignment the bit size cannot meet is refused where Linux would
//! under-align; a free keeps the bits set until the release hook returns.
//!
//! # Modules
//!
//! - [`region`]: regions, map rules, the crate's constants;
//! - [`request`]: a request, and its alignment in a region's bit terms;
//! - [`bitmap`]: the word-at-a-time search and its summary levels;
//! - [`hooks`]: the claim, release and move callbacks;
//! - [`chunk`]: handles; [`metrics`]: statistics; [`error`]: [`CmaError`].
//!
//! With the default `serde` feature, handles, statistics and reports implement
//! `serde::Serialize`.

#![deny(missing_docs)]

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
