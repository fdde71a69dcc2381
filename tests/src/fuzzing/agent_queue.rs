//! `agent_queue`: the agent device's descriptor handling, over queues a guest wrote.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use protocol::layout::PAGE_SIZE;
use protocol::msg::{
    AGENT_VERSION, GuestMsg, HostMsg, MIGRATE_PAIR_SIZE, MSG_SIZE, MigratePair, Report, Status,
};
use virtio_queue::{Queue, QueueT};
use vmm::devices::virtio::agent::{AgentChannel, AgentDevice};
use vmm::devices::virtio::mmio::{Interrupt, VirtioDevice};
use vmm::vstate::memory::GuestRam;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::Reader;

/// Guest RAM of the queue harness.
const RAM_SIZE: u64 = 16 << 20;
/// The two queues' rings: `(descriptor table, avail ring, used ring)`.
const RINGS: [(u64, u64, u64); 2] = [(0x1000, 0x1100, 0x1200), (0x2000, 0x2100, 0x2200)];
/// Where the guest's buffers go.
const BUFFERS: u64 = 0x1_0000;
/// Size of the buffer area.
const BUFFERS_LEN: u64 = 0x1_0000;
/// The range the VMM asks the guest to evict; each of its bytes is [`MARK_BYTE`].
const EVICTING: u64 = 0x40_0000;
/// Size of the evicted range.
const EVICTING_LEN: u64 = 8 * PAGE_SIZE;
/// Memory a device owns (the `device_owned` closure says so): the device must neither
/// copy a page there nor read or write it for the guest.
const DEVICE_OWNED: u64 = 0x80_0000;
/// Size of the device-owned range.
const DEVICE_OWNED_LEN: u64 = 4 * PAGE_SIZE;
/// Device-owned memory holds `Hello { version: DEVICE_DATA }` records: a write there
/// changes them, and a message read from there announces this version.
const DEVICE_DATA: u32 = 0xdd_dd_dd_dd;
/// Where Migrate destinations are picked ("ordinary" guest RAM).
const DESTINATIONS: u64 = 0x60_0000;
/// Fills the evicted range, so that a copied page is visible.
const MARK_BYTE: u8 = 0xa5;
/// The Evict request's id: the first (and only) request made through `AgentChannel::evict`.
const EVICT_REQ: u64 = 1;
/// At most this many operations per input.
const MAX_OPS: usize = 1024;

/// Operations of the queue harness's input language (the op byte modulo 8).
mod op {
    /// `area u8, offset u16, len u8, bytes`: raw guest write into the rings or the buffers.
    pub const WRITE: u8 = 0;
    /// `queue u8, index u8, where u8, addr u64, len u32, flags u8, next u8`: one descriptor.
    pub const DESC: u8 = 1;
    /// `queue u8, head u8`: put `head` in the avail ring and bump the avail index.
    pub const POST: u8 = 2;
    /// `offset u16, kind u8, word u32, req u8 (0xff: then u64), a0 u64, a1 u64`: a
    /// 64-byte message record in the buffer area.
    pub const MESSAGE: u8 = 3;
    /// `offset u16, count u8, count * (src u8, where u8, dst u16)`: Migrate pairs.
    pub const PAIRS: u8 = 4;
    /// `kind u8, req u8, gpa u16, pages u8, flags u8`: queue a host request (no waiter).
    pub const HOST: u8 = 5;
    /// Start the Evict of the marked range (a caller blocked in `AgentChannel::evict`).
    pub const EVICT: u8 = 6;
    /// `device.process()`, then check device-owned memory.
    pub const PROCESS: u8 = 7;
}

/// The agent device with its two queues over fresh guest RAM, as the guest left them.
struct QueueHarness {
    ram: Arc<GuestRam>,
    channel: AgentChannel,
    device: AgentDevice,
    queue_size: u16,
    avail_idx: [u16; 2],
    evict_started: bool,
}

