//! The agent channel's messages.
//!
//! Every message is one 64-byte little-endian record:
//!
//! ```text
//! offset  size  field
//!      0     4  kind
//!      4     4  status or flags (per kind)
//!      8     8  request id
//!     16    48  six u64 arguments (per kind, unused ones zero)
//! ```
//!
//! The channel is a virtio device with two queues:
//! - queue 0, *hostq*: the guest posts device-writable buffers; the VMM writes a
//!   [`HostMsg`] into one and returns it through the used ring (irqfd interrupt);
//! - queue 1, *guestq*: the guest posts chains `[readable GuestMsg][readable payload?]
//!   [writable 16-byte Ack]`; the VMM handles the message, fills the [`Ack`] and returns
//!   the chain. A [`GuestMsg::Migrate`] carries its page pairs as the payload:
//!   `count` records of [`MIGRATE_PAIR_SIZE`] bytes.

use crate::wire::{DecodeError, get_u32, get_u64, put_u32, put_u64};

/// Size of every message record.
pub const MSG_SIZE: usize = 64;
/// Size of the acknowledgement the VMM writes for every guestq chain.
pub const ACK_SIZE: usize = 16;
/// Size of one migration pair in a Migrate payload: `{src gpa u64, dst gpa u64}`.
pub const MIGRATE_PAIR_SIZE: usize = 16;
/// At most this many pairs in one Migrate message (a 64 KiB payload).
pub const MAX_MIGRATE_PAIRS: usize = 4096;
/// The agent protocol version ([`GuestMsg::Hello`] carries it).
pub const AGENT_VERSION: u32 = 1;

/// Evict flag: the VMM offers to copy pages for the guest ([`GuestMsg::Migrate`]).
pub const EVICT_HOST_COPY: u32 = 1;
/// Query flag: stop the workload (no rewrites, no new pages) once the report is sent.
pub const QUERY_QUIESCE: u32 = 1;
/// Query flag: resume the workload.
pub const QUERY_RESUME: u32 = 2;

/// Message kinds (the record's first word): VMM → guest.
pub const KIND_EVICT: u32 = 0x101;
/// See [`HostMsg::Return`].
pub const KIND_RETURN: u32 = 0x102;
/// See [`HostMsg::Cancel`].
pub const KIND_CANCEL: u32 = 0x103;
/// See [`HostMsg::Query`].
pub const KIND_QUERY: u32 = 0x104;
/// See [`HostMsg::Probe`].
pub const KIND_PROBE: u32 = 0x105;
/// See [`HostMsg::Shutdown`].
pub const KIND_SHUTDOWN: u32 = 0x106;
/// Message kinds: guest → VMM. See [`GuestMsg::Hello`].
pub const KIND_HELLO: u32 = 0x201;
/// See [`GuestMsg::Evicted`].
pub const KIND_EVICTED: u32 = 0x202;
/// See [`GuestMsg::Returned`].
pub const KIND_RETURNED: u32 = 0x203;
/// See [`GuestMsg::Migrate`].
pub const KIND_MIGRATE: u32 = 0x204;
/// See [`GuestMsg::Report`].
pub const KIND_REPORT: u32 = 0x205;
/// See [`GuestMsg::Cancelled`].
pub const KIND_CANCELLED: u32 = 0x206;
/// See [`GuestMsg::Probed`].
pub const KIND_PROBED: u32 = 0x207;

/// Status codes on the wire ([`Status`]): Done.
pub const STATUS_DONE: u32 = 0;
/// [`Status::Busy`]; the detail word is the first busy address.
pub const STATUS_BUSY: u32 = 1;
/// [`Status::NoMemory`].
pub const STATUS_NO_MEMORY: u32 = 2;
/// [`Status::Invalid`].
pub const STATUS_INVALID: u32 = 3;
/// [`Status::Cancelled`].
pub const STATUS_CANCELLED: u32 = 4;
/// [`Status::Failed`]; the detail word is the guest's error code.
pub const STATUS_FAILED: u32 = 5;

