//! `cma-vmm ctl`: the control API's client. One command, one HTTP request on the socket;
//! the JSON answer is printed (pretty) on stdout and the exit status is 0 for 2xx, 1 with
//! the error line on stderr otherwise.
//!
//! ```text
//! cma-vmm ctl --api-sock PATH [--timeout SECS] COMMAND
//!   vm | wait | regions [NAME] | chunks | chunk ID | metrics | verify | shutdown
//!   alloc (--device NAME | --regions R1,R2) --size SIZE [--align SIZE] [--offset SIZE]
//!         [--mode exclusive|shared] [--unpinned]
//!   free ID | pin ID | unpin ID | compact REGION
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::CliError;
use crate::config::parse_size;
use crate::grant::GrantMode;

/// Longest response read (a region's bitmap for 64 GiB is 4 MiB of text).
const MAX_RESPONSE: u64 = 64 << 20;
/// How often `wait` asks again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// `cma-vmm ctl` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct CtlArgs {
    /// The VMM's API socket.
    pub api_sock: PathBuf,
    /// How long to wait for an answer (and for `wait`, for the guest).
    pub timeout: Duration,
    /// What to do.
    pub command: CtlCommand,
}

/// One ctl command.
#[derive(Debug, Clone, PartialEq)]
pub enum CtlCommand {
    /// `GET /vm`.
    Vm,
    /// Poll `GET /vm` until the guest has populated its lent memory.
    Wait,
    /// `GET /regions`, or `GET /regions/{name}` with its bitmap.
    Regions(Option<String>),
    /// `GET /chunks`.
    Chunks,
    /// `GET /chunks/{id}`.
    Chunk(String),
    /// `POST /chunks`.
    Alloc(Value),
    /// `DELETE /chunks/{id}`.
    Free(String),
    /// `PUT /chunks/{id}/pin`.
    Pin(String),
    /// `PUT /chunks/{id}/unpin`.
    Unpin(String),
    /// `POST /regions/{name}/compact`.
    Compact(String),
    /// `GET /metrics`.
    Metrics,
    /// `POST /vm/verify`.
    Verify,
    /// `POST /vm/shutdown`.
    Shutdown,
}

impl CtlCommand {
    /// Method, path and body of the command's request.
    pub fn request(&self) -> (&'static str, String, Option<Value>) {
        match self {
            CtlCommand::Vm | CtlCommand::Wait => ("GET", "/vm".into(), None),
            CtlCommand::Regions(None) => ("GET", "/regions".into(), None),
            CtlCommand::Regions(Some(n)) => ("GET", format!("/regions/{n}"), None),
            CtlCommand::Chunks => ("GET", "/chunks".into(), None),
            CtlCommand::Chunk(id) => ("GET", format!("/chunks/{id}"), None),
            CtlCommand::Alloc(body) => ("POST", "/chunks".into(), Some(body.clone())),
            CtlCommand::Free(id) => ("DELETE", format!("/chunks/{id}"), None),
            CtlCommand::Pin(id) => ("PUT", format!("/chunks/{id}/pin"), None),
            CtlCommand::Unpin(id) => ("PUT", format!("/chunks/{id}/unpin"), None),
            CtlCommand::Compact(r) => ("POST", format!("/regions/{r}/compact"), None),
            CtlCommand::Metrics => ("GET", "/metrics".into(), None),
            CtlCommand::Verify => ("POST", "/vm/verify".into(), None),
            CtlCommand::Shutdown => ("POST", "/vm/shutdown".into(), None),
        }
    }
}

fn bad_value(flag: &str, value: &str, reason: &str) -> CliError {
    CliError::BadValue {
        flag: flag.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A path segment: an id or a region name as typed, refused if it would change the path.
fn segment(what: &str, v: String) -> Result<String, CliError> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !b"/?#%".contains(&b));
    if ok {
        Ok(v)
    } else {
        Err(bad_value(what, &v, "not a chunk id or region name"))
    }
}

