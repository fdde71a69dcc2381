//! A small, strict HTTP/1.1 server side: read one request, write one response.
//!
//! What is accepted: `METHOD SP /path SP HTTP/1.1` (or `HTTP/1.0`), header lines
//! `Name: value` ended by CRLF, an empty line, and a body of exactly `Content-Length` bytes
//! (none without the header). What is refused, with the status a client can act on:
//!
//! | request                                         | status |
//! |-------------------------------------------------|--------|
//! | request line or headers not as above            | 400    |
//! | request line and headers over [`Limits::head`]  | 431    |
//! | more than [`MAX_HEADERS`] header lines          | 431    |
//! | `Content-Length` over [`Limits::body`]          | 413    |
//! | `Transfer-Encoding` (chunked bodies)            | 501    |
//! | an HTTP version other than 1.0 or 1.1           | 505    |
//! | nothing complete before the read deadline       | 408    |
//!
//! One request per connection: every response says `Connection: close`. Reads go through
//! any [`Read`]; the server gives it a deadline, the tests give it slow or broken readers.

use std::io::{self, Read, Write};

/// Most header lines in a request.
pub const MAX_HEADERS: usize = 64;
/// Longest method token.
const MAX_METHOD: usize = 16;

/// Size limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line and headers, with their line ends, in bytes.
    pub head: usize,
    /// Body bytes.
    pub body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head: 8 << 10,
            body: 16 << 10,
        }
    }
}

/// The methods the API knows. Any other well-formed method token is kept as
/// [`Method::Other`], so the router can answer 405 with the methods it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// POST.
    Post,
    /// DELETE.
    Delete,
    /// PATCH.
    Patch,
    /// Any other method token.
    Other(String),
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        if s.is_empty() || s.len() > MAX_METHOD || !s.bytes().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(match s {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        })
    }

    /// The method as it appears on the request line.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target: starts with `/`, visible ASCII.
    pub path: String,
    /// Header lines, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// `Content-Length`, when the request had one.
    pub content_length: Option<usize>,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The client closed the connection before sending anything: nothing to answer.
    #[error("connection closed before a request")]
    Closed,
    /// The connection failed: nothing to answer.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The request did not arrive before the deadline.
    #[error("request not received in time")]
    Timeout,
    /// The request is malformed, or ended early.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request line and headers are too long, or too many.
    #[error("request headers too large (at most {0} bytes and {MAX_HEADERS} lines)")]
    HeadTooLarge(usize),
    /// The body is larger than the limit.
    #[error("request body of {size} bytes is larger than {limit} bytes")]
    BodyTooLarge {
        /// Content-Length.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// A feature this server does not implement (chunked bodies).
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// An HTTP version other than 1.0 and 1.1.
    #[error("HTTP version '{0}' is not supported (use HTTP/1.1)")]
    Version(String),
}

impl HttpError {
    /// The status to answer with, or `None` when there is nobody to answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Closed | HttpError::Io(_) => None,
            HttpError::Timeout => Some(408),
            HttpError::BadRequest(_) => Some(400),
            HttpError::HeadTooLarge(_) => Some(431),
            HttpError::BodyTooLarge { .. } => Some(413),
            HttpError::NotImplemented(_) => Some(501),
            HttpError::Version(_) => Some(505),
        }
    }

    /// The response for this error, if there is anyone to answer.
    pub fn response(&self) -> Option<Response> {
        self.status().map(|s| Response::error(s, &self.to_string()))
    }
}

fn bad(what: impl Into<String>) -> HttpError {
    HttpError::BadRequest(what.into())
}

