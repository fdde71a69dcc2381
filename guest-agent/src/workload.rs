//! The workload: movable pages with self-checking contents, so that every eviction can
//! be verified from the host, byte for byte, at host speed.
//!
//! ```text
//!  virtual (Mmu, 4 KiB PTEs)              physical                manifest (unmovable)
//!  WORKLOAD_VA_BASE + id*4 KiB ──map──▶ frame (movable, owner id)  [id] {gpa, gen, flags}
//!  page id: header + 8 sparse words = protocol::page (id, gen); the rest zero
//! ```
//!
//! # The zero rule
//!
//! The guest writes only the 12 words of [`WRITTEN_OFFSETS`]; a page is correct only if
//! every other byte is zero. Rather than zeroing 4 KiB per page (milliseconds on nested
//! KVM), we keep this invariant: **every free frame is zero outside `WRITTEN_OFFSETS`**.
//! Then writing those 12 words into any frame the allocator hands out gives an exact
//! page. It holds because every way a frame becomes free keeps it:
//! - fresh guest RAM is zero;
//! - a workload page freed by [`Workload::release`] is zero outside those words;
//! - a migration source is freed after a full 4 KiB copy; a destination freed on
//!   rollback holds a copy of its source or its old free contents;
//! - pages taken by the host hold free-frame contents, and the VMM zeroes a chunk
//!   before it returns it ([`crate::mm::Mm::return_range`]);
//! - unmovable users (the kernel) must zero a block before freeing it, and must clear
//!   the written words (or the whole block) of what they allocate if they need zeroes.
//!
//! # Budgets
//!
//! Every operation takes a budget in pages and scans a bounded number of ids, so the
//! agent loop can interleave them with requests.

use crate::mm::{CmaUse, CopyMode, EvictError, Mm, Mmu, PageMover, Pfn, PhysMem};
use protocol::boot::BootInfo;
use protocol::layout::{MAX_MEMORY, PAGE_SIZE, align_up};
use protocol::msg::Report;
use protocol::page::{
    MANIFEST_ENTRY_SIZE, ManifestEntry, PAGE_PINNED, PAGE_PRESENT, WRITTEN_OFFSETS, expected_word,
};

/// Where the workload's virtual window starts (1 TiB: PML4 slot 2, clear of the
/// identity map of 0-4 GiB).
pub const WORKLOAD_VA_BASE: u64 = 0x0000_0100_0000_0000;
/// Size of the window: one page slot for every page of the largest guest.
pub const WORKLOAD_VA_SIZE: u64 = MAX_MEMORY;
/// Most logical pages a workload may have.
pub const MAX_WORKLOAD_PAGES: u32 = (WORKLOAD_VA_SIZE / PAGE_SIZE) as u32;

/// The virtual address of logical page `id`.
pub const fn page_va(id: u32) -> u64 {
    WORKLOAD_VA_BASE + id as u64 * PAGE_SIZE
}

/// Bytes of (page-aligned, unmovable) memory a manifest of `pages` entries needs.
pub fn manifest_bytes(pages: u32) -> u64 {
    let raw = u64::from(pages) * MANIFEST_ENTRY_SIZE as u64;
    align_up(raw, PAGE_SIZE).unwrap_or(raw)
}

/// The default population: enough pages to fill every lent CMA region, leaving
/// ordinary RAM free for migration destinations.
pub fn lent_pages(info: &BootInfo) -> u32 {
    let bytes: u64 = info
        .regions()
        .iter()
        .filter(|r| r.is_lent())
        .map(|r| r.size)
        .sum();
    (bytes / PAGE_SIZE).min(u64::from(MAX_WORKLOAD_PAGES)) as u32
}

/// Zero a frame fresh from the allocator in 12 stores instead of 512: by the zero rule
/// only the written words can be non-zero (for the kernel's page tables, say).
pub fn zero_frame(mem: &mut impl PhysMem, pfn: Pfn) {
    for off in WRITTEN_OFFSETS {
        mem.write_u64(pfn.gpa() + off as u64, 0);
    }
}

