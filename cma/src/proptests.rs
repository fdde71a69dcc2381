//! Property and stress tests: random sequences of operations against a guest that answers
//! at random keep every invariant; bad arguments never panic; threads agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;

use proptest::prelude::*;

use super::*;
use crate::region::RegionSpec;
use crate::test_utils::*;

/// What the guest answers to one claim.
#[derive(Debug, Clone)]
enum Answer {
    Claimed,
    /// Busy at an offset inside the candidate.
    BusyInside(u64),
    /// Busy at any address at all (a lying guest).
    BusyAnywhere(u64),
    Failed,
}

impl Answer {
    fn outcome(&self, gpa: u64, len: u64) -> ClaimOutcome {
        match *self {
            Answer::Claimed => ClaimOutcome::Claimed {
                pages_migrated: len / 4096,
            },
            Answer::BusyInside(k) => ClaimOutcome::Busy { at: gpa + k % len },
            Answer::BusyAnywhere(at) => ClaimOutcome::Busy { at },
            Answer::Failed => ClaimOutcome::Failed("no".into()),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        names: usize,
        size: u64,
        align_order: u32,
        offset_pages: u64,
        pinned: bool,
        answers: Vec<Answer>,
    },
    Free(usize),
    Pin(usize),
    Unpin(usize),
    Compact {
        region: u32,
        answers: Vec<Answer>,
        copy_fails: bool,
    },
}

const NAMES: [&str; 5] = ["a", "b", "c", "b,a", "a,c"];

/// `a`: 4 MiB at 2 MiB; `b`: 2 MiB of 8 KiB bits at 10 MiB; `c`: private, 6 MiB at 14 MiB.
fn small_regions() -> Cma {
    let mut c = region(2, "c", 14 * MIB, 6 * MIB, 0);
    c.private = true;
    let regions = [
        region(0, "a", 2 * MIB, 4 * MIB, 0),
        region(1, "b", 10 * MIB, 2 * MIB, 1),
        c,
    ];
    Cma::new(&regions, &[rule(&["*"], &["a", "b"])]).unwrap()
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => Just(Answer::Claimed),
        2 => any::<u64>().prop_map(Answer::BusyInside),
        1 => any::<u64>().prop_map(Answer::BusyAnywhere),
        1 => Just(Answer::Failed),
    ]
}

/// Mostly small chunks, so that frees leave holes and compaction has work.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1u64..(64 << 10), 1 => 1u64..(1536 << 10)]
}

fn op() -> impl Strategy<Value = Op> {
    let answers = || prop::collection::vec(answer(), 0..6);
    prop_oneof![
        4 => (0..NAMES.len(), size(), 11u32..23, 0u64..1024, any::<bool>(), answers())
            .prop_map(|(names, size, align_order, offset_pages, pinned, answers)| Op::Alloc {
                names, size, align_order, offset_pages, pinned, answers,
            }),
        2 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Pin),
        2 => any::<usize>().prop_map(Op::Unpin),
        2 => (0u32..3, prop::collection::vec(answer(), 0..2), prop::bool::weighted(0.1))
            .prop_map(|(region, answers, copy_fails)| Op::Compact { region, answers, copy_fails }),
    ]
}

/// A claim that answers from a script and checks the invariants while no lock is held.
fn scripted<'a>(
    cma: &'a Cma,
    answers: &'a [Answer],
) -> impl FnMut(&RegionSpec, u64, u64) -> ClaimOutcome + 'a {
    let mut next = answers.iter();
    move |_: &RegionSpec, gpa, len| {
        cma.check().expect("invariants during a claim");
        next.next().unwrap_or(&Answer::Claimed).outcome(gpa, len)
    }
}

/// Every live chunk is where the model expects it: inside its region, aligned as asked,
/// no two overlapping, and the allocator lists exactly these.
fn check_model(cma: &Cma, live: &HashMap<ChunkId, AllocRequest>) -> Result<(), TestCaseError> {
    cma.check().map_err(TestCaseError::fail)?;
    let mut chunks = cma.chunks();
    prop_assert_eq!(chunks.len(), live.len());
    for c in &chunks {
        let req = live
            .get(&c.id)
            .ok_or_else(|| TestCaseError::fail("unknown chunk listed"))?;
        let r = &cma.regions()[c.region as usize];
        prop_assert!(
            c.gpa >= r.base && c.gpa + c.len <= r.end(),
            "outside its region: {:?}",
            c
        );
        prop_assert_eq!(c.gpa % req.effective_align(), req.align_offset);
        prop_assert!(c.len >= req.size && c.len % (4096 << r.order_per_bit) == 0);
    }
    chunks.sort_by_key(|c| c.gpa);
    for w in chunks.windows(2) {
        prop_assert!(w[0].gpa + w[0].len <= w[1].gpa, "overlap: {:?}", w);
    }
    Ok(())
}

