//! Granting contiguous chunks of lent guest memory to device models: the allocation state
//! machine over the CMA allocator, the guest agent and the KVM memory slots.
//!
//! ```text
//!  Lent ──alloc: bits marked──▶ Isolating ──guest: Done, slot hole (exclusive)──▶ Granted
//!   ▲   ◀── Busy / error / timeout: bits cleared, Cancel sent if delivered ──┘        │
//!   └──── bits cleared ◀── Return to guest ◀── slot restored ◀── zeroed ◀── free ◀───┘
//!                                                               (Scrubbing)
//! ```
//!
//! Rules kept here:
//! - a range is granted only after the guest said Done **and**, in exclusive mode, its KVM
//!   slot is gone: a guest that lies loses its own data, it never gains device memory;
//! - a freed chunk is zeroed (a memfd hole punch) before the guest can reach it again;
//! - every failure leaves the range Lent with its bits cleared (the allocator's part) and
//!   the guest told to undo what it did (the channel's Cancel, or a Return);
//! - an eviction moves the guest's pages and rewrites its manifest, so none runs while the
//!   host checks those pages ([`GrantManager::hold_evictions`]).
//!
//! Private regions are never mapped into the guest (their slots are removed at boot), so
//! granting from them needs no eviction, and shared grants from them are refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use protocol::msg::Status;
use serde::Serialize;

use crate::config::RegionSpec;
use crate::devices::virtio::agent::AgentChannel;
use crate::sync::lock;
use crate::vstate::memory::MemoryError;
use crate::vstate::vcpu::{ExitCounters, VcpuControl};
use crate::vstate::vm::Vm;
use cma::{AllocRequest, Chunk, ChunkId, ClaimOutcome, Cma, CmaError, Mover};

/// Whether the guest keeps access to a granted chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantMode {
    /// The chunk leaves the guest's address space; only the device reaches it.
    Exclusive,
    /// The guest keeps access (a DMA buffer shared with its driver).
    Shared,
}

/// Who copies pages during eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// The VMM copies batches the guest plans (host memcpy speed).
    Host,
    /// The guest copies each page itself.
    Guest,
}

/// Timeouts and modes of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantPolicy {
    /// How long to wait for the guest to evict a range.
    pub evict_timeout: Duration,
    /// How long to wait for the guest to take a range back.
    pub return_timeout: Duration,
    /// Who copies pages.
    pub copy: CopyMode,
}

impl Default for GrantPolicy {
    fn default() -> Self {
        GrantPolicy {
            evict_timeout: Duration::from_secs(2),
            return_timeout: Duration::from_secs(2),
            copy: CopyMode::Host,
        }
    }
}

/// Which regions to allocate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Resolve through the map rules.
    Device(String),
    /// Try these regions in order (`"r1,r2"`).
    Regions(String),
}

