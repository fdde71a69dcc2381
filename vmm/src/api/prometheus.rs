//! The metrics document in the Prometheus text exposition format (version 0.0.4), for
//! `GET /metrics/prometheus` and for `GET /metrics` with `Accept: text/plain`.
//!
//! Names follow Prometheus' conventions, not the JSON document's Firecracker ones: a `cma_`
//! prefix, `_total` on counters, base units (`_bytes`, `_seconds`), one family per quantity
//! with the region, endpoint or device as a label (`cma_region_used_bytes{region="video"}`).
//! Latency summaries become Prometheus summaries: quantiles 0 (min), 0.5, 0.99 and 1 (max),
//! `_sum` (mean × count) and `_count`.
//!
//! ```text
//! # HELP cma_region_allocations_total Allocations granted from the region.
//! # TYPE cma_region_allocations_total counter
//! cma_region_allocations_total{region="video"} 6
//! ```

use std::fmt::Write;

use cma::LatencySummary;

use super::metrics::{EndpointSection, MetricsDocument, RegionSection};

/// Metric families kinds used here.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// One label set: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

/// A per-region counter or gauge: name, kind, help, and where its value is.
type RegionFamily = (&'static str, Kind, &'static str, fn(&RegionSection) -> u64);

/// A per-region latency summary: name, help, and where it is.
type RegionSummary = (
    &'static str,
    &'static str,
    fn(&RegionSection) -> &LatencySummary,
);

/// The exposition being written; each family once, all its samples together.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A counter or gauge family; nothing if it has no samples.
    fn family(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let samples: Vec<_> = samples.into_iter().collect();
        if samples.is_empty() {
            return;
        }
        self.header(name, kind, help);
        for (labels, v) in samples {
            self.sample(name, &labels, &v.to_string());
        }
    }

    /// A latency summary family (nanoseconds in, seconds out).
    fn summary<'a>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, &'a LatencySummary)>,
    ) {
        let samples: Vec<_> = samples.into_iter().collect();
        if samples.is_empty() {
            return;
        }
        self.header(name, Kind::Summary, help);
        for (labels, s) in samples {
            for (q, ns) in [
                ("0", s.min_ns),
                ("0.5", s.p50_ns),
                ("0.99", s.p99_ns),
                ("1", s.max_ns),
            ] {
                let mut with_q = labels.clone();
                with_q.push(("quantile", q.to_string()));
                // No observation yet: the quantiles are not known (Prometheus' NaN).
                let v = if s.count == 0 {
                    "NaN".to_string()
                } else {
                    seconds(ns)
                };
                self.sample(name, &with_q, &v);
            }
            let sum = s.mean_ns.saturating_mul(s.count);
            self.sample(&format!("{name}_sum"), &labels, &seconds(sum));
            self.sample(&format!("{name}_count"), &labels, &s.count.to_string());
        }
    }
}

/// Nanoseconds as seconds, exactly (no exponent: Rust's `f64` display never uses one).
fn seconds(ns: u64) -> String {
    (ns as f64 / 1e9).to_string()
}

/// Label values: backslash, double quote and line feed escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn label(name: &'static str, value: &str) -> Labels {
    vec![(name, value.to_string())]
}

