//! Memory costs: the guest's allocator metadata per lent GiB (read from the real guest's
//! boot report) and the VMM's allocator memory per region.

use std::time::Duration;

use serde_json::json;

use crate::config::{RegionSpec, format_size};
use crate::grant::GrantPolicy;
use crate::machine::{Vmm, VmmOptions};
use crate::progress::Progress;
use cma::Cma;

use super::svg::{Chart, Series, Style};

const GIB: f64 = (1u64 << 30) as f64;

/// Boot a guest with `lent` bytes of lent CMA memory and read its metadata report.
fn guest_metadata(lent: u64) -> Result<(u64, u64), String> {
    let config = crate::config::VmConfig {
        memory: 2 * lent + (256 << 20),
        guest_args: "mode=boot".into(),
        regions: vec![crate::config::RegionConfig::new("l", lent)],
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    let options = VmmOptions {
        echo_console: false,
        policy: GrantPolicy::default(),
        ..VmmOptions::default()
    };
    let vm = Vmm::new(config, &options)
        .and_then(Vmm::start)
        .map_err(|e| e.to_string())?;
    let console = vm.console().clone();
    vm.wait(Some(Duration::from_secs(120)));
    let text = console.text();
    let line = text
        .lines()
        .find(|l| l.contains("page allocator:"))
        .ok_or("the guest printed no allocator report")?;
    let after = |key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    match (after("metadata "), after("managing ")) {
        (Some(m), Some(pages)) => Ok((m, pages)),
        _ => Err(format!("unexpected report: {line}")),
    }
}

/// Run the memory benchmark; the JSON report and its chart.
pub fn run(progress: &mut Progress) -> Result<(serde_json::Value, Vec<Chart>), String> {
    let mut guest = Vec::new();
    progress.phase("bench memory", "guest boots", 4);
    progress.println("guest allocator metadata (measured in the reference guest):");
    for lent in [64u64 << 20, 256 << 20, 1 << 30, 4 << 30] {
        progress.inc(&format!("{} lent", format_size(lent)));
        let (bytes, pages) = guest_metadata(lent)?;
        let managed = pages as f64 * 4096.0;
        let per_gib = bytes as f64 / managed * GIB;
        progress.finish();
        println!(
            "  lent {:>5}: {} bytes for {} managed pages = {:.0} bytes per GiB = {:.3}% (target <= 1%)",
            format_size(lent),
            bytes,
            pages,
            per_gib,
            100.0 * per_gib / GIB
        );
        guest.push(json!({
            "lent_bytes": lent,
            "metadata_bytes": bytes,
            "managed_pages": pages,
            "metadata_bytes_per_gib": per_gib,
            "fraction": per_gib / GIB,
        }));
    }
    let mut vmm = Vec::new();
    let (mut sizes, mut points) = (Vec::new(), Vec::new());
    println!("VMM allocator memory per region (bitmap, summaries, chunk table, histograms):");
    for (size, order) in [
        (64u64 << 20, 0u32),
        (1 << 30, 0),
        (16 << 30, 0),
        (64 << 30, 0),
        (64 << 30, 4),
    ] {
        let spec = RegionSpec {
            id: 0,
            name: "r".into(),
            base: 1 << 32,
            size,
            private: false,
            order_per_bit: order,
        };
        let cma = Cma::new(&[spec], &[]).map_err(|e| e.to_string())?;
        let bytes = cma.stats()[0].metadata_bytes;
        println!(
            "  region {:>4} at order_per_bit {order}: {bytes} bytes ({:.4}% of the region)",
            format_size(size),
            100.0 * bytes as f64 / size as f64
        );
        if order == 0 {
            sizes.push(size);
            points.push(bytes as f64);
        }
        vmm.push(json!({"region_bytes": size, "order_per_bit": order, "metadata_bytes": bytes}));
    }
    let chart = Chart {
        title: "VMM allocator memory by region size (bitmap, summaries, chunk table)".into(),
        subtitle:
            "bench memory: one bit per 4 KiB page (order_per_bit 0), measured on empty regions"
                .into(),
        x_label: "CMA region size".into(),
        categories: super::size_categories(&sizes),
        y_label: "allocator memory (bytes, log scale)".into(),
        log_y: true,
        style: Style::Bars,
        series: vec![Series {
            name: "VMM allocator metadata".into(),
            values: points,
        }],
    };
    let report = json!({
        "benchmark": "memory",
        "guest_metadata": guest,
        "target_guest_fraction": 0.01,
        "vmm_region_metadata": vmm,
    });
    Ok((report, vec![chart]))
}
