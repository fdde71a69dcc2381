//! The frame-capture device's wire format and test pattern.
//!
//! A virtio device with two queues, modelled on a V4L2 capture device whose buffers come
//! from CMA (the original series' videobuf2-cma client, one level down):
//!
//! - controlq (queue 0): the driver posts `[command 32 B][response, writable]`; commands
//!   are Start (allocate `buffers` frame buffers of the format, aligned to `align`) and
//!   Stop (free them). Start's response lists the buffers' guest-physical addresses.
//! - frameq (queue 1): the driver posts writable 32-byte slots; for each, the device
//!   fills the next buffer with frame `n` of the test pattern and completes the slot with
//!   a [`FrameDone`] naming the buffer and the frame.
//!
//! The pattern is a function of `(frame, offset)`, so the guest can check any byte of a
//! frame without the device's help and the host can check all of them.

use crate::wire::{DecodeError, get_u32, get_u64, put_u32, put_u64};

/// The capture device's virtio id (vendor-specific range).
pub const CAPTURE_DEVICE_ID: u32 = 0x4343;
/// Size of a command.
pub const COMMAND_SIZE: usize = 32;
/// Size of a frameq slot.
pub const FRAME_DONE_SIZE: usize = 32;
/// Most buffers one Start may ask for.
pub const MAX_BUFFERS: usize = 16;
/// Size of Start's response: status, count, then one address per buffer.
pub const START_RESPONSE_SIZE: usize = 16 + 8 * MAX_BUFFERS;
/// The NV12 pixel format (a Y plane then an interleaved UV plane at half resolution).
pub const FORMAT_NV12: u32 = u32::from_le_bytes(*b"NV12");
/// Largest frame accepted (bytes): 4096x4096 NV12.
pub const MAX_FRAME_BYTES: u64 = 4096 * 4096 * 3 / 2;

const CMD_START: u32 = 1;
const CMD_STOP: u32 = 2;

/// Response status: done.
pub const STATUS_OK: u32 = 0;
/// Response status: the buffers could not be allocated (regions busy or too small).
pub const STATUS_NO_BUFFERS: u32 = 1;
/// Response status: the command makes no sense (format, sizes, state).
pub const STATUS_INVALID: u32 = 2;

/// A command on controlq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Allocate `buffers` buffers for `width` x `height` frames and start streaming.
    Start {
        /// Pixels per line.
        width: u32,
        /// Lines.
        height: u32,
        /// [`FORMAT_NV12`].
        format: u32,
        /// Number of buffers.
        buffers: u32,
        /// Alignment of each buffer in bytes (a power of two).
        align: u64,
    },
    /// Stop streaming and free the buffers.
    Stop,
}

impl Command {
    /// Encode as [`COMMAND_SIZE`] bytes.
    pub fn encode(&self) -> [u8; COMMAND_SIZE] {
        let mut b = [0u8; COMMAND_SIZE];
        match *self {
            Command::Start {
                width,
                height,
                format,
                buffers,
                align,
            } => {
                put_u32(&mut b, 0, CMD_START);
                put_u32(&mut b, 4, width);
                put_u32(&mut b, 8, height);
                put_u32(&mut b, 12, format);
                put_u32(&mut b, 16, buffers);
                put_u64(&mut b, 24, align);
            }
            Command::Stop => put_u32(&mut b, 0, CMD_STOP),
        }
        b
    }

    /// Decode [`COMMAND_SIZE`] bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Ok(match get_u32(buf, 0)? {
            CMD_START => Command::Start {
                width: get_u32(buf, 4)?,
                height: get_u32(buf, 8)?,
                format: get_u32(buf, 12)?,
                buffers: get_u32(buf, 16)?,
                align: get_u64(buf, 24)?,
            },
            CMD_STOP => Command::Stop,
            k => return Err(DecodeError::UnknownKind(k)),
        })
    }
}

/// Bytes of one frame of `width` x `height` in NV12, or `None` if out of range.
pub fn frame_bytes(width: u32, height: u32) -> Option<u64> {
    if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return None;
    }
    let bytes = u64::from(width) * u64::from(height) * 3 / 2;
    (bytes <= MAX_FRAME_BYTES).then_some(bytes)
}

/// A completed frame, written into a frameq slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDone {
    /// Which buffer holds the frame.
    pub buffer: u32,
    /// The frame number (from 0 since Start).
    pub frame: u64,
    /// The frame's checksum ([`frame_checksum`]).
    pub checksum: u64,
}

impl FrameDone {
    /// Encode as [`FRAME_DONE_SIZE`] bytes.
    pub fn encode(&self) -> [u8; FRAME_DONE_SIZE] {
        let mut b = [0u8; FRAME_DONE_SIZE];
        put_u32(&mut b, 0, self.buffer);
        put_u64(&mut b, 8, self.frame);
        put_u64(&mut b, 16, self.checksum);
        b
    }

