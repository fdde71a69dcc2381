//! The endpoints over a running VM: validate, act through the [`GrantManager`], answer.
//!
//! Each request goes through the same layers: route (404, 405), body rules (411, 400),
//! validation against the region table (400), the operation, then the error mapping of
//! [`ApiError`] and the metrics of the endpoint. Nothing changes unless validation passed.
//!
//! Chunks allocated through the API are the API's: it frees, pins and unpins only those
//! (403 for a device model's chunk), so a client cannot pull a buffer from under a device.
//!
//! [`GrantManager`]: crate::grant::GrantManager

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::error::ApiError;
use super::http::{Request, Response};
use super::metrics::MetricsSource;
use super::request::{AllocBody, no_body, parse_body};
use super::routes::{Endpoint, Route, RouteError, route};
use super::server::Service;
use crate::grant::GrantMode;
use crate::machine::{BootTimes, RunOutcome, RunningVmm};
use crate::sync::lock;
use cma::{Chunk, ChunkId, RegionStats};

/// A chunk as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkView {
    /// The handle, `cma<instance>:<region>:<serial>`.
    pub id: String,
    /// Region name.
    pub region: String,
    /// Region id.
    pub region_id: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Pinned chunks never move.
    pub pinned: bool,
    /// Grant mode (`null` for a chunk not granted through the grant manager).
    pub mode: Option<GrantMode>,
    /// `api` for chunks allocated through the API, `device` for a device model's.
    pub owner: &'static str,
}

/// `GET /vm`.
#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    /// `running`, `exited`, `crashed` or `stopped`.
    pub state: &'static str,
    /// The guest's exit status, once it has exited.
    pub exit_status: Option<u32>,
    /// The crash diagnostic, if it crashed.
    pub crash: Option<String>,
    /// Guest memory in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The agent protocol version the guest announced (`null` until it has).
    pub agent_version: Option<u32>,
    /// Boot milestones reached.
    pub milestones: Milestones,
    /// When they were reached (CLOCK_MONOTONIC nanoseconds).
    pub boot_times_ns: BootTimes,
}

/// Boot milestones reached; `populated` means the guest's workload fills lent memory
/// and allocations will evict real pages.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Milestones {
    /// First guest instruction.
    pub entered: bool,
    /// Boot information validated.
    pub ready: bool,
    /// Agent channel up.
    pub agent_up: bool,
    /// Lent memory populated.
    pub populated: bool,
}

/// `GET /regions`: statistics without bitmaps, and the map rules.
#[derive(Debug, Clone, Serialize)]
pub struct RegionList {
    /// Every region, by id.
    pub regions: Vec<RegionStats>,
    /// Map rules, `devices=regions`, first match wins.
    pub map: Vec<String>,
}

/// `GET /chunks`.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkList {
    /// Every granted chunk, by region then handle.
    pub chunks: Vec<ChunkView>,
}

/// `POST /chunks`: the chunk and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct AllocReply {
    /// The chunk.
    pub chunk: ChunkView,
    /// Pages the guest migrated out of the range.
    pub pages_migrated: u64,
    /// Wall time of the allocation.
    pub elapsed_ns: u64,
    /// VM exits during the allocation.
    pub exits: u64,
}

/// `DELETE /chunks/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct FreeReply {
    /// The handle freed.
    pub freed: String,
}

/// `POST /regions/{name}/compact`.
#[derive(Debug, Clone, Serialize)]
pub struct CompactReply {
    /// Region name.
    pub region: String,
    /// Largest free run before, in bytes.
    pub largest_free_before: u64,
    /// Largest free run after, in bytes.
    pub largest_free_after: u64,
    /// Chunks moved.
    pub chunks_moved: u32,
    /// Moves abandoned.
    pub moves_failed: u32,
    /// Pages the guest migrated to free destinations.
    pub pages_migrated: u64,
    /// Why compaction stopped early, if it did.
    pub stopped: Option<String>,
}

/// `POST /vm/shutdown`.
#[derive(Debug, Clone, Serialize)]
pub struct ShutdownReply {
    /// Always `requested`: the guest checks its pages, then exits.
    pub shutdown: &'static str,
}

/// The API's state over one running VM.
pub struct ApiContext<'vm> {
    vm: &'vm RunningVmm,
    metrics: MetricsSource,
    /// Chunks allocated through the API.
    owned: Mutex<HashSet<ChunkId>>,
    /// Held while a verification quiesces the guest: one at a time.
    verifying: Mutex<()>,
}

impl<'vm> ApiContext<'vm> {
    /// Free every chunk allocated through the API (zeroed, given back to the guest): a
    /// clean stop. The chunks freed, and the errors of those that could not be.
    pub fn free_all(&self) -> (usize, Vec<String>) {
        let ids: Vec<ChunkId> = lock(&self.owned).drain().collect();
        let mut errors = Vec::new();
        for id in &ids {
            if let Err(e) = self.vm.grants().free(*id) {
                errors.push(format!("{id}: {e}"));
            }
        }
        (ids.len() - errors.len(), errors)
    }

