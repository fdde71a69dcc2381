//! `cma-vmm ctl`: the control API's client. One command, one HTTP request on the socket.
//! On a terminal the answer is a table (hex addresses, sizes with units, [`table`]); with
//! `--json`, or when stdout is a pipe or a file, it is the API's JSON as sent (pretty), so
//! scripts parse it. The exit status is 0 for 2xx, 1 with the error line on stderr
//! otherwise.
//!
//! The arguments are [`crate::cli`]'s ([`CtlArgs`]); this module only depends on them, never
//! the other way round.

pub mod table;

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{CtlArgs, CtlCommand};

/// Longest response read (a region's bitmap for 64 GiB is 4 MiB of text).
const MAX_RESPONSE: u64 = 64 << 20;
/// How often `wait` asks again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Method, path and body of `command`'s request.
pub fn request(command: &CtlCommand) -> (&'static str, String, Option<Value>) {
    match command {
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
        CtlCommand::MetricsPrometheus => ("GET", "/metrics/prometheus".into(), None),
        CtlCommand::Verify => ("POST", "/vm/verify".into(), None),
        CtlCommand::Shutdown => ("POST", "/vm/shutdown".into(), None),
    }
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
    let (method, path, body) = request(&args.command);
    let body = body.map(|b| b.to_string().into_bytes());
    successful(send(
        &args.api_sock,
        method,
        &path,
        body.as_deref(),
        args.timeout,
    )?)
}

/// A 2xx reply, or the API's error message.
fn successful(reply: Reply) -> Result<Reply, CtlError> {
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
            if let Some(path) = &args.svg
                && let Err(e) = draw_regions(args, &reply.json(), path)
            {
                eprintln!("cma-vmm: {e}");
                return 1;
            }
            // Scripts read JSON through pipes and files; people read tables.
            let table = (!args.json && std::io::stdout().is_terminal())
                .then(|| table::render(&args.command, &reply.json()))
                .flatten();
            match table {
                Some(text) => print!("{text}"),
                // The server's pretty JSON, in its field order.
                None => println!("{}", reply.body.trim_end()),
            }
            0
        }
        Err(e) => {
            eprintln!("cma-vmm: {e}");
            1
        }
    }
}

/// `ctl regions [NAME] --svg FILE`: the occupancy picture of the region in `answer` (or of
/// every region of a `GET /regions` answer, each fetched with its bitmap), with the chunk
/// list, written to `path`.
fn draw_regions(args: &CtlArgs, answer: &Value, path: &Path) -> Result<(), String> {
    let get = |path: &str| -> Result<Value, String> {
        send(&args.api_sock, "GET", path, None, args.timeout)
            .and_then(successful)
            .map(|r| r.json())
            .map_err(|e| format!("GET {path}: {e}"))
    };
    let regions = match answer.get("regions").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(|r| r["name"].as_str())
            .map(|name| get(&format!("/regions/{name}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![answer.clone()],
    };
    let chunks = get("/chunks")?;
    let maps = regions
        .iter()
        .map(|r| crate::occupancy::RegionMap::from_api(r, &chunks))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let svg = crate::occupancy::render(
        &maps,
        "CMA region occupancy, from the control API",
        &format!("cma-vmm ctl regions via {}", args.api_sock.display()),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("cma-vmm: wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};
    use serde_json::json;

    fn cmd(s: &[&str]) -> CtlCommand {
        let mut v = vec!["ctl", "--api-sock", "/tmp/s"];
        v.extend_from_slice(s);
        match parse(v.iter().map(|x| x.to_string()).collect()).unwrap() {
            Command::Ctl(c) => c.command,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_map_to_requests() {
        assert_eq!(request(&cmd(&["regions"])).1, "/regions");
        assert_eq!(request(&cmd(&["regions", "a"])).1, "/regions/a");
        assert_eq!(
            request(&cmd(&["free", "cma1:0:4"])),
            ("DELETE", "/chunks/cma1:0:4".into(), None)
        );
        assert_eq!(request(&cmd(&["pin", "x"])).0, "PUT");
        assert_eq!(request(&cmd(&["unpin", "x"])).1, "/chunks/x/unpin");
        assert_eq!(request(&cmd(&["compact", "a"])).1, "/regions/a/compact");
        assert_eq!(request(&cmd(&["metrics"])).1, "/metrics");
        assert_eq!(
            request(&cmd(&["metrics", "--prometheus"])).1,
            "/metrics/prometheus"
        );
        assert_eq!(request(&cmd(&["chunks"])).1, "/chunks");
        let (m, p, body) = request(&cmd(&["alloc", "--device", "cam", "--size", "4096"]));
        assert_eq!((m, p.as_str()), ("POST", "/chunks"));
        assert_eq!(body, Some(json!({"device": "cam", "size": 4096})));
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
