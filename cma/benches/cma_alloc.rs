//! Allocation decision time (search + marking, no claim) of the CMA bitmap on a 64 GiB
//! region at 4 KiB per bit (16 Mi bits), fragmented to about 30% in random-length runs.
//!
//! Three variants answer the same request stream and must agree on every answer:
//! - `summary`: the allocator's bitmap (word-at-a-time search + per-word summary level);
//! - `word`: the same search without the summary level (Linux's `find_next_bit` style);
//! - `naive`: the same algorithm testing one bit at a time, timed on every `NAIVE_EVERY`th
//!   request to keep the run short; its ratios compare the same requests.
//!
//! Two fragmentation models (seeded): `chunks` (taken runs the size of chunks, 4 KiB to
//! 4 MiB, free runs 4 KiB to ~10 MiB, both log-uniform) and `short` (taken runs of 1-224
//! bits, free runs of 1-128 bits, one in ten up to 4096). Allocations stay live (up to
//! `LIVE`; then a random one is freed), so first fit packs the low end as it would in use.
//!
//! `cargo bench -p cma --bench cma_alloc [-- --json PATH] [--requests N] [--seed S]
//! [--fragment chunks|short]`; the JSON report goes to `target/bench/cma_alloc.json` by
//! default.

use std::hint::black_box;
use std::time::Instant;

use cma::bitmap::{Bitmap, find_area_naive};

/// 64 GiB at 4 KiB per bit.
const NBITS: u64 = (64 << 30) >> 12;
/// Region base: 4 GiB (above the MMIO hole), so alignments are guest-physical.
const BASE_PAGES: u64 = (4 << 30) >> 12;
const LIVE: usize = 512;
const NAIVE_EVERY: usize = 4;
/// Decisions under `SHORT_NS` are repeated this many times (mark undone each time) and
/// averaged: the timer costs ~20 ns, as much as a short search.
const REPEAT: u64 = 16;
const SHORT_NS: u64 = 1000;

/// One kind of request: size and alignment in pages, offset in pages.
struct Class {
    name: &'static str,
    pages: u64,
    align_pages: u64,
    offset_pages: u64,
    weight: u64,
}

const fn class(name: &'static str, pages: u64, align: u64, offset: u64, weight: u64) -> Class {
    Class {
        name,
        pages,
        align_pages: align,
        offset_pages: offset,
        weight,
    }
}

const CLASSES: [Class; 8] = [
    class("4K", 1, 1, 0, 4),
    class("64K@64K", 16, 16, 0, 3),
    class("256K", 64, 1, 0, 2),
    class("1M@1M", 256, 256, 0, 2),
    class("2M@2M", 512, 512, 0, 1),
    class("4M@4M+1M", 1024, 1024, 256, 1),
    class("8M", 2048, 1, 0, 1),
    class("32M nofit", 8192, 1, 0, 1),
];

/// xorshift64*: seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `1..=n`.
    fn upto(&mut self, n: u64) -> u64 {
        1 + self.next() % n
    }

    /// Log-uniform in `1..=n`: as many runs of 1-2 bits as of 512-1024.
    fn log_upto(&mut self, n: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64 + 1.0).powf(u) as u64).clamp(1, n)
    }
}

/// Mark runs of taken bits between free runs, to about 30% taken.
fn fragment(maps: &mut [&mut Bitmap], rng: &mut Rng, model: &str) {
    let mut pos = 0;
    while pos < NBITS {
        let (free, used) = match model {
            "short" if rng.next().is_multiple_of(10) => (rng.upto(4096), rng.upto(224)),
            "short" => (rng.upto(128), rng.upto(224)),
            _ => (rng.log_upto(2730), rng.log_upto(1024)),
        };
        pos += free;
        for m in maps.iter_mut() {
            m.set_range(pos, used);
        }
        pos += used;
    }
}

/// The bit-level mask and offset of a class (Linux's `cma_bitmap_aligned_mask/offset`).
fn mask_offset(c: &Class) -> (u64, u64) {
    let mask = c.align_pages - 1;
    (mask, BASE_PAGES.wrapping_sub(c.offset_pages) & mask)
}

