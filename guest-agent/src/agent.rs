//! The agent: serves the VMM's requests with the memory manager and the workload.
//!
//! One request at a time, in queue order: Evict (isolate, migrate, take), Return (give the
//! pages back as CMA), Cancel (undo a completed Evict), Query (report, quiesce/resume the
//! workload), Probe (read a word, for tests), Shutdown (check every page, exit).
//! Replies go through a [`Channel`] — the virtio driver in the kernel, a fake in tests.
//!
//! Test modes (`agent.mode=` on the guest command line) make the agent misbehave on
//! purpose, so that the VMM's defences can be tested against a real guest: `mute` never
//! answers, `lie` answers Done without evicting, `spurious` adds answers to requests never
//! sent and duplicates, `garbage` posts malformed descriptors, `flood` sends a burst of
//! messages before each answer, `slow` answers late (`agent.delay_ms=`), `stray` asks the
//! VMM to copy pages into a range the VMM took earlier (device memory), `reorder` sends
//! each answer after the next one, `stall` stops in the middle of every eviction the VMM
//! copies for (after its first batch) for `agent.delay_ms`.

use crate::mm::{CopyEngine, CopyError, CopyMode, Mm, Mmu, PhysMem};
use crate::workload::Workload;
use protocol::msg::{
    AGENT_VERSION, Ack, GuestMsg, HostMsg, MAX_MIGRATE_PAIRS, MIGRATE_PAIR_SIZE, MigratePair,
    QUERY_QUIESCE, QUERY_RESUME, Status,
};

/// The guest's side of the agent channel.
pub trait Channel {
    /// Send `msg` (with the first `payload_len` bytes of [`Channel::payload`] attached)
    /// and wait for the VMM's acknowledgement.
    fn send(&mut self, msg: &GuestMsg, payload_len: usize) -> Result<Ack, ChannelError>;
    /// The payload buffer (at least `MAX_MIGRATE_PAIRS * MIGRATE_PAIR_SIZE` bytes).
    fn payload(&mut self) -> &mut [u8];
    /// Post a malformed chain (test mode `garbage`).
    fn send_garbage(&mut self);
    /// Wait about `ms` milliseconds (test mode `slow`).
    fn delay_ms(&mut self, ms: u64);
}

/// The channel broke (the device went away or answered nonsense).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelError;

/// How the agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve every request faithfully.
    Normal,
    /// Never answer.
    Mute,
    /// Answer every Evict with Done without evicting anything.
    Lie,
    /// Add answers to requests never sent, and duplicate answers.
    Spurious,
    /// Post malformed descriptor chains around every answer.
    Garbage,
    /// Send a burst of messages before every answer.
    Flood,
    /// Answer after a delay.
    Slow,
    /// Ask the VMM to copy pages into a range it took earlier (device memory).
    Stray,
    /// Hold each answer back and send it after the next one (replies out of order).
    Reorder,
    /// Stop in the middle of every eviction the VMM copies for: after the first Migrate
    /// batch is copied (pageblocks isolated, those pages not yet remapped), wait the
    /// delay, then go on.
    Stall,
}

impl Mode {
    /// Parse `agent.mode=`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "normal" => Mode::Normal,
            "mute" => Mode::Mute,
            "lie" => Mode::Lie,
            "spurious" => Mode::Spurious,
            "garbage" => Mode::Garbage,
            "flood" => Mode::Flood,
            "slow" => Mode::Slow,
            "stray" => Mode::Stray,
            "reorder" => Mode::Reorder,
            "stall" => Mode::Stall,
            _ => return None,
        })
    }
}

/// What the kernel does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep serving.
    Continue,
    /// The VMM asked the guest to check its pages and exit.
    Shutdown,
}

/// Completed evictions remembered for Cancel.
const REMEMBERED: usize = 16;

/// The agent's state.
pub struct Agent {
    /// The workload whose pages migrate.
    pub workload: Workload,
    /// The workload is stopped (no population, no rewrites) until resumed.
    pub quiesced: bool,
    mode: Mode,
    delay_ms: u64,
    completed: [(u64, u64, u64); REMEMBERED],
    next_slot: usize,
    held: Option<GuestMsg>,
}

