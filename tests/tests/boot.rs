//! Boot: the guest sees exactly the memory map the VMM declared; crashes end the run with a
//! diagnostic and a non-zero status; bad input never starts a VM.

use std::time::Duration;

use cma_tests::{MapLine, Run, parse_memory_map, require_kvm, run_vmm, vmm_bin};
use protocol::layout::{BOOT_AREA_END, LOW_RESERVED_END, ram_ranges};
use vmm::cli::{Command, parse};
use vmm::config::ValidConfig;

const DEADLINE: Duration = Duration::from_secs(120);

fn run(args: &[&str], deadline: Duration) -> Run {
    run_vmm(vmm_bin!(), args, deadline)
}

const EXAMPLE: &[&str] = &[
    "run",
    "--memory",
    "256M",
    "--cma",
    "name=video,size=64M,align=1M",
    "--cma",
    "name=camera,size=32M,base=0x8000000",
    "--cma",
    "name=secure,size=16M,private",
    "--cma-map",
    "video-dev=video;*=camera",
    "--guest-args",
    "mode=boot",
];

/// What the VMM itself makes of `args` (the same parser and validation the binary uses).
fn validated(args: &[&str]) -> ValidConfig {
    let argv = args.iter().map(|s| s.to_string()).collect();
    match parse(argv).expect("parse") {
        Command::Run(r) => r.config.validate().expect("valid"),
        other => panic!("{other:?}"),
    }
}

