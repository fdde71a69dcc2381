//! The allocator over all regions: map rules, the regions-style API (`alloc_from("r1,r2")`,
//! `info_about`), the allocation loop of Linux's `cma_alloc`, free, pin and unpin.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::region::{MAX_REGION_SIZE, PAGE_SIZE};

use crate::area::{Area, Refusal};
use crate::chunk::{Chunk, ChunkId, MoveListener};
use crate::error::CmaError;
use crate::hooks::{Claim, ClaimOutcome, Release};
use crate::metrics::{RegionStats, RegionsInfo};
use crate::region::{ANY_DEVICE, MAX_ORDER_PER_BIT, MapRule, RegionSpec};
use crate::request::{AllocRequest, Placement};

/// Instance ids, so that a handle from one allocator is refused by another.
static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(1);

/// The allocator over a table of regions: per region a bitmap, a chunk table, counters and
/// a lock. `Send + Sync`; share it as `Arc<Cma>`. See the [crate documentation](crate) for
/// the model and an example.
pub struct Cma {
    instance: u32,
    regions: Vec<RegionSpec>,
    map: Vec<MapRule>,
    areas: Vec<Area>,
    /// Serial numbers of chunk handles, never reused.
    next_serial: AtomicU64,
}

impl Cma {
    /// An allocator over validated, placed regions (`id` = index) and map rules.
    pub fn new(regions: &[RegionSpec], map: &[MapRule]) -> Result<Cma, CmaError> {
        check_regions(regions)?;
        for name in map.iter().flat_map(|r| &r.regions) {
            if !regions.iter().any(|r| &r.name == name) {
                return Err(CmaError::BadRegionTable(format!(
                    "map rule names unknown region '{name}'"
                )));
            }
        }
        let instance = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        Ok(Cma {
            instance,
            regions: regions.to_vec(),
            map: map.to_vec(),
            areas: regions.iter().map(|r| Area::new(r, instance)).collect(),
            next_serial: AtomicU64::new(0),
        })
    }

    /// The regions, by id.
    pub fn regions(&self) -> &[RegionSpec] {
        &self.regions
    }

    /// The region of id `id`.
    pub fn region(&self, id: u32) -> Option<&RegionSpec> {
        self.regions.get(id as usize)
    }

    /// This instance's id (embedded in every chunk handle).
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// The regions a device allocates from: those of the first map rule that matches it
    /// (`*` matches any device). Private regions reached only through `*` are skipped.
    pub fn resolve_device(&self, device: &str) -> Result<Vec<u32>, CmaError> {
        let rule = self
            .map
            .iter()
            .find(|r| r.matches(device))
            .ok_or_else(|| CmaError::UnmappedDevice(device.to_string()))?;
        let named = device != ANY_DEVICE && rule.devices.iter().any(|d| d == device);
        let mut ids = Vec::new();
        let mut private = None;
        for name in &rule.regions {
            let id = self.id_of(name)?;
            if self.regions[id as usize].private && !named {
                private.get_or_insert(name);
            } else if !ids.contains(&id) {
                ids.push(id);
            }
        }
        match (ids.is_empty(), private) {
            (true, Some(region)) => Err(CmaError::PrivateRegion {
                device: device.to_string(),
                region: region.clone(),
            }),
            _ => Ok(ids),
        }
    }

