//! Little-endian field access on fixed-size records. Reads past the end are errors.

/// Why a byte string did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer is shorter than the record.
    Truncated { needed: usize, got: usize },
    /// The magic number is wrong.
    BadMagic,
    /// The version is not one this build understands.
    BadVersion(u32),
    /// The checksum does not match the contents.
    BadChecksum,
    /// A message kind this build does not know.
    UnknownKind(u32),
    /// A field holds a value outside its domain.
    BadField(&'static str),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated { needed, got } => {
                write!(f, "truncated record: needed {needed} bytes, got {got}")
            }
            DecodeError::BadMagic => write!(f, "bad magic number"),
            DecodeError::BadVersion(v) => write!(f, "unsupported version {v}"),
            DecodeError::BadChecksum => write!(f, "checksum mismatch"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k:#x}"),
            DecodeError::BadField(name) => write!(f, "invalid field `{name}`"),
        }
    }
}

pub(crate) fn get_u8(buf: &[u8], off: usize) -> Result<u8, DecodeError> {
    buf.get(off).copied().ok_or(DecodeError::Truncated {
        needed: off + 1,
        got: buf.len(),
    })
}

pub(crate) fn get_u16(buf: &[u8], off: usize) -> Result<u16, DecodeError> {
    Ok(u16::from_le_bytes(get_array(buf, off)?))
}

pub(crate) fn get_u32(buf: &[u8], off: usize) -> Result<u32, DecodeError> {
    Ok(u32::from_le_bytes(get_array(buf, off)?))
}

pub(crate) fn get_u64(buf: &[u8], off: usize) -> Result<u64, DecodeError> {
    Ok(u64::from_le_bytes(get_array(buf, off)?))
}

pub(crate) fn get_array<const N: usize>(buf: &[u8], off: usize) -> Result<[u8; N], DecodeError> {
    let end = off.checked_add(N).ok_or(DecodeError::BadField("offset"))?;
    let bytes = buf.get(off..end).ok_or(DecodeError::Truncated {
        needed: end,
        got: buf.len(),
    })?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

/// Writers never fail: encoders size their buffers from the record's constant size.
pub(crate) fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// FNV-1a over a byte string: cheap enough for a slow guest, good enough to catch a torn
/// or stale block.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_errors() {
        let buf = [1u8, 2, 3];
        assert_eq!(get_u16(&buf, 1), Ok(0x0302));
        assert_eq!(
            get_u32(&buf, 0),
            Err(DecodeError::Truncated { needed: 4, got: 3 })
        );
        assert!(get_u64(&buf, usize::MAX - 2).is_err());
        assert!(get_u8(&buf, 3).is_err());
    }
}
