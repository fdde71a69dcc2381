//! The agent device: two virtqueues between the VMM and the guest agent.
//!
//! - hostq (queue 0): the guest posts device-writable buffers; the VMM writes one request
//!   ([`protocol::msg::HostMsg`], 64 bytes) into each and returns it through the used ring.
//! - guestq (queue 1): the guest posts `[message][payload?][ack]` chains; the VMM handles
//!   the message (answers are routed to their waiters, Migrate pairs are copied at host
//!   speed) and writes a 16-byte [`Ack`].
//!
//! Everything in the queues is written by the guest and untrusted: descriptors are bounds
//! checked by vm-memory, sizes against the protocol's, Migrate pairs against the range the
//! guest was asked to evict; at most one queue's worth of chains is handled per event, so a
//! flooding guest only keeps this thread busy.

use std::sync::Arc;

use protocol::agent_config::{MAX_CONFIG_SIZE, encode_config};
use protocol::boot::RegionDesc;
use protocol::layout::PAGE_SIZE;
use protocol::msg::{
    ACK_SIZE, Ack, GuestMsg, MAX_MIGRATE_PAIRS, MIGRATE_PAIR_SIZE, MSG_SIZE, MigratePair, Status,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::channel::{AgentMetrics, ChannelShared};
use crate::devices::virtio::mmio::{ActivateError, Interrupt, VirtioDevice};
use crate::host_cache::CacheFlusher;
use crate::vstate::memory::GuestRam;

/// The agent device's virtio id (vendor-specific range).
pub const AGENT_DEVICE_ID: u32 = 0x4341;
/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 16;
const HOSTQ: usize = 0;
const GUESTQ: usize = 1;

/// Decides whether the guest may have pages copied into `[gpa, gpa+len)`: never into
/// memory a device owns.
pub type DeviceOwned = Arc<dyn Fn(u64, u64) -> bool + Send + Sync>;

/// The device state, shared by the MMIO transport (vCPU threads) and the agent thread.
pub struct AgentDevice {
    ram: Arc<GuestRam>,
    /// The configuration space: the CMA regions ([`protocol::agent_config`]).
    config: Vec<u8>,
    channel: Arc<ChannelShared>,
    device_owned: DeviceOwned,
    queues: Vec<Queue>,
    interrupt: Option<Interrupt>,
    /// Made when a benchmark first asks for cold copies ([`ChannelShared::cold_copies`]).
    flusher: Option<CacheFlusher>,
}

impl std::fmt::Debug for AgentDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentDevice")
            .field("active", &self.interrupt.is_some())
            .finish_non_exhaustive()
    }
}

impl VirtioDevice for AgentDevice {
    fn device_id(&self) -> u32 {
        AGENT_DEVICE_ID
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn activate(&mut self, queues: Vec<Queue>, interrupt: Interrupt) -> Result<(), ActivateError> {
        if queues.len() != 2 {
            return Err(ActivateError::Device("the agent needs two queues".into()));
        }
        self.queues = queues;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.interrupt = None;
    }
}

/// How one guestq chain was laid out.
struct GuestChain {
    head: u16,
    readable: Vec<(u64, u32)>,
    ack: Option<(u64, u32)>,
}

impl AgentDevice {
    /// A device talking through `channel` that describes `regions` in its configuration
    /// space; `device_owned` guards Migrate destinations.
    pub fn new(
        ram: Arc<GuestRam>,
        regions: &[RegionDesc],
        channel: Arc<ChannelShared>,
        device_owned: DeviceOwned,
    ) -> Self {
        let mut config = [0u8; MAX_CONFIG_SIZE];
        let len = encode_config(regions, &mut config);
        AgentDevice {
            ram,
            config: config[..len].to_vec(),
            channel,
            device_owned,
            queues: Vec::new(),
            interrupt: None,
            flusher: None,
        }
    }

    fn metrics(&self) -> &AgentMetrics {
        &self.channel.metrics
    }

    /// Handle everything pending: the guest's messages, then outgoing requests.
    pub fn process(&mut self) {
        if self.interrupt.is_none() {
            return;
        }
        let mut used = self.process_guestq();
        used |= self.deliver_requests();
        if used && let Some(irq) = &self.interrupt {
            irq.signal_used();
        }
    }

