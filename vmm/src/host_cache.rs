//! Making the host's caches cold, for benchmarks that compare a copy with its baseline:
//! both must start from the same cache state, and "cold" is the one that can be recreated.

/// Evicts the host's CPU caches by streaming a buffer several times the last-level cache.
///
/// Reading, not writing: the caches are left holding clean lines of the scratch buffer, so
/// what is measured next pays for its own misses and no write-backs of ours.
pub struct CacheFlusher {
    scratch: Vec<u8>,
}

impl CacheFlusher {
    /// A flusher with a scratch buffer of four times the last-level cache.
    pub fn new() -> Self {
        CacheFlusher {
            scratch: vec![1; 4 * last_level_cache_bytes()],
        }
    }

    /// Stream the scratch buffer through the caches (one read per 64-byte line).
    pub fn flush(&self) {
        let mut sum = 0u8;
        for line in self.scratch.chunks(64) {
            sum = sum.wrapping_add(line[0]);
        }
        std::hint::black_box(sum);
    }

    /// The scratch buffer's size in bytes.
    pub fn bytes(&self) -> usize {
        self.scratch.len()
    }
}

impl Default for CacheFlusher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for CacheFlusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheFlusher")
            .field("bytes", &self.scratch.len())
            .finish()
    }
}

/// The largest CPU cache of cpu0 (sysfs), or 32 MiB if unknown.
pub fn last_level_cache_bytes() -> usize {
    (0..8)
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size"))
                .ok()
        })
        .filter_map(|t| parse_cache_size(&t))
        .max()
        .unwrap_or(32 << 20)
}

/// "32768K" or "2M" (sysfs cache sizes) in bytes.
fn parse_cache_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok()?;
    match unit {
        "" => Some(n),
        "K" => n.checked_mul(1 << 10),
        "M" => n.checked_mul(1 << 20),
        "G" => n.checked_mul(1 << 30),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_cache_sizes_parse() {
        assert_eq!(parse_cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("1X"), None);
        assert_eq!(parse_cache_size(""), None);
        assert!(last_level_cache_bytes() >= 1 << 20);
    }
}
