//! The checks behind the fuzz targets, in one place for both of their users:
//!
//! - `fuzz/fuzz_targets/<target>.rs` (cargo-fuzz, nightly): each target's body is one call
//!   to the function of the same name here;
//! - `tests/tests/fuzz_regressions.rs` (stable `cargo test`): replays the seed corpus and
//!   every input under `fuzz/regressions/<target>/` through the same functions, so a crash
//!   the fuzzer found stays fixed.
//!
//! Each check takes arbitrary bytes and panics when a property fails. The properties are
//! more than "no panic": what decodes validates and round-trips; what validates is
//! disjoint, aligned and inside RAM, and builds a boot block; the agent device never copies
//! a page into, writes, or reads memory a device owns on the guest's behalf; a parsed API
//! request is well-formed. None of them needs KVM.
//!
//! | target           | code under test                                                   |
//! |------------------|-------------------------------------------------------------------|
//! | `boot_info`      | `BootInfo::decode`, `validate`, `encode`                          |
//! | `agent_messages` | `HostMsg`, `GuestMsg`, `Ack`, `MigratePair`, `ManifestEntry`       |
//! | `config`         | `--cma` flags, `cma=` string, TOML file, `cli::parse`, `validate` |
//! | `agent_queue`    | `AgentDevice::process` on guest-written virtqueues                |
//! | `api_request`    | the control API's `read_request` and `route`                      |

mod agent_messages;
mod agent_queue;
mod api_request;
mod boot_info;
mod config;
mod seeds;

pub use agent_messages::agent_messages;
pub use agent_queue::agent_queue;
pub use api_request::api_request;
pub use boot_info::boot_info;
pub use config::config;
pub use seeds::{Seed, seeds};

/// A target's check: panics if a property fails on the input.
pub type Check = fn(&[u8]);

/// Every target: its name (the fuzz target's and the regression folder's) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("boot_info", boot_info),
    ("agent_messages", agent_messages),
    ("config", config),
    ("agent_queue", agent_queue),
    ("api_request", api_request),
];

/// Reads fixed-size little-endian values from fuzz input; past the end, everything is zero.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}
