//! KVM memory slots over guest RAM, with holes for revoked ranges.
//!
//! An exclusive grant takes a range out of the guest's address space: the slot that
//! covers it is replaced by the pieces on either side (Firecracker's virtio-mem likewise
//! removes the KVM slot before anything else). Freeing the chunk puts the pieces back
//! together. The table keeps the set of revoked ranges and, after every change, brings the
//! slots of the affected RAM range in line with "RAM minus revoked": deletions first, then
//! additions. Between the two a guest access to a neighbouring piece exits to the VMM,
//! which completes it from guest memory (see `vstate::vcpu`); an access to a revoked range
//! is refused.

use std::collections::BTreeMap;

/// Sets or deletes one KVM memory slot (`size == 0` deletes).
pub trait SlotSink {
    /// Program slot `slot` to map `[gpa, gpa+size)` to host address `host`.
    fn set_slot(&self, slot: u32, gpa: u64, size: u64, host: u64) -> Result<(), SlotError>;
}

/// Errors of slot management.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    /// KVM refused a slot change.
    #[error("KVM_SET_USER_MEMORY_REGION slot {slot} [{gpa:#x}, +{size:#x}): {reason}")]
    Kvm {
        /// Slot number.
        slot: u32,
        /// First byte.
        gpa: u64,
        /// Size (0 = delete).
        size: u64,
        /// The OS error.
        reason: String,
    },
    /// A range not inside one RAM range.
    #[error("range [{0:#x}, +{1:#x}) is not inside guest RAM")]
    NotRam(u64, u64),
    /// Revoking a range that overlaps one already revoked.
    #[error("range [{0:#x}, +{1:#x}) is already revoked")]
    AlreadyRevoked(u64, u64),
    /// Restoring a range that is not revoked.
    #[error("range [{0:#x}, +{1:#x}) is not revoked")]
    NotRevoked(u64, u64),
    /// No free slot numbers.
    #[error("out of KVM memory slots ({0})")]
    NoSlots(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    id: u32,
    size: u64,
}

/// The guest-visible slots and revoked holes.
#[derive(Debug)]
pub struct SlotTable {
    /// RAM ranges `(start, end, host address of start)`.
    ram: Vec<(u64, u64, u64)>,
    /// Visible slots by base address.
    slots: BTreeMap<u64, Slot>,
    /// Revoked ranges by base address: base → length.
    revoked: BTreeMap<u64, u64>,
    free_ids: Vec<u32>,
    next_id: u32,
    max_slots: u32,
}

impl SlotTable {
    /// Map every RAM range `(start, end, host)` as one slot.
    pub fn new(
        ram: Vec<(u64, u64, u64)>,
        max_slots: u32,
        sink: &dyn SlotSink,
    ) -> Result<Self, SlotError> {
        let mut t = SlotTable {
            ram,
            slots: BTreeMap::new(),
            revoked: BTreeMap::new(),
            free_ids: Vec::new(),
            next_id: 0,
            max_slots,
        };
        for i in 0..t.ram.len() {
            t.sync(i, sink)?;
        }
        Ok(t)
    }

    /// Whether any byte of `[gpa, gpa+len)` is revoked.
    pub fn is_revoked(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.saturating_add(len.max(1));
        self.revoked
            .range(..end)
            .next_back()
            .is_some_and(|(&b, &l)| b + l > gpa)
    }

    /// Number of slots in use.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Revoked ranges, as `(base, len)`.
    pub fn revoked(&self) -> Vec<(u64, u64)> {
        self.revoked.iter().map(|(&b, &l)| (b, l)).collect()
    }

    /// Take `[gpa, gpa+len)` out of the guest's address space.
    pub fn revoke(&mut self, gpa: u64, len: u64, sink: &dyn SlotSink) -> Result<(), SlotError> {
        let ram = self.ram_index(gpa, len)?;
        if self.is_revoked(gpa, len) {
            return Err(SlotError::AlreadyRevoked(gpa, len));
        }
        self.revoked.insert(gpa, len);
        self.sync(ram, sink)?;
        Ok(())
    }

