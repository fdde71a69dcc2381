//! `api_request`: the control API's HTTP request parser (`vmm::api::http::read_request`)
//! and router.

use std::io::Read;

use vmm::api::http::{Limits, MAX_HEADERS, read_request};
use vmm::api::routes::route;

/// Hands out the input a few bytes per `read`, as a slow client would.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The first byte sets how many bytes each `read` returns (1 to 256) and whether the
/// limits are the defaults or tiny ones; the rest is what the client sends.
///
/// Nothing panics; an error has a status or is a closed connection; a request has a path
/// that starts with `/` and is visible ASCII, lower-case header names, at most
/// [`MAX_HEADERS`] of them, and a body of exactly `Content-Length` bytes within the limit
/// (none without the header); the router takes any parsed request; and reading the same
/// bytes in one piece gives the same request.
pub fn api_request(data: &[u8]) {
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    let limits = if mode & 0x80 == 0 {
        Limits::default()
    } else {
        Limits { head: 64, body: 16 }
    };
    let step = usize::from(mode & 0x7f) * 2 + 1;
    let parsed = read_request(&mut Trickle { data: wire, step }, limits);
    let whole = read_request(
        &mut Trickle {
            data: wire,
            step: usize::MAX,
        },
        limits,
    );
    match parsed {
        Ok(req) => {
            assert!(req.path.starts_with('/'));
            assert!(req.path.bytes().all(|b| b.is_ascii_graphic()));
            assert!(req.headers.len() <= MAX_HEADERS);
            for (name, _) in &req.headers {
                assert_eq!(
                    name,
                    &name.to_ascii_lowercase(),
                    "header name not lower-cased"
                );
            }
            match req.content_length {
                Some(len) => {
                    assert_eq!(req.body.len(), len);
                    assert!(len <= limits.body);
                }
                None => assert!(req.body.is_empty()),
            }
            let _ = req.header("content-type");
            let _ = route(&req.method, &req.path).map_err(|e| e.to_string());
            assert_eq!(
                whole.ok(),
                Some(req),
                "the request depends on how it was read"
            );
        }
        Err(e) => {
            let _ = (e.status(), e.response(), e.to_string());
            assert!(whole.is_err(), "the request depends on how it was read");
        }
    }
}
