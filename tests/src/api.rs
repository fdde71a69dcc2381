//! Helpers for the control-API tests: a VMM running in the background with an API socket
//! and a metrics file, raw HTTP exchanges on its socket, and `cma-vmm ctl` runs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Run;

/// How long a guest may take to boot and populate its lent memory (nested KVM).
const POPULATE_TIMEOUT: Duration = Duration::from_secs(120);

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Header lines, as sent.
    pub head: String,
    /// The body parsed as JSON (`null` if it is not JSON).
    pub json: serde_json::Value,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The error line of an error answer.
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or_default()
    }
}

/// Send `raw` bytes on a new connection to `sock` and read the answer (written by hand,
/// not with the VMM's own client). Write errors are ignored: a server that refuses early
/// closes before reading everything, and its answer is what the test wants.
pub fn exchange(sock: &Path, raw: &[u8]) -> Answer {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    Answer {
        status,
        head: head.to_string(),
        json: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        body: body.to_string(),
    }
}

/// A well-formed request with an optional JSON body.
pub fn http(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Answer {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(b) = body {
        raw += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    raw += "\r\n";
    raw += body.unwrap_or_default();
    exchange(sock, raw.as_bytes())
}

/// A VMM started with `--api-sock` and `--metrics-path` in a directory of its own,
/// killed (if still running) and cleaned up on drop.
pub struct ApiVmm {
    bin: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
    /// The API socket.
    pub sock: PathBuf,
    /// The metrics file.
    pub metrics: PathBuf,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    started: Instant,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = p.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    })
}

impl ApiVmm {
    /// Start `bin run <args> --api-sock DIR/api.sock --metrics-path DIR/metrics.json`
    /// without waiting for anything.
    pub fn spawn(bin: &Path, name: &str, args: &[&str]) -> ApiVmm {
        let dir = std::env::temp_dir().join(format!("cma-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("api.sock");
        let metrics = dir.join("metrics.json");
        let mut child = Command::new(bin)
            .arg("run")
            .args(args)
            .arg("--api-sock")
            .arg(&sock)
            .arg("--metrics-path")
            .arg(&metrics)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the VMM");
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        ApiVmm {
            bin: bin.to_path_buf(),
            child: Some(child),
            dir,
            sock,
            metrics,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// Start, and wait until the guest has populated its lent memory.
    pub fn start(bin: &Path, name: &str, args: &[&str]) -> ApiVmm {
        crate::require_kvm();
        let mut vm = ApiVmm::spawn(bin, name, args);
        let until = Instant::now() + POPULATE_TIMEOUT;
        loop {
            match vmm::ctl::wait_populated(&vm.sock, Duration::from_millis(500)) {
                Ok(_) => return vm,
                Err(e) if Instant::now() > until => panic!("the guest did not populate: {e}"),
                Err(_) => {}
            }
            let exited = vm.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                let run = vm.finish(Duration::ZERO);
                panic!("the VMM exited before the guest populated: {run:#?}");
            }
        }
    }

    /// Run `cma-vmm ctl --api-sock <sock> <args>`.
    pub fn ctl(&self, args: &[&str]) -> Run {
        let sock = self.sock.to_str().expect("utf-8 path");
        let mut argv = vec!["ctl", "--api-sock", sock];
        argv.extend_from_slice(args);
        crate::run_vmm(&self.bin, &argv, Duration::from_secs(180))
    }

    /// Run `ctl`, expect success, and parse its output.
    pub fn ctl_ok(&self, args: &[&str]) -> serde_json::Value {
        let run = self.ctl(args);
        assert_eq!(run.code, Some(0), "ctl {args:?}: {run:#?}");
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {run:#?}"))
    }

    /// A well-formed raw HTTP request.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        http(&self.sock, method, path, body)
    }

    /// Raw bytes.
    pub fn exchange(&self, raw: &[u8]) -> Answer {
        exchange(&self.sock, raw)
    }

    /// The metrics file, parsed (`null` until it exists).
    pub fn metrics_file(&self) -> serde_json::Value {
        std::fs::read_to_string(&self.metrics)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Send `signal` (a name such as `TERM`) to the VMM.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Wait for the VMM to exit (killing it after `deadline`); what it printed. The
    /// directory stays until drop, for the test to look at the socket and metrics file.
    pub fn finish(&mut self, deadline: Duration) -> Run {
        let mut child = self.child.take().expect("running");
        let until = Instant::now() + deadline;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the VMM") {
                break Some(status);
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let join =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        Run {
            code: status.and_then(|s| s.code()),
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
