//! Eviction under KVM with the real guest: lent memory populated by the guest's workload,
//! evicted on demand, granted, freed, and every guest page verified from the host.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cma::{AllocRequest, CmaError};
use cma_tests::vm::TestVm;
use protocol::page::{MANIFEST_ENTRY_SIZE, ManifestEntry, PAGE_PINNED, PAGE_PRESENT};
use vmm::exercise::GuestCheck;
use vmm::grant::{CopyMode, GrantError, GrantMode, GrantPolicy, Target};
use vmm::machine::RunOutcome;

const M: u64 = 1 << 20;

/// 128 MiB guest, lent regions `a` (8 MiB, the default for any device) and `b` (4 MiB).
fn guest(extra_guest_args: &str, policy: GrantPolicy) -> TestVm {
    let args = format!("tick_ms=10 {extra_guest_args}");
    TestVm::boot(
        &[
            "--memory",
            "128M",
            "--cma",
            "name=a,size=8M",
            "--cma",
            "name=b,size=4M",
            "--cma-map",
            "*=a",
            "--guest-args",
            &args,
        ],
        policy,
    )
}

fn region(name: &str) -> Target {
    Target::Regions(name.into())
}

/// Where the guest's pinned pages are, from its manifest (what the host checker reads).
fn pinned_pages(vm: &TestVm) -> Vec<u64> {
    let report = vm
        .grants()
        .agent()
        .query(false, false, Duration::from_secs(10))
        .expect("report");
    let ram = vm.vm().vm().ram();
    let mut manifest = vec![0u8; report.manifest_len as usize * MANIFEST_ENTRY_SIZE];
    ram.read(report.manifest_gpa, &mut manifest)
        .expect("manifest");
    (0..report.manifest_len as usize)
        .filter_map(|i| ManifestEntry::decode(&manifest, i).ok())
        .filter(|e| e.flags & PAGE_PINNED != 0 && e.flags & PAGE_PRESENT != 0)
        .map(|e| e.gpa)
        .collect()
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn evict_a_populated_range_keeps_every_page_intact() {
    let vm = guest("", GrantPolicy::default());
    assert!(
        vm.integrity().pages_checked >= 3000,
        "lent memory populated"
    );
    let g = vm.grants();
    // 2 MiB with the VMM's copy, then 64 KiB with the guest's own copy.
    let (big, r) = g
        .alloc(
            &region("a"),
            &AllocRequest::new(2 * M),
            GrantMode::Exclusive,
        )
        .expect("evict 2 MiB");
    assert_eq!(r.chunk.len, 2 * M);
    assert_eq!(r.pages_migrated, 512, "the whole range was populated");
    g.set_policy(GrantPolicy {
        copy: CopyMode::Guest,
        evict_timeout: Duration::from_secs(30),
        ..GrantPolicy::default()
    });
    let (small, r) = g
        .alloc(
            &region("b"),
            &AllocRequest::new(64 << 10).aligned(64 << 10, 0),
            GrantMode::Exclusive,
        )
        .expect("evict 64 KiB, guest copy");
    assert_eq!(r.pages_migrated, 16);
    let report = vm.integrity();
    assert!(report.is_clean(), "{:?}", report.first_errors);
    // Every page of the two chunks left the guest: none of its pages lives there.
    for (gpa, len) in [
        (big.chunk().unwrap().gpa, 2 * M),
        (small.chunk().unwrap().gpa, 64 << 10),
    ] {
        assert!(vm.vm().vm().is_revoked(gpa, len));
    }
    g.free(big.id()).expect("free");
    g.free(small.id()).expect("free");
    assert!(g.cma().is_empty(), "bitmaps empty after the frees");
    assert!(vm.integrity().is_clean());
    assert_eq!(
        vm.shutdown_guest(),
        RunOutcome::Exited(0),
        "the guest's own check"
    );
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_pinned_page_is_busy_and_the_allocation_lands_after_it() {
    let vm = guest("workload.pin=1", GrantPolicy::default());
    let pinned = pinned_pages(&vm);
    assert_eq!(pinned.len(), 1, "one pinned page");
    let p = pinned[0];
    let a = vm.grants().cma().regions()[0].clone();
    assert!(
        p >= a.base && p < a.end(),
        "the workload pins lent memory first"
    );
    // Fill the region up to the pinned page's 64 KiB block, so that the first candidate
    // for a 64 KiB chunk is that block.
    let s = 64 << 10;
    let block = p & !(s - 1);
    assert!(block + 2 * s <= a.end(), "room for a second candidate");
    let g = vm.grants();
    let filler = (block > a.base).then(|| {
        g.alloc(
            &region("a"),
            &AllocRequest::new(block - a.base),
            GrantMode::Shared,
        )
        .expect("filler")
        .0
    });
    let (grant, r) = g
        .alloc(
            &region("a"),
            &AllocRequest::new(s).aligned(s, 0),
            GrantMode::Exclusive,
        )
        .expect("granted past the pinned page");
    let c = r.chunk;
    assert_eq!(
        c.gpa,
        block + s,
        "the next aligned candidate after the busy page"
    );
    let stats = &vm.grants().cma().stats()[0];
    assert_eq!(stats.busy_retries, 1);
    assert_eq!(pinned_pages(&vm), vec![p], "the pinned page did not move");
    assert!(vm.integrity().is_clean());
    g.free(grant.id()).unwrap();
    if let Some(f) = filler {
        g.free(f.id()).unwrap();
    }
    assert!(g.cma().is_empty());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn all_candidates_busy_is_a_clear_error_and_leaves_everything_lent() {
    // Pin every page the workload has: nothing in the lent regions can move.
    let vm = guest("workload.pin=100000", GrantPolicy::default());
    assert!(pinned_pages(&vm).len() >= 3000);
    let free_before = vm
        .grants()
        .agent()
        .query(false, false, Duration::from_secs(10))
        .unwrap()
        .free_pages;
    let err = vm
        .grants()
        .alloc(&region("a"), &AllocRequest::new(M), GrantMode::Exclusive)
        .expect_err("every candidate is busy");
    assert!(
        matches!(err, GrantError::Cma(CmaError::Busy { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(vm.grants().cma().is_empty(), "bits cleared");
    assert!(vm.vm().vm().slot_count() <= 2, "no slot hole left");
    let free_after = vm
        .grants()
        .agent()
        .query(false, false, Duration::from_secs(10))
        .unwrap()
        .free_pages;
    assert_eq!(free_before, free_after, "the guest's view is unchanged");
    assert!(vm.integrity().is_clean());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn exclusive_grants_are_out_of_the_guests_reach_and_freed_chunks_read_zero() {
    let vm = guest("", GrantPolicy::default());
    let g = vm.grants();
    let agent = g.agent();
    let t = Duration::from_secs(10);
    let secret = 0x5ec2_e7da_7a00_0001u64;

    let (excl, r) = g
        .alloc(&region("a"), &AllocRequest::new(M), GrantMode::Exclusive)
        .unwrap();
    excl.write(0, &secret.to_le_bytes()).unwrap();
    let refused_before = vm
        .vm()
        .exits()
        .revoked_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        agent.probe(r.chunk.gpa, t),
        Ok(u64::MAX),
        "the guest reads all-ones"
    );
    let refused_after = vm
        .vm()
        .exits()
        .revoked_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused_after, refused_before + 1, "the access was caught");

    let (shared, s) = g
        .alloc(&region("b"), &AllocRequest::new(M), GrantMode::Shared)
        .unwrap();
    shared.write(8, &secret.to_le_bytes()).unwrap();
    assert_eq!(
        agent.probe(s.chunk.gpa + 8, t),
        Ok(secret),
        "shared: the guest sees it"
    );

    g.free(excl.id()).unwrap();
    g.free(shared.id()).unwrap();
    assert_eq!(
        agent.probe(r.chunk.gpa, t),
        Ok(0),
        "zeroed before the guest got it back"
    );
    assert_eq!(agent.probe(s.chunk.gpa + 8, t), Ok(0));
    assert!(vm.integrity().is_clean());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_guest_that_never_answers_times_out_and_the_range_stays_lent() {
    let policy = GrantPolicy {
        evict_timeout: Duration::from_millis(300),
        return_timeout: Duration::from_millis(300),
        ..GrantPolicy::default()
    };
    let vm = guest("agent.mode=mute", policy);
    let start = Instant::now();
    let err = vm
        .grants()
        .alloc(&region("a"), &AllocRequest::new(M), GrantMode::Exclusive)
        .expect_err("no answer");
    let took = start.elapsed();
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(vm.grants().cma().is_empty());
    assert!(!vm.vm().vm().is_revoked(0, 128 * M));
}

/// The soak's integrity failures in L1 ("CAPFRAME" in a workload page): a device model
/// allocated while the host was checking the guest's pages. The check had read the
/// manifest; the eviction then moved the pages of the range elsewhere and the device
/// filled the range, so the check found device data where the manifest had said a page
/// was. The guest had lost nothing. Here the check is begun, a device model allocates
/// populated memory and fills it, and the check is finished only once the allocation has
/// either finished (the race) or is known to wait for the check.
#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_host_check_holds_off_an_eviction_asked_for_meanwhile() {
    let vm = guest("", GrantPolicy::default());
    let g = vm.grants().clone();
    let size = 256 << 10;
    let check = GuestCheck::begin(vm.vm()).expect("quiesce the guest");
    let device = {
        let g = g.clone();
        std::thread::spawn(move || {
            let (grant, r) = g
                .alloc(&region("a"), &AllocRequest::new(size), GrantMode::Shared)
                .expect("allocate");
            // The device fills its new buffer at once, as the capture device does.
            grant.write(0, &vec![0xa5; size as usize]).expect("fill");
            (grant.id(), r.pages_migrated)
        })
    };
    let held = || g.metrics.evictions_held.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !device.is_finished() && held() == 0 {
        assert!(
            Instant::now() < deadline,
            "the allocation neither ran nor waited"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let report = check.finish().expect("resume the guest");
    assert!(
        report.is_clean(),
        "the check read pages where they no longer were: {:?}",
        report.first_errors
    );
    assert_eq!(held(), 1, "the eviction waited for the check");
    let (id, migrated) = device.join().expect("the allocation ran after the check");
    assert_eq!(migrated, size / PAGE_SIZE_U, "the range was populated");
    let report = vm.integrity();
    assert!(report.is_clean(), "{:?}", report.first_errors);
    g.free(id).expect("free");
    assert!(vm.integrity().is_clean());
    assert_eq!(vm.shutdown_guest(), RunOutcome::Exited(0));
}

/// A small deterministic generator for the random cycles.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn integrity_over_200_random_alloc_free_cycles_with_the_workload_running() {
    let vm = guest(
        "workload.rewrite=8 workload.check=8",
        GrantPolicy::default(),
    );
    let g = vm.grants();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut live = Vec::new();
    let (mut granted, mut refused) = (0, 0);
    for cycle in 0..200 {
        if live.len() < 6 && (live.is_empty() || rng.below(10) < 6) {
            let pages = 1 + rng.below(256);
            let align = PAGE_SIZE_U << rng.below(9);
            let target = region(["a", "b"][rng.below(2) as usize]);
            let mode = [GrantMode::Exclusive, GrantMode::Shared][rng.below(2) as usize];
            let req = AllocRequest::new(pages * PAGE_SIZE_U).aligned(align, 0);
            match g.alloc(&target, &req, mode) {
                Ok((grant, _)) => {
                    grant.write(0, &[0xa5; 64]).unwrap();
                    live.push(grant);
                    granted += 1;
                }
                Err(e) => {
                    // Only running out of room is acceptable: nothing is pinned.
                    assert!(
                        matches!(e, GrantError::Cma(CmaError::NoSpace { .. })),
                        "cycle {cycle}: {e}"
                    );
                    refused += 1;
                }
            }
        } else {
            let i = rng.below(live.len() as u64) as usize;
            g.free(live.swap_remove(i).id()).expect("free");
        }
        if cycle % 50 == 49 {
            let report = vm.integrity();
            assert!(
                report.is_clean(),
                "cycle {cycle}: {:?}",
                report.first_errors
            );
        }
    }
    for grant in live {
        g.free(grant.id()).unwrap();
    }
    assert!(granted >= 100, "{granted} granted, {refused} refused");
    assert!(g.cma().is_empty(), "no leaked bits");
    assert_eq!(vm.vm().vm().slot_count(), 1, "every slot hole closed");
    let report = vm.integrity();
    assert!(report.is_clean(), "{:?}", report.first_errors);
    assert_eq!(vm.shutdown_guest(), RunOutcome::Exited(0));
}

const PAGE_SIZE_U: u64 = protocol::layout::PAGE_SIZE;
