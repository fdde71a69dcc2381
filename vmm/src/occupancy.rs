//! A picture of each CMA region's occupancy, the way one looks at fragmentation: every
//! region a grid of cells in address order (row by row, lowest address top left), each
//! cell coloured by what covers most of it — free, holding the guest's workload pages,
//! holding a page the guest pinned, granted to a device (exclusive or shared, pinned or
//! movable by compaction), or taken by an allocation or free still under way.
//!
//! What is known where:
//! - the allocator's bitmap and chunk table, with each chunk's mode and pin state: always
//!   ([`RegionMap::from_cma`] in the VMM; [`RegionMap::from_api`] from the control API's
//!   `GET /regions/NAME` and `GET /chunks` answers);
//! - which free pages hold the guest's workload ("populated") and which of those it
//!   pinned: from the reference guest's workload manifest ([`populated_frames`]), which
//!   only the VMM reads. The control API does not serve it, so a picture drawn from the
//!   API's answers shows free lent memory without telling populated from empty.

use plotters::prelude::*;
use serde::Deserialize;

use crate::bench::svg::text_width;
use crate::config::format_size;
use crate::grant::GrantMode;
use crate::machine::RunningVmm;
use protocol::layout::PAGE_SIZE;

/// What covers a page of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Use {
    /// Free in the allocator (lent to the guest unless the region is private).
    Free = 0,
    /// Free in the allocator, holding one of the guest workload's pages.
    Populated,
    /// Free in the allocator, holding a page the guest pinned (evictions meet it busy).
    GuestPinned,
    /// Taken in the bitmap but in no chunk: an allocation or free under way.
    InFlight,
    /// An exclusive grant compaction may move.
    ExclusiveMovable,
    /// A pinned exclusive grant.
    ExclusivePinned,
    /// A shared grant compaction may move.
    SharedMovable,
    /// A pinned shared grant.
    SharedPinned,
}

impl Use {
    const ALL: [Use; 8] = [
        Use::Free,
        Use::Populated,
        Use::GuestPinned,
        Use::InFlight,
        Use::ExclusiveMovable,
        Use::ExclusivePinned,
        Use::SharedMovable,
        Use::SharedPinned,
    ];

    /// Legend text.
    pub fn label(self) -> &'static str {
        match self {
            Use::Free => "free",
            Use::Populated => "free, guest workload pages",
            Use::GuestPinned => "free, page pinned by the guest",
            Use::InFlight => "taken, allocation or free under way",
            Use::ExclusiveMovable => "granted exclusive, movable",
            Use::ExclusivePinned => "granted exclusive, pinned",
            Use::SharedMovable => "granted shared, movable",
            Use::SharedPinned => "granted shared, pinned",
        }
    }

    fn colour(self) -> RGBColor {
        match self {
            Use::Free => RGBColor(236, 236, 236),
            Use::Populated => RGBColor(158, 202, 225),
            Use::GuestPinned => RGBColor(8, 69, 148),
            Use::InFlight => RGBColor(150, 90, 190),
            Use::ExclusiveMovable => RGBColor(253, 174, 107),
            Use::ExclusivePinned => RGBColor(217, 72, 1),
            Use::SharedMovable => RGBColor(199, 233, 154),
            Use::SharedPinned => RGBColor(35, 139, 69),
        }
    }

    fn of_chunk(mode: Option<GrantMode>, pinned: bool) -> Self {
        match (mode, pinned) {
            (Some(GrantMode::Shared), true) => Use::SharedPinned,
            (Some(GrantMode::Shared), false) => Use::SharedMovable,
            (_, true) => Use::ExclusivePinned,
            (_, false) => Use::ExclusiveMovable,
        }
    }
}

