//! Key layout and list encoding.
//!
//! Every SlateDB key starts with the key group (u16 big-endian) and the
//! state's tag (u32 big-endian, [`state_tag`] of its name):
//!
//! ```text
//! state:  kg | tag | varint(len key) | key | varint(len namespace) | namespace [| user key]
//! timer:  kg | tag | timestamp (sign bit flipped, big-endian) | escaped key | 00 01 | namespace
//! ```
//!
//! A key group, and any range of key groups, is therefore one contiguous
//! byte range (what a projected clone keeps), and the entries of one map
//! share the prefix before the user key. The tag is derived from the name,
//! not a registration counter, so databases written by different backend
//! instances agree on it without coordination. The part after the tag is
//! the RocksDB backend's layout.
//!
//! A list value is its elements, each `varint(len) | bytes`, so appending
//! is concatenation (the merge operator of [`ListConcat`](crate::ListConcat)).

use bytes::Bytes;
use flowstate_api::format::codec::{decode_timestamp, encode_timestamp, put_varint, Reader};
pub use flowstate_api::format::keys::{for_each_element, pack, prefix_end};
use flowstate_api::format::keys::{put_escaped, read_escaped};
use flowstate_api::keygroup::murmur3_32;
use flowstate_api::{Error, Result};

/// Scan options for reading a whole state or key group (key listings,
/// savepoints, the timer index): 1 MiB per request, four requests at once,
/// and nothing added to the block cache, instead of one block (4 KiB) per
/// request, which on an object store costs a round trip each.
pub fn bulk_scan() -> slatedb::config::ScanOptions {
    slatedb::config::ScanOptions {
        read_ahead_bytes: 1 << 20,
        max_fetch_tasks: 4,
        cache_blocks: false,
        ..slatedb::config::ScanOptions::default()
    }
}

/// Bytes before the key: key group and tag.
pub const HEADER_LEN: usize = 6;

/// The tag of the state named `name`: `murmur3_32(name, seed 0)`.
#[inline]
pub fn state_tag(name: &str) -> u32 {
    murmur3_32(name.as_bytes(), 0)
}

/// The 2-byte big-endian key-group prefix. Key groups are below 32768.
#[inline]
pub fn kg_prefix(kg: u32) -> [u8; 2] {
    (kg as u16).to_be_bytes()
}

/// `kg | tag`: the prefix of every entry of one state in one key group.
#[inline]
pub fn state_prefix(kg: u32, tag: u32) -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    out[..2].copy_from_slice(&kg_prefix(kg));
    out[2..].copy_from_slice(&tag.to_be_bytes());
    out
}

/// The key of a value or list, or the prefix of a map's entries:
/// `kg | tag | varint(len key) | key | varint(len ns) | ns`.
pub fn state_key(kg: u32, tag: u32, key: &[u8], namespace: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + key.len() + namespace.len() + 4);
    out.extend_from_slice(&state_prefix(kg, tag));
    put_varint(&mut out, key.len() as u64);
    out.extend_from_slice(key);
    put_varint(&mut out, namespace.len() as u64);
    out.extend_from_slice(namespace);
    out
}

/// The key of one map entry: [`state_key`] then the user key.
pub fn map_key(kg: u32, tag: u32, key: &[u8], namespace: &[u8], user_key: &[u8]) -> Vec<u8> {
    let mut out = state_key(kg, tag, key, namespace);
    out.extend_from_slice(user_key);
    out
}

/// A decoded state key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedKey<'a> {
    /// The key group.
    pub kg: u32,
    /// The state tag.
    pub tag: u32,
    /// The serialized key.
    pub key: &'a [u8],
    /// The serialized namespace.
    pub namespace: &'a [u8],
    /// The user key (map state), possibly empty.
    pub user_key: &'a [u8],
}

/// Decodes a state key; `what` names the state in errors.
pub fn decode_key<'a>(raw: &'a [u8], what: &str) -> Result<DecodedKey<'a>> {
    let err = |e: Error| e.context(format!("state {what}: malformed key"));
    let mut r = Reader::new(raw);
    let kg = u32::from(u16::from_be_bytes(r.array::<2>("key group").map_err(err)?));
    let tag = u32::from_be_bytes(r.array::<4>("state tag").map_err(err)?);
    let key = r.bytes("key").map_err(err)?;
    let namespace = r.bytes("namespace").map_err(err)?;
    let user_key = &raw[r.position()..];
    Ok(DecodedKey {
        kg,
        tag,
        key,
        namespace,
        user_key,
    })
}

/// The byte range holding key groups `start..end`: from `kg_prefix(start)`
/// up to, not including, `kg_prefix(end)` (`end` at most 32768, so it fits).
pub fn key_group_bytes(start: u32, end: u32) -> (Bytes, Bytes) {
    (
        Bytes::copy_from_slice(&kg_prefix(start)),
        Bytes::copy_from_slice(&kg_prefix(end)),
    )
}

