//! Allocation latency for chunk sizes 4 KiB to 64 MiB, on empty and on populated ranges,
//! and VM exits per allocation (counted in the vCPU loop).
//!
//! Empty ranges: a guest whose workload populates nothing; each sample allocates and frees
//! (the guest still isolates, scans and takes the range). Populated ranges: every sample
//! lands on a fresh, fully populated range (earlier chunks stay allocated), so every page
//! of the chunk is migrated.

use std::time::Duration;

use serde_json::json;

use super::svg::{Chart, Series, Style};
use super::{Stats, boot_vm, ms};
use crate::config::format_size;
use crate::grant::{GrantMode, GrantPolicy, Target};
use crate::machine::RunningVmm;
use crate::progress::Progress;
use cma::AllocRequest;

/// Chunk sizes measured.
pub const SIZES: [u64; 8] = [
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

struct Point {
    size: u64,
    latency_ms: Stats,
    exits: Stats,
    migrated: Stats,
}

fn sample(
    vm: &RunningVmm,
    size: u64,
    keep: bool,
    live: &mut Vec<crate::grant::Grant>,
) -> Result<(f64, f64, f64), String> {
    let g = vm.grants();
    let (grant, r) = g
        .alloc(
            &Target::Regions("l".into()),
            &AllocRequest::new(size),
            GrantMode::Exclusive,
        )
        .map_err(|e| format!("{}: {e}", format_size(size)))?;
    if keep {
        live.push(grant);
    } else {
        g.free(grant.id()).map_err(|e| e.to_string())?;
    }
    Ok((ms(r.elapsed), r.exits as f64, r.pages_migrated as f64))
}

fn series(populated: bool, runs: usize, progress: &mut Progress) -> Result<Vec<Point>, String> {
    let lent: u64 = if populated {
        SIZES
            .iter()
            .map(|s| s * runs as u64)
            .sum::<u64>()
            .next_multiple_of(2 << 20)
    } else {
        128 << 20
    };
    let args = if populated {
        "workload.rewrite=0 workload.check=0"
    } else {
        "workload.target=0"
    };
    let policy = GrantPolicy {
        evict_timeout: Duration::from_secs(600),
        ..GrantPolicy::default()
    };
    let region = format!("name=l,size={lent}");
    let vm = boot_vm(lent * 2 + (256 << 20), &[&region], args, policy)?;
    let mut live = Vec::new();
    let mut points = Vec::new();
    for size in SIZES {
        let (mut lat, mut exits, mut migrated) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let range = if populated { "populated" } else { "empty" };
            progress.inc(&format!("{} on {range} ranges", format_size(size)));
            let (l, e, m) = sample(&vm, size, populated, &mut live)?;
            lat.push(l);
            exits.push(e);
            migrated.push(m);
        }
        points.push(Point {
            size,
            latency_ms: Stats::of(&lat),
            exits: Stats::of(&exits),
            migrated: Stats::of(&migrated),
        });
    }
    for grant in live {
        vm.grants().free(grant.id()).map_err(|e| e.to_string())?;
    }
    vm.shutdown();
    Ok(points)
}

fn to_json(points: &[Point]) -> serde_json::Value {
    points
        .iter()
        .map(|p| {
            json!({
                "size": p.size,
                "latency_ms_nested": p.latency_ms,
                "exits_per_allocation": p.exits,
                "pages_migrated": p.migrated,
            })
        })
        .collect()
}

/// Run both series; the JSON report and its charts.
pub fn run(
    empty_runs: usize,
    populated_runs: usize,
    progress: &mut Progress,
) -> Result<(serde_json::Value, Vec<Chart>), String> {
    let total = SIZES.len() * (empty_runs + populated_runs);
    progress.phase("bench latency", "samples", total as u64);
    let empty = series(false, empty_runs, progress)?;
    let populated = series(true, populated_runs, progress)?;
    progress.finish();
    println!("allocation latency (nested KVM wall time), exclusive grants:");
    println!(
        "  {:>6}  {:>22}  {:>22}  {:>12}",
        "size", "empty: median/p99 ms", "populated: median/p99 ms", "exits (max)"
    );
    let mut worst_empty_exits = 0.0f64;
    for (e, p) in empty.iter().zip(&populated) {
        worst_empty_exits = worst_empty_exits.max(e.exits.max);
        println!(
            "  {:>6}  {:>10.2} / {:>9.2}  {:>11.2} / {:>10.2}  {:>5.0} / {:>4.0}",
            format_size(e.size),
            e.latency_ms.median,
            e.latency_ms.p99,
            p.latency_ms.median,
            p.latency_ms.p99,
            e.exits.max,
            p.exits.max
        );
    }
    println!(
        "  VM exits per allocation of an empty range: at most {worst_empty_exits:.0} (target <= 4, whatever the size)"
    );
    let line = |name: &str, pts: &[Point], f: &dyn Fn(&Point) -> f64| Series {
        name: name.into(),
        values: pts.iter().map(f).collect(),
    };
    let subtitle = format!(
        "bench latency: {empty_runs} samples per size on empty ranges, {populated_runs} on populated; exclusive grants; nested KVM wall time"
    );
    let charts = vec![
        Chart {
            title: "Allocation latency by chunk size: empty vs populated ranges".into(),
            subtitle: subtitle.clone(),
            x_label: "chunk size".into(),
            categories: super::size_categories(&SIZES),
            y_label: "latency (ms, log scale)".into(),
            log_y: true,
            style: Style::Lines,
            series: vec![
                line("empty range, median", &empty, &|p| p.latency_ms.median),
                line("empty range, p99", &empty, &|p| p.latency_ms.p99),
                line("populated range, median", &populated, &|p| {
                    p.latency_ms.median
                }),
                line("populated range, p99", &populated, &|p| p.latency_ms.p99),
            ],
        },
        Chart {
            title: "VM exits per allocation by chunk size (target: at most 4)".into(),
            subtitle,
            x_label: "chunk size".into(),
            categories: super::size_categories(&SIZES),
            y_label: "VM exits per allocation (count)".into(),
            log_y: false,
            style: Style::Lines,
            series: vec![
                line("empty range, max", &empty, &|p| p.exits.max),
                line("populated range, max", &populated, &|p| p.exits.max),
            ],
        },
    ];
    let report = json!({
        "benchmark": "alloc-latency",
        "note": "latencies are nested-KVM wall time with the guest emulated; exits are counts",
        "grant_mode": "exclusive",
        "empty": to_json(&empty),
        "populated": to_json(&populated),
        "max_exits_per_empty_allocation": worst_empty_exits,
        "target_max_exits": 4,
    });
    Ok((report, charts))
}