/// Why a region's occupancy could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OccupancyError {
    /// The region's answer is not what `GET /regions/NAME` serves.
    #[error("not a region with its bitmap: {0}")]
    BadRegion(String),
    /// The chunk list is not what `GET /chunks` serves.
    #[error("not a chunk list: {0}")]
    BadChunks(String),
    /// The bitmap is not hex, or too short for the region.
    #[error("region '{0}': bitmap does not match the region's size")]
    BadBitmap(String),
    /// A region too large to draw page by page.
    #[error("region '{0}' is too large to draw ({1} pages)")]
    TooLarge(String, u64),
    /// The picture could not be drawn.
    #[error("cannot draw the occupancy picture: {0}")]
    Draw(String),
}

/// Most pages a region may have to be drawn (64 GiB of 4 KiB pages: 16 MiB of state).
const MAX_PAGES: u64 = 16 << 20;

/// One region, page by page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionMap {
    /// Region name.
    pub name: String,
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Never lent to the guest.
    pub private: bool,
    /// Largest free run in bytes, as the allocator reports it.
    pub largest_free: u64,
    /// Whether populated pages are known (see the module doc).
    pub populated_known: bool,
    pages: Vec<Use>,
}

/// The region fields of `GET /regions/NAME` this picture needs ([`cma::RegionStats`]).
#[derive(Debug, Deserialize)]
struct ApiRegion {
    name: String,
    base: u64,
    size: u64,
    private: bool,
    granule: u64,
    largest_free: u64,
    bitmap: String,
}

/// A chunk of `GET /chunks` ([`crate::api::handlers::ChunkView`]).
#[derive(Debug, Deserialize)]
struct ApiChunk {
    region: String,
    gpa: u64,
    len: u64,
    pinned: bool,
    mode: Option<GrantMode>,
}

#[derive(Debug, Deserialize)]
struct ApiChunks {
    chunks: Vec<ApiChunk>,
}

/// A chunk as the picture sees it.
struct ChunkUse {
    gpa: u64,
    len: u64,
    what: Use,
}

impl RegionMap {
    fn new(
        r: &ApiRegion,
        chunks: &[ChunkUse],
        populated: Option<&[(u64, bool)]>,
    ) -> Result<Self, OccupancyError> {
        let npages = r.size / PAGE_SIZE;
        if npages > MAX_PAGES {
            return Err(OccupancyError::TooLarge(r.name.clone(), npages));
        }
        let bad = || OccupancyError::BadBitmap(r.name.clone());
        let granule_pages = (r.granule / PAGE_SIZE).max(1);
        let bits = npages.div_ceil(granule_pages);
        if r.bitmap.len() as u64 != bits.div_ceil(64) * 16 {
            return Err(bad());
        }
        let mut pages = vec![Use::Free; npages as usize];
        // One 16-digit group per 64 bits, lowest bits first (`cma::Bitmap::to_hex`).
        for (w, group) in r.bitmap.as_bytes().chunks(16).enumerate() {
            let hex = std::str::from_utf8(group).map_err(|_| bad())?;
            let word = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
            for b in (0..64).filter(|b| word >> b & 1 == 1) {
                let first = (w as u64 * 64 + b) * granule_pages;
                for p in first..(first + granule_pages).min(npages) {
                    pages[p as usize] = Use::InFlight;
                }
            }
        }
        let mut map = RegionMap {
            name: r.name.clone(),
            base: r.base,
            size: r.size,
            private: r.private,
            largest_free: r.largest_free,
            populated_known: populated.is_some() && !r.private,
            pages,
        };
        for c in chunks {
            map.mark(c.gpa, c.len, |_| Some(c.what));
        }
        for &(gpa, pinned) in populated.unwrap_or_default() {
            let what = if pinned {
                Use::GuestPinned
            } else {
                Use::Populated
            };
            map.mark(gpa, PAGE_SIZE, |u| (u == Use::Free).then_some(what));
        }
        Ok(map)
    }

    /// Set the pages of `[gpa, gpa + len)` inside the region to what `f` says.
    fn mark(&mut self, gpa: u64, len: u64, f: impl Fn(Use) -> Option<Use>) {
        let end = gpa.saturating_add(len).min(self.base + self.size);
        let mut a = gpa.max(self.base);
        while a < end {
            let p = &mut self.pages[((a - self.base) / PAGE_SIZE) as usize];
            if let Some(u) = f(*p) {
                *p = u;
            }
            a += PAGE_SIZE;
        }
    }

