//! The `cma-vmm` subcommands.
//!
//! Exit codes: the guest's own status when it exits (0 = success), [`EXIT_VMM_ERROR`] when
//! the VMM cannot start (bad input, no KVM, no image), [`EXIT_GUEST_CRASH`] when the guest
//! crashes or the run is stopped by `--timeout`, 128 + the signal's number when SIGINT or
//! SIGTERM stopped it (130, 143: a clean stop, see [`crate::stop`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::metrics::{METRICS_PERIOD, check_writable};
use crate::api::{
    ApiContext, ApiMetrics, ApiSocket, MetricsSource, MetricsWriter, Server, ServerConfig,
};
use crate::cli::{BenchArgs, BenchKind, Command, RunArgs, SoakArgs};
use crate::config::{ValidConfig, format_size};
use crate::machine::{RunOutcome, RunReport, RunningVmm, Vmm, VmmOptions};
use crate::progress::{Output, Progress};

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
        Command::Help(text) | Command::Version(text) => {
            print!("{text}");
            0
        }
        Command::Completions(shell) => {
            use std::io::Write;
            match std::io::stdout().write_all(&crate::cli::completions(shell)) {
                Ok(()) => 0,
                Err(e) => fail(format!("completions: {e}")),
            }
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
    type Job<'a> = Box<
        dyn Fn(
                usize,
                &mut Progress,
            ) -> Result<(serde_json::Value, Vec<crate::bench::svg::Chart>), String>
            + 'a,
    >;
    let jobs: [(BenchKind, &str, Job); 5] = [
        (
            BenchKind::Boot,
            "boot",
            Box::new(|runs, p| crate::bench::boot::run(&args.run, runs, p)),
        ),
        (
            BenchKind::Evict,
            "evict",
            Box::new(crate::bench::evict::run),
        ),
        (
            BenchKind::Latency,
            "latency",
            Box::new(|runs, p| crate::bench::latency::run(runs, (runs / 3).max(2), p)),
        ),
        (
            BenchKind::Memory,
            "memory",
            Box::new(|_, p| crate::bench::memory::run(p)),
        ),
        (
            BenchKind::Linux,
            "linux",
            Box::new(|runs, p| crate::bench::linux::run(&args.run, runs, args.qemu.as_ref(), p)),
        ),
    ];
    for (k, name, job) in jobs {
        // `all` is what runs on any KVM; the Linux benchmark needs one where Linux boots.
        let wanted = kind == k || (kind == BenchKind::All && k != BenchKind::Linux);
        if !wanted {
            continue;
        }
        let mut progress = Progress::new(name, "steps", 0, Output::detect(args.run.quiet));
        let result = job(runs, &mut progress);
        progress.finish();
        match result.and_then(|(json, charts)| {
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
    let line = |r: &crate::soak::SoakReport| {
        format!(
            "soak: {} cycles: {} allocs ({} no space, {} every candidate busy; {} busy retries), {} frees, {} pins/unpins, {} compactions ({} chunks moved), {} pages verified, {} integrity errors",
            r.cycles,
            r.allocs,
            r.allocs_no_space,
            r.allocs_busy,
            r.busy_retries,
            r.frees,
            r.pins,
            r.compactions,
            r.chunks_moved,
            r.pages_verified,
            r.integrity_errors
        )
    };
    let out = Output::detect(args.quiet);
    let mut live = Progress::new("soak", "cycles", args.cycles, out);
    let mut progress = |r: &crate::soak::SoakReport| {
        if r.cycles == 1 {
            // Count the rate from the first cycle, not from the guest's boot.
            live.phase("soak", "cycles", args.cycles);
        }
        if r.cycles.is_multiple_of(1000) && r.cycles > 0 && out != Output::Quiet {
            live.println(&line(r));
        }
        live.update(
            r.cycles,
            &format!(
                "{} allocs, {} frees, {} integrity errors",
                r.allocs, r.frees, r.integrity_errors
            ),
        );
    };
    let report = match crate::soak::run(args.cycles, args.seed, &mut progress) {
        Ok(r) => r,
        Err(e) => return fail(format!("soak: {e}")),
    };
    live.finish();
    println!("{}", line(&report));
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
        console_input: true,
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
    if config.guest == crate::config::GuestKind::Linux {
        let kernel = config.kernel.as_ref().map(|p| p.display().to_string());
        let initrd = config.initrd.as_ref().map(|p| p.display().to_string());
        println!(
            "cma-vmm:   Linux guest {}, initrd {}",
            kernel.unwrap_or_default(),
            initrd.as_deref().unwrap_or("none")
        );
        println!(
            "cma-vmm:   command line: {}",
            crate::boot::linux::cmdline(config)
        );
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
    // From here a signal stops the run cleanly; one during the boot ends it right after.
    crate::stop::install();
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
    serve(args, running, socket)
}

/// `--exercise N`: allocate and free N chunks, then let the guest check itself and exit.
fn exercise(args: &RunArgs, running: &RunningVmm) {
    if args.exercise == 0 {
        return;
    }
    let opts = crate::exercise::ExerciseOptions {
        occupancy_svg: args.occupancy_svg.clone(),
        progress: crate::progress::Output::detect(args.quiet),
        stop: &|| crate::stop::requested().is_some(),
    };
    match crate::exercise::run(running, args.exercise, &opts) {
        Ok(summary) if summary.stopped => {}
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

/// Why a run ended.
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

/// Run the VM until the guest exits, `--timeout`, or SIGINT/SIGTERM, with the control
/// API and the metrics file if asked for; `--exercise` first. Then stop in order: on a
/// signal, cancel evictions under way and free the chunks the API holds (zeroed, given
/// back); stop the server (the socket is removed) and the metrics writer (a last write);
/// print statistics if asked; stop the VM.
fn serve(args: &RunArgs, running: RunningVmm, socket: Option<ApiSocket>) -> i32 {
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let source = MetricsSource::new(&running, Arc::new(ApiMetrics::default()));
    let context = ApiContext::new(&running, source.clone());
    let done = std::sync::atomic::AtomicBool::new(false);
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
        // An allocation waits on the guest for up to --evict-timeout: a signal cancels it
        // at once rather than after the wait.
        let agent = running.grants().agent();
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if crate::stop::requested().is_some() {
                    agent.cancel_evictions();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        exercise(args, &running);
        let ending = wait_for_end(&running, deadline);
        if let Ending::Signal(num) = ending {
            agent.cancel_evictions();
            let (freed, errors) = context.free_all();
            eprintln!(
                "cma-vmm: {}: evictions cancelled, {freed} API chunk(s) freed and zeroed",
                crate::stop::name(num)
            );
            for e in errors {
                eprintln!("cma-vmm: cannot free {e}");
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        // Requests still waiting on the guest give up now rather than at their timeouts.
        agent.stop();
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
        Ending::Signal(num) => {
            eprintln!(
                "cma-vmm: stopped by {}: exit status {}",
                crate::stop::name(num),
                crate::stop::exit_code(num)
            );
            crate::stop::exit_code(num)
        }
        Ending::Guest | Ending::Timeout => finish(&report),
    }
}

/// Wait for the guest to stop, the deadline, or SIGINT/SIGTERM; then give the signals
/// their default disposition back, so that a second one ends the stop at once.
fn wait_for_end(running: &RunningVmm, deadline: Option<Instant>) -> Ending {
    let ending = loop {
        if let Some(num) = crate::stop::requested() {
            break Ending::Signal(num);
        }
        if running.outcome().is_some() {
            break Ending::Guest;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Ending::Timeout;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    crate::stop::uninstall();
    ending
}

fn report_outcome(outcome: &RunOutcome) {
    match outcome {
        RunOutcome::Exited(0) => {}
        RunOutcome::Exited(s) => eprintln!("cma-vmm: guest exited with status {s}"),
        RunOutcome::Crashed(diag) => eprintln!("cma-vmm: {diag}"),
        RunOutcome::Stopped => eprintln!("cma-vmm: guest stopped after the timeout"),
        RunOutcome::PoweredOff => eprintln!("cma-vmm: the guest powered off"),
        RunOutcome::Reset => eprintln!(
            "cma-vmm: the guest reset itself (a reboot, or a kernel panic with panic=-1): cma-vmm does not restart guests"
        ),
    }
}

fn exit_code(outcome: &RunOutcome) -> i32 {
    match outcome {
        RunOutcome::Exited(s) => (*s).min(255) as i32,
        RunOutcome::PoweredOff => 0,
        RunOutcome::Crashed(_) | RunOutcome::Stopped | RunOutcome::Reset => EXIT_GUEST_CRASH,
    }
}