/// The outcome of a guest-side operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done: for Evict, the whole range is free and isolated from the guest allocator.
    Done,
    /// A page that cannot move (pinned, unmovable) sits at `first_busy`.
    Busy {
        /// Guest-physical address of the first page that would not move.
        first_busy: u64,
    },
    /// No free destination page outside the range.
    NoMemory,
    /// The request made no sense to the guest (range outside a lent region, ...).
    Invalid,
    /// The request was cancelled before it completed.
    Cancelled,
    /// Any other failure, with a guest-defined code.
    Failed {
        /// Guest-defined error code.
        code: u64,
    },
}

impl Status {
    fn encode(self) -> (u32, u64) {
        match self {
            Status::Done => (STATUS_DONE, 0),
            Status::Busy { first_busy } => (STATUS_BUSY, first_busy),
            Status::NoMemory => (STATUS_NO_MEMORY, 0),
            Status::Invalid => (STATUS_INVALID, 0),
            Status::Cancelled => (STATUS_CANCELLED, 0),
            Status::Failed { code } => (STATUS_FAILED, code),
        }
    }

    fn decode(code: u32, detail: u64) -> Result<Self, DecodeError> {
        Ok(match code {
            STATUS_DONE => Status::Done,
            STATUS_BUSY => Status::Busy { first_busy: detail },
            STATUS_NO_MEMORY => Status::NoMemory,
            STATUS_INVALID => Status::Invalid,
            STATUS_CANCELLED => Status::Cancelled,
            STATUS_FAILED => Status::Failed { code: detail },
            _ => return Err(DecodeError::BadField("status")),
        })
    }
}

/// A request from the VMM to the guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMsg {
    /// Isolate `[gpa, gpa+len)`, migrate every page out, answer [`GuestMsg::Evicted`].
    Evict {
        /// Request id.
        req: u64,
        /// First byte of the range.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// [`EVICT_HOST_COPY`] or zero.
        flags: u32,
    },
    /// Give a previously evicted range back to the guest's allocator as CMA.
    Return {
        /// Request id.
        req: u64,
        /// First byte of the range.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Abandon request `target`: undo it if it was started or completed.
    Cancel {
        /// Request id.
        req: u64,
        /// The request to undo.
        target: u64,
    },
    /// Ask for a [`GuestMsg::Report`]; flags [`QUERY_QUIESCE`] / [`QUERY_RESUME`].
    Query {
        /// Request id.
        req: u64,
        /// Query flags.
        flags: u32,
    },
    /// Diagnostic: read the u64 at guest-physical `gpa` through the guest's own mapping and
    /// answer [`GuestMsg::Probed`] (how tests see what the guest can see).
    Probe {
        /// Request id.
        req: u64,
        /// Address to read (8-byte aligned).
        gpa: u64,
    },
    /// Check every workload page and exit (status 0, or an integrity error).
    Shutdown {
        /// Request id.
        req: u64,
    },
}

/// What the guest's workload and allocator look like (answer to [`HostMsg::Query`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// Guest-physical address of the workload manifest ([`crate::page::ManifestEntry`]s).
    pub manifest_gpa: u64,
    /// Number of manifest entries.
    pub manifest_len: u64,
    /// Workload pages currently present.
    pub pages_present: u64,
    /// Workload pages currently pinned.
    pub pages_pinned: u64,
    /// Free pages in the guest allocator.
    pub free_pages: u64,
    /// Pages the guest has migrated since boot.
    pub pages_migrated: u64,
}

/// A message from the guest agent to the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMsg {
    /// First message after the driver is up.
    Hello {
        /// [`AGENT_VERSION`].
        version: u32,
        /// Feature bits (reserved, zero).
        features: u64,
    },
    /// Answer to [`HostMsg::Evict`].
    Evicted {
        /// The Evict's request id.
        req: u64,
        /// Outcome.
        status: Status,
        /// Pages migrated out of the range.
        migrated: u64,
    },
    /// Answer to [`HostMsg::Return`].
    Returned {
        /// The Return's request id.
        req: u64,
        /// Outcome.
        status: Status,
    },
    /// Ask the VMM to copy `count` pages (pairs in the payload) for eviction `req`.
    Migrate {
        /// The Evict being served.
        req: u64,
        /// Number of pairs in the payload.
        count: u32,
    },
    /// Answer to [`HostMsg::Query`].
    Report {
        /// The Query's request id.
        req: u64,
        /// The figures.
        report: Report,
    },
    /// Answer to [`HostMsg::Cancel`].
    Cancelled {
        /// The Cancel's request id.
        req: u64,
        /// The request that was undone.
        target: u64,
        /// Outcome.
        status: Status,
    },
    /// Answer to [`HostMsg::Probe`].
    Probed {
        /// The Probe's request id.
        req: u64,
        /// The value the guest read.
        value: u64,
    },
}

