//! `config`: the configuration's three forms, the command line, and `validate`.

use protocol::boot::{
    BootInfo, DeviceKind, MAX_BOOT_INFO_SIZE, MAX_CMDLINE, MAX_REGIONS, is_valid_name,
};
use protocol::layout::{
    BOOT_AREA_END, DEVICE_VECTOR_BASE, KERNEL_LOAD_ADDR, MAX_MEMORY, MIN_MEMORY, PAGE_SIZE,
    PAGEBLOCK_SIZE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, ram_ranges,
};
use vmm::boot::{BootDevice, LoadedImage};
use vmm::cli::{self, Command};
use vmm::config::{
    ANY_DEVICE, MAX_VCPUS, ValidConfig, VmConfig, cmdline, file, format_size, parse_map_rules,
    parse_region_flag, parse_size,
};

/// Where the fake guest image ends (the builder of the boot block needs one).
const IMAGE_END: u64 = 0x14_0000;
/// What `--config` is pointed at: `cli::parse` reads the file, and a fuzzer must not.
const NO_FILE: &str = "/nonexistent/cma-fuzz/vm.toml";

/// The configuration parsers. The first byte picks the form; the rest is text:
///
/// - 0: `--cma` flags: line 1 the memory size, then one `--cma` value per line, or
///   `map:` and a `--cma-map` value;
/// - 1: line 1 the memory size, the rest a `cma=... cma_map=...` string;
/// - 2: a TOML configuration file;
/// - 3: `cli::parse` on the lines as argv (a `--config` file is replaced by a missing one).
///
/// Nothing panics, errors print, and whatever validates has its regions disjoint, whole
/// pageblocks, aligned as asked, inside RAM and out of the boot area, map rules naming
/// known regions, and builds a boot block that round-trips. Every size that parses
/// formats and parses back to itself.
pub fn config(data: &[u8]) {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    for line in text.lines() {
        if let Ok(v) = parse_size(line, "size") {
            assert_eq!(parse_size(&format_size(v), "size"), Ok(v), "{line:?}");
        }
    }
    let first_line_memory = |config: &mut VmConfig, line: Option<&str>| {
        if let Some(m) = line.and_then(|l| parse_size(l, "memory size").ok()) {
            config.memory = m;
        }
    };
    match form % 4 {
        0 => {
            let mut config = VmConfig::default();
            let mut lines = text.lines();
            first_line_memory(&mut config, lines.next());
            for line in lines {
                let parsed = match line.strip_prefix("map:") {
                    Some(rules) => parse_map_rules(rules).map(|m| config.map.extend(m)),
                    None => parse_region_flag(line).map(|r| config.regions.push(r)),
                };
                if let Err(e) = parsed {
                    let _ = e.to_string();
                    return;
                }
            }
            check_config(&config);
        }
        1 => {
            let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
            let mut config = VmConfig::default();
            first_line_memory(&mut config, Some(first));
            match cmdline::parse(rest) {
                Ok(c) => {
                    config.regions = c.regions;
                    config.map = c.map;
                    check_config(&config);
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        2 => match file::parse(&text, "fuzz.toml") {
            Ok(config) => check_config(&config),
            Err(e) => {
                let _ = e.to_string();
            }
        },
        _ => {
            let mut argv: Vec<String> = text.split('\n').map(str::to_string).collect();
            for i in 1..argv.len() {
                if argv[i - 1] == "--config" {
                    argv[i] = NO_FILE.to_string();
                }
            }
            match cli::parse(argv) {
                Ok(Command::Run(run)) => check_config(&run.config),
                Ok(Command::Bench(_, bench)) => check_config(&bench.run.config),
                Ok(_) => {}
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
}

fn check_config(config: &VmConfig) {
    match config.validate() {
        Ok(valid) => {
            check_valid_config(config, &valid);
            assert_eq!(config.validate().as_ref(), Ok(&valid), "not deterministic");
            check_config_boot_info(&valid);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// What `validate` promises about a configuration it accepts.
fn check_valid_config(config: &VmConfig, valid: &ValidConfig) {
    assert!((MIN_MEMORY..=MAX_MEMORY).contains(&valid.memory));
    assert_eq!(valid.memory % PAGE_SIZE, 0);
    assert!((1..=MAX_VCPUS).contains(&valid.vcpus));
    assert!(valid.guest_args.len() <= MAX_CMDLINE);
    assert_eq!(valid.regions.len(), config.regions.len());
    assert!(valid.regions.len() <= MAX_REGIONS);
    let ram = ram_ranges(valid.memory);
    for (i, (r, asked)) in valid.regions.iter().zip(&config.regions).enumerate() {
        assert_eq!(r.id as usize, i);
        assert_eq!(
            (&r.name, r.size, r.private),
            (&asked.name, asked.size, asked.private)
        );
        assert!(is_valid_name(&r.name));
        assert!(r.size > 0);
        assert_eq!(
            r.base % PAGEBLOCK_SIZE,
            0,
            "{} base not pageblock aligned",
            r.name
        );
        assert_eq!(
            r.size % PAGEBLOCK_SIZE,
            0,
            "{} size not whole pageblocks",
            r.name
        );
        if let Some(base) = asked.base {
            assert_eq!(r.base, base, "{} moved from its fixed base", r.name);
        }
        if let Some(align) = asked.align {
            assert_eq!(r.base % align, 0, "{} not aligned as asked", r.name);
        }
        let end = r.base.checked_add(r.size).expect("region end overflows");
        assert!(
            ram.iter().any(|&(s, e)| r.base >= s && end <= e),
            "{} [{:#x}, {end:#x}) is not inside RAM",
            r.name,
            r.base
        );
        assert!(r.base >= BOOT_AREA_END, "{} in the boot area", r.name);
        for o in &valid.regions[..i] {
            assert!(
                end <= o.base || o.end() <= r.base,
                "{} overlaps {}",
                r.name,
                o.name
            );
            assert_ne!(o.name, r.name);
        }
    }
    for rule in &valid.map {
        assert!(!rule.devices.is_empty() && !rule.regions.is_empty());
        for name in &rule.regions {
            let r = valid.regions.iter().find(|r| &r.name == name);
            let r = r.expect("map rule names an unknown region");
            assert!(!(r.private && rule.devices.iter().any(|d| d == ANY_DEVICE)));
        }
    }
}

/// A validated configuration always gives a boot block, which validates and round-trips.
fn check_config_boot_info(valid: &ValidConfig) {
    let info = vm_boot_info(valid).expect("a validated configuration builds a boot block");
    assert_eq!(info.regions().len(), valid.regions.len());
    let mut out = vec![0u8; MAX_BOOT_INFO_SIZE];
    let n = info.encode(&mut out).expect("the boot block encodes");
    assert_eq!(BootInfo::decode(&out[..n]), Ok(info));
}

/// The boot block the VMM builds for `valid`, with a guest image ending at [`IMAGE_END`]
/// and the agent device.
pub(super) fn vm_boot_info(valid: &ValidConfig) -> Option<BootInfo> {
    let image = LoadedImage {
        entry: KERNEL_LOAD_ADDR,
        end: IMAGE_END,
    };
    let agent = BootDevice {
        kind: DeviceKind::Agent,
        base: VIRTIO_MMIO_BASE,
        size: VIRTIO_MMIO_SIZE,
        vector: DEVICE_VECTOR_BASE,
        gsi: 0,
        name: "agent".into(),
    };
    vmm::boot::boot_info(valid, image, &[agent]).ok()
}
