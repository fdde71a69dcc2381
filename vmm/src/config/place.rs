//! Region placement: fixed bases are checked, the others are placed top-down (as Linux's
//! memblock places CMA areas), each at the highest suitably aligned free address.

use protocol::layout::{BOOT_AREA_END, PAGEBLOCK_SIZE, align_down, ram_ranges};

use super::guest::{GuestKind, LINUX_MEMORY_BLOCK, LINUX_MIN_RAM};
use super::{ConfigError, RegionConfig, RegionSpec, format_size};

/// Ordinary RAM the guest needs besides its CMA regions: for the reference guest 8 MiB
/// plus 1/64 of memory (page metadata, page tables, the workload's manifest, and migration
/// destinations); for Linux, [`LINUX_MIN_RAM`] plus 1/64 of memory (its memmap).
pub fn min_ordinary_ram(memory: u64, guest: GuestKind) -> u64 {
    match guest {
        GuestKind::Reference => (8 << 20) + memory / 64,
        GuestKind::Linux => LINUX_MIN_RAM + memory / 64,
    }
}

fn ram_description(memory: u64) -> String {
    let ranges: Vec<String> = ram_ranges(memory)
        .iter()
        .filter(|(s, e)| e > s)
        .map(|(s, e)| format!("[{s:#x}, {e:#x})"))
        .collect();
    ranges.join(" and ")
}

/// Check fixed regions, place the others, and check what is left for the guest.
pub fn place_regions(
    memory: u64,
    regions: &[RegionConfig],
    guest: GuestKind,
) -> Result<Vec<RegionSpec>, ConfigError> {
    let mut placed: Vec<RegionSpec> = Vec::with_capacity(regions.len());
    for (id, r) in regions.iter().enumerate() {
        if let Some(base) = r.base {
            check_fixed(memory, r, base)?;
            if let Some(other) = placed.iter().find(|p| overlaps(p, base, r.size)) {
                return Err(ConfigError::Overlap(other.name.clone(), r.name.clone()));
            }
            placed.push(spec(id, r, base));
        }
    }
    for (id, r) in regions.iter().enumerate() {
        if r.base.is_none() {
            let base =
                find_top_down(memory, r, &placed, guest).ok_or_else(|| ConfigError::NoRoom {
                    name: r.name.clone(),
                    size: format_size(r.size),
                })?;
            placed.push(spec(id, r, base));
        }
    }
    placed.sort_by_key(|p| p.id);
    check_ordinary_ram(memory, &placed, guest)?;
    Ok(placed)
}

fn spec(id: usize, r: &RegionConfig, base: u64) -> RegionSpec {
    RegionSpec {
        id: id as u32,
        name: r.name.clone(),
        base,
        size: r.size,
        private: r.private,
        order_per_bit: r.order_per_bit,
    }
}

fn overlaps(p: &RegionSpec, base: u64, size: u64) -> bool {
    base < p.end() && p.base < base + size
}

fn check_fixed(memory: u64, r: &RegionConfig, base: u64) -> Result<(), ConfigError> {
    let outside = || ConfigError::OutsideMemory {
        name: r.name.clone(),
        start: format!("{base:#x}"),
        end: base
            .checked_add(r.size)
            .map_or_else(|| "overflow".to_string(), |e| format!("{e:#x}")),
        ram: ram_description(memory),
    };
    let end = base.checked_add(r.size).ok_or_else(outside)?;
    if !ram_ranges(memory)
        .iter()
        .any(|&(s, e)| base >= s && end <= e)
    {
        return Err(outside());
    }
    if base < BOOT_AREA_END {
        return Err(ConfigError::InBootArea {
            name: r.name.clone(),
            base: format!("{base:#x}"),
        });
    }
    Ok(())
}

fn find_top_down(
    memory: u64,
    r: &RegionConfig,
    placed: &[RegionSpec],
    guest: GuestKind,
) -> Option<u64> {
    // A Linux guest hot-adds lent regions by memory block.
    let unit = match guest {
        GuestKind::Linux if !r.private => LINUX_MEMORY_BLOCK,
        _ => PAGEBLOCK_SIZE,
    };
    let align = r.align.unwrap_or(unit).max(unit);
    for (start, end) in ram_ranges(memory).into_iter().rev() {
        let floor = start.max(BOOT_AREA_END);
        let mut top = end;
        while let Some(candidate) = top.checked_sub(r.size).map(|c| align_down(c, align)) {
            if candidate < floor {
                break;
            }
            match placed.iter().find(|p| overlaps(p, candidate, r.size)) {
                None => return Some(candidate),
                Some(p) => top = p.base,
            }
        }
    }
    None
}

fn check_ordinary_ram(
    memory: u64,
    placed: &[RegionSpec],
    guest: GuestKind,
) -> Result<(), ConfigError> {
    let cma: u64 = placed.iter().map(|p| p.size).sum();
    let left = memory.saturating_sub(BOOT_AREA_END).saturating_sub(cma);
    let needed = min_ordinary_ram(memory, guest);
    if left < needed {
        return Err(ConfigError::TooLittleRam {
            left: format_size(left),
            needed: format_size(needed),
            rule: match guest {
                GuestKind::Reference => "8M + memory/64",
                GuestKind::Linux => "128M + memory/64 for a Linux guest",
            },
        });
    }
    Ok(())
}
