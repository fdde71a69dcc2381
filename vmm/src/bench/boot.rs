//! Boot time: process start to the guest's first instruction and to guest-ready, measured
//! by spawning `cma-vmm run` and timing from before the spawn (CLOCK_MONOTONIC is shared
//! by parent and child; the child reports when the guest reached each milestone).

use std::path::Path;
use std::process::Stdio;

use serde_json::json;

use super::Stats;
use super::svg::{Chart, Series, Style};
use crate::cli::RunArgs;
use crate::devices::legacy::platform::monotonic_ns;
use crate::machine::BootTimes;
use crate::progress::Progress;

/// One boot: milliseconds to the first instruction, to the boot information parsed, and
/// to the guest's memory manager being up.
fn boot_once(exe: &Path, run: &RunArgs) -> Result<[f64; 3], String> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["run", "--quiet", "--timeout", "60", "--memory"])
        .arg(run.config.memory.to_string());
    if let Some(k) = &run.config.kernel {
        cmd.arg("--kernel").arg(k);
    }
    for r in &run.config.regions {
        let mut spec = format!(
            "name={},size={},order_per_bit={}",
            r.name, r.size, r.order_per_bit
        );
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
    if !run.config.map.is_empty() {
        let rules: Vec<String> = run.config.map.iter().map(ToString::to_string).collect();
        cmd.arg("--cma-map").arg(rules.join(";"));
    }
    for c in &run.config.capture {
        cmd.arg("--capture").arg(c);
    }
    // Boot to the memory map and exit, unless the caller asked for something else.
    let guest_args = match run.config.guest_args.as_str() {
        "" => "mode=boot",
        args => args,
    };
    cmd.arg("--guest-args").arg(guest_args);
    cmd.env("CMA_VMM_BOOT_TIMES", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = monotonic_ns();
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
    Ok([ms(times.entered)?, ms(times.ready)?, ms(times.mm_ready)?])
}

/// Boot `runs` times; the JSON report and its chart.
pub fn run(
    run: &RunArgs,
    runs: usize,
    progress: &mut Progress,
) -> Result<(serde_json::Value, Vec<Chart>), String> {
    progress.phase("bench boot", "boots", runs as u64);
    run.config.validate().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let (mut entered, mut ready, mut mm) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        progress.inc("");
        let [e, r, m] = boot_once(&exe, run).map_err(|e| format!("boot {i}: {e}"))?;
        entered.push(e);
        ready.push(r);
        mm.push(m);
    }
    progress.finish();
    let (e, r, m) = (Stats::of(&entered), Stats::of(&ready), Stats::of(&mm));
    println!(
        "boot ({runs} runs): process start -> first guest instruction: median {:.2} ms, p99 {:.2} ms",
        e.median, e.p99
    );
    println!(
        "boot ({runs} runs): process start -> guest ready (boot info parsed): median {:.2} ms, p99 {:.2} ms",
        r.median, r.p99
    );
    println!(
        "boot ({runs} runs): process start -> guest memory manager up (allocator, page tables): median {:.2} ms, p99 {:.2} ms",
        m.median, m.p99
    );
    let report = json!({
        "benchmark": "boot",
        "runs": runs,
        "note": "wall-clock milliseconds on this host's (nested) KVM, from before the VMM \
                 process is spawned",
        "process_start_to_first_instruction_ms": e,
        "process_start_to_guest_ready_ms": r,
        "process_start_to_guest_memory_manager_ms": m,
        "samples_first_instruction_ms": entered,
        "samples_guest_ready_ms": ready,
        "samples_guest_memory_manager_ms": mm,
    });
    let per_run = |name: &str, v: &[f64]| Series {
        name: name.into(),
        values: v.to_vec(),
    };
    let chart = Chart {
        title: "Boot time per run: process start to each guest milestone".into(),
        subtitle: format!(
            "bench boot: {runs} runs of cma-vmm run, {} guest memory, {} CMA region(s); nested KVM wall time",
            crate::config::format_size(run.config.memory),
            run.config.regions.len()
        ),
        x_label: "run".into(),
        categories: super::svg::run_numbers(runs),
        y_label: "time from process start (ms)".into(),
        log_y: false,
        style: Style::Lines,
        series: vec![
            per_run("first guest instruction", &entered),
            per_run("boot info parsed", &ready),
            per_run("memory manager up", &mm),
        ],
    };
    Ok((report, vec![chart]))
}
