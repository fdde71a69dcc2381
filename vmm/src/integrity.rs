//! Checking the guest's workload from the host: every byte of every page, at host speed.
//!
//! The guest's manifest says which frame holds each logical page and its generation; the
//! page's contents are a function of the two ([`protocol::page`]). The guest is paused in
//! its workload (a Query with QUIESCE) while we read, so pages are not rewritten under us,
//! and the VMM sends it no eviction meanwhile, so pages are not moved under us either
//! ([`ManifestSnapshot`]).
//! The manifest is guest memory and untrusted: its length is bounded and every address is
//! checked; a lying manifest only produces errors in the report.

use protocol::layout::PAGE_SIZE;
use protocol::msg::Report;
use protocol::page::{MANIFEST_ENTRY_SIZE, ManifestEntry, PAGE_PRESENT, verify};
use serde::Serialize;

use crate::vstate::memory::GuestRam;

/// Most errors kept in a report.
const MAX_ERRORS: usize = 16;
/// Most manifest entries read (a 64 GiB guest's worth of pages).
const MAX_ENTRIES: u64 = 16 << 20;

/// What a check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IntegrityReport {
    /// Pages whose every byte was verified.
    pub pages_checked: u64,
    /// Pages that failed (content, or a frame outside RAM).
    pub errors: u64,
    /// The first few failures, described.
    pub first_errors: Vec<String>,
    /// Pages pinned by the guest.
    pub pages_pinned: u64,
}

impl IntegrityReport {
    /// No page failed.
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }

    fn fail(&mut self, what: String) {
        self.errors += 1;
        if self.first_errors.len() < MAX_ERRORS {
            self.first_errors.push(what);
        }
    }
}

/// Verify every present page the guest's `report` points at.
pub fn check_workload(ram: &GuestRam, report: &Report) -> IntegrityReport {
    ManifestSnapshot::read(ram, report).verify(ram)
}

/// The guest's manifest as read at one moment: which frame holds each logical page, and
/// in which generation. Verifying the pages later is exact only if none moved meanwhile:
/// a page the guest migrated since is looked for in the frame it left, which may hold
/// anything by then (device data, zeros). Hence a check holds evictions off from before
/// it reads the manifest until it has read the pages
/// ([`crate::grant::GrantManager::hold_evictions`]).
#[derive(Debug, Clone)]
pub struct ManifestSnapshot {
    manifest: Result<Vec<u8>, String>,
}

impl ManifestSnapshot {
    /// Read the manifest `report` points at (at most `MAX_ENTRIES` entries).
    pub fn read(ram: &GuestRam, report: &Report) -> Self {
        let entries = report.manifest_len.min(MAX_ENTRIES);
        let mut manifest = vec![0u8; (entries as usize) * MANIFEST_ENTRY_SIZE];
        let manifest = match ram.read(report.manifest_gpa, &mut manifest) {
            Ok(()) => Ok(manifest),
            Err(_) => Err(format!(
                "manifest [{:#x}, +{} entries) is not in guest RAM",
                report.manifest_gpa, entries
            )),
        };
        ManifestSnapshot { manifest }
    }

    /// Every present page's frame and whether the guest pinned it; the error if the
    /// manifest could not be read.
    pub fn present_frames(&self) -> Result<Vec<(u64, bool)>, String> {
        let manifest = self.manifest.as_ref().map_err(Clone::clone)?;
        Ok((0..manifest.len() / MANIFEST_ENTRY_SIZE)
            .map_while(|i| ManifestEntry::decode(manifest, i).ok())
            .filter(|e| e.flags & PAGE_PRESENT != 0)
            .map(|e| (e.gpa, e.flags & protocol::page::PAGE_PINNED != 0))
            .collect())
    }

    /// Verify every present page where the manifest said it was.
    pub fn verify(&self, ram: &GuestRam) -> IntegrityReport {
        let mut out = IntegrityReport::default();
        let manifest = match &self.manifest {
            Ok(m) => m,
            Err(e) => {
                out.fail(e.clone());
                return out;
            }
        };
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for id in 0..manifest.len() / MANIFEST_ENTRY_SIZE {
            let Ok(e) = ManifestEntry::decode(manifest, id) else {
                break;
            };
            if e.flags & PAGE_PRESENT == 0 {
                continue;
            }
            if e.flags & protocol::page::PAGE_PINNED != 0 {
                out.pages_pinned += 1;
            }
            if e.gpa % PAGE_SIZE != 0 || ram.read(e.gpa, &mut page).is_err() {
                out.fail(format!("page {id}: frame {:#x} is not guest RAM", e.gpa));
                continue;
            }
            match verify(&page, id as u64, u64::from(e.generation)) {
                Ok(()) => out.pages_checked += 1,
                Err(m) => out.fail(format!(
                    "page {id} (generation {}) in frame {:#x}: offset {} holds {:#x}, expected {:#x}",
                    e.generation, e.gpa, m.offset, m.found, m.expected
                )),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::page::{WRITTEN_OFFSETS, expected_word};

    fn write_page(ram: &GuestRam, gpa: u64, id: u64, generation: u64) {
        for off in WRITTEN_OFFSETS {
            ram.write(
                gpa + off as u64,
                &expected_word(id, generation, off).to_le_bytes(),
            )
            .unwrap();
        }
    }

    #[test]
    fn finds_exactly_the_broken_pages() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let manifest = 0x20_0000;
        let frames = [0x40_0000u64, 0x40_1000, 0x40_2000];
        for (id, &gpa) in frames.iter().enumerate() {
            write_page(&ram, gpa, id as u64, 3);
            let e = ManifestEntry {
                gpa,
                generation: 3,
                flags: PAGE_PRESENT,
            };
            ram.write(manifest + (id * MANIFEST_ENTRY_SIZE) as u64, &e.encode())
                .unwrap();
        }
        let report = Report {
            manifest_gpa: manifest,
            manifest_len: 4,
            ..Report::default()
        };
        let r = check_workload(&ram, &report);
        assert_eq!((r.pages_checked, r.errors), (3, 0));
        // A stray byte in the middle of page 1, and page 2 lost (zeroed).
        ram.write(0x40_1000 + 1234, &[1]).unwrap();
        ram.punch(0x40_2000, 4096).unwrap();
        let r = check_workload(&ram, &report);
        assert_eq!((r.pages_checked, r.errors), (1, 2));
        assert!(
            r.first_errors[0].contains("offset 1232"),
            "{:?}",
            r.first_errors
        );
    }

    #[test]
    fn a_lying_manifest_is_reported_not_trusted() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let bogus = ManifestEntry {
            gpa: u64::MAX - 4095,
            generation: 1,
            flags: PAGE_PRESENT,
        };
        ram.write(0x20_0000, &bogus.encode()).unwrap();
        let r = check_workload(
            &ram,
            &Report {
                manifest_gpa: 0x20_0000,
                manifest_len: 1,
                ..Report::default()
            },
        );
        assert_eq!(r.errors, 1);
        let r = check_workload(
            &ram,
            &Report {
                manifest_gpa: u64::MAX,
                manifest_len: u64::MAX,
                ..Report::default()
            },
        );
        assert_eq!(r.errors, 1);
    }
}
