//! Test fixtures for the integration tests and the bench: the shared file `world.rs`,
//! compiled against the library's public paths.

#![allow(dead_code)]

use guest_agent::mm::{
    CopyEngine, CopyError, Frame, MetaLayout, Mm, Mmu, Pageblock, Pfn, PhysMem, PhysRange,
};
use guest_agent::workload::Workload;

mod world;

pub use world::*;
