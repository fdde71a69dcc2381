//! `cma-vmm soak --cycles N`: random allocations, frees, pins, unpins and compactions while
//! the guest's workload runs, pins and unpins its own pages (so that evictions meet busy
//! pages and the busy-retry path is soaked too) and its capture driver starts and stops
//! streaming; every guest page is verified from the host after every cycle, and at the end
//! every chunk is freed and the bitmaps must be empty.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{VmConfig, parse_map_rules, parse_region_flag};
use crate::exercise::check_guest;
use crate::grant::{Grant, GrantError, GrantMode, GrantPolicy, Target};
use crate::machine::{RunOutcome, RunningVmm, Vmm, VmmOptions};
use cma::{AllocRequest, ChunkId, CmaError};

/// What a soak run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SoakReport {
    /// Cycles run.
    pub cycles: u64,
    /// Chunks granted.
    pub allocs: u64,
    /// Allocations refused for lack of room (expected under load).
    pub allocs_no_space: u64,
    /// Allocations refused because every candidate was busy.
    pub allocs_busy: u64,
    /// Candidates the guest answered Busy (a pinned page), after which the search went on.
    pub busy_retries: u64,
    /// Chunks freed.
    pub frees: u64,
    /// Pins and unpins.
    pub pins: u64,
    /// Compactions run, and chunks they moved.
    pub compactions: u64,
    /// Chunks moved by compaction.
    pub chunks_moved: u64,
    /// Host-side integrity checks of every guest page.
    pub integrity_checks: u64,
    /// Pages verified over all checks.
    pub pages_verified: u64,
    /// Integrity errors (must be zero).
    pub integrity_errors: u64,
    /// Capture frames the device delivered meanwhile.
    pub capture_frames: u64,
    /// Unexpected errors (must be none).
    pub failures: Vec<String>,
    /// Every bitmap empty after the final frees.
    pub bitmaps_empty: bool,
    /// How the guest's own final check ended.
    pub guest_exit: Option<u32>,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl SoakReport {
    /// Nothing went wrong.
    pub fn is_clean(&self) -> bool {
        self.integrity_errors == 0
            && self.failures.is_empty()
            && self.bitmaps_empty
            && self.guest_exit == Some(0)
    }
}

