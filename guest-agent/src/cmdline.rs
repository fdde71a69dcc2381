//! The guest command line: space-separated `key=value` words (from `--guest-args`).

/// The value of `key`, if present (the last occurrence wins).
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// The value of `key` as a number (decimal or 0x hex), or `default` if absent or bad.
pub fn get_u64(cmdline: &str, key: &str, default: u64) -> u64 {
    get(cmdline, key)
        .and_then(|v| match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        })
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        let c = "mode=boot workload.pages=100 fault=pf workload.pages=0x20 junk";
        assert_eq!(get(c, "mode"), Some("boot"));
        assert_eq!(get(c, "fault"), Some("pf"));
        assert_eq!(get(c, "junk"), None);
        assert_eq!(get_u64(c, "workload.pages", 7), 0x20);
        assert_eq!(get_u64(c, "mode", 7), 7);
        assert_eq!(get_u64("", "x", 3), 3);
    }
}