    /// Region ids of a comma-separated list of names, in order, without repeats.
    pub fn resolve_names(&self, names: &str) -> Result<Vec<u32>, CmaError> {
        let mut ids = Vec::new();
        for name in names.split(',').map(str::trim) {
            let id = self.id_of(name)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Allocate for `device`, from the regions its map rule names.
    pub fn alloc(
        &self,
        device: &str,
        req: &AllocRequest,
        claim: &mut dyn Claim,
    ) -> Result<Chunk, CmaError> {
        req.validate()?;
        self.alloc_in(&self.resolve_device(device)?, req, claim)
    }

    /// Allocate from the named regions (`"r1,r2"`), tried in order; private regions too.
    /// This is the v9 series' `cma_alloc_from()`; [`Cma::info_about`] is its
    /// `cma_info_about()`.
    ///
    /// ```
    /// use cma::{AllocRequest, ClaimOutcome, Cma, CmaError, RegionSpec, parse_map_rules};
    ///
    /// const MIB: u64 = 1 << 20;
    /// let region = |id, name: &str, base, private| RegionSpec {
    ///     id,
    ///     name: name.into(),
    ///     base,
    ///     size: 4 * MIB,
    ///     private,
    ///     order_per_bit: 0,
    /// };
    /// let regions = [region(0, "r1", 32 * MIB, false), region(1, "r2", 64 * MIB, true)];
    /// let cma = Cma::new(&regions, &parse_map_rules("tee=r2; *=r1,r2")?)?;
    /// let mut evict = |_: &RegionSpec, _gpa: u64, _len: u64| ClaimOutcome::Claimed {
    ///     pages_migrated: 0,
    /// };
    ///
    /// // r1 first; when it has no room left, r2 (private regions are reachable by name).
    /// let three = AllocRequest::new(3 * MIB);
    /// let a = cma.alloc_from("r1,r2", &three, &mut evict)?;
    /// let b = cma.alloc_from("r1,r2", &three, &mut evict)?;
    /// assert_eq!((a.region, a.gpa), (0, 32 * MIB));
    /// assert_eq!((b.region, b.gpa), (1, 64 * MIB));
    ///
    /// // Both regions together: 8 MiB, 2 MiB free, at most 1 MiB in one piece.
    /// let info = cma.info_about("r1,r2")?;
    /// assert_eq!((info.total, info.free, info.largest_free), (8 * MIB, 2 * MIB, MIB));
    /// assert_eq!((info.lower_bound, info.upper_bound), (32 * MIB, 68 * MIB));
    ///
    /// // Neither has 2 MiB in one piece. When every region fails, the most telling
    /// // failure is returned (busy, then no space, then too large): here r1's.
    /// let e = cma.alloc_from("r1,r2", &AllocRequest::new(2 * MIB), &mut evict);
    /// assert!(matches!(e, Err(CmaError::NoSpace { region, .. }) if region == "r1"));
    ///
    /// // Map rules reach the private r2 only for a device they name: "*" skips it.
    /// assert_eq!(cma.resolve_device("tee")?, [1]);
    /// assert_eq!(cma.resolve_device("any-device")?, [0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn alloc_from(
        &self,
        names: &str,
        req: &AllocRequest,
        claim: &mut dyn Claim,
    ) -> Result<Chunk, CmaError> {
        req.validate()?;
        self.alloc_in(&self.resolve_names(names)?, req, claim)
    }

    /// Allocate from the regions `ids`, tried in order. A failed claim (not a busy one)
    /// stops at once: the guest that failed would fail in the next region too. Otherwise,
    /// when every region fails, the most telling failure is returned (busy, then no space,
    /// then too large).
    pub fn alloc_in(
        &self,
        ids: &[u32],
        req: &AllocRequest,
        claim: &mut dyn Claim,
    ) -> Result<Chunk, CmaError> {
        req.validate()?;
        for &id in ids {
            self.area(id)?;
        }
        let mut telling: Option<CmaError> = None;
        for &id in ids {
            match self.alloc_in_region(id, req, claim) {
                Ok(chunk) => return Ok(chunk),
                Err(e @ CmaError::ClaimFailed { .. }) => return Err(e),
                Err(e) if telling.as_ref().is_none_or(|t| e.rank() > t.rank()) => telling = Some(e),
                Err(_) => {}
            }
        }
        Err(telling.unwrap_or(CmaError::NoRegions))
    }

    /// Linux's `cma_alloc` for one region: reserve the first fit under the lock, claim it
    /// without the lock, and on a busy page go on past it, a bounded number of times.
    fn alloc_in_region(
        &self,
        id: u32,
        req: &AllocRequest,
        claim: &mut dyn Claim,
    ) -> Result<Chunk, CmaError> {
        let (area, spec) = (self.area(id)?, &self.regions[id as usize]);
        let p = Placement::new(req, spec, area.shift())?;
        let began = Instant::now();
        let (mut start, mut attempts, mut last_busy) = (0, 0, None);
        loop {
            let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
            let Some(candidate) = area.reserve(start, &p, serial, req.pinned) else {
                area.note_failed();
                return Err(match last_busy {
                    Some(at) => busy(spec, attempts, at),
                    None => CmaError::NoSpace {
                        region: spec.name.clone(),
                        size: req.size,
                    },
                });
            };
            match claim.claim(spec, candidate.gpa, candidate.len) {
                ClaimOutcome::Claimed { pages_migrated } => {
                    area.grant(serial, pages_migrated, began.elapsed());
                    return Ok(candidate);
                }
                ClaimOutcome::Busy { at } => {
                    area.cancel(serial, true);
                    attempts += 1;
                    last_busy = Some(at);
                    if attempts >= req.max_attempts.max(1) {
                        area.note_failed();
                        return Err(busy(spec, attempts, at));
                    }
                    start = area.resume_after(&candidate, at);
                }
                ClaimOutcome::Failed(reason) => {
                    area.cancel(serial, false);
                    area.note_failed();
                    return Err(CmaError::ClaimFailed {
                        region: spec.name.clone(),
                        gpa: candidate.gpa,
                        len: candidate.len,
                        reason,
                    });
                }
            }
        }
    }

    /// Free a granted chunk: release it (scrub, give it back to the guest) with no lock
    /// held, then clear its bits. The bits stay set until the release has returned, so the
    /// range is not handed out again while the guest still sees device data in it.
    pub fn free(&self, id: ChunkId, release: &mut dyn Release) -> Result<(), CmaError> {
        let area = self.area_of(id)?;
        let began = Instant::now();
        let chunk = area
            .begin_free(id.serial())
            .map_err(|r| self.refused(id, r, true))?;
        release.release(&self.regions[id.region() as usize], chunk.gpa, chunk.len);
        area.finish_free(id.serial(), began.elapsed());
        Ok(())
    }

    /// Pin a chunk: compaction no longer moves it. A move already under way is abandoned,
    /// so the address [`Cma::chunk`] gives after `pin` returns is final. Example: see
    /// [`Cma::compact`].
    pub fn pin(&self, id: ChunkId) -> Result<(), CmaError> {
        let area = self.area_of(id)?;
        area.set_pinned(id.serial(), true)
            .map_err(|r| self.refused(id, r, false))
    }

    /// Unpin a chunk: compaction may move it (its owner hears of it through its listener).
    pub fn unpin(&self, id: ChunkId) -> Result<(), CmaError> {
        let area = self.area_of(id)?;
        area.set_pinned(id.serial(), false)
            .map_err(|r| self.refused(id, r, false))
    }

    /// Call `f` after every move of the chunk (replacing any previous listener). It runs
    /// on the compacting thread, with no lock held; until it returns the chunk is neither
    /// moved again nor freed (a free meanwhile fails with [`CmaError::ChunkMoving`]), so the
    /// listener hears of every move, in order.
    pub fn set_move_listener(&self, id: ChunkId, f: MoveListener) -> Result<(), CmaError> {
        let area = self.area_of(id)?;
        area.set_listener(id.serial(), f)
            .map_err(|r| self.refused(id, r, false))
    }

    /// A granted chunk as it is now (its address changes when compaction moves it).
    pub fn chunk(&self, id: ChunkId) -> Option<Chunk> {
        self.area_of(id).ok()?.granted(id.serial())
    }

    /// Whether any byte of `[gpa, gpa + len)` lies in a range the allocator holds (being
    /// claimed, granted, moved or released): memory a guest must not be handed.
    pub fn is_taken(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len).filter(|_| len > 0) else {
            return false;
        };
        self.regions.iter().zip(&self.areas).any(|(r, area)| {
            let (s, e) = (gpa.max(r.base), end.min(r.end()));
            s < e && area.is_taken(s, e - s)
        })
    }