/// Errors of granting and freeing.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The allocator refused or ran out of candidates.
    #[error(transparent)]
    Cma(#[from] CmaError),
    /// A shared grant from a private region.
    #[error("region '{0}' is private: it is never mapped into the guest, so it cannot be shared")]
    SharedPrivate(String),
    /// An unknown chunk.
    #[error("unknown chunk {0}")]
    UnknownChunk(String),
    /// Zeroing a chunk failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Counters of the state machine.
#[derive(Debug, Default, Serialize)]
pub struct GrantMetrics {
    /// Chunks granted.
    pub grants: AtomicU64,
    /// Allocations that failed.
    pub grant_fails: AtomicU64,
    /// Chunks freed.
    pub frees: AtomicU64,
    /// Evictions the guest answered Done.
    pub evictions: AtomicU64,
    /// Evictions that failed (timeout, guest error, revoke failure).
    pub eviction_fails: AtomicU64,
    /// Candidates the guest reported busy.
    pub busy: AtomicU64,
    /// Returns the guest did not acknowledge.
    pub return_fails: AtomicU64,
    /// Pages migrated by the guest for our grants.
    pub pages_migrated: AtomicU64,
    /// Evictions that waited for a host-side check of the guest's pages to end.
    pub evictions_held: AtomicU64,
}

/// What one allocation cost (the `--exercise` demo prints it).
#[derive(Debug, Clone, Serialize)]
pub struct GrantReport {
    /// The chunk.
    pub chunk: Chunk,
    /// Grant mode.
    pub mode: GrantMode,
    /// Pages the guest migrated for this grant.
    pub pages_migrated: u64,
    /// Wall time of the allocation.
    pub elapsed: Duration,
    /// VM exits to the VMM during the allocation (all vCPUs).
    pub exits: u64,
}

/// A chunk granted to a device: where it is, and host access to its bytes.
#[derive(Debug, Clone)]
pub struct Grant {
    id: ChunkId,
    mode: GrantMode,
    manager: Arc<GrantManager>,
}

impl Grant {
    /// The chunk's handle.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The grant mode.
    pub fn mode(&self) -> GrantMode {
        self.mode
    }

    /// The chunk as it is now (compaction may have moved it).
    pub fn chunk(&self) -> Option<Chunk> {
        self.manager.cma.chunk(self.id)
    }

    /// Write `data` at byte `offset` of the chunk (host side, at host speed).
    ///
    /// The chunk cannot move or be given back to the guest while the write runs: the
    /// address is looked up and written under the manager's access lock (see
    /// [`GrantManager`]).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), GrantError> {
        let _access = self
            .manager
            .access
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let gpa = self.inside(offset, data.len())?;
        Ok(self.manager.vm.ram().write(gpa, data)?)
    }

    /// Read the chunk at byte `offset` into `buf` (under the access lock, as [`Grant::write`]).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), GrantError> {
        let _access = self
            .manager
            .access
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let gpa = self.inside(offset, buf.len())?;
        Ok(self.manager.vm.ram().read(gpa, buf)?)
    }

    /// The guest-physical address of `[offset, offset+len)`, which must lie in the chunk.
    fn inside(&self, offset: u64, len: usize) -> Result<u64, GrantError> {
        let c = self.current()?;
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= c.len => Ok(c.gpa + offset),
            _ => Err(MemoryError::OutOfRange {
                gpa: c.gpa.saturating_add(offset),
                len,
            }
            .into()),
        }
    }

    fn current(&self) -> Result<Chunk, GrantError> {
        self.chunk()
            .ok_or_else(|| GrantError::UnknownChunk(self.id.to_string()))
    }
}

/// The allocation state machine.
///
/// Device models read and write their chunks through [`Grant`]s while other threads free
/// or compact them. The access lock keeps the two apart: a grant access holds it shared
/// from the address lookup to the end of the copy; a move holds it exclusively from the
/// copy until the chunk's new address is recorded, and a free takes it once after the
/// chunk stopped being resolvable and before its range goes back to the guest. So no
/// device write lands in a range the guest has been given back, and none is lost in a
/// move.
///
/// The evictions lock keeps evictions and host-side checks of the guest's pages apart: an
/// eviction holds it shared while the guest works on it, a check exclusively (see
/// [`GrantManager::hold_evictions`]).
pub struct GrantManager {
    cma: Arc<Cma>,
    vm: Arc<Vm>,
    access: RwLock<()>,
    evictions: RwLock<()>,
    agent: AgentChannel,
    policy: Mutex<GrantPolicy>,
    modes: Mutex<HashMap<ChunkId, GrantMode>>,
    /// Held across a pause, slot change and resume ([`GrantManager::with_vcpus_paused`]).
    slot_change: Mutex<()>,
    exits: Arc<ExitCounters>,
    vcpus: Arc<VcpuControl>,
    /// Counters.
    pub metrics: GrantMetrics,
}

impl std::fmt::Debug for GrantManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantManager").finish_non_exhaustive()
    }
}

