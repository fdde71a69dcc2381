//! Sizes and addresses as users write them: `4096`, `0x8000000`, `64M`, `1G`, `512K`.

use super::ConfigError;

/// Parse a size: decimal or `0x` hex, optionally followed by `K`, `M` or `G` (binary
/// multiples, either case), or `B` for bytes. `what` names the value in errors.
pub fn parse_size(s: &str, what: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadNumber {
        what: what.to_string(),
        value: s.to_string(),
    };
    let t = s.trim();
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 30),
        Some(b'b' | b'B') if !is_hex(t) => (&t[..t.len() - 1], 0),
        _ => (t, 0),
    };
    let value = parse_u64(digits).ok_or_else(bad)?;
    value.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Parse an address: decimal or `0x` hex, with the same suffixes as [`parse_size`].
pub fn parse_addr(s: &str, what: &str) -> Result<u64, ConfigError> {
    parse_size(s, what)
}

fn is_hex(s: &str) -> bool {
    s.starts_with("0x") || s.starts_with("0X")
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || hex.starts_with('+') {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// A size in the most readable unit that represents it exactly: `64M`, `0x1234`.
pub fn format_size(v: u64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if v != 0 && v.is_multiple_of(1 << shift) {
            return format!("{}{unit}", v >> shift);
        }
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_radixes() {
        assert_eq!(parse_size("4096", "x").unwrap(), 4096);
        assert_eq!(parse_size("64M", "x").unwrap(), 64 << 20);
        assert_eq!(parse_size("64m", "x").unwrap(), 64 << 20);
        assert_eq!(parse_size("512K", "x").unwrap(), 512 << 10);
        assert_eq!(parse_size("2G", "x").unwrap(), 2 << 30);
        assert_eq!(parse_size("100B", "x").unwrap(), 100);
        assert_eq!(parse_size("0x8000000", "x").unwrap(), 0x800_0000);
        assert_eq!(parse_size("0X10M", "x").unwrap(), 16 << 20);
        assert_eq!(
            parse_size("0xB", "x").unwrap(),
            0xB,
            "a hex digit B is not bytes"
        );
        assert_eq!(parse_size("0", "x").unwrap(), 0);
    }

    #[test]
    fn edge_cases_are_errors() {
        for bad in [
            "",
            "M",
            "0x",
            "-1",
            "+5",
            "1.5M",
            "12Q",
            "1MM",
            "0x+1",
            " ",
            "18446744073709551616",
            "17179869184G",
            "1 M",
            "0xG",
        ] {
            assert!(parse_size(bad, "size").is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse_size("17179869184G", "size").unwrap_err().to_string(),
            "invalid size: '17179869184G' (expected a number with an optional K, M or G suffix)"
        );
        assert_eq!(parse_size("u64max", "x").ok(), None);
        assert_eq!(parse_size("18446744073709551615", "x").ok(), Some(u64::MAX));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(64 << 20), "64M");
        assert_eq!(format_size(3 << 30), "3G");
        assert_eq!(format_size(4096), "4K");
        assert_eq!(format_size(100), "100");
        assert_eq!(format_size(0), "0");
    }
}
