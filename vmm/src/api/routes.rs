//! The API's resources: which method on which path is which endpoint.
//!
//! ```text
//!  GET    /vm                       boot milestones, agent, outcome
//!  POST   /vm/verify                check every guest page from the host
//!  POST   /vm/shutdown              ask the guest to check its pages and exit
//!  GET    /regions                  every region with statistics, and the map rules
//!  GET    /regions/{name}           one region, with its bitmap
//!  POST   /regions/{name}/compact   move unpinned chunks to grow the largest free run
//!  GET    /chunks                   every granted chunk
//!  POST   /chunks                   allocate (body: AllocBody)
//!  GET    /chunks/{id}              one chunk
//!  DELETE /chunks/{id}              free
//!  PUT    /chunks/{id}/pin          pin
//!  PUT    /chunks/{id}/unpin        unpin
//!  GET    /metrics                  the metrics document (Prometheus text if the
//!                                   Accept header asks for text/plain, not JSON)
//!  GET    /metrics/prometheus       the metrics in the Prometheus text format
//! ```

use serde::Serialize;

use super::http::Method;

/// An endpoint: one method on one resource. Metrics are kept per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Endpoint {
    /// `GET /vm`.
    GetVm,
    /// `POST /vm/verify`.
    PostVmVerify,
    /// `POST /vm/shutdown`.
    PostVmShutdown,
    /// `GET /regions`.
    GetRegions,
    /// `GET /regions/{name}`.
    GetRegion,
    /// `POST /regions/{name}/compact`.
    PostRegionCompact,
    /// `GET /chunks`.
    GetChunks,
    /// `POST /chunks`.
    PostChunks,
    /// `GET /chunks/{id}`.
    GetChunk,
    /// `DELETE /chunks/{id}`.
    DeleteChunk,
    /// `PUT /chunks/{id}/pin`.
    PutChunkPin,
    /// `PUT /chunks/{id}/unpin`.
    PutChunkUnpin,
    /// `GET /metrics`.
    GetMetrics,
    /// `GET /metrics/prometheus`.
    GetMetricsPrometheus,
    /// A request that reached no endpoint: unparseable, unknown path, wrong method.
    Other,
}

impl Endpoint {
    /// Every endpoint, in metrics order.
    pub const ALL: [Endpoint; 15] = [
        Endpoint::GetVm,
        Endpoint::PostVmVerify,
        Endpoint::PostVmShutdown,
        Endpoint::GetRegions,
        Endpoint::GetRegion,
        Endpoint::PostRegionCompact,
        Endpoint::GetChunks,
        Endpoint::PostChunks,
        Endpoint::GetChunk,
        Endpoint::DeleteChunk,
        Endpoint::PutChunkPin,
        Endpoint::PutChunkUnpin,
        Endpoint::GetMetrics,
        Endpoint::GetMetricsPrometheus,
        Endpoint::Other,
    ];

    /// The endpoint's name in the metrics document.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::GetVm => "get_vm",
            Endpoint::PostVmVerify => "post_vm_verify",
            Endpoint::PostVmShutdown => "post_vm_shutdown",
            Endpoint::GetRegions => "get_regions",
            Endpoint::GetRegion => "get_region",
            Endpoint::PostRegionCompact => "post_region_compact",
            Endpoint::GetChunks => "get_chunks",
            Endpoint::PostChunks => "post_chunks",
            Endpoint::GetChunk => "get_chunk",
            Endpoint::DeleteChunk => "delete_chunk",
            Endpoint::PutChunkPin => "put_chunk_pin",
            Endpoint::PutChunkUnpin => "put_chunk_unpin",
            Endpoint::GetMetrics => "get_metrics",
            Endpoint::GetMetricsPrometheus => "get_metrics_prometheus",
            Endpoint::Other => "other",
        }
    }

    /// Index in [`Endpoint::ALL`].
    pub fn index(self) -> usize {
        Endpoint::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

/// A routed request: the endpoint and its path parameter (region name or chunk id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// `{name}` or `{id}` from the path, empty for the others.
    pub param: String,
}

/// Why a request has no endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No such resource.
    #[error("no such resource: {0}")]
    NotFound(String),
    /// The resource exists; the method is not one of `allow`.
    #[error("method {method} is not allowed on {path} (allowed: {allow})")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
        /// The methods allowed, for the `Allow` header.
        allow: String,
    },
}