impl GrantManager {
    /// A manager over `cma`'s regions in `vm`, evicting through `agent`.
    pub fn new(
        cma: Arc<Cma>,
        vm: Arc<Vm>,
        agent: AgentChannel,
        policy: GrantPolicy,
        exits: Arc<ExitCounters>,
        vcpus: Arc<VcpuControl>,
    ) -> Self {
        GrantManager {
            cma,
            vm,
            access: RwLock::new(()),
            evictions: RwLock::new(()),
            agent,
            policy: Mutex::new(policy),
            modes: Mutex::new(HashMap::new()),
            slot_change: Mutex::new(()),
            exits,
            vcpus,
            metrics: GrantMetrics::default(),
        }
    }

    /// Change the guest's memory slots with every vCPU held outside the guest: a slot is
    /// deleted and re-created in pieces, and code running from the old slot in between
    /// would find no memory at all (not even its instructions).
    ///
    /// One slot change at a time: two allocations revoking at once would otherwise both
    /// find the vCPUs paused, and the first to finish would let them run while the other
    /// was still between deleting and re-creating a slot.
    fn with_vcpus_paused<T>(&self, f: impl FnOnce(&Vm) -> T) -> T {
        let _one_at_a_time = lock(&self.slot_change);
        self.vcpus.pause_all();
        let out = f(&self.vm);
        self.vcpus.resume_all();
        out
    }

    /// The allocator.
    pub fn cma(&self) -> &Arc<Cma> {
        &self.cma
    }

    /// The agent channel.
    pub fn agent(&self) -> &AgentChannel {
        &self.agent
    }

    /// The current policy.
    pub fn policy(&self) -> GrantPolicy {
        *lock(&self.policy)
    }

    /// Change timeouts or the copy mode.
    pub fn set_policy(&self, policy: GrantPolicy) {
        *lock(&self.policy) = policy;
    }

