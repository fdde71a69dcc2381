//! Per-region counters and latency summaries, in the spirit of Linux's CMA debugfs/sysfs
//! (`used`, `maxchunk`, `bitmap`, `alloc_pages_success`, `alloc_pages_fail`, `release_pages`).

use std::time::Duration;

/// Sub-buckets per power of two: values are kept within 1/8 (12.5%) of their size.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Enough buckets for any `u64` nanosecond value.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

/// A log-scale latency histogram in nanoseconds: fixed memory (4 KiB), any value.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl LatencyHistogram {
    /// Heap bytes of the histogram.
    pub fn heap_bytes(&self) -> u64 {
        self.buckets.len() as u64 * 8
    }

    /// Count one duration.
    pub fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Count one value in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.buckets[bucket_of(ns)] += 1;
        self.count += 1;
        self.sum += u128::from(ns);
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    /// The value at quantile `q` (0 to 1), within the bucket's 12.5%, clamped to min/max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_mid(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Count, min, mean, p50, p99, max.
    pub fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count,
            min_ns: self.min,
            mean_ns: (self.sum / u128::from(self.count)) as u64,
            p50_ns: self.quantile(0.50),
            p99_ns: self.quantile(0.99),
            max_ns: self.max,
        }
    }
}

/// Bucket of `v`: exact below 16, then 8 buckets per power of two.
fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB as u64 {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    (shift as usize + 1) * SUB + ((v >> shift) as usize & (SUB - 1))
}

/// Middle of bucket `i`.
fn bucket_mid(i: usize) -> u64 {
    if i < 2 * SUB {
        return i as u64;
    }
    let shift = (i / SUB - 1) as u32;
    let low = ((SUB + i % SUB) as u64) << shift;
    low + (1u64 << shift) / 2
}

/// A latency summary, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min_ns: u64,
    /// Mean.
    pub mean_ns: u64,
    /// Median (within 12.5%).
    pub p50_ns: u64,
    /// 99th percentile (within 12.5%).
    pub p99_ns: u64,
    /// Largest.
    pub max_ns: u64,
}

/// The counters one region keeps, under its lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct AreaMetrics {
    pub allocs_ok: u64,
    pub allocs_failed: u64,
    pub busy_retries: u64,
    pub pages_migrated: u64,
    pub frees: u64,
    pub compactions: u64,
    pub chunks_moved: u64,
    pub moves_failed: u64,
    /// From the start of an allocation in this region to the grant, claim included.
    pub alloc_latency: LatencyHistogram,
    /// One search and marking of the bitmap (the allocation decision), under the lock.
    pub search_latency: LatencyHistogram,
    /// From a free's start to its bits being cleared, release callback included.
    pub free_latency: LatencyHistogram,
}

/// Statistics of one region. The bitmap dump is as large as the bitmap (4 MiB of text for
/// a 64 GiB region at 4 KiB per bit), as Linux's debugfs `bitmap` file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RegionStats {
    /// Region id.
    pub id: u32,
    /// Region name.
    pub name: String,
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// One bit per 2^order_per_bit pages.
    pub order_per_bit: u32,
    /// Never lent to the guest.
    pub private: bool,
    /// Bytes per bit.
    pub granule: u64,
    /// Bytes taken (granted, being claimed, moved or freed).
    pub used: u64,
    /// Bytes free.
    pub free: u64,
    /// Largest free run, in bytes.
    pub largest_free: u64,
    /// Live chunks (in any state).
    pub chunks: u64,
    /// The bitmap as hex ([`super::bitmap::Bitmap::to_hex`]); left out of the JSON when
    /// emptied (the control API's region list does, to keep it small).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "String::is_empty"))]
    pub bitmap: String,
    /// Allocations granted from this region.
    pub allocs_ok: u64,
    /// Allocations that failed in this region (no space, all busy, claim failed).
    pub allocs_failed: u64,
    /// Candidates the claim reported busy.
    pub busy_retries: u64,
    /// Pages the guest migrated for claims (allocations and compaction destinations).
    pub pages_migrated: u64,
    /// Chunks freed.
    pub frees: u64,
    /// Compactions run.
    pub compactions: u64,
    /// Chunks moved by compaction.
    pub chunks_moved: u64,
    /// Moves abandoned (destination busy or failed, copy failed, chunk pinned meanwhile).
    pub moves_failed: u64,
    /// Allocation latency, claim included.
    pub alloc_latency: LatencySummary,
    /// Allocation decision latency (search and marking).
    pub search_latency: LatencySummary,
    /// Free latency, release included.
    pub free_latency: LatencySummary,
    /// Host memory the region's allocator state takes (bitmap, summaries, chunk table,
    /// histograms): what the region costs its caller in memory.
    pub metadata_bytes: u64,
}

/// What `info_about("r1,r2")` reports over a set of regions (the v9 `cma_info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RegionsInfo {
    /// Regions counted.
    pub regions: u32,
    /// Their total size in bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Largest free run in any one of them, in bytes.
    pub largest_free: u64,
    /// Lowest guest-physical address of any of them.
    pub lower_bound: u64,
    /// One past the highest address of any of them.
    pub upper_bound: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_histogram_summarises_to_zero() {
        let h = LatencyHistogram::default();
        assert_eq!(h.summary(), LatencySummary::default());
        assert_eq!(h.quantile(0.5), 0);
    }

    #[test]
    fn quantiles_are_within_an_eighth() {
        let mut h = LatencyHistogram::default();
        for v in 1..=10_000u64 {
            h.record_ns(v * 100);
        }
        let s = h.summary();
        assert_eq!(
            (s.count, s.min_ns, s.max_ns, s.mean_ns),
            (10_000, 100, 1_000_000, 500_050)
        );
        let close = |got: u64, want: u64| got.abs_diff(want) * 8 <= want;
        assert!(close(s.p50_ns, 500_000), "{s:?}");
        assert!(close(s.p99_ns, 990_000), "{s:?}");
    }

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        let mut last = 0;
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) | ((1u64 << shift) - 1)] {
                let b = bucket_of(v);
                assert!(b >= last && b < BUCKETS);
                last = b;
            }
        }
        let mut h = LatencyHistogram::default();
        h.record_ns(u64::MAX);
        h.record(Duration::MAX);
        assert_eq!(h.summary().p99_ns, u64::MAX);
    }

    #[test]
    fn bucket_middle_is_inside_its_bucket() {
        for i in 0..BUCKETS {
            assert_eq!(bucket_of(bucket_mid(i)), i);
        }
    }
}
