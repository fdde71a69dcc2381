//! Native benchmark of the guest's memory manager: per-page guest logic of eviction and
//! population, and metadata size. Run with
//! `cargo bench -p guest-agent --bench mm [-- --json PATH] [--runs N]`.
//!
//! The guest logic runs natively here; on nested KVM every instruction costs ~1000x, so
//! the figures are for projections (logic + host copy + exits), not for wall time.
//! The fake page table and direct map (a `Vec` behind a `RefCell`) add a few ns per
//! access, so the figures are upper bounds of the logic itself.
//!
//! No memcpy figure here: the one host-memcpy baseline is `cma-vmm bench evict`'s,
//! measured pairwise with the VMM's copy of the same pages, and its hardware projection
//! adds this bench's `evict_host_copy_noop_ns_per_page` to that measured copy.

#[path = "../tests/support/mod.rs"]
mod support;

use guest_agent::mm::{CopyEngine, CopyError, CopyMode, MetaLayout, PhysRange};
use guest_agent::workload::manifest_bytes;
use protocol::boot::{BootInfo, MemEntry, MemKind, NO_REGION, Name, RegionDesc};
use protocol::msg::MigratePair;
use std::hint::black_box;
use std::time::Instant;
use support::{MB, World};

/// RAM for migration destinations, then the lent region the workload fills.
const RAM: u64 = 128 * MB;
const REGION: u64 = 64 * MB;
const REGION_BASE: u64 = 130 * MB;
const PAGES: u32 = (REGION / 4096) as u32;

/// The VMM's copy with the copy left out: what remains is the guest's logic.
struct NoopEngine;

impl CopyEngine for NoopEngine {
    fn push(&mut self, pair: MigratePair) {
        black_box(pair);
    }

    fn copy(&mut self) -> Result<(), CopyError> {
        Ok(())
    }
}

fn boot_info(ram: u64, cma: u64) -> BootInfo {
    let cma_base = (MB + ram).next_multiple_of(2 * MB);
    let mut b = BootInfo::new(cma_base + cma, 1);
    let entries = [
        (0, MB, MemKind::Reserved, NO_REGION),
        (MB, ram, MemKind::Ram, NO_REGION),
        (cma_base, cma, MemKind::Cma, 0),
    ];
    for (base, size, kind, region) in entries.into_iter().filter(|e| e.1 > 0) {
        b.push_mem(MemEntry {
            base,
            size,
            kind,
            region,
        })
        .unwrap();
    }
    let name = Name::new("bench").unwrap();
    b.push_region(RegionDesc {
        id: 0,
        flags: 0,
        base: cma_base,
        size: cma,
        name,
    })
    .unwrap();
    b.validate().unwrap();
    b
}

/// Nanoseconds per page of `f` over `pages` pages.
fn per_page(pages: u32, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64 / f64::from(pages)
}

/// One run: every figure once, on a fresh world.
fn run() -> [f64; 4] {
    let info = boot_info(RAM, REGION);
    assert_eq!(info.regions()[0].base, REGION_BASE);
    let kernel = PhysRange::new(MB, 2 * MB);
    let mut w = World::build(&info, kernel, MB, PAGES, PAGES);
    // Fault the fake guest memory in: measure the logic, not the host's page faults.
    w.hw.mem.borrow_mut().fill(0);
    let fill = |w: &mut World| {
        w.wl.release(&mut w.mm, &mut w.hw, PAGES);
        while w.wl.populate(&mut w.mm, &mut w.hw, 4096) > 0 {}
        assert_eq!(w.mm.stats().free_cma_pages, 0);
    };
    let populate = per_page(PAGES, || fill(&mut w));
    let guest = per_page(PAGES, || {
        let got =
            w.wl.evict(&mut w.mm, &mut w.hw, REGION_BASE, REGION, CopyMode::Guest);
        assert_eq!(got, Ok(u64::from(PAGES)));
    });
    w.mm.return_range(REGION_BASE, REGION).unwrap();
    fill(&mut w);
    let host = per_page(PAGES, || {
        let mode = CopyMode::Host(&mut NoopEngine);
        let got = w.wl.evict(&mut w.mm, &mut w.hw, REGION_BASE, REGION, mode);
        assert_eq!(got, Ok(u64::from(PAGES)));
    });
    w.mm.return_range(REGION_BASE, REGION).unwrap();
    let empty = per_page(PAGES, || {
        let got =
            w.wl.evict(&mut w.mm, &mut w.hw, REGION_BASE, REGION, CopyMode::Guest);
        assert_eq!(got, Ok(0));
    });
    w.mm.return_range(REGION_BASE, REGION).unwrap();
    w.mm.check_invariants().unwrap();
    [populate, host, guest, empty]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let runs: usize = arg("--runs").map_or(7, |r| r.parse().expect("--runs N"));
    let json = arg("--json").cloned().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/guest_mm.json").to_string()
    });

    let samples: Vec<[f64; 4]> = (0..runs).map(|_| run()).collect();
    let med = |i: usize| median(samples.iter().map(|s| s[i]).collect());
    let gib = boot_info(0, 1 << 30);
    let meta = MetaLayout::new(&gib).unwrap().bytes();
    let manifest = manifest_bytes((1u64 << 30 >> 12) as u32);
    let rows = [
        ("populate_ns_per_page", med(0)),
        ("evict_host_copy_noop_ns_per_page", med(1)),
        ("evict_guest_copy_ns_per_page", med(2)),
        ("evict_empty_range_ns_per_page", med(3)),
    ];

    println!("guest mm, native: median of {runs} runs, {PAGES}-page (64 MiB) lent region");
    for (name, v) in rows {
        println!("  {name:<36} {v:>10.1}");
    }
    let pct = meta as f64 * 100.0 / f64::from(1u32 << 30);
    println!(
        "  {:<36} {meta:>10}  ({pct:.3} % of lent memory)",
        "metadata_bytes_per_lent_gib"
    );
    println!(
        "  {:<36} {manifest:>10}  (workload manifest)",
        "manifest_bytes_per_lent_gib"
    );

    let mut out = format!("{{\n  \"runs\": {runs},\n  \"region_pages\": {PAGES},\n");
    for (name, v) in rows {
        out += &format!("  \"{name}\": {v:.1},\n");
    }
    out += &format!("  \"metadata_bytes_per_lent_gib\": {meta},\n");
    out += &format!("  \"manifest_bytes_per_lent_gib\": {manifest}\n}}\n");
    if let Some(dir) = std::path::Path::new(&json).parent() {
        std::fs::create_dir_all(dir).expect("create the JSON directory");
    }
    std::fs::write(&json, out).expect("write the JSON");
    println!("wrote {json}");
}