    /// A region from the control API's answers: `GET /regions/NAME` (with its bitmap)
    /// and `GET /chunks`. Populated pages are not known there (see the module doc).
    pub fn from_api(
        region: &serde_json::Value,
        chunks: &serde_json::Value,
    ) -> Result<Self, OccupancyError> {
        let r =
            ApiRegion::deserialize(region).map_err(|e| OccupancyError::BadRegion(e.to_string()))?;
        let list =
            ApiChunks::deserialize(chunks).map_err(|e| OccupancyError::BadChunks(e.to_string()))?;
        let chunks: Vec<ChunkUse> = list
            .chunks
            .iter()
            .filter(|c| c.region == r.name)
            .map(|c| ChunkUse {
                gpa: c.gpa,
                len: c.len,
                what: Use::of_chunk(c.mode, c.pinned),
            })
            .collect();
        Self::new(&r, &chunks, None)
    }

    /// Every region of a running VM, with populated pages if `populated` (the guest's
    /// workload frames, [`populated_frames`]) is given.
    pub fn from_cma(
        vm: &RunningVmm,
        populated: Option<&[(u64, bool)]>,
    ) -> Result<Vec<Self>, OccupancyError> {
        let grants = vm.grants();
        let cma = grants.cma();
        let chunks = cma.chunks();
        cma.stats()
            .into_iter()
            .map(|s| {
                let mine: Vec<ChunkUse> = chunks
                    .iter()
                    .filter(|c| c.region == s.id)
                    .map(|c| ChunkUse {
                        gpa: c.gpa,
                        len: c.len,
                        what: Use::of_chunk(grants.mode(c.id), c.pinned),
                    })
                    .collect();
                let r = ApiRegion {
                    name: s.name,
                    base: s.base,
                    size: s.size,
                    private: s.private,
                    granule: s.granule,
                    largest_free: s.largest_free,
                    bitmap: s.bitmap,
                };
                Self::new(&r, &mine, populated)
            })
            .collect()
    }

    /// Bytes of the region in each use.
    pub fn totals(&self) -> Vec<(Use, u64)> {
        Use::ALL
            .iter()
            .map(|&u| {
                let n = self.pages.iter().filter(|&&p| p == u).count() as u64;
                (u, n * PAGE_SIZE)
            })
            .filter(|&(_, b)| b > 0)
            .collect()
    }

    /// The region as `rows` x [`COLS`] cells of `cell` bytes each: the use covering most
    /// of each cell (ties to the later use in [`Use`] order, so a small grant shows).
    fn cells(&self) -> (u64, Vec<Use>) {
        let npages = self.pages.len().max(1) as u64;
        let per_cell = npages.div_ceil(COLS * MAX_ROWS).max(1);
        let cells = self
            .pages
            .chunks(per_cell as usize)
            .map(|c| {
                let mut count = [0usize; Use::ALL.len()];
                for &u in c {
                    count[u as usize] += 1;
                }
                let best = (0..count.len()).max_by_key(|&i| (count[i], i)).unwrap_or(0);
                Use::ALL[best]
            })
            .collect();
        (per_cell * PAGE_SIZE, cells)
    }
}

/// Cells per row.
const COLS: u64 = 128;
/// Most rows per region.
const MAX_ROWS: u64 = 32;
const CELL_W: i32 = 6;
const CELL_H: i32 = 9;
const LEFT: i32 = 100;
const FONT: &str = "sans-serif";

/// The guest workload's frames (guest-physical address, pinned by the guest), read from
/// its manifest with the guest quiesced and evictions held off, so they are where the
/// manifest says. Only the reference guest keeps a manifest; `Err` if it does not answer.
pub fn populated_frames(vm: &RunningVmm) -> Result<Vec<(u64, bool)>, String> {
    let check = crate::exercise::GuestCheck::begin(vm)?;
    let frames = check.present_frames();
    check.end()?;
    frames
}

