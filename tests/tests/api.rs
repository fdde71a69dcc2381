//! The control API end to end: a VMM with `--api-sock` under KVM, driven through
//! `cma-vmm ctl` and through raw HTTP; bad requests refused with their status and without
//! changing anything; the socket's permissions and lifetime; the metrics file.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use cma_tests::api::{Answer, ApiVmm};
use cma_tests::{require_kvm, run_vmm, vmm_bin};
use serde_json::{Value, json};

const M: u64 = 1 << 20;
const K: u64 = 1 << 10;
const DEADLINE: Duration = Duration::from_secs(120);

/// 128 MiB guest, lent regions `a` (8 MiB, the default for any device) and `b` (4 MiB).
const GUEST: &[&str] = &[
    "--memory",
    "128M",
    "--cma",
    "name=a,size=8M",
    "--cma",
    "name=b,size=4M",
    "--cma-map",
    "*=a",
    "--quiet",
];

fn start(name: &str) -> ApiVmm {
    ApiVmm::start(vmm_bin!(), name, GUEST)
}

fn expect(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:#?}");
    if status >= 400 {
        let e = a.error();
        assert!(
            !e.is_empty() && !e.contains('\n'),
            "{what}: error line {a:#?}"
        );
    }
}

fn region<'a>(regions: &'a Value, name: &str) -> &'a Value {
    regions["regions"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no region {name} in {regions}"))
}

fn id_of(alloc: &Value) -> String {
    alloc["chunk"]["id"].as_str().expect("chunk id").to_string()
}

