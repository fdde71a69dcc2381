//! The syntax of the original Linux CMA patches, as one string:
//! `cma=video=64M/1M;camera=32M@0x8000000 cma_map=video-dev=video;*=camera`.
//!
//! `cma=` lists regions `name=size[@start][/alignment]` separated by `;`; `cma_map=` lists
//! rules `dev[,dev...]=region[,region...]` separated by `;` (`*` matches any device).

use super::{ConfigError, MapRule, RegionConfig, parse_addr, parse_map_rules, parse_size};

/// Regions and rules given by a `cma=... cma_map=...` string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmaCmdline {
    /// The `cma=` regions.
    pub regions: Vec<RegionConfig>,
    /// The `cma_map=` rules.
    pub map: Vec<MapRule>,
}

/// Parse a `cma=... cma_map=...` string.
pub fn parse(s: &str) -> Result<CmaCmdline, ConfigError> {
    let mut out = CmaCmdline::default();
    let (mut seen_cma, mut seen_map) = (false, false);
    for token in s.split_whitespace() {
        let bad = |reason: &str| ConfigError::BadCmdline {
            token: token.to_string(),
            reason: reason.to_string(),
        };
        if let Some(regions) = token.strip_prefix("cma=") {
            if std::mem::replace(&mut seen_cma, true) {
                return Err(bad("'cma=' given twice"));
            }
            for r in regions.split(';').filter(|r| !r.is_empty()) {
                out.regions.push(parse_region(r)?);
            }
        } else if let Some(rules) = token.strip_prefix("cma_map=") {
            if std::mem::replace(&mut seen_map, true) {
                return Err(bad("'cma_map=' given twice"));
            }
            out.map = parse_map_rules(rules)?;
        } else {
            return Err(bad("expected 'cma=' or 'cma_map='"));
        }
    }
    if !seen_cma {
        return Err(ConfigError::BadCmdline {
            token: s.to_string(),
            reason: "no 'cma=' regions".into(),
        });
    }
    Ok(out)
}

/// `name=size[@start][/alignment]`
fn parse_region(r: &str) -> Result<RegionConfig, ConfigError> {
    let bad = |reason: &str| ConfigError::BadCmdline {
        token: r.to_string(),
        reason: reason.to_string(),
    };
    let (name, rest) = r
        .split_once('=')
        .ok_or_else(|| bad("expected name=size[@start][/alignment]"))?;
    let (rest, align) = match rest.split_once('/') {
        Some((rest, align)) => (rest, Some(parse_size(align, "alignment")?)),
        None => (rest, None),
    };
    let (size, base) = match rest.split_once('@') {
        Some((size, base)) => (size, Some(parse_addr(base, "base address")?)),
        None => (rest, None),
    };
    let mut region = RegionConfig::new(name, parse_size(size, "size")?);
    region.base = base;
    region.align = align;
    Ok(region)
}