impl QueueHarness {
    fn new(queue_size: u16) -> Self {
        let ram = zeroed_ram();
        ram.write(EVICTING, &[MARK_BYTE; EVICTING_LEN as usize])
            .expect("mark the evicted range");
        ram.write(DEVICE_OWNED, &DEVICE_DATA_BYTES)
            .expect("fill device-owned memory");
        let eventfd = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let channel = AgentChannel::new(eventfd());
        let owned = |gpa: u64, len: u64| {
            gpa < DEVICE_OWNED + DEVICE_OWNED_LEN && DEVICE_OWNED < gpa.saturating_add(len)
        };
        let mut device =
            AgentDevice::new(ram.clone(), &[], channel.shared().clone(), Arc::new(owned));
        let queues = RINGS
            .iter()
            .map(|&(desc, avail, used)| {
                let mut q = Queue::new(16).expect("queue");
                q.set_size(queue_size);
                q.set_desc_table_address(Some(desc as u32), Some(0));
                q.set_avail_ring_address(Some(avail as u32), Some(0));
                q.set_used_ring_address(Some(used as u32), Some(0));
                q.set_ready(true);
                assert!(q.is_valid(ram.memory()), "harness queue invalid");
                q
            })
            .collect();
        device
            .activate(queues, Interrupt::new(eventfd()))
            .expect("activate the agent device");
        QueueHarness {
            ram,
            channel,
            device,
            queue_size,
            avail_idx: [0; 2],
            evict_started: false,
        }
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        self.ram
            .write(gpa, bytes)
            .expect("harness write inside RAM");
    }

    fn run(&mut self, r: &mut Reader<'_>) {
        for _ in 0..MAX_OPS {
            if r.is_empty() {
                break;
            }
            match r.u8() % 8 {
                op::WRITE => {
                    let (base, len) = match r.u8() % 2 {
                        0 => (RINGS[0].0, 0x2000),
                        _ => (BUFFERS, BUFFERS_LEN),
                    };
                    let off = u64::from(r.u16()) % len;
                    let n = usize::from(r.u8()).min((len - off) as usize);
                    self.write(base + off, r.take(n));
                }
                op::DESC => {
                    let q = usize::from(r.u8() % 2);
                    let index = u64::from(r.u8() % 16);
                    let addr = match (r.u8() % 4, r.u64()) {
                        (0, a) => BUFFERS + a % BUFFERS_LEN,
                        (1, a) => EVICTING + a % EVICTING_LEN,
                        (2, a) => DEVICE_OWNED + a % DEVICE_OWNED_LEN,
                        (_, a) => a,
                    };
                    let mut desc = [0u8; 16];
                    desc[..8].copy_from_slice(&addr.to_le_bytes());
                    desc[8..12].copy_from_slice(&r.u32().to_le_bytes());
                    desc[12..14].copy_from_slice(&u16::from(r.u8() % 8).to_le_bytes());
                    desc[14..16].copy_from_slice(&u16::from(r.u8()).to_le_bytes());
                    self.write(RINGS[q].0 + 16 * index, &desc);
                }
                op::POST => {
                    let q = usize::from(r.u8() % 2);
                    let head = u16::from(r.u8());
                    let slot = u64::from(self.avail_idx[q] % self.queue_size);
                    self.write(RINGS[q].1 + 4 + 2 * slot, &head.to_le_bytes());
                    self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
                    self.write(RINGS[q].1 + 2, &self.avail_idx[q].to_le_bytes());
                }
                op::MESSAGE => {
                    let off = u64::from(r.u16()) % (BUFFERS_LEN - MSG_SIZE as u64);
                    let kinds = guest_kinds();
                    let kind_sel = usize::from(r.u8());
                    let word = r.u32();
                    let kind = kinds.get(kind_sel % (kinds.len() + 1)).copied();
                    let req = match r.u8() {
                        0xff => r.u64(),
                        small => u64::from(small % 4),
                    };
                    let mut rec = [0u8; MSG_SIZE];
                    rec[..4].copy_from_slice(&kind.unwrap_or(word).to_le_bytes());
                    rec[4..8].copy_from_slice(&word.to_le_bytes());
                    rec[8..16].copy_from_slice(&req.to_le_bytes());
                    rec[16..24].copy_from_slice(&r.u64().to_le_bytes());
                    rec[24..32].copy_from_slice(&r.u64().to_le_bytes());
                    self.write(BUFFERS + off, &rec);
                }
                op::PAIRS => {
                    let mut off = u64::from(r.u16()) % BUFFERS_LEN;
                    for _ in 0..r.u8() % 64 {
                        let src = r.u8();
                        let src = EVICTING
                            + u64::from(src) % (EVICTING_LEN / PAGE_SIZE + 1) * PAGE_SIZE
                            + if src & 0x80 != 0 { 8 } else { 0 };
                        let dst = match (r.u8() % 4, u64::from(r.u16())) {
                            (0, v) => {
                                DEVICE_OWNED + v % (DEVICE_OWNED_LEN / PAGE_SIZE + 1) * PAGE_SIZE
                            }
                            (1, v) => DESTINATIONS + v * PAGE_SIZE,
                            (2, v) => EVICTING + v % (EVICTING_LEN / PAGE_SIZE + 1) * PAGE_SIZE,
                            (_, v) => v << 20 | (v & 0xfff),
                        };
                        let pair = MigratePair { src, dst }.encode();
                        if off + MIGRATE_PAIR_SIZE as u64 > BUFFERS_LEN {
                            break;
                        }
                        self.write(BUFFERS + off, &pair);
                        off += MIGRATE_PAIR_SIZE as u64;
                    }
                }
                op::HOST => {
                    let kind = r.u8();
                    let req = u64::from(r.u8());
                    let gpa = u64::from(r.u16()) * PAGE_SIZE;
                    let len = u64::from(r.u8()) * PAGE_SIZE;
                    let flags = u32::from(r.u8() % 4);
                    let msg = match kind % 6 {
                        0 => HostMsg::Evict {
                            req,
                            gpa,
                            len,
                            flags,
                        },
                        1 => HostMsg::Return { req, gpa, len },
                        2 => HostMsg::Cancel { req, target: gpa },
                        3 => HostMsg::Query { req, flags },
                        4 => HostMsg::Probe { req, gpa },
                        _ => HostMsg::Shutdown { req },
                    };
                    self.channel.shared().put_back(msg);
                }
                op::EVICT => self.start_evict(),
                _ => self.process(),
            }
        }
        self.process();
    }

