//! The `cma-vmm` subcommands.
//!
//! Exit codes: the guest's own status when it exits (0 = success), [`EXIT_VMM_ERROR`] when
//! the VMM cannot start (bad input, no KVM, no image), [`EXIT_GUEST_CRASH`] when the guest
//! crashes or the run is stopped by `--timeout`. A run with `--api-sock` or
//! `--metrics-path` stopped by SIGINT or SIGTERM exits 0 (a clean, requested stop).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::api::metrics::{METRICS_PERIOD, check_writable};
use crate::api::{
    ApiContext, ApiMetrics, ApiSocket, MetricsSource, MetricsWriter, Server, ServerConfig,
};
use crate::cli::{BenchArgs, BenchKind, Command, RunArgs, SoakArgs, USAGE};
use crate::config::{ValidConfig, format_size};
use crate::machine::{BootTimes, RunOutcome, RunReport, RunningVmm, Vmm, VmmOptions};

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
        Command::Bench(kind, args) => bench(kind, &args),
        Command::Soak(args) => soak(&args),
        Command::Ctl(args) => crate::ctl::run(&args),
    }
}

/// Run one benchmark (or all) and write its JSON and charts.
fn bench(kind: BenchKind, args: &BenchArgs) -> i32 {
    let path = |name: &str| {
        args.json
            .clone()
            .filter(|_| kind != BenchKind::All)
            .unwrap_or_else(|| crate::bench::output_dir().join(format!("{name}.json")))
    };
    let runs = args.runs as usize;
    let mut code = 0;
    if matches!(kind, BenchKind::Boot | BenchKind::All) {
        code = code.max(bench_boot(args));
    }
    type Job = fn(usize) -> Result<(serde_json::Value, Vec<crate::bench::svg::Chart>), String>;
    let jobs: [(BenchKind, &str, Job); 3] = [
        (BenchKind::Evict, "evict", crate::bench::evict::run),
        (BenchKind::Latency, "latency", |runs| {
            crate::bench::latency::run(runs, (runs / 3).max(2))
        }),
        (BenchKind::Memory, "memory", |_| crate::bench::memory::run()),
    ];
    for (k, name, job) in jobs {
        if kind != k && kind != BenchKind::All {
            continue;
        }
        match job(runs).and_then(|(json, charts)| {
            crate::bench::write_report(&path(name), &json, &charts).map_err(|e| e.to_string())
        }) {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
            }
            Err(e) => code = fail(format!("bench {name}: {e}")),
        }
    }
    code
}

/// `cma-vmm soak`: print progress, the final report, and exit non-zero if anything broke.
fn soak(args: &SoakArgs) -> i32 {
    println!("soak: {} cycles, seed {:#x}", args.cycles, args.seed);
    let mut progress = |r: &crate::soak::SoakReport| {
        println!(
            "soak: {} cycles: {} allocs ({} no space, {} busy), {} frees, {} pins/unpins, {} compactions ({} chunks moved), {} pages verified, {} integrity errors",
            r.cycles,
            r.allocs,
            r.allocs_no_space,
            r.allocs_busy,
            r.frees,
            r.pins,
            r.compactions,
            r.chunks_moved,
            r.pages_verified,
            r.integrity_errors
        );
    };
    let report = match crate::soak::run(args.cycles, args.seed, &mut progress) {
        Ok(r) => r,
        Err(e) => return fail(format!("soak: {e}")),
    };
    progress(&report);
    println!(
        "soak: {} capture frames meanwhile; bitmaps empty at the end: {}; guest's own check: {:?}; {:.1} s",
        report.capture_frames, report.bitmaps_empty, report.guest_exit, report.seconds
    );
    for f in &report.failures {
        println!("soak: FAILURE {f}");
    }
    let path = args
        .json
        .clone()
        .unwrap_or_else(|| crate::bench::output_dir().join("soak.json"));
    if let Ok(json) = serde_json::to_value(&report)
        && crate::bench::write_report(&path, &json, &[]).is_ok()
    {
        println!("wrote {}", path.display());
    }
    if report.is_clean() {
        println!("soak: clean");
        0
    } else {
        EXIT_GUEST_CRASH
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
        prealloc: args.prealloc,
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
    // Like any bad input, a socket path in use or an unwritable metrics file stops us
    // before the VM is built.
    let socket = match args.api_sock.as_deref().map(ApiSocket::bind).transpose() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Some(Err(e)) = args.metrics_path.as_deref().map(check_writable) {
        return fail(e);
    }
    let vmm = match Vmm::new(config, &options(args)) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let running = match vmm.start() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if socket.is_some() || args.metrics_path.is_some() {
        return run_with_api(args, running, socket);
    }
    exercise(args, &running);
    if args.stats {
        crate::exercise::print_stats(&running);
    }
    let report = running.wait(args.timeout);
    finish(&report)
}

/// `--exercise N`: allocate and free N chunks, then let the guest check itself and exit.
fn exercise(args: &RunArgs, running: &RunningVmm) {
    if args.exercise == 0 {
        return;
    }
    match crate::exercise::run(running, args.exercise) {
        Ok(summary) if summary.integrity.is_clean() => {
            // The guest checks its own pages too, then exits with the verdict.
            let _ = running.grants().agent().shutdown_guest();
        }
        Ok(_) => eprintln!("cma-vmm: the exercise found integrity errors"),
        Err(e) => eprintln!("cma-vmm: exercise: {e}"),
    }
}

/// Report how the run ended; the exit code.
fn finish(report: &RunReport) -> i32 {
    report_outcome(&report.outcome);
    // `bench boot` reads this line from its child VMMs.
    if std::env::var_os("CMA_VMM_BOOT_TIMES").is_some()
        && let Ok(json) = serde_json::to_string(&report.boot_times)
    {
        eprintln!("boot-times {json}");
    }
    exit_code(&report.outcome)
}

/// The signal that asked us to stop (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(num, Ordering::SeqCst);
}