    /// Decode [`FRAME_DONE_SIZE`] bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Ok(FrameDone {
            buffer: get_u32(buf, 0)?,
            frame: get_u64(buf, 8)?,
            checksum: get_u64(buf, 16)?,
        })
    }
}

/// "CAPFRAME": the first word of every frame.
pub const FRAME_MAGIC: u64 = u64::from_le_bytes(*b"CAPFRAME");

/// The 8-byte word at byte `offset` (a multiple of 8) of frame `frame`: the header
/// `{magic, frame}` at offsets 0 and 8, then a moving pattern.
pub const fn pattern_word(frame: u64, offset: u64) -> u64 {
    match offset {
        0 => FRAME_MAGIC,
        8 => frame,
        _ => {
            let x = offset.wrapping_add(frame.wrapping_mul(4096 + 8));
            crate::page::mix(x / 64, frame) ^ x
        }
    }
}

/// The checksum the device reports for a frame of `bytes` bytes: a mix over one word per
/// 4 KiB, cheap for the host to produce and for anyone to recompute.
pub fn frame_checksum(frame: u64, bytes: u64) -> u64 {
    let mut h = crate::page::mix(frame, bytes);
    let mut off = 0;
    while off + 8 <= bytes {
        h = crate::page::mix(h, pattern_word(frame, off));
        off += 4096;
    }
    h
}

/// Start's response: status and the buffers' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartResponse {
    /// [`STATUS_OK`], [`STATUS_NO_BUFFERS`] or [`STATUS_INVALID`].
    pub status: u32,
    /// Number of valid entries in `buffers`.
    pub count: u32,
    /// Guest-physical address of each buffer.
    pub buffers: [u64; MAX_BUFFERS],
}

impl StartResponse {
    /// Encode as [`START_RESPONSE_SIZE`] bytes.
    pub fn encode(&self) -> [u8; START_RESPONSE_SIZE] {
        let mut b = [0u8; START_RESPONSE_SIZE];
        put_u32(&mut b, 0, self.status);
        put_u32(&mut b, 4, self.count);
        for (i, a) in self.buffers.iter().enumerate() {
            put_u64(&mut b, 16 + 8 * i, *a);
        }
        b
    }

    /// Decode [`START_RESPONSE_SIZE`] bytes (a Stop's response is just the status word).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let count = get_u32(buf, 4)?;
        if count as usize > MAX_BUFFERS {
            return Err(DecodeError::BadField("buffer count"));
        }
        let mut buffers = [0u64; MAX_BUFFERS];
        for (i, slot) in buffers.iter_mut().enumerate().take(count as usize) {
            *slot = get_u64(buf, 16 + 8 * i)?;
        }
        Ok(StartResponse {
            status: get_u32(buf, 0)?,
            count,
            buffers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_completions_round_trip() {
        let start = Command::Start {
            width: 1280,
            height: 720,
            format: FORMAT_NV12,
            buffers: 4,
            align: 64 << 10,
        };
        assert_eq!(Command::decode(&start.encode()), Ok(start));
        assert_eq!(Command::decode(&Command::Stop.encode()), Ok(Command::Stop));
        assert!(Command::decode(&[9; 32]).is_err());
        assert!(Command::decode(&[1; 8]).is_err());
        let done = FrameDone {
            buffer: 3,
            frame: 77,
            checksum: 0xdead,
        };
        assert_eq!(FrameDone::decode(&done.encode()), Ok(done));
        let mut r = StartResponse {
            status: STATUS_OK,
            count: 2,
            buffers: [0; MAX_BUFFERS],
        };
        r.buffers[0] = 0x100_0000;
        r.buffers[1] = 0x120_0000;
        assert_eq!(StartResponse::decode(&r.encode()), Ok(r));
        let mut bad = r.encode();
        bad[4] = 99;
        assert!(StartResponse::decode(&bad).is_err());
    }

    #[test]
    fn frames_differ_from_frame_to_frame() {
        assert_eq!(frame_bytes(1280, 720), Some(1_382_400));
        assert_eq!(frame_bytes(0, 720), None);
        assert_eq!(frame_bytes(1281, 720), None);
        assert_eq!(frame_bytes(8192, 8192), None);
        assert_eq!(pattern_word(5, 0), FRAME_MAGIC);
        assert_eq!(pattern_word(5, 8), 5);
        assert_ne!(pattern_word(5, 4096), pattern_word(6, 4096));
        assert_ne!(frame_checksum(5, 1_382_400), frame_checksum(6, 1_382_400));
    }
}
