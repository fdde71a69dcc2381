//! The Prometheus exposition of a metrics document with regions, endpoints and devices
//! passes the strict reader (no KVM needed: the document is assembled from its parts).
//! `tests/tests/api.rs` reads the live endpoint of a running VMM the same way.

use std::time::Duration;

use cma::Cma;
use cma_tests::prometheus;
use vmm::api::ApiMetrics;
use vmm::api::metrics::document;
use vmm::api::routes::Endpoint;
use vmm::config::RegionSpec;
use vmm::devices::virtio::agent::channel::AgentMetrics;
use vmm::grant::GrantMetrics;
use vmm::vstate::vcpu::ExitCounters;

#[test]
fn the_exposition_follows_the_format_and_the_conventions() {
    let spec = |id, name: &str, base| RegionSpec {
        id,
        name: name.into(),
        base,
        size: 4 << 20,
        private: false,
        order_per_bit: 0,
    };
    let cma = Cma::new(
        &[
            spec(0, "video", 0x100_0000),
            spec(1, "odd\"name\"\\", 0x200_0000),
        ],
        &[],
    )
    .expect("regions");
    let api = ApiMetrics::default();
    for (i, e) in Endpoint::ALL.iter().enumerate() {
        api.record(
            *e,
            if i % 2 == 0 { 200 } else { 404 },
            Duration::from_micros(i as u64 + 1),
        );
    }
    let mut doc = document(
        &api,
        &cma.stats(),
        &GrantMetrics::default(),
        &AgentMetrics::default(),
        &ExitCounters::default(),
        12_345,
    );
    doc.devices.insert(
        "capture0".into(),
        serde_json::json!({"start_count": 1, "start_fails": 0, "stop_count": 1,
                           "frame_count": 300, "bad_requests": 0}),
    );
    let text = vmm::api::prometheus::render(&doc);
    let e = prometheus::parse(&text);
    assert_eq!(
        e.value("cma_region_free_bytes", &[("region", "video")]),
        Some(4194304.0)
    );
    assert_eq!(
        e.value("cma_region_free_bytes", &[("region", "odd\"name\"\\")]),
        Some(4194304.0),
        "label values escaped and read back"
    );
    assert_eq!(
        e.value("cma_capture_frames_total", &[("device", "capture0")]),
        Some(300.0)
    );
    assert_eq!(e.value("cma_uptime_seconds", &[]), Some(12.0));
    assert_eq!(
        e.value(
            "cma_api_requests_total",
            &[("endpoint", "get_metrics_prometheus")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.value(
            "cma_api_request_duration_seconds",
            &[("endpoint", "get_vm"), ("quantile", "1")]
        ),
        Some(0.000001)
    );
    assert_eq!(
        e.types
            .get("cma_region_allocation_duration_seconds")
            .map(String::as_str),
        Some("summary")
    );
    // Every JSON section has its families.
    for family in [
        "cma_api_requests_total",
        "cma_region_used_bytes",
        "cma_grants_total",
        "cma_agent_timeouts_total",
        "cma_vcpu_exits_total",
        "cma_capture_starts_total",
    ] {
        assert!(e.types.contains_key(family), "{family} missing:\n{text}");
    }
}
