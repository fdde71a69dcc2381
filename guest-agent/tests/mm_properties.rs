//! Property tests: random sequences of allocator, workload, evict and return operations
//! (both copy modes, a copy engine that sometimes fails, nonsense ranges), with every
//! invariant and every workload page checked after every step.

mod support;

use guest_agent::mm::{CopyMode, EvictError, Migratetype, PageMover, PageState, Pfn};
use proptest::prelude::*;
use protocol::page::{PAGE_PINNED, WRITTEN_OFFSETS};
use std::collections::HashMap;
use support::{MB, REGION_A, REGION_B, World};

#[derive(Debug, Clone)]
enum Op {
    Populate(u32),
    Rewrite(u32),
    Check(u32),
    Pin(u32),
    Unpin(u32),
    Release(u32),
    AllocUnmovable(u32),
    FreeUnmovable(usize),
    Evict {
        in_b: bool,
        start: u32,
        pages: u32,
        align: u32,
        host: bool,
        capacity: usize,
        fail_at: Option<usize>,
    },
    Return {
        which: usize,
        skip: u32,
        pages: u32,
    },
    Nonsense {
        gpa: u64,
        len: u64,
        evict: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..400u32).prop_map(Op::Populate),
        2 => (1..100u32).prop_map(Op::Rewrite),
        1 => (1..100u32).prop_map(Op::Check),
        1 => (1..4u32).prop_map(Op::Pin),
        1 => (1..4u32).prop_map(Op::Unpin),
        1 => (1..50u32).prop_map(Op::Release),
        1 => (0..5u32).prop_map(Op::AllocUnmovable),
        1 => any::<usize>().prop_map(Op::FreeUnmovable),
        5 => (any::<bool>(), any::<u32>(), 1..600u32, 0..10u32, any::<bool>(), 1..200usize,
              prop::option::weighted(0.2, 0..5usize))
            .prop_map(|(in_b, start, pages, align, host, capacity, fail_at)| Op::Evict {
                in_b, start, pages, align, host, capacity, fail_at,
            }),
        3 => (any::<usize>(), any::<u32>(), any::<u32>())
            .prop_map(|(which, skip, pages)| Op::Return { which, skip, pages }),
        1 => (any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(gpa, len, evict)| Op::Nonsense { gpa, len, evict }),
    ]
}

/// A test run: the world plus what the test knows the VMM holds.
struct Run {
    w: World,
    granted: Vec<(u64, u64)>,
    unmovable: Vec<Pfn>,
    managed: u64,
}

/// What a failed request must leave as it was (pages may move on NoMemory/CopyFailed,
/// and a destination allocation may steal an ordinary pageblock, as in Linux).
#[derive(PartialEq)]
struct Outline {
    pages: Vec<(u32, u32, u32)>,
    cma_types: Vec<Option<Migratetype>>,
    host: u64,
    pinned: u64,
    unmovable: u64,
}

impl std::fmt::Debug for Outline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sum: u64 = self
            .pages
            .iter()
            .map(|p| u64::from(p.0) * 31 + u64::from(p.1) * 7 + u64::from(p.2))
            .sum();
        write!(
            f,
            "{} pages (sum {sum}), CMA pageblocks {:?}, host {}, pinned {}, unmovable {}",
            self.pages.len(),
            self.cma_types,
            self.host,
            self.pinned,
            self.unmovable
        )
    }
}

impl Run {
    fn new(target: u32) -> Self {
        let w = World::new(target);
        let s = w.mm.stats();
        Run {
            managed: s.free_pages,
            w,
            granted: vec![],
            unmovable: vec![],
        }
    }

    fn outline(&self) -> Outline {
        let s = self.w.mm.stats();
        Outline {
            pages: self
                .w
                .present()
                .iter()
                .map(|(id, e)| (*id, e.generation, e.flags))
                .collect(),
            cma_types: [3, 4, 6]
                .iter()
                .map(|pb| self.w.mm.pageblock_type(Pfn(pb * 512)))
                .collect(),
            host: s.host_pages,
            pinned: s.pinned_pages,
            unmovable: s.unmovable_pages,
        }
    }

    fn gpas(&self) -> HashMap<u32, u64> {
        self.w
            .present()
            .into_iter()
            .map(|(id, e)| (id, e.gpa))
            .collect()
    }