    /// The API over `vm`, counting into `metrics`.
    pub fn new(vm: &'vm RunningVmm, metrics: MetricsSource) -> Self {
        ApiContext {
            vm,
            metrics,
            owned: Mutex::new(HashSet::new()),
            verifying: Mutex::new(()),
        }
    }

    fn dispatch(&self, route: &Route, req: &Request) -> Result<Response, ApiError> {
        if route.endpoint != Endpoint::PostChunks {
            no_body(&req.body)?;
        }
        let p = route.param.as_str();
        match route.endpoint {
            Endpoint::GetVm => Ok(Response::json(200, &self.vm_status())),
            Endpoint::PostVmVerify => self.verify(),
            Endpoint::PostVmShutdown => self.shutdown(),
            Endpoint::GetRegions => Ok(Response::json(200, &self.regions())),
            Endpoint::GetRegion => self.region(p),
            Endpoint::PostRegionCompact => self.compact(p),
            Endpoint::GetChunks => Ok(Response::json(
                200,
                &ChunkList {
                    chunks: self.chunks(),
                },
            )),
            Endpoint::PostChunks => self.alloc(req),
            Endpoint::GetChunk => self.chunk(p),
            Endpoint::DeleteChunk => self.free(p),
            Endpoint::PutChunkPin => self.pin(p, true),
            Endpoint::PutChunkUnpin => self.pin(p, false),
            Endpoint::GetMetrics if wants_prometheus(req) => self.prometheus(),
            Endpoint::GetMetrics => Ok(Response::json(200, &self.metrics.collect())),
            Endpoint::GetMetricsPrometheus => self.prometheus(),
            Endpoint::Other => Err(ApiError::NotFound("no such resource".into())),
        }
    }

    fn prometheus(&self) -> Result<Response, ApiError> {
        let doc = self.metrics.collect();
        Ok(Response::prometheus(200, super::prometheus::render(&doc)))
    }

    fn vm_status(&self) -> VmStatus {
        let times = self.vm.boot_times();
        let (state, exit_status, crash) = match self.vm.outcome() {
            None => ("running", None, None),
            Some(RunOutcome::Exited(s)) => ("exited", Some(s), None),
            Some(RunOutcome::Crashed(d)) => ("crashed", None, Some(d)),
            Some(RunOutcome::Stopped) => ("stopped", None, None),
            Some(RunOutcome::PoweredOff) => ("powered_off", None, None),
            Some(RunOutcome::Reset) => ("reset", None, None),
        };
        let config = self.vm.config();
        VmStatus {
            state,
            exit_status,
            crash,
            memory: config.memory,
            vcpus: config.vcpus,
            agent_version: self.vm.grants().agent().agent_version(),
            milestones: Milestones {
                entered: times.entered.is_some(),
                ready: times.ready.is_some(),
                agent_up: times.agent_up.is_some(),
                populated: times.populated.is_some(),
            },
            boot_times_ns: times,
        }
    }

    fn regions(&self) -> RegionList {
        let mut regions = self.vm.grants().cma().stats();
        for r in &mut regions {
            // Large for large regions: `GET /regions/{name}` has it.
            r.bitmap.clear();
        }
        let map = self.vm.config().map.iter().map(|r| r.to_string()).collect();
        RegionList { regions, map }
    }