/// Why a workload could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadError {
    /// More pages than [`MAX_WORKLOAD_PAGES`].
    TooManyPages,
    /// A target above the manifest's capacity.
    TargetAboveCapacity,
}

/// A page read back wrong by [`Workload::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckError {
    /// A word of page `id` differs from its `(id, generation)` contents.
    Content {
        /// Logical page id.
        id: u32,
        /// Byte offset in the page.
        offset: usize,
        /// The word `protocol::page` requires.
        expected: u64,
        /// The word read through the page's mapping.
        found: u64,
    },
    /// The frame the manifest names does not hold page `id`.
    Manifest {
        /// Logical page id.
        id: u32,
        /// The manifest's frame address.
        gpa: u64,
    },
}

/// The logical pages, their cursors and counters. Per-page state lives in the manifest
/// (guest memory), not here: no heap.
#[derive(Debug, Clone)]
pub struct Workload {
    manifest: u64,
    capacity: u32,
    target: u32,
    present: u32,
    pinned: u32,
    fill_cursor: u32,
    check_cursor: u32,
    pin_cursor: u32,
    unpin_cursor: u32,
    release_cursor: u32,
    rng: u64,
}

impl Workload {
    /// A workload of `capacity` ids whose manifest is at `manifest_gpa` (zeroed,
    /// unmovable, [`manifest_bytes`] long); [`Workload::populate`] creates `target`
    /// pages. `seed` drives which pages [`Workload::rewrite`] picks.
    pub fn new(
        manifest_gpa: u64,
        capacity: u32,
        target: u32,
        seed: u64,
    ) -> Result<Self, WorkloadError> {
        if capacity > MAX_WORKLOAD_PAGES {
            return Err(WorkloadError::TooManyPages);
        }
        if target > capacity {
            return Err(WorkloadError::TargetAboveCapacity);
        }
        Ok(Workload {
            manifest: manifest_gpa,
            capacity,
            target,
            present: 0,
            pinned: 0,
            fill_cursor: 0,
            check_cursor: 0,
            pin_cursor: 0,
            unpin_cursor: 0,
            release_cursor: 0,
            rng: seed | 1,
        })
    }

    /// Guest-physical address of the manifest.
    pub fn manifest_gpa(&self) -> u64 {
        self.manifest
    }

    /// Number of manifest entries (ids).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Pages present now.
    pub fn present(&self) -> u32 {
        self.present
    }

    /// Pages pinned now.
    pub fn pinned(&self) -> u32 {
        self.pinned
    }

    /// Whether the target population is reached.
    pub fn is_populated(&self) -> bool {
        self.present >= self.target
    }

    /// Manifest entry `id` (read through the direct map).
    pub fn entry(&self, mem: &impl PhysMem, id: u32) -> ManifestEntry {
        let at = self.entry_gpa(id);
        let mut bytes = [0u8; MANIFEST_ENTRY_SIZE];
        bytes[..8].copy_from_slice(&mem.read_u64(at).to_le_bytes());
        bytes[8..].copy_from_slice(&mem.read_u64(at + 8).to_le_bytes());
        ManifestEntry::decode(&bytes, 0).unwrap_or_default()
    }

    fn set_entry(&self, mem: &mut impl PhysMem, id: u32, e: ManifestEntry) {
        let at = self.entry_gpa(id);
        let bytes = e.encode();
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
        mem.write_u64(at, word(0));
        mem.write_u64(at + 8, word(8));
    }

    fn entry_gpa(&self, id: u32) -> u64 {
        self.manifest + u64::from(id) * MANIFEST_ENTRY_SIZE as u64
    }

