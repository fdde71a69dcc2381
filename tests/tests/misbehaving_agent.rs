//! A guest agent that misbehaves on purpose (`agent.mode=` on the guest command line):
//! the VMM neither panics nor hangs, keeps its bitmaps consistent, and never grants a
//! range whose guest access it has not revoked.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cma::AllocRequest;
use cma_tests::vm::TestVm;
use vmm::grant::{GrantMode, GrantPolicy, Target};

const M: u64 = 1 << 20;

fn guest(mode: &str, policy: GrantPolicy) -> TestVm {
    let args = format!("tick_ms=10 agent.mode={mode} agent.delay_ms=1000");
    TestVm::boot(
        &[
            "--memory",
            "128M",
            "--cma",
            "name=a,size=8M",
            "--guest-args",
            &args,
        ],
        policy,
    )
}

fn a() -> Target {
    Target::Regions("a".into())
}

/// Allocate and free a few chunks; every allocation must be granted.
fn churn(vm: &TestVm) {
    let g = vm.grants();
    for (size, mode) in [
        (M, GrantMode::Exclusive),
        (256 << 10, GrantMode::Shared),
        (2 * M, GrantMode::Exclusive),
    ] {
        let (grant, r) = g
            .alloc(&a(), &AllocRequest::new(size), mode)
            .expect("granted");
        assert_eq!(
            vm.vm().vm().is_revoked(r.chunk.gpa, size),
            mode == GrantMode::Exclusive
        );
        g.free(grant.id()).expect("freed");
    }
    assert!(g.cma().is_empty());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_guest_that_answers_done_without_evicting_loses_its_own_data_not_ours() {
    let vm = guest("lie", GrantPolicy::default());
    let g = vm.grants();
    let (grant, r) = g
        .alloc(&a(), &AllocRequest::new(M), GrantMode::Exclusive)
        .expect("the VMM believes the guest");
    // Granted only with the guest's access revoked: the guest cannot read device data.
    assert!(vm.vm().vm().is_revoked(r.chunk.gpa, M));
    grant.write(0, &[0x42; 8]).unwrap();
    let probe = g.agent().probe(r.chunk.gpa, Duration::from_secs(10));
    assert_eq!(probe, Ok(u64::MAX));
    // Its pages there are gone from its view: the host check sees it.
    g.free(grant.id()).unwrap();
    assert!(g.cma().is_empty());
    assert!(
        !vm.integrity().is_clean(),
        "the lying guest's own pages were lost"
    );
    // The guest never held the range as evicted, so it refused the Return.
    assert_eq!(g.metrics.return_fails.load(Ordering::Relaxed), 1);
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn answers_to_requests_never_sent_and_duplicates_are_ignored() {
    let vm = guest("spurious", GrantPolicy::default());
    churn(&vm);
    let m = &vm.grants().agent().shared().metrics;
    assert!(m.unsolicited_answers.load(Ordering::Relaxed) >= 6);
    assert!(vm.integrity().is_clean());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn garbage_descriptors_are_refused() {
    let vm = guest("garbage", GrantPolicy::default());
    churn(&vm);
    let m = &vm.grants().agent().shared().metrics;
    assert!(m.bad_descriptors.load(Ordering::Relaxed) >= 6);
    assert!(vm.integrity().is_clean());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_flooding_guest_does_not_stall_the_vmm() {
    let vm = guest("flood", GrantPolicy::default());
    let start = Instant::now();
    churn(&vm);
    assert!(start.elapsed() < Duration::from_secs(60));
    let m = &vm.grants().agent().shared().metrics;
    assert!(m.unsolicited_answers.load(Ordering::Relaxed) >= 64 * 6);
    assert!(vm.integrity().is_clean());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_late_answer_is_ignored_and_the_late_eviction_undone() {
    let policy = GrantPolicy {
        evict_timeout: Duration::from_millis(300),
        ..GrantPolicy::default()
    };
    let vm = guest("slow", policy);
    let agent = vm.grants().agent();
    let free_before = agent
        .query(false, false, Duration::from_secs(10))
        .unwrap()
        .free_pages;
    let start = Instant::now();
    let err = vm
        .grants()
        .alloc(&a(), &AllocRequest::new(M), GrantMode::Exclusive)
        .expect_err("answered after the timeout");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(vm.grants().cma().is_empty(), "back to Lent at once");
    // The guest finishes the eviction, answers late (ignored), then undoes it on Cancel.
    let free_after = agent
        .query(false, false, Duration::from_secs(10))
        .unwrap()
        .free_pages;
    assert_eq!(
        free_before, free_after,
        "the cancelled eviction gave its pages back"
    );
    assert!(
        agent
            .shared()
            .metrics
            .unsolicited_answers
            .load(Ordering::Relaxed)
            >= 1
    );
    assert!(vm.integrity().is_clean());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn migrate_pairs_into_device_memory_are_refused() {
    let vm = guest("stray", GrantPolicy::default());
    let g = vm.grants();
    // The first eviction has nothing to aim at yet.
    let (first, r) = g
        .alloc(&a(), &AllocRequest::new(M), GrantMode::Exclusive)
        .expect("first chunk");
    let secret = [0x77u8; 4096];
    first.write(0, &secret).unwrap();
    // The next one asks the VMM to copy the guest's pages over the first chunk.
    let err = g
        .alloc(&a(), &AllocRequest::new(M), GrantMode::Exclusive)
        .expect_err("the guest's copy request is refused");
    assert!(err.to_string().contains("could not evict"), "{err}");
    let m = &g.agent().shared().metrics;
    assert!(m.pairs_refused.load(Ordering::Relaxed) >= 1);
    let mut back = [0u8; 4096];
    first.read(0, &mut back).unwrap();
    assert_eq!(back, secret, "device memory untouched");
    assert_eq!(g.cma().chunks().len(), 1, "only the first chunk is granted");
    assert_eq!(g.cma().chunks()[0].gpa, r.chunk.gpa);
    g.free(first.id()).unwrap();
    assert!(g.cma().is_empty());
}