/// Read one request from `r`: the head up to [`Limits::head`], then exactly
/// `Content-Length` body bytes. Short reads and `Interrupted` are retried; a read that
/// times out (`WouldBlock` or `TimedOut`) ends it with [`HttpError::Timeout`].
pub fn read_request(r: &mut impl Read, limits: Limits) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let head_len = read_head(r, &mut buf, limits.head)?;
    let head = std::str::from_utf8(&buf[..head_len - 4])
        .map_err(|_| bad("request line or headers are not ASCII"))?;
    let mut req = parse_head(head)?;
    let Some(len) = req.content_length else {
        return Ok(req);
    };
    if len > limits.body {
        return Err(HttpError::BodyTooLarge {
            size: len as u64,
            limit: limits.body,
        });
    }
    let mut body = buf.split_off(head_len);
    // A pipelined second request is not read: one request per connection.
    body.truncate(len);
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(4096)];
        let n = read_some(r, &mut chunk)?;
        if n == 0 {
            return Err(bad(format!(
                "body ended after {} of {len} bytes",
                body.len()
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    req.body = body;
    Ok(req)
}

/// Read until the blank line ending the head; its length including the `\r\n\r\n`.
fn read_head(r: &mut impl Read, buf: &mut Vec<u8>, limit: usize) -> Result<usize, HttpError> {
    let mut chunk = [0u8; 1024];
    loop {
        let from = buf.len().saturating_sub(3);
        let n = read_some(r, &mut chunk)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HttpError::Closed
            } else {
                bad("connection closed in the middle of the request headers")
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + i + 4;
            return if end > limit {
                Err(HttpError::HeadTooLarge(limit))
            } else {
                Ok(end)
            };
        }
        if buf.len() >= limit {
            return Err(HttpError::HeadTooLarge(limit));
        }
    }
}

/// One `read`, retrying `Interrupted`, mapping a read timeout to [`HttpError::Timeout`].
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, HttpError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HttpError::Timeout);
            }
            Err(e) => return Err(HttpError::Io(e)),
        }
    }
}

/// Parse the request line and headers (without the final blank line).
fn parse_head(head: &str) -> Result<Request, HttpError> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let (method, path) = parse_request_line(request_line)?;
    let mut req = Request {
        method,
        path,
        headers: Vec::new(),
        content_length: None,
        body: Vec::new(),
    };
    for line in lines {
        if req.headers.len() >= MAX_HEADERS {
            return Err(HttpError::HeadTooLarge(MAX_HEADERS));
        }
        let (name, value) = parse_header(line)?;
        match name.as_str() {
            "content-length" => {
                let len = parse_content_length(&value)?;
                if req.content_length.is_some_and(|l| l != len) {
                    return Err(bad("conflicting Content-Length headers"));
                }
                req.content_length = Some(len);
            }
            "transfer-encoding" => {
                return Err(HttpError::NotImplemented(
                    "Transfer-Encoding (send a Content-Length instead)".into(),
                ));
            }
            _ => {}
        }
        req.headers.push((name, value));
    }
    Ok(req)
}

fn parse_request_line(line: &str) -> Result<(Method, String), HttpError> {
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(bad("malformed request line"));
    };
    let method = Method::parse(method).ok_or_else(|| bad("malformed method"))?;
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the request target must be a path starting with '/'"));
    }
    match *version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if is_version(v) => return Err(HttpError::Version(v.into())),
        _ => return Err(bad("malformed HTTP version")),
    }
    Ok((method, target.to_string()))
}

/// `HTTP/<digit>.<digit>` or `HTTP/<digit>`.
fn is_version(v: &str) -> bool {
    match v.strip_prefix("HTTP/").map(str::as_bytes) {
        Some([major]) => major.is_ascii_digit(),
        Some([major, b'.', minor]) => major.is_ascii_digit() && minor.is_ascii_digit(),
        _ => false,
    }
}

/// A token character of RFC 9110.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_header(line: &str) -> Result<(String, String), HttpError> {
    if line.starts_with([' ', '\t']) {
        return Err(bad("folded header lines are not accepted"));
    }
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| bad("header line without ':'"))?;
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(bad("malformed header name"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
    {
        return Err(bad(format!(
            "control characters in header '{}'",
            name.to_ascii_lowercase()
        )));
    }
    Ok((
        name.to_ascii_lowercase(),
        value.trim_matches([' ', '\t']).to_string(),
    ))
}

fn parse_content_length(v: &str) -> Result<usize, HttpError> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("malformed Content-Length"));
    }
    let len: u64 = v.parse().map_err(|_| bad("malformed Content-Length"))?;
    usize::try_from(len).map_err(|_| bad("malformed Content-Length"))
}

/// `Content-Type` of JSON bodies.
pub const CONTENT_JSON: &str = "application/json";
/// `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A response: a status, a body (JSON, or Prometheus text), and an `Allow` header for 405.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Methods allowed on the resource (405 responses).
    pub allow: Option<String>,
}

