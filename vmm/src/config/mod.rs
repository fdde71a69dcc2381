//! The VM's configuration: guest memory, CMA regions and device→region map rules.
//!
//! Three forms give the same [`VmConfig`]:
//! - command-line flags: `--memory 256M --cma name=video,size=64M,align=1M
//!   --cma-map 'video-dev=video;*=camera'` ([`parse_region_flag`], [`parse_map_rules`]);
//! - a TOML file (`--config vm.toml`, [`mod@file`]);
//! - the original Linux CMA patches' syntax in one string:
//!   `cma=video=64M/1M;camera=32M@0x8000000 cma_map=video-dev=video;*=camera`
//!   ([`cmdline`]).
//!
//! [`VmConfig::validate`] checks everything and places the regions that have no base;
//! nothing starts before it has passed.

pub mod cmdline;
pub mod file;
pub mod guest;
mod place;
pub mod size;

use std::path::PathBuf;

/// The allocator's own types: a validated configuration is made of them.
pub use cma::{ANY_DEVICE, MAX_ORDER_PER_BIT, MapRule, RegionSpec};
pub use guest::GuestKind;
use protocol::boot::{MAX_REGIONS, is_valid_name};
use protocol::layout::{MAX_MEMORY, MIN_MEMORY, PAGE_SIZE};
pub use size::{format_size, parse_addr, parse_size};

// What the configuration accepts, the allocator accepts: same page, regions no larger
// than guest memory can be.
const _: () = assert!(cma::PAGE_SIZE == PAGE_SIZE && MAX_MEMORY <= cma::MAX_REGION_SIZE);

/// Most frame-capture devices (the boot information describes 8 devices, one is the agent).
pub const MAX_CAPTURE_DEVICES: usize = 7;
/// Most vCPUs accepted.
pub const MAX_VCPUS: u8 = 8;

