//! The API server: an accept loop on its own thread, one thread per connection.
//!
//! A connection carries one request. Its thread reads the request against a deadline
//! ([`ServerConfig::request_timeout`] for the whole request, however slowly it trickles
//! in), asks the [`Service`] for the response, writes it and closes. An allocation may
//! wait seconds for the guest to evict; other connections are served meanwhile, and at
//! most [`ServerConfig::max_connections`] are served at once (the next ones get 503).
//!
//! The threads are scoped: the service may borrow the running VM. [`Server::stop`] stops
//! accepting, removes the socket file, and waits for the connections in flight.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::http::{Limits, Request, Response, read_request};
use super::socket::ApiSocket;

/// What answers requests.
pub trait Service: Sync {
    /// Answer a parsed request.
    fn handle(&self, req: &Request) -> Response;
    /// Note a request that could not be parsed, answered with `status` after `elapsed`.
    fn rejected(&self, status: u16, elapsed: Duration) {
        let _ = (status, elapsed);
    }
}

/// Limits and timeouts of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Request size limits.
    pub limits: Limits,
    /// The whole request must arrive within this long of the connection.
    pub request_timeout: Duration,
    /// Writing the response may block this long.
    pub write_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// The running server.
pub struct Server<'scope> {
    stop: Arc<EventFd>,
    handle: ScopedJoinHandle<'scope, ()>,
}

impl<'scope> Server<'scope> {
    /// Serve `socket` with `service` on threads of `scope`.
    pub fn spawn<'env, S: Service>(
        scope: &'scope Scope<'scope, 'env>,
        socket: ApiSocket,
        service: &'scope S,
        config: ServerConfig,
    ) -> io::Result<Server<'scope>> {
        socket.listener().set_nonblocking(true)?;
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("cma-api".into())
            .spawn_scoped(scope, move || {
                accept_loop(scope, socket, service, &stopped, config);
            })?;
        Ok(Server { stop, handle })
    }

    /// Stop accepting, remove the socket, wait for the connections being served.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.handle.join();
    }
}

