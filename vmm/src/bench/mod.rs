//! `cma-vmm bench ...`: benchmarks that boot the real guest and report medians and p99s,
//! with the ratios they are judged by measured in the same run (host memcpy bandwidth),
//! as JSON plus an SVG chart per series under `target/bench/`.
//!
//! - [`boot`]: process start to the first guest instruction and to guest-ready;
//! - [`evict`]: eviction throughput, VMM-assisted and guest copy, against host memcpy;
//! - [`latency`]: allocation latency and VM exits per allocation, 4 KiB to 64 MiB, empty
//!   and populated ranges;
//! - [`memory`]: guest metadata per lent GiB, VMM memory per region;
//! - [`linux`]: taking populated memory back from a stock Linux guest: our device against
//!   the guest kernel's own `alloc_contig_range()` and virtio-mem unplug;
//! - [`svg`]: the charts.
//!
//! Absolute guest timings on a nested KVM that emulates guest instructions are reported as
//! what they are; the targets are ratios and counts.

pub mod boot;
pub mod evict;
pub mod latency;
pub mod linux;
pub mod memory;
pub mod svg;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::layout::{PAGE_SIZE, PROGRESS_POPULATED};
use serde::Serialize;

use crate::config::{VmConfig, parse_region_flag};
use crate::grant::GrantPolicy;
use crate::host_cache::CacheFlusher;
use crate::machine::{RunningVmm, Vmm, VmmOptions};

/// Median, p99 and extremes of a set of samples.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Stats {
    /// Median.
    pub median: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Number of samples.
    pub n: usize,
}

impl Stats {
    /// Summarise `v`.
    pub fn of(v: &[f64]) -> Self {
        Stats {
            median: percentile(v, 50.0),
            p99: percentile(v, 99.0),
            min: percentile(v, 0.0),
            max: percentile(v, 100.0),
            n: v.len(),
        }
    }
}

/// The `p`th percentile of `v` (nearest rank); NaN for no samples.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Where reports go unless `--json` says otherwise.
pub fn output_dir() -> PathBuf {
    PathBuf::from("target/bench")
}

/// Write `json` to `path` and each chart next to it (`<stem>-<i>.svg`); the files written.
pub fn write_report(
    path: &Path,
    json: &serde_json::Value,
    charts: &[svg::Chart],
) -> std::io::Result<Vec<PathBuf>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(json)? + "\n")?;
    let mut written = vec![path.to_path_buf()];
    let stem = path.with_extension("");
    let when = utc_now();
    for (i, chart) in charts.iter().enumerate() {
        let svg = PathBuf::from(format!("{}-{}.svg", stem.display(), i + 1));
        // Which run: the chart's own parameters, then when and where it was written.
        let mut chart = chart.clone();
        chart.subtitle = [chart.subtitle.as_str(), &when, &host_name()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" · ");
        std::fs::write(&svg, chart.render().map_err(std::io::Error::other)?)?;
        written.push(svg);
    }
    Ok(written)
}

/// Now as `YYYY-MM-DD HH:MM UTC` (civil date from days since the epoch, as in Howard
/// Hinnant's algorithm: no date crate for one line of a chart).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(secs)
}

fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (hh, mm) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02} UTC")
}

/// This machine's host name, for "which run" ("" if unknown).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Boot the reference guest in-process with `--cma` specs and guest arguments, and wait
/// until it has populated its lent memory.
pub fn boot_vm(
    memory: u64,
    regions: &[&str],
    guest_args: &str,
    policy: GrantPolicy,
) -> Result<RunningVmm, String> {
    boot_vm_with(memory, regions, guest_args, policy, false)
}