    /// Create up to `budget` pages (movable, lent memory first), until the target is
    /// reached or memory runs out. Returns the number created.
    pub fn populate<H: PhysMem + Mmu>(&mut self, mm: &mut Mm, hw: &mut H, budget: u32) -> u32 {
        let mut created = 0;
        while created < budget && !self.is_populated() {
            let Some(id) = self.next_absent(hw) else {
                break;
            };
            let Some(pfn) = mm.alloc_movable(id, CmaUse::First) else {
                break;
            };
            let generation = self.entry(hw, id).generation.wrapping_add(1);
            hw.map(id, pfn);
            write_page(hw, id, generation);
            self.set_entry(
                hw,
                id,
                ManifestEntry {
                    gpa: pfn.gpa(),
                    generation,
                    flags: PAGE_PRESENT,
                },
            );
            self.present += 1;
            created += 1;
        }
        created
    }

    /// The lowest absent id (ids below the cursor are all present).
    fn next_absent(&mut self, mem: &impl PhysMem) -> Option<u32> {
        while self.fill_cursor < self.capacity {
            if self.entry(mem, self.fill_cursor).flags & PAGE_PRESENT == 0 {
                return Some(self.fill_cursor);
            }
            self.fill_cursor += 1;
        }
        None
    }

    /// Bump the generation of up to `budget` randomly chosen pages and rewrite their
    /// words through their mappings. Returns the number rewritten.
    pub fn rewrite<H: PhysMem + Mmu>(&mut self, hw: &mut H, budget: u32) -> u32 {
        let mut done = 0;
        for _ in 0..scan_limit(budget) {
            if done == budget || self.present == 0 {
                break;
            }
            let id = (self.next_random() % u64::from(self.capacity)) as u32;
            let mut e = self.entry(hw, id);
            if e.flags & PAGE_PRESENT == 0 {
                continue;
            }
            e.generation = e.generation.wrapping_add(1);
            write_page(hw, id, e.generation);
            self.set_entry(hw, id, e);
            done += 1;
        }
        done
    }

    /// Check up to `budget` pages (each at most once per call), round robin, sparsely: the header, one sparse word
    /// and one zero word through the mapping, and that the manifest's frame holds the
    /// page. Returns the number checked.
    pub fn check<H: PhysMem + Mmu>(&mut self, hw: &H, budget: u32) -> Result<u32, CheckError> {
        let mut done = 0;
        for _ in 0..scan_limit(budget).min(self.capacity) {
            if done == budget {
                break;
            }
            let id = self.check_cursor;
            self.check_cursor = (id + 1) % self.capacity;
            let e = self.entry(hw, id);
            if e.flags & PAGE_PRESENT != 0 {
                check_page(hw, id, e)?;
                done += 1;
            }
        }
        Ok(done)
    }

    /// Pin up to `count` present, unpinned pages in lent memory (as a driver pins pages for
    /// I/O: they now refuse to migrate). Returns the number pinned.
    pub fn pin<H: PhysMem>(&mut self, mm: &mut Mm, hw: &mut H, count: u32) -> u32 {
        let mut cursor = self.pin_cursor;
        let done = self.for_some(
            hw,
            &mut cursor,
            count,
            |e| e.flags == PAGE_PRESENT,
            |wl, hw, id, mut e| {
                // Only pages in lent memory: a pin elsewhere never meets an eviction (and
                // evictions move pages out of lent memory, so over a long run most
                // workload pages end up elsewhere).
                let lent = mm
                    .lent_regions()
                    .iter()
                    .any(|r| r.contains(e.gpa, e.gpa.saturating_add(PAGE_SIZE)));
                if !lent || mm.pin(Pfn::of_gpa(e.gpa)).is_err() {
                    return false;
                }
                e.flags |= PAGE_PINNED;
                wl.set_entry(hw, id, e);
                wl.pinned += 1;
                true
            },
        );
        self.pin_cursor = cursor;
        done
    }

    /// Pin up to `count` pages far from the last pins (the cursor jumps about a thirteenth
    /// of the workload first), so that pins spread over all of lent memory.
    pub fn pin_elsewhere<H: PhysMem>(&mut self, mm: &mut Mm, hw: &mut H, count: u32) -> u32 {
        let capacity = self.capacity().max(1);
        self.pin_cursor = (self.pin_cursor + capacity / 13 + 1) % capacity;
        self.pin(mm, hw, count)
    }

