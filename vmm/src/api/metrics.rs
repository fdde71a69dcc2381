//! Metrics in Firecracker's naming: `*_count` for events, `*_fails` for failures, latency
//! summaries (`count`, `min_ns`, `mean_ns`, `p50_ns`, `p99_ns`, `max_ns`) per operation.
//!
//! One JSON document, served by `GET /metrics` and written by [`MetricsWriter`] to
//! `--metrics-path` every second and at exit (to a temporary file, then renamed, so a
//! reader always sees a whole document):
//!
//! ```text
//!  { "timestamp_ms", "uptime_ms",
//!    "api":     { "api_requests_count", "api_requests_fails",
//!                 "endpoints": { "<endpoint>": { "requests_count", "requests_fails", "latency" } } },
//!    "regions": { "<name>": { "alloc_count", "alloc_fails", "free_count", "busy_retries", ...,
//!                             "alloc_latency", "free_latency", "search_latency" } },
//!    "grants":  { "grant_count", "grant_fails", "free_count", "evict_count", ... },
//!    "agent":   { "requests_count", "answers_count", "timeouts_count", ... },
//!    "vcpu":    { "exits_count", "pio_exits_count", "mmio_exits_count", ... },
//!    "devices": { "<name>": { "start_count", "start_fails", "frame_count", ... } } }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use super::routes::Endpoint;
use crate::devices::legacy::platform::monotonic_ns;
use crate::devices::virtio::agent::channel::AgentMetrics;
use crate::devices::virtio::capture::CaptureMetrics;
use crate::grant::{GrantManager, GrantMetrics};
use crate::machine::RunningVmm;
use crate::sync::lock;
use crate::vstate::vcpu::ExitCounters;
use cma::LatencyHistogram;
use cma::{LatencySummary, RegionStats};

/// How often `--metrics-path` is rewritten.
pub const METRICS_PERIOD: Duration = Duration::from_secs(1);

/// Counters of one endpoint.
#[derive(Debug, Default)]
struct EndpointCounters {
    requests: AtomicU64,
    fails: AtomicU64,
    latency: Mutex<LatencyHistogram>,
}

/// The API server's counters: requests and failures (non-2xx answers) per endpoint, and
/// their latency from the request's arrival to the response.
#[derive(Debug)]
pub struct ApiMetrics {
    endpoints: Vec<EndpointCounters>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            endpoints: Endpoint::ALL
                .iter()
                .map(|_| EndpointCounters::default())
                .collect(),
        }
    }
}

impl ApiMetrics {
    /// Count one request to `endpoint`, answered with `status` after `elapsed`.
    pub fn record(&self, endpoint: Endpoint, status: u16, elapsed: Duration) {
        let Some(c) = self.endpoints.get(endpoint.index()) else {
            return;
        };
        c.requests.fetch_add(1, Ordering::Relaxed);
        if !(200..300).contains(&status) {
            c.fails.fetch_add(1, Ordering::Relaxed);
        }
        lock(&c.latency).record(elapsed);
    }

    /// The API section of the document.
    pub fn snapshot(&self) -> ApiSection {
        let mut section = ApiSection::default();
        for (e, c) in Endpoint::ALL.iter().zip(&self.endpoints) {
            let m = EndpointSection {
                requests_count: c.requests.load(Ordering::Relaxed),
                requests_fails: c.fails.load(Ordering::Relaxed),
                latency: lock(&c.latency).summary(),
            };
            section.api_requests_count += m.requests_count;
            section.api_requests_fails += m.requests_fails;
            section.endpoints.insert(e.name(), m);
        }
        section
    }
}

/// `api` in the document.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ApiSection {
    /// Requests answered (parsed or not).
    pub api_requests_count: u64,
    /// Requests answered with a status other than 2xx.
    pub api_requests_fails: u64,
    /// Per endpoint (`other`: requests that reached none).
    pub endpoints: BTreeMap<&'static str, EndpointSection>,
}

/// One endpoint in the document.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EndpointSection {
    /// Requests.
    pub requests_count: u64,
    /// Requests not answered 2xx.
    pub requests_fails: u64,
    /// From arrival to response.
    pub latency: LatencySummary,
}