struct Record([u8; MSG_SIZE]);

impl Record {
    fn new(kind: u32, word: u32, req: u64, args: [u64; 6]) -> Self {
        let mut b = [0u8; MSG_SIZE];
        put_u32(&mut b, 0, kind);
        put_u32(&mut b, 4, word);
        put_u64(&mut b, 8, req);
        for (i, a) in args.iter().enumerate() {
            put_u64(&mut b, 16 + 8 * i, *a);
        }
        Record(b)
    }
}

struct Fields {
    kind: u32,
    word: u32,
    req: u64,
    args: [u64; 6],
}

fn fields(buf: &[u8]) -> Result<Fields, DecodeError> {
    if buf.len() < MSG_SIZE {
        return Err(DecodeError::Truncated {
            needed: MSG_SIZE,
            got: buf.len(),
        });
    }
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        *a = get_u64(buf, 16 + 8 * i)?;
    }
    Ok(Fields {
        kind: get_u32(buf, 0)?,
        word: get_u32(buf, 4)?,
        req: get_u64(buf, 8)?,
        args,
    })
}

impl HostMsg {
    /// Encode as one record.
    pub fn encode(&self) -> [u8; MSG_SIZE] {
        match *self {
            HostMsg::Evict {
                req,
                gpa,
                len,
                flags,
            } => Record::new(KIND_EVICT, flags, req, [gpa, len, 0, 0, 0, 0]),
            HostMsg::Return { req, gpa, len } => {
                Record::new(KIND_RETURN, 0, req, [gpa, len, 0, 0, 0, 0])
            }
            HostMsg::Cancel { req, target } => {
                Record::new(KIND_CANCEL, 0, req, [target, 0, 0, 0, 0, 0])
            }
            HostMsg::Query { req, flags } => Record::new(KIND_QUERY, flags, req, [0; 6]),
            HostMsg::Probe { req, gpa } => Record::new(KIND_PROBE, 0, req, [gpa, 0, 0, 0, 0, 0]),
            HostMsg::Shutdown { req } => Record::new(KIND_SHUTDOWN, 0, req, [0; 6]),
        }
        .0
    }

    /// Decode one record.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let f = fields(buf)?;
        let a = f.args;
        Ok(match f.kind {
            KIND_EVICT => HostMsg::Evict {
                req: f.req,
                gpa: a[0],
                len: a[1],
                flags: f.word,
            },
            KIND_RETURN => HostMsg::Return {
                req: f.req,
                gpa: a[0],
                len: a[1],
            },
            KIND_CANCEL => HostMsg::Cancel {
                req: f.req,
                target: a[0],
            },
            KIND_QUERY => HostMsg::Query {
                req: f.req,
                flags: f.word,
            },
            KIND_PROBE => HostMsg::Probe {
                req: f.req,
                gpa: a[0],
            },
            KIND_SHUTDOWN => HostMsg::Shutdown { req: f.req },
            k => return Err(DecodeError::UnknownKind(k)),
        })
    }

    /// The request id.
    pub fn req(&self) -> u64 {
        match *self {
            HostMsg::Evict { req, .. }
            | HostMsg::Return { req, .. }
            | HostMsg::Cancel { req, .. }
            | HostMsg::Query { req, .. }
            | HostMsg::Probe { req, .. }
            | HostMsg::Shutdown { req } => req,
        }
    }
}

impl GuestMsg {
    /// The request this message answers (`None` for Hello and Migrate, which are the
    /// guest's own).
    pub fn answers(&self) -> Option<u64> {
        match *self {
            GuestMsg::Evicted { req, .. }
            | GuestMsg::Returned { req, .. }
            | GuestMsg::Report { req, .. }
            | GuestMsg::Cancelled { req, .. }
            | GuestMsg::Probed { req, .. } => Some(req),
            GuestMsg::Hello { .. } | GuestMsg::Migrate { .. } => None,
        }
    }