    /// Unpin up to `count` pinned pages. Returns the number unpinned.
    pub fn unpin<H: PhysMem>(&mut self, mm: &mut Mm, hw: &mut H, count: u32) -> u32 {
        let mut cursor = self.unpin_cursor;
        let done = self.for_some(
            hw,
            &mut cursor,
            count,
            |e| e.flags & PAGE_PINNED != 0,
            |wl, hw, id, mut e| {
                if mm.unpin(Pfn::of_gpa(e.gpa)).is_err() {
                    return false;
                }
                e.flags &= !PAGE_PINNED;
                wl.set_entry(hw, id, e);
                wl.pinned -= 1;
                true
            },
        );
        self.unpin_cursor = cursor;
        done
    }

    /// Free up to `count` present, unpinned pages (a process freeing memory; populate
    /// recreates them later with a new generation). Returns the number freed.
    pub fn release<H: PhysMem + Mmu>(&mut self, mm: &mut Mm, hw: &mut H, count: u32) -> u32 {
        let mut cursor = self.release_cursor;
        let done = self.for_some(
            hw,
            &mut cursor,
            count,
            |e| e.flags == PAGE_PRESENT,
            |wl, hw, id, e| {
                hw.unmap(id);
                if mm.free(Pfn::of_gpa(e.gpa)).is_err() {
                    hw.map(id, Pfn::of_gpa(e.gpa));
                    return false;
                }
                let gone = ManifestEntry {
                    gpa: 0,
                    generation: e.generation,
                    flags: 0,
                };
                wl.set_entry(hw, id, gone);
                wl.present -= 1;
                wl.fill_cursor = wl.fill_cursor.min(id);
                true
            },
        );
        self.release_cursor = cursor;
        done
    }

    /// Apply `act` to up to `count` ids whose entry satisfies `want`, scanning a bounded
    /// number of ids round robin from `cursor`.
    fn for_some<H: PhysMem>(
        &mut self,
        hw: &mut H,
        cursor: &mut u32,
        count: u32,
        want: impl Fn(&ManifestEntry) -> bool,
        mut act: impl FnMut(&mut Self, &mut H, u32, ManifestEntry) -> bool,
    ) -> u32 {
        let mut done = 0;
        for _ in 0..scan_limit(count).min(self.capacity) {
            if done == count {
                break;
            }
            let id = *cursor;
            *cursor = (id + 1) % self.capacity;
            let e = self.entry(hw, id);
            if want(&e) && act(self, hw, id, e) {
                done += 1;
            }
        }
        done
    }

    /// The [`PageMover`] migration uses for this workload's pages.
    pub fn mover<'h, H: PhysMem + Mmu>(&self, hw: &'h mut H) -> WorkloadMover<'h, H> {
        WorkloadMover {
            manifest: self.manifest,
            capacity: self.capacity,
            hw,
        }
    }

    /// Evict `[gpa, gpa+len)` (see [`Mm::evict`]) with this workload as the owner of
    /// movable pages.
    pub fn evict<H: PhysMem + Mmu>(
        &self,
        mm: &mut Mm,
        hw: &mut H,
        gpa: u64,
        len: u64,
        mode: CopyMode,
    ) -> Result<u64, EvictError> {
        mm.evict(gpa, len, &mut self.mover(hw), mode)
    }

    /// The figures for a [`protocol::msg::GuestMsg::Report`].
    pub fn report(&self, mm: &Mm) -> Report {
        let s = mm.stats();
        Report {
            manifest_gpa: self.manifest,
            manifest_len: u64::from(self.capacity),
            pages_present: u64::from(self.present),
            pages_pinned: u64::from(self.pinned),
            free_pages: s.free_pages,
            pages_migrated: s.pages_migrated,
        }
    }

    /// xorshift64: cheap, deterministic, good enough to scatter rewrites.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// Ids one call may scan for `budget` pages of work.