    /// Every granted chunk, by region then handle.
    pub fn chunks(&self) -> Vec<Chunk> {
        self.areas.iter().flat_map(Area::granted_chunks).collect()
    }

    /// Sizes and bounds over the named regions (`"r1,r2"`).
    pub fn info_about(&self, names: &str) -> Result<RegionsInfo, CmaError> {
        let ids = self.resolve_names(names)?;
        let mut info = RegionsInfo {
            lower_bound: u64::MAX,
            ..RegionsInfo::default()
        };
        for id in ids {
            let spec = &self.regions[id as usize];
            let (free, largest) = self.areas[id as usize].usage();
            info.regions += 1;
            info.total += spec.size;
            info.free += free;
            info.largest_free = info.largest_free.max(largest);
            info.lower_bound = info.lower_bound.min(spec.base);
            info.upper_bound = info.upper_bound.max(spec.end());
        }
        Ok(info)
    }

    /// Statistics of every region, by id.
    pub fn stats(&self) -> Vec<RegionStats> {
        self.areas
            .iter()
            .zip(&self.regions)
            .map(|(a, spec)| a.stats(spec))
            .collect()
    }

    /// Every bitmap clear and no chunk recorded.
    pub fn is_empty(&self) -> bool {
        self.areas.iter().all(Area::is_empty)
    }