/// What the bad requests must leave alone: the chunks, each region's occupancy and
/// counters, and the grant state machine's counters.
fn state(vm: &ApiVmm) -> Value {
    let regions = vm.http("GET", "/regions", None).json;
    let regions: Vec<Value> = regions["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .map(|r| {
            json!([
                r["name"],
                r["used"],
                r["free"],
                r["largest_free"],
                r["chunks"],
                r["allocs_ok"],
                r["allocs_failed"],
                r["frees"],
                r["busy_retries"],
                r["compactions"]
            ])
        })
        .collect();
    let bitmaps: Vec<Value> = ["a", "b"]
        .iter()
        .map(|n| vm.http("GET", &format!("/regions/{n}"), None).json["bitmap"].clone())
        .collect();
    json!({
        "chunks": vm.http("GET", "/chunks", None).json,
        "regions": regions,
        "bitmaps": bitmaps,
        "grants": vm.http("GET", "/metrics", None).json["grants"],
    })
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn every_endpoint_round_trips_through_ctl_and_raw_http() {
    let mut vm = start("round-trip");
    let mode = std::fs::metadata(&vm.sock).expect("socket").mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    // The VM and its regions.
    let status = vm.ctl_ok(&["vm"]);
    assert_eq!(status["state"], "running");
    assert_eq!(status["milestones"]["populated"], true);
    assert_eq!(status["agent_version"], 1);
    assert_eq!(vm.http("GET", "/vm", None).json["memory"], 128 * M);
    let regions = vm.ctl_ok(&["regions"]);
    assert_eq!(regions["map"], json!(["*=a"]));
    assert_eq!(region(&regions, "a")["free"], 8 * M);
    assert!(
        region(&regions, "a").get("bitmap").is_none(),
        "no bitmap in the list"
    );
    let raw = vm.http("GET", "/regions", None);
    expect(&raw, 200, "GET /regions");
    assert_eq!(region(&raw.json, "b")["size"], 4 * M);
    let b = vm.ctl_ok(&["regions", "b"]);
    assert_eq!(
        b["bitmap"].as_str().map(str::len),
        Some(256),
        "1024 bits in hex"
    );
    expect(&vm.http("GET", "/regions/a", None), 200, "GET /regions/a");

    // Allocate: for a device through ctl, from a region list through raw HTTP.
    let first = vm.ctl_ok(&["alloc", "--device", "cam", "--size", "1M", "--align", "1M"]);
    let first_id = id_of(&first);
    assert_eq!(first["chunk"]["region"], "a");
    assert_eq!(first["chunk"]["len"], M);
    assert_eq!(first["chunk"]["gpa"].as_u64().expect("gpa") % M, 0);
    assert_eq!(first["chunk"]["mode"], "exclusive");
    assert_eq!(first["chunk"]["owner"], "api");
    assert!(first["pages_migrated"].as_u64() > Some(0), "{first}");
    let second = vm.http(
        "POST",
        "/chunks",
        Some(r#"{"regions": ["b"], "size": "256K", "mode": "shared", "pinned": false}"#),
    );
    expect(&second, 201, "POST /chunks");
    let second_id = id_of(&second.json);
    assert_eq!(second.json["chunk"]["region"], "b");
    assert_eq!(second.json["chunk"]["mode"], "shared");
    assert_eq!(second.json["chunk"]["pinned"], false);
    let b_base = second.json["chunk"]["gpa"].as_u64().expect("gpa");

    // Statistics moved.
    let regions = vm.ctl_ok(&["regions"]);
    assert_eq!(region(&regions, "a")["used"], M);
    assert_eq!(region(&regions, "b")["used"], 256 * K);
    assert_eq!(region(&regions, "a")["allocs_ok"], 1);
    let chunks = vm.ctl_ok(&["chunks"]);
    assert_eq!(chunks["chunks"].as_array().map(Vec::len), Some(2));
    // The occupancy picture of one region, then of all: the chunks drawn in their modes.
    let svg = std::env::temp_dir().join(format!("cma-api-occupancy-{}.svg", std::process::id()));
    let svg_arg = svg.to_str().expect("utf-8 path");
    for args in [
        &["regions", "a", "--svg", svg_arg][..],
        &["regions", "--svg", svg_arg],
    ] {
        assert_eq!(vm.ctl_ok(args)["name"].is_string(), args.len() == 4);
        let picture = std::fs::read_to_string(&svg).expect("the picture");
        assert!(picture.starts_with("<svg") || picture.starts_with("<?xml"));
        assert!(picture.contains("granted exclusive, pinned"), "legend");
        assert!(
            picture.contains("exclusive pinned 1 MiB"),
            "region a's chunk"
        );
        assert_eq!(
            picture.contains("shared movable 256 KiB"),
            args.len() == 3,
            "b's chunk"
        );
    }
    let _ = std::fs::remove_file(&svg);
    let one = vm.ctl_ok(&["chunk", &second_id]);
    assert_eq!(one["id"], second_id.as_str());
    expect(
        &vm.http("GET", &format!("/chunks/{first_id}"), None),
        200,
        "GET /chunks/{id}",
    );

    // Pin and unpin, both ways.
    assert_eq!(vm.ctl_ok(&["pin", &second_id])["pinned"], true);
    let unpinned = vm.http("PUT", &format!("/chunks/{second_id}/unpin"), None);
    expect(&unpinned, 200, "unpin");
    assert_eq!(unpinned.json["pinned"], false);
    let pinned = vm.http("PUT", &format!("/chunks/{second_id}/pin"), None);
    assert_eq!(pinned.json["pinned"], true);
    assert_eq!(vm.ctl_ok(&["unpin", &second_id])["pinned"], false);

    // Compaction: free the chunk at the bottom of `b`, so the unpinned one above it can
    // move down and the largest free run grows.
    let third = vm.ctl_ok(&["alloc", "--regions", "b", "--size", "64K", "--unpinned"]);
    let third_id = id_of(&third);
    assert_eq!(third["chunk"]["gpa"], b_base + 256 * K);
    assert_eq!(
        vm.ctl_ok(&["free", &second_id])["freed"],
        second_id.as_str()
    );
    let compacted = vm.ctl_ok(&["compact", "b"]);
    assert_eq!(compacted["chunks_moved"], 1, "{compacted}");
    assert_eq!(compacted["largest_free_after"], 4 * M - 64 * K);
    assert!(compacted["largest_free_before"].as_u64() < compacted["largest_free_after"].as_u64());
    assert_eq!(
        vm.ctl_ok(&["chunk", &third_id])["gpa"],
        b_base,
        "moved down"
    );
    let again = vm.http("POST", "/regions/b/compact", None);
    expect(&again, 200, "compact again");
    assert_eq!(again.json["chunks_moved"], 0);

    // Metrics, both ways.
    let m = vm.ctl_ok(&["metrics"]);
    assert_eq!(m["api"]["endpoints"]["post_chunks"]["requests_count"], 3);
    assert_eq!(m["api"]["endpoints"]["post_chunks"]["requests_fails"], 0);
    assert_eq!(m["api"]["endpoints"]["post_chunks"]["latency"]["count"], 3);
    assert!(m["api"]["api_requests_count"].as_u64() > Some(15), "{m}");
    assert_eq!(m["regions"]["a"]["alloc_count"], 1);
    assert_eq!(m["regions"]["b"]["alloc_count"], 2);
    assert_eq!(m["regions"]["b"]["free_count"], 1);
    assert_eq!(m["regions"]["b"]["compact_count"], 2);
    assert_eq!(m["regions"]["b"]["chunks_moved_count"], 1);
    assert_eq!(m["regions"]["a"]["alloc_latency"]["count"], 1);
    assert_eq!(m["grants"]["grant_count"], 3);
    assert!(m["agent"]["requests_count"].as_u64() >= Some(4), "{m}");
    assert!(m["vcpu"]["exits_count"].as_u64() > Some(0), "{m}");
    let raw = vm.http("GET", "/metrics", None);
    expect(&raw, 200, "GET /metrics");
    assert_eq!(raw.json["grants"]["grant_count"], 3);

    // The same metrics for Prometheus: by path, by Accept header, through ctl.
    let accept = |a: &str| {
        vm.exchange(
            format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: {a}\r\n\r\n").as_bytes(),
        )
    };
    let scraped = accept("text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
    expect(&scraped, 200, "GET /metrics, Accept: text/plain");
    assert!(
        scraped
            .head
            .contains("Content-Type: text/plain; version=0.0.4"),
        "{scraped:#?}"
    );
    let e = cma_tests::prometheus::parse(&scraped.body);
    assert_eq!(
        e.value("cma_region_allocations_total", &[("region", "b")]),
        Some(2.0)
    );
    assert_eq!(
        e.value("cma_region_moved_chunks_total", &[("region", "b")]),
        Some(1.0)
    );
    assert_eq!(e.value("cma_grants_total", &[]), Some(3.0));
    assert_eq!(
        e.value(
            "cma_region_allocation_duration_seconds_count",
            &[("region", "a")]
        ),
        Some(1.0)
    );
    let json_too = accept("application/json, text/plain");
    assert_eq!(
        json_too.json["grants"]["grant_count"], 3,
        "JSON when both are named"
    );
    let by_path = vm.http("GET", "/metrics/prometheus", None);
    expect(&by_path, 200, "GET /metrics/prometheus");
    cma_tests::prometheus::parse(&by_path.body);
    let through_ctl = vm.ctl(&["metrics", "--prometheus"]);
    assert_eq!(through_ctl.code, Some(0), "{through_ctl:#?}");
    let e = cma_tests::prometheus::parse(&through_ctl.stdout);
    assert!(
        e.value(
            "cma_api_requests_total",
            &[("endpoint", "get_metrics_prometheus")]
        ) >= Some(1.0)
    );

    // What ctl shows on a terminal, from the same answers (a pipe gets the JSON above).
    let table = vmm::ctl::table::render(&vmm::cli::CtlCommand::Regions(None), &regions)
        .expect("a table of regions");
    assert!(table.starts_with("ID  NAME"), "{table}");
    assert!(table.contains("lent"), "{table}");
    let chunks = vm.ctl_ok(&["chunks"]);
    let table =
        vmm::ctl::table::render(&vmm::cli::CtlCommand::Chunks, &chunks).expect("a table of chunks");
    assert!(table.contains(&format!("{b_base:#x}")), "{table}");
    assert!(table.contains("64 KiB"), "{table}");

    // Free the rest, one each way: the memory goes back.
    assert_eq!(vm.ctl_ok(&["free", &first_id])["freed"], first_id.as_str());
    expect(
        &vm.http("DELETE", &format!("/chunks/{third_id}"), None),
        200,
        "DELETE /chunks/{id}",
    );
    let regions = vm.ctl_ok(&["regions"]);
    for name in ["a", "b"] {
        assert_eq!(region(&regions, name)["used"], 0, "{name}");
        assert_eq!(region(&regions, name)["chunks"], 0, "{name}");
    }
    assert_eq!(vm.ctl_ok(&["chunks"])["chunks"], json!([]));

    // Every guest page intact, from the host, both ways.
    let verified = vm.ctl_ok(&["verify"]);
    assert_eq!(verified["errors"], 0, "{verified}");
    assert!(
        verified["pages_checked"].as_u64() > Some(2000),
        "{verified}"
    );
    expect(&vm.http("POST", "/vm/verify", None), 200, "POST /vm/verify");

    // The metrics file follows (rewritten every second).
    let until = Instant::now() + Duration::from_secs(10);
    while vm.metrics_file()["regions"]["a"]["free_count"] != 1 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(vm.metrics_file()["regions"]["a"]["free_count"], 1);

    // Shutdown: the guest checks its pages and exits 0; the socket goes away.
    assert_eq!(vm.ctl_ok(&["shutdown"])["shutdown"], "requested");
    let run = vm.finish(DEADLINE);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(!vm.sock.exists(), "socket removed");
    let last = vm.metrics_file();
    assert_eq!(
        last["api"]["endpoints"]["post_vm_shutdown"]["requests_count"],
        1
    );
    assert_eq!(last["grants"]["free_count"], 3);
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn bad_requests_get_their_status_and_change_nothing() {
    let mut vm = start("bad");
    // A client that connects and sends nothing holds one connection, not the server.
    let sock = vm.sock.clone();
    let idle = std::thread::spawn(move || {
        let started = Instant::now();
        (cma_tests::api::exchange(&sock, b""), started.elapsed())
    });

    // One live chunk, and one freed, so that the double free below is a real one.
    let kept = vm.http(
        "POST",
        "/chunks",
        Some(r#"{"device": "cam", "size": "128K"}"#),
    );
    expect(&kept, 201, "alloc");
    let kept_id = id_of(&kept.json);
    let gone = vm.http(
        "POST",
        "/chunks",
        Some(r#"{"regions": ["b"], "size": 4096}"#),
    );
    let gone_id = id_of(&gone.json);
    expect(
        &vm.http("DELETE", &format!("/chunks/{gone_id}"), None),
        200,
        "free",
    );
    let before = state(&vm);
    let fails_before = vm.http("GET", "/metrics", None).json["api"]["api_requests_fails"]
        .as_u64()
        .expect("fails");

    let post = |body: &str| vm.http("POST", "/chunks", Some(body));
    let cases: Vec<(Answer, u16, &str)> = vec![
        (post(r#"{"device": "cam", "size": "#), 400, "malformed JSON"),
        (post("not json"), 400, "not JSON"),
        (
            post(r#"{"device": "cam", "size": 4096, "colour": "red"}"#),
            400,
            "unknown field",
        ),
        (post(r#"{"device": "cam"}"#), 400, "missing size"),
        (post(r#"{"size": 4096}"#), 400, "no target"),
        (post(r#"{"device": "cam", "size": 0}"#), 400, "zero size"),
        (
            post(r#"{"device": "cam", "size": "64G"}"#),
            400,
            "larger than any region",
        ),
        (
            post(r#"{"device": "cam", "size": 18446744073709551615}"#),
            400,
            "u64::MAX",
        ),
        (
            post(r#"{"device": "cam", "size": -4096}"#),
            400,
            "negative size",
        ),
        (
            post(r#"{"device": "cam", "size": 4096, "align": 12288}"#),
            400,
            "bad alignment",
        ),
        (
            post(r#"{"device": "cam", "size": 4096, "align": "64K", "offset": "64K"}"#),
            400,
            "offset",
        ),
        (
            post(r#"{"regions": ["nope"], "size": 4096}"#),
            400,
            "unknown region in a body",
        ),
        (
            post(r#"{"device": "cam", "size": 4096, "mode": "loud"}"#),
            400,
            "bad mode",
        ),
        (
            vm.http("POST", "/regions/nope/compact", None),
            404,
            "compact an unknown region",
        ),
        (vm.http("GET", "/regions/nope", None), 404, "unknown region"),
        (
            vm.http("DELETE", "/chunks/cma1:0:999999", None),
            404,
            "unknown chunk",
        ),
        (
            vm.http("PUT", "/chunks/cma1:0:999999/pin", None),
            404,
            "pin an unknown chunk",
        ),
        (
            vm.http("GET", "/chunks/cma1:0:999999", None),
            404,
            "get an unknown chunk",
        ),
        (
            vm.http("DELETE", "/chunks/cma999:0:1", None),
            404,
            "another instance's chunk",
        ),
        (
            vm.http("DELETE", &format!("/chunks/{gone_id}"), None),
            404,
            "double free",
        ),
        (
            vm.http("DELETE", "/chunks/garbage", None),
            400,
            "id of the wrong form",
        ),
        (
            vm.http("DELETE", "/chunks/cma1:0", None),
            400,
            "id of the wrong form",
        ),
        (
            vm.http("PUT", "/chunks/-1/unpin", None),
            400,
            "id of the wrong form",
        ),
        (
            vm.http("GET", "/regions", Some(r#"{"x": 1}"#)),
            400,
            "a body where none belongs",
        ),
        (vm.http("PUT", "/chunks", None), 405, "wrong method"),
        (vm.http("FLY", "/metrics", None), 405, "unknown method"),
        (vm.http("GET", "/nowhere", None), 404, "unknown path"),
        (
            vm.exchange(b"POST /chunks HTTP/1.1\r\n\r\n{\"device\": \"cam\", \"size\": 4096}"),
            411,
            "no Content-Length",
        ),
        (
            vm.exchange(
                format!(
                    "POST /chunks HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
                    1 << 20,
                    " ".repeat(1 << 20)
                )
                .as_bytes(),
            ),
            413,
            "oversized body",
        ),
        (
            vm.exchange(
                format!("GET /vm HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000)).as_bytes(),
            ),
            431,
            "oversized headers",
        ),
        (
            vm.exchange(b"POST /chunks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            501,
            "chunked body",
        ),
        (vm.exchange(b"GET /vm HTTP/2.0\r\n\r\n"), 505, "HTTP/2"),
        (vm.exchange(b"hello\r\n\r\n"), 400, "not HTTP"),
    ];
    for (answer, status, what) in &cases {
        expect(answer, *status, what);
    }
    let wrong = vm.http("PATCH", "/chunks", None);
    assert!(wrong.head.contains("\r\nAllow: GET, POST"), "{wrong:#?}");

    // The same through ctl: exit status 1, the status and error on one stderr line.
    for (args, needle) in [
        (
            &["free", "garbage"][..],
            "400 Bad Request: malformed chunk id",
        ),
        (&["free", "cma1:0:999999"][..], "404 Not Found"),
        (&["pin", "cma1:0:999999"][..], "404 Not Found"),
        (&["free", &gone_id][..], "404 Not Found"),
        (&["compact", "nope"][..], "404 Not Found"),
        (&["regions", "nope"][..], "404 Not Found"),
        (
            &["alloc", "--device", "cam", "--size", "64G"][..],
            "400 Bad Request",
        ),
        (
            &["alloc", "--regions", "nope", "--size", "4K"][..],
            "unknown CMA region 'nope'",
        ),
        (
            &["alloc", "--device", "cam", "--size", "4K", "--align", "3"][..],
            "power of two",
        ),
    ] {
        let run = vm.ctl(args);
        assert_eq!(run.code, Some(1), "ctl {args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "ctl {args:?}: {run:#?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "ctl {args:?}: {run:#?}");
        assert!(
            lines[0].contains(needle),
            "ctl {args:?}: {:?} lacks {needle:?}",
            lines[0]
        );
    }

    // Nothing changed, and the kept chunk is where it was.
    assert_eq!(state(&vm), before);
    let chunk = vm.http("GET", &format!("/chunks/{kept_id}"), None);
    assert_eq!(chunk.json["gpa"], kept.json["chunk"]["gpa"]);
    let fails = vm.http("GET", "/metrics", None).json["api"]["api_requests_fails"]
        .as_u64()
        .expect("fails");
    assert!(
        fails >= fails_before + cases.len() as u64 + 9,
        "{fails} fails counted"
    );

    let (answer, waited) = idle.join().expect("idle client");
    expect(&answer, 408, "idle client");
    assert!(
        waited >= Duration::from_secs(4),
        "timed out after {waited:?}"
    );

    expect(
        &vm.http("DELETE", &format!("/chunks/{kept_id}"), None),
        200,
        "free",
    );
    let verified = vm.http("POST", "/vm/verify", None);
    assert_eq!(verified.json["errors"], 0, "{verified:#?}");
    vm.ctl_ok(&["shutdown"]);
    let run = vm.finish(DEADLINE);
    assert_eq!(run.code, Some(0), "{run:#?}");
}

/// SIGINT and SIGTERM stop a run cleanly: the chunk the API holds is freed (zeroed, given
/// back), statistics are printed (`--stats`), the metrics written a last time, the
/// socket removed, and the exit status is 128 + the signal (130, 143).
fn a_signal_is_a_clean_stop(signal: &str, name: &str, code: i32) {
    let mut args = GUEST.to_vec();
    args.push("--stats");
    let mut vm = ApiVmm::start(vmm_bin!(), &format!("sig{signal}"), &args);
    let alloc = vm.ctl_ok(&["alloc", "--regions", "a,b", "--size", "512K"]);
    assert_eq!(alloc["chunk"]["region"], "a");
    vm.signal(signal);
    let run = vm.finish(DEADLINE);
    assert_eq!(run.code, Some(code), "{run:#?}");
    assert!(
        run.stderr.contains(&format!(
            "{name}: evictions cancelled, 1 API chunk(s) freed and zeroed"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("stopped by {name}: exit status {code}")),
        "{}",
        run.stderr
    );
    // --stats: the region's line, with the allocation and its free counted.
    let stats = run
        .stdout
        .lines()
        .find(|l| l.starts_with("cma-vmm: region a "))
        .unwrap_or_else(|| panic!("no statistics: {}", run.stdout));
    assert!(
        stats.contains("used     0") && stats.contains("allocs 1 ok"),
        "{stats}"
    );
    assert!(!vm.sock.exists(), "socket removed");
    let last = vm.metrics_file();
    assert_eq!(
        last["api"]["endpoints"]["post_chunks"]["requests_count"], 1,
        "{last}"
    );
    assert_eq!(last["regions"]["a"]["used_bytes"], 0, "{last}");
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn sigterm_is_a_clean_stop() {
    a_signal_is_a_clean_stop("TERM", "SIGTERM", 143);
}

#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn sigint_is_a_clean_stop() {
    a_signal_is_a_clean_stop("INT", "SIGINT", 130);
}

/// A VM whose guest answers every eviction `delay_ms` late, and a thread allocating 64K
/// from it through the API (its answer comes when the thread ends).
fn allocating_from_a_slow_guest(
    name: &str,
    delay_ms: &str,
    evict_timeout_ms: &str,
) -> (ApiVmm, std::thread::JoinHandle<Answer>) {
    let guest_args = format!("agent.mode=slow agent.delay_ms={delay_ms}");
    let mut args = GUEST.to_vec();
    args.extend_from_slice(&[
        "--guest-args",
        &guest_args,
        "--evict-timeout",
        evict_timeout_ms,
    ]);
    let vm = ApiVmm::start(vmm_bin!(), name, &args);
    let sock = vm.sock.clone();
    let alloc = std::thread::spawn(move || {
        cma_tests::api::http(
            &sock,
            "POST",
            "/chunks",
            Some(r#"{"device": "cam", "size": "64K"}"#),
        )
    });
    (vm, alloc)
}

/// A signal during an allocation cancels the eviction under way at once, rather than
/// after the guest's answer or the eviction deadline.
#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_signal_cancels_an_eviction_under_way() {
    let (mut vm, alloc) = allocating_from_a_slow_guest("sigevict", "20000", "60000");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    vm.signal("INT");
    let run = vm.finish(DEADLINE);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(run.code, Some(130), "{run:#?}");
    assert!(!vm.sock.exists(), "socket removed");
    let answer = alloc.join().expect("alloc");
    assert_ne!(answer.status, 201, "{answer:#?}");
}

/// An allocation waits for a slow guest; other requests do not wait for it.
#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_slow_allocation_does_not_block_the_api() {
    let started = Instant::now();
    let (mut vm, alloc) = allocating_from_a_slow_guest("slow", "2000", "10000");
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/vm", "/metrics", "/regions", "/chunks"] {
        let t = Instant::now();
        expect(&vm.http("GET", path, None), 200, path);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{path} took {:?}",
            t.elapsed()
        );
    }
    let alloc = alloc.join().expect("alloc");
    expect(&alloc, 201, "slow alloc");
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    vm.signal("INT");
    let run = vm.finish(DEADLINE);
    assert_eq!(run.code, Some(130), "{run:#?}");
    assert!(run.stderr.contains("stopped by SIGINT"), "{}", run.stderr);
    assert!(!vm.sock.exists(), "socket removed");
}

/// `--timeout` ends an API run like any other (status 2), removing the socket; `ctl wait`
/// gives up on a guest that never populates.
#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn timeout_ends_an_api_run() {
    require_kvm();
    let mut args = GUEST.to_vec();
    args.extend_from_slice(&["--guest-args", "mode=hang", "--timeout", "4"]);
    let mut vm = ApiVmm::spawn(vmm_bin!(), "timeout", &args);
    let wait = vm.ctl(&["wait", "--timeout", "1.5"]);
    assert_eq!(wait.code, Some(1), "{wait:#?}");
    assert!(wait.stderr.contains("timed out"), "{}", wait.stderr);
    let status = vm.ctl_ok(&["vm"]);
    assert_eq!(status["state"], "running");
    assert_eq!(status["milestones"]["populated"], false);
    let run = vm.finish(DEADLINE);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("stopped after the timeout"),
        "{}",
        run.stderr
    );
    assert!(!vm.sock.exists(), "socket removed");
    assert!(vm.metrics_file()["api"]["api_requests_count"].as_u64() >= Some(1));
}

/// An existing path is never replaced (checked before the VM is built: no KVM needed).
#[test]
fn an_existing_socket_path_is_refused() {
    let dir = std::env::temp_dir().join(format!("cma-api-exists-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("taken");
    std::fs::write(&file, "someone's file").expect("write");
    let live = dir.join("live.sock");
    let listener = std::os::unix::net::UnixListener::bind(&live).expect("bind");
    for path in [&file, &live] {
        let p = path.to_str().expect("utf-8");
        let run = run_vmm(vmm_bin!(), &["run", "--api-sock", p], DEADLINE);
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(run.stdout.is_empty(), "a guest started: {run:#?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{run:#?}");
        assert!(lines[0].contains("already exists"), "{}", lines[0]);
    }
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        "someone's file"
    );
    std::os::unix::net::UnixStream::connect(&live).expect("the live socket still works");
    drop(listener);
    let run = run_vmm(
        vmm_bin!(),
        &["run", "--metrics-path", "/nonexistent/dir/metrics.json"],
        DEADLINE,
    );
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr.contains("/nonexistent/dir/metrics.json"),
        "{}",
        run.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A device model's chunks are listed, counted in the metrics, and not the API's to free,
/// pin or unpin.
#[test]
#[cfg_attr(skip_kvm, ignore = "CMA_SKIP_KVM_TESTS=1")]
fn a_device_models_chunks_are_not_the_apis() {
    require_kvm();
    let dir = std::env::temp_dir().join(format!("cma-api-device-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("vm.toml");
    std::fs::write(
        &config,
        r#"
        memory = "128M"
        cma_map = "capture0=a;*=b"
        capture = ["capture0"]
        guest_args = "capture.frames=100000000 capture.buffers=2"
        [[cma]]
        name = "a"
        size = "8M"
        [[cma]]
        name = "b"
        size = "4M"
        "#,
    )
    .expect("write the configuration");
    let path = config.to_str().expect("utf-8");
    let mut vm = ApiVmm::start(vmm_bin!(), "device", &["--config", path, "--quiet"]);
    let until = Instant::now() + DEADLINE;
    let chunk = loop {
        let chunks = vm.http("GET", "/chunks", None).json;
        if let Some(c) = chunks["chunks"].as_array().and_then(|c| c.first()) {
            break c.clone();
        }
        assert!(Instant::now() < until, "the device allocated nothing");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(chunk["owner"], "device", "{chunk}");
    assert_eq!(chunk["region"], "a");
    assert_eq!(chunk["mode"], "shared");
    let id = chunk["id"].as_str().expect("id");
    expect(
        &vm.http("DELETE", &format!("/chunks/{id}"), None),
        403,
        "free",
    );
    expect(
        &vm.http("PUT", &format!("/chunks/{id}/unpin"), None),
        403,
        "unpin",
    );
    let run = vm.ctl(&["pin", id]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("403 Forbidden"), "{}", run.stderr);
    assert_eq!(vm.http("GET", &format!("/chunks/{id}"), None).json, chunk);
    // The API allocates beside the device, from the region the map rules give it.
    let own = vm.ctl_ok(&["alloc", "--device", "other", "--size", "64K"]);
    assert_eq!(own["chunk"]["region"], "b");
    let m = vm.ctl_ok(&["metrics"]);
    assert_eq!(m["devices"]["capture0"]["start_count"], 1, "{m}");
    vm.signal("TERM");
    let run = vm.finish(DEADLINE);
    assert_eq!(run.code, Some(143), "{run:#?}");
    assert!(!vm.sock.exists(), "socket removed");
    let _ = std::fs::remove_dir_all(dir);
}
