//! Fixtures shared by the CMA tests: regions, allocators and scripted callbacks.

use std::collections::VecDeque;

use super::{Claim, ClaimOutcome, Cma, Mover};
use crate::region::{MapRule, RegionSpec};

pub const MIB: u64 = 1 << 20;

/// A lent region.
pub fn region(id: u32, name: &str, base: u64, size: u64, order_per_bit: u32) -> RegionSpec {
    RegionSpec {
        id,
        name: name.into(),
        base,
        size,
        private: false,
        order_per_bit,
    }
}

/// A rule `devices=regions`.
pub fn rule(devices: &[&str], regions: &[&str]) -> MapRule {
    MapRule {
        devices: devices.iter().map(|s| s.to_string()).collect(),
        regions: regions.iter().map(|s| s.to_string()).collect(),
    }
}

/// Three regions: `video` (16 MiB at 6 MiB, so not 4 MiB aligned), `camera` (8 MiB,
/// 8 KiB bits) and the private `secret` (4 MiB); `video-dev` uses video, `cam` camera then
/// video, anything else camera.
pub fn three_regions() -> Cma {
    let mut secret = region(2, "secret", 64 * MIB, 4 * MIB, 0);
    secret.private = true;
    let regions = [
        region(0, "video", 6 * MIB, 16 * MIB, 0),
        region(1, "camera", 32 * MIB, 8 * MIB, 1),
        secret,
    ];
    let map = [
        rule(&["video-dev"], &["video"]),
        rule(&["cam"], &["camera", "video"]),
        rule(&["*"], &["camera"]),
    ];
    Cma::new(&regions, &map).expect("valid table")
}

/// A claim that always succeeds.
pub fn claimed() -> impl FnMut(&RegionSpec, u64, u64) -> ClaimOutcome {
    |_: &RegionSpec, _, _| ClaimOutcome::Claimed { pages_migrated: 0 }
}

/// A release that does nothing.
pub fn released() -> impl FnMut(&RegionSpec, u64, u64) {
    |_: &RegionSpec, _, _| {}
}

/// A claim that answers from a script (then `Claimed`) and records every candidate.
#[derive(Default)]
pub struct Scripted {
    pub answers: VecDeque<ClaimOutcome>,
    pub calls: Vec<(u64, u64)>,
}

impl Scripted {
    pub fn new(answers: impl IntoIterator<Item = ClaimOutcome>) -> Self {
        Scripted {
            answers: answers.into_iter().collect(),
            calls: Vec::new(),
        }
    }
}

impl Claim for Scripted {
    fn claim(&mut self, _: &RegionSpec, gpa: u64, len: u64) -> ClaimOutcome {
        self.calls.push((gpa, len));
        self.answers
            .pop_front()
            .unwrap_or(ClaimOutcome::Claimed { pages_migrated: 1 })
    }
}

/// A small seeded generator (xorshift64*), so stress tests are repeatable without `rand`.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A mover with scripted claims and copies that records everything, and may run a hook
/// (e.g. pin or free the chunk) during the copy.
#[derive(Default)]
pub struct TestMover<'a> {
    pub claims: Scripted,
    pub copy_fails: bool,
    pub copies: Vec<(u64, u64, u64)>,
    pub released: Vec<(u64, u64)>,
    pub during_copy: Option<Box<dyn FnMut() + 'a>>,
}

impl Mover for TestMover<'_> {
    fn claim(&mut self, region: &RegionSpec, gpa: u64, len: u64) -> ClaimOutcome {
        self.claims.claim(region, gpa, len)
    }

    fn copy(&mut self, from: u64, to: u64, len: u64) -> Result<(), String> {
        self.copies.push((from, to, len));
        if let Some(f) = &mut self.during_copy {
            f();
        }
        match self.copy_fails {
            true => Err("copy failed".into()),
            false => Ok(()),
        }
    }

    fn release(&mut self, _: &RegionSpec, gpa: u64, len: u64) {
        self.released.push((gpa, len));
    }
}