/// xorshift64*: deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn boot() -> Result<RunningVmm, String> {
    let regions = ["name=a,size=16M", "name=b,size=8M"];
    let config = VmConfig {
        memory: 192 << 20,
        regions: regions
            .iter()
            .map(|r| parse_region_flag(r).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        map: parse_map_rules("capture0=b;*=a").map_err(|e| e.to_string())?,
        capture: vec!["capture0".into()],
        // The guest keeps 24 pages pinned, moving 2 of them every tick.
        guest_args: "tick_ms=10 workload.pin=24 workload.pin_churn=2 capture.frames=5 \
                     capture.cycles=100000000 capture.width=640 capture.height=480 \
                     capture.buffers=3"
            .into(),
        ..VmConfig::default()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    let options = VmmOptions {
        echo_console: false,
        policy: GrantPolicy {
            evict_timeout: Duration::from_secs(30),
            return_timeout: Duration::from_secs(30),
            ..GrantPolicy::default()
        },
        ..VmmOptions::default()
    };
    let vm = Vmm::new(config, &options)
        .and_then(Vmm::start)
        .map_err(|e| e.to_string())?;
    if !vm.wait_milestone(
        protocol::layout::PROGRESS_POPULATED,
        Duration::from_secs(600),
    ) {
        return Err(format!("the guest did not populate: {:?}", vm.outcome()));
    }
    Ok(vm)
}

/// Run `cycles` random cycles with `seed`; `progress` is called after every cycle.
pub fn run(
    cycles: u64,
    seed: u64,
    progress: &mut dyn FnMut(&SoakReport),
) -> Result<SoakReport, String> {
    let start = Instant::now();
    let vm = boot()?;
    let g = vm.grants().clone();
    let mut rng = Rng(seed | 1);
    let mut live: Vec<(Grant, bool)> = Vec::new();
    let mut r = SoakReport::default();
    for cycle in 0..cycles {
        match rng.below(100) {
            0..=39 if live.len() < 12 => {
                let pages = 1 + rng.below(512);
                let align = 4096u64 << rng.below(9);
                let target = match rng.below(3) {
                    0 => Target::Regions("b".into()),
                    1 => Target::Device("soak-dev".into()),
                    _ => Target::Regions("a".into()),
                };
                let mode = [GrantMode::Exclusive, GrantMode::Shared][rng.below(2) as usize];
                let mut req = AllocRequest::new(pages * 4096).aligned(align, 0);
                let pinned = rng.below(2) == 0;
                if !pinned {
                    req = req.unpinned();
                }
                match g.alloc(&target, &req, mode) {
                    Ok((grant, _)) => {
                        let _ = grant.write(0, &cycle.to_le_bytes());
                        live.push((grant, pinned));
                        r.allocs += 1;
                    }
                    Err(GrantError::Cma(CmaError::NoSpace { .. })) => r.allocs_no_space += 1,
                    Err(GrantError::Cma(CmaError::Busy { .. })) => r.allocs_busy += 1,
                    Err(e) => r.failures.push(format!("cycle {cycle}: alloc: {e}")),
                }
            }
            0..=64 if !live.is_empty() => {
                let (grant, _) = live.swap_remove(rng.below(live.len() as u64) as usize);
                match g.free(grant.id()) {
                    Ok(()) => r.frees += 1,
                    Err(e) => r.failures.push(format!("cycle {cycle}: free: {e}")),
                }
            }
            0..=84 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let (id, pinned) = (live[i].0.id(), live[i].1);
                let res = if pinned {
                    g.cma().unpin(id)
                } else {
                    g.cma().pin(id)
                };
                match res {
                    Ok(()) => {
                        live[i].1 = !pinned;
                        r.pins += 1;
                    }
                    Err(e) => r.failures.push(format!("cycle {cycle}: pin/unpin: {e}")),
                }
            }
            _ => match g.compact(0) {
                Ok(report) => {
                    r.compactions += 1;
                    r.chunks_moved += u64::from(report.chunks_moved);
                }
                Err(e) => r.failures.push(format!("cycle {cycle}: compact: {e}")),
            },
        }
        check(&vm, &mut r, cycle);
        r.cycles = cycle + 1;
        r.busy_retries = g.cma().stats().iter().map(|s| s.busy_retries).sum();
        progress(&r);
        if r.failures.len() > 20 || r.integrity_errors > 0 {
            break;
        }
    }
    let ids: Vec<ChunkId> = live.iter().map(|(g, _)| g.id()).collect();
    for id in ids {
        if let Err(e) = g.free(id) {
            r.failures.push(format!("final free: {e}"));
        }
    }
    let last = r.cycles;
    check(&vm, &mut r, last);
    r.capture_frames = vm
        .capture_metrics()
        .iter()
        .map(|(_, m)| m.frame_count.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let _ = g.agent().shutdown_guest();
    r.guest_exit = match vm.wait(Some(Duration::from_secs(120))).outcome {
        RunOutcome::Exited(s) => Some(s),
        _ => None,
    };
    // The VM is down and the capture device has given its buffers back: nothing may be
    // left in any bitmap.
    r.bitmaps_empty = g.cma().is_empty();
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

/// Verify every guest page from the host.
fn check(vm: &RunningVmm, r: &mut SoakReport, cycle: u64) {
    match check_guest(vm) {
        Ok(report) => {
            r.integrity_checks += 1;
            r.pages_verified += report.pages_checked;
            r.integrity_errors += report.errors;
            for e in report.first_errors {
                r.failures.push(format!("cycle {cycle}: {e}"));
            }
        }
        Err(e) => r
            .failures
            .push(format!("cycle {cycle}: integrity check: {e}")),
    }
}
