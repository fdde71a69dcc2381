//! The command line as a user meets it, through the binary: every command and subcommand
//! answers `--help` (exit 0, on stdout), `--version`, completion scripts, and mistakes are
//! one line on stderr with status 1. No KVM needed.

use std::time::Duration;

use cma_tests::{Run, run_vmm, vmm_bin};

fn run(args: &[&str]) -> Run {
    run_vmm(vmm_bin!(), args, Duration::from_secs(60))
}

#[test]
fn every_command_answers_help() {
    for (args, wanted) in [
        (&["--help"][..], "Commands:"),
        (&["run", "--help"][..], "--evict-timeout <MS>"),
        (&["bench", "--help"][..], "latency"),
        (&["bench", "latency", "--help"][..], "--runs <N>"),
        (&["bench", "linux", "--help"][..], "--qemu-initrd"),
        (&["soak", "--help"][..], "--cycles <N>"),
        (&["ctl", "--help"][..], "compact"),
        (&["ctl", "regions", "--help"][..], "--api-sock <PATH>"),
        (&["ctl", "alloc", "--help"][..], "--mode <MODE>"),
        (&["completions", "--help"][..], "fish"),
        (&["help", "soak"][..], "--seed"),
    ] {
        let r = run(args);
        assert_eq!(r.code, Some(0), "{args:?}: {r:#?}");
        assert!(
            r.stdout.contains(wanted),
            "{args:?} lacks {wanted:?}: {}",
            r.stdout
        );
        assert!(r.stderr.is_empty(), "{args:?}: {}", r.stderr);
    }
    let r = run(&["--version"]);
    assert_eq!(
        r.stdout.trim(),
        format!("cma-vmm {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_for_three_shells() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cma-vmm"),
        ("fish", "complete -c cma-vmm"),
    ] {
        let r = run(&["completions", shell]);
        assert_eq!(r.code, Some(0), "{shell}: {r:#?}");
        assert!(
            r.stdout.contains(marker),
            "{shell}: {}",
            &r.stdout[..200.min(r.stdout.len())]
        );
        assert!(r.stdout.contains("api-sock"), "{shell}");
    }
}

#[test]
fn mistakes_are_one_line() {
    for (args, message) in [
        (&["fly"][..], "cma-vmm: unknown command 'fly' (try --help)"),
        (
            &["bench", "fly"][..],
            "cma-vmm: unknown command 'bench fly' (try --help)",
        ),
        (&["bench"][..], "cma-vmm: 'bench' needs a command"),
        (
            &["soak", "--cycles"][..],
            "cma-vmm: option '--cycles' needs a value",
        ),
        (
            &["ctl", "regions"][..],
            "cma-vmm: option '--api-sock' is required",
        ),
        (&["ctl", "--api-sock", "/s", "free"][..], "free ID"),
        (&["completions", "tcsh"][..], "'tcsh'"),
    ] {
        let r = run(args);
        assert_eq!(r.code, Some(1), "{args:?}: {r:#?}");
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", r.stderr);
        assert!(
            lines[0].contains(message),
            "{args:?}: {:?} lacks {message:?}",
            lines[0]
        );
    }
}