/// Parse `argv` after `ctl`.
pub fn parse(argv: Vec<String>) -> Result<CtlArgs, CliError> {
    let mut api_sock = None;
    let mut timeout = Duration::from_secs(60);
    let mut words = Vec::new();
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--api-sock" => {
                if api_sock.is_some() {
                    return Err(CliError::Repeated(a));
                }
                api_sock = Some(PathBuf::from(
                    it.next().ok_or_else(|| CliError::MissingValue(a.clone()))?,
                ));
            }
            "--timeout" => {
                let v = it.next().ok_or_else(|| CliError::MissingValue(a.clone()))?;
                let secs = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0 && *s <= 86400.0)
                    .ok_or_else(|| {
                        bad_value(&a, &v, "expected seconds, more than 0 and at most 86400")
                    })?;
                timeout = Duration::from_secs_f64(secs);
            }
            _ => words.push(a),
        }
    }
    let api_sock = api_sock.ok_or_else(|| CliError::Required("--api-sock".into()))?;
    let mut words = words.into_iter();
    let command = words
        .next()
        .ok_or_else(|| CliError::MissingValue("ctl".into()))?;
    let mut arg = |what: &str| {
        words
            .next()
            .ok_or_else(|| CliError::MissingValue(format!("{command} {what}")))
            .and_then(|v| segment(what, v))
    };
    let cmd = match command.as_str() {
        "vm" => CtlCommand::Vm,
        "wait" => CtlCommand::Wait,
        "chunks" => CtlCommand::Chunks,
        "metrics" => CtlCommand::Metrics,
        "verify" => CtlCommand::Verify,
        "shutdown" => CtlCommand::Shutdown,
        "chunk" => CtlCommand::Chunk(arg("ID")?),
        "free" => CtlCommand::Free(arg("ID")?),
        "pin" => CtlCommand::Pin(arg("ID")?),
        "unpin" => CtlCommand::Unpin(arg("ID")?),
        "compact" => CtlCommand::Compact(arg("REGION")?),
        "regions" => {
            let name = words.next().map(|n| segment("REGION", n)).transpose()?;
            CtlCommand::Regions(name)
        }
        "alloc" => CtlCommand::Alloc(parse_alloc(&mut words)?),
        other => return Err(CliError::UnknownCommand(format!("ctl {other}"))),
    };
    if let Some(extra) = words.next() {
        return Err(CliError::UnknownFlag(extra));
    }
    Ok(CtlArgs {
        api_sock,
        timeout,
        command: cmd,
    })
}

