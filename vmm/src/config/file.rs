//! The TOML form of the configuration (`--config vm.toml`); `resources/vm.toml` is an
//! example. Sizes and addresses are strings with the flag syntax (`"64M"`, `"0x8000000"`)
//! or plain integers; map rules use the flag syntax.

use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, RegionConfig, VmConfig, parse_addr, parse_map_rules, parse_size};

#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(u64),
    Text(String),
}

impl Number {
    fn size(&self, what: &str) -> Result<u64, ConfigError> {
        match self {
            Number::Int(v) => Ok(*v),
            Number::Text(s) => parse_size(s, what),
        }
    }

    fn addr(&self, what: &str) -> Result<u64, ConfigError> {
        match self {
            Number::Int(v) => Ok(*v),
            Number::Text(s) => parse_addr(s, what),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegion {
    name: String,
    size: Number,
    base: Option<Number>,
    align: Option<Number>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    order_per_bit: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    memory: Option<Number>,
    vcpus: Option<u8>,
    kernel: Option<String>,
    initrd: Option<String>,
    guest_args: Option<String>,
    #[serde(default)]
    cma: Vec<FileRegion>,
    cma_map: Option<String>,
    #[serde(default)]
    capture: Vec<String>,
}

/// Largest configuration file accepted.
const MAX_FILE_BYTES: usize = 1 << 20;
/// Deepest bracket nesting accepted: the TOML parser recurses once per level, so a file of
/// `[[[[...` would otherwise exhaust the stack instead of getting an error.
const MAX_NESTING: usize = 32;

/// The deepest nesting of `[`/`{` outside strings and comments.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut escaped = false;
    for c in text.chars() {
        if comment {
            comment = c != '\n';
        } else if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                '"' | '\'' => quote = Some(c),
                '#' => comment = true,
                '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    deepest
}

/// Parse the TOML text of a configuration file; `path` is only for messages.
pub fn parse(text: &str, path: &str) -> Result<VmConfig, ConfigError> {
    let refuse = |reason: String| ConfigError::BadFile {
        path: path.to_string(),
        reason,
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(refuse(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    if nesting_depth(text) > MAX_NESTING {
        return Err(refuse(format!("nested deeper than {MAX_NESTING} levels")));
    }
    let file: FileConfig = basic_toml::from_str(text).map_err(|e| ConfigError::BadFile {
        path: path.to_string(),
        reason: e.to_string().replace('\n', " "),
    })?;
    let mut config = VmConfig::default();
    if let Some(m) = &file.memory {
        config.memory = m.size("memory size")?;
    }
    if let Some(v) = file.vcpus {
        config.vcpus = v;
    }
    config.kernel = file.kernel.map(Into::into);
    config.initrd = file.initrd.map(Into::into);
    config.guest_args = file.guest_args.unwrap_or_default();
    for r in &file.cma {
        let mut region = RegionConfig::new(&r.name, r.size.size("size")?);
        region.base = r
            .base
            .as_ref()
            .map(|b| b.addr("base address"))
            .transpose()?;
        region.align = r.align.as_ref().map(|a| a.size("alignment")).transpose()?;
        region.private = r.private;
        region.order_per_bit = r.order_per_bit;
        config.regions.push(region);
    }
    if let Some(map) = &file.cma_map {
        config.map = parse_map_rules(map)?;
    }
    config.capture = file.capture;
    Ok(config)
}

/// Read and parse a configuration file.
pub fn load(path: &Path) -> Result<VmConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::BadFile {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse(&text, &shown)
}