/// Copies a Migrate batch through the VMM.
struct VmmCopy<'c, C: Channel> {
    chan: &'c mut C,
    req: u64,
    count: usize,
    /// Test mode `stray`: send every page here instead.
    stray_dst: Option<u64>,
    /// Test mode `stall`: wait this long after the first batch (0: no more stalls).
    stall_ms: u64,
}

impl<C: Channel> CopyEngine for VmmCopy<'_, C> {
    fn push(&mut self, mut pair: MigratePair) {
        if let Some(dst) = self.stray_dst {
            pair.dst = dst;
        }
        let off = self.count * MIGRATE_PAIR_SIZE;
        if let Some(slot) = self.chan.payload().get_mut(off..off + MIGRATE_PAIR_SIZE) {
            slot.copy_from_slice(&pair.encode());
            self.count += 1;
        }
    }

    fn copy(&mut self) -> Result<(), CopyError> {
        let count = core::mem::take(&mut self.count);
        let msg = GuestMsg::Migrate {
            req: self.req,
            count: count as u32,
        };
        let copied = match self.chan.send(&msg, count * MIGRATE_PAIR_SIZE) {
            Ok(Ack {
                status: Status::Done,
                done,
            }) if done as usize == count => Ok(()),
            Ok(ack) => Err(CopyError {
                code: 0x100 + u64::from(ack.done),
            }),
            Err(ChannelError) => Err(CopyError { code: 1 }),
        };
        if copied.is_ok() && self.stall_ms > 0 {
            let ms = core::mem::take(&mut self.stall_ms);
            self.chan.delay_ms(ms);
        }
        copied
    }
}

impl Agent {
    /// An agent serving `workload` in `mode`.
    pub fn new(workload: Workload, mode: Mode, delay_ms: u64) -> Self {
        Agent {
            workload,
            quiesced: false,
            mode,
            delay_ms,
            completed: [(0, 0, 0); REMEMBERED],
            next_slot: 0,
            held: None,
        }
    }

    /// Say Hello.
    pub fn hello(&mut self, chan: &mut impl Channel) -> Result<(), ChannelError> {
        chan.send(
            &GuestMsg::Hello {
                version: AGENT_VERSION,
                features: 0,
            },
            0,
        )
        .map(|_| ())
    }

    /// Serve one request. `readable(gpa)` says whether a Probe may read `gpa`.
    pub fn handle<H: PhysMem + Mmu, C: Channel>(
        &mut self,
        msg: HostMsg,
        mm: &mut Mm,
        hw: &mut H,
        chan: &mut C,
        readable: impl Fn(u64) -> bool,
    ) -> Control {
        let answer = match msg {
            HostMsg::Evict {
                req,
                gpa,
                len,
                flags,
            } => Some(self.evict(req, gpa, len, flags, mm, hw, chan)),
            HostMsg::Return { req, gpa, len } => {
                let status = match mm.return_range(gpa, len) {
                    Ok(_) => Status::Done,
                    Err(_) => Status::Invalid,
                };
                Some(GuestMsg::Returned { req, status })
            }
            HostMsg::Cancel { req, target } => Some(GuestMsg::Cancelled {
                req,
                target,
                status: self.undo(target, mm),
            }),
            HostMsg::Query { req, flags } => {
                if flags & QUERY_QUIESCE != 0 {
                    self.quiesced = true;
                }
                if flags & QUERY_RESUME != 0 {
                    self.quiesced = false;
                }
                Some(GuestMsg::Report {
                    req,
                    report: self.workload.report(mm),
                })
            }
            HostMsg::Probe { req, gpa } => {
                let value = if gpa % 8 == 0 && readable(gpa) {
                    hw.read_u64(gpa)
                } else {
                    u64::MAX
                };
                Some(GuestMsg::Probed { req, value })
            }
            HostMsg::Shutdown { .. } => return Control::Shutdown,
        };
        if let Some(answer) = answer {
            self.answer(answer, chan);
        }
        Control::Continue
    }