    /// A caller asks the guest to evict the marked range and waits (on its own thread, as
    /// the allocator does) until the answer comes or the channel stops. Once the guest has
    /// answered, whether a later Migrate still finds the Evict pending depends on when
    /// that thread wakes: both outcomes are legal, and the checks hold for both.
    fn start_evict(&mut self) {
        if std::mem::replace(&mut self.evict_started, true) {
            return;
        }
        if self.channel.agent_version().is_none() {
            self.channel.shared().hello(AGENT_VERSION);
        }
        EVICT_CALLER.with(|caller| caller.send(self.channel.clone()).expect("evict caller"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.channel.shared().evicting(EVICT_REQ).is_none() {
            assert!(Instant::now() < deadline, "the Evict was never queued");
            std::thread::yield_now();
        }
    }

    /// One round of the device, then the check: device-owned memory is as the device left
    /// it (no page copied there, no ack or request written there) and no message was read
    /// from it.
    fn process(&mut self) {
        self.device.process();
        let mut owned = vec![0u8; DEVICE_OWNED_LEN as usize];
        self.ram.read(DEVICE_OWNED, &mut owned).expect("read");
        if let Some(i) = owned
            .iter()
            .zip(DEVICE_DATA_BYTES.iter())
            .position(|(a, b)| a != b)
        {
            panic!(
                "the agent device wrote device-owned memory at {:#x}",
                DEVICE_OWNED + i as u64
            );
        }
        assert_ne!(
            self.channel.agent_version(),
            Some(DEVICE_DATA),
            "the agent device read a message from device-owned memory"
        );
    }
}

thread_local! {
    /// The thread that plays the allocator: for each channel it gets, it asks for an Evict
    /// of the marked range and waits for the answer (or for the channel to stop). One
    /// thread for all runs, because spawning one per run costs more than the run.
    static EVICT_CALLER: Sender<AgentChannel> = {
        let (tx, rx) = mpsc::channel::<AgentChannel>();
        std::thread::spawn(move || {
            for channel in rx {
                let _ = channel.evict(EVICTING, EVICTING_LEN, true, Duration::from_secs(600));
            }
        });
        tx
    };

    /// Guest RAM, made once per thread: creating and mapping it is most of the cost of a
    /// run, and punching the whole memfd zeroes it as well.
    static RAM: Arc<GuestRam> = Arc::new(GuestRam::new(RAM_SIZE).expect("guest RAM"));
}

/// This thread's guest RAM, all zero.
fn zeroed_ram() -> Arc<GuestRam> {
    let ram = RAM.with(Arc::clone);
    ram.punch(0, RAM_SIZE).expect("zero guest RAM");
    ram
}

/// What device-owned memory holds.
static DEVICE_DATA_BYTES: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let record = GuestMsg::Hello {
        version: DEVICE_DATA,
        features: 0,
    }
    .encode();
    record.repeat((DEVICE_OWNED_LEN as usize) / MSG_SIZE)
});