/// One region in the document (from the allocator's [`RegionStats`]).
#[derive(Debug, Clone, Serialize)]
pub struct RegionSection {
    /// Allocations granted.
    pub alloc_count: u64,
    /// Allocations that failed in this region.
    pub alloc_fails: u64,
    /// Chunks freed.
    pub free_count: u64,
    /// Candidates the guest reported busy.
    pub busy_retries: u64,
    /// Pages the guest migrated for claims here.
    pub pages_migrated: u64,
    /// Compactions run.
    pub compact_count: u64,
    /// Chunks moved by compaction.
    pub chunks_moved_count: u64,
    /// Moves abandoned.
    pub move_fails: u64,
    /// Live chunks.
    pub chunks: u64,
    /// Bytes taken.
    pub used_bytes: u64,
    /// Bytes free.
    pub free_bytes: u64,
    /// Largest free run.
    pub largest_free_bytes: u64,
    /// Allocation, claim included.
    pub alloc_latency: LatencySummary,
    /// Free, release included.
    pub free_latency: LatencySummary,
    /// The allocation decision (bitmap search and marking).
    pub search_latency: LatencySummary,
}

impl From<&RegionStats> for RegionSection {
    fn from(s: &RegionStats) -> Self {
        RegionSection {
            alloc_count: s.allocs_ok,
            alloc_fails: s.allocs_failed,
            free_count: s.frees,
            busy_retries: s.busy_retries,
            pages_migrated: s.pages_migrated,
            compact_count: s.compactions,
            chunks_moved_count: s.chunks_moved,
            move_fails: s.moves_failed,
            chunks: s.chunks,
            used_bytes: s.used,
            free_bytes: s.free,
            largest_free_bytes: s.largest_free,
            alloc_latency: s.alloc_latency,
            free_latency: s.free_latency,
            search_latency: s.search_latency,
        }
    }
}

/// `grants` in the document (the allocation state machine).
#[derive(Debug, Clone, Serialize)]
pub struct GrantSection {
    /// Chunks granted.
    pub grant_count: u64,
    /// Allocations that failed.
    pub grant_fails: u64,
    /// Chunks freed.
    pub free_count: u64,
    /// Evictions the guest completed.
    pub evict_count: u64,
    /// Evictions that failed (timeout, guest error, revocation).
    pub evict_fails: u64,
    /// Candidates the guest reported busy.
    pub busy_count: u64,
    /// Returns the guest did not acknowledge.
    pub return_fails: u64,
    /// Pages the guest migrated for grants.
    pub pages_migrated: u64,
    /// Evictions that waited for a host-side check of the guest's pages (`verify`).
    pub evict_held_count: u64,
}

impl From<&GrantMetrics> for GrantSection {
    fn from(m: &GrantMetrics) -> Self {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GrantSection {
            grant_count: get(&m.grants),
            grant_fails: get(&m.grant_fails),
            free_count: get(&m.frees),
            evict_count: get(&m.evictions),
            evict_fails: get(&m.eviction_fails),
            busy_count: get(&m.busy),
            return_fails: get(&m.return_fails),
            pages_migrated: get(&m.pages_migrated),
            evict_held_count: get(&m.evictions_held),
        }
    }
}

/// `agent` in the document (the agent channel).
#[derive(Debug, Clone, Serialize)]
pub struct AgentSection {
    /// Requests written to the guest.
    pub requests_count: u64,
    /// Answers matched to a waiting request.
    pub answers_count: u64,
    /// Answers to no waiting request.
    pub unsolicited_answers_count: u64,
    /// Messages that did not decode.
    pub bad_messages_count: u64,
    /// Malformed descriptor chains.
    pub bad_descriptors_count: u64,
    /// Requests that timed out.
    pub timeouts_count: u64,
    /// Pages the VMM copied for the guest.
    pub pages_copied: u64,
    /// Migration pairs refused.
    pub pairs_refused_count: u64,
    /// Hello messages.
    pub hello_count: u64,
}

impl From<&AgentMetrics> for AgentSection {
    fn from(m: &AgentMetrics) -> Self {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentSection {
            requests_count: get(&m.requests_sent),
            answers_count: get(&m.answers),
            unsolicited_answers_count: get(&m.unsolicited_answers),
            bad_messages_count: get(&m.bad_messages),
            bad_descriptors_count: get(&m.bad_descriptors),
            timeouts_count: get(&m.timeouts),
            pages_copied: get(&m.pages_copied),
            pairs_refused_count: get(&m.pairs_refused),
            hello_count: get(&m.hellos),
        }
    }
}

