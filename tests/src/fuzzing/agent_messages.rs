//! `agent_messages`: every decoder of the agent protocol.

use protocol::msg::{Ack, GuestMsg, HostMsg, MIGRATE_PAIR_SIZE, MSG_SIZE, MigratePair};
use protocol::page::{MANIFEST_ENTRY_SIZE, ManifestEntry};

/// Every decoder of the agent protocol on the input. Whatever decodes re-encodes to a
/// record that decodes to the same value (and encoding is canonical); no record is both a
/// host and a guest message; `Ack`s round-trip; `MigratePair` and `ManifestEntry` decode
/// entry `i` from exactly bytes `16 i .. 16 i + 16`, or fail because those are not there.
pub fn agent_messages(data: &[u8]) {
    let host = HostMsg::decode(data);
    let guest = GuestMsg::decode(data);
    assert!(
        host.is_err() || guest.is_err(),
        "a record decodes as both a host and a guest message"
    );
    if let Ok(m) = host {
        let e = m.encode();
        assert_eq!(HostMsg::decode(&e), Ok(m));
        assert_eq!(e[..4], data[..4], "kind changed");
        assert_eq!(e[8..16], data[8..16], "request id changed");
    }
    if let Ok(m) = guest {
        let e = m.encode();
        assert_eq!(GuestMsg::decode(&e), Ok(m));
        assert_eq!(e[..4], data[..4], "kind changed");
        if let Some(req) = m.answers() {
            assert_eq!(req.to_le_bytes(), e[8..16]);
        }
        if let Ok(h) = HostMsg::decode(&data[data.len().min(MSG_SIZE)..]) {
            let _ = m.is_answer_to(&h);
        }
    }
    if let Ok(a) = Ack::decode(data) {
        let e = a.encode();
        assert_eq!(Ack::decode(&e), Ok(a));
        assert_eq!(e[..8], data[..8], "status code or count changed");
    }
    let small = usize::from(data.last().copied().unwrap_or(0) % 8);
    for i in [small, usize::MAX / 16 - small, usize::MAX - small] {
        check_record_at(data, i, MIGRATE_PAIR_SIZE, |d, i| {
            MigratePair::decode(d, i).map(|p| p.encode())
        });
        check_record_at(data, i, MANIFEST_ENTRY_SIZE, |d, i| {
            ManifestEntry::decode(d, i).map(|e| e.encode())
        });
    }
}

/// Entry `i` of an array of `size`-byte records: decodes iff it is inside `data`, and then
/// re-encodes to exactly its bytes.
fn check_record_at<const N: usize>(
    data: &[u8],
    i: usize,
    size: usize,
    decode_encode: impl Fn(&[u8], usize) -> Result<[u8; N], protocol::DecodeError>,
) {
    let range = i
        .checked_mul(size)
        .and_then(|off| Some(off..off.checked_add(size)?));
    let inside = range.clone().and_then(|r| data.get(r));
    match (decode_encode(data, i), inside) {
        (Ok(encoded), Some(bytes)) => assert_eq!(&encoded[..], bytes),
        (Err(_), None) => {}
        (Ok(_), None) => panic!("entry {i} decoded from outside the input"),
        (Err(e), Some(_)) => panic!("entry {i} is inside the input but failed: {e}"),
    }
}