fn run(cma: &Cma, op: &Op, live: &mut HashMap<ChunkId, AllocRequest>) -> Result<(), TestCaseError> {
    let nth = |i: usize, live: &HashMap<ChunkId, AllocRequest>| {
        let mut ids: Vec<ChunkId> = live.keys().copied().collect();
        ids.sort();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    };
    match op {
        Op::Alloc {
            names,
            size,
            align_order,
            offset_pages,
            pinned,
            answers,
        } => {
            let align = if *align_order == 11 {
                0
            } else {
                1u64 << align_order
            };
            let offset = (offset_pages * 4096) % align.max(4096);
            let req = AllocRequest {
                pinned: *pinned,
                ..AllocRequest::new(*size).aligned(align, offset)
            };
            match cma.alloc_from(NAMES[*names], &req, &mut scripted(cma, answers)) {
                Ok(c) => {
                    prop_assert_eq!(c.pinned, *pinned);
                    live.insert(c.id, req);
                }
                Err(e) => prop_assert!(
                    matches!(
                        e,
                        CmaError::NoSpace { .. }
                            | CmaError::Busy { .. }
                            | CmaError::ClaimFailed { .. }
                            | CmaError::TooLarge { .. }
                            | CmaError::Unreachable { .. }
                    ),
                    "unexpected {:?}",
                    e
                ),
            }
        }
        Op::Free(i) => {
            if let Some(id) = nth(*i, live) {
                prop_assert_eq!(cma.free(id, &mut released()), Ok(()));
                prop_assert_eq!(cma.free(id, &mut released()), Err(CmaError::DoubleFree(id)));
                live.remove(&id);
            }
        }
        Op::Pin(i) | Op::Unpin(i) => {
            if let Some(id) = nth(*i, live) {
                let pin = matches!(op, Op::Pin(_));
                prop_assert_eq!(if pin { cma.pin(id) } else { cma.unpin(id) }, Ok(()));
                prop_assert_eq!(cma.chunk(id).map(|c| c.pinned), Some(pin));
            }
        }
        Op::Compact {
            region,
            answers,
            copy_fails,
        } => {
            let pinned: Vec<Chunk> = cma.chunks().into_iter().filter(|c| c.pinned).collect();
            let mut mover = TestMover {
                claims: Scripted::new(answers.iter().map(|a| a.outcome(0, 4096))),
                copy_fails: *copy_fails,
                during_copy: Some(Box::new(|| cma.check().expect("invariants during a move"))),
                ..TestMover::default()
            };
            let report = cma
                .compact(*region, &mut mover)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(report.largest_free_after >= report.largest_free_before);
            for c in pinned {
                prop_assert_eq!(cma.chunk(c.id), Some(c), "a pinned chunk moved");
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_operations_keep_every_invariant(ops in prop::collection::vec(op(), 1..60)) {
        let cma = small_regions();
        let mut live = HashMap::new();
        for op in &ops {
            run(&cma, op, &mut live)?;
            check_model(&cma, &live)?;
        }
        for id in live.keys() {
            prop_assert_eq!(cma.free(*id, &mut released()), Ok(()));
        }
        prop_assert!(cma.is_empty());
        prop_assert!(cma.stats().iter().all(|s| s.used == 0 && s.largest_free == s.size));
    }

    #[test]
    fn bad_arguments_return_errors_never_panic(
        size in any::<u64>(),
        align in prop_oneof![any::<u64>(), (0u32..64).prop_map(|s| 1u64 << s)],
        offset in any::<u64>(),
        max_attempts in any::<u32>(),
        names in "[a-c, ]{0,6}",
        ids in prop::collection::vec(any::<u32>(), 0..4),
        parts in (any::<u32>(), any::<u32>(), any::<u64>()),
    ) {
        let cma = small_regions();
        let req = AllocRequest { size, align, align_offset: offset, pinned: true, max_attempts };
        let mut results = [
            cma.alloc_from(&names, &req, &mut claimed()),
            cma.alloc(&names, &req, &mut claimed()),
            cma.alloc_in(&ids, &req, &mut claimed()),
        ];
        for c in results.iter_mut().filter_map(|r| r.as_ref().ok()) {
            prop_assert_eq!(c.gpa % req.effective_align(), req.align_offset);
            prop_assert_eq!(cma.free(c.id, &mut released()), Ok(()));
        }
        let _ = cma.info_about(&names);
        let _ = cma.resolve_device(&names);
        let _ = cma.compact(parts.1, &mut TestMover::default());
        let id = ChunkId::from_parts(parts.0, parts.1, parts.2);
        prop_assert!(cma.free(id, &mut released()).is_err());
        prop_assert!(cma.pin(id).is_err() && cma.unpin(id).is_err());
        prop_assert!(cma.chunk(id).is_none());
        prop_assert!(cma.is_empty());
        cma.check().map_err(TestCaseError::fail)?;
    }
}

/// One thread's view: its chunks and the moves its listeners heard.
type Moves = Arc<Mutex<HashMap<ChunkId, u64>>>;

/// One thread's random operations; its live chunks and what their listeners heard.
fn worker(cma: &Cma, seed: u64, names: &str, compacts: bool) -> (Vec<ChunkId>, Moves) {
    let mut rng = Rng(seed);
    let heard: Moves = Arc::default();
    let mut mine: Vec<ChunkId> = Vec::new();
    for _ in 0..400 {
        match rng.below(10) {
            0..=4 => {
                let size = 4096 * (1 + rng.below(64));
                let req = AllocRequest::new(size).aligned(4096 << rng.below(5), 0);
                let req = AllocRequest {
                    pinned: rng.below(2) == 0,
                    ..req
                };
                let roll = rng.below(20);
                let mut claim = |_: &RegionSpec, gpa: u64, _| match roll {
                    0 => ClaimOutcome::Failed("timeout".into()),
                    1..=2 => ClaimOutcome::Busy { at: gpa },
                    3 => {
                        cma.check().expect("invariants");
                        ClaimOutcome::Claimed { pages_migrated: 1 }
                    }
                    _ => ClaimOutcome::Claimed { pages_migrated: 1 },
                };
                if let Ok(c) = cma.alloc_from(names, &req, &mut claim) {
                    let log = Arc::clone(&heard);
                    let listen = Box::new(move |m: ChunkMoved| {
                        log.lock().unwrap().insert(m.id, m.new_gpa);
                    });
                    cma.set_move_listener(c.id, listen).unwrap();
                    mine.push(c.id);
                }
            }
            5..=7 if !mine.is_empty() => {
                let id = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                // A chunk under compaction refuses to be freed until the move is done.
                while let Err(e) = cma.free(id, &mut released()) {
                    assert_eq!(e, CmaError::ChunkMoving(id));
                    thread::yield_now();
                }
            }
            8 if !mine.is_empty() => {
                let id = mine[rng.below(mine.len() as u64) as usize];
                let r = if rng.below(2) == 0 {
                    cma.pin(id)
                } else {
                    cma.unpin(id)
                };
                assert_eq!(r, Ok(()));
            }
            _ if compacts => {
                cma.compact(2, &mut TestMover::default()).unwrap();
            }
            _ => {}
        }
    }
    (mine, heard)
}

#[test]
fn threads_allocating_in_own_and_shared_regions_keep_every_invariant() {
    let regions = [
        region(0, "own0", 2 * MIB, 8 * MIB, 0),
        region(1, "own1", 10 * MIB, 8 * MIB, 1),
        region(2, "shared", 18 * MIB, 16 * MIB, 0),
    ];
    let cma = Arc::new(Cma::new(&regions, &[]).unwrap());
    let plans = [
        ("own0,shared", false),
        ("own1,shared", false),
        ("shared", true),
        ("shared,own0", true),
    ];
    let handles: Vec<_> = plans
        .into_iter()
        .enumerate()
        .map(|(i, (names, compacts))| {
            let cma = Arc::clone(&cma);
            thread::spawn(move || worker(&cma, 0x9e37_79b9 + i as u64, names, compacts))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut moves = 0;
    for (mine, heard) in results {
        let heard = heard.lock().unwrap();
        moves += heard.len();
        // Every compaction is over: listeners and the allocator agree on every chunk.
        for id in mine {
            if let Some(&gpa) = heard.get(&id) {
                assert_eq!(cma.chunk(id).expect("live").gpa, gpa, "{id:?}");
            }
            cma.free(id, &mut released()).unwrap();
        }
    }
    assert!(
        moves > 0,
        "compaction moved chunks that their owners heard of"
    );
    cma.check().unwrap();
    assert!(cma.is_empty());
    let stats = cma.stats();
    assert!(
        stats
            .iter()
            .all(|s| s.allocs_ok > 0 && s.frees == s.allocs_ok)
    );
    assert!(stats[2].compactions > 0);
}
