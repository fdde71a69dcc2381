//! One or more tests per rule of the allocator (regions, search, concurrency, regions API,
//! pin/compaction, statistics, errors). Property and stress tests are in `proptests.rs`.

use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use super::*;
use crate::region::{MapRule, RegionSpec, parse_map_rules};
use crate::test_utils::*;

fn alloc_ok(cma: &Cma, names: &str, req: AllocRequest) -> Chunk {
    let c = cma
        .alloc_from(names, &req, &mut claimed())
        .expect("allocation");
    cma.check().expect("invariants");
    c
}

fn free_all(cma: &Cma) {
    for c in cma.chunks() {
        cma.free(c.id, &mut released()).expect("free");
    }
    cma.check().expect("invariants");
    assert!(cma.is_empty());
}

// Rule 1: regions as the caller placed them.

#[test]
fn rule1_regions_are_taken_as_given() {
    let mut secret = region(2, "secret", 48 * MIB, 4 * MIB, 0);
    secret.private = true;
    let regions = vec![
        region(0, "video", 16 * MIB, 16 * MIB, 0),
        region(1, "camera", 40 * MIB, 8 * MIB, 2),
        secret,
    ];
    let map = parse_map_rules("video-dev=video;*=camera").unwrap();
    let cma = Cma::new(&regions, &map).unwrap();
    assert_eq!(cma.regions(), &regions[..]);
    assert_eq!(cma.region(1), Some(&regions[1]));
    assert_eq!(cma.region(3), None);
    let stats = cma.stats();
    assert_eq!((stats[1].granule, stats[1].order_per_bit), (16 << 10, 2));
    assert!(stats[2].private && !stats[0].private);
    // One bit per 2^order_per_bit pages: a 4 KiB request takes 16 KiB.
    let c = cma
        .alloc("any", &AllocRequest::new(4096), &mut claimed())
        .unwrap();
    assert_eq!((c.region, c.gpa, c.len), (1, regions[1].base, 16 << 10));
    free_all(&cma);
}

#[test]
fn rule1_unusable_region_tables_are_refused() {
    let ok = region(0, "a", 4 * MIB, 4 * MIB, 0);
    let cases: Vec<(Vec<RegionSpec>, Vec<MapRule>)> = vec![
        (vec![region(1, "a", 4 * MIB, 4 * MIB, 0)], vec![]),
        (
            vec![ok.clone(), region(1, "a", 8 * MIB, 4 * MIB, 0)],
            vec![],
        ),
        (vec![region(0, "a", 4 * MIB, 6 * MIB, 10)], vec![]),
        (vec![region(0, "a", 4 * MIB, 4 * MIB, 17)], vec![]),
        (vec![region(0, "a", 4 * MIB, 0, 0)], vec![]),
        (vec![region(0, "a", 4 * MIB, 128 << 30, 0)], vec![]),
        (vec![region(0, "a", u64::MAX - 4095, 4 * MIB, 0)], vec![]),
        (vec![region(0, "a", 4 * MIB + 1, 4 * MIB, 0)], vec![]),
        (vec![ok.clone()], vec![rule(&["*"], &["nope"])]),
        // Names that a list ("r1,r2") or a rule could not spell.
        (vec![region(0, "", 4 * MIB, 4 * MIB, 0)], vec![]),
        (vec![region(0, "a,b", 4 * MIB, 4 * MIB, 0)], vec![]),
        (vec![region(0, " a", 4 * MIB, 4 * MIB, 0)], vec![]),
        (vec![region(0, "a=b", 4 * MIB, 4 * MIB, 0)], vec![]),
        (
            vec![ok.clone(), region(1, "b", 6 * MIB, 4 * MIB, 0)],
            vec![],
        ),
    ];
    for (regions, map) in cases {
        let e = Cma::new(&regions, &map).err();
        assert!(
            matches!(e, Some(CmaError::BadRegionTable(_))),
            "{regions:?}"
        );
    }
}

// Rule 2: the search, alignment, busy retries.

