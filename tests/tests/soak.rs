//! A short soak (the long one is `cma-vmm soak --cycles 10000`): random alloc, free, pin,
//! unpin and compact with the workload running, pinning and unpinning its own pages, and
//! the capture driver streaming, every guest page verified after every cycle.

use cma_tests::require_kvm;

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn short_soak_keeps_every_page_and_ends_with_empty_bitmaps() {
    require_kvm();
    let report = vmm::soak::run(60, 0x50a4, &mut |_| {}).expect("soak ran");
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.cycles, 60);
    assert!(report.allocs >= 10, "{report:#?}");
    assert!(report.integrity_checks >= 60);
    assert!(
        report.capture_frames > 0,
        "the capture driver streamed meanwhile"
    );
    assert!(
        report.busy_retries > 0,
        "evictions met the guest's pinned pages: {report:#?}"
    );
}
