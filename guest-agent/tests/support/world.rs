//! Test fixtures: a small boot map, a fake machine (guest memory in a `Vec<u8>`, a page
//! table in a `Vec`), a fake copy engine, and a world tying them to an `Mm` + workload.
//!
//! Compiled three times: by the library's unit tests (`src/mm/testutil.rs`), by the
//! integration tests (`tests/support/mod.rs`) and by the bench; each parent module
//! imports the library names this file uses, from `crate::` or from `guest_agent::`.
//!
//! ```text
//!  0      1 MiB       2 MiB            6 MiB          10 MiB     12 MiB    14 MiB
//!  │ rsvd │ kernel+   │ RAM (MOVABLE)  │ CMA "a"      │ private  │ CMA "b" │
//!  │      │ manifest  │ 1024 pages     │ 1024 pages   │ "p"      │ 512     │
//! ```

use super::{
    CopyEngine, CopyError, Frame, MetaLayout, Mm, Mmu, Pageblock, Pfn, PhysMem, PhysRange, Workload,
};
use protocol::boot::{BootInfo, MemEntry, MemKind, NO_REGION, Name, REGION_PRIVATE, RegionDesc};
use protocol::msg::MigratePair;
use protocol::page::{ManifestEntry, PAGE_PRESENT, verify};
use std::cell::RefCell;
use std::rc::Rc;

/// One MiB.
pub const MB: u64 = 1 << 20;
/// Size of the test guest.
pub const MEM: u64 = 14 * MB;
/// The lent regions.
pub const REGION_A: PhysRange = PhysRange::new(6 * MB, 10 * MB);
/// The second lent region.
pub const REGION_B: PhysRange = PhysRange::new(12 * MB, 14 * MB);
/// Where the test kernel keeps its manifest (inside its reserved range).
pub const MANIFEST: u64 = MB;

/// The boot map drawn above.
pub fn boot_info() -> BootInfo {
    let mut b = BootInfo::new(MEM, 1);
    let mut mem = |base, size, kind, region| {
        b.push_mem(MemEntry {
            base,
            size,
            kind,
            region,
        })
        .unwrap()
    };
    mem(0, MB, MemKind::Reserved, NO_REGION);
    mem(MB, 5 * MB, MemKind::Ram, NO_REGION);
    mem(6 * MB, 4 * MB, MemKind::Cma, 0);
    mem(10 * MB, 2 * MB, MemKind::Cma, 1);
    mem(12 * MB, 2 * MB, MemKind::Cma, 2);
    for (id, flags, base, size, name) in [
        (0, 0, 6 * MB, 4 * MB, "a"),
        (1, REGION_PRIVATE, 10 * MB, 2 * MB, "p"),
        (2, 0, 12 * MB, 2 * MB, "b"),
    ] {
        let name = Name::new(name).unwrap();
        b.push_region(RegionDesc {
            id,
            flags,
            base,
            size,
            name,
        })
        .unwrap();
    }
    b.validate().unwrap();
    b
}

/// The test kernel's reserved RAM (image, metadata, manifest).
pub const KERNEL: PhysRange = PhysRange::new(MB, 2 * MB);

/// An allocator for `info` over leaked zeroed metadata.
pub fn new_mm_for(info: &BootInfo, reserved: &[PhysRange]) -> Mm<'static> {
    let l = MetaLayout::new(info).unwrap();
    let frames = Vec::leak(vec![Frame::default(); l.frames()]);
    let blocks = Vec::leak(vec![Pageblock::default(); l.pageblocks()]);
    Mm::new(info, reserved, frames, blocks).unwrap()
}

/// An allocator for the map above, the kernel's 1..2 MiB reserved.
pub fn new_mm() -> Mm<'static> {
    new_mm_for(&boot_info(), &[KERNEL])
}

/// Run `f` on a fresh allocator.
pub fn with_mm(f: impl FnOnce(&mut Mm)) {
    f(&mut new_mm());
}

/// Guest memory shared by the machine and the copy engine.
pub type SharedMem = Rc<RefCell<Vec<u8>>>;

fn read(mem: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_le_bytes(mem[at..at + 8].try_into().unwrap())
}

fn copy(mem: &mut [u8], src: u64, dst: u64) {
    mem.copy_within(src as usize..src as usize + 4096, dst as usize);
}

/// Direct map + page tables over a `Vec<u8>`; touching an unmapped page panics.
pub struct FakeMachine {
    /// All of guest memory.
    pub mem: SharedMem,
    /// Workload page id → frame.
    pub table: Vec<Option<Pfn>>,
}

impl FakeMachine {
    /// A machine with `bytes` of zeroed memory and `pages` workload slots.
    pub fn new(bytes: u64, pages: u32) -> Self {
        FakeMachine {
            mem: Rc::new(RefCell::new(vec![0; bytes as usize])),
            table: vec![None; pages as usize],
        }
    }

