//! End to end on the host: the kernel's boot carve-out, then the real agent serving
//! encoded Evict / Return messages while the workload runs, checked the way the VMM
//! checks it (every byte of every page, from raw guest memory, through the manifest the
//! Report names).

mod support;

use guest_agent::agent::{Agent, Channel, ChannelError, Control, Mode, PAYLOAD_BYTES};
use guest_agent::mm::{Frame, MetaLayout, Mm, PageState, Pageblock, Pfn, PhysRange};
use guest_agent::workload::{Workload, lent_pages, manifest_bytes};
use protocol::boot::BootInfo;
use protocol::layout::{PAGE_SIZE, align_up};
use protocol::msg::{Ack, EVICT_HOST_COPY, GuestMsg, HostMsg, MigratePair, Report, Status};
use protocol::page::{ManifestEntry, PAGE_PRESENT, verify};
use support::{FakeMachine, MB, REGION_A, REGION_B, SharedMem, World, boot_info};

/// What the VMM does after a Report: decode the manifest from guest memory and verify
/// every present page, every byte.
fn host_verify(mem: &[u8], report: &Report) -> u64 {
    let start = report.manifest_gpa as usize;
    let manifest = &mem[start..start + report.manifest_len as usize * 16];
    let mut present = 0;
    for i in 0..report.manifest_len as usize {
        let e = ManifestEntry::decode(manifest, i).unwrap();
        if e.flags & PAGE_PRESENT == 0 {
            continue;
        }
        let page = &mem[e.gpa as usize..e.gpa as usize + 4096];
        verify(page, i as u64, u64::from(e.generation)).unwrap();
        present += 1;
    }
    assert_eq!(present, report.pages_present);
    present
}

/// The VMM's side of the channel, for the real [`Agent`]: records what the guest sends,
/// and copies Migrate batches in guest memory as the VMM does.
struct FakeChannel {
    mem: SharedMem,
    payload: Vec<u8>,
    sent: Vec<GuestMsg>,
    /// Migrate batches copied.
    batches: usize,
    /// Each wait the agent asked for: its length, and how many batches had been copied.
    delays: Vec<(u64, usize)>,
}

impl FakeChannel {
    fn new(mem: SharedMem) -> Self {
        FakeChannel {
            mem,
            payload: vec![0; PAYLOAD_BYTES],
            sent: Vec::new(),
            batches: 0,
            delays: Vec::new(),
        }
    }
}

impl Channel for FakeChannel {
    fn send(&mut self, msg: &GuestMsg, payload_len: usize) -> Result<Ack, ChannelError> {
        // The VMM decodes what the guest wrote.
        let msg = GuestMsg::decode(&msg.encode()).unwrap();
        let mut done = 0;
        if let GuestMsg::Migrate { count, .. } = msg {
            assert_eq!(payload_len, count as usize * 16);
            let mut mem = self.mem.borrow_mut();
            for i in 0..count as usize {
                let p = MigratePair::decode(&self.payload, i).unwrap();
                let (s, d) = (p.src as usize, p.dst as usize);
                mem.copy_within(s..s + 4096, d);
                done += 1;
            }
            self.batches += 1;
        } else {
            self.sent.push(msg);
        }
        Ok(Ack {
            status: Status::Done,
            done,
        })
    }

    fn payload(&mut self) -> &mut [u8] {
        &mut self.payload
    }

    fn send_garbage(&mut self) {}

    fn delay_ms(&mut self, ms: u64) {
        self.delays.push((ms, self.batches));
    }
}

/// One request served by the real agent; its answer.
fn request(w: &mut World, msg: HostMsg) -> GuestMsg {
    let mut chan = FakeChannel::new(w.hw.mem.clone());
    let mut agent = Agent::new(w.wl.clone(), Mode::Normal, 0);
    let msg = HostMsg::decode(&msg.encode()).unwrap();
    let control = agent.handle(msg, &mut w.mm, &mut w.hw, &mut chan, |_| true);
    assert_eq!(control, Control::Continue);
    w.wl = agent.workload;
    assert_eq!(
        chan.sent.len(),
        1,
        "one answer per request: {:?}",
        chan.sent
    );
    chan.sent.remove(0)
}