impl Response {
    /// A response with `value` as its JSON body.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        match serde_json::to_vec_pretty(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response {
                    status,
                    body,
                    content_type: CONTENT_JSON,
                    allow: None,
                }
            }
            Err(e) => Response::error(500, &format!("cannot encode the response: {e}")),
        }
    }

    /// An error response: `{"error": "<one line>"}`.
    pub fn error(status: u16, message: &str) -> Response {
        let line: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut body = serde_json::json!({ "error": line })
            .to_string()
            .into_bytes();
        body.push(b'\n');
        Response {
            status,
            body,
            content_type: CONTENT_JSON,
            allow: None,
        }
    }

    /// A Prometheus text exposition.
    pub fn prometheus(status: u16, text: String) -> Response {
        Response {
            status,
            body: text.into_bytes(),
            content_type: CONTENT_PROMETHEUS,
            allow: None,
        }
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Write the status line, headers and body.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = &self.allow {
            head += &format!("Allow: {allow}\r\n");
        }
        head += "\r\n";
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        w.write_all(&out)?;
        w.flush()
    }
}

/// The reason phrase of the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes in fixed steps, then an error or EOF.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        interrupt_every: usize,
        reads: usize,
        then: Option<io::ErrorKind>,
    }

    impl Trickle {
        fn new(data: &[u8], step: usize) -> Self {
            Trickle {
                data: data.to_vec(),
                pos: 0,
                step,
                interrupt_every: 0,
                reads: 0,
                then: None,
            }
        }
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.interrupt_every > 0 && self.reads.is_multiple_of(self.interrupt_every) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.pos == self.data.len() {
                return match self.then {
                    Some(kind) => Err(kind.into()),
                    None => Ok(0),
                };
            }
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn parse(raw: &str) -> Result<Request, HttpError> {
        parse_with(raw.as_bytes(), Limits::default())
    }

    fn parse_with(raw: &[u8], limits: Limits) -> Result<Request, HttpError> {
        read_request(&mut Trickle::new(raw, 1 << 20), limits)
    }

    fn status(raw: &str) -> Option<u16> {
        parse(raw).err().and_then(|e| e.status())
    }

    #[test]
    fn a_get_and_a_post_parse() {
        let r = parse("GET /regions HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((&r.method, r.path.as_str()), (&Method::Get, "/regions"));
        assert_eq!(r.content_length, None);
        assert!(r.body.is_empty());
        assert_eq!(r.header("host"), Some("x"));
        let r =
            parse("POST /chunks HTTP/1.1\r\nContent-LENGTH:  13 \r\n\r\n{\"size\": 4096}").unwrap();
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.content_length, Some(13));
        assert_eq!(r.body, b"{\"size\": 4096");
    }

    #[test]
    fn bytes_after_the_body_are_not_read() {
        let r =
            parse("PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn slow_and_interrupted_reads_assemble_the_request() {
        let raw = b"POST /chunks HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"size\": 1}";
        for step in [1, 2, 3, 7, 64] {
            let mut r = Trickle::new(raw, step);
            r.interrupt_every = 3;
            let req = read_request(&mut r, Limits::default()).unwrap();
            assert_eq!(req.body, b"{\"size\": 1}", "step {step}");
        }
    }

    #[test]
    fn a_read_timeout_is_408_wherever_it_happens() {
        let raw = "POST /chunks HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"size\": 1}";
        for cut in [0, 5, 30, raw.len() - 3] {
            for kind in [io::ErrorKind::WouldBlock, io::ErrorKind::TimedOut] {
                let mut r = Trickle::new(&raw.as_bytes()[..cut], 4);
                r.then = Some(kind);
                let e = read_request(&mut r, Limits::default()).unwrap_err();
                assert_eq!(e.status(), Some(408), "cut {cut}: {e}");
            }
        }
    }

    #[test]
    fn early_close_is_silent_before_a_request_and_400_within_one() {
        assert!(matches!(parse(""), Err(HttpError::Closed)));
        assert_eq!(status("GET /regions HTTP/1.1\r\nHost"), Some(400));
        assert_eq!(
            status("PUT /chunks HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}"),
            Some(400)
        );
        let mut broken = Trickle::new(b"GET", 1);
        broken.then = Some(io::ErrorKind::ConnectionReset);
        let e = read_request(&mut broken, Limits::default()).unwrap_err();
        assert!(matches!(e, HttpError::Io(_)));
        assert_eq!(e.status(), None);
    }

    #[test]
    fn missing_content_length_means_no_body() {
        let r = parse("PUT /chunks HTTP/1.1\r\n\r\n{\"size\": 4096}").unwrap();
        assert_eq!(r.content_length, None);
        assert!(r.body.is_empty());
    }

    #[test]
    fn body_over_the_limit_is_413_before_it_is_read() {
        let limits = Limits {
            head: 1024,
            body: 16,
        };
        // The body never arrives: a parser that tried to read it would time out (408).
        let mut r = Trickle::new(b"PUT /chunks HTTP/1.1\r\nContent-Length: 17\r\n\r\n", 8);
        r.then = Some(io::ErrorKind::WouldBlock);
        let e = read_request(&mut r, limits).unwrap_err();
        assert_eq!(e.status(), Some(413), "{e}");
        let huge = "PUT /chunks HTTP/1.1\r\nContent-Length: 9999999999999999999\r\n\r\n";
        assert_eq!(status(huge), Some(413));
        let ok = parse_with(
            b"PUT /chunks HTTP/1.1\r\nContent-Length: 16\r\n\r\n0123456789abcdef",
            limits,
        );
        assert_eq!(ok.unwrap().body.len(), 16);
    }

    #[test]
    fn heads_over_the_limit_are_431() {
        let limits = Limits {
            head: 256,
            body: 1024,
        };
        let long = format!(
            "GET /regions HTTP/1.1\r\nX-Long: {}\r\n\r\n",
            "a".repeat(300)
        );
        let e = parse_with(long.as_bytes(), limits).unwrap_err();
        assert_eq!(e.status(), Some(431));
        // No end of headers at all: stops reading at the limit, does not wait for more.
        let mut endless = Trickle::new(&[b'a'; 10_000], 100);
        endless.then = Some(io::ErrorKind::WouldBlock);
        let e = read_request(&mut endless, limits).unwrap_err();
        assert_eq!(e.status(), Some(431));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(431));
        // Exactly at the limit is fine.
        let pad = 256 - "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let exact = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(pad));
        assert_eq!(exact.len(), 256);
        assert!(parse_with(exact.as_bytes(), limits).is_ok());
    }

    #[test]
    fn malformed_request_lines_are_400() {
        for raw in [
            "\r\n\r\n",
            "GET\r\n\r\n",
            "GET /regions\r\n\r\n",
            "GET  /regions HTTP/1.1\r\n\r\n",
            "GET /regions HTTP/1.1 extra\r\n\r\n",
            "get /regions HTTP/1.1\r\n\r\n",
            "G3T /regions HTTP/1.1\r\n\r\n",
            "VERYLONGMETHODNAMEXX /regions HTTP/1.1\r\n\r\n",
            "GET regions HTTP/1.1\r\n\r\n",
            "GET http://x/regions HTTP/1.1\r\n\r\n",
            "GET /re\u{e9}gions HTTP/1.1\r\n\r\n",
            "GET /regions HTTX/1.1\r\n\r\n",
            "GET /regions HTTP/1.1\nHost: x\n\n\r\n\r\n",
        ] {
            assert_eq!(status(raw), Some(400), "{raw:?}");
        }
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), Some(505));
        assert_eq!(status("GET / HTTP/3\r\n\r\n"), Some(505));
        assert_eq!(status("GET / HTTP/1.1\n\r\n\r\n"), Some(400));
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn unknown_methods_parse_for_the_router_to_refuse() {
        let r = parse("FLY /regions HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Other("FLY".into()));
        assert_eq!(r.method.as_str(), "FLY");
    }

    #[test]
    fn malformed_headers_are_400() {
        for h in [
            "NoColon",
            ": empty-name",
            "Bad Name: v",
            "Name : v",
            " folded: v",
            "X: a\u{1}b",
            "Content-Length: -1",
            "Content-Length: 1e3",
            "Content-Length: 0x10",
            "Content-Length:",
            "Content-Length: 99999999999999999999",
            "Content-Length: 1\r\nContent-Length: 2",
        ] {
            let raw = format!("GET / HTTP/1.1\r\n{h}\r\n\r\n");
            assert_eq!(status(&raw), Some(400), "{h:?}");
        }
        let same = "PUT / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(same).unwrap().body, b"{}");
    }

    #[test]
    fn chunked_bodies_are_501() {
        let raw = "POST /chunks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(status(raw), Some(501));
    }

    #[test]
    fn responses_are_complete_http() {
        let mut out = Vec::new();
        let mut r = Response::error(405, "no\nway");
        r.allow = Some("GET, POST".into());
        r.write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(head.contains("\r\nAllow: GET, POST"));
        assert!(head.contains("\r\nConnection: close"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "no way");
        assert_eq!(body.lines().count(), 1);
    }
}