#[test]
fn rule2_first_fit_of_any_size_rounded_to_bits() {
    let cma = three_regions();
    let a = alloc_ok(&cma, "video", AllocRequest::new(1));
    let b = alloc_ok(&cma, "video", AllocRequest::new(4097));
    assert_eq!((a.gpa, a.len), (6 * MIB, 4096));
    assert_eq!((b.gpa, b.len), (6 * MIB + 4096, 8192));
    assert_eq!(alloc_ok(&cma, "camera", AllocRequest::new(1)).len, 8192);
    cma.free(a.id, &mut released()).unwrap();
    let d = alloc_ok(&cma, "video", AllocRequest::new(4096));
    assert_eq!(d.gpa, 6 * MIB, "first fit reuses the hole");
    free_all(&cma);
}

#[test]
fn rule2_alignment_and_offset_are_guest_physical() {
    let cma = three_regions();
    // video starts at 6 MiB: its first 4 MiB-aligned chunk is at 8 MiB, not at bit 0.
    let c = alloc_ok(&cma, "video", AllocRequest::new(4096).aligned(4 * MIB, 0));
    assert_eq!(c.gpa, 8 * MIB);
    let cases = [
        (0, 0),
        (4096, 0),
        (64 << 10, 0),
        (MIB, 0),
        (4 * MIB, MIB),
        (2 * MIB, 12 << 10),
        (8 * MIB, 8 * MIB - 4096),
    ];
    for (align, offset) in cases {
        let c = alloc_ok(
            &cma,
            "video",
            AllocRequest::new(12 << 10).aligned(align, offset),
        );
        assert_eq!(c.gpa % align.max(4096), offset, "{align:#x} {offset:#x}");
        assert!(c.gpa >= 6 * MIB && c.gpa + c.len <= 22 * MIB);
    }
    // camera has 8 KiB bits: a 16 KiB alignment is met in bit terms.
    let c = alloc_ok(
        &cma,
        "camera",
        AllocRequest::new(4096).aligned(16 << 10, 8 << 10),
    );
    assert_eq!(c.gpa % (16 << 10), 8 << 10);
    free_all(&cma);
}

#[test]
fn rule2_busy_resumes_at_the_next_aligned_candidate_after_the_busy_page() {
    let cma = three_regions();
    let req = AllocRequest::new(64 << 10).aligned(64 << 10, 0);
    let mut claim = Scripted::new([ClaimOutcome::Busy {
        at: 6 * MIB + (20 << 10),
    }]);
    cma.alloc_from("video", &req, &mut claim).unwrap();
    assert_eq!(
        claim.calls,
        [(6 * MIB, 64 << 10), (6 * MIB + (64 << 10), 64 << 10)]
    );
    // Unaligned: the next candidate starts at the page after the busy one.
    let mut claim = Scripted::new([ClaimOutcome::Busy {
        at: 6 * MIB + 4096 + 5,
    }]);
    let c = cma
        .alloc_from("video", &AllocRequest::new(16 << 10), &mut claim)
        .unwrap();
    assert_eq!(c.gpa, 6 * MIB + 8192);
    assert_eq!(cma.stats()[0].busy_retries, 2);
    free_all(&cma);
}

#[test]
fn rule2_a_lying_guest_cannot_stall_the_search() {
    let cma = three_regions();
    let lies = [0, u64::MAX, 6 * MIB - 1, 22 * MIB, 1 << 40, 6 * MIB];
    let mut claim = Scripted::new(lies.map(|at| ClaimOutcome::Busy { at }));
    let req = AllocRequest {
        max_attempts: 100,
        ..AllocRequest::new(4096)
    };
    let c = cma.alloc_from("video", &req, &mut claim).unwrap();
    let starts: Vec<u64> = claim.calls.iter().map(|c| c.0).collect();
    assert!(starts.windows(2).all(|w| w[1] > w[0]), "{starts:x?}");
    assert_eq!(c.gpa, 6 * MIB + lies.len() as u64 * 4096);
    free_all(&cma);
}