/// Search, and mark what was found: one allocation decision.
fn decide(map: &mut Bitmap, n: u64, search: &impl Fn(&Bitmap) -> Option<u64>) -> Option<u64> {
    let r = search(map);
    if let Some(bit) = r {
        map.set_range(bit, n);
    }
    black_box(r)
}

fn undo(map: &mut Bitmap, n: u64, r: Option<u64>) {
    if let Some(bit) = r {
        map.clear_range(bit, n);
    }
}

/// Time one decision; a short one is averaged over `REPEAT` runs (each undone, so the
/// average includes one clear: a few ns). Leaves the decision made.
fn timed(map: &mut Bitmap, n: u64, search: impl Fn(&Bitmap) -> Option<u64>) -> (Option<u64>, u64) {
    let t = Instant::now();
    let r = decide(map, n, &search);
    let once = t.elapsed().as_nanos() as u64;
    if once >= SHORT_NS {
        return (r, once);
    }
    undo(map, n, r);
    let t = Instant::now();
    for _ in 0..REPEAT {
        let r = decide(map, n, &search);
        undo(map, n, r);
    }
    let avg = t.elapsed().as_nanos() as u64 / REPEAT;
    (decide(map, n, &search), avg)
}

#[derive(Default, Clone)]
struct Samples {
    summary: Vec<u64>,
    word: Vec<u64>,
    /// (summary, word, naive) on the requests where naive ran.
    paired: Vec<(u64, u64, u64)>,
    found: usize,
}

/// Run one fragmentation model; returns per-class samples and the taken fraction.
fn run(model: &str, requests: usize, seed: u64) -> (Vec<Samples>, f64) {
    let mut rng = Rng(seed);
    let mut with = Bitmap::new(NBITS);
    let mut plain = Bitmap::without_summary(NBITS);
    fragment(&mut [&mut with, &mut plain], &mut rng, model);
    let taken = with.count_used() as f64 / NBITS as f64;
    let total_weight: u64 = CLASSES.iter().map(|c| c.weight).sum();
    let mut samples = vec![Samples::default(); CLASSES.len()];
    let mut live: Vec<(u64, u64)> = Vec::new();
    for i in 0..requests {
        let mut pick = rng.next() % total_weight;
        let k = CLASSES
            .iter()
            .position(|c| {
                pick < c.weight || {
                    pick -= c.weight;
                    false
                }
            })
            .unwrap_or(0);
        let (n, (mask, off)) = (CLASSES[k].pages, mask_offset(&CLASSES[k]));
        let (a, t_summary) = timed(&mut with, n, |m| m.find_area(0, n, mask, off));
        let (b, t_word) = timed(&mut plain, n, |m| m.find_area(0, n, mask, off));
        assert_eq!(a, b, "summary and word searches disagree");
        let s = &mut samples[k];
        s.summary.push(t_summary);
        s.word.push(t_word);
        if i.is_multiple_of(NAIVE_EVERY) {
            undo(&mut plain, n, b);
            let (c, t_naive) = timed(&mut plain, n, |m| find_area_naive(m, 0, n, mask, off));
            assert_eq!(a, c, "naive search disagrees");
            s.paired.push((t_summary, t_word, t_naive));
        }
        if let Some(bit) = a {
            s.found += 1;
            live.push((bit, n));
        }
        if live.len() > LIVE {
            let (bit, n) = live.swap_remove((rng.next() % live.len() as u64) as usize);
            with.clear_range(bit, n);
            plain.clear_range(bit, n);
        }
    }
    (samples, taken)
}

fn percentile(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Median of `slow` over median of `fast`.
fn ratio(slow: &[u64], fast: &[u64]) -> f64 {
    percentile(slow, 0.5) as f64 / percentile(fast, 0.5).max(1) as f64
}

fn us(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1000.0)
}

