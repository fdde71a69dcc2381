//! The agent channel's driver: hostq brings requests, guestq carries answers and Migrate
//! batches (each sent synchronously: post, notify, wait for the VMM's ack).
//!
//! ```text
//!  hostq   16 writable 64-byte buffers, re-posted as soon as a request is read
//!  guestq  one chain at a time: [message 64 B][payload, Migrate only][ack 16 B, writable]
//! ```

use guest_agent::agent::{Channel, ChannelError, PAYLOAD_BYTES};
use guest_agent::mm::{Mm, Pfn, PhysMem};
use guest_agent::workload::zero_frame;
use protocol::boot::DeviceDesc;
use protocol::layout::PAGE_SIZE;
use protocol::msg::{ACK_SIZE, Ack, GuestMsg, HostMsg, MSG_SIZE};

use super::virtio::queue::{F_NEXT, F_WRITE, SplitQueue};
use super::virtio::transport::{InitError, Mmio};
use crate::arch::{cpu, interrupts};

/// The agent device's virtio id (see the VMM's `AGENT_DEVICE_ID`).
const AGENT_DEVICE_ID: u32 = 0x4341;
const QUEUE_SIZE: u16 = 16;
const HOSTQ: u32 = 0;
const GUESTQ: u32 = 1;
/// Where guestq's garbage chains point (test mode): far outside guest RAM.
const GARBAGE_ADDR: u64 = 0xdead_0000_0000;

/// The driver.
pub struct AgentDriver {
    mmio: Mmio,
    hostq: SplitQueue,
    guestq: SplitQueue,
    /// 16 request buffers of 64 bytes.
    requests: u64,
    /// The outgoing message (64 bytes) and, at +64, the ack (16 bytes).
    outgoing: u64,
    payload: u64,
    tick_us: u64,
}

/// `2^order` zeroed pages of unmovable memory for a driver; their guest-physical address.
pub fn zeroed_pages(mm: &mut Mm, hw: &mut impl PhysMem, order: u32) -> Result<u64, InitError> {
    let pfn = mm.alloc_unmovable(order).ok_or(InitError::NoMemory)?;
    for i in 0..(1u64 << order) {
        zero_frame(hw, Pfn(pfn.0 + i));
    }
    Ok(pfn.gpa())
}

impl AgentDriver {
    /// Bring up the device `desc` with queues and buffers from `mm`.
    pub fn new(
        desc: &DeviceDesc,
        mm: &mut Mm,
        hw: &mut impl PhysMem,
        tick_us: u64,
    ) -> Result<Self, InitError> {
        let mmio = Mmio::new(desc.base);
        mmio.begin(AGENT_DEVICE_ID)?;
        let mut hostq = SplitQueue::new(zeroed_pages(mm, hw, 0)?, QUEUE_SIZE);
        let guestq = SplitQueue::new(zeroed_pages(mm, hw, 0)?, QUEUE_SIZE);
        let requests = zeroed_pages(mm, hw, 0)?;
        let outgoing = zeroed_pages(mm, hw, 0)?;
        let payload_order = (PAYLOAD_BYTES as u64 / PAGE_SIZE).trailing_zeros();
        let payload = zeroed_pages(mm, hw, payload_order)?;
        for (i, q) in [(HOSTQ, &hostq), (GUESTQ, &guestq)] {
            mmio.setup_queue(i, QUEUE_SIZE, q.desc_addr(), q.avail_addr(), q.used_addr())?;
        }
        for i in 0..QUEUE_SIZE {
            let buf = requests + u64::from(i) * MSG_SIZE as u64;
            hostq.set_desc(i, buf, MSG_SIZE as u32, F_WRITE, 0);
            hostq.push(i);
        }
        mmio.finish()?;
        mmio.notify(HOSTQ);
        Ok(AgentDriver {
            mmio,
            hostq,
            guestq,
            requests,
            outgoing,
            payload,
            tick_us,
        })
    }

