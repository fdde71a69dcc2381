//! What the allocator is given: regions of guest-physical memory and the map rules that
//! send devices to them (the v9 series' `cma=` regions and `cma_map=` rules).
//!
//! Declaring regions (names, sizes, placement in the guest's memory map, what the guest is
//! told) is the VMM's business; the allocator takes them placed, as [`RegionSpec`]s, and
//! checks only what it needs itself (see [`Cma::new`](crate::Cma::new)).

use std::fmt;
use std::str::FromStr;

/// The page size: every range the allocator hands out is whole pages.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Largest `order_per_bit` accepted (one bitmap bit per 2^16 pages = 256 MiB).
pub const MAX_ORDER_PER_BIT: u32 = 16;
/// Largest region accepted, 64 GiB: at one bit per page its bitmap and summaries take
/// about 2 MiB, allocated when the allocator is built.
pub const MAX_REGION_SIZE: u64 = 64 << 30;
/// The wildcard device pattern of a map rule: the rule applies to any device.
pub const ANY_DEVICE: &str = "*";

/// A region of guest-physical memory the allocator manages, already placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// The region's index in the table given to [`Cma::new`](crate::Cma::new).
    pub id: u32,
    /// Unique name (what map rules and [`Cma::alloc_from`](crate::Cma::alloc_from) use).
    pub name: String,
    /// Guest-physical base, page aligned.
    pub base: u64,
    /// Size in bytes, a whole number of bitmap bits.
    pub size: u64,
    /// Never lent to the guest; reachable only by name, never through a `*` rule.
    pub private: bool,
    /// One allocator bit per 2^order_per_bit pages (Linux's `cma->order_per_bit`).
    pub order_per_bit: u32,
}

impl RegionSpec {
    /// One byte past the region.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// A device→regions map rule: the first rule that names a device (or `*`) wins, and its
/// regions are tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRule {
    /// Device names, or [`ANY_DEVICE`].
    pub devices: Vec<String>,
    /// Region names, tried in order.
    pub regions: Vec<String>,
}

impl MapRule {
    /// Whether the rule applies to `device`.
    pub fn matches(&self, device: &str) -> bool {
        self.devices.iter().any(|d| d == device || d == ANY_DEVICE)
    }
}

impl fmt::Display for MapRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.devices.join(","), self.regions.join(","))
    }
}

/// A map rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid map rule '{rule}': {reason}")]
pub struct ParseMapRuleError {
    /// The rule, as given (trimmed).
    pub rule: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for MapRule {
    type Err = ParseMapRuleError;

    /// One rule, `dev[,dev...]=region[,region...]`; names are trimmed. Only the syntax is
    /// checked: what a valid name is, and whether the regions exist, is up to the caller
    /// (and [`Cma::new`](crate::Cma::new) refuses rules that name unknown regions).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rule = s.trim();
        let bad = |reason: &str| ParseMapRuleError {
            rule: rule.to_string(),
            reason: reason.to_string(),
        };
        let (devs, regs) = rule
            .split_once('=')
            .ok_or_else(|| bad("expected dev[,dev...]=region[,region...]"))?;
        let list =
            |s: &str| -> Vec<String> { s.split(',').map(|x| x.trim().to_string()).collect() };
        let (devices, regions) = (list(devs), list(regs));
        if devices.iter().chain(&regions).any(|x| x.is_empty()) {
            return Err(bad("empty device or region name"));
        }
        Ok(MapRule { devices, regions })
    }
}

/// Parse map rules in the `cma_map=` syntax: rules separated by `;` (empty ones skipped),
/// each `dev[,dev...]=region[,region...]`.
///
/// ```
/// let rules = cma::parse_map_rules("video-dev,cam=video,camera; *=camera").unwrap();
/// assert_eq!(rules.len(), 2);
/// assert_eq!(rules[0].regions, ["video", "camera"]);
/// assert!(rules[1].matches("any-device"));
/// assert!(cma::parse_map_rules("video-dev").is_err());
/// ```
pub fn parse_map_rules(s: &str) -> Result<Vec<MapRule>, ParseMapRuleError> {
    s.split(';')
        .filter(|r| !r.trim().is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_trimmed_and_print_back() {
        let rules = parse_map_rules(" a , b = r1 ,r2 ;; *=r3; ").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].devices, ["a", "b"]);
        assert_eq!(rules[0].to_string(), "a,b=r1,r2");
        assert!(rules[1].matches("anything") && !rules[0].matches("c"));
        assert_eq!(parse_map_rules("").unwrap(), []);
    }

    #[test]
    fn malformed_rules_say_why() {
        for (s, reason) in [
            ("a", "expected"),
            ("=r", "empty"),
            ("a=", "empty"),
            ("a,,b=r", "empty"),
            ("ok=r; a=r,", "empty"),
        ] {
            let e = parse_map_rules(s).unwrap_err();
            assert!(e.reason.contains(reason), "{s:?}: {e}");
        }
        let e = parse_map_rules("ok=r; bad ").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid map rule 'bad': expected dev[,dev...]=region[,region...]"
        );
    }
}
