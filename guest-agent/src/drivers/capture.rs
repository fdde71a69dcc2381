//! The frame-capture device's driver: ask for buffers, check every frame, give them back.
//!
//! Asynchronous on purpose: while the device allocates the buffers, the VMM evicts them
//! through the agent, so the driver must not block the main loop waiting for Start's
//! answer. The main loop calls [`CaptureDriver::poll`] between agent requests.
//!
//! ```text
//!  controlq  one command at a time: [command 32 B][response, writable]
//!  frameq    16 writable 32-byte slots; each comes back naming a filled buffer
//! ```

use guest_agent::mm::{Mm, PhysMem};
use protocol::boot::DeviceDesc;
use protocol::capture::{
    CAPTURE_DEVICE_ID, COMMAND_SIZE, Command, FORMAT_NV12, FRAME_DONE_SIZE, FrameDone, MAX_BUFFERS,
    START_RESPONSE_SIZE, STATUS_OK, StartResponse, frame_bytes, pattern_word,
};
use protocol::page::mix;

use super::virtio::queue::{F_NEXT, F_WRITE, SplitQueue};
use super::virtio::transport::{InitError, Mmio};
use crate::drivers::agent::zeroed_pages;

const QUEUE_SIZE: u16 = 16;
const CONTROLQ: u32 = 0;
const FRAMEQ: u32 = 1;
const RESPONSE_OFFSET: u64 = 64;

/// Where the driver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not streaming.
    Idle,
    /// Start sent, waiting for the buffers.
    Starting,
    /// Frames arriving.
    Streaming,
    /// Stop sent.
    Stopping,
}

/// What a poll saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Start was answered: buffers granted, or refused.
    Started {
        /// Buffers granted.
        ok: bool,
    },
    /// A frame arrived and was checked.
    Frame {
        /// Its contents were right.
        ok: bool,
    },
    /// A frame that arrived after Stop was sent, not checked.
    Dropped,
    /// Stop was answered: the buffers are gone.
    Stopped,
}

/// The driver of one capture device.
pub struct CaptureDriver {
    mmio: Mmio,
    controlq: SplitQueue,
    frameq: SplitQueue,
    command: u64,
    slots: u64,
    /// Current state.
    pub state: State,
    buffers: [u64; MAX_BUFFERS],
    count: u32,
    bytes: u64,
    next_frame: u64,
    /// Frames checked since Start.
    pub frames_ok: u64,
    /// Frames that failed their check since Start.
    pub frames_bad: u64,
}

impl CaptureDriver {
    /// Bring up the device `desc`.
    pub fn new(desc: &DeviceDesc, mm: &mut Mm, hw: &mut impl PhysMem) -> Result<Self, InitError> {
        let mmio = Mmio::new(desc.base);
        mmio.begin(CAPTURE_DEVICE_ID)?;
        let controlq = SplitQueue::new(zeroed_pages(mm, hw, 0)?, QUEUE_SIZE);
        let mut frameq = SplitQueue::new(zeroed_pages(mm, hw, 0)?, QUEUE_SIZE);
        let command = zeroed_pages(mm, hw, 0)?;
        let slots = zeroed_pages(mm, hw, 0)?;
        for (i, q) in [(CONTROLQ, &controlq), (FRAMEQ, &frameq)] {
            mmio.setup_queue(i, QUEUE_SIZE, q.desc_addr(), q.avail_addr(), q.used_addr())?;
        }
        for i in 0..QUEUE_SIZE {
            let slot = slots + u64::from(i) * FRAME_DONE_SIZE as u64;
            frameq.set_desc(i, slot, FRAME_DONE_SIZE as u32, F_WRITE, 0);
        }
        mmio.finish()?;
        Ok(CaptureDriver {
            mmio,
            controlq,
            frameq,
            command,
            slots,
            state: State::Idle,
            buffers: [0; MAX_BUFFERS],
            count: 0,
            bytes: 0,
            next_frame: 0,
            frames_ok: 0,
            frames_bad: 0,
        })
    }