/// A configuration error: one line that names the offending value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A number that does not parse.
    #[error("invalid {what}: '{value}' (expected a number with an optional K, M or G suffix)")]
    BadNumber {
        /// Which value.
        what: String,
        /// The text given.
        value: String,
    },
    /// Guest memory size out of range.
    #[error("memory size {0} is out of range: expected 16M to 64G")]
    MemoryOutOfRange(String),
    /// Guest memory size not a whole number of pages.
    #[error("memory size {0} is not a multiple of the 4K page size")]
    MemoryNotAligned(String),
    /// Bad vCPU count.
    #[error("invalid vcpu count {0}: expected 1 to {MAX_VCPUS}")]
    BadVcpus(String),
    /// A `--cma` specification that does not parse.
    #[error("invalid CMA region '{spec}': {reason}")]
    BadRegionSpec {
        /// The specification.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An invalid region or device name.
    #[error("invalid name '{0}': expected 1 to 23 characters from A-Z a-z 0-9 _ - .")]
    BadName(String),
    /// Two regions with one name.
    #[error("duplicate CMA region name '{0}'")]
    DuplicateRegion(String),
    /// More regions than the boot information can describe.
    #[error("too many CMA regions: {0} (at most {MAX_REGIONS})")]
    TooManyRegions(usize),
    /// A region of size zero.
    #[error("CMA region '{0}' has size zero")]
    ZeroSize(String),
    /// A region larger than guest memory.
    #[error("CMA region '{name}' size {size} is larger than guest memory {memory}")]
    SizeTooLarge {
        /// Region name.
        name: String,
        /// Its size.
        size: String,
        /// Guest memory size.
        memory: String,
    },
    /// A base or size that is not page aligned.
    #[error("CMA region '{name}' {field} {value} is not page aligned (4K)")]
    NotPageAligned {
        /// Region name.
        name: String,
        /// `base` or `size`.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// A base or size that is not a whole number of pageblocks.
    #[error(
        "CMA region '{name}' {field} {value} is not a multiple of the 2M pageblock (CMA regions are whole pageblocks)"
    )]
    NotPageblockAligned {
        /// Region name.
        name: String,
        /// `base` or `size`.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// An alignment that is not a power of two.
    #[error("CMA region '{name}' alignment {value} is not a power of two")]
    BadAlign {
        /// Region name.
        name: String,
        /// The value.
        value: String,
    },
    /// A fixed base that violates the region's own alignment.
    #[error("CMA region '{name}' base {base} is not aligned to its alignment {align}")]
    BaseNotAligned {
        /// Region name.
        name: String,
        /// The base.
        base: String,
        /// The alignment.
        align: String,
    },
    /// A region that is not inside guest RAM.
    #[error("CMA region '{name}' [{start}, {end}) is outside guest RAM ({ram})")]
    OutsideMemory {
        /// Region name.
        name: String,
        /// First byte.
        start: String,
        /// One past the last byte.
        end: String,
        /// Description of RAM.
        ram: String,
    },
    /// A region over the boot structures or the guest image.
    #[error(
        "CMA region '{name}' at {base} overlaps the boot area [0, 2M) that holds the guest image"
    )]
    InBootArea {
        /// Region name.
        name: String,
        /// Its base.
        base: String,
    },
    /// Two regions that overlap.
    #[error("CMA regions '{0}' and '{1}' overlap")]
    Overlap(String, String),
    /// No room to place a region.
    #[error("no room for CMA region '{name}' of size {size} in guest memory")]
    NoRoom {
        /// Region name.
        name: String,
        /// Its size.
        size: String,
    },
    /// Too little ordinary RAM left for the guest.
    #[error(
        "CMA regions leave only {left} of ordinary RAM; the guest needs at least {needed} ({rule})"
    )]
    TooLittleRam {
        /// Ordinary RAM left.
        left: String,
        /// Ordinary RAM needed.
        needed: String,
        /// How `needed` is computed for this guest.
        rule: &'static str,
    },
    /// An `order_per_bit` out of range.
    #[error(
        "CMA region '{name}' order_per_bit {value} is out of range: expected 0 to {MAX_ORDER_PER_BIT}"
    )]
    BadOrderPerBit {
        /// Region name.
        name: String,
        /// The value.
        value: String,
    },
    /// A map rule that does not parse.
    #[error("invalid map rule '{rule}': {reason}")]
    BadMapRule {
        /// The rule.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A map rule naming a region that does not exist.
    #[error("map rule '{rule}' names unknown CMA region '{region}'")]
    UnknownRegionInMap {
        /// The rule.
        rule: String,
        /// The region name.
        region: String,
    },
    /// A `*` rule naming a private region.
    #[error(
        "map rule '{rule}' sends any device to private CMA region '{region}': private regions are reachable only by name"
    )]
    PrivateInDefaultRule {
        /// The rule.
        rule: String,
        /// The region name.
        region: String,
    },
    /// A `cma=`/`cma_map=` command line that does not parse.
    #[error("invalid CMA command line '{token}': {reason}")]
    BadCmdline {
        /// The offending token.
        token: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration file that does not parse.
    #[error("invalid configuration file {path}: {reason}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Regions given by more than one of `--config`, `--cma`, `--cma-cmdline`.
    #[error("CMA regions come from more than one of {0}: use one form")]
    MixedSources(String),
    /// Too many capture devices.
    #[error("too many capture devices: {0} (at most {MAX_CAPTURE_DEVICES})")]
    TooManyDevices(usize),
    /// Two capture devices with one name.
    #[error("duplicate device name '{0}'")]
    DuplicateDevice(String),
    /// A capture device no map rule sends anywhere.
    #[error(
        "capture device '{0}' matches no map rule (add one with --cma-map, e.g. '{0}=REGION' or '*=REGION')"
    )]
    UnmappedDevice(String),
    /// A guest command line that does not fit.
    #[error("the guest command line is {len} bytes long: at most {max} for this guest")]
    GuestArgsTooLong {
        /// Its length.
        len: usize,
        /// The limit for the guest's kind.
        max: usize,
    },
    /// A kernel image that cannot be read.
    #[error("cannot open guest image {path}: {reason}")]
    KernelOpen {
        /// The image.
        path: String,
        /// Why.
        reason: String,
    },
    /// A kernel image of no kind we boot.
    #[error("malformed guest image {path}: {reason}")]
    BadKernel {
        /// The image.
        path: String,
        /// Why.
        reason: String,
    },
    /// An initramfs that cannot be used.
    #[error("cannot use initrd {path}: {reason}")]
    BadInitrd {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// An initramfs for a guest that is not Linux.
    #[error("--initrd needs a Linux bzImage kernel (--kernel); the reference guest takes none")]
    InitrdNeedsLinux,
    /// A lent region that a Linux guest cannot hot-add.
    #[error(
        "CMA region '{name}' {field} {value} is not a multiple of 128M: regions lent to a Linux guest are hot-added as whole memory blocks (128M, on 128M boundaries)"
    )]
    NotMemoryBlock {
        /// Region name.
        name: String,
        /// `base` or `size`.
        field: &'static str,
        /// The value.
        value: String,
    },
}