/// [`boot_vm`], optionally with all guest memory backed by the host at start.
pub fn boot_vm_with(
    memory: u64,
    regions: &[&str],
    guest_args: &str,
    policy: GrantPolicy,
    prealloc: bool,
) -> Result<RunningVmm, String> {
    let config = VmConfig {
        memory,
        guest_args: guest_args.to_string(),
        regions: regions
            .iter()
            .map(|r| parse_region_flag(r).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        ..VmConfig::default()
    };
    let config = config.validate().map_err(|e| e.to_string())?;
    let options = VmmOptions {
        echo_console: false,
        policy,
        prealloc,
        ..VmmOptions::default()
    };
    let vm = Vmm::new(config, &options)
        .and_then(Vmm::start)
        .map_err(|e| e.to_string())?;
    if !vm.wait_milestone(PROGRESS_POPULATED, Duration::from_secs(900)) {
        let why = format!("the guest did not populate: {:?}", vm.outcome());
        vm.shutdown();
        return Err(why);
    }
    Ok(vm)
}

/// The host-memcpy baseline eviction copies are judged against, measured under the same
/// conditions as the VMM's Migrate copy it is compared with: the same number of 4 KiB
/// pages of the same guest memory (the memfd mapping the VMM copies in, between two
/// chunks the benchmark was granted), copied page by page with `copy_nonoverlapping` (the
/// standard library's memcpy, as the device copies), source and destination backed and
/// cold (the caches are flushed before each copy; the benchmark has the agent device flush
/// them before each Migrate copy too: `cold_copies`).
///
/// Benchmarks take one baseline sample right after each copy sample, so that per-run ratios
/// compare the two under the same machine load. (A baseline between two `Vec`s of the
/// process's heap was beaten by the VMM's copy by 10–50% here, in every run: memory of
/// another kind is not the same conditions.)
pub struct MemcpyBaseline {
    pages: usize,
    flusher: CacheFlusher,
}

impl MemcpyBaseline {
    /// Repetitions per sample (a sample is their median).
    const REPS: usize = 5;

    /// A baseline for copies of `pages` pages.
    pub fn new(pages: usize) -> Self {
        MemcpyBaseline {
            pages,
            flusher: CacheFlusher::new(),
        }
    }

    /// Bytes one sample copies.
    pub fn bytes(&self) -> u64 {
        self.pages as u64 * PAGE_SIZE
    }

    /// One sample: the median of a few cold copies of every page from the guest range at
    /// `src` to the one at `dst` (both the benchmark's own chunks, [`Self::bytes`] long);
    /// GiB/s. `None` if a range is not guest RAM.
    pub fn sample(&self, ram: &crate::vstate::memory::GuestRam, src: u64, dst: u64) -> Option<f64> {
        let len = self.bytes();
        let from = ram.host_range(src, len)?;
        let to = ram.host_range(dst, len)?;
        if src < dst + len && dst < src + len {
            return None;
        }
        let page = PAGE_SIZE as usize;
        let reps: Vec<f64> = (0..Self::REPS)
            .map(|_| {
                self.flusher.flush();
                let t = Instant::now();
                for i in 0..self.pages {
                    // SAFETY: `from` and `to` are host addresses of two disjoint ranges of
                    // `len` bytes inside the guest RAM mapping, which outlives this call;
                    // both are chunks the benchmark holds exclusively (revoked from the
                    // guest), so nothing else writes them; no Rust reference to guest
                    // memory exists.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            (from as usize + i * page) as *const u8,
                            (to as usize + i * page) as *mut u8,
                            page,
                        )
                    };
                }
                len as f64 / t.elapsed().as_secs_f64() / (1u64 << 30) as f64
            })
            .collect();
        Some(Stats::of(&reps).median)
    }

    /// How the baseline is measured, for reports.
    pub fn conditions(&self) -> String {
        format!(
            "{} pages of 4 KiB of guest memory (two chunks the bench holds), copy_nonoverlapping per page, source and destination backed and cold (caches flushed by streaming {} MiB before each copy, as before each VMM copy); median of {} per sample",
            self.pages,
            self.flusher.bytes() >> 20,
            Self::REPS
        )
    }
}

/// Per-run ratios `copy[i] / baseline[i]` and what they say.
#[derive(Debug, Clone, Serialize)]
pub struct CopyRatio {
    /// Median of the per-run ratios.
    pub median: f64,
    /// Smallest per-run ratio.
    pub min: f64,
    /// Largest per-run ratio.
    pub max: f64,
    /// Every run's copy was faster than its baseline: the baseline is not the limit under
    /// these conditions, so the ratio is not a result.
    pub baseline_beaten: bool,
}

impl CopyRatio {
    /// Pairwise ratios of two equally long series of bandwidths.
    pub fn of(copy: &[f64], baseline: &[f64]) -> Self {
        let r: Vec<f64> = copy.iter().zip(baseline).map(|(c, b)| c / b).collect();
        let s = Stats::of(&r);
        CopyRatio {
            median: s.median,
            min: s.min,
            max: s.max,
            baseline_beaten: !r.is_empty() && s.min > 1.0,
        }
    }
}

/// Sizes as chart categories ("4 KiB", "64 MiB").
pub fn size_categories(sizes: &[u64]) -> Vec<String> {
    sizes
        .iter()
        .map(|&s| {
            let short = crate::config::format_size(s);
            match short.char_indices().last() {
                Some((i, u @ ('K' | 'M' | 'G'))) => format!("{} {u}iB", &short[..i]),
                _ => format!("{short} B"),
            }
        })
        .collect()
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400 + 3661), "2000-02-29 01:01 UTC");
        assert_eq!(utc_date(1_767_225_600), "2026-01-01 00:00 UTC");
        assert_eq!(
            size_categories(&[4096, 64 << 20, 3 << 30, 100]),
            ["4 KiB", "64 MiB", "3 GiB", "100 B"]
        );
    }
}