fn report(w: &mut World) -> Report {
    match request(w, HostMsg::Query { req: 0, flags: 0 }) {
        GuestMsg::Report { report, .. } => report,
        m => panic!("{m:?}"),
    }
}

/// A Query, then the VMM's check of every page.
fn query_and_verify(w: &mut World) -> u64 {
    let r = report(w);
    host_verify(&w.hw.mem.borrow(), &r)
}

#[test]
fn the_agent_serves_evictions_and_returns_while_the_workload_runs() {
    let mut w = World::new(lent_pages(&boot_info()));
    // The agent loop: populate in small steps, with rewrites and checks in between.
    while !w.wl.is_populated() {
        w.wl.populate(&mut w.mm, &mut w.hw, 64);
        w.wl.rewrite(&mut w.hw, 8);
        w.wl.check(&w.hw, 16).unwrap();
    }
    assert_eq!(query_and_verify(&mut w), 1536);

    // A 2 MiB chunk with the VMM's copy, a 64 KiB one with the guest's.
    let chunks = [
        (1, REGION_A.start + 2 * MB, 2 * MB, EVICT_HOST_COPY),
        (2, REGION_B.start + 0x1_0000, 0x1_0000, 0),
    ];
    for (req, gpa, len, flags) in chunks {
        let reply = request(
            &mut w,
            HostMsg::Evict {
                req,
                gpa,
                len,
                flags,
            },
        );
        let pages = len / PAGE_SIZE;
        assert_eq!(
            reply,
            GuestMsg::Evicted {
                req,
                status: Status::Done,
                migrated: pages
            }
        );
        // The device owns the chunk now and fills it.
        w.hw.mem.borrow_mut()[gpa as usize..(gpa + len) as usize].fill(0x5a);
        w.wl.rewrite(&mut w.hw, 100);
        w.wl.check(&w.hw, 200).unwrap();
        query_and_verify(&mut w);
    }
    assert_eq!(report(&mut w).pages_migrated, 512 + 16);

    // Freed chunks are scrubbed by the VMM, then returned as CMA.
    for (req, gpa, len, _) in chunks {
        w.hw.mem.borrow_mut()[gpa as usize..(gpa + len) as usize].fill(0);
        let reply = request(
            &mut w,
            HostMsg::Return {
                req: req + 10,
                gpa,
                len,
            },
        );
        assert_eq!(
            reply,
            GuestMsg::Returned {
                req: req + 10,
                status: Status::Done
            }
        );
    }
    let reply = request(
        &mut w,
        HostMsg::Return {
            req: 20,
            gpa: REGION_A.start,
            len: 4096,
        },
    );
    assert_eq!(
        reply,
        GuestMsg::Returned {
            req: 20,
            status: Status::Invalid
        }
    );
    assert_eq!(w.mm.stats().host_pages, 0);
    // The workload takes the returned memory back as pages come and go.
    w.wl.release(&mut w.mm, &mut w.hw, 200);
    while w.wl.populate(&mut w.mm, &mut w.hw, 64) > 0 {}
    query_and_verify(&mut w);
    w.mm.check_invariants().unwrap();
}

#[test]
fn a_busy_answer_lets_the_vmm_retry_after_the_pinned_page() {
    let mut w = World::new(1536);
    w.populate();
    w.wl.pin(&mut w.mm, &mut w.hw, 1);
    let pinned = w
        .present()
        .into_iter()
        .find(|(_, e)| e.flags != PAGE_PRESENT)
        .unwrap()
        .1
        .gpa;
    let region = if pinned >= REGION_B.start {
        REGION_B
    } else {
        REGION_A
    };
    let len = 0x4_0000;
    let first_try = pinned & !(len - 1);
    let reply = request(
        &mut w,
        HostMsg::Evict {
            req: 1,
            gpa: first_try,
            len,
            flags: EVICT_HOST_COPY,
        },
    );
    let GuestMsg::Evicted {
        status: Status::Busy { first_busy },
        migrated: 0,
        ..
    } = reply
    else {
        panic!("{reply:?}");
    };
    assert_eq!(first_busy, pinned);
    // Linux's cma_alloc: the next aligned candidate after the busy page.
    let mut next = align_up(first_busy + 1, len).unwrap();
    if next + len > region.end {
        next = region.start;
    }
    let reply = request(
        &mut w,
        HostMsg::Evict {
            req: 2,
            gpa: next,
            len,
            flags: EVICT_HOST_COPY,
        },
    );
    assert!(
        matches!(
            reply,
            GuestMsg::Evicted {
                status: Status::Done,
                ..
            }
        ),
        "{reply:?}"
    );
    query_and_verify(&mut w);
}