    /// Whether this is the kind of answer `request` expects.
    pub fn is_answer_to(&self, request: &HostMsg) -> bool {
        self.answers() == Some(request.req())
            && matches!(
                (request, self),
                (HostMsg::Evict { .. }, GuestMsg::Evicted { .. })
                    | (HostMsg::Return { .. }, GuestMsg::Returned { .. })
                    | (HostMsg::Query { .. }, GuestMsg::Report { .. })
                    | (HostMsg::Cancel { .. }, GuestMsg::Cancelled { .. })
                    | (HostMsg::Probe { .. }, GuestMsg::Probed { .. })
            )
    }

    /// Encode as one record.
    pub fn encode(&self) -> [u8; MSG_SIZE] {
        match *self {
            GuestMsg::Hello { version, features } => {
                Record::new(KIND_HELLO, version, 0, [features, 0, 0, 0, 0, 0])
            }
            GuestMsg::Evicted {
                req,
                status,
                migrated,
            } => {
                let (code, detail) = status.encode();
                Record::new(KIND_EVICTED, code, req, [detail, migrated, 0, 0, 0, 0])
            }
            GuestMsg::Returned { req, status } => {
                let (code, detail) = status.encode();
                Record::new(KIND_RETURNED, code, req, [detail, 0, 0, 0, 0, 0])
            }
            GuestMsg::Migrate { req, count } => Record::new(KIND_MIGRATE, count, req, [0; 6]),
            GuestMsg::Report { req, report: r } => Record::new(
                KIND_REPORT,
                0,
                req,
                [
                    r.manifest_gpa,
                    r.manifest_len,
                    r.pages_present,
                    r.pages_pinned,
                    r.free_pages,
                    r.pages_migrated,
                ],
            ),
            GuestMsg::Cancelled {
                req,
                target,
                status,
            } => {
                let (code, detail) = status.encode();
                Record::new(KIND_CANCELLED, code, req, [target, detail, 0, 0, 0, 0])
            }
            GuestMsg::Probed { req, value } => {
                Record::new(KIND_PROBED, 0, req, [value, 0, 0, 0, 0, 0])
            }
        }
        .0
    }

    /// Decode one record.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let f = fields(buf)?;
        let a = f.args;
        Ok(match f.kind {
            KIND_HELLO => GuestMsg::Hello {
                version: f.word,
                features: a[0],
            },
            KIND_EVICTED => GuestMsg::Evicted {
                req: f.req,
                status: Status::decode(f.word, a[0])?,
                migrated: a[1],
            },
            KIND_RETURNED => GuestMsg::Returned {
                req: f.req,
                status: Status::decode(f.word, a[0])?,
            },
            KIND_MIGRATE => GuestMsg::Migrate {
                req: f.req,
                count: f.word,
            },
            KIND_REPORT => GuestMsg::Report {
                req: f.req,
                report: Report {
                    manifest_gpa: a[0],
                    manifest_len: a[1],
                    pages_present: a[2],
                    pages_pinned: a[3],
                    free_pages: a[4],
                    pages_migrated: a[5],
                },
            },
            KIND_CANCELLED => GuestMsg::Cancelled {
                req: f.req,
                target: a[0],
                status: Status::decode(f.word, a[1])?,
            },
            KIND_PROBED => GuestMsg::Probed {
                req: f.req,
                value: a[0],
            },
            k => return Err(DecodeError::UnknownKind(k)),
        })
    }
}

/// The VMM's answer to a guestq chain, written into its device-writable part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// [`Status::Done`] if the message was accepted (for Migrate: every pair copied).
    pub status: Status,
    /// For Migrate: pairs copied before the first failure.
    pub done: u32,
}

impl Ack {
    /// Encode as [`ACK_SIZE`] bytes: `{status u32, done u32, detail u64}`.
    pub fn encode(&self) -> [u8; ACK_SIZE] {
        let (code, detail) = self.status.encode();
        let mut b = [0u8; ACK_SIZE];
        put_u32(&mut b, 0, code);
        put_u32(&mut b, 4, self.done);
        put_u64(&mut b, 8, detail);
        b
    }

