//! The driver side of a split virtqueue, in one page of unmovable guest memory:
//!
//! ```text
//!  page + 0              descriptor table   16 B x size
//!  page + 16*size        available ring     flags, idx, ring[size], used_event
//!  page + 2048           used ring          flags, idx, ring[size] {id u32, len u32}
//! ```

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

/// Descriptor flag: another descriptor follows.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const F_WRITE: u16 = 2;

/// Largest queue this layout fits in one page.
pub const MAX_SIZE: u16 = 64;
const USED_OFFSET: u64 = 2048;

/// One split virtqueue.
pub struct SplitQueue {
    page: u64,
    size: u16,
    avail_idx: u16,
    last_used: u16,
}

fn w16(addr: u64, v: u16) {
    // SAFETY: `addr` lies in the queue's page, which the driver owns (unmovable, mapped).
    unsafe { write_volatile(addr as *mut u16, v) }
}

fn r16(addr: u64) -> u16 {
    // SAFETY: as `w16`.
    unsafe { read_volatile(addr as *const u16) }
}

fn w32(addr: u64, v: u32) {
    // SAFETY: as `w16`.
    unsafe { write_volatile(addr as *mut u32, v) }
}

fn r32(addr: u64) -> u32 {
    // SAFETY: as `w16`.
    unsafe { read_volatile(addr as *const u32) }
}

fn w64(addr: u64, v: u64) {
    // SAFETY: as `w16`.
    unsafe { write_volatile(addr as *mut u64, v) }
}

impl SplitQueue {
    /// A queue of `size` entries (a power of two up to [`MAX_SIZE`]) in the zeroed page
    /// at `page`.
    pub fn new(page: u64, size: u16) -> Self {
        SplitQueue {
            page,
            size,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Descriptor table address.
    pub fn desc_addr(&self) -> u64 {
        self.page
    }

    /// Available ring address.
    pub fn avail_addr(&self) -> u64 {
        self.page + 16 * u64::from(self.size)
    }

    /// Used ring address.
    pub fn used_addr(&self) -> u64 {
        self.page + USED_OFFSET
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Fill descriptor `i`.
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.page + 16 * u64::from(i % self.size);
        w64(d, addr);
        w32(d + 8, len);
        w16(d + 12, flags);
        w16(d + 14, next);
    }

    /// Make the chain starting at descriptor `head` available to the device.
    pub fn push(&mut self, head: u16) {
        let slot = self.avail_addr() + 4 + 2 * u64::from(self.avail_idx % self.size);
        w16(slot, head);
        // The device must see the ring entry (and the descriptors) before the index.
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        w16(self.avail_addr() + 2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    /// The next used element `(descriptor id, bytes written)`, if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let idx = r16(self.used_addr() + 2);
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let elem = self.used_addr() + 4 + 8 * u64::from(self.last_used % self.size);
        let id = r32(elem);
        let len = r32(elem + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Some((id as u16, len))
    }
}