#[test]
fn stall_mode_stops_in_the_middle_of_a_vmm_copied_eviction() {
    let mut w = World::new(1536);
    w.populate();
    let mut agent = Agent::new(w.wl.clone(), Mode::Stall, 1234);
    let mut chan = FakeChannel::new(w.hw.mem.clone());
    let evict = |req, gpa, len, flags| HostMsg::Evict {
        req,
        gpa,
        len,
        flags,
    };
    // Every eviction the VMM copies for waits once, after its first batch is copied (the
    // pages are not remapped yet), then goes on.
    let ranges = [(REGION_A.start, 2 * MB), (REGION_B.start, 0x1_0000)];
    for (i, (gpa, len)) in ranges.into_iter().enumerate() {
        let req = i as u64 + 1;
        let before = chan.batches;
        let msg = evict(req, gpa, len, EVICT_HOST_COPY);
        agent.handle(msg, &mut w.mm, &mut w.hw, &mut chan, |_| true);
        assert_eq!(chan.delays.last(), Some(&(1234, before + 1)));
        let done = GuestMsg::Evicted {
            req,
            status: Status::Done,
            migrated: len / PAGE_SIZE,
        };
        assert_eq!(chan.sent.pop(), Some(done));
    }
    assert_eq!(chan.delays.len(), 2);
    // The guest's own copy has no batch to stall after.
    let msg = evict(3, REGION_B.start + 0x1_0000, 0x1_0000, 0);
    agent.handle(msg, &mut w.mm, &mut w.hw, &mut chan, |_| true);
    assert_eq!(chan.delays.len(), 2);
    w.wl = agent.workload;
    query_and_verify(&mut w);
}

#[test]
fn the_kernel_boot_carve_out_is_never_handed_out() {
    // What main.rs does: size the metadata and the manifest, carve them above the image.
    let mut bytes = vec![0u8; protocol::boot::MAX_BOOT_INFO_SIZE];
    let n = boot_info().encode(&mut bytes).unwrap();
    let info = BootInfo::decode(&bytes[..n]).unwrap();
    let image = PhysRange::new(MB, MB + 300 * 1024);
    let layout = MetaLayout::new(&info).unwrap();
    let pages = lent_pages(&info);
    let carve_start = align_up(image.end, PAGE_SIZE).unwrap();
    let manifest = carve_start + layout.bytes();
    let carve_end = manifest + manifest_bytes(pages);
    assert!(
        carve_end <= 2 * MB,
        "the test map's first RAM pageblock holds it"
    );
    // (The kernel views the zeroed carve-out as these two slices.)
    let mut frames = vec![Frame::default(); layout.frames()];
    let mut blocks = vec![Pageblock::default(); layout.pageblocks()];
    let kernel = PhysRange::new(image.start, carve_end);
    let mut mm = Mm::new(&info, &[kernel], &mut frames, &mut blocks).unwrap();
    let mut hw = FakeMachine::new(info.mem_size, pages);
    let mut wl = Workload::new(manifest, pages, pages, 1).unwrap();
    while wl.populate(&mut mm, &mut hw, 256) > 0 {}
    while mm.alloc_unmovable(0).is_some() {}
    for gpa in (kernel.start..kernel.end).step_by(4096) {
        assert_eq!(
            mm.page_state(Pfn::of_gpa(gpa)),
            PageState::Reserved,
            "{gpa:#x}"
        );
    }
    assert_eq!(mm.stats().free_pages, 0);
    host_verify(&hw.mem.borrow(), &wl.report(&mm));
    mm.check_invariants().unwrap();
}