#[test]
fn rule2_busy_retries_are_bounded() {
    let cma = three_regions();
    let calls = std::cell::Cell::new(0);
    let mut always_busy = |_: &RegionSpec, gpa: u64, _| {
        calls.set(calls.get() + 1);
        ClaimOutcome::Busy { at: gpa }
    };
    let req = AllocRequest {
        max_attempts: 5,
        ..AllocRequest::new(4096)
    };
    let e = cma.alloc_from("video", &req, &mut always_busy).unwrap_err();
    let expected = CmaError::Busy {
        region: "video".into(),
        attempts: 5,
        last_busy: 6 * MIB + 4 * 4096,
    };
    assert_eq!((e, calls.get()), (expected, 5));
    assert!(cma.is_empty());
    // 0 attempts counts as one.
    let req = AllocRequest {
        max_attempts: 0,
        ..req
    };
    let e = cma.alloc_from("video", &req, &mut always_busy).unwrap_err();
    assert!(matches!(e, CmaError::Busy { attempts: 1, .. }));
    // Candidates run out before the bound: 8 MiB at 8 MiB alignment fits only at 8 MiB.
    let req = AllocRequest::new(8 * MIB).aligned(8 * MIB, 0);
    let e = cma.alloc_from("video", &req, &mut always_busy).unwrap_err();
    assert!(matches!(e, CmaError::Busy { attempts: 1, last_busy, .. } if last_busy == 8 * MIB));
    assert!(cma.is_empty());
}

#[test]
fn rule2_a_failed_claim_clears_its_bits_and_stops() {
    let cma = three_regions();
    let mut claim = Scripted::new([ClaimOutcome::Failed("timeout".into())]);
    // `cam` maps to camera then video: a failure in camera does not go on to video.
    let e = cma
        .alloc("cam", &AllocRequest::new(4096), &mut claim)
        .unwrap_err();
    assert!(
        matches!(&e, CmaError::ClaimFailed { region, reason, gpa, .. }
        if region == "camera" && reason == "timeout" && *gpa == 32 * MIB)
    );
    assert_eq!(claim.calls.len(), 1);
    assert!(cma.is_empty());
    assert_eq!(cma.stats()[1].allocs_failed, 1);
}

#[test]
fn rule2_bits_are_marked_before_the_claim_runs() {
    let cma = three_regions();
    let mut nested = None;
    let mut claim = |_: &RegionSpec, gpa: u64, len: u64| {
        assert_eq!(cma.stats()[0].used, len);
        cma.check().unwrap();
        // A nested allocation in the same region cannot get the candidate.
        let inner = alloc_ok(&cma, "video", AllocRequest::new(4096));
        assert_eq!(inner.gpa, gpa + len);
        nested = Some(inner);
        ClaimOutcome::Claimed { pages_migrated: 3 }
    };
    let outer = cma
        .alloc_from("video", &AllocRequest::new(8192), &mut claim)
        .unwrap();
    assert_eq!(outer.gpa, 6 * MIB);
    assert!(nested.is_some());
    free_all(&cma);
}

// Rule 3: per-region locks, no lock held in callbacks.

#[test]
fn rule3_callbacks_may_call_back_into_the_allocator() {
    let cma = three_regions();
    let c = alloc_ok(&cma, "video", AllocRequest::new(4096));
    let mut release = |_: &RegionSpec, gpa: u64, _| {
        // Still taken while the release runs: a nested allocation does not get it.
        assert_ne!(alloc_ok(&cma, "video", AllocRequest::new(4096)).gpa, gpa);
        assert!(cma.info_about("video").is_ok());
    };
    cma.free(c.id, &mut release).unwrap();
    free_all(&cma);
}

/// Run `f` on another thread; fail (instead of hanging) if it does not finish in time.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("blocked: a lock is held across a callback")
}

#[test]
fn rule3_a_slow_claim_blocks_neither_its_region_nor_others() {
    let cma = Arc::new(three_regions());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let slow = {
        let cma = Arc::clone(&cma);
        thread::spawn(move || {
            let mut claim = move |_: &RegionSpec, _, _| {
                entered_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                ClaimOutcome::Claimed { pages_migrated: 0 }
            };
            cma.alloc_from("video", &AllocRequest::new(4096), &mut claim)
        })
    };
    entered_rx.recv().unwrap();
    let (same, other) = within({
        let cma = Arc::clone(&cma);
        move || {
            let same = alloc_ok(&cma, "video", AllocRequest::new(4096));
            let other = alloc_ok(&cma, "camera", AllocRequest::new(4096));
            let _ = cma.stats();
            (same, other)
        }
    });
    assert_eq!((same.gpa, other.region), (6 * MIB + 4096, 1));
    go_tx.send(()).unwrap();
    assert_eq!(slow.join().unwrap().unwrap().gpa, 6 * MIB);
    free_all(&cma);
}