/// The endpoint of `method` on `path`.
pub fn route(method: &Method, path: &str) -> Result<Route, RouteError> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let (methods, param): (&[(Method, Endpoint)], &str) = match segments.as_slice() {
        ["vm"] => (&[(Method::Get, Endpoint::GetVm)], ""),
        ["vm", "verify"] => (&[(Method::Post, Endpoint::PostVmVerify)], ""),
        ["vm", "shutdown"] => (&[(Method::Post, Endpoint::PostVmShutdown)], ""),
        ["regions"] => (&[(Method::Get, Endpoint::GetRegions)], ""),
        ["regions", name] if !name.is_empty() => (&[(Method::Get, Endpoint::GetRegion)], name),
        ["regions", name, "compact"] if !name.is_empty() => {
            (&[(Method::Post, Endpoint::PostRegionCompact)], name)
        }
        ["chunks"] => (
            &[
                (Method::Get, Endpoint::GetChunks),
                (Method::Post, Endpoint::PostChunks),
            ],
            "",
        ),
        ["chunks", id] if !id.is_empty() => (
            &[
                (Method::Get, Endpoint::GetChunk),
                (Method::Delete, Endpoint::DeleteChunk),
            ],
            id,
        ),
        ["chunks", id, "pin"] if !id.is_empty() => (&[(Method::Put, Endpoint::PutChunkPin)], id),
        ["chunks", id, "unpin"] if !id.is_empty() => {
            (&[(Method::Put, Endpoint::PutChunkUnpin)], id)
        }
        ["metrics"] => (&[(Method::Get, Endpoint::GetMetrics)], ""),
        ["metrics", "prometheus"] => (&[(Method::Get, Endpoint::GetMetricsPrometheus)], ""),
        _ => return Err(RouteError::NotFound(path.to_string())),
    };
    match methods.iter().find(|(m, _)| m == method) {
        Some((_, endpoint)) => Ok(Route {
            endpoint: *endpoint,
            param: param.to_string(),
        }),
        None => Err(RouteError::MethodNotAllowed {
            method: method.as_str().to_string(),
            path: path.to_string(),
            allow: methods
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: Method, path: &str) -> Route {
        route(&method, path).unwrap()
    }

    #[test]
    fn every_endpoint_has_a_route() {
        let r = ok(Method::Delete, "/chunks/cma1:0:42");
        assert_eq!(
            (r.endpoint, r.param.as_str()),
            (Endpoint::DeleteChunk, "cma1:0:42")
        );
        let r = ok(Method::Post, "/regions/video/compact");
        assert_eq!(
            (r.endpoint, r.param.as_str()),
            (Endpoint::PostRegionCompact, "video")
        );
        assert_eq!(ok(Method::Post, "/chunks").endpoint, Endpoint::PostChunks);
        assert_eq!(ok(Method::Get, "/chunks").endpoint, Endpoint::GetChunks);
        assert_eq!(
            ok(Method::Put, "/chunks/x/pin").endpoint,
            Endpoint::PutChunkPin
        );
        assert_eq!(
            ok(Method::Put, "/chunks/x/unpin").endpoint,
            Endpoint::PutChunkUnpin
        );
        assert_eq!(ok(Method::Get, "/metrics").endpoint, Endpoint::GetMetrics);
        assert_eq!(
            ok(Method::Get, "/metrics/prometheus").endpoint,
            Endpoint::GetMetricsPrometheus
        );
        assert_eq!(
            ok(Method::Post, "/vm/verify").endpoint,
            Endpoint::PostVmVerify
        );
        let names: std::collections::HashSet<_> = Endpoint::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(names.len(), Endpoint::ALL.len());
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "/",
            "/regions/",
            "/chunks//pin",
            "/regions/a/compact/now",
            "/metrics?x=1",
            "//regions",
            "/Regions",
        ] {
            assert!(
                matches!(route(&Method::Get, path), Err(RouteError::NotFound(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn wrong_methods_list_the_allowed_ones() {
        match route(&Method::Put, "/chunks") {
            Err(RouteError::MethodNotAllowed { allow, .. }) => assert_eq!(allow, "GET, POST"),
            other => panic!("{other:?}"),
        }
        let e = route(&Method::Other("FLY".into()), "/metrics").unwrap_err();
        assert!(e.to_string().contains("FLY"), "{e}");
        assert!(matches!(
            route(&Method::Get, "/regions/a/compact"),
            Err(RouteError::MethodNotAllowed { .. })
        ));
    }
}