    fn apply(&mut self, op: &Op) {
        let w = &mut self.w;
        match *op {
            Op::Populate(n) => drop(w.wl.populate(&mut w.mm, &mut w.hw, n)),
            Op::Rewrite(n) => drop(w.wl.rewrite(&mut w.hw, n)),
            Op::Check(n) => drop(w.wl.check(&w.hw, n).expect("self-check")),
            Op::Pin(n) => drop(w.wl.pin(&mut w.mm, &mut w.hw, n)),
            Op::Unpin(n) => drop(w.wl.unpin(&mut w.mm, &mut w.hw, n)),
            Op::Release(n) => drop(w.wl.release(&mut w.mm, &mut w.hw, n)),
            Op::AllocUnmovable(order) => {
                if let Some(p) = w.mm.alloc_unmovable(order) {
                    // A stolen block may sit in a MOVABLE pageblock (Linux does the same).
                    let mt = w.mm.pageblock_type(p);
                    assert!(matches!(
                        mt,
                        Some(Migratetype::Unmovable | Migratetype::Movable)
                    ));
                    self.unmovable.push(p);
                }
            }
            Op::FreeUnmovable(i) if !self.unmovable.is_empty() => {
                let p = self.unmovable.swap_remove(i % self.unmovable.len());
                w.mm.free(p).unwrap();
            }
            Op::FreeUnmovable(_) => {}
            Op::Evict {
                in_b,
                start,
                pages,
                align,
                host,
                capacity,
                fail_at,
            } => {
                let region = if in_b { REGION_B } else { REGION_A };
                let region_pages = ((region.end - region.start) / 4096) as u32;
                let start = (start % region_pages) & !((1 << align) - 1);
                let pages = pages.min(region_pages - start);
                self.evict(
                    region.start + u64::from(start) * 4096,
                    u64::from(pages) * 4096,
                    host,
                    capacity,
                    fail_at,
                );
            }
            Op::Return { which, skip, pages } if !self.granted.is_empty() => {
                let i = which % self.granted.len();
                let (gpa, len) = self.granted[i];
                let total = (len / 4096) as u32;
                let skip = skip % total;
                let pages = 1 + pages % (total - skip);
                self.give_back(i, gpa + u64::from(skip) * 4096, u64::from(pages) * 4096);
            }
            Op::Return { .. } => {}
            Op::Nonsense { gpa, len, evict } => self.nonsense(gpa, len, evict),
        }
    }

    fn evict(&mut self, gpa: u64, len: u64, host: bool, capacity: usize, fail_at: Option<usize>) {
        let (before, gpas, migrated0) = (
            self.outline(),
            self.gpas(),
            self.w.mm.stats().pages_migrated,
        );
        let w = &mut self.w;
        w.engine.capacity = capacity;
        w.engine.fail_at = fail_at;
        w.engine.calls = 0;
        // The pageblocks the eviction isolates: no destination may land there.
        let isolated = (gpa & !(2 * MB - 1), (gpa + len).next_multiple_of(2 * MB));
        let mut mover = Checked {
            inner: w.wl.mover(&mut w.hw),
            isolated,
            original: &gpas,
        };
        let mode = if host {
            CopyMode::Host(&mut w.engine)
        } else {
            CopyMode::Guest
        };
        let got = w.mm.evict(gpa, len, &mut mover, mode);
        let migrated = self.w.mm.stats().pages_migrated - migrated0;
        match got {
            Ok(n) => {
                assert_eq!(n, migrated);
                self.assert_host_owned(gpa, len);
                // The device writes the chunk while it owns it.
                self.w.hw.mem.borrow_mut()[gpa as usize..(gpa + len) as usize].fill(0xa5);
                self.granted.push((gpa, len));
            }
            Err(e) => {
                assert_eq!(e.migrated(), migrated, "{e:?}");
                assert_eq!(self.outline(), before, "{e:?}");
                let now = self.gpas();
                for (id, old) in &gpas {
                    let moved = now[id] != *old;
                    if moved {
                        assert!(
                            (gpa..gpa + len).contains(old) && !(gpa..gpa + len).contains(&now[id])
                        );
                    }
                }
                if matches!(e, EvictError::Invalid(_) | EvictError::Busy { .. }) {
                    assert!(now == gpas && migrated == 0, "{e:?} moved pages");
                }
                if let EvictError::Busy { first_busy } = e {
                    self.assert_busy(first_busy);
                }
            }
        }
    }

    /// The VMM scrubs, then returns a part of granted range `i`.
    fn give_back(&mut self, i: usize, gpa: u64, len: u64) {
        let (start, total) = self.granted.swap_remove(i);
        self.w.hw.mem.borrow_mut()[gpa as usize..(gpa + len) as usize].fill(0);
        assert_eq!(self.w.mm.return_range(gpa, len), Ok(len / 4096));
        for p in (gpa..gpa + len).step_by(4096) {
            assert_eq!(self.w.mm.page_state(Pfn::of_gpa(p)), PageState::Free);
        }
        if gpa > start {
            self.granted.push((start, gpa - start));
        }
        if gpa + len < start + total {
            self.granted.push((gpa + len, start + total - gpa - len));
        }
    }