/// Calls back into the allocator when dropped.
struct CallsBackOnDrop(Arc<Cma>);

impl Drop for CallsBackOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stats();
    }
}

#[test]
fn rule3_listeners_are_dropped_outside_the_lock() {
    let cma = Arc::new(three_regions());
    let c = alloc_ok(&cma, "video", AllocRequest::new(4096));
    let listener = |cma: &Arc<Cma>| -> MoveListener {
        let guard = CallsBackOnDrop(Arc::clone(cma));
        Box::new(move |_| {
            let _ = &guard;
        })
    };
    let cma2 = Arc::clone(&cma);
    within(move || {
        // Replacing a listener drops the old one; freeing the chunk drops the new one.
        cma2.set_move_listener(c.id, listener(&cma2)).unwrap();
        cma2.set_move_listener(c.id, listener(&cma2)).unwrap();
        cma2.free(c.id, &mut released()).unwrap();
    });
    assert_eq!(Arc::strong_count(&cma), 1);
    assert!(cma.is_empty());
}

#[test]
fn rule3_cma_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Cma>();
    shared::<Arc<Cma>>();
}

// Rule 4: map rules and the regions API.

#[test]
fn rule4_first_matching_rule_wins_and_star_is_the_default() {
    let cma = three_regions();
    assert_eq!(cma.resolve_device("video-dev").unwrap(), [0]);
    assert_eq!(cma.resolve_device("cam").unwrap(), [1, 0]);
    assert_eq!(cma.resolve_device("anything").unwrap(), [1]);
    let c = cma
        .alloc("video-dev", &AllocRequest::new(4096), &mut claimed())
        .unwrap();
    assert_eq!(c.region, 0);
    let c = cma
        .alloc("anything", &AllocRequest::new(4096), &mut claimed())
        .unwrap();
    assert_eq!(c.region, 1);
    // Order matters: a `*` rule first shadows the rules after it.
    let regions = cma.regions().to_vec();
    let map = [rule(&["*"], &["camera"]), rule(&["video-dev"], &["video"])];
    let shadowed = Cma::new(&regions, &map).unwrap();
    assert_eq!(shadowed.resolve_device("video-dev").unwrap(), [1]);
    free_all(&cma);
}

#[test]
fn rule4_a_device_matching_no_rule_is_an_error() {
    let regions = [region(0, "video", 4 * MIB, 4 * MIB, 0)];
    let cma = Cma::new(&regions, &[rule(&["video-dev"], &["video"])]).unwrap();
    let e = cma.alloc("camera-dev", &AllocRequest::new(4096), &mut claimed());
    assert_eq!(e, Err(CmaError::UnmappedDevice("camera-dev".into())));
}

#[test]
fn rule4_alloc_from_tries_the_named_regions_in_order() {
    let cma = three_regions();
    let full = alloc_ok(&cma, "camera", AllocRequest::new(8 * MIB));
    let c = alloc_ok(&cma, "camera,video", AllocRequest::new(4096));
    assert_eq!(c.region, 0);
    let c = cma
        .alloc("cam", &AllocRequest::new(4096), &mut claimed())
        .unwrap();
    assert_eq!(c.region, 0, "cam falls back to its second region");
    assert_eq!(cma.resolve_names(" video , camera,video").unwrap(), [0, 1]);
    cma.free(full.id, &mut released()).unwrap();
    free_all(&cma);
}

#[test]
fn rule4_info_about_sums_the_named_regions() {
    let cma = three_regions();
    alloc_ok(&cma, "video", AllocRequest::new(4096));
    let info = cma.info_about("video,camera").unwrap();
    let expected = RegionsInfo {
        regions: 2,
        total: 24 * MIB,
        free: 24 * MIB - 4096,
        largest_free: 16 * MIB - 4096,
        lower_bound: 6 * MIB,
        upper_bound: 40 * MIB,
    };
    assert_eq!(info, expected);
    assert_eq!(cma.info_about("secret").unwrap().lower_bound, 64 * MIB);
    free_all(&cma);
}

