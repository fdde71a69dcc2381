//! Linux guests, configuration: a bzImage is recognised by its setup header, lent regions
//! must be whole 128 MiB memory blocks (the guest hot-adds them), and every mistake is one
//! line before any VM exists. Booting Linux needs a KVM that runs stock kernels, which
//! this machine's nested KVM does not: `tests/linux/run.sh` boots it under QEMU's KVM.

use std::path::PathBuf;
use std::time::Duration;

use cma_tests::{Run, run_vmm, vmm_bin};

const DEADLINE: Duration = Duration::from_secs(60);

fn run(args: &[&str]) -> Run {
    run_vmm(vmm_bin!(), args, DEADLINE)
}

/// A file holding only a bzImage's setup header (boot protocol 2.15, 64-bit entry): enough
/// for validation, which reads the header and never boots it.
fn fake_bzimage(name: &str) -> PathBuf {
    let mut b = vec![0u8; 0x400];
    b[0x1f1] = 1; // setup_sects
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    let path = std::env::temp_dir().join(format!("cma-fake-bzimage-{}-{name}", std::process::id()));
    std::fs::write(&path, b).expect("write fake bzImage");
    path
}

fn one_line_error(args: &[&str], message: &str) {
    let r = run(args);
    assert_eq!(r.code, Some(1), "{args:?}: {r:#?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {}", r.stderr);
    assert!(
        lines[0].starts_with("cma-vmm: ") && lines[0].contains(message),
        "{args:?}: {:?} lacks {message:?}",
        lines[0]
    );
    assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
}

#[test]
fn lent_regions_of_a_linux_guest_are_whole_memory_blocks() {
    let k = fake_bzimage("blocks");
    let k = k.to_str().unwrap();
    one_line_error(
        &[
            "run",
            "--kernel",
            k,
            "--memory",
            "768M",
            "--cma",
            "name=small,size=64M",
        ],
        "CMA region 'small' size 64M is not a multiple of 128M: regions lent to a Linux guest are hot-added as whole memory blocks",
    );
    one_line_error(
        &[
            "run",
            "--kernel",
            k,
            "--memory",
            "768M",
            "--cma",
            "name=odd,size=128M,base=0x9000000",
        ],
        "CMA region 'odd' base 144M is not a multiple of 128M",
    );
    one_line_error(
        &[
            "run",
            "--kernel",
            k,
            "--memory",
            "256M",
            "--cma",
            "name=big,size=128M",
        ],
        "the guest needs at least 132M (128M + memory/64 for a Linux guest)",
    );
    // Private regions are never hot-added: pageblocks are enough.
    let r = run(&[
        "run",
        "--kernel",
        k,
        "--memory",
        "768M",
        "--vcpus",
        "2",
        "--cma",
        "name=a,size=128M",
        "--cma",
        "name=b,size=128M",
        "--cma",
        "name=secret,size=6M,private",
        "--cmdline",
        "quiet",
        "--dry-run",
    ]);
    assert_eq!(r.code, Some(0), "{r:#?}");
    for (name, base) in [("a", 0x2800_0000u64), ("b", 0x2000_0000)] {
        let line = format!("'{name}' [{base:#x}, {:#x}) 128M lent", base + (128 << 20));
        assert!(r.stdout.contains(&line), "{line} not in {}", r.stdout);
    }
    assert!(
        r.stdout
            .contains("'secret' [0x1fa00000, 0x20000000) 6M private"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("command line: console=ttyS0 reboot=k panic=-1 pci=off memhp_default_state=online_movable quiet"),
        "{}",
        r.stdout
    );
    let _ = std::fs::remove_file(k);
}

#[test]
fn images_and_initrds_are_checked_before_any_vm() {
    let k = fake_bzimage("images");
    let k = k.to_str().unwrap();
    one_line_error(
        &["run", "--initrd", "Cargo.toml", "--dry-run"],
        "--initrd needs a Linux bzImage kernel",
    );
    one_line_error(
        &[
            "run",
            "--kernel",
            k,
            "--initrd",
            "/nonexistent/initrd",
            "--dry-run",
        ],
        "cannot use initrd /nonexistent/initrd",
    );
    one_line_error(
        &["run", "--kernel", "/dev/null", "--dry-run"],
        "cannot open guest image /dev/null: not a regular file",
    );
    let long = "x".repeat(3000);
    one_line_error(
        &["run", "--kernel", k, "--cmdline", &long, "--dry-run"],
        "the guest command line is 3000 bytes long",
    );
    let _ = std::fs::remove_file(k);
}