/// Why a run with the API ended.
enum Ending {
    /// The guest exited or crashed.
    Guest,
    /// `--timeout`.
    Timeout,
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The API server or the metrics writer could not start.
    Failed(String),
}

/// A run with the control API and/or the metrics file: serve until the guest exits,
/// `--timeout`, or SIGINT/SIGTERM; then stop the server (the socket is removed), write the
/// metrics a last time, and stop the VM.
fn run_with_api(args: &RunArgs, running: RunningVmm, socket: Option<ApiSocket>) -> i32 {
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let source = MetricsSource::new(&running, Arc::new(ApiMetrics::default()));
    let context = ApiContext::new(&running, source.clone());
    let ending = std::thread::scope(|scope| {
        let server = match socket
            .map(|sock| Server::spawn(scope, sock, &context, ServerConfig::default()))
            .transpose()
        {
            Ok(s) => s,
            Err(e) => return Ending::Failed(format!("cannot start the API server: {e}")),
        };
        let writer = args.metrics_path.clone().map(|path| {
            let source = source.clone();
            MetricsWriter::spawn(path, METRICS_PERIOD, move || source.collect())
        });
        let writer = match writer.transpose() {
            Ok(w) => w,
            Err(e) => {
                if let Some(server) = server {
                    server.stop();
                }
                return Ending::Failed(format!("cannot start the metrics writer: {e}"));
            }
        };
        exercise(args, &running);
        let ending = wait_for_end(&running, deadline);
        // Requests still waiting on the guest give up now rather than at their timeouts.
        running.grants().agent().stop();
        if let Some(server) = server {
            server.stop();
        }
        if let Some(writer) = writer {
            writer.stop();
        }
        ending
    });
    if args.stats {
        crate::exercise::print_stats(&running);
    }
    let report = running.wait(Some(Duration::ZERO));
    match ending {
        Ending::Failed(e) => fail(e),
        Ending::Signal(num) if report.outcome == RunOutcome::Stopped => {
            eprintln!("cma-vmm: stopped by signal {num}");
            0
        }
        Ending::Guest | Ending::Timeout | Ending::Signal(_) => finish(&report),
    }
}

/// Wait for the guest to stop, the deadline, or SIGINT/SIGTERM (handled from here on:
/// before, they end the process as usual).
fn wait_for_end(running: &RunningVmm, deadline: Option<Instant>) -> Ending {
    for num in [libc::SIGINT, libc::SIGTERM] {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(num, on_stop_signal) {
            eprintln!("cma-vmm: cannot handle signal {num}: {e}");
        }
    }
    let ending = loop {
        if running.outcome().is_some() {
            break Ending::Guest;
        }
        let num = STOP_SIGNAL.load(Ordering::SeqCst);
        if num != 0 {
            break Ending::Signal(num);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Ending::Timeout;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A second Ctrl-C during the shutdown ends the process at once, as usual.
    for num in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: restoring a signal's default disposition has no memory-safety
        // preconditions; no handler of ours runs afterwards.
        unsafe { libc::signal(num, libc::SIG_DFL) };
    }
    ending
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