impl Drop for QueueHarness {
    /// Release the Evict caller (its `evict` returns `Stopped`).
    fn drop(&mut self) {
        self.channel.stop();
    }
}

/// The kind word of every guest message, from the protocol's own encoder.
fn guest_kinds() -> Vec<u32> {
    let status = Status::Done;
    [
        GuestMsg::Hello {
            version: AGENT_VERSION,
            features: 0,
        },
        GuestMsg::Evicted {
            req: 0,
            status,
            migrated: 0,
        },
        GuestMsg::Returned { req: 0, status },
        GuestMsg::Migrate { req: 0, count: 0 },
        GuestMsg::Report {
            req: 0,
            report: Report::default(),
        },
        GuestMsg::Cancelled {
            req: 0,
            target: 0,
            status,
        },
        GuestMsg::Probed { req: 0, value: 0 },
    ]
    .iter()
    .map(|m| u32::from_le_bytes(m.encode()[..4].try_into().expect("4 bytes")))
    .collect()
}

/// The agent device over guest-written queues. The first byte sets the queue size (1 to
/// 16); the rest is a program of [`op`]s that writes descriptors, rings, messages and
/// Migrate payloads into guest RAM, queues host requests, starts an Evict and runs
/// `AgentDevice::process`.
///
/// Checked: no panic; a bounded amount of work per `process` (a hang is the fuzzer's
/// timeout); no write outside guest RAM (vm-memory, and `copy_page`'s checks); memory the
/// `device_owned` closure claims is never written (no Migrate copy, no ack, no request)
/// nor read as a message for the guest.
pub fn agent_queue(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut harness = QueueHarness::new(1 << (r.u8() % 5));
    harness.run(&mut r);
}

/// Builds `agent_queue` inputs (the seeds).
pub(super) struct QueueProgram(pub(super) Vec<u8>);

/// Descriptor flags.
const NEXT: u8 = 1;
const WRITE: u8 = 2;

impl QueueProgram {
    fn new() -> Self {
        QueueProgram(vec![4]) // queue size 16
    }

    fn push(&mut self, op: u8, args: &[&[u8]]) {
        self.0.push(op);
        for a in args {
            self.0.extend_from_slice(a);
        }
    }

    /// Descriptor `index` of queue `q` over `[BUFFERS + off, +len)`.
    fn desc(&mut self, q: u8, index: u8, off: u64, len: u32, flags: u8, next: u8) {
        let args: [&[u8]; 7] = [
            &[q],
            &[index],
            &[0],
            &off.to_le_bytes(),
            &len.to_le_bytes(),
            &[flags],
            &[next],
        ];
        self.push(op::DESC, &args);
    }

    fn post(&mut self, q: u8, head: u8) {
        self.push(op::POST, &[&[q], &[head]]);
    }