    /// Write queued requests into the buffers the guest posted on hostq.
    fn deliver_requests(&mut self) -> bool {
        let mut used = false;
        while self.channel.has_outgoing() {
            let ram = self.ram.clone();
            let Some(q) = self.queues.get_mut(HOSTQ) else {
                return used;
            };
            let Some(chain) = q.pop_descriptor_chain(ram.memory()) else {
                return used;
            };
            let head = chain.head_index();
            let Some(msg) = self.channel.take_outgoing(1).pop() else {
                q.go_to_previous_position();
                return used;
            };
            let written = match writable_buffer(chain, MSG_SIZE as u32) {
                Some(addr) if self.guest_may_use(addr, MSG_SIZE as u32) => {
                    self.ram.write(addr, &msg.encode()).is_ok()
                }
                _ => false,
            };
            if written {
                AgentMetrics::inc(&self.metrics().requests_sent);
            } else {
                AgentMetrics::inc(&self.metrics().bad_descriptors);
                self.channel.put_back(msg);
            }
            let len = if written { MSG_SIZE as u32 } else { 0 };
            if let Some(q) = self.queues.get_mut(HOSTQ) {
                let _ = q.add_used(ram.memory(), head, len);
            }
            used = true;
        }
        used
    }

    /// Handle at most one queue's worth of guest messages.
    fn process_guestq(&mut self) -> bool {
        let mut used = false;
        for _ in 0..QUEUE_SIZE {
            let ram = self.ram.clone();
            let Some(q) = self.queues.get_mut(GUESTQ) else {
                break;
            };
            let Some(chain) = q.pop_descriptor_chain(ram.memory()) else {
                break;
            };
            let layout = split_chain(chain);
            let written = if self.chain_is_guest_memory(&layout) {
                self.handle_chain(&layout)
            } else {
                AgentMetrics::inc(&self.metrics().bad_descriptors);
                0
            };
            if let Some(q) = self.queues.get_mut(GUESTQ) {
                let _ = q.add_used(ram.memory(), layout.head, written);
            }
            used = true;
        }
        used
    }

    /// Whether the guest may have the VMM read or write `[addr, addr+len)` on its behalf:
    /// never memory a device owns. A granted chunk is out of the guest's own reach, so a
    /// descriptor pointing there would make the VMM write (ack, request) or leak (message,
    /// payload) device memory for the guest.
    fn guest_may_use(&self, addr: u64, len: u32) -> bool {
        !(self.device_owned)(addr, u64::from(len))
    }

    /// Whether every buffer of a guestq chain that the device uses is the guest's memory.
    fn chain_is_guest_memory(&self, chain: &GuestChain) -> bool {
        chain
            .readable
            .iter()
            .chain(&chain.ack)
            .all(|&(addr, len)| self.guest_may_use(addr, len))
    }

    /// Handle one guestq chain; the number of bytes written into it.
    fn handle_chain(&mut self, chain: &GuestChain) -> u32 {
        let ack = match self.read_message(chain) {
            Some(msg) => self.handle_message(msg, chain),
            None => {
                AgentMetrics::inc(&self.metrics().bad_descriptors);
                Ack {
                    status: Status::Invalid,
                    done: 0,
                }
            }
        };
        match chain.ack {
            Some((addr, len))
                if len as usize >= ACK_SIZE && self.ram.write(addr, &ack.encode()).is_ok() =>
            {
                ACK_SIZE as u32
            }
            _ => 0,
        }
    }

    fn read_message(&self, chain: &GuestChain) -> Option<GuestMsg> {
        let &(addr, len) = chain.readable.first()?;
        if (len as usize) < MSG_SIZE {
            return None;
        }
        let mut buf = [0u8; MSG_SIZE];
        self.ram.read(addr, &mut buf).ok()?;
        match GuestMsg::decode(&buf) {
            Ok(m) => Some(m),
            Err(_) => {
                AgentMetrics::inc(&self.metrics().bad_messages);
                None
            }
        }
    }

    fn handle_message(&mut self, msg: GuestMsg, chain: &GuestChain) -> Ack {
        let ok = Ack {
            status: Status::Done,
            done: 0,
        };
        match msg {
            GuestMsg::Hello { version, .. } => {
                self.channel.hello(version);
                ok
            }
            GuestMsg::Migrate { req, count } => self.migrate(req, count, chain),
            answer => {
                self.channel.deliver(answer);
                ok
            }
        }
    }

