//! Request bodies, and their validation before anything touches the allocator.
//!
//! `POST /chunks` takes an [`AllocBody`]:
//!
//! ```json
//! {"device": "camera"} or {"regions": ["a", "b"]},
//! "size": 1048576 or "1M", "align": "64K", "offset": 0,
//! "mode": "exclusive" | "shared", "pinned": true
//! ```
//!
//! Checked in this order, each failure a 400 that changes nothing: the JSON and its fields
//! (unknown fields refused), exactly one target, valid names, the target resolved through
//! the map rules or the region table, then size (not zero, not above the largest target
//! region), alignment (a power of two) and offset (below the alignment).

use protocol::boot::{MAX_REGIONS, is_valid_name};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::config::{format_size, parse_size};
use crate::grant::{GrantMode, Target};
use cma::{AllocRequest, Cma};

/// The body of `POST /chunks`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocBody {
    /// Allocate for this device, from the regions its map rule names.
    #[serde(default)]
    pub device: Option<String>,
    /// Or from these regions, tried in order.
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// Bytes: a number, or a string with a K, M or G suffix.
    pub size: Value,
    /// Alignment of the start (a power of two; default a page).
    #[serde(default)]
    pub align: Option<Value>,
    /// The start lies this many bytes past an `align` boundary.
    #[serde(default)]
    pub offset: Option<Value>,
    /// Grant mode (default exclusive).
    #[serde(default)]
    pub mode: Option<GrantMode>,
    /// Pinned (default) or movable by compaction.
    #[serde(default)]
    pub pinned: Option<bool>,
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAlloc {
    /// Where to allocate.
    pub target: Target,
    /// Size, alignment, pinning.
    pub request: AllocRequest,
    /// Grant mode.
    pub mode: GrantMode,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Parse a JSON body into `T`, refusing unknown fields and trailing data.
pub fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// A size field: a non-negative integer, or a string such as `"64K"` or `"0x1000"`.
fn size_value(v: &Value, what: &str) -> Result<u64, ApiError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| bad(format!("{what} must be a non-negative integer, not {n}"))),
        Value::String(s) => parse_size(s, what).map_err(|e| bad(e.to_string())),
        other => Err(bad(format!(
            "{what} must be a number of bytes or a string like \"64K\", not {other}"
        ))),
    }
}

impl AllocBody {
    /// Check everything against the allocator's regions and map rules, without allocating.
    pub fn validate(&self, cma: &Cma) -> Result<ValidAlloc, ApiError> {
        let (target, ids) = match (&self.device, &self.regions) {
            (Some(device), None) => {
                if !is_valid_name(device) {
                    return Err(bad(format!("invalid device name '{device}'")));
                }
                (Target::Device(device.clone()), cma.resolve_device(device)?)
            }
            (None, Some(names)) => {
                if names.is_empty() || names.len() > MAX_REGIONS {
                    return Err(bad(format!(
                        "regions must list 1 to {MAX_REGIONS} region names"
                    )));
                }
                if let Some(name) = names.iter().find(|n| !is_valid_name(n)) {
                    return Err(bad(format!("invalid region name '{name}'")));
                }
                let list = names.join(",");
                let ids = cma.resolve_names(&list)?;
                (Target::Regions(list), ids)
            }
            _ => return Err(bad("give exactly one of 'device' and 'regions'")),
        };
        let size = size_value(&self.size, "size")?;
        let align = match &self.align {
            Some(v) => size_value(v, "align")?,
            None => 0,
        };
        let offset = match &self.offset {
            Some(v) => size_value(v, "offset")?,
            None => 0,
        };
        if size == 0 {
            return Err(bad("size must not be zero"));
        }
        let largest = ids
            .iter()
            .filter_map(|&id| cma.region(id))
            .map(|r| r.size)
            .max()
            .unwrap_or(0);
        if size > largest {
            return Err(bad(format!(
                "size {} is larger than the largest region it may come from ({})",
                format_size(size),
                format_size(largest)
            )));
        }
        if align != 0 && !align.is_power_of_two() {
            return Err(bad(format!("align {align:#x} is not a power of two")));
        }
        let mut request = AllocRequest::new(size).aligned(align, offset);
        if offset >= request.effective_align() {
            return Err(bad(format!(
                "offset {offset:#x} is not below the alignment {:#x}",
                request.effective_align()
            )));
        }
        if self.pinned == Some(false) {
            request = request.unpinned();
        }
        Ok(ValidAlloc {
            target,
            request,
            mode: self.mode.unwrap_or(GrantMode::Exclusive),
        })
    }
}