/// One CMA region as configured (before placement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionConfig {
    /// Unique name (what map rules and `alloc_from` use).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Fixed guest-physical base, or `None` to let the VMM place it.
    pub base: Option<u64>,
    /// Placement alignment of the region's base, or `None` for the pageblock size.
    pub align: Option<u64>,
    /// Never lent to the guest; reachable only by name.
    pub private: bool,
    /// One allocator bit per 2^order_per_bit pages.
    pub order_per_bit: u32,
}

impl RegionConfig {
    /// A lent region of `size` bytes, placed by the VMM.
    pub fn new(name: &str, size: u64) -> Self {
        RegionConfig {
            name: name.to_string(),
            size,
            base: None,
            align: None,
            private: false,
            order_per_bit: 0,
        }
    }
}

/// The whole VM configuration, in any of its three forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest memory in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest image; `None` for the reference guest built with the VMM.
    pub kernel: Option<PathBuf>,
    /// An initramfs for a Linux guest.
    pub initrd: Option<PathBuf>,
    /// The guest's command line (the reference guest's test modes and workload size; a
    /// Linux guest's kernel parameters, after the VMM's defaults).
    pub guest_args: String,
    /// CMA regions.
    pub regions: Vec<RegionConfig>,
    /// Device→region map rules.
    pub map: Vec<MapRule>,
    /// Frame-capture devices, by name (what map rules match).
    pub capture: Vec<String>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory: 256 << 20,
            vcpus: 1,
            kernel: None,
            initrd: None,
            guest_args: String::new(),
            regions: Vec::new(),
            map: Vec::new(),
            capture: Vec::new(),
        }
    }
}

/// A placed region as the guest is told about it (boot information, agent config space);
/// `None` for a name the boot information cannot carry (validation refuses those).
pub fn region_desc(r: &RegionSpec) -> Option<protocol::boot::RegionDesc> {
    Some(protocol::boot::RegionDesc {
        id: r.id,
        flags: if r.private {
            protocol::boot::REGION_PRIVATE
        } else {
            0
        },
        base: r.base,
        size: r.size,
        name: protocol::boot::Name::new(&r.name)?,
    })
}

/// A configuration that passed every check, with every region placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidConfig {
    /// Guest memory in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest image; `None` for the reference guest.
    pub kernel: Option<PathBuf>,
    /// The boot protocol the image speaks.
    pub guest: GuestKind,
    /// An initramfs (Linux guests only).
    pub initrd: Option<PathBuf>,
    /// The guest's command line.
    pub guest_args: String,
    /// Regions, in configuration order (`id` = index).
    pub regions: Vec<RegionSpec>,
    /// Map rules, every region name known.
    pub map: Vec<MapRule>,
    /// Frame-capture devices, each reaching at least one region through the map rules.
    pub capture: Vec<String>,
}