#[test]
fn rule4_private_regions_are_reachable_only_by_name() {
    let cma = three_regions();
    let regions = cma.regions().to_vec();
    // Configuration validation refuses `*` rules naming private regions; the allocator
    // does not rely on it.
    let map = [
        rule(&["spy"], &["secret"]),
        rule(&["*"], &["secret", "camera"]),
    ];
    let cma = Cma::new(&regions, &map).unwrap();
    assert_eq!(cma.resolve_device("x").unwrap(), [1]);
    assert_eq!(
        cma.resolve_device("*").unwrap(),
        [1],
        "'*' is not a device name"
    );
    assert_eq!(cma.resolve_device("spy").unwrap(), [2]);
    let c = cma
        .alloc("x", &AllocRequest::new(4096), &mut claimed())
        .unwrap();
    assert_eq!(c.region, 1);
    assert_eq!(alloc_ok(&cma, "secret", AllocRequest::new(4096)).region, 2);
    let only_private = Cma::new(&regions, &[rule(&["*"], &["secret"])]).unwrap();
    let e = only_private.alloc("x", &AllocRequest::new(4096), &mut claimed());
    assert!(matches!(e, Err(CmaError::PrivateRegion { region, .. }) if region == "secret"));
    free_all(&cma);
}

// Rule 5: pin, unpin, compaction.

#[test]
fn rule5_chunks_are_pinned_by_default() {
    let cma = three_regions();
    let c = alloc_ok(&cma, "video", AllocRequest::new(4096));
    assert!(c.pinned);
    cma.unpin(c.id).unwrap();
    assert!(!cma.chunk(c.id).unwrap().pinned);
    cma.pin(c.id).unwrap();
    assert!(cma.chunk(c.id).unwrap().pinned);
    assert!(!alloc_ok(&cma, "video", AllocRequest::new(1).unpinned()).pinned);
    free_all(&cma);
}

/// video [6, 22) MiB: pinned 1M @6, hole 2M @7, unpinned `u` 1M @9, hole 1M @10,
/// pinned `p` 1M @11, pinned 10M @12. The largest free run is the 2 MiB hole.
fn fragmented() -> (Cma, Chunk, Chunk) {
    let cma = three_regions();
    let sizes = [
        (1, true),
        (2, true),
        (1, false),
        (1, true),
        (1, true),
        (10, true),
    ];
    let chunks: Vec<Chunk> = sizes
        .iter()
        .map(|&(mib, pinned)| {
            let req = AllocRequest {
                pinned,
                ..AllocRequest::new(mib * MIB)
            };
            alloc_ok(&cma, "video", req)
        })
        .collect();
    for hole in [chunks[1], chunks[3]] {
        cma.free(hole.id, &mut released()).unwrap();
    }
    (cma, chunks[2], chunks[4])
}

#[test]
fn rule5_compaction_moves_unpinned_chunks_and_grows_the_largest_free_run() {
    let (cma, u, p) = fragmented();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    cma.set_move_listener(u.id, Box::new(move |m| log.lock().unwrap().push(m)))
        .unwrap();
    let mut mover = TestMover::default();
    let report = cma.compact(0, &mut mover).unwrap();
    assert_eq!(
        (report.largest_free_before, report.largest_free_after),
        (2 * MIB, 3 * MIB)
    );
    assert_eq!((report.chunks_moved, report.moves_failed), (1, 0));
    assert_eq!(mover.claims.calls, [(7 * MIB, MIB)]);
    assert_eq!(mover.copies, [(9 * MIB, 7 * MIB, MIB)]);
    assert_eq!(mover.released, [(9 * MIB, MIB)]);
    let moved = ChunkMoved {
        id: u.id,
        old_gpa: 9 * MIB,
        new_gpa: 7 * MIB,
        len: MIB,
    };
    assert_eq!(*heard.lock().unwrap(), [moved]);
    assert_eq!(cma.chunk(u.id).unwrap().gpa, 7 * MIB);
    assert_eq!(cma.chunk(p.id).unwrap().gpa, p.gpa, "pinned chunks stay");
    // Nothing better is left: a second pass moves nothing, and the listener is kept.
    assert_eq!(
        cma.compact(0, &mut TestMover::default())
            .unwrap()
            .chunks_moved,
        0
    );
    let s = &cma.stats()[0];
    assert_eq!((s.compactions, s.chunks_moved, s.pages_migrated), (2, 1, 1));
    free_all(&cma);
}