/// `vcpu` in the document (exits to the VMM, all vCPUs).
#[derive(Debug, Clone, Serialize)]
pub struct VcpuSection {
    /// Every exit to user space.
    pub exits_count: u64,
    /// Port I/O.
    pub pio_exits_count: u64,
    /// MMIO to device registers.
    pub mmio_exits_count: u64,
    /// RAM accesses completed by the VMM during a slot change.
    pub ram_emulated_count: u64,
    /// Guest accesses to exclusively granted ranges, refused.
    pub revoked_refused_count: u64,
    /// MMIO nothing claims.
    pub unclaimed_mmio_count: u64,
    /// Signal-induced exits (pause, stop).
    pub interrupted_count: u64,
}

impl From<&ExitCounters> for VcpuSection {
    fn from(m: &ExitCounters) -> Self {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VcpuSection {
            exits_count: get(&m.total),
            pio_exits_count: get(&m.pio),
            mmio_exits_count: get(&m.mmio),
            ram_emulated_count: get(&m.ram_emulated),
            revoked_refused_count: get(&m.revoked_refused),
            unclaimed_mmio_count: get(&m.unclaimed),
            interrupted_count: get(&m.interrupted),
        }
    }
}

/// The whole document.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsDocument {
    /// Wall clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Since the VMM started building the VM.
    pub uptime_ms: u64,
    /// The control API.
    pub api: ApiSection,
    /// Per region, by name.
    pub regions: BTreeMap<String, RegionSection>,
    /// The allocation state machine.
    pub grants: GrantSection,
    /// The agent channel.
    pub agent: AgentSection,
    /// vCPU exits.
    pub vcpu: VcpuSection,
    /// Device models' own counters, by device name.
    pub devices: BTreeMap<String, serde_json::Value>,
}

/// What the document is made from: shared handles only, so it can be collected on any
/// thread while the VM runs.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    grants: Arc<GrantManager>,
    exits: Arc<ExitCounters>,
    api: Arc<ApiMetrics>,
    devices: Vec<(String, Arc<CaptureMetrics>)>,
    vmm_start_ns: u64,
}

impl MetricsSource {
    /// The metrics of `vm`, with the API's counters `api`.
    pub fn new(vm: &RunningVmm, api: Arc<ApiMetrics>) -> Self {
        MetricsSource {
            grants: vm.grants().clone(),
            exits: vm.exits().clone(),
            api,
            devices: vm.capture_metrics().to_vec(),
            vmm_start_ns: vm.boot_times().vmm_start,
        }
    }

    /// The API's counters.
    pub fn api(&self) -> &Arc<ApiMetrics> {
        &self.api
    }

    /// The document, now.
    pub fn collect(&self) -> MetricsDocument {
        let mut doc = document(
            &self.api,
            &self.grants.cma().stats(),
            &self.grants.metrics,
            &self.grants.agent().shared().metrics,
            &self.exits,
            monotonic_ns().saturating_sub(self.vmm_start_ns) / 1_000_000,
        );
        for (name, m) in &self.devices {
            let counters = serde_json::to_value(&**m).unwrap_or_default();
            doc.devices.insert(name.clone(), counters);
        }
        doc
    }
}

/// Assemble the document from its parts.
pub fn document(
    api: &ApiMetrics,
    regions: &[RegionStats],
    grants: &GrantMetrics,
    agent: &AgentMetrics,
    exits: &ExitCounters,
    uptime_ms: u64,
) -> MetricsDocument {
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    MetricsDocument {
        timestamp_ms,
        uptime_ms,
        api: api.snapshot(),
        regions: regions
            .iter()
            .map(|s| (s.name.clone(), RegionSection::from(s)))
            .collect(),
        grants: grants.into(),
        agent: agent.into(),
        vcpu: exits.into(),
        devices: BTreeMap::new(),
    }
}

