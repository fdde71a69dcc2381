//! Self-checking contents of workload pages, and the manifest that lists them.
//!
//! Guest instructions are slow on nested KVM, so the guest writes only a few words per
//! page; every other byte of a workload page is zero. The whole 4 KiB page is still
//! determined by `(id, generation)`, so the host can verify every byte at host speed:
//!
//! ```text
//! offset 0  magic "CMAPAGE1"      offset 16  generation
//! offset 8  logical page id       offset 24  mix(id, generation)
//! offset 512*k + 504, k = 0..8:   mix(mix(id, generation), offset)   (the last word of
//!                                 each 512-byte slice, so a partial copy is caught)
//! all other bytes: zero
//! ```
//!
//! The manifest is an array in guest memory, one [`ManifestEntry`] per logical page id,
//! telling where each page lives now. The guest reports its address in a
//! [`crate::msg::Report`]; the host reads it only to check the workload.

use crate::layout::PAGE_SIZE;
use crate::wire::{DecodeError, get_u32, get_u64, put_u32, put_u64};

/// "CMAPAGE1", little-endian.
pub const PAGE_MAGIC: u64 = u64::from_le_bytes(*b"CMAPAGE1");
/// Offsets of the words the guest writes, header first.
pub const WRITTEN_OFFSETS: [usize; 12] =
    [0, 8, 16, 24, 504, 1016, 1528, 2040, 2552, 3064, 3576, 4088];

/// A 64-bit mixing function (splitmix64's finaliser over `a ^ rotl(b)`).
pub const fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The word a page `(id, generation)` holds at byte offset `off` (a multiple of 8).
pub const fn expected_word(id: u64, generation: u64, off: usize) -> u64 {
    match off {
        0 => PAGE_MAGIC,
        8 => id,
        16 => generation,
        24 => mix(id, generation),
        _ if off % 512 == 504 => mix(mix(id, generation), off as u64),
        _ => 0,
    }
}

/// The first word of a page that differs from what `(id, generation)` requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageMismatch {
    /// Byte offset of the word.
    pub offset: usize,
    /// What should be there.
    pub expected: u64,
    /// What is there.
    pub found: u64,
}

/// Check every byte of `page` (4 KiB) against `(id, generation)`.
pub fn verify(page: &[u8], id: u64, generation: u64) -> Result<(), PageMismatch> {
    for off in (0..PAGE_SIZE as usize).step_by(8) {
        let expected = expected_word(id, generation, off);
        let found = page
            .get(off..off + 8)
            .map(|w| {
                let mut b = [0u8; 8];
                b.copy_from_slice(w);
                u64::from_le_bytes(b)
            })
            .unwrap_or(!expected);
        if found != expected {
            return Err(PageMismatch {
                offset: off,
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// Size of one manifest entry.
pub const MANIFEST_ENTRY_SIZE: usize = 16;
/// Manifest flag: the page exists.
pub const PAGE_PRESENT: u32 = 1;
/// Manifest flag: the page is pinned (it must not move).
pub const PAGE_PINNED: u32 = 2;

/// Where one logical page lives: `{gpa u64, generation u32, flags u32}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ManifestEntry {
    /// Guest-physical address of the frame holding the page.
    pub gpa: u64,
    /// The page's current generation.
    pub generation: u32,
    /// [`PAGE_PRESENT`], [`PAGE_PINNED`].
    pub flags: u32,
}

impl ManifestEntry {
    /// Encode as [`MANIFEST_ENTRY_SIZE`] bytes.
    pub fn encode(&self) -> [u8; MANIFEST_ENTRY_SIZE] {
        let mut b = [0u8; MANIFEST_ENTRY_SIZE];
        put_u64(&mut b, 0, self.gpa);
        put_u32(&mut b, 8, self.generation);
        put_u32(&mut b, 12, self.flags);
        b
    }

    /// Decode entry `i` of a manifest.
    pub fn decode(manifest: &[u8], i: usize) -> Result<Self, DecodeError> {
        let off = i
            .checked_mul(MANIFEST_ENTRY_SIZE)
            .ok_or(DecodeError::BadField("manifest index"))?;
        Ok(ManifestEntry {
            gpa: get_u64(manifest, off)?,
            generation: get_u32(manifest, off + 8)?,
            flags: get_u32(manifest, off + 12)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(id: u64, generation: u64) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_SIZE as usize];
        for off in WRITTEN_OFFSETS {
            p[off..off + 8].copy_from_slice(&expected_word(id, generation, off).to_le_bytes());
        }
        p
    }

    #[test]
    fn written_words_define_the_whole_page() {
        let p = page(42, 7);
        assert_eq!(verify(&p, 42, 7), Ok(()));
        for off in (0..PAGE_SIZE as usize).step_by(8) {
            let nonzero = expected_word(42, 7, off) != 0;
            assert_eq!(nonzero, WRITTEN_OFFSETS.contains(&off), "offset {off}");
        }
    }

    #[test]
    fn any_change_is_caught() {
        let p = page(42, 7);
        assert!(verify(&p, 42, 8).is_err());
        assert!(verify(&p, 43, 7).is_err());
        for i in [1usize, 100, 2048, 4095] {
            let mut q = p.clone();
            q[i] ^= 1;
            let e = verify(&q, 42, 7).unwrap_err();
            assert_eq!(e.offset, i & !7);
        }
        assert!(verify(&p[..2048], 42, 7).is_err());
    }

    #[test]
    fn manifest_entries_round_trip() {
        let e = ManifestEntry {
            gpa: 0x1234_5000,
            generation: 9,
            flags: PAGE_PRESENT | PAGE_PINNED,
        };
        let mut m = vec![0u8; 2 * MANIFEST_ENTRY_SIZE];
        m[16..].copy_from_slice(&e.encode());
        assert_eq!(ManifestEntry::decode(&m, 1), Ok(e));
        assert!(ManifestEntry::decode(&m, 2).is_err());
    }
}