/// Refuse a body on an endpoint that takes none.
pub fn no_body(body: &[u8]) -> Result<(), ApiError> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    if blank || body == b"{}" {
        Ok(())
    } else {
        Err(bad("this request takes no body"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MapRule, RegionSpec};

    fn cma() -> Cma {
        let region = |id, name: &str, base, size, private| RegionSpec {
            id,
            name: name.into(),
            base,
            size,
            private,
            order_per_bit: 0,
        };
        Cma::new(
            &[
                region(0, "a", 0x780_0000, 8 << 20, false),
                region(1, "b", 0x740_0000, 4 << 20, false),
                region(2, "s", 0x700_0000, 4 << 20, true),
            ],
            &[
                MapRule {
                    devices: vec!["cam".into()],
                    regions: vec!["b".into()],
                },
                MapRule {
                    devices: vec!["*".into()],
                    regions: vec!["a".into(), "s".into()],
                },
            ],
        )
        .unwrap()
    }

    fn check(json: &str) -> Result<ValidAlloc, ApiError> {
        parse_body::<AllocBody>(json.as_bytes())?.validate(&cma())
    }

    fn refused(json: &str, needle: &str) {
        match check(json) {
            Err(e) => {
                assert_eq!(e.status(), 400, "{json}: {e}");
                assert!(e.to_string().contains(needle), "{json}: {e}");
            }
            Ok(v) => panic!("{json} accepted: {v:?}"),
        }
    }

    #[test]
    fn good_requests_validate() {
        let v = check(r#"{"device": "cam", "size": "1M"}"#).unwrap();
        assert_eq!(v.target, Target::Device("cam".into()));
        assert_eq!(v.request, AllocRequest::new(1 << 20));
        assert_eq!(v.mode, GrantMode::Exclusive);
        let v = check(
            r#"{"regions": ["b", "a"], "size": 65536, "align": "64K", "offset": "4K",
                "mode": "shared", "pinned": false}"#,
        )
        .unwrap();
        assert_eq!(v.target, Target::Regions("b,a".into()));
        assert_eq!(
            v.request,
            AllocRequest::new(64 << 10)
                .aligned(64 << 10, 4 << 10)
                .unpinned()
        );
        assert_eq!(v.mode, GrantMode::Shared);
        // The largest region of the target bounds the size: 8M fits "a", not "b".
        assert!(check(r#"{"regions": ["b", "a"], "size": "8M"}"#).is_ok());
    }

    #[test]
    fn malformed_bodies_are_refused() {
        refused("", "invalid JSON");
        refused("{", "invalid JSON");
        refused("[]", "invalid JSON");
        refused(r#"{"device": "cam", "size": 1} trailing"#, "invalid JSON");
        refused(
            r#"{"device": "cam", "size": 1, "colour": "red"}"#,
            "unknown field",
        );
        refused(r#"{"device": "cam"}"#, "missing field `size`");
        refused(
            r#"{"device": "cam", "size": 1, "mode": "loud"}"#,
            "unknown variant",
        );
        refused(
            r#"{"device": "cam", "size": 1, "pinned": "yes"}"#,
            "invalid type",
        );
        refused(r#"{"regions": "a,b", "size": 1}"#, "invalid type");
    }

    #[test]
    fn targets_are_checked() {
        refused(r#"{"size": 1}"#, "exactly one");
        refused(
            r#"{"device": "cam", "regions": ["a"], "size": 1}"#,
            "exactly one",
        );
        refused(r#"{"device": "", "size": 1}"#, "invalid device name");
        refused(r#"{"device": "a,b", "size": 1}"#, "invalid device name");
        refused(r#"{"regions": [], "size": 1}"#, "1 to");
        refused(r#"{"regions": ["a,b"], "size": 1}"#, "invalid region name");
        refused(
            r#"{"regions": ["nope"], "size": 1}"#,
            "unknown CMA region 'nope'",
        );
    }

    #[test]
    fn absurd_sizes_and_alignments_are_refused() {
        refused(r#"{"device": "cam", "size": 0}"#, "zero");
        refused(r#"{"device": "cam", "size": "0K"}"#, "zero");
        refused(r#"{"device": "cam", "size": -1}"#, "non-negative");
        refused(r#"{"device": "cam", "size": 1.5}"#, "non-negative");
        refused(r#"{"device": "cam", "size": 1e30}"#, "non-negative");
        refused(
            r#"{"device": "cam", "size": 18446744073709551616}"#,
            "non-negative",
        );
        refused(r#"{"device": "cam", "size": "lots"}"#, "'lots'");
        refused(r#"{"device": "cam", "size": "99999999999G"}"#, "size");
        refused(r#"{"device": "cam", "size": null}"#, "size must be");
        refused(r#"{"device": "cam", "size": [1]}"#, "size must be");
        refused(
            r#"{"device": "cam", "size": "5M"}"#,
            "larger than the largest region",
        );
        refused(
            r#"{"device": "cam", "size": 18446744073709551615}"#,
            "larger than the largest region",
        );
        refused(
            r#"{"device": "cam", "size": 4096, "align": 3}"#,
            "power of two",
        );
        refused(
            r#"{"device": "cam", "size": 4096, "align": "96K"}"#,
            "power of two",
        );
        refused(
            r#"{"device": "cam", "size": 4096, "align": "64K", "offset": "64K"}"#,
            "not below the alignment",
        );
        refused(
            r#"{"device": "cam", "size": 4096, "offset": 4096}"#,
            "not below",
        );
    }

    #[test]
    fn bodies_on_endpoints_without_one_are_refused() {
        assert!(no_body(b"").is_ok());
        assert!(no_body(b" \n").is_ok());
        assert!(no_body(b"{}").is_ok());
        assert_eq!(no_body(b"{\"x\":1}").unwrap_err().status(), 400);
    }
}