fn accept_loop<'scope, 'env, S: Service>(
    scope: &'scope Scope<'scope, 'env>,
    socket: ApiSocket,
    service: &'scope S,
    stop: &EventFd,
    config: ServerConfig,
) {
    let mut live: Vec<ScopedJoinHandle<'scope, ()>> = Vec::new();
    loop {
        let ready = poll_readable(&[socket.listener().as_raw_fd(), stop.as_raw_fd()], -1);
        if ready[1] {
            break;
        }
        if !ready[0] {
            continue;
        }
        let stream = match socket.listener().accept() {
            Ok((s, _)) => s,
            // Gone before we took it, or out of descriptors for a moment.
            Err(_) => continue,
        };
        live.retain(|h| !h.is_finished());
        if live.len() >= config.max_connections {
            let started = Instant::now();
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let busy = Response::error(503, "too many API connections; retry");
            let _ = busy.write_to(&mut &stream);
            service.rejected(503, started.elapsed());
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name("cma-api-conn".into())
            .spawn_scoped(scope, move || serve_connection(stream, service, config));
        if let Ok(h) = spawned {
            live.push(h);
        }
    }
    // Remove the socket first: no new client finds a server that will not answer.
    drop(socket);
    for h in live {
        let _ = h.join();
    }
}

/// Read one request, answer it, close.
fn serve_connection<S: Service>(stream: UnixStream, service: &S, config: ServerConfig) {
    let started = Instant::now();
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_write_timeout(Some(config.write_timeout))
            .is_err()
    {
        return;
    }
    let mut reader = DeadlineReader {
        stream: &stream,
        deadline: started + config.request_timeout,
    };
    let response = match read_request(&mut reader, config.limits) {
        Ok(req) => service.handle(&req),
        Err(e) => match e.response() {
            Some(r) => {
                service.rejected(r.status, started.elapsed());
                r
            }
            None => return,
        },
    };
    let _ = response.write_to(&mut &stream);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Reads that time out at a fixed deadline, not per read: a client trickling a byte at a
/// time cannot hold a connection longer than the request timeout.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

/// poll(2) `fds` for reading, up to `timeout_ms` (-1: no limit); which ones are readable.
/// An interrupted poll reports none.
pub(crate) fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures for the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    pfds.iter()
        .map(|p| n > 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect()
}

/// Wait until `evt` is readable or `deadline` passes; whether it is readable.
pub(crate) fn wait_readable(evt: &EventFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        if poll_readable(&[evt.as_raw_fd()], ms)[0] {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    /// Echoes the method and path; `/slow` takes a second.
    struct Echo;

    impl Service for Echo {
        fn handle(&self, req: &Request) -> Response {
            if req.path == "/slow" {
                std::thread::sleep(Duration::from_secs(1));
            }
            Response::json(
                200,
                &serde_json::json!({ "method": req.method.as_str(), "path": req.path }),
            )
        }
    }

    fn socket_path(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cma-srv-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn exchange(path: &PathBuf, raw: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        let _ = s.write_all(raw);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn config() -> ServerConfig {
        ServerConfig {
            request_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn requests_are_answered_and_the_socket_goes_at_stop() {
        let path = socket_path("answer");
        std::thread::scope(|s| {
            let sock = ApiSocket::bind(&path).unwrap();
            let server = Server::spawn(s, sock, &Echo, config()).unwrap();
            let out = exchange(&path, b"GET /x HTTP/1.1\r\n\r\n");
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            assert!(out.ends_with("}\n"), "{out}");
            let out = exchange(&path, b"GET /x HTTP/9.9\r\n\r\n");
            assert!(out.starts_with("HTTP/1.1 505 "), "{out}");
            server.stop();
        });
        assert!(!path.exists());
    }

    #[test]
    fn an_idle_client_times_out_without_blocking_others() {
        let path = socket_path("idle");
        std::thread::scope(|s| {
            let sock = ApiSocket::bind(&path).unwrap();
            let server = Server::spawn(s, sock, &Echo, config()).unwrap();
            let started = Instant::now();
            let mut idle = UnixStream::connect(&path).unwrap();
            let mut partial = UnixStream::connect(&path).unwrap();
            partial.write_all(b"GET /x HTTP/1.1\r\nHost:").unwrap();
            let out = exchange(&path, b"GET /y HTTP/1.1\r\n\r\n");
            assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
            assert!(
                started.elapsed() < Duration::from_millis(800),
                "not blocked"
            );
            for c in [&mut idle, &mut partial] {
                let mut out = String::new();
                c.read_to_string(&mut out).unwrap();
                assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
            }
            server.stop();
        });
    }

    #[test]
    fn a_trickling_client_is_cut_off_at_the_deadline() {
        let path = socket_path("trickle");
        std::thread::scope(|s| {
            let sock = ApiSocket::bind(&path).unwrap();
            let server = Server::spawn(s, sock, &Echo, config()).unwrap();
            let mut c = UnixStream::connect(&path).unwrap();
            let started = Instant::now();
            for b in b"GET /x HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if c.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
            assert!(started.elapsed() < Duration::from_secs(3));
            server.stop();
        });
    }

    #[test]
    fn connections_over_the_limit_get_503() {
        let path = socket_path("limit");
        std::thread::scope(|s| {
            let sock = ApiSocket::bind(&path).unwrap();
            let cfg = ServerConfig {
                max_connections: 1,
                ..config()
            };
            let server = Server::spawn(s, sock, &Echo, cfg).unwrap();
            let slow = std::thread::spawn({
                let path = path.clone();
                move || exchange(&path, b"GET /slow HTTP/1.1\r\n\r\n")
            });
            std::thread::sleep(Duration::from_millis(300));
            let out = exchange(&path, b"GET /x HTTP/1.1\r\n\r\n");
            assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
            assert!(slow.join().unwrap().starts_with("HTTP/1.1 200 "));
            server.stop();
        });
    }
}
