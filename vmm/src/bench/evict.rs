//! Eviction throughput of a fully populated range: VMM-assisted copy and guest copy,
//! against a host-memcpy baseline measured under the same conditions in the same run.
//!
//! Each sample evicts a fresh, fully populated chunk (earlier chunks stay allocated, so
//! the allocator's first fit lands on populated memory every time). Reported per series:
//! end-to-end throughput (nested KVM, guest logic emulated), the VMM's own copy bandwidth
//! (measured inside the agent device, checks excluded), and VM exits per allocation.
//!
//! The headline is the VMM copy with destinations already backed (`--prealloc`) against
//! [`MemcpyBaseline`]: 1024 pages of the same guest memory, both sides backed and cold (the caches are
//! flushed before each Migrate copy and before each baseline copy), one baseline sample
//! right after each eviction; the ratio is given with its spread over runs. A copy cannot
//! beat memcpy of the same bytes: if it does in every run, the bench reports a bug in its
//! own baseline instead of a ratio. A hardware projection adds the guest's per-page logic
//! measured natively (`cargo bench -p guest-agent --bench mm`) to the measured copy, and
//! compares it with the same baseline.

use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::layout::PAGE_SIZE;
use serde_json::json;

use super::svg::{Chart, Series, Style};
use super::{CopyRatio, MemcpyBaseline, Stats, boot_vm_with};
use crate::config::format_size;
use crate::grant::{CopyMode, GrantMode, GrantPolicy, Target};
use crate::progress::Progress;
use cma::AllocRequest;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// One eviction series.
struct Series1 {
    /// End-to-end MiB/s per sample.
    end_to_end: Vec<f64>,
    /// VMM copy GiB/s per sample (host-copy series only), the copy alone.
    vmm_copy: Vec<f64>,
    /// VMM copy GiB/s including giving host backing to untouched destination pages.
    vmm_copy_backed: Vec<f64>,
    /// VM exits per allocation.
    exits: Vec<f64>,
    /// Pages migrated per sample.
    pages: Vec<f64>,
    /// Host memcpy GiB/s, one sample right after each eviction (when a baseline is given).
    baseline: Vec<f64>,
}

/// Evict `runs` fresh populated chunks of `chunk` bytes. With `baseline`, the device
/// flushes the caches before each copy and a baseline sample follows each eviction.
fn run_series(
    copy: CopyMode,
    chunk: u64,
    runs: usize,
    prealloc: bool,
    baseline: Option<&MemcpyBaseline>,
    progress: &mut Progress,
) -> Result<Series1, String> {
    // One chunk more with a baseline: the first baseline copy's destination.
    let chunks = runs as u64 + u64::from(baseline.is_some());
    let region = format!("name=e,size={}", (chunk * chunks).next_multiple_of(2 << 20));
    let policy = GrantPolicy {
        copy,
        evict_timeout: Duration::from_secs(600),
        ..GrantPolicy::default()
    };
    let vm = boot_vm_with(
        512 << 20,
        &[&region],
        "workload.rewrite=0 workload.check=0",
        policy,
        prealloc,
    )?;
    let g = vm.grants().clone();
    let metrics = &g.agent().shared().metrics;
    let mut out = Series1 {
        end_to_end: Vec::new(),
        vmm_copy: Vec::new(),
        vmm_copy_backed: Vec::new(),
        exits: Vec::new(),
        pages: Vec::new(),
        baseline: Vec::new(),
    };
    // Copies timed cold, like their baseline.
    let cold = baseline.is_some();
    g.agent()
        .shared()
        .cold_copies
        .store(cold, Ordering::Relaxed);
    let mut live = Vec::new();
    let alloc = || {
        g.alloc(
            &Target::Regions("e".into()),
            &AllocRequest::new(chunk),
            GrantMode::Exclusive,
        )
        .map_err(|e| e.to_string())
    };
    // The baseline copies each new chunk onto the one before: both the bench's own.
    let mut previous = None;
    if baseline.is_some() {
        let (spare, report) = alloc()?;
        previous = Some(report.chunk.gpa);
        live.push(spare);
    }
    for _ in 0..runs {
        progress.inc(&format!("{copy:?} copy, {} chunks", format_size(chunk)));
        let (ns0, backing0, pages0) = (
            metrics.copy_ns.load(Ordering::Relaxed),
            metrics.backing_ns.load(Ordering::Relaxed),
            metrics.pages_copied.load(Ordering::Relaxed),
        );
        let (grant, r) = alloc()?;
        let gpa = r.chunk.gpa;
        live.push(grant);
        let copied = metrics.pages_copied.load(Ordering::Relaxed) - pages0;
        let ns = metrics.copy_ns.load(Ordering::Relaxed) - ns0;
        let backing = metrics.backing_ns.load(Ordering::Relaxed) - backing0;
        out.end_to_end
            .push(chunk as f64 / r.elapsed.as_secs_f64() / MIB);
        if copied > 0 && ns > 0 {
            let bytes = (copied * PAGE_SIZE) as f64;
            out.vmm_copy.push(bytes / (ns as f64 / 1e9) / GIB);
            out.vmm_copy_backed
                .push(bytes / ((ns + backing) as f64 / 1e9) / GIB);
        }
        out.exits.push(r.exits as f64);
        out.pages.push(r.pages_migrated as f64);
        if let (Some(b), Some(dst)) = (baseline, previous) {
            let gib_s = b
                .sample(vm.vm().ram(), gpa, dst)
                .ok_or("the baseline's chunks are not guest RAM")?;
            out.baseline.push(gib_s);
            previous = Some(gpa);
        }
    }
    for grant in live {
        g.free(grant.id()).map_err(|e| e.to_string())?;
    }
    vm.shutdown();
    Ok(out)
}