    /// Decode [`ACK_SIZE`] bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Ok(Ack {
            status: Status::decode(get_u32(buf, 0)?, get_u64(buf, 8)?)?,
            done: get_u32(buf, 4)?,
        })
    }
}

/// One page copy of a Migrate payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigratePair {
    /// Source page (inside the range being evicted).
    pub src: u64,
    /// Destination page (outside it).
    pub dst: u64,
}

impl MigratePair {
    /// Encode as [`MIGRATE_PAIR_SIZE`] bytes.
    pub fn encode(&self) -> [u8; MIGRATE_PAIR_SIZE] {
        let mut b = [0u8; MIGRATE_PAIR_SIZE];
        put_u64(&mut b, 0, self.src);
        put_u64(&mut b, 8, self.dst);
        b
    }

    /// Decode pair `i` of a payload.
    pub fn decode(payload: &[u8], i: usize) -> Result<Self, DecodeError> {
        let off = i
            .checked_mul(MIGRATE_PAIR_SIZE)
            .ok_or(DecodeError::BadField("pair index"))?;
        Ok(MigratePair {
            src: get_u64(payload, off)?,
            dst: get_u64(payload, off + 8)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_messages_round_trip() {
        let msgs = [
            HostMsg::Evict {
                req: 1,
                gpa: 0x800_0000,
                len: 0x20_0000,
                flags: EVICT_HOST_COPY,
            },
            HostMsg::Return {
                req: 2,
                gpa: 0x800_0000,
                len: 0x1000,
            },
            HostMsg::Cancel { req: 3, target: 1 },
            HostMsg::Query {
                req: 4,
                flags: QUERY_QUIESCE,
            },
            HostMsg::Probe {
                req: 5,
                gpa: 0x1000,
            },
            HostMsg::Shutdown { req: 6 },
        ];
        for m in msgs {
            assert_eq!(HostMsg::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn guest_messages_round_trip() {
        let msgs = [
            GuestMsg::Hello {
                version: AGENT_VERSION,
                features: 0,
            },
            GuestMsg::Evicted {
                req: 9,
                status: Status::Busy {
                    first_busy: 0x1234000,
                },
                migrated: 17,
            },
            GuestMsg::Returned {
                req: 10,
                status: Status::Done,
            },
            GuestMsg::Migrate {
                req: 9,
                count: 4096,
            },
            GuestMsg::Report {
                req: 11,
                report: Report {
                    manifest_gpa: 0x20_0000,
                    manifest_len: 100,
                    pages_present: 99,
                    pages_pinned: 2,
                    free_pages: 1000,
                    pages_migrated: 5,
                },
            },
            GuestMsg::Cancelled {
                req: 12,
                target: 9,
                status: Status::Failed { code: 7 },
            },
            GuestMsg::Probed {
                req: 13,
                value: u64::MAX,
            },
        ];
        for m in msgs {
            assert_eq!(GuestMsg::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(GuestMsg::decode(&[]).is_err());
        assert!(GuestMsg::decode(&[0xff; 63]).is_err());
        assert_eq!(
            GuestMsg::decode(&[0xff; 64]),
            Err(DecodeError::UnknownKind(0xffff_ffff))
        );
        let mut bad_status = GuestMsg::Returned {
            req: 1,
            status: Status::Done,
        }
        .encode();
        bad_status[4] = 99;
        assert_eq!(
            GuestMsg::decode(&bad_status),
            Err(DecodeError::BadField("status"))
        );
        assert!(Ack::decode(&[0u8; 8]).is_err());
        assert!(MigratePair::decode(&[0u8; 16], 1).is_err());
        assert!(MigratePair::decode(&[0u8; 16], usize::MAX).is_err());
    }

    #[test]
    fn ack_and_pairs_round_trip() {
        let a = Ack {
            status: Status::Busy { first_busy: 0x5000 },
            done: 3,
        };
        assert_eq!(Ack::decode(&a.encode()), Ok(a));
        let p = MigratePair {
            src: 0x1000,
            dst: 0x2000,
        };
        assert_eq!(MigratePair::decode(&p.encode(), 0), Ok(p));
    }
}