#[test]
fn rule5_compaction_never_shrinks_the_largest_free_run() {
    // A chunk between two one-page holes, an 8 MiB hole below it: moving it into the big
    // hole (plain first fit) would shrink the largest run; it goes to the small hole.
    let cma = three_regions();
    let sizes = [(MIB, true), (8 * MIB, true), (MIB, true)];
    let sizes = sizes
        .into_iter()
        .chain([(4096, true), (4096, false), (4096, true)]);
    let chunks: Vec<Chunk> = sizes
        .map(|(size, pinned)| {
            alloc_ok(
                &cma,
                "video",
                AllocRequest {
                    pinned,
                    ..AllocRequest::new(size)
                },
            )
        })
        .collect();
    alloc_ok(
        &cma,
        "video",
        AllocRequest::new(22 * MIB - (16 * MIB + 12288)),
    );
    for hole in [chunks[1], chunks[3], chunks[5]] {
        cma.free(hole.id, &mut released()).unwrap();
    }
    let report = cma.compact(0, &mut TestMover::default()).unwrap();
    assert_eq!(report.largest_free_before, 8 * MIB);
    assert_eq!(report.largest_free_after, 8 * MIB);
    assert_eq!(cma.chunk(chunks[4].id).unwrap().gpa, 16 * MIB);
    free_all(&cma);
}

#[test]
fn rule5_a_failed_destination_claim_leaves_the_chunk_where_it_was() {
    let (cma, u, _) = fragmented();
    let mut mover = TestMover {
        claims: Scripted::new([ClaimOutcome::Busy { at: 7 * MIB }]),
        ..TestMover::default()
    };
    let report = cma.compact(0, &mut mover).unwrap();
    assert_eq!((report.chunks_moved, report.moves_failed), (0, 1));
    assert_eq!(report.largest_free_after, 2 * MIB);
    assert!(mover.copies.is_empty() && mover.released.is_empty());
    assert_eq!(cma.chunk(u.id).unwrap().gpa, u.gpa);
    cma.check().unwrap();
    let mut mover = TestMover {
        claims: Scripted::new([ClaimOutcome::Failed("guest gone".into())]),
        ..TestMover::default()
    };
    let report = cma.compact(0, &mut mover).unwrap();
    assert_eq!(report.stopped.as_deref(), Some("guest gone"));
    assert_eq!(cma.chunk(u.id).unwrap().gpa, u.gpa);
    free_all(&cma);
}

#[test]
fn rule5_a_failed_copy_gives_the_destination_back() {
    let (cma, u, _) = fragmented();
    let mut mover = TestMover {
        copy_fails: true,
        ..TestMover::default()
    };
    let report = cma.compact(0, &mut mover).unwrap();
    assert_eq!((report.chunks_moved, report.moves_failed), (0, 1));
    assert_eq!(
        mover.released,
        [(7 * MIB, MIB)],
        "the claimed destination goes back"
    );
    assert_eq!(cma.chunk(u.id).unwrap().gpa, u.gpa);
    free_all(&cma);
}

#[test]
fn rule5_pinning_during_a_move_abandons_it_and_free_waits() {
    let (cma, u, _) = fragmented();
    let seen = Mutex::new(Vec::new());
    let mut mover = TestMover {
        during_copy: Some(Box::new(|| {
            cma.check().unwrap();
            let r = cma.free(u.id, &mut released());
            seen.lock().unwrap().push(r);
            seen.lock().unwrap().push(cma.pin(u.id));
        })),
        ..TestMover::default()
    };
    let report = cma.compact(0, &mut mover).unwrap();
    let released_ranges = mover.released.clone();
    drop(mover);
    assert_eq!(
        *seen.lock().unwrap(),
        [Err(CmaError::ChunkMoving(u.id)), Ok(())]
    );
    assert_eq!((report.chunks_moved, report.moves_failed), (0, 1));
    assert_eq!(released_ranges, [(7 * MIB, MIB)]);
    let now = cma.chunk(u.id).unwrap();
    assert_eq!((now.gpa, now.pinned), (u.gpa, true));
    free_all(&cma);
}

