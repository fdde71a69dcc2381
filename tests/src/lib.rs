//! Helpers for the end-to-end tests: KVM checks, spawning the VMM, parsing guest output.

pub mod api;
pub mod prometheus;
pub mod vm;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub mod fuzzing;

/// Panic with a clear message unless /dev/kvm can be opened. Tests that need KVM call
/// this first; with `CMA_SKIP_KVM_TESTS=1` they are compiled as ignored instead.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test needs KVM but /dev/kvm cannot be opened ({e}); \
             run on a host with KVM, or set CMA_SKIP_KVM_TESTS=1 to skip the KVM tests explicitly"
        );
    }
}

/// The VMM binary under test (a macro: cargo defines the path only for test crates).
#[macro_export]
macro_rules! vmm_bin {
    () => {
        std::path::Path::new(env!("CARGO_BIN_EXE_cma-vmm-under-test"))
    };
}

/// What a VMM run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` if killed by a signal or the test's deadline).
    pub code: Option<i32>,
    /// Standard output (the guest console).
    pub stdout: String,
    /// Standard error (the VMM's messages).
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// Run the VMM with `args`, killing it after `deadline` so that no test can hang.
pub fn run_vmm(bin: &Path, args: &[&str], deadline: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the VMM");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the VMM") {
            break Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// One `[mem A-B] kind ...` line of the guest's memory map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    /// First byte.
    pub base: u64,
    /// One past the last byte.
    pub end: u64,
    /// `ram`, `reserved` or `cma`.
    pub kind: String,
    /// For `cma`: name, id, and `lent`/`private`.
    pub region: Option<(String, u32, String)>,
}

/// Parse the memory map the guest printed.
pub fn parse_memory_map(console: &str) -> Vec<MapLine> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("cma-guest: [mem "))
        .map(|l| {
            let (range, rest) = l.split_once("] ").expect("map line");
            let (a, b) = range.split_once('-').expect("range");
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
            let words: Vec<&str> = rest.split_whitespace().collect();
            let region = (words[0] == "cma").then(|| {
                let id = words[2]
                    .strip_prefix("id=")
                    .expect("id")
                    .parse()
                    .expect("id");
                (words[1].to_string(), id, words[3].to_string())
            });
            MapLine {
                base: hex(a),
                end: hex(b) + 1,
                kind: words[0].to_string(),
                region,
            }
        })
        .collect()
}