    fn send(&mut self, hw: &mut impl PhysMem, cmd: Command, response_len: usize) {
        let bytes = cmd.encode();
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            hw.write_u64(self.command + 8 * i as u64, u64::from_le_bytes(b));
        }
        self.controlq
            .set_desc(0, self.command, COMMAND_SIZE as u32, F_NEXT, 1);
        self.controlq.set_desc(
            1,
            self.command + RESPONSE_OFFSET,
            response_len as u32,
            F_WRITE,
            0,
        );
        self.controlq.push(0);
        self.mmio.notify(CONTROLQ);
    }

    /// Ask for `buffers` buffers of `width` x `height` NV12, aligned to `align`.
    pub fn start(
        &mut self,
        hw: &mut impl PhysMem,
        width: u32,
        height: u32,
        buffers: u32,
        align: u64,
    ) {
        self.bytes = frame_bytes(width, height).unwrap_or(0);
        self.next_frame = 0;
        self.frames_ok = 0;
        self.frames_bad = 0;
        let cmd = Command::Start {
            width,
            height,
            format: FORMAT_NV12,
            buffers,
            align,
        };
        self.send(hw, cmd, START_RESPONSE_SIZE);
        self.state = State::Starting;
    }

    /// Stop streaming; the device frees the buffers.
    pub fn stop(&mut self, hw: &mut impl PhysMem) {
        self.send(hw, Command::Stop, START_RESPONSE_SIZE);
        self.state = State::Stopping;
    }

    /// The buffers granted by the last Start.
    pub fn buffers(&self) -> &[u64] {
        &self.buffers[..self.count as usize]
    }

    /// Look at both queues; at most one event per call.
    pub fn poll(&mut self, hw: &mut impl PhysMem) -> Option<Event> {
        if let Some((_, len)) = self.controlq.pop_used() {
            return Some(self.command_done(hw, len));
        }
        let (id, len) = self.frameq.pop_used()?;
        let id = id % QUEUE_SIZE;
        if self.state != State::Streaming {
            // Filled before the device saw Stop: its buffer may already be freed.
            return Some(Event::Dropped);
        }
        let slot = self.slots + u64::from(id) * FRAME_DONE_SIZE as u64;
        let ok = len as usize >= FRAME_DONE_SIZE && self.check_frame(hw, slot);
        self.frameq.push(id);
        self.mmio.notify(FRAMEQ);
        if ok {
            self.frames_ok += 1;
        } else {
            self.frames_bad += 1;
        }
        Some(Event::Frame { ok })
    }

    fn command_done(&mut self, hw: &impl PhysMem, len: u32) -> Event {
        let mut bytes = [0u8; START_RESPONSE_SIZE];
        for (i, w) in bytes.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(
                &hw.read_u64(self.command + RESPONSE_OFFSET + 8 * i as u64)
                    .to_le_bytes(),
            );
        }
        let response = StartResponse::decode(&bytes).ok().filter(|_| len >= 16);
        match self.state {
            State::Starting => {
                let ok = response.is_some_and(|r| r.status == STATUS_OK && r.count > 0);
                if let (true, Some(r)) = (ok, response) {
                    self.buffers = r.buffers;
                    self.count = r.count;
                    self.state = State::Streaming;
                    // One slot per buffer: the device fills buffer `frame % count`, so a
                    // buffer is written again only after its last frame was checked and
                    // its slot re-posted (the V4L2 queue/dequeue discipline).
                    for i in 0..(r.count as u16).min(QUEUE_SIZE) {
                        self.frameq.push(i);
                    }
                    self.mmio.notify(FRAMEQ);
                } else {
                    self.state = State::Idle;
                }
                Event::Started { ok }
            }
            _ => {
                self.count = 0;
                self.state = State::Idle;
                Event::Stopped
            }
        }
    }

    /// Check a completed frame: in sequence, in a granted buffer, one word per 4 KiB
    /// against the pattern, and the device's checksum over those words.
    fn check_frame(&mut self, hw: &impl PhysMem, slot: u64) -> bool {
        let mut b = [0u8; FRAME_DONE_SIZE];
        for (i, w) in b.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&hw.read_u64(slot + 8 * i as u64).to_le_bytes());
        }
        let Ok(done) = FrameDone::decode(&b) else {
            return false;
        };
        let Some(&base) = self.buffers().get(done.buffer as usize) else {
            return false;
        };
        if done.frame != self.next_frame {
            return false;
        }
        self.next_frame += 1;
        let mut h = mix(done.frame, self.bytes);
        let mut off = 0;
        while off + 8 <= self.bytes {
            let w = hw.read_u64(base + off);
            if w != pattern_word(done.frame, off) {
                return false;
            }
            h = mix(h, w);
            off += 4096;
        }
        h == done.checksum
    }
}