/// The guest's map must tile guest RAM exactly: the boot area reserved, each configured
/// region once with its name, id and lent/private flag, everything else RAM.
fn check_map(map: &[MapLine], config: &ValidConfig) {
    let ram = ram_ranges(config.memory);
    let mut cursor = 0;
    for line in map {
        assert!(line.base >= cursor, "overlap or disorder at {line:?}");
        if line.base != cursor {
            // Only the MMIO hole may be skipped.
            assert_eq!(
                (cursor, line.base),
                (ram[0].1, ram[1].0),
                "gap before {line:?}"
            );
        }
        cursor = line.end;
        match line.kind.as_str() {
            "reserved" => assert!(line.end <= BOOT_AREA_END, "reserved outside boot area"),
            "ram" => assert!(line.base >= LOW_RESERVED_END),
            "cma" => {
                let (name, id, how) = line.region.clone().expect("region details");
                let r = config
                    .regions
                    .iter()
                    .find(|r| r.name == name)
                    .unwrap_or_else(|| panic!("guest reports unknown region {name}"));
                assert_eq!((line.base, line.end), (r.base, r.end()), "region {name}");
                assert_eq!(id, r.id);
                assert_eq!(how, if r.private { "private" } else { "lent" });
            }
            other => panic!("unknown kind {other}"),
        }
    }
    let ram_end = if ram[1].1 > ram[1].0 {
        ram[1].1
    } else {
        ram[0].1
    };
    assert_eq!(cursor, ram_end, "map does not reach the end of RAM");
    let cma_lines = map.iter().filter(|l| l.kind == "cma").count();
    assert_eq!(cma_lines, config.regions.len(), "each region exactly once");
    assert_eq!(map[0].kind, "reserved");
    assert_eq!((map[0].base, map[0].end), (0, LOW_RESERVED_END));
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn guest_reports_the_declared_memory_map() {
    require_kvm();
    let run = run(EXAMPLE, DEADLINE);
    assert_eq!(run.code, Some(0), "{run:#?}");
    check_map(&parse_memory_map(&run.stdout), &validated(EXAMPLE));
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn three_configuration_forms_boot_the_same_machine() {
    require_kvm();
    let flags = [
        "run",
        "--guest-args",
        "mode=boot",
        "--cma",
        "name=video,size=64M,align=1M",
        "--cma",
        "name=camera,size=32M,base=0x8000000",
        "--cma-map",
        "video-dev=video;*=camera",
    ];
    let cmdline = [
        "run",
        "--guest-args",
        "mode=boot",
        "--cma-cmdline",
        "cma=video=64M/1M;camera=32M@0x8000000 cma_map=video-dev=video;*=camera",
    ];
    let file = [
        "run",
        "--config",
        "../resources/vm.toml",
        "--guest-args",
        "mode=boot",
    ];
    let a = run(&flags, DEADLINE);
    let b = run(&cmdline, DEADLINE);
    assert_eq!(a.code, Some(0), "{a:#?}");
    assert_eq!(b.code, Some(0), "{b:#?}");
    let map = parse_memory_map(&a.stdout);
    assert_eq!(map, parse_memory_map(&b.stdout));
    check_map(&map, &validated(&flags));
    let c = run(&file, DEADLINE);
    assert_eq!(c.code, Some(0), "{c:#?}");
    check_map(&parse_memory_map(&c.stdout), &validated(&file));
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn big_guest_map_skips_the_mmio_hole() {
    require_kvm();
    let args = [
        "run",
        "--guest-args",
        "mode=boot",
        "--memory",
        "5G",
        "--cma",
        "name=high,size=256M",
        "--cma",
        "name=low,size=64M,base=0x40000000",
    ];
    let run = run(&args, DEADLINE);
    assert_eq!(run.code, Some(0), "{run:#?}");
    let config = validated(&args);
    assert!(config.regions[0].base >= 1 << 32, "placed above the hole");
    check_map(&parse_memory_map(&run.stdout), &config);
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn guest_exceptions_end_the_run_with_a_diagnostic() {
    require_kvm();
    for (fault, name) in [
        ("ud", "exception 6 (invalid opcode)"),
        ("pf", "exception 14 (page fault)"),
        ("gp", "exception 13 (general protection)"),
        ("de", "exception 0 (divide error)"),
    ] {
        let args = format!("fault={fault}");
        let run = run(&["run", "--guest-args", &args], DEADLINE);
        assert_eq!(run.code, Some(3), "{fault}: {run:#?}");
        assert!(run.stdout.contains(name), "{fault}: {}", run.stdout);
        assert!(run.stdout.contains("rip=0x"), "{fault}: no registers");
        assert!(
            run.stderr.contains("guest exited with status 3"),
            "{}",
            run.stderr
        );
    }
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_triple_fault_is_reported_not_hung() {
    require_kvm();
    let run = run(&["run", "--guest-args", "fault=triple"], DEADLINE);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("triple fault"), "{}", run.stderr);
    assert!(run.stderr.contains("rip=0x"), "{}", run.stderr);
    assert!(run.elapsed < Duration::from_secs(60));
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn timeout_stops_a_guest_that_never_exits() {
    require_kvm();
    let run = run(
        &["run", "--guest-args", "mode=hang", "--timeout", "1"],
        DEADLINE,
    );
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("stopped after the timeout"),
        "{}",
        run.stderr
    );
}

/// Bad input: exit status 1, one line on stderr naming the value, and no guest output
/// (the VM never started).
#[test]
fn bad_input_never_starts_a_vm() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "run",
                "--cma",
                "name=a,size=32M,base=0x8000000",
                "--cma",
                "name=b,size=4M,base=0x9000000",
            ],
            "'a' and 'b' overlap",
        ),
        (
            &["run", "--cma", "name=a,size=32M,base=0x10000000"],
            "outside guest RAM",
        ),
        (
            &["run", "--cma", "name=a,size=32M,base=0x8000800"],
            "0x8000800 is not page aligned",
        ),
        (
            &["run", "--cma", "name=a,size=0x2000800"],
            "0x2000800 is not page aligned",
        ),
        (
            &["run", "--cma", "name=a,size=32M,align=3M"],
            "alignment 3M is not a power of two",
        ),
        (
            &["run", "--cma", "name=a,size=4M", "--cma", "name=a,size=4M"],
            "duplicate CMA region name 'a'",
        ),
        (
            &["run", "--cma", "name=a,size=4M", "--cma-map", "*=b"],
            "unknown CMA region 'b'",
        ),
        (&["run", "--cma", "name=a,size=0"], "'a' has size zero"),
        (&["run", "--cma", "name=a,size=1T"], "'1T'"),
        (
            &["run", "--cma", "name=a,size=2G"],
            "larger than guest memory",
        ),
        (
            &["run", "--memory", "100G"],
            "memory size 100G is out of range",
        ),
        (&["run", "--memory", "0"], "memory size 0 is out of range"),
        (&["run", "--cma-cmdline", "cma=a=4M@"], "invalid"),
        (
            &["run", "--config", "/nonexistent.toml"],
            "/nonexistent.toml",
        ),
        (
            &["run", "--kernel", "/nonexistent/guest"],
            "cannot open guest image /nonexistent/guest",
        ),
        (
            &["run", "--kernel", "Cargo.toml"],
            "malformed guest image Cargo.toml",
        ),
        (
            &["run", "--kvm", "/nonexistent/kvm"],
            "KVM is not available: /nonexistent/kvm does not exist",
        ),
        (
            &["run", "--kvm", "/dev/null"],
            "cannot use /dev/null as KVM",
        ),
        (&["run", "--bogus"], "unknown option '--bogus'"),
    ];
    for (args, message) in cases {
        let run = run(args, DEADLINE);
        assert_eq!(run.code, Some(1), "{args:?}: {run:#?}");
        assert!(
            run.stdout.is_empty(),
            "{args:?} started a guest: {}",
            run.stdout
        );
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {}", run.stderr);
        assert!(lines[0].starts_with("cma-vmm: "), "{}", lines[0]);
        assert!(
            lines[0].contains(message),
            "{args:?}: {:?} lacks {message:?}",
            lines[0]
        );
    }
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn boot_benchmark_reports_json() {
    require_kvm();
    let dir = std::env::temp_dir().join(format!("cma-boot-bench-{}", std::process::id()));
    let json = dir.join("boot.json");
    let run = run(
        &[
            "bench",
            "boot",
            "--runs",
            "3",
            "--json",
            json.to_str().expect("utf-8"),
        ],
        DEADLINE,
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let first = v["process_start_to_first_instruction_ms"]["median"]
        .as_f64()
        .expect("median");
    let ready = v["process_start_to_guest_ready_ms"]["median"]
        .as_f64()
        .expect("median");
    assert!(first > 0.0 && ready >= first, "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--exercise N --occupancy-svg FILE` draws every region before the exercise's final
/// frees: its grants, and the guest's workload pages in the rest of lent memory.
#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn the_exercise_draws_region_occupancy() {
    require_kvm();
    let svg = std::env::temp_dir().join(format!("cma-occupancy-{}.svg", std::process::id()));
    let path = svg.to_str().expect("utf-8");
    let r = run(
        &[
            "run",
            "--memory",
            "128M",
            "--cma",
            "name=video,size=16M",
            "--cma",
            "name=secure,size=4M,private",
            "--exercise",
            "4",
            "--occupancy-svg",
            path,
            "--quiet",
        ],
        DEADLINE,
    );
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert!(r.stdout.contains(&format!("wrote {path}")), "{}", r.stdout);
    let text = std::fs::read_to_string(&svg).expect("picture written");
    for what in [
        "video · lent · 16M",
        "secure · private · 4M",
        "exclusive pinned",
        "populated",
    ] {
        assert!(text.contains(what), "{what} missing");
    }
    // No progress line when stdout is not a terminal and the run is quiet.
    assert!(!r.stdout.contains('\r'), "{}", r.stdout);
    let _ = std::fs::remove_file(svg);
}
