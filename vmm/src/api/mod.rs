//! The runtime control API: HTTP/1.1 with JSON bodies on a Unix socket (`--api-sock`),
//! in Firecracker's style, and the metrics document (`GET /metrics`, `--metrics-path`).
//!
//! One request per connection (`Connection: close`); errors are `{"error": "<one line>"}`
//! with a status that says what to do: 400 fix the request, 403 not the API's chunk,
//! 404 no such chunk or region, 405 wrong method, 408 too slow, 409 no space / busy /
//! being moved, 411 body without `Content-Length`, 413 body too large, 431 headers too
//! large, 503 the guest agent did not do its part. `cma-vmm ctl` ([`crate::ctl`]) is
//! the client.
//!
//! - [`http`]: the request parser and response writer;
//! - [`socket`]: the owner-only socket, never over an existing path;
//! - [`server`]: accept loop and connection threads, deadlines, connection limit;
//! - [`routes`]: paths and methods to endpoints (the table is there);
//! - [`request`], [`error`]: request bodies and their validation, error statuses;
//! - [`handlers`]: the endpoints over a running VM;
//! - [`metrics`]: counters, the metrics document and its file;
//! - [`prometheus`]: the same metrics in the Prometheus text exposition format.

pub mod error;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod prometheus;
pub mod request;
pub mod routes;
pub mod server;
pub mod socket;

pub use error::ApiError;
pub use handlers::ApiContext;
pub use metrics::{ApiMetrics, MetricsSource, MetricsWriter};
pub use server::{Server, ServerConfig, Service};
pub use socket::{ApiSocket, SocketError};