fn scan_limit(budget: u32) -> u32 {
    budget.saturating_mul(8).max(64)
}

/// Write page `(id, generation)`'s words through its mapping (the zero rule does the rest).
fn write_page(mmu: &mut impl Mmu, id: u32, generation: u32) {
    for off in WRITTEN_OFFSETS {
        mmu.write(
            id,
            off,
            expected_word(u64::from(id), u64::from(generation), off),
        );
    }
}

/// Sparse check of page `id` against its manifest entry.
fn check_page<H: PhysMem + Mmu>(hw: &H, id: u32, e: ManifestEntry) -> Result<(), CheckError> {
    let (id64, generation) = (u64::from(id), u64::from(e.generation));
    let spin = (id64 ^ generation) as usize;
    let sparse = WRITTEN_OFFSETS[4 + spin % 8];
    // 32..=496: zero words between the header and the first sparse word.
    let zero = 32 + 8 * (spin % 59);
    for offset in [0, 8, 16, 24, sparse, zero] {
        let expected = expected_word(id64, generation, offset);
        let found = hw.read(id, offset);
        if found != expected {
            return Err(CheckError::Content {
                id,
                offset,
                expected,
                found,
            });
        }
    }
    if hw.read_u64(e.gpa + 8) != id64 {
        return Err(CheckError::Manifest { id, gpa: e.gpa });
    }
    Ok(())
}

/// The workload's side of migration: remap through the [`Mmu`], record the new frame
/// in the manifest, copy through [`PhysMem`].
pub struct WorkloadMover<'h, H> {
    manifest: u64,
    capacity: u32,
    hw: &'h mut H,
}

