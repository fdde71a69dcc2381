//! The `cma-vmm` subcommands.
//!
//! Exit codes: the guest's own status when it exits (0 = success), [`EXIT_VMM_ERROR`] when
//! the VMM cannot start (bad input, no KVM, no image), [`EXIT_GUEST_CRASH`] when the guest
//! crashes or the run is stopped by `--timeout`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::cli::{BenchArgs, Command, RunArgs, USAGE};
use crate::config::{ValidConfig, format_size};
use crate::machine::{BootTimes, RunOutcome, Vmm, VmmOptions};

/// The VMM could not start: bad input, KVM, guest image.
pub const EXIT_VMM_ERROR: i32 = 1;
/// The guest crashed, or was stopped before it exited.
pub const EXIT_GUEST_CRASH: i32 = 2;

/// The whole command line tool: parse `args` (without the program name), run, return the
/// process exit code.
pub fn main(args: Vec<String>) -> i32 {
    match crate::cli::parse(args) {
        Ok(command) => run(command),
        Err(e) => fail(e),
    }
}

/// Run a parsed command; returns the process exit code.
pub fn run(command: Command) -> i32 {
    match command {
        Command::Help => {
            println!("{USAGE}");
            0
        }
        Command::Version => {
            println!("cma-vmm {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Run(args) => run_vm(&args),
        Command::BenchBoot(args) => bench_boot(&args),
    }
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("cma-vmm: {e}");
    EXIT_VMM_ERROR
}

fn options(args: &RunArgs) -> VmmOptions {
    VmmOptions {
        kvm_path: args.kvm_path.clone(),
        echo_console: !args.quiet,
        policy: args.policy,
        ..VmmOptions::default()
    }
}

/// Print the validated layout, one line per region.
fn print_layout(config: &ValidConfig) {
    println!(
        "cma-vmm: {} guest memory, {} vCPU(s), {} CMA region(s)",
        format_size(config.memory),
        config.vcpus,
        config.regions.len()
    );
    for r in &config.regions {
        println!(
            "cma-vmm:   region {} '{}' [{:#x}, {:#x}) {} {}",
            r.id,
            r.name,
            r.base,
            r.end(),
            format_size(r.size),
            if r.private { "private" } else { "lent" }
        );
    }
    for rule in &config.map {
        println!("cma-vmm:   map {rule}");
    }
}

fn run_vm(args: &RunArgs) -> i32 {
    let config = match args.config.validate() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if args.dry_run {
        print_layout(&config);
        return 0;
    }
    let vmm = match Vmm::new(config, &options(args)) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let running = match vmm.start() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if args.exercise > 0 {
        match crate::exercise::run(&running, args.exercise) {
            Ok(summary) if summary.integrity.is_clean() => {
                // The guest checks its own pages too, then exits with the verdict.
                let _ = running.grants().agent().shutdown_guest();
            }
            Ok(_) => eprintln!("cma-vmm: the exercise found integrity errors"),
            Err(e) => eprintln!("cma-vmm: exercise: {e}"),
        }
    }
    if args.stats {
        crate::exercise::print_stats(&running);
    }
    let report = running.wait(args.timeout);
    report_outcome(&report.outcome);
    // `bench boot` reads this line from its child VMMs.
    if std::env::var_os("CMA_VMM_BOOT_TIMES").is_some()
        && let Ok(json) = serde_json::to_string(&report.boot_times)
    {
        eprintln!("boot-times {json}");
    }
    exit_code(&report.outcome)
}

fn report_outcome(outcome: &RunOutcome) {
    match outcome {
        RunOutcome::Exited(0) => {}
        RunOutcome::Exited(s) => eprintln!("cma-vmm: guest exited with status {s}"),
        RunOutcome::Crashed(diag) => eprintln!("cma-vmm: {diag}"),
        RunOutcome::Stopped => eprintln!("cma-vmm: guest stopped after the timeout"),
    }
}

fn exit_code(outcome: &RunOutcome) -> i32 {
    match outcome {
        RunOutcome::Exited(s) => (*s).min(255) as i32,
        RunOutcome::Crashed(_) | RunOutcome::Stopped => EXIT_GUEST_CRASH,
    }
}

/// One boot, timed from before the child process was spawned.
struct BootSample {
    entered: f64,
    ready: f64,
}

/// Boot `cma-vmm run` `runs` times as a child process and report the median and p99 of
/// process start to first guest instruction and to guest-ready.
fn bench_boot(args: &BenchArgs) -> i32 {
    if let Err(e) = args.run.config.validate() {
        return fail(e);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot find own executable: {e}")),
    };
    let mut samples = Vec::new();
    for i in 0..args.runs {
        match boot_once(&exe, &args.run) {
            Ok(s) => samples.push(s),
            Err(e) => return fail(format!("boot {i}: {e}")),
        }
    }
    let entered: Vec<f64> = samples.iter().map(|s| s.entered).collect();
    let ready: Vec<f64> = samples.iter().map(|s| s.ready).collect();
    let summary = serde_json::json!({
        "benchmark": "boot",
        "runs": args.runs,
        "note": "wall-clock milliseconds on this host's (nested) KVM, from before the \
                 VMM process is spawned",
        "process_start_to_first_instruction_ms": stats(&entered),
        "process_start_to_guest_ready_ms": stats(&ready),
    });
    println!(
        "boot ({} runs): process start -> first guest instruction: median {:.2} ms, p99 {:.2} ms",
        args.runs,
        percentile(&entered, 50.0),
        percentile(&entered, 99.0)
    );
    println!(
        "boot ({} runs): process start -> guest ready (boot info parsed): median {:.2} ms, p99 {:.2} ms",
        args.runs,
        percentile(&ready, 50.0),
        percentile(&ready, 99.0)
    );
    let path = args
        .json
        .clone()
        .unwrap_or_else(|| Path::new("target/bench/boot.json").to_path_buf());
    match write_json(&path, &summary) {
        Ok(()) => {
            println!("wrote {}", path.display());
            0
        }
        Err(e) => fail(format!("cannot write {}: {e}", path.display())),
    }
}

fn boot_once(exe: &Path, run: &RunArgs) -> Result<BootSample, String> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run").arg("--quiet").arg("--timeout").arg("60");
    cmd.arg("--memory").arg(run.config.memory.to_string());
    if let Some(k) = &run.config.kernel {
        cmd.arg("--kernel").arg(k);
    }
    for r in &run.config.regions {
        let mut spec = format!("name={},size={}", r.name, r.size);
        if let Some(b) = r.base {
            spec += &format!(",base={b:#x}");
        }
        if let Some(a) = r.align {
            spec += &format!(",align={a}");
        }
        if r.private {
            spec += ",private";
        }
        cmd.arg("--cma").arg(spec);
    }
    // Boot to the memory map and exit, unless the caller asked for something else.
    let guest_args = if run.config.guest_args.is_empty() {
        "mode=boot"
    } else {
        run.config.guest_args.as_str()
    };
    cmd.arg("--guest-args").arg(guest_args);
    cmd.env("CMA_VMM_BOOT_TIMES", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = crate::devices::legacy::platform::monotonic_ns();
    let out = cmd.output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("boot-times "))
        .ok_or_else(|| format!("no boot times reported; stderr: {stderr}"))?;
    let times: BootTimes = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let ms = |t: Option<u64>| -> Result<f64, String> {
        t.map(|t| t.saturating_sub(t0) as f64 / 1e6)
            .ok_or_else(|| "milestone missing".to_string())
    };
    Ok(BootSample {
        entered: ms(times.entered)?,
        ready: ms(times.ready)?,
    })
}

/// The `p`th percentile of `v` (nearest rank).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn stats(v: &[f64]) -> serde_json::Value {
    serde_json::json!({
        "median": percentile(v, 50.0),
        "p99": percentile(v, 99.0),
        "min": percentile(v, 0.0),
        "max": percentile(v, 100.0),
        "samples": v,
    })
}

/// Write `value` as pretty JSON, creating parent directories.
pub fn write_json(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
}

/// Milliseconds of a duration, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
