//! `cma-vmm bench linux`: taking populated memory back from a stock Linux guest, three
//! ways, with the same guest kernel and in the same run:
//!
//! 1. **ours**: an allocation of a populated 4 MiB / 64 MiB range of a lent region, end to
//!    end (bits marked → Evict → the guest's agent module runs `alloc_contig_range()` →
//!    Done → granted), shared (the range stays mapped in the guest) and exclusive (its
//!    KVM slot is removed too). All shared samples come first: on x86 KVM a memory slot
//!    change drops the guest's whole nested page table, and the faults that rebuild it
//!    fall on whatever the guest does next, so exclusive samples also pay for the
//!    previous exclusive grant's slot change, as back-to-back exclusive grants do;
//! 2. **Linux's own**: `alloc_contig_range()` on a same-sized populated ZONE_MOVABLE range
//!    of another lent region, timed inside the guest by the agent module (its `bench`
//!    knob), with no VMM involved;
//! 3. **virtio-mem** (with `--qemu`): the same kernel under QEMU with a virtio-mem device
//!    whose memory the guest has populated; unplugging the same amount of memory, from the
//!    `requested-size` change until the device reports the new `size`.
//!
//! It needs a KVM on which Linux boots (here: inside L1, `tests/linux/run.sh --bench`):
//! absolute times are emulated-SVM wall times; the ratios are the result.
//!
//! The guest side is the L2 init of `guest-linux/` in `cmatest.mode=bench` (it fills the
//! lent memory, runs the in-guest samples, prints `cma-bench: contig ...` lines, then
//! reports lent memory populated) or `cmatest.mode=virtio-mem` (it fills the virtio-mem
//! memory and prints `cma-bench: populated`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use protocol::layout::{PAGE_SIZE, PROGRESS_POPULATED};
use serde_json::json;

use super::svg::{Chart, Series, Style};
use super::{Stats, ms};
use crate::cli::RunArgs;
use crate::config::{RegionConfig, VmConfig, format_size};
use crate::grant::{GrantMode, GrantPolicy, Target};
use crate::machine::{RunOutcome, Vmm, VmmOptions};
use crate::progress::Progress;
use cma::AllocRequest;

/// Range sizes measured.
pub const SIZES: [u64; 2] = [4 << 20, 64 << 20];
/// The lent region of our device's samples: room for the samples of both modes.
const HOST_REGION_SIZE: u64 = 512 << 20;
/// The lent region of the in-guest samples (and the virtio-mem device's memory).
const REGION_SIZE: u64 = 256 << 20;
/// Guest memory: the two lent regions and 1 GiB of ordinary RAM to migrate into (every
/// series' pages go there: 3 × 220 MiB).
const MEMORY: u64 = HOST_REGION_SIZE + REGION_SIZE + (1 << 30);
/// How much the guest writes to tmpfs: nearly all of the lent memory. (Writing and
/// checksumming it is most of the run: about 7 MB/s in L2 under emulated SVM.)
const FILL: u64 = HOST_REGION_SIZE + REGION_SIZE - (32 << 20);
/// Most samples of 4 MiB per series; every sample takes a fresh populated range.
pub const MAX_RUNS: usize = 7;
/// Most samples of 64 MiB per series: 7 × 4 MiB + 3 × 64 MiB = 220 MiB per series fits a
/// 256 MiB region (and twice in the 512 MiB one, for both modes).
const MAX_LARGE_RUNS: usize = 3;

/// The sizes of one series' samples, in the order they are taken.
fn plan(runs: usize) -> Vec<u64> {
    let runs = runs.clamp(1, MAX_RUNS);
    let mut sizes = vec![SIZES[0]; runs];
    sizes.extend(std::iter::repeat_n(SIZES[1], runs.min(MAX_LARGE_RUNS)));
    sizes
}

/// The QMP port of the virtio-mem guest (on loopback).
const QMP_PORT: u16 = 4445;

/// One sample: how long taking `size` bytes back took, and how much of it was in use.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Sample {
    size: u64,
    ms: f64,
    /// Pages that held data and had to move (for virtio-mem: not known, 0).
    pages_migrated: u64,
}