    /// Copy the pages of a Migrate payload, after checking every pair: the source inside
    /// the range request `req` is evicting, the destination a page of guest RAM outside it
    /// that no device owns.
    fn migrate(&mut self, req: u64, count: u32, chain: &GuestChain) -> Ack {
        let refuse = |done| Ack {
            status: Status::Invalid,
            done,
        };
        let Some((start, len)) = self.channel.evicting(req) else {
            AgentMetrics::inc(&self.metrics().pairs_refused);
            return refuse(0);
        };
        let count = count as usize;
        let bytes = count * MIGRATE_PAIR_SIZE;
        let payload = match chain.readable.get(1) {
            Some(&(addr, len)) if count <= MAX_MIGRATE_PAIRS && len as usize >= bytes => {
                let mut buf = vec![0u8; bytes];
                match self.ram.read(addr, &mut buf) {
                    Ok(()) => buf,
                    Err(_) => return refuse(0),
                }
            }
            _ => {
                AgentMetrics::inc(&self.metrics().bad_descriptors);
                return refuse(0);
            }
        };
        let end = start + len;
        let pairs: Vec<MigratePair> = (0..count)
            .map_while(|i| MigratePair::decode(&payload, i).ok())
            .collect();
        // Check every pair first, then copy: a refused batch copies nothing.
        for (i, pair) in pairs.iter().enumerate() {
            let src_ok = pair.src % PAGE_SIZE == 0 && pair.src >= start && pair.src < end;
            let dst_ok = pair.dst % PAGE_SIZE == 0
                && (pair.dst.saturating_add(PAGE_SIZE) <= start || pair.dst >= end)
                && self.ram.contains(pair.dst, PAGE_SIZE)
                && self.ram.contains(pair.src, PAGE_SIZE)
                && !(self.device_owned)(pair.dst, PAGE_SIZE);
            if !src_ok || !dst_ok {
                AgentMetrics::inc(&self.metrics().pairs_refused);
                return refuse(i as u32);
            }
        }
        if pairs.len() != count {
            return refuse(pairs.len() as u32);
        }
        if self
            .channel
            .cold_copies
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.flusher.get_or_insert_with(CacheFlusher::new).flush();
        }
        let started = std::time::Instant::now();
        self.populate_destinations(&pairs);
        let populated = started.elapsed();
        for (i, pair) in pairs.iter().enumerate() {
            if self.copy_page(pair.src, pair.dst).is_err() {
                return refuse(i as u32);
            }
        }
        let m = self.metrics();
        m.backing_ns.fetch_add(
            populated.as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        m.copy_ns.fetch_add(
            (started.elapsed() - populated).as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.metrics()
            .pages_copied
            .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
        Ack {
            status: Status::Done,
            done: count as u32,
        }
    }

    /// Fault the destination pages in, one call per contiguous run. Guest memory the guest
    /// never touched is not backed by the host yet: giving it backing (allocating and
    /// zeroing host pages) is a cost of its own, measured apart from the copy.
    fn populate_destinations(&self, pairs: &[MigratePair]) {
        if self.ram.is_preallocated() {
            return;
        }
        let mut dsts: Vec<u64> = pairs.iter().map(|p| p.dst).collect();
        dsts.sort_unstable();
        let mut run: Option<(u64, u64)> = None;
        let flush = |(start, len): (u64, u64)| {
            if let Some(host) = self.ram.host_range(start, len) {
                // SAFETY: `[host, host+len)` maps guest RAM (checked by `host_range`);
                // MADV_POPULATE_WRITE only faults pages in, it changes no contents.
                unsafe {
                    libc::madvise(
                        host as *mut libc::c_void,
                        len as usize,
                        libc::MADV_POPULATE_WRITE,
                    )
                };
            }
        };
        for dst in dsts {
            run = match run {
                Some((start, len)) if start + len == dst => Some((start, len + PAGE_SIZE)),
                Some((start, len)) if start + len > dst => Some((start, len)),
                Some(r) => {
                    flush(r);
                    Some((dst, PAGE_SIZE))
                }
                None => Some((dst, PAGE_SIZE)),
            };
        }
        if let Some(r) = run {
            flush(r);
        }
    }

    fn copy_page(&self, src: u64, dst: u64) -> Result<(), ()> {
        let from = self.ram.host_range(src, PAGE_SIZE).ok_or(())?;
        let to = self.ram.host_range(dst, PAGE_SIZE).ok_or(())?;
        // SAFETY: `from` and `to` are host addresses of two distinct, page-aligned guest
        // pages inside the guest RAM mapping, which outlives this call. The guest may write
        // them concurrently (it has unmapped the source; a malicious guest only corrupts its
        // own data); no Rust reference to guest memory exists, so the copy is sound.
        unsafe {
            std::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, PAGE_SIZE as usize)
        };
        Ok(())
    }
}

/// The first descriptor of a hostq chain, if it is device-writable and big enough.
fn writable_buffer(chain: DescriptorChain<&GuestMemoryMmap>, need: u32) -> Option<u64> {
    let mut chain = chain;
    let desc = chain.next()?;
    (desc.is_write_only() && desc.len() >= need).then(|| desc.addr().0)
}

/// The readable descriptors of a guestq chain, and its first writable one (the ack).
fn split_chain(chain: DescriptorChain<&GuestMemoryMmap>) -> GuestChain {
    let head = chain.head_index();
    let mut layout = GuestChain {
        head,
        readable: Vec::new(),
        ack: None,
    };
    // The iterator stops after queue-size descriptors, so a looping chain ends.
    for desc in chain {
        if desc.is_write_only() {
            layout.ack.get_or_insert((desc.addr().0, desc.len()));
        } else if layout.ack.is_none() && layout.readable.len() < 2 {
            layout.readable.push((desc.addr().0, desc.len()));
        }
    }
    layout
}
