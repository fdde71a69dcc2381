//! `cma-vmm run --exercise N`: the demo the README's first command runs.
//!
//! Once the guest has populated its lent memory, allocate N chunks of several sizes,
//! alignments and grant modes round-robin over the lent regions (freeing every other one
//! as it goes, so later allocations meet holes), print one line per allocation, free the
//! rest, verify every guest page from the host, and ask the guest to check its pages and
//! exit.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::layout::{PAGE_SIZE, PROGRESS_POPULATED};

use crate::config::format_size;
use crate::grant::{EvictionsHeld, Grant, GrantMode, Target};
use crate::integrity::{IntegrityReport, ManifestSnapshot};
use crate::machine::RunningVmm;
use crate::progress::{Output, Progress};
use cma::AllocRequest;

const SIZES: [u64; 8] = [
    64 << 10,
    1 << 20,
    256 << 10,
    2 << 20,
    128 << 10,
    4 << 20,
    512 << 10,
    (3 << 20) + (64 << 10),
];
const ALIGNS: [u64; 4] = [4 << 10, 64 << 10, 1 << 20, 2 << 20];

/// How long to wait for the guest to populate lent memory (nested KVM is slow).
const POPULATE_TIMEOUT: Duration = Duration::from_secs(600);

/// How the exercise runs.
pub struct ExerciseOptions<'a> {
    /// Write a picture of every region's occupancy here, taken after the last allocation
    /// and before the final frees, when fragmentation is at its most.
    pub occupancy_svg: Option<PathBuf>,
    /// How progress is shown.
    pub progress: Output,
    /// Asked to stop (a signal): free what is held and return.
    pub stop: &'a dyn Fn() -> bool,
}

impl Default for ExerciseOptions<'_> {
    fn default() -> Self {
        ExerciseOptions {
            occupancy_svg: None,
            progress: Output::Quiet,
            stop: &|| false,
        }
    }
}

/// What the exercise did.
#[derive(Debug, Default)]
pub struct ExerciseSummary {
    /// Stopped early ([`ExerciseOptions::stop`]); every chunk it held is freed.
    pub stopped: bool,
    /// Allocations granted.
    pub granted: u32,
    /// Allocations refused.
    pub failed: u32,
    /// The host-side check of every guest page afterwards.
    pub integrity: IntegrityReport,
}

/// Wait for the workload, then allocate and free `n` chunks.
pub fn run(vm: &RunningVmm, n: u32, opts: &ExerciseOptions) -> Result<ExerciseSummary, String> {
    let mut progress = Progress::new("exercise", "s", 0, opts.progress);
    let waiting = Instant::now();
    loop {
        if vm.wait_milestone(PROGRESS_POPULATED, Duration::from_millis(250)) {
            break;
        }
        if (opts.stop)() {
            return Ok(ExerciseSummary {
                stopped: true,
                ..ExerciseSummary::default()
            });
        }
        if vm.outcome().is_some() || waiting.elapsed() >= POPULATE_TIMEOUT {
            return Err("the guest did not populate its lent memory".into());
        }
        progress.update(
            waiting.elapsed().as_secs(),
            "waiting for the guest to populate lent memory",
        );
    }
    progress.phase("exercise", "allocations", u64::from(n));
    let grants = vm.grants();
    let lent: Vec<_> = vm
        .config()
        .regions
        .iter()
        .filter(|r| !r.private)
        .cloned()
        .collect();
    let mut summary = ExerciseSummary::default();
    if lent.is_empty() {
        println!("cma-vmm: no lent CMA region to exercise");
        return Ok(summary);
    }
    let mut live: Vec<Grant> = Vec::new();
    for i in 0..n as usize {
        if (opts.stop)() {
            summary.stopped = true;
            break;
        }
        let region = &lent[i % lent.len()];
        let size = SIZES[i % SIZES.len()].min((region.size / 4).max(PAGE_SIZE));
        let align = ALIGNS[(i / lent.len()) % ALIGNS.len()].min(size.next_power_of_two());
        let mode = if i % 3 == 2 {
            GrantMode::Shared
        } else {
            GrantMode::Exclusive
        };
        let req = AllocRequest::new(size).aligned(align, 0);
        let what = format!(
            "alloc {:>3}: {:<8} {:>5} align {:>4} {:<9}",
            i + 1,
            region.name,
            format_size(size),
            format_size(align),
            if mode == GrantMode::Shared {
                "shared"
            } else {
                "exclusive"
            }
        );
        match grants.alloc(&Target::Regions(region.name.clone()), &req, mode) {
            Ok((grant, r)) => {
                summary.granted += 1;
                progress.println(&format!(
                    "cma-vmm: {what} -> [{:#011x}, {:#011x}) {:>5} pages migrated {:>9.2} ms {:>3} exits",
                    r.chunk.gpa,
                    r.chunk.gpa + r.chunk.len,
                    r.pages_migrated,
                    r.elapsed.as_secs_f64() * 1e3,
                    r.exits
                ));
                // Device data, which the guest must never see after the free.
                let _ = grant.write(0, format!("device data of chunk {}", i + 1).as_bytes());
                live.push(grant);
            }
            Err(e) => {
                summary.failed += 1;
                progress.println(&format!("cma-vmm: {what} -> failed: {e}"));
            }
        }
        progress.inc(&format!(
            "{} granted, {} failed",
            summary.granted, summary.failed
        ));
        if i % 2 == 1 && !live.is_empty() {
            let oldest = live.remove(0);
            grants.free(oldest.id()).map_err(|e| e.to_string())?;
        }
    }
    progress.finish();
    if let Some(path) = opts.occupancy_svg.as_ref().filter(|_| !summary.stopped) {
        match write_occupancy(vm, n, path) {
            Ok(()) => println!("cma-vmm: wrote {}", path.display()),
            Err(e) => eprintln!("cma-vmm: occupancy picture: {e}"),
        }
    }
    // Freed (zeroed, given back to the guest) whether the exercise ran out or was stopped.
    for g in live {
        grants.free(g.id()).map_err(|e| e.to_string())?;
    }
    if summary.stopped {
        return Ok(summary);
    }
    summary.integrity = check_guest(vm)?;
    let i = &summary.integrity;
    println!(
        "cma-vmm: integrity: {} guest pages verified byte for byte from the host, {} errors",
        i.pages_checked, i.errors
    );
    for e in &i.first_errors {
        println!("cma-vmm:   {e}");
    }
    Ok(summary)
}