/// The four series, by size.
#[derive(Debug, Default)]
struct Results {
    shared: Vec<Sample>,
    exclusive: Vec<Sample>,
    contig: Vec<Sample>,
    virtio_mem: Vec<Sample>,
}

fn of_size(samples: &[Sample], size: u64) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.size == size)
        .map(|s| s.ms)
        .collect()
}

fn populated(samples: &[Sample], size: u64) -> Stats {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.size == size)
        .map(|s| (s.pages_migrated * PAGE_SIZE) as f64 / size as f64)
        .collect();
    Stats::of(&v)
}

/// Parse `cma-bench: contig size=S ns=N ret=R in_use=P migrated=M` lines of the console.
fn contig_samples(console: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for line in console.lines() {
        let Some(rest) = line.trim().strip_prefix("cma-bench: contig ") else {
            continue;
        };
        let field = |key: &str| -> Option<i64> {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        let (Some(size), Some(ns), Some(ret)) = (field("size"), field("ns"), field("ret")) else {
            return Err(format!("malformed guest bench line: {line}"));
        };
        if ret != 0 {
            return Err(format!(
                "the guest's alloc_contig_range failed ({ret}): {line}"
            ));
        }
        out.push(Sample {
            size: size as u64,
            ms: ns as f64 / 1e6,
            pages_migrated: field("migrated").unwrap_or(0).max(0) as u64,
        });
    }
    Ok(out)
}

/// Our device and the in-guest alloc_contig_range, in one cma-vmm guest.
fn ours_and_contig(
    run: &RunArgs,
    runs: usize,
    r: &mut Results,
    progress: &mut Progress,
) -> Result<(), String> {
    let sizes: Vec<String> = plan(runs).iter().map(|s| s.to_string()).collect();
    let mut config = VmConfig {
        memory: MEMORY,
        vcpus: 2,
        kernel: run.config.kernel.clone(),
        initrd: run.config.initrd.clone(),
        guest_args: format!(
            "cmatest.mode=bench cmatest.fill={FILL} cmatest.warm=1 cmatest.warm_keep=192M cmatest.bench=guest cmatest.bench_sizes={} cmatest.bench_runs=1 {}",
            sizes.join(","),
            run.config.guest_args
        ),
        regions: vec![
            RegionConfig::new("host", HOST_REGION_SIZE),
            RegionConfig::new("guest", REGION_SIZE),
        ],
        ..VmConfig::default()
    };
    config.map = Vec::new();
    let config = config.validate().map_err(|e| e.to_string())?;
    let options = VmmOptions {
        kvm_path: run.kvm_path.clone(),
        // The console is kept (its tail goes into any error), not echoed: the progress
        // line says what happens.
        echo_console: false,
        policy: GrantPolicy {
            evict_timeout: Duration::from_secs(120),
            return_timeout: Duration::from_secs(120),
            ..GrantPolicy::default()
        },
        ..VmmOptions::default()
    };
    let vm = Vmm::new(config, &options)
        .and_then(Vmm::start)
        .map_err(|e| e.to_string())?;
    progress.phase(
        "bench linux: the guest fills its lent memory (emulated: minutes)",
        "steps",
        0,
    );
    // In short steps, so that the progress line's clock moves.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut populated = false;
    while !populated && vm.outcome().is_none() && Instant::now() < deadline {
        populated = vm.wait_milestone(PROGRESS_POPULATED, Duration::from_secs(1));
        progress.update(0, "");
    }
    if !populated {
        let why = format!(
            "the Linux guest did not report its lent memory populated: {:?}; the end of its console:\n{}",
            vm.outcome(),
            last_lines(&vm.console().text(), 120)
        );
        vm.shutdown();
        return Err(why);
    }
    r.contig = contig_samples(&vm.console().text())?;
    let g = vm.grants();
    // Every grant is kept until both modes are done: a freed range is no longer populated.
    let mut live = Vec::new();
    progress.phase(
        "bench linux: our device",
        "samples",
        2 * plan(runs).len() as u64,
    );
    for mode in [GrantMode::Shared, GrantMode::Exclusive] {
        let samples = match mode {
            GrantMode::Shared => &mut r.shared,
            GrantMode::Exclusive => &mut r.exclusive,
        };
        for size in plan(runs) {
            let (grant, report) = g
                .alloc(
                    &Target::Regions("host".into()),
                    &AllocRequest::new(size).aligned(size, 0),
                    mode,
                )
                .map_err(|e| format!("{} {mode:?}: {e}", format_size(size)))?;
            samples.push(Sample {
                size,
                ms: ms(report.elapsed),
                pages_migrated: report.pages_migrated,
            });
            live.push(grant);
            progress.inc(&format!("{mode:?} {}", format_size(size)));
        }
    }
    for grant in live {
        g.free(grant.id()).map_err(|e| e.to_string())?;
    }
    let _ = g.agent().shutdown_guest();
    match vm.wait(Some(Duration::from_secs(300))).outcome {
        RunOutcome::Exited(0) | RunOutcome::PoweredOff => Ok(()),
        other => Err(format!("the Linux guest ended badly: {other:?}")),
    }
}

/// The last `n` lines of `text`, for diagnostics.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A QMP connection to QEMU on loopback.
struct Qmp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Qmp {
    fn connect(port: u16, deadline: Instant) -> Result<Self, String> {
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(format!("QMP: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        qmp.read_reply()?; // the greeting
        qmp.execute(json!({"execute": "qmp_capabilities"}))?;
        Ok(qmp)
    }

    fn read_reply(&mut self) -> Result<serde_json::Value, String> {
        loop {
            let mut line = String::new();
            if self
                .reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("QMP connection closed".into());
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            // Asynchronous events interleave with replies.
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    fn execute(&mut self, cmd: serde_json::Value) -> Result<serde_json::Value, String> {
        writeln!(self.writer, "{cmd}").map_err(|e| e.to_string())?;
        let reply = self.read_reply()?;
        match reply.get("return") {
            Some(v) => Ok(v.clone()),
            None => Err(format!("QMP {cmd}: {reply}")),
        }
    }

    fn size(&mut self) -> Result<u64, String> {
        self.execute(json!({"execute": "qom-get",
            "arguments": {"path": "/machine/peripheral/vmem0", "property": "size"}}))?
            .as_u64()
            .ok_or_else(|| "virtio-mem size is not a number".into())
    }

    fn request(&mut self, size: u64) -> Result<(), String> {
        self.execute(json!({"execute": "qom-set",
            "arguments": {"path": "/machine/peripheral/vmem0", "property": "requested-size",
                          "value": size}}))
            .map(|_| ())
    }
}

/// Kill QEMU when the measurement ends, however it ends.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// virtio-mem unplug of populated memory, the same kernel under QEMU.
fn virtio_mem(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    runs: usize,
    r: &mut Results,
    progress: &mut Progress,
) -> Result<(), String> {
    let plugged = REGION_SIZE;
    let bios_dir = ["/usr/share/seabios", "/usr/share/qemu"]
        .into_iter()
        .find(|d| Path::new(d).join("bios-256k.bin").exists())
        .unwrap_or("/usr/share/qemu");
    let append = format!(
        "console=ttyS0 reboot=k panic=-1 memhp_default_state=online_movable cmatest.mode=virtio-mem cmatest.vmem={plugged} cmatest.fill={}",
        // More than plugged: movable allocations fill ZONE_MOVABLE first, so every block
        // virtio-mem unplugs is populated, as our ranges are.
        plugged + (64 << 20)
    );
    let child = Command::new(qemu)
        .args([
            "-enable-kvm",
            "-cpu",
            "host",
            "-smp",
            "2",
            "-m",
            "1G,maxmem=2G",
        ])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(["-net", "none", "-L", bios_dir])
        .arg("-object")
        .arg(format!("memory-backend-ram,id=vmem-mem,size={plugged}"))
        .arg("-device")
        .arg(format!(
            "virtio-mem-pci,id=vmem0,memdev=vmem-mem,requested-size={plugged}"
        ))
        .arg("-qmp")
        .arg(format!("tcp:127.0.0.1:{QMP_PORT},server=on,wait=off"))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(&append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", qemu.display()))?;
    let mut guard = QemuGuard(child);
    let stdout = guard.0.stdout.take().ok_or("no QEMU stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).map_or(0, |n| n) > 0 {
            let text = String::from_utf8_lossy(&line).into_owned();
            if tx.send(text).is_err() {
                return;
            }
            line.clear();
        }
    });
    progress.phase(
        "bench linux: the virtio-mem guest fills its memory (emulated: minutes)",
        "steps",
        0,
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut console = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        progress.update(0, "");
        // In short steps, so that the progress line's clock moves.
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
            Ok(l) if l.contains("cma-bench: populated") => break,
            Ok(l) if l.contains("cma-bench: error") => return Err(l.trim().to_string()),
            Ok(l) => console.push_str(&l),
            Err(e) => {
                let ended = match guard.0.try_wait() {
                    Ok(Some(status)) => format!("QEMU exited ({status})"),
                    _ if e == mpsc::RecvTimeoutError::Timeout => "timed out".to_string(),
                    _ => "QEMU closed its output".to_string(),
                };
                return Err(format!(
                    "the virtio-mem guest did not populate its memory: {ended}; the end of its console:\n{}",
                    last_lines(&console, 120)
                ));
            }
        }
    }
    let mut qmp = Qmp::connect(QMP_PORT, deadline)?;
    let mut requested = qmp.size()?;
    if requested != plugged {
        return Err(format!(
            "virtio-mem plugged {requested} bytes, expected {plugged}"
        ));
    }
    progress.phase(
        "bench linux: virtio-mem unplug",
        "samples",
        plan(runs).len() as u64,
    );
    for size in plan(runs) {
        requested -= size;
        let t = Instant::now();
        qmp.request(requested)?;
        while qmp.size()? > requested {
            if t.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "virtio-mem did not unplug {} in 120 s",
                    format_size(size)
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        r.virtio_mem.push(Sample {
            size,
            ms: ms(t.elapsed()),
            pages_migrated: 0,
        });
        progress.inc(&format_size(size));
    }
    drop(qmp);
    drop(guard);
    Ok(())
}

fn summary(name: &str, samples: &[Sample], size: u64) -> serde_json::Value {
    json!({
        "series": name,
        "size": size,
        "ms_emulated": Stats::of(&of_size(samples, size)),
        "fraction_populated": populated(samples, size),
        "samples": samples.iter().filter(|s| s.size == size).collect::<Vec<_>>(),
    })
}

/// Run the benchmark: our device and the guest's alloc_contig_range in one guest, then
/// virtio-mem under `qemu` if given. The JSON report and a chart.
pub fn run(
    run: &RunArgs,
    runs: usize,
    qemu: Option<&(PathBuf, PathBuf)>,
    progress: &mut Progress,
) -> Result<(serde_json::Value, Vec<Chart>), String> {
    let kernel = run.config.kernel.clone().ok_or(
        "bench linux needs --kernel BZIMAGE and --initrd FILE (the guest-linux initramfs)",
    )?;
    if run.config.initrd.is_none() {
        return Err("bench linux needs --initrd FILE (the guest-linux initramfs)".into());
    }
    let mut r = Results::default();
    ours_and_contig(run, runs, &mut r, progress)?;
    if let Some((qemu, initrd)) = qemu {
        virtio_mem(qemu, &kernel, initrd, runs, &mut r, progress)?;
    }
    progress.finish();
    println!("taking back populated guest memory (emulated-SVM wall time, median / p99 ms):");
    let mut rows = Vec::new();
    for size in SIZES {
        let shared = Stats::of(&of_size(&r.shared, size));
        let exclusive = Stats::of(&of_size(&r.exclusive, size));
        let contig = Stats::of(&of_size(&r.contig, size));
        let vmem = Stats::of(&of_size(&r.virtio_mem, size));
        let line = |name: &str, s: &Stats| {
            println!(
                "  {:>4}  {name:<34} {:>8.1} / {:>8.1}",
                format_size(size),
                s.median,
                s.p99
            );
        };
        line("ours, shared grant", &shared);
        line("ours, exclusive grant", &exclusive);
        line("guest alloc_contig_range", &contig);
        if !r.virtio_mem.is_empty() {
            line("virtio-mem unplug (QEMU)", &vmem);
        }
        let over = |ours: &Stats, other: &Stats| ours.median / other.median;
        let vs_vmem = |ours: &Stats| (!r.virtio_mem.is_empty()).then(|| over(ours, &vmem));
        let shown = |x: Option<f64>| x.map_or(String::new(), |x| format!(", {x:.2}x virtio-mem"));
        println!(
            "        shared {:.2}x alloc_contig_range{}; exclusive {:.2}x alloc_contig_range{}   (populated: ours {:.0}%, in-guest {:.0}%)",
            over(&shared, &contig),
            shown(vs_vmem(&shared)),
            over(&exclusive, &contig),
            shown(vs_vmem(&exclusive)),
            populated(&r.exclusive, size).median * 100.0,
            populated(&r.contig, size).median * 100.0,
        );
        rows.push(json!({
            "size": size,
            "shared_over_alloc_contig_range": over(&shared, &contig),
            "exclusive_over_alloc_contig_range": over(&exclusive, &contig),
            "shared_over_virtio_mem": vs_vmem(&shared),
            "exclusive_over_virtio_mem": vs_vmem(&exclusive),
            "series": [
                summary("ours_shared", &r.shared, size),
                summary("ours_exclusive", &r.exclusive, size),
                summary("alloc_contig_range", &r.contig, size),
                summary("virtio_mem_unplug", &r.virtio_mem, size),
            ],
        }));
    }
    let bars = |name: &str, samples: &[Sample]| Series {
        name: name.into(),
        values: SIZES
            .iter()
            .map(|&s| Stats::of(&of_size(samples, s)).median)
            .collect(),
    };
    let mut series = vec![
        bars("ours, shared grant", &r.shared),
        bars("ours, exclusive grant", &r.exclusive),
        bars("guest alloc_contig_range", &r.contig),
    ];
    if !r.virtio_mem.is_empty() {
        series.push(bars("virtio-mem unplug (QEMU)", &r.virtio_mem));
    }
    let chart = Chart {
        title: "Taking populated memory back from a Linux guest: ours vs the guest's own".into(),
        subtitle: format!(
            "bench linux: median of {} (4 MiB) and {} (64 MiB) samples; emulated SVM (QEMU TCG L1, KVM L2) wall time",
            plan(runs).iter().filter(|&&s| s == SIZES[0]).count(),
            plan(runs).iter().filter(|&&s| s == SIZES[1]).count()
        ),
        x_label: "range size".into(),
        categories: super::size_categories(&SIZES),
        y_label: "time to take the range (ms, log scale)".into(),
        log_y: true,
        style: Style::Bars,
        series,
    };
    let report = json!({
        "benchmark": "linux",
        "note": "wall times under emulated SVM (QEMU TCG L1, KVM L2): labelled emulated, not hardware figures; compare the ratios",
        "runs_per_size": {"4M": plan(runs).iter().filter(|&&s| s == SIZES[0]).count(),
                          "64M": plan(runs).iter().filter(|&&s| s == SIZES[1]).count()},
        "order": "in one guest: the in-guest alloc_contig_range samples, then ours shared, then ours exclusive; then virtio-mem in a QEMU guest",
        "guest_memory": MEMORY,
        "fill": FILL,
        "sizes": rows,
        "virtio_mem_measured": !r.virtio_mem.is_empty(),
    });
    Ok((report, vec![chart]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_lines_parse_and_failures_are_errors() {
        let console = "noise\ncma-bench: contig size=4194304 ns=25000000 ret=0 in_use=1000 migrated=1010\n\
                       cma-bench: contig size=67108864 ns=569000000 ret=0 in_use=16000 migrated=16384\n";
        let s = contig_samples(console).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].size, 4 << 20);
        assert!((s[1].ms - 569.0).abs() < 1e-9);
        assert_eq!(s[1].pages_migrated, 16384);
        assert!((populated(&s, 64 << 20).median - 1.0).abs() < 1e-9);
        assert!(contig_samples("cma-bench: contig size=4194304 ns=5 ret=-16").is_err());
        assert!(contig_samples("cma-bench: contig size=x").is_err());
    }
}