/// Print one model's table and return its JSON rows.
fn report(model: &str, samples: &[Samples], taken: f64) -> serde_json::Value {
    println!("\nmodel '{model}': {:.1}% taken", taken * 100.0);
    println!(
        "{:<10} {:>6} {:>5} | {:>8} {:>8} | {:>8} {:>8} | {:>9} {:>9} | {:>7} {:>7} {:>7}",
        "class",
        "n",
        "fit%",
        "sum p50",
        "sum p99",
        "word p50",
        "word p99",
        "naive p50",
        "naive p99",
        "n/sum",
        "n/word",
        "word/s"
    );
    let all = Samples {
        summary: samples.iter().flat_map(|s| s.summary.clone()).collect(),
        word: samples.iter().flat_map(|s| s.word.clone()).collect(),
        paired: samples.iter().flat_map(|s| s.paired.clone()).collect(),
        found: samples.iter().map(|s| s.found).sum(),
    };
    let mut rows = Vec::new();
    for (name, s) in CLASSES
        .iter()
        .map(|c| c.name)
        .zip(samples)
        .chain([("all", &all)])
    {
        let column = |f: fn(&(u64, u64, u64)) -> u64| s.paired.iter().map(f).collect::<Vec<_>>();
        let (ps, pw, pn) = (column(|p| p.0), column(|p| p.1), column(|p| p.2));
        let fit = s.found as f64 / s.summary.len().max(1) as f64;
        let (sp50, sp99) = (percentile(&s.summary, 0.5), percentile(&s.summary, 0.99));
        let (wp50, wp99) = (percentile(&s.word, 0.5), percentile(&s.word, 0.99));
        let (np50, np99) = (percentile(&pn, 0.5), percentile(&pn, 0.99));
        let (n_sum, n_word) = (ratio(&pn, &ps), ratio(&pn, &pw));
        let word_sum = ratio(&s.word, &s.summary);
        println!(
            "{name:<10} {:>6} {:>5.1} | {:>8} {:>8} | {:>8} {:>8} | {:>9} {:>9} | {:>6.1}x {:>6.1}x {:>6.1}x",
            s.summary.len(),
            100.0 * fit,
            us(sp50),
            us(sp99),
            us(wp50),
            us(wp99),
            us(np50),
            us(np99),
            n_sum,
            n_word,
            word_sum
        );
        rows.push(serde_json::json!({
            "class": name, "requests": s.summary.len(), "fit_fraction": fit,
            "summary_p50_ns": sp50, "summary_p99_ns": sp99,
            "word_p50_ns": wp50, "word_p99_ns": wp99,
            "naive_samples": pn.len(), "naive_p50_ns": np50, "naive_p99_ns": np99,
            "naive_over_summary": n_sum, "naive_over_word": n_word, "word_over_summary": word_sum,
        }));
    }
    serde_json::json!({ "model": model, "taken_fraction": taken, "classes": rows })
}

fn default_json_path() -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string());
    format!("{target}/bench/cma_alloc.json")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let requests: usize = arg("--requests")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = arg("--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe);
    let path = arg("--json").cloned().unwrap_or_else(default_json_path);
    let models: Vec<&str> = match arg("--fragment").map(String::as_str) {
        Some("short") => vec!["short"],
        Some("chunks") => vec!["chunks"],
        _ => vec!["chunks", "short"],
    };
    println!(
        "cma_alloc: 64 GiB region, {NBITS} bits at 4 KiB, {requests} requests per model, \
         seed {seed:#x}; times in µs, ratios of medians (naive over the same requests)"
    );
    let began = Instant::now();
    let results: Vec<serde_json::Value> = models
        .iter()
        .map(|model| {
            let (samples, taken) = run(model, requests, seed);
            report(model, &samples, taken)
        })
        .collect();
    let secs = began.elapsed().as_secs_f64();
    println!("\nrun took {secs:.1} s");
    let doc = serde_json::json!({
        "bench": "cma_alloc", "region_bytes": 64u64 << 30, "bits": NBITS, "requests": requests,
        "seed": seed, "naive_every": NAIVE_EVERY, "live_chunks": LIVE, "repeat_below_ns": SHORT_NS,
        "repeat": REPEAT, "seconds": secs, "models": results,
    });
    match write_json(std::path::Path::new(&path), &doc) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => eprintln!("cannot write {path}: {e}"),
    }
}

fn write_json(path: &std::path::Path, doc: &serde_json::Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(doc)? + "\n")
}
