//! The frame-capture device: a V4L2-style capture device whose frame buffers are CMA
//! chunks carved out of lent guest memory (videobuf2-cma, one level down).
//!
//! Start allocates the buffers with `alloc(device name, size, align)`, so the map rules
//! pick the region, in shared grant mode (the guest driver reads the frames); the device
//! then fills one buffer per frame host-side with the moving test pattern of
//! `protocol::capture` and completes a frameq slot naming it. Stop frees the buffers and
//! the memory goes back to the guest. A failed allocation answers NO_BUFFERS, never hangs.
//!
//! Commands are handled on the device's own thread: an allocation waits for the guest to
//! evict, which it does on its agent channel while the driver waits for the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::capture::{
    CAPTURE_DEVICE_ID, COMMAND_SIZE, Command, FORMAT_NV12, FRAME_DONE_SIZE, FrameDone, MAX_BUFFERS,
    START_RESPONSE_SIZE, STATUS_INVALID, STATUS_NO_BUFFERS, STATUS_OK, StartResponse, frame_bytes,
    frame_checksum, pattern_word,
};
use protocol::layout::{PAGE_SIZE, align_up};
use serde::Serialize;
use virtio_queue::{Queue, QueueT};

use crate::devices::virtio::agent::device::DeviceOwned;
use crate::devices::virtio::mmio::{ActivateError, Interrupt, VirtioDevice};
use crate::grant::{Grant, GrantManager, GrantMode, Target};
use crate::vstate::memory::GuestRam;
use cma::AllocRequest;

/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 16;
const CONTROLQ: usize = 0;
const FRAMEQ: usize = 1;
/// Largest buffer alignment accepted.
const MAX_ALIGN: u64 = 1 << 30;

/// Counters of one capture device.
#[derive(Debug, Default, Serialize)]
pub struct CaptureMetrics {
    /// Start commands that got their buffers.
    pub start_count: AtomicU64,
    /// Start commands refused (no buffers, or invalid).
    pub start_fails: AtomicU64,
    /// Stop commands.
    pub stop_count: AtomicU64,
    /// Frames delivered.
    pub frame_count: AtomicU64,
    /// Malformed chains or commands.
    pub bad_requests: AtomicU64,
}

struct Stream {
    buffers: Vec<Grant>,
    bytes: u64,
    next_frame: u64,
}

/// One capture device.
pub struct CaptureDevice {
    name: String,
    ram: Arc<GuestRam>,
    grants: Arc<GrantManager>,
    device_owned: DeviceOwned,
    queues: Vec<Queue>,
    interrupt: Option<Interrupt>,
    stream: Option<Stream>,
    frame: Vec<u8>,
    /// Counters.
    pub metrics: Arc<CaptureMetrics>,
}

impl std::fmt::Debug for CaptureDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureDevice")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl VirtioDevice for CaptureDevice {
    fn device_id(&self) -> u32 {
        CAPTURE_DEVICE_ID
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, queues: Vec<Queue>, interrupt: Interrupt) -> Result<(), ActivateError> {
        if queues.len() != 2 {
            return Err(ActivateError::Device("capture needs two queues".into()));
        }
        self.queues = queues;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.interrupt = None;
        self.stop_stream();
    }
}