/// Errors of the metrics file.
#[derive(Debug, thiserror::Error)]
#[error("metrics file {path}: {source}")]
pub struct MetricsFileError {
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

/// Write `value` to `path` atomically: a temporary file next to it, then a rename.
pub fn write_atomic(path: &Path, value: &impl Serialize) -> Result<(), MetricsFileError> {
    let err = |source| MetricsFileError {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| err(e.into()))?;
    text.push(b'\n');
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// `dir/.name.tmp`: same directory (same file system, so the rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Check that `path` can be written (before the VM boots), leaving nothing behind but
/// what was there.
pub fn check_writable(path: &Path) -> Result<(), MetricsFileError> {
    let tmp = temp_path(path);
    std::fs::File::create(&tmp)
        .map(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .map_err(|source| MetricsFileError {
            path: path.to_path_buf(),
            source,
        })
}

/// A thread rewriting the metrics file every period, and once more when stopped.
pub struct MetricsWriter {
    stop: Arc<EventFd>,
    handle: JoinHandle<()>,
}

impl MetricsWriter {
    /// Write `collect()` to `path` now, then every `period` until [`MetricsWriter::stop`].
    /// A failed write is reported on stderr once; later writes are still tried.
    pub fn spawn<T: Serialize>(
        path: PathBuf,
        period: Duration,
        collect: impl Fn() -> T + Send + 'static,
    ) -> std::io::Result<MetricsWriter> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("cma-metrics".into())
            .spawn(move || {
                let mut reported = false;
                loop {
                    let next = Instant::now() + period;
                    if let Err(e) = write_atomic(&path, &collect())
                        && !std::mem::replace(&mut reported, true)
                    {
                        eprintln!("cma-vmm: {e}");
                    }
                    if super::server::wait_readable(&stopped, next) {
                        let _ = write_atomic(&path, &collect());
                        return;
                    }
                }
            })?;
        Ok(MetricsWriter { stop, handle })
    }

    /// Write the file a last time and stop.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_firecracker_style_names() {
        let api = ApiMetrics::default();
        api.record(Endpoint::PostChunks, 201, Duration::from_micros(300));
        api.record(Endpoint::PostChunks, 409, Duration::from_micros(100));
        api.record(Endpoint::Other, 400, Duration::from_micros(5));
        let grants = GrantMetrics::default();
        grants.grants.store(3, Ordering::Relaxed);
        let exits = ExitCounters::default();
        exits.total.store(7, Ordering::Relaxed);
        let doc = document(&api, &[], &grants, &AgentMetrics::default(), &exits, 42);
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["api"]["api_requests_count"], 3);
        assert_eq!(v["api"]["api_requests_fails"], 2);
        let post = &v["api"]["endpoints"]["post_chunks"];
        assert_eq!(post["requests_count"], 2);
        assert_eq!(post["requests_fails"], 1);
        assert_eq!(post["latency"]["count"], 2);
        assert_eq!(post["latency"]["max_ns"], 300_000);
        assert_eq!(v["api"]["endpoints"]["get_metrics"]["requests_count"], 0);
        assert_eq!(v["grants"]["grant_count"], 3);
        assert_eq!(v["vcpu"]["exits_count"], 7);
        assert_eq!(v["agent"]["timeouts_count"], 0);
        assert_eq!(v["uptime_ms"], 42);
        assert!(v["timestamp_ms"].as_u64().unwrap() > 0);
    }

    #[test]
    fn region_sections_come_from_the_allocator() {
        use crate::config::RegionSpec;
        use cma::Cma;
        let spec = RegionSpec {
            id: 0,
            name: "video".into(),
            base: 0x100_0000,
            size: 4 << 20,
            private: false,
            order_per_bit: 0,
        };
        let cma = Cma::new(&[spec], &[]).unwrap();
        let doc = document(
            &ApiMetrics::default(),
            &cma.stats(),
            &GrantMetrics::default(),
            &AgentMetrics::default(),
            &ExitCounters::default(),
            0,
        );
        let v = serde_json::to_value(&doc).unwrap();
        let video = &v["regions"]["video"];
        assert_eq!(video["free_bytes"], 4 << 20);
        assert_eq!(video["alloc_count"], 0);
        assert_eq!(video["alloc_latency"]["count"], 0);
        assert!(video.get("bitmap").is_none());
    }

    #[test]
    fn the_file_is_rewritten_whole_and_finally_at_stop() {
        let dir = std::env::temp_dir().join(format!("cma-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.json");
        check_writable(&path).unwrap();
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "nothing left"
        );
        assert!(check_writable(&dir.join("missing/m.json")).is_err());
        let n = Arc::new(AtomicU64::new(0));
        let counter = n.clone();
        let writer = MetricsWriter::spawn(
            path.clone(),
            Duration::from_millis(20),
            move || serde_json::json!({ "n": counter.fetch_add(1, Ordering::SeqCst) }),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(v["n"].as_u64().unwrap() >= 2, "{v}");
        writer.stop();
        let last = n.load(Ordering::SeqCst) - 1;
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["n"], last, "the final write is the last one");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