// Rule 6: statistics.

#[test]
fn rule6_statistics_count_every_decision() {
    let (cma, _, _) = fragmented();
    let mut claim = Scripted::new([ClaimOutcome::Busy { at: 7 * MIB }]);
    let c = cma
        .alloc_from("video", &AllocRequest::new(4096), &mut claim)
        .unwrap();
    let _ = cma.alloc_from("video", &AllocRequest::new(8 * MIB), &mut claimed());
    cma.free(c.id, &mut released()).unwrap();
    cma.compact(0, &mut TestMover::default()).unwrap();
    let s = &cma.stats()[0];
    assert_eq!(
        (s.id, s.name.as_str(), s.base, s.size),
        (0, "video", 6 * MIB, 16 * MIB)
    );
    assert_eq!((s.order_per_bit, s.granule), (0, 4096));
    // 6 + 1 allocated, 1 failed, 3 freed, 1 busy retry, 1 + 1 pages (claim, compaction).
    assert_eq!((s.allocs_ok, s.allocs_failed, s.frees), (7, 1, 3));
    assert_eq!((s.busy_retries, s.pages_migrated), (1, 2));
    assert_eq!((s.compactions, s.chunks_moved, s.moves_failed), (1, 1, 0));
    assert_eq!(
        (s.used, s.free, s.largest_free),
        (13 * MIB, 3 * MIB, 3 * MIB)
    );
    assert_eq!(s.chunks, 4);
    assert_eq!(s.bitmap.len(), 4096 / 4);
    assert!(s.bitmap.starts_with("ffff"));
    assert_eq!(s.alloc_latency.count, 7);
    assert_eq!(s.search_latency.count, 9);
    assert_eq!(s.free_latency.count, 3);
    let a = s.alloc_latency;
    assert!(a.min_ns <= a.p50_ns && a.p50_ns <= a.p99_ns && a.p99_ns <= a.max_ns);
    free_all(&cma);
}

#[cfg(feature = "serde")]
#[test]
fn rule6_statistics_serialize_with_their_field_names() {
    let (cma, _, _) = fragmented();
    let json = serde_json::to_value(cma.stats()).unwrap();
    for key in [
        "name",
        "bitmap",
        "busy_retries",
        "pages_migrated",
        "alloc_latency",
    ] {
        assert!(json[0].get(key).is_some(), "{key}");
    }
    assert!(json[0]["alloc_latency"].get("p99_ns").is_some());
    let c = cma.chunks()[0];
    let json = serde_json::to_value(c).unwrap();
    assert_eq!(json["gpa"], c.gpa);
    free_all(&cma);
}

// Rule 7: typed errors for every bad argument.

#[test]
fn rule7_bad_requests() {
    let cma = three_regions();
    let mut claim = claimed();
    let mut alloc = |req: AllocRequest| cma.alloc_from("video", &req, &mut claim).unwrap_err();
    assert_eq!(alloc(AllocRequest::new(0)), CmaError::ZeroSize);
    assert!(matches!(
        alloc(AllocRequest::new(17 * MIB)),
        CmaError::TooLarge { .. }
    ));
    assert!(matches!(
        alloc(AllocRequest::new(u64::MAX)),
        CmaError::TooLarge { .. }
    ));
    assert_eq!(
        alloc(AllocRequest::new(1).aligned(3, 0)),
        CmaError::BadAlign(3)
    );
    let bad_offset = alloc(AllocRequest::new(1).aligned(MIB, MIB));
    assert!(matches!(bad_offset, CmaError::BadOffset { .. }));
    let unreachable = AllocRequest::new(1).aligned(16 << 10, 4096);
    let e = cma
        .alloc_from("camera", &unreachable, &mut claimed())
        .unwrap_err();
    assert!(matches!(e, CmaError::Unreachable { granule: 8192, .. }));
    let full = AllocRequest::new(16 * MIB);
    cma.alloc_from("video", &full, &mut claimed()).unwrap();
    let e = cma.alloc_from("video", &AllocRequest::new(1), &mut claimed());
    assert!(matches!(e, Err(CmaError::NoSpace { .. })));
    free_all(&cma);
}