    fn va(&self, id: u32, offset: usize) -> u64 {
        let pfn = self.table[id as usize].unwrap_or_else(|| panic!("page {id} is not mapped"));
        pfn.gpa() + offset as u64
    }
}

impl PhysMem for FakeMachine {
    fn read_u64(&self, gpa: u64) -> u64 {
        read(&self.mem.borrow(), gpa)
    }
    fn write_u64(&mut self, gpa: u64, value: u64) {
        let at = gpa as usize;
        self.mem.borrow_mut()[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    fn copy_page(&mut self, src: Pfn, dst: Pfn) {
        copy(&mut self.mem.borrow_mut(), src.gpa(), dst.gpa());
    }
}

impl Mmu for FakeMachine {
    fn map(&mut self, id: u32, pfn: Pfn) {
        self.table[id as usize] = Some(pfn);
    }
    fn unmap(&mut self, id: u32) {
        self.table[id as usize] = None;
    }
    fn read(&self, id: u32, offset: usize) -> u64 {
        self.read_u64(self.va(id, offset))
    }
    fn write(&mut self, id: u32, offset: usize, value: u64) {
        let at = self.va(id, offset);
        self.write_u64(at, value);
    }
}

/// The VMM's copy over the same memory; can be told to fail.
pub struct FakeEngine {
    /// The same guest memory as the machine's.
    pub mem: SharedMem,
    /// Pairs pushed since the last copy.
    pub queue: Vec<MigratePair>,
    /// Pairs per copy.
    pub capacity: usize,
    /// Fail the copy call with this index (0 = the next one).
    pub fail_at: Option<usize>,
    /// Copy calls so far.
    pub calls: usize,
}

impl CopyEngine for FakeEngine {
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn push(&mut self, pair: MigratePair) {
        assert!(self.queue.len() < self.capacity, "batch above capacity");
        self.queue.push(pair);
    }
    fn copy(&mut self) -> Result<(), CopyError> {
        let call = self.calls;
        self.calls += 1;
        let pairs = std::mem::take(&mut self.queue);
        if self.fail_at == Some(call) {
            return Err(CopyError { code: 77 });
        }
        let mut mem = self.mem.borrow_mut();
        for p in pairs {
            copy(&mut mem, p.src, p.dst);
        }
        Ok(())
    }
}

/// Allocator, workload, machine and engine of one test.
pub struct World {
    /// The allocator (over leaked metadata).
    pub mm: Mm<'static>,
    /// The workload, manifest in the kernel's reserved range.
    pub wl: Workload,
    /// Direct map and page tables.
    pub hw: FakeMachine,
    /// The VMM's copy.
    pub engine: FakeEngine,
}

impl World {
    /// A fresh world on the map above whose workload targets `target` pages (2048 ids).
    pub fn new(target: u32) -> Self {
        Self::build(&boot_info(), KERNEL, MANIFEST, 2048, target)
    }

    /// A world on any map: `kernel` is reserved and holds the manifest at `manifest`.
    pub fn build(
        info: &BootInfo,
        kernel: PhysRange,
        manifest: u64,
        capacity: u32,
        target: u32,
    ) -> Self {
        let hw = FakeMachine::new(info.mem_size, capacity);
        let engine = FakeEngine {
            mem: hw.mem.clone(),
            queue: vec![],
            capacity: 64,
            fail_at: None,
            calls: 0,
        };
        World {
            mm: new_mm_for(info, &[kernel]),
            wl: Workload::new(manifest, capacity, target, 7).unwrap(),
            hw,
            engine,
        }
    }

    /// Populate to the target.
    pub fn populate(&mut self) {
        while self.wl.populate(&mut self.mm, &mut self.hw, 100) > 0 {}
    }

    /// The host's check: every present page, every byte, through the manifest.
    pub fn verify_all(&self) {
        let mem = self.hw.mem.borrow();
        for id in 0..self.wl.capacity() {
            let e = self.wl.entry(&self.hw, id);
            if e.flags & PAGE_PRESENT == 0 {
                continue;
            }
            let page = &mem[e.gpa as usize..e.gpa as usize + 4096];
            verify(page, u64::from(id), u64::from(e.generation))
                .unwrap_or_else(|m| panic!("page {id} at {:#x}: {m:?}", e.gpa));
        }
    }

    /// Manifest entries of every present page.
    pub fn present(&self) -> Vec<(u32, ManifestEntry)> {
        (0..self.wl.capacity())
            .map(|id| (id, self.wl.entry(&self.hw, id)))
            .filter(|(_, e)| e.flags & PAGE_PRESENT != 0)
            .collect()
    }
}