    /// The area of region `id`.
    pub(crate) fn area(&self, id: u32) -> Result<&Area, CmaError> {
        self.areas
            .get(id as usize)
            .ok_or(CmaError::UnknownRegionId(id))
    }

    /// The area a handle names, if the handle is this instance's.
    fn area_of(&self, id: ChunkId) -> Result<&Area, CmaError> {
        if id.instance() != self.instance {
            return Err(CmaError::ForeignChunk(id));
        }
        self.areas
            .get(id.region() as usize)
            .ok_or(CmaError::UnknownChunk(id))
    }

    /// The error for a chunk operation a region refused.
    fn refused(&self, id: ChunkId, r: Refusal, freeing: bool) -> CmaError {
        match r {
            Refusal::Moving => CmaError::ChunkMoving(id),
            Refusal::Releasing if freeing => CmaError::DoubleFree(id),
            Refusal::Releasing => CmaError::UnknownChunk(id),
            Refusal::Missing => {
                // A handle edited to name another region: say so rather than "unknown".
                let elsewhere = self.areas.iter().position(|a| a.holds(id.serial()));
                match elsewhere {
                    Some(actual) => CmaError::WrongRegion {
                        chunk: id,
                        named: id.region(),
                        actual: actual as u32,
                    },
                    None if freeing && id.serial() < self.next_serial.load(Ordering::Relaxed) => {
                        CmaError::DoubleFree(id)
                    }
                    None => CmaError::UnknownChunk(id),
                }
            }
        }
    }

    fn id_of(&self, name: &str) -> Result<u32, CmaError> {
        self.regions
            .iter()
            .position(|r| r.name == name)
            .map(|i| i as u32)
            .ok_or_else(|| CmaError::UnknownRegion(name.to_string()))
    }

    /// Check the internal invariants of every region (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        self.areas.iter().try_for_each(Area::check)
    }
}

fn busy(spec: &RegionSpec, attempts: u32, at: u64) -> CmaError {
    CmaError::Busy {
        region: spec.name.clone(),
        attempts,
        last_busy: at,
    }
}

/// What the allocator needs of a region table: whatever declared the regions may have
/// checked more (placement in guest RAM, pageblock alignment), but these hold or nothing
/// is built.
fn check_regions(regions: &[RegionSpec]) -> Result<(), CmaError> {
    let bad = |s: String| Err(CmaError::BadRegionTable(s));
    for (i, r) in regions.iter().enumerate() {
        let granule = PAGE_SIZE << r.order_per_bit.min(MAX_ORDER_PER_BIT);
        if r.id as usize != i {
            return bad(format!("region '{}' has id {} at index {i}", r.name, r.id));
        }
        if regions[..i].iter().any(|o| o.name == r.name) {
            return bad(format!("duplicate region name '{}'", r.name));
        }
        // Names travel in lists ("r1,r2") and rules ("dev=r1,r2"), trimmed: a name those
        // cannot spell would be a region nobody can allocate from by name.
        if r.name.is_empty()
            || r.name.contains([',', ';', '='])
            || r.name.contains(char::is_whitespace)
        {
            return bad(format!(
                "region name '{}' is empty or contains ',', ';', '=' or white space",
                r.name
            ));
        }
        if r.order_per_bit > MAX_ORDER_PER_BIT {
            return bad(format!(
                "region '{}' order_per_bit {} > {MAX_ORDER_PER_BIT}",
                r.name, r.order_per_bit
            ));
        }
        if r.size == 0 || r.size > MAX_REGION_SIZE || !r.size.is_multiple_of(granule) {
            return bad(format!(
                "region '{}' size {:#x} is not a non-zero multiple of its {granule:#x}-byte bits (at most 64 GiB)",
                r.name, r.size
            ));
        }
        if !r.base.is_multiple_of(PAGE_SIZE) || r.base.checked_add(r.size).is_none() {
            return bad(format!(
                "region '{}' base {:#x} is not a page address",
                r.name, r.base
            ));
        }
        // The allocator hands out a range once: two regions over one byte would not.
        if let Some(o) = regions[..i]
            .iter()
            .find(|o| o.base < r.end() && r.base < o.end())
        {
            return bad(format!("regions '{}' and '{}' overlap", o.name, r.name));
        }
    }
    Ok(())
}