/// Render `regions` as one SVG picture: `title` says what and when, `subtitle` which run.
pub fn render(
    regions: &[RegionMap],
    title: &str,
    subtitle: &str,
) -> Result<String, OccupancyError> {
    let err = |e: &dyn std::fmt::Display| OccupancyError::Draw(e.to_string());
    let grid_w = COLS as i32 * CELL_W;
    let legend_rows = Use::ALL.len().div_ceil(2) as i32;
    let head = 64 + legend_rows * 20 + 10;
    let layout: Vec<(u64, Vec<Use>)> = regions.iter().map(RegionMap::cells).collect();
    let block = |cells: usize| 44 + (cells as u64).div_ceil(COLS) as i32 * CELL_H + 16;
    let height = head + layout.iter().map(|(_, c)| block(c.len())).sum::<i32>() + 10;
    let width = (LEFT + grid_w + 24)
        .max(text_width(subtitle, 12) as i32 + 30)
        .max(text_width(title, 17) as i32 + 30);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width as u32, height.max(120) as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let text = |s: &str, size: u32, c: RGBColor, at: (i32, i32)| {
            root.draw_text(s, &(FONT, size).into_font().color(&c), at)
        };
        let grey = RGBColor(90, 90, 90);
        text(title, 17, BLACK, (14, 10)).map_err(|e| err(&e))?;
        text(subtitle, 12, grey, (14, 34)).map_err(|e| err(&e))?;
        for (i, u) in Use::ALL.iter().enumerate() {
            let x = 14 + (i as i32 % 2) * 380;
            let y = 60 + (i as i32 / 2) * 20;
            root.draw(&Rectangle::new(
                [(x, y), (x + 16, y + 12)],
                u.colour().filled(),
            ))
            .map_err(|e| err(&e))?;
            text(u.label(), 13, BLACK, (x + 24, y)).map_err(|e| err(&e))?;
        }
        let mut y = head;
        for (r, (cell, cells)) in regions.iter().zip(&layout) {
            let kind = if r.private { "private" } else { "lent" };
            let line = format!(
                "{} · {kind} · {} at [{:#x}, {:#x}) · largest free run {}",
                r.name,
                format_size(r.size),
                r.base,
                r.base + r.size,
                format_size(r.largest_free),
            );
            text(&line, 14, BLACK, (14, y)).map_err(|e| err(&e))?;
            let totals: Vec<String> = r
                .totals()
                .iter()
                .map(|(u, b)| format!("{} {}", short(*u), human(*b)))
                .collect();
            let known = if r.populated_known || r.private {
                ""
            } else {
                " (populated pages not known here)"
            };
            let line = format!(
                "one cell = {}, row = {} · {}{known}",
                human(*cell),
                human(cell * COLS),
                totals.join(", ")
            );
            text(&line, 12, grey, (14, y + 19)).map_err(|e| err(&e))?;
            let top = y + 40;
            for (row, uses) in cells.chunks(COLS as usize).enumerate() {
                let ry = top + row as i32 * CELL_H;
                if row % 8 == 0 {
                    let addr = r.base + row as u64 * cell * COLS;
                    text(&format!("{addr:#x}"), 11, grey, (14, ry)).map_err(|e| err(&e))?;
                }
                // Runs of one use as one rectangle: fewer elements, no seams.
                let mut start = 0;
                while start < uses.len() {
                    let u = uses[start];
                    let end = (start..uses.len())
                        .find(|&i| uses[i] != u)
                        .unwrap_or(uses.len());
                    let x0 = LEFT + start as i32 * CELL_W;
                    let x1 = LEFT + end as i32 * CELL_W;
                    root.draw(&Rectangle::new(
                        [(x0, ry), (x1, ry + CELL_H - 1)],
                        u.colour().filled(),
                    ))
                    .map_err(|e| err(&e))?;
                    start = end;
                }
            }
            y += block(cells.len());
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

fn short(u: Use) -> &'static str {
    match u {
        Use::Free => "free",
        Use::Populated => "populated",
        Use::GuestPinned => "guest-pinned",
        Use::InFlight => "in flight",
        Use::ExclusiveMovable => "exclusive movable",
        Use::ExclusivePinned => "exclusive pinned",
        Use::SharedMovable => "shared movable",
        Use::SharedPinned => "shared pinned",
    }
}

/// Bytes with a binary unit, one decimal where it matters ("1.5 MiB").
fn human(b: u64) -> String {
    let mut v = b as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 || unit == "GiB" {
            return if v.fract() == 0.0 || v >= 100.0 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn region(bitmap: &str) -> serde_json::Value {
        // 1 MiB at 16 MiB, one bit per 4 KiB page: 256 bits, 4 groups of 16 digits.
        json!({"id": 0, "name": "r", "base": 16 << 20, "size": 1 << 20, "private": false,
               "granule": 4096, "largest_free": 512 << 10, "bitmap": bitmap, "used": 0})
    }

    #[test]
    fn api_answers_become_pages() {
        // Pages 0-15 and 64 taken; 0-15 are an exclusive pinned chunk, 64 is in flight.
        let bitmap = format!("{:016x}{:016x}{}", 0xffffu64, 1u64, "0".repeat(32));
        let chunks = json!({"chunks": [
            {"id": "cma1:0:1", "region": "r", "region_id": 0, "gpa": 16 << 20, "len": 65536,
             "pinned": true, "mode": "exclusive", "owner": "api"},
            {"id": "cma1:1:1", "region": "other", "region_id": 1, "gpa": 0, "len": 4096,
             "pinned": false, "mode": "shared", "owner": "api"},
        ]});
        let map = RegionMap::from_api(&region(&bitmap), &chunks).unwrap();
        assert!(!map.populated_known);
        assert_eq!(
            map.totals(),
            vec![
                (Use::Free, (256 - 17) * 4096),
                (Use::InFlight, 4096),
                (Use::ExclusivePinned, 65536),
            ]
        );
        let svg = render(&[map], "occupancy", "test").unwrap();
        assert!(svg.contains("not known here") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn populated_pages_only_where_free() {
        let r: ApiRegion = serde_json::from_value(region(&"0".repeat(64))).unwrap();
        let chunk = ChunkUse {
            gpa: (16 << 20) + 4096,
            len: 4096,
            what: Use::SharedMovable,
        };
        let frames = [
            (16 << 20, false),
            ((16 << 20) + 4096, false),
            ((16 << 20) + 8192, true),
        ];
        let map = RegionMap::new(&r, &[chunk], Some(&frames)).unwrap();
        assert_eq!(
            &map.pages[..4],
            &[
                Use::Populated,
                Use::SharedMovable,
                Use::GuestPinned,
                Use::Free
            ]
        );
        // A frame outside the region is ignored.
        let map = RegionMap::new(&r, &[], Some(&[(0, true)])).unwrap();
        assert_eq!(map.totals(), vec![(Use::Free, 1 << 20)]);
    }

    #[test]
    fn bad_answers_are_errors() {
        let chunks = json!({"chunks": []});
        assert!(matches!(
            RegionMap::from_api(&region("zz"), &chunks),
            Err(OccupancyError::BadBitmap(_))
        ));
        assert!(matches!(
            RegionMap::from_api(&region(&"g".repeat(64)), &chunks),
            Err(OccupancyError::BadBitmap(_))
        ));
        assert!(matches!(
            RegionMap::from_api(&json!({"name": "r"}), &chunks),
            Err(OccupancyError::BadRegion(_))
        ));
        assert!(matches!(
            RegionMap::from_api(&region(&"0".repeat(64)), &json!([])),
            Err(OccupancyError::BadChunks(_))
        ));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(1536 << 10), "1.5 MiB");
        assert_eq!(human(100), "100 B");
    }
}