    /// A message record at `BUFFERS + off`; `kind` indexes `guest_kinds()`.
    fn message(&mut self, off: u16, kind: u8, word: u32, req: u8, a0: u64) {
        let args: [&[u8]; 6] = [
            &off.to_le_bytes(),
            &[kind],
            &word.to_le_bytes(),
            &[req],
            &a0.to_le_bytes(),
            &0u64.to_le_bytes(),
        ];
        self.push(op::MESSAGE, &args);
    }

    /// A guestq chain `[message at off][ack at off + 0x100]` posted at descriptors
    /// `head`, `head + 1`.
    fn guest_chain(&mut self, head: u8, off: u16) {
        let off64 = u64::from(off);
        self.desc(1, head, off64, 64, NEXT, head + 1);
        self.desc(1, head + 1, off64 + 0x100, 16, WRITE, 0);
        self.post(1, head);
    }

    /// The guest says Hello.
    pub(super) fn hello() -> Self {
        let mut p = QueueProgram::new();
        p.message(0, 0, AGENT_VERSION, 0, 0);
        p.guest_chain(0, 0);
        p.push(op::PROCESS, &[]);
        p
    }

    /// The VMM asks for an Evict of the marked range; the guest takes it on hostq, asks
    /// the VMM to copy two pages (the second into device-owned memory if `into_device`),
    /// and answers Evicted.
    pub(super) fn evict_and_migrate(into_device: bool) -> Self {
        let mut p = QueueProgram::hello();
        p.push(op::EVICT, &[]);
        p.desc(0, 0, 0x8000, 64, WRITE, 0);
        p.post(0, 0);
        p.push(op::PROCESS, &[]);
        // Migrate{req 1, count 2}: [message][pairs][ack].
        p.message(0x1000, 3, 2, 1, 0);
        p.desc(1, 2, 0x1000, 64, NEXT, 3);
        p.desc(1, 3, 0x1200, 32, NEXT, 4);
        p.desc(1, 4, 0x1100, 16, WRITE, 0);
        let second: (u8, u8, u16) = if into_device { (1, 0, 3) } else { (1, 1, 1) };
        let pairs: [&[u8]; 8] = [
            &0x1200u16.to_le_bytes(),
            &[2],
            &[0],
            &[1],
            &0u16.to_le_bytes(),
            &[second.0],
            &[second.1],
            &second.2.to_le_bytes(),
        ];
        p.push(op::PAIRS, &pairs);
        p.post(1, 2);
        p.push(op::PROCESS, &[]);
        // Evicted{req 1, Done, migrated 2}.
        p.message(0x2000, 1, 0, 1, 0);
        p.guest_chain(5, 0x2000);
        p.push(op::PROCESS, &[]);
        p
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// Run an `agent_queue` program; the harness afterwards.
    fn run_queue(data: &[u8]) -> QueueHarness {
        let mut r = Reader::new(data);
        let mut harness = QueueHarness::new(1 << (r.u8() % 5));
        harness.run(&mut r);
        harness
    }

    #[test]
    fn queue_seeds_reach_the_copy() {
        let h = run_queue(&QueueProgram::hello().0);
        assert_eq!(h.channel.agent_version(), Some(AGENT_VERSION));

        let h = run_queue(&QueueProgram::evict_and_migrate(false).0);
        let m = &h.channel.shared().metrics;
        assert_eq!(m.requests_sent.load(Ordering::Relaxed), 1);
        assert_eq!(m.pages_copied.load(Ordering::Relaxed), 2);
        assert_eq!(m.answers.load(Ordering::Relaxed), 1);
        let mut page = vec![0u8; PAGE_SIZE as usize];
        h.ram.read(DESTINATIONS + PAGE_SIZE, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == MARK_BYTE), "page not copied");

        let h = run_queue(&QueueProgram::evict_and_migrate(true).0);
        let m = &h.channel.shared().metrics;
        assert_eq!(m.pairs_refused.load(Ordering::Relaxed), 1);
        assert_eq!(m.pages_copied.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_write_into_device_memory_is_caught() {
        // The check itself works: change a device-owned byte and process.
        let mut h = QueueHarness::new(16);
        h.write(DEVICE_OWNED + PAGE_SIZE, &[MARK_BYTE]);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.process()));
        assert!(caught.is_err());
    }
}