/// The guest's per-page eviction logic measured natively, if its bench has run.
fn native_logic_ns() -> Option<f64> {
    let text = std::fs::read_to_string("target/bench/guest_mm.json").ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["evict_host_copy_noop_ns_per_page"].as_f64()
}

/// Run the eviction benchmark; the JSON report and its charts.
pub fn run(
    runs: usize,
    progress: &mut Progress,
) -> Result<(serde_json::Value, Vec<Chart>), String> {
    const CHUNK: u64 = 4 << 20;
    progress.phase("bench evict", "samples", 3 * runs as u64);
    let baseline = MemcpyBaseline::new((CHUNK / PAGE_SIZE) as usize);
    let host = run_series(CopyMode::Host, CHUNK, runs, false, None, progress)?;
    let pre = run_series(CopyMode::Host, CHUNK, runs, true, Some(&baseline), progress)?;
    let memcpy = Stats::of(&pre.baseline);
    let pre_copy = Stats::of(&pre.vmm_copy);
    let ratio = CopyRatio::of(&pre.vmm_copy, &pre.baseline);
    let lazy = Stats::of(&host.vmm_copy_backed);
    let e2e = Stats::of(&host.end_to_end);
    println!(
        "host memcpy baseline: {}: median {:.2} GiB/s (min-max {:.2}-{:.2})",
        baseline.conditions(),
        memcpy.median,
        memcpy.min,
        memcpy.max
    );
    println!(
        "VMM-assisted eviction of a populated 4 MiB chunk ({runs} runs, {} pages each):",
        pre.pages.first().copied().unwrap_or(0.0)
    );
    println!(
        "  VMM copy, destinations already backed (--prealloc), caches flushed before each copy: median {:.2} GiB/s (min-max {:.2}-{:.2})",
        pre_copy.median, pre_copy.min, pre_copy.max
    );
    if ratio.baseline_beaten {
        return Err(format!(
            "bench bug: the VMM copy beat host memcpy of the same pages in every run (per-run ratios {:.0}%-{:.0}%): the baseline is not the limit under these conditions, so no ratio is reported",
            100.0 * ratio.min,
            100.0 * ratio.max
        ));
    }
    println!(
        "  = {:.0}% of host memcpy (per-run ratios {:.0}%-{:.0}%; target >= 50%)",
        100.0 * ratio.median,
        100.0 * ratio.min,
        100.0 * ratio.max
    );
    println!(
        "  lazily backed guest memory (no --prealloc), the host's first touch of pages the guest never used included: {:.2} GiB/s",
        lazy.median
    );
    println!(
        "  end to end (nested KVM, guest logic emulated): median {:.2} MiB/s, p99 {:.2}; exits per allocation median {:.0}",
        e2e.median,
        e2e.p99,
        Stats::of(&host.exits).median
    );
    let guest = run_series(CopyMode::Guest, 128 << 10, runs, false, None, progress)?;
    let g2e = Stats::of(&guest.end_to_end);
    println!(
        "guest-copy eviction of a populated 128 KiB chunk ({runs} runs): end to end (nested KVM) median {:.3} MiB/s, p99 {:.3}; {:.0}x slower than VMM-assisted",
        g2e.median,
        g2e.p99,
        e2e.median / g2e.median
    );
    let projection = native_logic_ns().map(|logic| {
        let copy_ns = PAGE_SIZE as f64 / (pre_copy.median * GIB) * 1e9;
        let gib_s = PAGE_SIZE as f64 / ((logic + copy_ns) / 1e9) / GIB;
        println!(
            "  projected on hardware: {logic:.1} ns/page guest logic (native) + {copy_ns:.1} ns/page VMM copy = {gib_s:.2} GiB/s, {:.0}% of the same host memcpy baseline",
            100.0 * gib_s / memcpy.median
        );
        json!({
            "guest_logic_ns_per_page_native": logic,
            "vmm_copy_ns_per_page": copy_ns,
            "gib_per_s": gib_s,
            "fraction_of_host_memcpy": gib_s / memcpy.median,
        })
    });
    if projection.is_none() {
        println!("  (run `cargo bench -p guest-agent --bench mm` first for a hardware projection)");
    }
    let report = json!({
        "benchmark": "evict",
        "note": "end-to-end figures are nested-KVM wall time with the guest emulated; \
                 copy bandwidths and ratios are host figures, copy and baseline measured \
                 pairwise under the same conditions",
        "runs": runs,
        "host_memcpy_baseline": {
            "conditions": baseline.conditions(),
            "gib_per_s": memcpy,
        },
        "vmm_assisted": {
            "chunk_bytes": CHUNK,
            "prealloc_vmm_copy_gib_per_s": pre_copy,
            "prealloc_vmm_copy_fraction_of_memcpy": ratio,
            "target_fraction": 0.5,
            "lazy_vmm_copy_with_first_touch_backing_gib_per_s": lazy,
            "end_to_end_mib_per_s_nested": e2e,
            "exits_per_allocation": Stats::of(&host.exits),
            "pages_migrated": Stats::of(&host.pages),
        },
        "guest_copy": {
            "chunk_bytes": 128 << 10,
            "end_to_end_mib_per_s_nested": g2e,
            "exits_per_allocation": Stats::of(&guest.exits),
            "pages_migrated": Stats::of(&guest.pages),
        },
        "hardware_projection": projection,
    });
    let gib = |mib: &[f64]| mib.iter().map(|m| m / 1024.0).collect::<Vec<_>>();
    let chart = Chart {
        title: "Eviction copy throughput per run vs host memcpy of the same pages".into(),
        subtitle: format!(
            "bench evict: {runs} runs, populated 4 MiB chunks (guest copy: 128 KiB); end-to-end figures are nested KVM wall time"
        ),
        x_label: "run".into(),
        categories: super::svg::run_numbers(runs),
        y_label: "throughput (GiB/s, log scale)".into(),
        log_y: true,
        style: Style::Lines,
        series: vec![
            numbered("host memcpy baseline (same pages, cold)", &pre.baseline),
            numbered("VMM copy, destinations backed", &pre.vmm_copy),
            numbered("VMM copy + first-touch backing", &host.vmm_copy_backed),
            numbered("VMM-assisted, end to end (nested)", &gib(&host.end_to_end)),
            numbered("guest copy, end to end (nested)", &gib(&guest.end_to_end)),
        ],
    };
    Ok((report, vec![chart]))
}

fn numbered(name: &str, v: &[f64]) -> Series {
    Series {
        name: name.into(),
        values: v.to_vec(),
    }
}