    /// The next request the VMM sent, if any (its buffer is re-posted at once).
    pub fn next_request(&mut self, hw: &impl PhysMem) -> Option<HostMsg> {
        while let Some((id, len)) = self.hostq.pop_used() {
            let id = id % QUEUE_SIZE;
            let buf = self.requests + u64::from(id) * MSG_SIZE as u64;
            let mut bytes = [0u8; MSG_SIZE];
            for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
                chunk.copy_from_slice(&hw.read_u64(buf + 8 * i as u64).to_le_bytes());
            }
            self.hostq.push(id);
            self.mmio.notify(HOSTQ);
            if len as usize >= MSG_SIZE
                && let Ok(msg) = HostMsg::decode(&bytes)
            {
                return Some(msg);
            }
        }
        None
    }

    /// Wait for the VMM to return the chain we posted on guestq.
    fn wait_guestq(&mut self) -> u32 {
        loop {
            if let Some((_, len)) = self.guestq.pop_used() {
                return len;
            }
            cpu::wait_for_interrupt();
        }
    }

    fn write_bytes(addr: u64, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: `addr` is one of the driver's own buffers (unmovable, identity-mapped).
            unsafe {
                core::ptr::write_volatile((addr + 8 * i as u64) as *mut u64, u64::from_le_bytes(w))
            };
        }
    }

    fn read_ack(&self) -> Option<Ack> {
        let mut b = [0u8; ACK_SIZE];
        for (i, chunk) in b.chunks_exact_mut(8).enumerate() {
            // SAFETY: the ack buffer is ours (unmovable, identity-mapped).
            let w = unsafe {
                core::ptr::read_volatile(
                    (self.outgoing + MSG_SIZE as u64 + 8 * i as u64) as *const u64,
                )
            };
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        Ack::decode(&b).ok()
    }
}

impl Channel for AgentDriver {
    fn send(&mut self, msg: &GuestMsg, payload_len: usize) -> Result<Ack, ChannelError> {
        let ack_buf = self.outgoing + MSG_SIZE as u64;
        Self::write_bytes(self.outgoing, &msg.encode());
        Self::write_bytes(ack_buf, &[0u8; ACK_SIZE]);
        self.guestq
            .set_desc(0, self.outgoing, MSG_SIZE as u32, F_NEXT, 1);
        if payload_len > 0 {
            let len = payload_len.min(PAYLOAD_BYTES) as u32;
            self.guestq.set_desc(1, self.payload, len, F_NEXT, 2);
            self.guestq
                .set_desc(2, ack_buf, ACK_SIZE as u32, F_WRITE, 0);
        } else {
            self.guestq
                .set_desc(1, ack_buf, ACK_SIZE as u32, F_WRITE, 0);
        }
        self.guestq.push(0);
        self.mmio.notify(GUESTQ);
        if (self.wait_guestq() as usize) < ACK_SIZE {
            return Err(ChannelError);
        }
        self.read_ack().ok_or(ChannelError)
    }

    fn payload(&mut self) -> &mut [u8] {
        // SAFETY: the payload block is the driver's own (unmovable, contiguous,
        // identity-mapped, PAYLOAD_BYTES long); `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.payload as *mut u8, PAYLOAD_BYTES) }
    }

    fn send_garbage(&mut self) {
        // A message descriptor outside guest RAM, chained to a writable one that is too
        // small for an ack.
        self.guestq.set_desc(3, GARBAGE_ADDR, 4096, F_NEXT, 4);
        self.guestq
            .set_desc(4, GARBAGE_ADDR + 0x1000, 3, F_WRITE, 0);
        self.guestq.push(3);
        self.mmio.notify(GUESTQ);
        self.wait_guestq();
    }

    fn delay_ms(&mut self, ms: u64) {
        let ticks = (ms * 1000).div_ceil(self.tick_us.max(1));
        let start = interrupts::TICKS.load(core::sync::atomic::Ordering::Relaxed);
        while interrupts::TICKS.load(core::sync::atomic::Ordering::Relaxed) - start < ticks {
            cpu::wait_for_interrupt();
        }
    }
}