impl VmConfig {
    /// Check every rule and place the regions without a base.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        self.check_memory()?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::BadVcpus(self.vcpus.to_string()));
        }
        let guest = self.check_images()?;
        let max_args = match guest {
            GuestKind::Reference => protocol::boot::MAX_CMDLINE,
            GuestKind::Linux => {
                guest::LINUX_MAX_CMDLINE - crate::boot::linux::DEFAULT_CMDLINE.len() - 1
            }
        };
        if self.guest_args.len() > max_args {
            return Err(ConfigError::GuestArgsTooLong {
                len: self.guest_args.len(),
                max: max_args,
            });
        }
        if self.regions.len() > MAX_REGIONS {
            return Err(ConfigError::TooManyRegions(self.regions.len()));
        }
        for (i, r) in self.regions.iter().enumerate() {
            self.check_region(r)?;
            if guest == GuestKind::Linux && !r.private {
                check_memory_blocks(r)?;
            }
            if self.regions[..i].iter().any(|o| o.name == r.name) {
                return Err(ConfigError::DuplicateRegion(r.name.clone()));
            }
        }
        let regions = place::place_regions(self.memory, &self.regions, guest)?;
        self.check_map(&regions)?;
        self.check_capture()?;
        Ok(ValidConfig {
            memory: self.memory,
            vcpus: self.vcpus,
            kernel: self.kernel.clone(),
            guest,
            initrd: self.initrd.clone(),
            guest_args: self.guest_args.clone(),
            regions,
            map: self.map.clone(),
            capture: self.capture.clone(),
        })
    }

    /// The guest's kind, from its image; an initramfs only with a Linux kernel.
    fn check_images(&self) -> Result<GuestKind, ConfigError> {
        let kind = match &self.kernel {
            Some(path) => guest::detect(path)?,
            None => GuestKind::Reference,
        };
        if let Some(initrd) = &self.initrd {
            if kind != GuestKind::Linux {
                return Err(ConfigError::InitrdNeedsLinux);
            }
            guest::check_initrd(initrd)?;
        }
        Ok(kind)
    }

    fn check_capture(&self) -> Result<(), ConfigError> {
        if self.capture.len() > MAX_CAPTURE_DEVICES {
            return Err(ConfigError::TooManyDevices(self.capture.len()));
        }
        for (i, name) in self.capture.iter().enumerate() {
            if !is_valid_name(name) || name == "agent" {
                return Err(ConfigError::BadName(name.clone()));
            }
            if self.capture[..i].contains(name) {
                return Err(ConfigError::DuplicateDevice(name.clone()));
            }
            if !self.map.iter().any(|r| r.matches(name)) {
                return Err(ConfigError::UnmappedDevice(name.clone()));
            }
        }
        Ok(())
    }

    fn check_memory(&self) -> Result<(), ConfigError> {
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&self.memory) {
            return Err(ConfigError::MemoryOutOfRange(format_size(self.memory)));
        }
        if !self.memory.is_multiple_of(PAGE_SIZE) {
            return Err(ConfigError::MemoryNotAligned(format_size(self.memory)));
        }
        Ok(())
    }

    fn check_region(&self, r: &RegionConfig) -> Result<(), ConfigError> {
        let name = || r.name.clone();
        if !is_valid_name(&r.name) {
            return Err(ConfigError::BadName(r.name.clone()));
        }
        if r.size == 0 {
            return Err(ConfigError::ZeroSize(name()));
        }
        if r.size > self.memory {
            return Err(ConfigError::SizeTooLarge {
                name: name(),
                size: format_size(r.size),
                memory: format_size(self.memory),
            });
        }
        if let Some(align) = r.align
            && (align == 0 || !align.is_power_of_two())
        {
            return Err(ConfigError::BadAlign {
                name: name(),
                value: format_size(align),
            });
        }
        if r.order_per_bit > MAX_ORDER_PER_BIT {
            return Err(ConfigError::BadOrderPerBit {
                name: name(),
                value: r.order_per_bit.to_string(),
            });
        }
        let mut fields = vec![("size", r.size)];
        if let Some(base) = r.base {
            fields.insert(0, ("base", base));
        }
        for (field, value) in fields.iter().copied() {
            if value % PAGE_SIZE != 0 {
                return Err(ConfigError::NotPageAligned {
                    name: name(),
                    field,
                    value: format!("{value:#x}"),
                });
            }
        }
        for (field, value) in fields {
            if value % protocol::layout::PAGEBLOCK_SIZE != 0 {
                return Err(ConfigError::NotPageblockAligned {
                    name: name(),
                    field,
                    value: format!("{value:#x}"),
                });
            }
        }
        if let (Some(base), Some(align)) = (r.base, r.align)
            && base % align != 0
        {
            return Err(ConfigError::BaseNotAligned {
                name: name(),
                base: format!("{base:#x}"),
                align: format_size(align),
            });
        }
        Ok(())
    }

    fn check_map(&self, regions: &[RegionSpec]) -> Result<(), ConfigError> {
        for rule in &self.map {
            let text = rule.to_string();
            if rule.devices.is_empty() || rule.regions.is_empty() {
                return Err(ConfigError::BadMapRule {
                    rule: text,
                    reason: "a rule needs at least one device and one region".into(),
                });
            }
            for d in &rule.devices {
                if d != ANY_DEVICE && !is_valid_name(d) {
                    return Err(ConfigError::BadName(d.clone()));
                }
            }
            for name in &rule.regions {
                let region = regions.iter().find(|r| &r.name == name).ok_or_else(|| {
                    ConfigError::UnknownRegionInMap {
                        rule: text.clone(),
                        region: name.clone(),
                    }
                })?;
                if region.private && rule.devices.iter().any(|d| d == ANY_DEVICE) {
                    return Err(ConfigError::PrivateInDefaultRule {
                        rule: text,
                        region: name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A region lent to a Linux guest must be whole memory blocks: the guest hot-adds it.
fn check_memory_blocks(r: &RegionConfig) -> Result<(), ConfigError> {
    let block = guest::LINUX_MEMORY_BLOCK;
    let mut fields = vec![("size", r.size)];
    if let Some(base) = r.base {
        fields.insert(0, ("base", base));
    }
    if let Some(align) = r.align.filter(|a| *a > block) {
        fields.push(("alignment", align % block));
    }
    for (field, value) in fields {
        if value % block != 0 {
            return Err(ConfigError::NotMemoryBlock {
                name: r.name.clone(),
                field,
                value: format_size(value),
            });
        }
    }
    Ok(())
}

/// Parse one `--cma` flag: `name=NAME,size=SIZE[,base=ADDR][,align=SIZE][,private]
/// [,order_per_bit=N]`.
pub fn parse_region_flag<'a>(spec: &'a str) -> Result<RegionConfig, ConfigError> {
    let bad = |reason: String| ConfigError::BadRegionSpec {
        spec: spec.to_string(),
        reason,
    };
    let mut name = None;
    let mut size = None;
    let mut region = RegionConfig::new("", 0);
    for item in spec.split(',') {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item.trim(), None),
        };
        let need = |v: Option<&'a str>| v.ok_or_else(|| bad(format!("'{key}' needs a value")));
        let repeated = || bad(format!("'{key}' given twice"));
        match key {
            "name" if name.is_none() => name = Some(need(value)?.to_string()),
            "size" if size.is_none() => size = Some(parse_size(need(value)?, "size")?),
            "base" if region.base.is_none() => {
                region.base = Some(parse_addr(need(value)?, "base address")?)
            }
            "align" if region.align.is_none() => {
                region.align = Some(parse_size(need(value)?, "alignment")?)
            }
            "private" => {
                region.private = match value {
                    None | Some("true") | Some("on") => true,
                    Some("false") | Some("off") => false,
                    Some(v) => return Err(bad(format!("'private' takes no value, got '{v}'"))),
                }
            }
            "order_per_bit" => {
                let v = need(value)?;
                region.order_per_bit = v
                    .parse()
                    .map_err(|_| bad(format!("order_per_bit '{v}' is not a small integer")))?;
            }
            "name" | "size" | "base" | "align" => return Err(repeated()),
            "" => return Err(bad("empty item".into())),
            other => return Err(bad(format!("unknown key '{other}'"))),
        }
    }
    region.name = name.ok_or_else(|| bad("missing 'name'".into()))?;
    region.size = size.ok_or_else(|| bad("missing 'size'".into()))?;
    Ok(region)
}

/// Parse map rules: `dev[,dev...]=region[,region...]` separated by `;` (the allocator's
/// syntax, [`cma::parse_map_rules`]), every name a valid one, rule by rule.
pub fn parse_map_rules(s: &str) -> Result<Vec<MapRule>, ConfigError> {
    let mut rules = Vec::new();
    for text in s.split(';').filter(|r| !r.trim().is_empty()) {
        let rule: MapRule =
            text.parse()
                .map_err(|e: cma::ParseMapRuleError| ConfigError::BadMapRule {
                    rule: e.rule,
                    reason: e.reason,
                })?;
        if let Some(r) = rule.regions.iter().find(|r| !is_valid_name(r)) {
            return Err(ConfigError::BadName(r.clone()));
        }
        if let Some(d) = rule
            .devices
            .iter()
            .find(|d| d.as_str() != ANY_DEVICE && !is_valid_name(d))
        {
            return Err(ConfigError::BadName(d.clone()));
        }
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests;