    /// Give `[gpa, gpa+len)` (exactly as revoked) back to the guest.
    pub fn restore(&mut self, gpa: u64, len: u64, sink: &dyn SlotSink) -> Result<(), SlotError> {
        let ram = self.ram_index(gpa, len)?;
        if self.revoked.get(&gpa) != Some(&len) {
            return Err(SlotError::NotRevoked(gpa, len));
        }
        self.revoked.remove(&gpa);
        self.sync(ram, sink)
    }

    fn ram_index(&self, gpa: u64, len: u64) -> Result<usize, SlotError> {
        let end = gpa.checked_add(len).ok_or(SlotError::NotRam(gpa, len))?;
        self.ram
            .iter()
            .position(|&(s, e, _)| len > 0 && gpa >= s && end <= e)
            .ok_or(SlotError::NotRam(gpa, len))
    }

    /// The pieces of RAM range `i` not covered by a revoked range.
    fn wanted_pieces(&self, i: usize) -> Vec<(u64, u64)> {
        let (start, end, _) = self.ram[i];
        let mut pieces = Vec::new();
        let mut cursor = start;
        for (&b, &l) in self.revoked.range(start..end) {
            if b > cursor {
                pieces.push((cursor, b - cursor));
            }
            cursor = b + l;
        }
        if end > cursor {
            pieces.push((cursor, end - cursor));
        }
        pieces
    }

    /// Bring the slots of RAM range `i` in line with its wanted pieces.
    fn sync(&mut self, i: usize, sink: &dyn SlotSink) -> Result<(), SlotError> {
        let (start, end, host) = self.ram[i];
        let wanted = self.wanted_pieces(i);
        let stale: Vec<(u64, Slot)> = self
            .slots
            .range(start..end)
            .filter(|(b, s)| !wanted.contains(&(**b, s.size)))
            .map(|(b, s)| (*b, *s))
            .collect();
        for (base, slot) in stale {
            sink.set_slot(slot.id, base, 0, 0)?;
            self.slots.remove(&base);
            self.free_ids.push(slot.id);
        }
        for (base, size) in wanted {
            if self.slots.contains_key(&base) {
                continue;
            }
            let id = self.take_id()?;
            if let Err(e) = sink.set_slot(id, base, size, host + (base - start)) {
                self.free_ids.push(id);
                return Err(e);
            }
            self.slots.insert(base, Slot { id, size });
        }
        Ok(())
    }