/// Packs `elements` into one list value.
pub fn pack_all<E: AsRef<[u8]>>(elements: &[E]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.as_ref().len() + 2).sum());
    for e in elements {
        pack(&mut out, e.as_ref());
    }
    out
}

/// The key of a timer: `kg | tag | timestamp | escaped key | 00 01 |
/// namespace`. The key is escaped (`00` as `00 ff`, then the terminator
/// `00 01`) so that byte order within a key group is (timestamp, key
/// bytes, namespace bytes).
pub fn timer_key(kg: u32, tag: u32, timestamp: i64, key: &[u8], namespace: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + key.len() + 2 + namespace.len() + 2);
    out.extend_from_slice(&state_prefix(kg, tag));
    out.extend_from_slice(&encode_timestamp(timestamp));
    put_escaped(&mut out, key);
    out.extend_from_slice(namespace);
    out
}

/// A decoded timer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedTimer {
    /// The key group.
    pub kg: u32,
    /// When it fires.
    pub timestamp: i64,
    /// The serialized key (unescaped).
    pub key: Vec<u8>,
    /// The serialized namespace.
    pub namespace: Vec<u8>,
}

/// Decodes a key written by [`timer_key`]; `what` names the timer service in
/// errors.
pub fn decode_timer_key(raw: &[u8], what: &str) -> Result<DecodedTimer> {
    let bad = |why: &str| Error::corrupted(format!("timer service {what}: malformed timer key ({why})"));
    if raw.len() < HEADER_LEN + 10 {
        return Err(bad("too short"));
    }
    let kg = u32::from(u16::from_be_bytes([raw[0], raw[1]]));
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&raw[HEADER_LEN..HEADER_LEN + 8]);
    let (key, namespace) = read_escaped(&raw[HEADER_LEN + 8..], &format!("timer service {what}"))?;
    Ok(DecodedTimer {
        kg,
        timestamp: decode_timestamp(ts),
        key,
        namespace: namespace.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_round_trip_and_sort_by_key_group_then_state() {
        let a = map_key(3, 7, b"user-1", b"ns", b"uk");
        let d = decode_key(&a, "s").unwrap();
        assert_eq!(
            (d.kg, d.tag, d.key, d.namespace, d.user_key),
            (3, 7, &b"user-1"[..], &b"ns"[..], &b"uk"[..])
        );
        assert_eq!(&a[..6], &[0, 3, 0, 0, 0, 7]);
        assert!(a < state_key(3, 8, b"", b""), "tag 7 before tag 8");
        assert!(
            state_key(3, u32::MAX, b"z", b"") < state_key(300, 0, b"", b""),
            "key group first"
        );
        assert!(decode_key(&[0, 1, 0, 0, 0, 1, 9], "s").is_err());
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        let (start, end) = key_group_bytes(4, 32768);
        assert_eq!((&start[..], &end[..]), (&[0, 4][..], &[0x80, 0][..]));
    }

    #[test]
    fn timer_keys_sort_in_firing_order_within_a_key_group_and_round_trip() {
        let timers: Vec<(i64, &[u8], &[u8])> = vec![
            (i64::MIN, b"a", b""),
            (-5, b"b", b""),
            (0, b"", b"z"),
            (0, b"\0", b""),
            (0, b"\0\0", b""),
            (0, b"\0\x01", b""),
            (0, b"a", b""),
            (0, b"a", b"\0"),
            (0, b"a\0", b""),
            (0, b"ab", b""),
            (7, b"a", b""),
        ];
        let encoded: Vec<Vec<u8>> = timers.iter().map(|&(ts, k, ns)| timer_key(5, 9, ts, k, ns)).collect();
        for w in encoded.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        for (&(ts, k, ns), e) in timers.iter().zip(&encoded) {
            let d = decode_timer_key(e, "t").unwrap();
            assert_eq!((d.kg, d.timestamp, &d.key[..], &d.namespace[..]), (5, ts, k, ns));
        }
        let v = timer_key(2, 1, 0, b"k\0", b"n");
        assert_eq!(
            v,
            [0, 2, 0, 0, 0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, b'k', 0, 0xff, 0, 1, b'n']
        );
        for bad in [&v[..15], &v[..3]] {
            assert!(decode_timer_key(bad, "t").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lists_pack_and_unpack() {
        let packed = pack_all(&[&b"a"[..], b"", b"xyz"]);
        let mut out = Vec::new();
        for_each_element(&packed, "l", |e| {
            out.push(e.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(out, [b"a".to_vec(), vec![], b"xyz".to_vec()]);
        assert!(for_each_element(&[5, 1], "l", |_| Ok(())).is_err());
    }
}