/// The occupancy picture of every region now, with the guest's workload pages.
fn write_occupancy(vm: &RunningVmm, n: u32, path: &std::path::Path) -> Result<(), String> {
    use crate::occupancy::{RegionMap, populated_frames, render};
    let populated = populated_frames(vm);
    if let Err(e) = &populated {
        eprintln!("cma-vmm: occupancy picture without workload pages: {e}");
    }
    let maps = RegionMap::from_cma(vm, populated.as_deref().ok()).map_err(|e| e.to_string())?;
    let title = format!(
        "CMA region occupancy after the exercise's {n} allocations, before its final frees"
    );
    let subtitle = format!(
        "cma-vmm run --exercise {n} · {} guest memory · {}",
        format_size(vm.config().memory),
        crate::bench::utc_now()
    );
    let svg = render(&maps, &title, &subtitle).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))
}

/// Quiesce the guest's workload, verify every page from the host, resume.
pub fn check_guest(vm: &RunningVmm) -> Result<IntegrityReport, String> {
    GuestCheck::begin(vm)?.finish()
}

/// How long the guest may take to answer a check's queries.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// A host-side check of every guest page, in two steps ([`check_guest`] takes both at
/// once). From [`GuestCheck::begin`] to the end of [`GuestCheck::finish`] the VMM sends
/// the guest no eviction (allocations wait: [`crate::grant::GrantManager::hold_evictions`])
/// and the guest's workload is quiesced, so every page stays where the manifest read at
/// the beginning says it is, with the contents it says.
pub struct GuestCheck<'v> {
    vm: &'v RunningVmm,
    snapshot: ManifestSnapshot,
    resumed: bool,
    _evictions: EvictionsHeld<'v>,
}

impl<'v> GuestCheck<'v> {
    /// Hold evictions off (waiting for those under way), quiesce the guest's workload and
    /// read its manifest.
    pub fn begin(vm: &'v RunningVmm) -> Result<Self, String> {
        let evictions = vm.grants().hold_evictions();
        let report = vm
            .grants()
            .agent()
            .query(true, false, CHECK_TIMEOUT)
            .map_err(|e| format!("cannot quiesce the guest: {e}"))?;
        Ok(GuestCheck {
            vm,
            snapshot: ManifestSnapshot::read(vm.vm().ram(), &report),
            resumed: false,
            _evictions: evictions,
        })
    }

    /// Every present page's frame and whether the guest pinned it, as the manifest read at
    /// the beginning says; the error if it could not be read.
    pub fn present_frames(&self) -> Result<Vec<(u64, bool)>, String> {
        self.snapshot.present_frames()
    }

    /// Resume the guest without verifying its pages; evictions go on after.
    pub fn end(mut self) -> Result<(), String> {
        self.resume()
    }

    /// Verify every page the manifest named, resume the guest; evictions go on after.
    pub fn finish(mut self) -> Result<IntegrityReport, String> {
        let report = self.snapshot.verify(self.vm.vm().ram());
        self.resume()?;
        Ok(report)
    }

    fn resume(&mut self) -> Result<(), String> {
        self.resumed = true;
        self.vm
            .grants()
            .agent()
            .query(false, true, CHECK_TIMEOUT)
            .map(|_| ())
            .map_err(|e| format!("cannot resume the guest: {e}"))
    }
}

impl std::fmt::Debug for GuestCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestCheck")
            .field("resumed", &self.resumed)
            .finish_non_exhaustive()
    }
}

impl Drop for GuestCheck<'_> {
    /// A check abandoned half-way still resumes the guest.
    fn drop(&mut self) {
        if !self.resumed {
            let _ = self.resume();
        }
    }
}

/// One line per region with its statistics.
pub fn print_stats(vm: &RunningVmm) {
    for s in vm.grants().cma().stats() {
        println!(
            "cma-vmm: region {:<8} {:>5} {:<7} used {:>5} largest free {:>5} allocs {} ok / {} failed, busy retries {}, pages migrated {}, alloc latency p50 {:.2} ms p99 {:.2} ms",
            s.name,
            format_size(s.size),
            if s.private { "private" } else { "lent" },
            format_size(s.used),
            format_size(s.largest_free),
            s.allocs_ok,
            s.allocs_failed,
            s.busy_retries,
            s.pages_migrated,
            s.alloc_latency.p50_ns as f64 / 1e6,
            s.alloc_latency.p99_ns as f64 / 1e6,
        );
    }
}