    fn region(&self, name: &str) -> Result<Response, ApiError> {
        let stats = self.vm.grants().cma().stats();
        let s = stats
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| unknown_region(name))?;
        Ok(Response::json(200, s))
    }

    fn compact(&self, name: &str) -> Result<Response, ApiError> {
        let grants = self.vm.grants();
        let id = grants
            .cma()
            .regions()
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.id)
            .ok_or_else(|| unknown_region(name))?;
        let report = grants.compact(id)?;
        Ok(Response::json(
            200,
            &CompactReply {
                region: name.to_string(),
                largest_free_before: report.largest_free_before,
                largest_free_after: report.largest_free_after,
                chunks_moved: report.chunks_moved,
                moves_failed: report.moves_failed,
                pages_migrated: report.pages_migrated,
                stopped: report.stopped,
            },
        ))
    }

    fn view(&self, c: &Chunk) -> ChunkView {
        let grants = self.vm.grants();
        ChunkView {
            id: c.id.to_string(),
            region: grants
                .cma()
                .region(c.region)
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            region_id: c.region,
            gpa: c.gpa,
            len: c.len,
            pinned: c.pinned,
            mode: grants.mode(c.id),
            owner: if lock(&self.owned).contains(&c.id) {
                "api"
            } else {
                "device"
            },
        }
    }

    fn chunks(&self) -> Vec<ChunkView> {
        let chunks = self.vm.grants().cma().chunks();
        chunks.iter().map(|c| self.view(c)).collect()
    }

    fn chunk(&self, id: &str) -> Result<Response, ApiError> {
        let id = parse_id(id)?;
        let c = self
            .vm
            .grants()
            .cma()
            .chunk(id)
            .ok_or_else(|| ApiError::NotFound(format!("unknown chunk {id}")))?;
        Ok(Response::json(200, &self.view(&c)))
    }

    fn alloc(&self, req: &Request) -> Result<Response, ApiError> {
        if req.content_length.is_none() {
            return Err(ApiError::LengthRequired);
        }
        let body: AllocBody = parse_body(&req.body)?;
        let grants = self.vm.grants();
        let valid = body.validate(grants.cma())?;
        let (grant, report) = grants.alloc(&valid.target, &valid.request, valid.mode)?;
        lock(&self.owned).insert(grant.id());
        Ok(Response::json(
            201,
            &AllocReply {
                chunk: self.view(&report.chunk),
                pages_migrated: report.pages_migrated,
                elapsed_ns: u64::try_from(report.elapsed.as_nanos()).unwrap_or(u64::MAX),
                exits: report.exits,
            },
        ))
    }

    /// Refuse to touch a live chunk the API did not allocate.
    fn check_owner(&self, id: ChunkId) -> Result<(), ApiError> {
        let live = self.vm.grants().cma().chunk(id).is_some();
        if live && !lock(&self.owned).contains(&id) {
            return Err(ApiError::Forbidden(format!(
                "chunk {id} belongs to a device model, not to the API"
            )));
        }
        Ok(())
    }

    fn free(&self, id: &str) -> Result<Response, ApiError> {
        let id = parse_id(id)?;
        self.check_owner(id)?;
        self.vm.grants().free(id)?;
        lock(&self.owned).remove(&id);
        Ok(Response::json(
            200,
            &FreeReply {
                freed: id.to_string(),
            },
        ))
    }

    fn pin(&self, id: &str, pinned: bool) -> Result<Response, ApiError> {
        let id = parse_id(id)?;
        self.check_owner(id)?;
        let cma = self.vm.grants().cma();
        if pinned {
            cma.pin(id)?;
        } else {
            cma.unpin(id)?;
        }
        let c = cma
            .chunk(id)
            .ok_or_else(|| ApiError::NotFound(format!("unknown chunk {id}")))?;
        Ok(Response::json(200, &self.view(&c)))
    }

    fn verify(&self) -> Result<Response, ApiError> {
        let Ok(_one) = self.verifying.try_lock() else {
            return Err(ApiError::Conflict(
                "a verification is already running".into(),
            ));
        };
        let report = crate::exercise::check_guest(self.vm).map_err(ApiError::Unavailable)?;
        Ok(Response::json(200, &report))
    }

    fn shutdown(&self) -> Result<Response, ApiError> {
        self.vm
            .grants()
            .agent()
            .shutdown_guest()
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(Response::json(
            202,
            &ShutdownReply {
                shutdown: "requested",
            },
        ))
    }
}

impl Service for ApiContext<'_> {
    fn handle(&self, req: &Request) -> Response {
        let started = Instant::now();
        let (endpoint, response) = match route(&req.method, &req.path) {
            Ok(r) => {
                let response = self
                    .dispatch(&r, req)
                    .unwrap_or_else(|e| Response::error(e.status(), &e.to_string()));
                (r.endpoint, response)
            }
            Err(e @ RouteError::NotFound(_)) => {
                (Endpoint::Other, Response::error(404, &e.to_string()))
            }
            Err(e @ RouteError::MethodNotAllowed { .. }) => {
                let mut r = Response::error(405, &e.to_string());
                if let RouteError::MethodNotAllowed { allow, .. } = e {
                    r.allow = Some(allow);
                }
                (Endpoint::Other, r)
            }
        };
        self.metrics
            .api()
            .record(endpoint, response.status, started.elapsed());
        response
    }

    fn rejected(&self, status: u16, elapsed: std::time::Duration) {
        self.metrics.api().record(Endpoint::Other, status, elapsed);
    }
}

/// `GET /metrics` answers in the Prometheus text format to a scraper: an `Accept` that
/// names `text/plain` and not `application/json` (Prometheus sends
/// `text/plain;version=0.0.4;q=0.5,*/*;q=0.1` or an OpenMetrics list with text/plain).
fn wants_prometheus(req: &Request) -> bool {
    req.header("accept").is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        a.contains("text/plain") && !a.contains("application/json")
    })
}

fn parse_id(s: &str) -> Result<ChunkId, ApiError> {
    s.parse::<ChunkId>()
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn unknown_region(name: &str) -> ApiError {
    let shown: String = name.chars().take(64).collect();
    ApiError::NotFound(format!("unknown CMA region '{shown}'"))
}