impl CaptureDevice {
    /// A device named `name` (what map rules match) allocating through `grants`;
    /// `device_owned` keeps the guest's descriptors out of device memory.
    pub fn new(
        name: &str,
        ram: Arc<GuestRam>,
        grants: Arc<GrantManager>,
        device_owned: DeviceOwned,
    ) -> Self {
        CaptureDevice {
            name: name.to_string(),
            ram,
            grants,
            device_owned,
            queues: Vec::new(),
            interrupt: None,
            stream: None,
            frame: Vec::new(),
            metrics: Arc::new(CaptureMetrics::default()),
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Handle pending commands.
    pub fn process_commands(&mut self) {
        let mut used = false;
        for _ in 0..QUEUE_SIZE {
            let ram = self.ram.clone();
            let Some(q) = self.queues.get_mut(CONTROLQ) else {
                return;
            };
            let Some(chain) = q.pop_descriptor_chain(ram.memory()) else {
                break;
            };
            let head = chain.head_index();
            let (mut cmd, mut resp) = (None, None);
            for d in chain {
                // A guest descriptor into device memory (a granted chunk) is not the
                // guest's to use: never read or write device memory on its behalf.
                if (self.device_owned)(d.addr().0, u64::from(d.len())) {
                    continue;
                }
                if d.is_write_only() {
                    resp.get_or_insert((d.addr().0, d.len()));
                } else {
                    cmd.get_or_insert((d.addr().0, d.len()));
                }
            }
            let written = self.handle_command(cmd, resp);
            if let Some(q) = self.queues.get_mut(CONTROLQ) {
                let _ = q.add_used(ram.memory(), head, written);
            }
            used = true;
        }
        if used && let Some(irq) = &self.interrupt {
            irq.signal_used();
        }
    }

    fn handle_command(&mut self, cmd: Option<(u64, u32)>, resp: Option<(u64, u32)>) -> u32 {
        let command = cmd
            .filter(|&(_, len)| len as usize >= COMMAND_SIZE)
            .and_then(|(addr, _)| {
                let mut b = [0u8; COMMAND_SIZE];
                self.ram.read(addr, &mut b).ok()?;
                Command::decode(&b).ok()
            });
        let Some((resp_addr, resp_len)) = resp else {
            self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
            return 0;
        };
        let response = match command {
            Some(Command::Start {
                width,
                height,
                format,
                buffers,
                align,
            }) if resp_len as usize >= START_RESPONSE_SIZE => {
                self.start(width, height, format, buffers, align)
            }
            Some(Command::Stop) => {
                self.stop_stream();
                self.metrics.stop_count.fetch_add(1, Ordering::Relaxed);
                response(STATUS_OK, &[])
            }
            _ => {
                self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
                response(STATUS_INVALID, &[])
            }
        };
        let bytes = response.encode();
        let n = bytes.len().min(resp_len as usize);
        match self.ram.write(resp_addr, &bytes[..n]) {
            Ok(()) => n as u32,
            Err(_) => 0,
        }
    }

    fn start(&mut self, width: u32, height: u32, format: u32, n: u32, align: u64) -> StartResponse {
        let size = frame_bytes(width, height).and_then(|b| align_up(b, PAGE_SIZE));
        let valid = format == FORMAT_NV12
            && (1..=MAX_BUFFERS as u32).contains(&n)
            && align.is_power_of_two()
            && align <= MAX_ALIGN
            && self.stream.is_none();
        let (Some(size), true) = (size, valid) else {
            self.metrics.start_fails.fetch_add(1, Ordering::Relaxed);
            return response(STATUS_INVALID, &[]);
        };
        let req = AllocRequest::new(size).aligned(align.max(PAGE_SIZE), 0);
        let target = Target::Device(self.name.clone());
        let mut buffers = Vec::new();
        for _ in 0..n {
            match self.grants.alloc(&target, &req, GrantMode::Shared) {
                Ok((grant, _)) => buffers.push(grant),
                Err(_) => {
                    for g in buffers {
                        let _ = self.grants.free(g.id());
                    }
                    self.metrics.start_fails.fetch_add(1, Ordering::Relaxed);
                    return response(STATUS_NO_BUFFERS, &[]);
                }
            }
        }
        let addrs: Vec<u64> = buffers
            .iter()
            .filter_map(|g| g.chunk().map(|c| c.gpa))
            .collect();
        self.stream = Some(Stream {
            buffers,
            bytes: frame_bytes(width, height).unwrap_or(0),
            next_frame: 0,
        });
        self.metrics.start_count.fetch_add(1, Ordering::Relaxed);
        response(STATUS_OK, &addrs)
    }

    fn stop_stream(&mut self) {
        if let Some(stream) = self.stream.take() {
            for g in stream.buffers {
                let _ = self.grants.free(g.id());
            }
        }
    }

    /// Deliver the next frame if streaming and the driver has posted a slot for it.
    pub fn produce_frame(&mut self) {
        let Some(stream) = &mut self.stream else {
            return;
        };
        let ram = self.ram.clone();
        let Some(q) = self.queues.get_mut(FRAMEQ) else {
            return;
        };
        let Some(mut chain) = q.pop_descriptor_chain(ram.memory()) else {
            return;
        };
        let head = chain.head_index();
        let owned = self.device_owned.clone();
        let slot = chain
            .next()
            .filter(|d| d.is_write_only() && d.len() as usize >= FRAME_DONE_SIZE)
            .map(|d| d.addr().0)
            .filter(|&a| !owned(a, FRAME_DONE_SIZE as u64));
        let frame = stream.next_frame;
        let index = (frame % stream.buffers.len() as u64) as usize;
        let bytes = stream.bytes;
        fill_pattern(&mut self.frame, frame, bytes);
        let mut written = 0;
        if let (Some(slot), Some(grant)) = (slot, stream.buffers.get(index))
            && grant.write(0, &self.frame).is_ok()
        {
            let done = FrameDone {
                buffer: index as u32,
                frame,
                checksum: frame_checksum(frame, bytes),
            };
            if ram.write(slot, &done.encode()).is_ok() {
                written = FRAME_DONE_SIZE as u32;
                stream.next_frame += 1;
                self.metrics.frame_count.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(q) = self.queues.get_mut(FRAMEQ) {
            let _ = q.add_used(ram.memory(), head, written);
        }
        if let Some(irq) = &self.interrupt {
            irq.signal_used();
        }
    }
}

fn response(status: u32, addrs: &[u64]) -> StartResponse {
    let mut r = StartResponse {
        status,
        count: addrs.len() as u32,
        buffers: [0; MAX_BUFFERS],
    };
    r.buffers[..addrs.len()].copy_from_slice(addrs);
    r
}

/// Frame `frame` of the test pattern, `bytes` long.
fn fill_pattern(buf: &mut Vec<u8>, frame: u64, bytes: u64) {
    buf.resize(bytes as usize, 0);
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = pattern_word(frame, 8 * i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}
