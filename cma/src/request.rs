//! An allocation request, and how it maps onto one region's bitmap: a bit count, an
//! alignment mask and an alignment offset (Linux's `cma_bitmap_pages_to_bits`,
//! `cma_bitmap_aligned_mask` and `cma_bitmap_aligned_offset`).

use crate::region::PAGE_SIZE;

use crate::error::CmaError;
use crate::region::RegionSpec;

/// Claim attempts per region before busy candidates make an allocation give up. Linux
/// retries until the area is exhausted; our claims wait for a guest, so we bound them.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 16;

/// A request for one contiguous chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocRequest {
    /// Bytes wanted; rounded up to the region's bit size.
    pub size: u64,
    /// Alignment of the chunk's guest-physical start: a power of two; 0 means a page.
    pub align: u64,
    /// The chunk starts this many bytes after an `align` boundary (below the alignment).
    pub align_offset: u64,
    /// Grant the chunk pinned (the default): compaction never moves it.
    pub pinned: bool,
    /// Claim attempts per region before busy candidates make it give up (0 counts as 1).
    pub max_attempts: u32,
}

impl AllocRequest {
    /// A pinned, page-aligned request for `size` bytes.
    pub fn new(size: u64) -> Self {
        AllocRequest {
            size,
            align: 0,
            align_offset: 0,
            pinned: true,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// The same request, starting `offset` bytes after an `align` boundary.
    pub fn aligned(self, align: u64, offset: u64) -> Self {
        AllocRequest {
            align,
            align_offset: offset,
            ..self
        }
    }

    /// The same request, granted unpinned (movable by compaction).
    pub fn unpinned(self) -> Self {
        AllocRequest {
            pinned: false,
            ..self
        }
    }

    /// The alignment in bytes: at least a page, since every range is whole pages.
    pub fn effective_align(&self) -> u64 {
        self.align.max(PAGE_SIZE)
    }

    /// Check what does not depend on the region.
    pub(crate) fn validate(&self) -> Result<(), CmaError> {
        if self.size == 0 {
            return Err(CmaError::ZeroSize);
        }
        if self.align != 0 && !self.align.is_power_of_two() {
            return Err(CmaError::BadAlign(self.align));
        }
        if self.align_offset >= self.effective_align() {
            return Err(CmaError::BadOffset {
                offset: self.align_offset,
                align: self.effective_align(),
            });
        }
        Ok(())
    }
}

/// A request in one region's bitmap terms: chunk bit `i` is a candidate when
/// `(i + offset) & mask == 0`, which puts its guest-physical start at `align_offset` past an
/// `align` boundary whatever the region's base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Bits the chunk takes.
    pub count: u64,
    /// Alignment mask in bits (2^k - 1).
    pub mask: u64,
    /// Alignment offset in bits (below `mask + 1`).
    pub offset: u64,
}

impl Placement {
    /// Place a validated request in `region`, whose bits are `1 << granule_shift` bytes.
    pub(crate) fn new(
        req: &AllocRequest,
        region: &RegionSpec,
        granule_shift: u32,
    ) -> Result<Placement, CmaError> {
        let granule = 1u64 << granule_shift;
        let count = req.size.div_ceil(granule);
        if count > region.size >> granule_shift {
            return Err(CmaError::TooLarge {
                region: region.name.clone(),
                size: req.size,
                region_size: region.size,
            });
        }
        let align = req.effective_align();
        // We need base + i * granule == align_offset (mod align). Bits step by `granule`, so
        // the congruence is solvable only when base - align_offset is a multiple of the
        // smaller of the two powers of two.
        let gap = region.base.wrapping_sub(req.align_offset);
        if gap & (align.min(granule) - 1) != 0 {
            return Err(CmaError::Unreachable {
                region: region.name.clone(),
                base: region.base,
                granule,
                align,
                offset: req.align_offset,
            });
        }
        if align <= granule {
            // Every bit start already meets the alignment.
            return Ok(Placement {
                count,
                mask: 0,
                offset: 0,
            });
        }
        Ok(Placement {
            count,
            mask: (align >> granule_shift) - 1,
            offset: (gap & (align - 1)) >> granule_shift,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(base: u64, size: u64) -> RegionSpec {
        RegionSpec {
            id: 0,
            name: "r".into(),
            base,
            size,
            private: false,
            order_per_bit: 0,
        }
    }

    /// The guest-physical start of candidate bit `i` meets the request.
    fn meets(p: &Placement, i: u64) -> bool {
        (i + p.offset) & p.mask == 0
    }

    #[test]
    fn validation_rejects_bad_arguments() {
        assert_eq!(AllocRequest::new(0).validate(), Err(CmaError::ZeroSize));
        let r = AllocRequest::new(1).aligned(3 << 12, 0);
        assert_eq!(r.validate(), Err(CmaError::BadAlign(3 << 12)));
        let r = AllocRequest::new(1).aligned(1 << 20, 1 << 20);
        assert!(matches!(r.validate(), Err(CmaError::BadOffset { .. })));
        // Align 0 means a page: an offset of a page is not below it.
        let r = AllocRequest::new(1).aligned(0, 4096);
        assert!(matches!(r.validate(), Err(CmaError::BadOffset { .. })));
        assert!(
            AllocRequest::new(u64::MAX)
                .aligned(1 << 63, 0)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn size_rounds_up_to_the_bit_size() {
        let r = region(2 << 20, 8 << 20);
        let p = Placement::new(&AllocRequest::new(1), &r, 12 + 2).unwrap();
        assert_eq!(p.count, 1);
        let p = Placement::new(&AllocRequest::new((16 << 10) + 1), &r, 14).unwrap();
        assert_eq!(p.count, 2);
        let too_big = Placement::new(&AllocRequest::new(u64::MAX), &r, 12);
        assert!(matches!(too_big, Err(CmaError::TooLarge { .. })));
    }

    #[test]
    fn base_not_aligned_to_the_request_is_accounted_for() {
        // Base 2 MiB, align 4 MiB: the first candidate is bit 512 (gpa 4 MiB).
        let r = region(2 << 20, 64 << 20);
        let p = Placement::new(&AllocRequest::new(4096).aligned(4 << 20, 0), &r, 12).unwrap();
        assert_eq!((p.mask, p.offset), (1023, 512));
        assert!(meets(&p, 512) && !meets(&p, 0));
        // With a 1 MiB offset: gpa 1 MiB + k * 4 MiB, first inside the region at 5 MiB.
        let req = AllocRequest::new(4096).aligned(4 << 20, 1 << 20);
        let p = Placement::new(&req, &r, 12).unwrap();
        assert!(meets(&p, 768) && !meets(&p, 256) && !meets(&p, 512));
    }

    #[test]
    fn unreachable_alignment_is_an_error_not_a_wrong_answer() {
        // Bits of 8 KiB from a 2 MiB base cannot start at 4 KiB modulo 16 KiB.
        let r = region(2 << 20, 64 << 20);
        let req = AllocRequest::new(4096).aligned(16 << 10, 4 << 10);
        let e = Placement::new(&req, &r, 13);
        assert!(matches!(e, Err(CmaError::Unreachable { .. })));
        // 4 MiB bits from a 2 MiB base are never 4 MiB aligned (Linux would under-align).
        let req = AllocRequest::new(4096).aligned(4 << 20, 0);
        let e = Placement::new(&req, &region(2 << 20, 64 << 20), 22);
        assert!(matches!(e, Err(CmaError::Unreachable { .. })));
    }

    #[test]
    fn huge_alignment_does_not_overflow() {
        let r = region(1 << 30, 64 << 20);
        let p = Placement::new(&AllocRequest::new(4096).aligned(1 << 63, 0), &r, 12).unwrap();
        assert_eq!(p.mask, (1 << 51) - 1);
    }
}