/// `alloc` flags into the `POST /chunks` body.
fn parse_alloc(words: &mut impl Iterator<Item = String>) -> Result<Value, CliError> {
    let mut body = serde_json::Map::new();
    while let Some(flag) = words.next() {
        let mut value = || {
            words
                .next()
                .ok_or_else(|| CliError::MissingValue(flag.clone()))
        };
        let (key, v) = match flag.as_str() {
            "--device" => ("device", json!(value()?)),
            "--regions" => {
                let v = value()?;
                let names: Vec<&str> = v.split(',').map(str::trim).collect();
                ("regions", json!(names))
            }
            "--size" => ("size", json!(parse_size(&value()?, "size")?)),
            "--align" => ("align", json!(parse_size(&value()?, "alignment")?)),
            "--offset" => ("offset", json!(parse_size(&value()?, "offset")?)),
            "--mode" => {
                let v = value()?;
                let mode = match v.as_str() {
                    "exclusive" => GrantMode::Exclusive,
                    "shared" => GrantMode::Shared,
                    _ => return Err(bad_value(&flag, &v, "expected 'exclusive' or 'shared'")),
                };
                ("mode", json!(mode))
            }
            "--unpinned" => ("pinned", json!(false)),
            _ => return Err(CliError::UnknownFlag(flag)),
        };
        if body.insert(key.to_string(), v).is_some() {
            return Err(CliError::Repeated(flag));
        }
    }
    if !body.contains_key("size") {
        return Err(CliError::Required("--size".into()));
    }
    match (body.contains_key("device"), body.contains_key("regions")) {
        (false, false) => return Err(CliError::Required("--device or --regions".into())),
        (true, true) => {
            return Err(bad_value("--device/--regions", "both", "give one of them"));
        }
        _ => {}
    }
    Ok(Value::Object(body))
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No server at the socket.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("API socket: {0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("malformed response: {0}")]
    BadResponse(String),
    /// The server answered with an error.
    #[error("{status} {}: {message}", crate::api::http::reason(*status))]
    Api {
        /// The status.
        status: u16,
        /// The `error` line of the body.
        message: String,
    },
    /// `wait` ran out of time, or the guest stopped first.
    #[error("{0}")]
    Wait(String),
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: String,
}

impl Reply {
    /// The body as JSON (`null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Send one request to the API at `sock` and read the whole response.
pub fn send(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Reply, CtlError> {
    let mut stream = UnixStream::connect(sock).map_err(|source| CtlError::Connect {
        path: sock.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    // A server that refuses early (413) closes without reading everything: still read
    // its answer.
    let sent = stream.write_all(&request);
    let mut raw = Vec::new();
    let read = (&mut stream).take(MAX_RESPONSE).read_to_end(&mut raw);
    if raw.is_empty() {
        read?;
        sent?;
        return Err(CtlError::BadResponse("empty response".into()));
    }
    parse_reply(&raw)
}

/// Parse a response: status line, headers, body (`Content-Length` bytes, or the rest).
pub fn parse_reply(raw: &[u8]) -> Result<Reply, CtlError> {
    let bad = |what: &str| CtlError::BadResponse(what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let rest = &raw[end + 4..];
    let body = match length {
        Some(n) if n <= rest.len() => &rest[..n],
        Some(_) => return Err(bad("body shorter than its Content-Length")),
        None => rest,
    };
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// Send `command`; the answer if it is 2xx, else the error.
pub fn call(args: &CtlArgs) -> Result<Reply, CtlError> {
    if args.command == CtlCommand::Wait {
        return wait_populated(&args.api_sock, args.timeout);
    }
    let (method, path, body) = args.command.request();
    let body = body.map(|b| b.to_string().into_bytes());
    let reply = send(&args.api_sock, method, &path, body.as_deref(), args.timeout)?;
    if (200..300).contains(&reply.status) {
        Ok(reply)
    } else {
        let message = reply.json()["error"]
            .as_str()
            .map_or_else(|| reply.body.trim().to_string(), str::to_string);
        Err(CtlError::Api {
            status: reply.status,
            message,
        })
    }
}

/// Poll `GET /vm` until the guest has populated its lent memory (waiting for the socket
/// to appear first), the guest stops, or `timeout` passes.
pub fn wait_populated(sock: &Path, timeout: Duration) -> Result<Reply, CtlError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match send(sock, "GET", "/vm", None, left) {
            Ok(r) if r.status == 200 => {
                let vm = r.json();
                if vm["milestones"]["populated"] == true {
                    return Ok(r);
                }
                if vm["state"] != "running" {
                    return Err(CtlError::Wait(format!(
                        "the guest stopped before populating its memory: {vm}"
                    )));
                }
                last = "the guest has not populated its memory yet".into();
            }
            Ok(r) => last = format!("status {}", r.status),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
    Err(CtlError::Wait(format!(
        "timed out after {:.1} s waiting for the guest ({last})",
        timeout.as_secs_f64()
    )))
}

/// Run `cma-vmm ctl`; the process exit code.
pub fn run(args: &CtlArgs) -> i32 {
    match call(args) {
        Ok(reply) => {
            // The server's pretty JSON, in its field order.
            println!("{}", reply.body.trim_end());
            0
        }
        Err(e) => {
            eprintln!("cma-vmm: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn cmd(s: &[&str]) -> CtlCommand {
        let mut v = vec!["--api-sock", "/tmp/s"];
        v.extend_from_slice(s);
        parse(argv(&v)).unwrap().command
    }

    fn err(s: &[&str]) -> String {
        parse(argv(s)).unwrap_err().to_string()
    }

    #[test]
    fn commands_map_to_requests() {
        assert_eq!(cmd(&["regions"]).request().1, "/regions");
        assert_eq!(cmd(&["regions", "a"]).request().1, "/regions/a");
        assert_eq!(
            cmd(&["free", "cma1:0:4"]).request(),
            ("DELETE", "/chunks/cma1:0:4".into(), None)
        );
        assert_eq!(cmd(&["pin", "x"]).request().0, "PUT");
        assert_eq!(cmd(&["unpin", "x"]).request().1, "/chunks/x/unpin");
        assert_eq!(cmd(&["compact", "a"]).request().1, "/regions/a/compact");
        assert_eq!(cmd(&["metrics"]).request().1, "/metrics");
        assert_eq!(cmd(&["chunks"]).request().1, "/chunks");
        let a = parse(argv(&[
            "alloc",
            "--size",
            "1M",
            "--api-sock",
            "/s",
            "--timeout",
            "2.5",
        ]));
        assert!(a.is_err(), "alloc needs a target");
        let a = parse(argv(&[
            "alloc",
            "--regions",
            "a,b",
            "--size",
            "1M",
            "--api-sock",
            "/s",
            "--timeout",
            "2.5",
            "--align",
            "64K",
            "--offset",
            "4K",
            "--mode",
            "shared",
            "--unpinned",
        ]))
        .unwrap();
        assert_eq!(a.api_sock, PathBuf::from("/s"));
        assert_eq!(a.timeout, Duration::from_millis(2500));
        let (m, p, body) = a.command.request();
        assert_eq!((m, p.as_str()), ("POST", "/chunks"));
        assert_eq!(
            body.unwrap(),
            json!({"regions": ["a", "b"], "size": 1 << 20, "align": 65536, "offset": 4096,
                   "mode": "shared", "pinned": false})
        );
        let CtlCommand::Alloc(body) = cmd(&["alloc", "--device", "cam", "--size", "4096"]) else {
            panic!()
        };
        assert_eq!(body, json!({"device": "cam", "size": 4096}));
    }

    #[test]
    fn bad_command_lines_name_the_problem() {
        assert_eq!(err(&["regions"]), "option '--api-sock' is required");
        assert!(err(&["--api-sock", "/s"]).contains("ctl"));
        assert!(err(&["--api-sock", "/s", "fly"]).contains("ctl fly"));
        assert!(err(&["--api-sock", "/s", "free"]).contains("free ID"));
        assert!(err(&["--api-sock", "/s", "free", "a/b"]).contains("'a/b'"));
        assert!(err(&["--api-sock", "/s", "free", "a", "b"]).contains("'b'"));
        assert!(err(&["--api-sock", "/s", "alloc", "--device", "d"]).contains("--size"));
        assert!(
            err(&[
                "--api-sock",
                "/s",
                "alloc",
                "--device",
                "d",
                "--size",
                "lots"
            ])
            .contains("'lots'")
        );
        assert!(
            err(&[
                "--api-sock",
                "/s",
                "alloc",
                "--device",
                "d",
                "--size",
                "1",
                "--size",
                "2"
            ])
            .contains("more than once")
        );
        assert!(
            err(&[
                "--api-sock",
                "/s",
                "alloc",
                "--device",
                "d",
                "--size",
                "1",
                "--mode",
                "x"
            ])
            .contains("exclusive")
        );
        assert!(err(&["--api-sock", "/s", "--timeout", "0", "vm"]).contains("'0'"));
    }

    #[test]
    fn replies_parse() {
        let r = parse_reply(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 15\r\n\r\n{\"error\": \"x\"}\nextra",
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"], "x");
        let r = parse_reply(b"HTTP/1.1 200 OK\r\n\r\n[1]").unwrap();
        assert_eq!(r.json(), json!([1]));
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n[1]").is_err());
        assert!(parse_reply(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