    /// Hold off evictions until the returned guard drops; evictions under way finish first.
    ///
    /// Quiescing the guest's workload stops it rewriting its pages, not the guest's agent:
    /// an eviction asked for meanwhile (a device model starting, the API, compaction) still
    /// migrates pages and rewrites the manifest, and the frames it empties may be filled
    /// by the device at once. A host-side check that read the manifest before would then
    /// read pages where they no longer are. So a check holds this from before it quiesces
    /// the guest until it has resumed it: what the manifest says stays true meanwhile
    /// (Returns may still arrive, but they move no page). Allocations wait, counted in
    /// [`GrantMetrics::evictions_held`]; the holder must not allocate or compact itself.
    pub fn hold_evictions(&self) -> EvictionsHeld<'_> {
        EvictionsHeld {
            _guard: self.evictions.write().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The shared side of [`GrantManager::hold_evictions`], for one eviction.
    fn may_evict(&self) -> RwLockReadGuard<'_, ()> {
        match self.evictions.try_read() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.metrics.evictions_held.fetch_add(1, Ordering::Relaxed);
                self.evictions.read().unwrap_or_else(|p| p.into_inner())
            }
        }
    }

    /// Allocate a chunk and grant it in `mode`.
    pub fn alloc(
        self: &Arc<Self>,
        target: &Target,
        req: &AllocRequest,
        mode: GrantMode,
    ) -> Result<(Grant, GrantReport), GrantError> {
        let start = Instant::now();
        let exits_before = self.exits.total();
        let migrated = AtomicU64::new(0);
        let mut claim = |region: &RegionSpec, gpa: u64, len: u64| {
            let outcome = self.claim(region, gpa, len, mode);
            if let ClaimOutcome::Claimed { pages_migrated } = outcome {
                migrated.store(pages_migrated, Ordering::Relaxed);
            }
            outcome
        };
        if mode == GrantMode::Shared {
            self.refuse_shared_private(target)?;
        }
        let result = match target {
            Target::Device(dev) => self.cma.alloc(dev, req, &mut claim),
            Target::Regions(names) => self.cma.alloc_from(names, req, &mut claim),
        };
        let chunk = match result {
            Ok(c) => c,
            Err(e) => {
                self.metrics.grant_fails.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        lock(&self.modes).insert(chunk.id, mode);
        self.metrics.grants.fetch_add(1, Ordering::Relaxed);
        let report = GrantReport {
            chunk,
            mode,
            pages_migrated: migrated.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
            exits: self.exits.total() - exits_before,
        };
        let grant = Grant {
            id: chunk.id,
            mode,
            manager: self.clone(),
        };
        Ok((grant, report))
    }

    /// A shared grant can only come from lent regions: refuse if the target names only
    /// private ones (a mixed list is fine, the claim skips private candidates).
    fn refuse_shared_private(&self, target: &Target) -> Result<(), GrantError> {
        let ids = match target {
            Target::Device(d) => self.cma.resolve_device(d)?,
            Target::Regions(n) => self.cma.resolve_names(n)?,
        };
        let regions: Vec<&RegionSpec> = ids.iter().filter_map(|&i| self.cma.region(i)).collect();
        match regions.iter().find(|r| r.private) {
            Some(r) if regions.iter().all(|r| r.private) => {
                Err(GrantError::SharedPrivate(r.name.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Make `[gpa, gpa+len)` the device's: evict it from the guest, then (exclusive) take
    /// it out of the guest's address space. Called by the allocator with the bits marked.
    fn claim(&self, region: &RegionSpec, gpa: u64, len: u64, mode: GrantMode) -> ClaimOutcome {
        if region.private {
            return match mode {
                GrantMode::Exclusive => ClaimOutcome::Claimed { pages_migrated: 0 },
                GrantMode::Shared => ClaimOutcome::Failed("private region".into()),
            };
        }
        let policy = self.policy();
        let host_copy = policy.copy == CopyMode::Host;
        let answer = {
            let _evicting = self.may_evict();
            self.agent.evict(gpa, len, host_copy, policy.evict_timeout)
        };
        let migrated = match answer {
            Ok((Status::Done, migrated)) => migrated,
            Ok((Status::Busy { first_busy }, _)) => {
                self.metrics.busy.fetch_add(1, Ordering::Relaxed);
                return ClaimOutcome::Busy { at: first_busy };
            }
            Ok((status, _)) => {
                self.metrics.eviction_fails.fetch_add(1, Ordering::Relaxed);
                return ClaimOutcome::Failed(format!("the guest could not evict: {status:?}"));
            }
            Err(e) => {
                self.metrics.eviction_fails.fetch_add(1, Ordering::Relaxed);
                return ClaimOutcome::Failed(e.to_string());
            }
        };
        if mode == GrantMode::Exclusive
            && let Err(e) = self.with_vcpus_paused(|vm| vm.revoke(gpa, len))
        {
            // Never grant what the guest may still reach: undo, and hand the range back.
            let _ = self.with_vcpus_paused(|vm| vm.restore(gpa, len));
            self.return_to_guest(gpa, len, policy);
            self.metrics.eviction_fails.fetch_add(1, Ordering::Relaxed);
            return ClaimOutcome::Failed(format!("cannot revoke guest access: {e}"));
        }
        self.metrics.evictions.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .pages_migrated
            .fetch_add(migrated, Ordering::Relaxed);
        ClaimOutcome::Claimed {
            pages_migrated: migrated,
        }
    }

    /// Scrub a range and give it back: zero, restore the slot (exclusive), Return.
    fn release(&self, region: &RegionSpec, gpa: u64, len: u64, mode: GrantMode) {
        // Zero before the guest can see it again; punching also frees the host pages.
        if self.vm.ram().punch(gpa, len).is_err() {
            // Fall back to writing zeros: the guest must never see device data.
            let _ = self.vm.ram().write(gpa, &vec![0u8; len as usize]);
        }
        if region.private {
            return;
        }
        if mode == GrantMode::Exclusive {
            let _ = self.with_vcpus_paused(|vm| vm.restore(gpa, len));
        }
        self.return_to_guest(gpa, len, self.policy());
    }

    fn return_to_guest(&self, gpa: u64, len: u64, policy: GrantPolicy) {
        match self.agent.give_back(gpa, len, policy.return_timeout) {
            Ok(Status::Done) => {}
            _ => {
                self.metrics.return_fails.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Free a granted chunk: scrub it, give it back to the guest, clear its bits.
    pub fn free(&self, id: ChunkId) -> Result<(), GrantError> {
        let mode = lock(&self.modes)
            .get(&id)
            .copied()
            .unwrap_or(GrantMode::Exclusive);
        let mut release = |region: &RegionSpec, gpa: u64, len: u64| {
            // The chunk no longer resolves: wait for accesses that looked it up before.
            drop(self.access.write().unwrap_or_else(|p| p.into_inner()));
            self.release(region, gpa, len, mode);
        };
        self.cma.free(id, &mut release)?;
        lock(&self.modes).remove(&id);
        self.metrics.frees.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The grant mode of chunk `id`.
    pub fn mode(&self, id: ChunkId) -> Option<GrantMode> {
        lock(&self.modes).get(&id).copied()
    }

    /// Move unpinned chunks of `region` to raise its largest free run.
    pub fn compact(&self, region: u32) -> Result<cma::CompactReport, GrantError> {
        let mut mover = GrantMover {
            manager: self,
            moving: None,
        };
        Ok(self.cma.compact(region, &mut mover)?)
    }
}

/// Evictions are held off while this lives: see [`GrantManager::hold_evictions`].
#[must_use = "evictions are held only while the guard lives"]
pub struct EvictionsHeld<'m> {
    _guard: RwLockWriteGuard<'m, ()>,
}

impl std::fmt::Debug for EvictionsHeld<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EvictionsHeld")
    }
}

/// Compaction through the guest: the destination is evicted (and revoked, for an exclusive
/// chunk) before the copy; the old range is scrubbed and returned after it.
struct GrantMover<'m> {
    manager: &'m GrantManager,
    /// The access lock, held from a copy until the move is recorded (or abandoned): grant
    /// accesses wait, then find the chunk at its new address.
    moving: Option<RwLockWriteGuard<'m, ()>>,
}

impl GrantMover<'_> {
    fn mode_at(&self, gpa: u64) -> GrantMode {
        let m = self.manager;
        m.cma
            .chunks()
            .iter()
            .find(|c| c.gpa == gpa)
            .and_then(|c| m.mode(c.id))
            .unwrap_or(GrantMode::Exclusive)
    }
}

impl Mover for GrantMover<'_> {
    fn claim(&mut self, region: &RegionSpec, gpa: u64, len: u64) -> ClaimOutcome {
        // The destination is evicted like any candidate; it is revoked in `copy`, once we
        // know whose chunk moves there.
        self.manager.claim(region, gpa, len, GrantMode::Shared)
    }

    fn copy(&mut self, from: u64, to: u64, len: u64) -> Result<(), String> {
        let mode = self.mode_at(from);
        if mode == GrantMode::Exclusive {
            self.manager
                .with_vcpus_paused(|vm| vm.revoke(to, len))
                .map_err(|e| format!("cannot revoke the destination: {e}"))?;
        }
        // Only now, with the vCPUs running again: a vCPU may be waiting on a device whose
        // thread waits for this lock, and pausing it would never finish.
        let access = &self.manager.access;
        self.moving = Some(access.write().unwrap_or_else(|p| p.into_inner()));
        self.manager
            .vm
            .ram()
            .copy(from, to, len)
            .map_err(|e| e.to_string())
    }

    fn release(&mut self, region: &RegionSpec, gpa: u64, len: u64) {
        // The old range after a move, or the destination of an abandoned move: either way
        // the chunk's address is settled now.
        self.moving = None;
        let revoked = self.manager.vm.is_revoked(gpa, len);
        let mode = if revoked {
            GrantMode::Exclusive
        } else {
            GrantMode::Shared
        };
        self.manager.release(region, gpa, len, mode);
    }
}