impl<H: PhysMem + Mmu> PageMover for WorkloadMover<'_, H> {
    fn unmap(&mut self, owner: u32) {
        self.hw.unmap(owner);
    }

    fn map(&mut self, owner: u32, pfn: Pfn) {
        self.hw.map(owner, pfn);
        if owner < self.capacity {
            let at = self.manifest + u64::from(owner) * MANIFEST_ENTRY_SIZE as u64;
            self.hw.write_u64(at, pfn.gpa());
        }
    }

    fn copy_page(&mut self, src: Pfn, dst: Pfn) {
        self.hw.copy_page(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::Migratetype;
    use crate::mm::testutil::{REGION_A, World, boot_info};

    #[test]
    fn populate_fills_lent_memory_first_and_pages_verify() {
        let mut w = World::new(lent_pages(&boot_info()));
        assert_eq!(w.wl.populate(&mut w.mm, &mut w.hw, 100), 100);
        w.populate();
        assert!(w.wl.is_populated());
        assert_eq!(w.wl.present(), 1536);
        for (_, e) in w.present() {
            assert_eq!(
                w.mm.pageblock_type(Pfn::of_gpa(e.gpa)),
                Some(Migratetype::Cma)
            );
            assert_eq!((e.generation, e.flags), (1, PAGE_PRESENT));
        }
        assert_eq!(w.mm.stats().free_cma_pages, 0);
        w.verify_all();
        assert_eq!(w.wl.check(&w.hw, 5000), Ok(1536));
    }

    #[test]
    fn rewrite_bumps_generations_and_pages_still_verify() {
        let mut w = World::new(300);
        w.populate();
        assert_eq!(w.wl.rewrite(&mut w.hw, 50), 50);
        let bumped = w.present().iter().filter(|(_, e)| e.generation > 1).count();
        assert!(bumped > 0 && bumped <= 50);
        w.verify_all();
        assert_eq!(w.wl.check(&w.hw, 300), Ok(300));
    }

    #[test]
    fn check_reports_a_corrupt_word_and_a_wrong_manifest() {
        let mut w = World::new(10);
        w.populate();
        let e = w.wl.entry(&w.hw, 3);
        w.hw.write_u64(e.gpa + 16, 99);
        let got = w.wl.check(&w.hw, 10);
        assert!(matches!(
            got,
            Err(CheckError::Content {
                id: 3,
                offset: 16,
                found: 99,
                ..
            })
        ));
        w.hw.write_u64(e.gpa + 16, 1);
        // The manifest names another page's frame.
        let other = w.wl.entry(&w.hw, 4).gpa;
        w.hw.write_u64(MANIFEST_GPA_OF_3, other);
        let got = w.wl.check(&w.hw, 2048);
        assert_eq!(got, Err(CheckError::Manifest { id: 3, gpa: other }));
    }
    const MANIFEST_GPA_OF_3: u64 = crate::mm::testutil::MANIFEST + 3 * 16;

    #[test]
    fn pin_unpin_and_release_keep_counts_and_manifest_flags() {
        let mut w = World::new(100);
        w.populate();
        assert_eq!(w.wl.pin(&mut w.mm, &mut w.hw, 5), 5);
        assert_eq!((w.wl.pinned(), w.mm.stats().pinned_pages), (5, 5));
        let pinned = w
            .present()
            .iter()
            .filter(|(_, e)| e.flags & PAGE_PINNED != 0)
            .count();
        assert_eq!(pinned, 5);
        // Pinned pages are not released.
        assert_eq!(w.wl.release(&mut w.mm, &mut w.hw, 100), 95);
        assert_eq!(w.wl.present(), 5);
        assert_eq!(w.wl.unpin(&mut w.mm, &mut w.hw, 10), 5);
        assert_eq!(w.mm.stats().pinned_pages, 0);
        // Recreated pages reuse dirty frames (the zero rule) with a new generation.
        w.populate();
        assert_eq!(w.wl.present(), 100);
        assert!(w.present().iter().any(|(_, e)| e.generation == 2));
        w.verify_all();
        w.mm.check_invariants().unwrap();
        let r = w.wl.report(&w.mm);
        assert_eq!(
            (r.pages_present, r.pages_pinned, r.manifest_len),
            (100, 0, 2048)
        );
        assert_eq!(r.free_pages, w.mm.stats().free_pages);
    }

    #[test]
    fn migration_updates_the_manifest_and_the_mapping() {
        let mut w = World::new(1536);
        w.populate();
        w.wl.evict(
            &mut w.mm,
            &mut w.hw,
            REGION_A.start,
            0x1_0000,
            crate::mm::CopyMode::Guest,
        )
        .unwrap();
        w.verify_all();
        assert_eq!(w.wl.check(&w.hw, 2000), Ok(1536));
        assert_eq!(w.wl.report(&w.mm).pages_migrated, 16);
    }

    #[test]
    fn a_reused_frame_is_zeroed_by_its_written_words() {
        let mut w = World::new(1);
        w.populate();
        let gpa = w.wl.entry(&w.hw, 0).gpa;
        assert_eq!(w.wl.release(&mut w.mm, &mut w.hw, 1), 1);
        // Free, and dirty only at the written words.
        assert_ne!(w.hw.read_u64(gpa), 0);
        zero_frame(&mut w.hw, Pfn::of_gpa(gpa));
        assert!(
            w.hw.mem.borrow()[gpa as usize..][..4096]
                .iter()
                .all(|b| *b == 0)
        );
    }

    #[test]
    fn setup_limits() {
        assert_eq!(
            Workload::new(0, MAX_WORKLOAD_PAGES + 1, 0, 1).err(),
            Some(WorkloadError::TooManyPages)
        );
        assert_eq!(
            Workload::new(0, 10, 11, 1).err(),
            Some(WorkloadError::TargetAboveCapacity)
        );
        assert_eq!(page_va(1), WORKLOAD_VA_BASE + 4096);
        assert_eq!(manifest_bytes(257), 8192);
        assert_eq!(lent_pages(&boot_info()), 1536);
    }
}
