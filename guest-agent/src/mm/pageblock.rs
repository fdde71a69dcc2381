//! Migratetypes, tracked per pageblock (2^9 pages = 2 MiB), as Linux does.
//!
//! ```text
//!  Pageblock (repr(C), 2 bytes): │ migratetype │ saved: the type before isolation │
//! ```

/// Where an allocation may be placed, per pageblock (Linux's `MIGRATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migratetype {
    /// Kernel memory that never moves. Also what zeroed metadata reads as.
    Unmovable = 0,
    /// Ordinary memory for movable pages; unmovable allocations may steal it.
    Movable = 1,
    /// Memory lent by the VMM: movable pages only, never stolen.
    Cma = 2,
    /// Being evicted: nothing new is allocated here.
    Isolate = 3,
}

/// Number of migratetypes (free lists per order).
pub(crate) const MIGRATETYPES: usize = 4;

impl Migratetype {
    /// All types, in index order.
    pub(crate) const ALL: [Migratetype; MIGRATETYPES] = [
        Migratetype::Unmovable,
        Migratetype::Movable,
        Migratetype::Cma,
        Migratetype::Isolate,
    ];

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Migratetype::Movable,
            2 => Migratetype::Cma,
            3 => Migratetype::Isolate,
            _ => Migratetype::Unmovable,
        }
    }

    /// Index of this type's free lists.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Metadata of one pageblock. Any bytes are a valid `Pageblock` (unknown values read as
/// [`Migratetype::Unmovable`]), so the kernel may view zeroed memory as `[Pageblock]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pageblock {
    mt: u8,
    saved: u8,
}

impl Pageblock {
    /// The pageblock's current migratetype.
    pub fn migratetype(&self) -> Migratetype {
        Migratetype::from_u8(self.mt)
    }

    /// The migratetype to restore when isolation ends.
    pub(crate) fn saved(&self) -> Migratetype {
        Migratetype::from_u8(self.saved)
    }

    /// Change the migratetype, remembering the old one if the new one is Isolate.
    pub(crate) fn set(&mut self, mt: Migratetype) {
        if mt == Migratetype::Isolate {
            self.saved = self.mt;
        }
        self.mt = mt as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_unmovable_and_isolation_remembers() {
        let mut b = Pageblock::default();
        assert_eq!(b.migratetype(), Migratetype::Unmovable);
        b.set(Migratetype::Cma);
        b.set(Migratetype::Isolate);
        assert_eq!(
            (b.migratetype(), b.saved()),
            (Migratetype::Isolate, Migratetype::Cma)
        );
        assert_eq!(core::mem::size_of::<Pageblock>(), 2);
        assert_eq!(
            Pageblock { mt: 200, saved: 0 }.migratetype(),
            Migratetype::Unmovable
        );
    }
}