/// The exposition of `doc`.
pub fn render(doc: &MetricsDocument) -> String {
    let mut e = Exposition::default();
    e.family(
        "cma_uptime_seconds",
        Kind::Gauge,
        "Seconds since the VMM started building the VM.",
        [(Vec::new(), doc.uptime_ms / 1000)],
    );

    let endpoints = &doc.api.endpoints;
    let per_endpoint = |f: fn(&EndpointSection) -> u64| {
        endpoints
            .iter()
            .map(move |(name, s)| (label("endpoint", name), f(s)))
    };
    e.family(
        "cma_api_requests_total",
        Kind::Counter,
        "Control API requests answered, by endpoint (other: reached none).",
        per_endpoint(|s| s.requests_count),
    );
    e.family(
        "cma_api_request_failures_total",
        Kind::Counter,
        "Control API requests answered with a status other than 2xx.",
        per_endpoint(|s| s.requests_fails),
    );
    e.summary(
        "cma_api_request_duration_seconds",
        "Control API requests, from arrival to response.",
        endpoints
            .iter()
            .map(|(name, s)| (label("endpoint", name), &s.latency)),
    );

    let regions = &doc.regions;
    let per_region = |f: fn(&RegionSection) -> u64| {
        regions
            .iter()
            .map(move |(name, s)| (label("region", name), f(s)))
    };
    let region_families: [RegionFamily; 12] = [
        (
            "cma_region_allocations_total",
            Kind::Counter,
            "Allocations granted from the region.",
            |s| s.alloc_count,
        ),
        (
            "cma_region_allocation_failures_total",
            Kind::Counter,
            "Allocations that failed in the region (no space, every candidate busy, claim failed).",
            |s| s.alloc_fails,
        ),
        (
            "cma_region_frees_total",
            Kind::Counter,
            "Chunks freed in the region.",
            |s| s.free_count,
        ),
        (
            "cma_region_busy_retries_total",
            Kind::Counter,
            "Candidate ranges the guest reported busy (a pinned page); the search moved past them.",
            |s| s.busy_retries,
        ),
        (
            "cma_region_migrated_pages_total",
            Kind::Counter,
            "Pages the guest migrated out of the region for claims.",
            |s| s.pages_migrated,
        ),
        (
            "cma_region_compactions_total",
            Kind::Counter,
            "Compactions run on the region.",
            |s| s.compact_count,
        ),
        (
            "cma_region_moved_chunks_total",
            Kind::Counter,
            "Chunks moved by compaction.",
            |s| s.chunks_moved_count,
        ),
        (
            "cma_region_move_failures_total",
            Kind::Counter,
            "Chunk moves abandoned by compaction.",
            |s| s.move_fails,
        ),
        (
            "cma_region_chunks",
            Kind::Gauge,
            "Live chunks in the region.",
            |s| s.chunks,
        ),
        (
            "cma_region_used_bytes",
            Kind::Gauge,
            "Bytes of the region taken (granted, being claimed, moved or freed).",
            |s| s.used_bytes,
        ),
        (
            "cma_region_free_bytes",
            Kind::Gauge,
            "Bytes of the region free.",
            |s| s.free_bytes,
        ),
        (
            "cma_region_largest_free_bytes",
            Kind::Gauge,
            "The region's largest free run, in bytes.",
            |s| s.largest_free_bytes,
        ),
    ];
    for (name, kind, help, f) in region_families {
        e.family(name, kind, help, per_region(f));
    }
    let region_summaries: [RegionSummary; 3] = [
        (
            "cma_region_allocation_duration_seconds",
            "Allocations in the region, the guest's eviction included.",
            |s| &s.alloc_latency,
        ),
        (
            "cma_region_free_duration_seconds",
            "Frees in the region, scrub and return to the guest included.",
            |s| &s.free_latency,
        ),
        (
            "cma_region_search_duration_seconds",
            "Allocation decisions in the region (bitmap search and marking).",
            |s| &s.search_latency,
        ),
    ];
    for (name, help, f) in region_summaries {
        e.summary(
            name,
            help,
            regions.iter().map(|(n, s)| (label("region", n), f(s))),
        );
    }

    let g = &doc.grants;
    let a = &doc.agent;
    let v = &doc.vcpu;
    let plain: [(&str, &str, u64); 25] = [
        ("cma_grants_total", "Chunks granted.", g.grant_count),
        (
            "cma_grant_failures_total",
            "Allocations that failed.",
            g.grant_fails,
        ),
        ("cma_grant_frees_total", "Chunks freed.", g.free_count),
        (
            "cma_evictions_total",
            "Evictions the guest completed.",
            g.evict_count,
        ),
        (
            "cma_eviction_failures_total",
            "Evictions that failed (timeout, guest error, revocation).",
            g.evict_fails,
        ),
        (
            "cma_eviction_busy_total",
            "Evictions the guest answered busy.",
            g.busy_count,
        ),
        (
            "cma_return_failures_total",
            "Returns of freed ranges the guest did not acknowledge.",
            g.return_fails,
        ),
        (
            "cma_grant_migrated_pages_total",
            "Pages the guest migrated for grants.",
            g.pages_migrated,
        ),
        (
            "cma_evictions_held_total",
            "Evictions that waited for a host-side check of the guest's pages.",
            g.evict_held_count,
        ),
        (
            "cma_agent_requests_total",
            "Requests written to the guest agent.",
            a.requests_count,
        ),
        (
            "cma_agent_answers_total",
            "Agent answers matched to a waiting request.",
            a.answers_count,
        ),
        (
            "cma_agent_unsolicited_answers_total",
            "Agent answers to no waiting request.",
            a.unsolicited_answers_count,
        ),
        (
            "cma_agent_bad_messages_total",
            "Agent messages that did not decode.",
            a.bad_messages_count,
        ),
        (
            "cma_agent_bad_descriptors_total",
            "Malformed descriptor chains from the agent.",
            a.bad_descriptors_count,
        ),
        (
            "cma_agent_timeouts_total",
            "Agent requests that timed out.",
            a.timeouts_count,
        ),
        (
            "cma_agent_copied_pages_total",
            "Pages the VMM copied for the guest agent.",
            a.pages_copied,
        ),
        (
            "cma_agent_refused_pairs_total",
            "Migration pairs refused.",
            a.pairs_refused_count,
        ),
        (
            "cma_agent_hellos_total",
            "Hello messages from the agent.",
            a.hello_count,
        ),
        (
            "cma_vcpu_exits_total",
            "vCPU exits to the VMM, all kinds.",
            v.exits_count,
        ),
        (
            "cma_vcpu_pio_exits_total",
            "vCPU exits for port I/O.",
            v.pio_exits_count,
        ),
        (
            "cma_vcpu_mmio_exits_total",
            "vCPU exits for MMIO to device registers.",
            v.mmio_exits_count,
        ),
        (
            "cma_vcpu_ram_emulated_total",
            "RAM accesses completed by the VMM during a slot change.",
            v.ram_emulated_count,
        ),
        (
            "cma_vcpu_revoked_refused_total",
            "Guest accesses to exclusively granted ranges, refused.",
            v.revoked_refused_count,
        ),
        (
            "cma_vcpu_unclaimed_mmio_total",
            "MMIO accesses nothing claims.",
            v.unclaimed_mmio_count,
        ),
        (
            "cma_vcpu_interrupted_total",
            "Signal-induced vCPU exits (pause, stop).",
            v.interrupted_count,
        ),
    ];
    for (name, help, value) in plain {
        e.family(name, Kind::Counter, help, [(Vec::new(), value)]);
    }

    // Device models' counters, by the JSON document's key.
    let device_families = [
        (
            "start_count",
            "cma_capture_starts_total",
            "Capture starts that got their buffers.",
        ),
        (
            "start_fails",
            "cma_capture_start_failures_total",
            "Capture starts refused (no buffers, or invalid).",
        ),
        ("stop_count", "cma_capture_stops_total", "Capture stops."),
        (
            "frame_count",
            "cma_capture_frames_total",
            "Frames delivered.",
        ),
        (
            "bad_requests",
            "cma_capture_bad_requests_total",
            "Malformed capture chains or commands.",
        ),
    ];
    for (key, name, help) in device_families {
        e.family(
            name,
            Kind::Counter,
            help,
            doc.devices
                .iter()
                .filter_map(|(dev, m)| Some((label("device", dev), m[key].as_u64()?))),
        );
    }
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiMetrics;
    use crate::api::metrics::document;
    use crate::api::routes::Endpoint;
    use crate::devices::virtio::agent::channel::AgentMetrics;
    use crate::grant::GrantMetrics;
    use crate::vstate::vcpu::ExitCounters;
    use std::time::Duration;

    #[test]
    fn names_labels_and_summaries() {
        let api = ApiMetrics::default();
        api.record(Endpoint::PostChunks, 201, Duration::from_micros(300));
        let mut doc = document(
            &api,
            &[],
            &GrantMetrics::default(),
            &AgentMetrics::default(),
            &ExitCounters::default(),
            2500,
        );
        doc.devices.insert(
            "cap\"0".into(),
            serde_json::json!({"start_count": 2, "frame_count": 40}),
        );
        let text = render(&doc);
        assert!(text.contains("# TYPE cma_uptime_seconds gauge\ncma_uptime_seconds 2\n"));
        assert!(text.contains("cma_api_requests_total{endpoint=\"post_chunks\"} 1\n"));
        assert!(text.contains(
            "cma_api_request_duration_seconds{endpoint=\"post_chunks\",quantile=\"1\"} 0.0003\n"
        ));
        assert!(
            text.contains("cma_api_request_duration_seconds_count{endpoint=\"post_chunks\"} 1\n")
        );
        assert!(text.contains(
            "cma_api_request_duration_seconds{endpoint=\"get_vm\",quantile=\"0.5\"} NaN\n"
        ));
        assert!(text.contains("cma_capture_frames_total{device=\"cap\\\"0\"} 40\n"));
        assert!(
            !text.contains("cma_capture_stops_total"),
            "no samples, no family"
        );
        assert_eq!(escape_label("a\\b\n\""), "a\\\\b\\n\\\"");
    }
}