    fn take_id(&mut self) -> Result<u32, SlotError> {
        if let Some(id) = self.free_ids.pop() {
            return Ok(id);
        }
        if self.next_id >= self.max_slots {
            return Err(SlotError::NoSlots(self.max_slots));
        }
        self.next_id += 1;
        Ok(self.next_id - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Records the slots KVM would hold.
    #[derive(Default)]
    struct FakeKvm {
        slots: RefCell<HashMap<u32, (u64, u64, u64)>>,
        fail: RefCell<bool>,
    }

    impl SlotSink for FakeKvm {
        fn set_slot(&self, slot: u32, gpa: u64, size: u64, host: u64) -> Result<(), SlotError> {
            if *self.fail.borrow() {
                return Err(SlotError::Kvm {
                    slot,
                    gpa,
                    size,
                    reason: "injected".into(),
                });
            }
            let mut s = self.slots.borrow_mut();
            if size == 0 {
                assert!(s.remove(&slot).is_some(), "deleting unknown slot {slot}");
            } else {
                assert!(
                    s.values().all(|&(g, l, _)| gpa + size <= g || g + l <= gpa),
                    "overlapping slots"
                );
                assert!(
                    s.insert(slot, (gpa, size, host)).is_none(),
                    "slot {slot} reused"
                );
            }
            Ok(())
        }
    }

    impl FakeKvm {
        fn mapped(&self, gpa: u64) -> Option<u64> {
            self.slots
                .borrow()
                .values()
                .find(|&&(g, l, _)| gpa >= g && gpa < g + l)
                .map(|&(g, _, h)| h + gpa - g)
        }
    }

    const M: u64 = 1 << 20;

    fn table(kvm: &FakeKvm) -> SlotTable {
        SlotTable::new(vec![(0, 256 * M, 0x7000_0000_0000)], 32, kvm).unwrap()
    }

    #[test]
    fn revoke_splits_and_restore_merges() {
        let kvm = FakeKvm::default();
        let mut t = table(&kvm);
        assert_eq!(t.slot_count(), 1);
        t.revoke(64 * M, 4 * M, &kvm).unwrap();
        assert_eq!(t.slot_count(), 2);
        assert_eq!(kvm.mapped(64 * M), None);
        assert_eq!(kvm.mapped(68 * M), Some(0x7000_0000_0000 + 68 * M));
        assert_eq!(kvm.mapped(64 * M - 1), Some(0x7000_0000_0000 + 64 * M - 1));
        assert!(t.is_revoked(67 * M, 1));
        assert!(!t.is_revoked(68 * M, 1));
        // An adjacent hole, then restore in the other order.
        t.revoke(68 * M, 4 * M, &kvm).unwrap();
        assert_eq!(t.slot_count(), 2);
        t.restore(64 * M, 4 * M, &kvm).unwrap();
        assert_eq!(kvm.mapped(64 * M), Some(0x7000_0000_0000 + 64 * M));
        assert_eq!(kvm.mapped(68 * M), None);
        t.restore(68 * M, 4 * M, &kvm).unwrap();
        assert_eq!(t.slot_count(), 1);
        assert_eq!(kvm.slots.borrow().len(), 1);
    }

    #[test]
    fn holes_at_the_edges() {
        let kvm = FakeKvm::default();
        let mut t = table(&kvm);
        t.revoke(0, M, &kvm).unwrap();
        t.revoke(255 * M, M, &kvm).unwrap();
        assert_eq!(t.slot_count(), 1);
        assert_eq!(kvm.mapped(0), None);
        assert_eq!(kvm.mapped(255 * M), None);
        assert!(kvm.mapped(M).is_some());
        t.restore(0, M, &kvm).unwrap();
        t.restore(255 * M, M, &kvm).unwrap();
        assert_eq!(t.slot_count(), 1);
    }

    #[test]
    fn bad_requests() {
        let kvm = FakeKvm::default();
        let mut t = table(&kvm);
        assert_eq!(
            t.revoke(255 * M, 2 * M, &kvm),
            Err(SlotError::NotRam(255 * M, 2 * M))
        );
        assert!(t.revoke(u64::MAX - 4095, 4096, &kvm).is_err());
        assert!(t.revoke(0, 0, &kvm).is_err());
        t.revoke(8 * M, M, &kvm).unwrap();
        assert!(matches!(
            t.revoke(8 * M + 4096, 4096, &kvm),
            Err(SlotError::AlreadyRevoked(..))
        ));
        assert!(matches!(
            t.restore(8 * M, 2 * M, &kvm),
            Err(SlotError::NotRevoked(..))
        ));
        assert!(matches!(
            t.restore(9 * M, M, &kvm),
            Err(SlotError::NotRevoked(..))
        ));
    }

    #[test]
    fn a_failed_revoke_stays_revoked_until_rolled_back() {
        let kvm = FakeKvm::default();
        let mut t = table(&kvm);
        *kvm.fail.borrow_mut() = true;
        assert!(t.revoke(64 * M, M, &kvm).is_err());
        // Conservative: vCPU exits into the range are refused until the caller rolls back.
        assert!(t.is_revoked(64 * M, M));
        *kvm.fail.borrow_mut() = false;
        t.restore(64 * M, M, &kvm).unwrap();
        assert!(!t.is_revoked(64 * M, M));
        assert_eq!(t.slot_count(), 1);
        assert!(kvm.mapped(64 * M).is_some());
    }

    #[test]
    fn running_out_of_slots_is_an_error() {
        let kvm = FakeKvm::default();
        let mut t = SlotTable::new(vec![(0, 256 * M, 0)], 3, &kvm).unwrap();
        t.revoke(10 * M, M, &kvm).unwrap();
        t.revoke(20 * M, M, &kvm).unwrap();
        assert_eq!(t.revoke(30 * M, M, &kvm), Err(SlotError::NoSlots(3)));
    }
}