    fn nonsense(&mut self, gpa: u64, len: u64, evict: bool) {
        let (before, gpas, stats) = (self.outline(), self.gpas(), self.w.mm.stats().host_pages);
        let w = &mut self.w;
        let got = if evict {
            w.wl.evict(&mut w.mm, &mut w.hw, gpa, len, CopyMode::Guest)
                .map(drop)
                .map_err(|e| e.status())
        } else {
            w.mm.return_range(gpa, len)
                .map(drop)
                .map_err(|_| protocol::msg::Status::Invalid)
        };
        // Random 64-bit ranges are practically never valid; if one is, it was handled.
        if got.is_err() {
            assert_eq!(self.outline(), before);
            assert!(self.gpas() == gpas && self.w.mm.stats().host_pages == stats);
        } else if evict {
            self.granted.push((gpa, len));
        } else {
            panic!("returned a range the host never had: {gpa:#x}+{len:#x}");
        }
    }

    fn assert_host_owned(&self, gpa: u64, len: u64) {
        for p in (gpa..gpa + len).step_by(4096) {
            assert_eq!(self.w.mm.page_state(Pfn::of_gpa(p)), PageState::Host);
        }
    }

    fn assert_busy(&self, first_busy: u64) {
        match self.w.mm.page_state(Pfn::of_gpa(first_busy)) {
            PageState::Movable { pins, .. } => assert!(pins > 0),
            PageState::Unmovable => {}
            s => panic!("busy page {first_busy:#x} is {s:?}"),
        }
    }

    /// Every rule, after every step.
    fn check(&self) {
        let w = &self.w;
        w.mm.check_invariants().unwrap();
        w.verify_all();
        let s = w.mm.stats();
        assert_eq!(
            s.free_pages + s.movable_pages + s.unmovable_pages + s.host_pages,
            self.managed
        );
        for pb in 0..7 {
            assert_ne!(
                w.mm.pageblock_type(Pfn(pb * 512)),
                Some(Migratetype::Isolate)
            );
        }
        let present = w.present();
        assert_eq!(present.len() as u32, w.wl.present());
        assert_eq!(
            present
                .iter()
                .filter(|(_, e)| e.flags & PAGE_PINNED != 0)
                .count() as u32,
            w.wl.pinned()
        );
        assert_eq!(s.movable_pages, u64::from(w.wl.present()));
        assert_eq!(
            s.host_pages,
            self.granted.iter().map(|(_, l)| l / 4096).sum::<u64>()
        );
        for (gpa, len) in &self.granted {
            assert!(
                present
                    .iter()
                    .all(|(_, e)| e.gpa < *gpa || e.gpa >= gpa + len)
            );
        }
    }

    /// The zero rule: every free frame is zero outside the workload's written words.
    fn check_free_frames_are_clean(&self) {
        let mem = self.w.hw.mem.borrow();
        for pfn in 0..(support::MEM / 4096) {
            if self.w.mm.page_state(Pfn(pfn)) != PageState::Free {
                continue;
            }
            let page = &mem[(pfn * 4096) as usize..][..4096];
            for off in (0..4096)
                .step_by(8)
                .filter(|o| !WRITTEN_OFFSETS.contains(o))
            {
                assert_eq!(
                    page[off..off + 8],
                    [0; 8],
                    "free frame {pfn:#x} dirty at {off}"
                );
            }
        }
    }
}

/// Forwards to the workload's mover and checks every destination is outside the
/// isolated pageblocks (a rollback maps a page back to its original frame).
struct Checked<'a, M> {
    inner: M,
    isolated: (u64, u64),
    original: &'a HashMap<u32, u64>,
}

impl<M: PageMover> PageMover for Checked<'_, M> {
    fn unmap(&mut self, owner: u32) {
        self.inner.unmap(owner);
    }

    fn map(&mut self, owner: u32, pfn: Pfn) {
        let in_isolated = (self.isolated.0..self.isolated.1).contains(&pfn.gpa());
        assert!(
            !in_isolated || self.original[&owner] == pfn.gpa(),
            "destination {pfn:?} isolated"
        );
        self.inner.map(owner, pfn);
    }

    fn copy_page(&mut self, src: Pfn, dst: Pfn) {
        self.inner.copy_page(src, dst);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_keep_every_invariant(
        target in prop_oneof![Just(1536u32), 0..2048u32],
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut run = Run::new(target);
        run.apply(&Op::Populate(target));
        run.check();
        for op in &ops {
            run.apply(op);
            run.check();
        }
        run.check_free_frames_are_clean();
        // Give everything back: the guest ends with all its memory.
        while let Some(&(gpa, len)) = run.granted.last() {
            run.give_back(run.granted.len() - 1, gpa, len);
            run.check();
        }
        prop_assert_eq!(run.w.mm.stats().host_pages, 0);
    }
}