    #[allow(clippy::too_many_arguments)]
    fn evict<H: PhysMem + Mmu, C: Channel>(
        &mut self,
        req: u64,
        gpa: u64,
        len: u64,
        flags: u32,
        mm: &mut Mm,
        hw: &mut H,
        chan: &mut C,
    ) -> GuestMsg {
        if self.mode == Mode::Lie {
            return GuestMsg::Evicted {
                req,
                status: Status::Done,
                migrated: 0,
            };
        }
        let result = if flags & protocol::msg::EVICT_HOST_COPY != 0 {
            let stray_dst = (self.mode == Mode::Stray)
                .then(|| self.completed.iter().find(|c| c.2 != 0).map(|c| c.1))
                .flatten();
            let stall_ms = if self.mode == Mode::Stall {
                self.delay_ms
            } else {
                0
            };
            let mut engine = VmmCopy {
                chan,
                req,
                count: 0,
                stray_dst,
                stall_ms,
            };
            self.workload
                .evict(mm, hw, gpa, len, CopyMode::Host(&mut engine))
        } else {
            self.workload.evict(mm, hw, gpa, len, CopyMode::Guest)
        };
        match result {
            Ok(migrated) => {
                self.remember(req, gpa, len);
                GuestMsg::Evicted {
                    req,
                    status: Status::Done,
                    migrated,
                }
            }
            Err(e) => GuestMsg::Evicted {
                req,
                status: e.status(),
                migrated: e.migrated(),
            },
        }
    }

    fn remember(&mut self, req: u64, gpa: u64, len: u64) {
        self.completed[self.next_slot] = (req, gpa, len);
        self.next_slot = (self.next_slot + 1) % REMEMBERED;
    }

    /// Cancel: give back what a completed Evict took. Requests are served in order, so an
    /// Evict the VMM gave up on has always been handled before its Cancel arrives.
    fn undo(&mut self, target: u64, mm: &mut Mm) -> Status {
        let Some(slot) = self
            .completed
            .iter_mut()
            .find(|(req, _, len)| *req == target && *len != 0)
        else {
            return Status::Done;
        };
        let (_, gpa, len) = *slot;
        *slot = (0, 0, 0);
        match mm.return_range(gpa, len) {
            Ok(_) => Status::Done,
            Err(_) => Status::Invalid,
        }
    }

    /// Send an answer, in the current mode's way.
    fn answer(&mut self, msg: GuestMsg, chan: &mut impl Channel) {
        match self.mode {
            Mode::Mute => return,
            Mode::Slow => chan.delay_ms(self.delay_ms),
            Mode::Garbage => chan.send_garbage(),
            Mode::Flood => {
                for i in 0..64u64 {
                    let bogus = GuestMsg::Returned {
                        req: u64::MAX - i,
                        status: Status::Done,
                    };
                    let _ = chan.send(&bogus, 0);
                }
            }
            Mode::Spurious => {
                if let Some(req) = msg.answers() {
                    let never_sent = GuestMsg::Evicted {
                        req: req.wrapping_add(1_000_000),
                        status: Status::Done,
                        migrated: 0,
                    };
                    let _ = chan.send(&never_sent, 0);
                }
            }
            Mode::Reorder => {
                // The first answer waits for the second; then both go, newest first.
                match self.held.take() {
                    None => {
                        self.held = Some(msg);
                        return;
                    }
                    Some(older) => {
                        let _ = chan.send(&msg, 0);
                        let _ = chan.send(&older, 0);
                        return;
                    }
                }
            }
            Mode::Normal | Mode::Lie | Mode::Stray | Mode::Stall => {}
        }
        let _ = chan.send(&msg, 0);
        match self.mode {
            Mode::Spurious => {
                let _ = chan.send(&msg, 0);
            }
            Mode::Garbage => chan.send_garbage(),
            _ => {}
        }
    }
}

/// Bytes a channel's payload buffer needs.
pub const PAYLOAD_BYTES: usize = MAX_MIGRATE_PAIRS * MIGRATE_PAIR_SIZE;
