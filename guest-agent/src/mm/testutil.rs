//! Test fixtures for the unit tests: the shared file `tests/support/world.rs`, compiled
//! against this crate's paths.

#![allow(dead_code)]

use crate::mm::{
    CopyEngine, CopyError, Frame, MetaLayout, Mm, Mmu, Pageblock, Pfn, PhysMem, PhysRange,
};
use crate::workload::Workload;

#[path = "../../tests/support/world.rs"]
mod world;

pub use world::*;