#[test]
fn rule7_bad_region_names_and_ids() {
    let cma = three_regions();
    let req = AllocRequest::new(4096);
    for names in ["nope", "", "video,,camera", "video,nope"] {
        let e = cma.alloc_from(names, &req, &mut claimed()).unwrap_err();
        assert!(matches!(e, CmaError::UnknownRegion(_)), "{names:?}");
        assert!(matches!(
            cma.info_about(names),
            Err(CmaError::UnknownRegion(_))
        ));
    }
    let e = cma.alloc_in(&[0, 9], &req, &mut claimed());
    assert_eq!(e, Err(CmaError::UnknownRegionId(9)));
    assert!(
        cma.is_empty(),
        "nothing allocated before the bad id was found"
    );
    assert_eq!(
        cma.alloc_in(&[], &req, &mut claimed()),
        Err(CmaError::NoRegions)
    );
    let e = cma.compact(7, &mut TestMover::default());
    assert_eq!(e, Err(CmaError::UnknownRegionId(7)));
}

#[test]
fn rule7_bad_chunk_handles() {
    let cma = three_regions();
    let other = three_regions();
    let c = alloc_ok(&cma, "video", AllocRequest::new(4096));
    let foreign = alloc_ok(&other, "video", AllocRequest::new(4096));
    let mut release = released();
    assert_eq!(
        cma.free(foreign.id, &mut release),
        Err(CmaError::ForeignChunk(foreign.id))
    );
    assert_eq!(cma.pin(foreign.id), Err(CmaError::ForeignChunk(foreign.id)));
    let moved = ChunkId::from_parts(cma.instance(), 1, c.id.serial());
    let wrong = CmaError::WrongRegion {
        chunk: moved,
        named: 1,
        actual: 0,
    };
    assert_eq!(cma.free(moved, &mut release), Err(wrong));
    let never = ChunkId::from_parts(cma.instance(), 0, u64::MAX);
    assert_eq!(
        cma.free(never, &mut release),
        Err(CmaError::UnknownChunk(never))
    );
    let no_region = ChunkId::from_parts(cma.instance(), 99, 0);
    assert_eq!(cma.unpin(no_region), Err(CmaError::UnknownChunk(no_region)));
    assert_eq!(cma.pin(never), Err(CmaError::UnknownChunk(never)));
    assert_eq!(cma.unpin(never), Err(CmaError::UnknownChunk(never)));
    let listener = cma.set_move_listener(never, Box::new(|_| {}));
    assert_eq!(listener, Err(CmaError::UnknownChunk(never)));
    assert_eq!(cma.chunk(never), None);
    cma.free(c.id, &mut release).unwrap();
    assert_eq!(
        cma.free(c.id, &mut release),
        Err(CmaError::DoubleFree(c.id))
    );
    assert_eq!(cma.pin(c.id), Err(CmaError::UnknownChunk(c.id)));
    free_all(&other);
}

#[test]
fn rule7_a_chunk_being_freed_cannot_be_freed_twice() {
    let cma = three_regions();
    let c = alloc_ok(&cma, "video", AllocRequest::new(4096));
    let mut inner = None;
    let mut release = |_: &RegionSpec, _, _| {
        inner = Some(cma.free(c.id, &mut released()));
    };
    cma.free(c.id, &mut release).unwrap();
    assert_eq!(inner, Some(Err(CmaError::DoubleFree(c.id))));
    assert!(cma.is_empty());
}

#[test]
fn rule7_every_error_says_what_went_wrong() {
    let id = ChunkId::from_parts(1, 2, 3);
    let errors = [
        CmaError::ZeroSize,
        CmaError::BadAlign(3),
        CmaError::UnknownRegion("x".into()),
        CmaError::DoubleFree(id),
        CmaError::Busy {
            region: "v".into(),
            attempts: 16,
            last_busy: 0x1000,
        },
    ];
    for e in errors {
        assert!(e.to_string().len() > 10, "{e}");
    }
    assert!(CmaError::DoubleFree(id).to_string().contains("cma1:2:3"));
}
