//! The frame-capture device under KVM: the guest driver streams frames from buffers carved
//! out of lent memory it had populated, checks every frame, stops, and gets the memory
//! back; map rules steer each device to its region.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cma::AllocRequest;
use cma_tests::vm::TestVm;
use vmm::grant::{GrantMode, GrantPolicy, Target};
use vmm::machine::RunOutcome;

/// Boot from a TOML configuration written for the test.
fn boot(name: &str, toml: &str) -> TestVm {
    let dir = std::env::temp_dir().join(format!("cma-capture-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vm.toml");
    std::fs::write(&path, toml).unwrap();
    let vm = TestVm::boot(
        &["--config", path.to_str().unwrap()],
        GrantPolicy::default(),
    );
    let _ = std::fs::remove_dir_all(dir);
    vm
}

/// Wait until the guest console contains every one of `needles`.
fn wait_console(vm: &TestVm, needles: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = vm.console();
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {needles:?}; console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The buffer addresses a device's driver printed when streaming started.
fn buffers(console: &str, device: &str) -> Vec<u64> {
    let prefix = format!("cma-guest: {device}: streaming ");
    let line = console
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no streaming line for {device}"));
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("0x"))
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .collect()
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn two_devices_stream_checked_frames_from_evicted_lent_memory() {
    let vm = boot(
        "two",
        r#"
        memory = "128M"
        cma_map = "capture0=a;capture1=b"
        capture = ["capture0", "capture1"]
        guest_args = "capture.frames=20 capture.buffers=4 capture.align=0x10000"
        [[cma]]
        name = "a"
        size = "8M"
        [[cma]]
        name = "b"
        size = "8M"
        "#,
    );
    // Whole lines: the serial port may not have printed a line's end yet when its start
    // is there (seen in L1, where the guest runs 10x faster than on this host's KVM).
    let console = wait_console(
        &vm,
        &[
            "capture0: 20 frames checked, 0 bad; stopped, buffers returned",
            "capture1: 20 frames checked, 0 bad; stopped, buffers returned",
        ],
        Duration::from_secs(120),
    );
    assert!(console.contains("capture0: 20 frames checked, 0 bad; stopped, buffers returned"));
    assert!(console.contains("capture1: 20 frames checked, 0 bad; stopped, buffers returned"));
    // The map rules sent each device to its own region; 1280x720 NV12, 64 KiB aligned.
    let regions = vm.grants().cma().regions().to_vec();
    for (device, region) in [("capture0", &regions[0]), ("capture1", &regions[1])] {
        let b = buffers(&console, device);
        assert_eq!(b.len(), 4, "{device}");
        for a in b {
            assert!(
                a >= region.base && a + 1_382_400 <= region.end(),
                "{device}: {a:#x}"
            );
            assert_eq!(a % 0x10000, 0);
        }
    }
    // The buffers were populated by the guest before: eviction really happened.
    let migrated = vm.grants().metrics.pages_migrated.load(Ordering::Relaxed);
    assert!(migrated >= 2 * 4 * 338, "{migrated} pages migrated");
    for (name, m) in vm.vm().capture_metrics() {
        assert_eq!(m.start_count.load(Ordering::Relaxed), 1, "{name}");
        assert!(m.frame_count.load(Ordering::Relaxed) >= 20, "{name}");
        assert_eq!(m.stop_count.load(Ordering::Relaxed), 1, "{name}");
    }
    assert!(
        vm.grants().cma().is_empty(),
        "the buffers went back to the guest"
    );
    assert!(vm.integrity().is_clean());
    assert_eq!(vm.shutdown_guest(), RunOutcome::Exited(0));
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_start_without_room_gets_an_error_not_a_hang() {
    let vm = boot(
        "small",
        r#"
        memory = "64M"
        cma_map = "*=tiny"
        capture = ["capture0"]
        guest_args = "capture.frames=5 capture.buffers=4"
        [[cma]]
        name = "tiny"
        size = "2M"
        "#,
    );
    wait_console(
        &vm,
        &["capture0: start failed: no buffers"],
        Duration::from_secs(60),
    );
    let (_, m) = &vm.vm().capture_metrics()[0];
    assert_eq!(m.start_fails.load(Ordering::Relaxed), 1);
    assert_eq!(m.frame_count.load(Ordering::Relaxed), 0);
    assert!(
        vm.grants().cma().is_empty(),
        "partial allocations were freed"
    );
    assert!(vm.integrity().is_clean());
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn an_allocation_while_capture_streams() {
    let vm = boot(
        "busy",
        r#"
        memory = "128M"
        cma_map = "*=a"
        capture = ["capture0"]
        guest_args = "capture.frames=40 capture.buffers=3"
        [[cma]]
        name = "a"
        size = "16M"
        "#,
    );
    wait_console(&vm, &["capture0: streaming"], Duration::from_secs(60));
    let (grant, r) = vm
        .grants()
        .alloc(
            &Target::Regions("a".into()),
            &AllocRequest::new(4 << 20),
            GrantMode::Exclusive,
        )
        .expect("room beside the frame buffers");
    let console = wait_console(
        &vm,
        &["capture0: 40 frames checked, 0 bad"],
        Duration::from_secs(120),
    );
    assert!(console.contains("40 frames checked, 0 bad"), "{console}");
    for b in buffers(&console, "capture0") {
        assert!(b + 1_382_400 <= r.chunk.gpa || b >= r.chunk.gpa + r.chunk.len);
    }
    vm.grants().free(grant.id()).unwrap();
    assert!(vm.grants().cma().is_empty());
}
