//! Key layout and list encoding.
//!
//! Every RocksDB key is `key group (u16 big-endian) | varint(len key) | key |
//! varint(len namespace) | namespace`, followed by the user key for map
//! state. A key group is therefore one contiguous key range, and the
//! entries of one map share the prefix before the user key.
//!
//! A list value is its elements, each `varint(len) | bytes`, so appending
//! is concatenation: the merge operator never decodes anything unless TTL
//! asks it to drop expired elements.

use flowstate_api::format::codec::{put_varint, Reader};
pub use flowstate_api::format::keys::{elements, for_each_element, pack, prefix_end};
use flowstate_api::format::keys::{put_escaped, read_escaped};
use flowstate_api::{Error, Result};

/// The 2-byte big-endian key-group prefix.
#[inline]
pub fn kg_prefix(kg: u32) -> [u8; 2] {
    (kg as u16).to_be_bytes()
}

/// Appends `varint(len key) | key` for `kg`.
#[inline]
pub fn key_part(out: &mut Vec<u8>, kg: u32, key: &[u8]) {
    out.clear();
    out.extend_from_slice(&kg_prefix(kg));
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key);
}

/// Appends `varint(len ns) | ns`.
#[inline]
pub fn put_namespace(out: &mut Vec<u8>, namespace: &[u8]) {
    put_varint(out, namespace.len() as u64);
    out.extend_from_slice(namespace);
}

/// A decoded RocksDB key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedKey<'a> {
    /// The key group.
    pub kg: u32,
    /// The serialized key.
    pub key: &'a [u8],
    /// The serialized namespace.
    pub namespace: &'a [u8],
    /// The user key (map state), possibly empty.
    pub user_key: &'a [u8],
    /// Length of the (key group, key, namespace) prefix.
    pub prefix_len: usize,
}

/// Decodes a RocksDB key; `what` names the state in errors.
pub fn decode_key<'a>(raw: &'a [u8], what: &str) -> Result<DecodedKey<'a>> {
    let err = |e: Error| e.context(format!("state {what}: malformed key"));
    let mut r = Reader::new(raw);
    let kg = u32::from(u16::from_be_bytes(r.array::<2>("key group").map_err(err)?));
    let key = r.bytes("key").map_err(err)?;
    let namespace = r.bytes("namespace").map_err(err)?;
    let prefix_len = r.position();
    Ok(DecodedKey {
        kg,
        key,
        namespace,
        user_key: &raw[prefix_len..],
        prefix_len,
    })
}

/// Appends the RocksDB key of a timer: `key group (u16 big-endian) |
/// timestamp (sign bit flipped, big-endian) | escaped key | namespace`. The
/// key is escaped (`00` as `00 ff`, then the terminator `00 01`) so that
/// byte order is (key group, timestamp, key bytes, namespace bytes), the
/// total order timers fire in.
pub fn timer_key(out: &mut Vec<u8>, kg: u32, timestamp: i64, key: &[u8], namespace: &[u8]) {
    out.clear();
    out.extend_from_slice(&kg_prefix(kg));
    out.extend_from_slice(&flowstate_api::format::codec::encode_timestamp(timestamp));
    put_escaped(out, key);
    out.extend_from_slice(namespace);
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

/// Decodes a key written by [`timer_key`]; `what` names the state in errors.
pub fn decode_timer_key(raw: &[u8], what: &str) -> Result<DecodedTimer> {
    let bad = |why: &str| Error::corrupted(format!("timer service {what}: malformed timer key ({why})"));
    if raw.len() < 12 {
        return Err(bad("too short"));
    }
    let kg = u32::from(u16::from_be_bytes([raw[0], raw[1]]));
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&raw[2..10]);
    let (key, namespace) = read_escaped(&raw[10..], &format!("timer service {what}"))?;
    Ok(DecodedTimer {
        kg,
        timestamp: flowstate_api::format::codec::decode_timestamp(ts),
        key,
        namespace: namespace.to_vec(),
    })
}

/// The key group of any RocksDB key (its first two bytes).
pub fn key_group_of(raw: &[u8], what: &str) -> Result<u32> {
    match raw {
        [a, b, ..] => Ok(u32::from(u16::from_be_bytes([*a, *b]))),
        _ => Err(Error::corrupted(format!(
            "state {what}: a key shorter than its key group"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keys_sort_in_firing_order_and_round_trip() {
        let timers: Vec<(u32, i64, &[u8], &[u8])> = vec![
            (0, -5, b"b", b""),
            (0, 0, b"", b"z"),
            (0, 0, b"\0", b""),
            (0, 0, b"\0\0", b""),
            (0, 0, b"\0\x01", b""),
            (0, 0, b"a", b""),
            (0, 0, b"a", b"\0"),
            (0, 0, b"a\0", b""),
            (0, 0, b"ab", b""),
            (0, 7, b"a", b""),
            (1, i64::MIN, b"a", b""),
        ];
        let encoded: Vec<Vec<u8>> = timers
            .iter()
            .map(|&(kg, ts, k, ns)| {
                let mut v = Vec::new();
                timer_key(&mut v, kg, ts, k, ns);
                v
            })
            .collect();
        for w in encoded.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        for (&(kg, ts, k, ns), e) in timers.iter().zip(&encoded) {
            let d = decode_timer_key(e, "t").unwrap();
            assert_eq!((d.kg, d.timestamp, &d.key[..], &d.namespace[..]), (kg, ts, k, ns));
        }
        let mut v = Vec::new();
        timer_key(&mut v, 2, 0, b"k\0", b"n");
        assert_eq!(v, [0, 2, 0x80, 0, 0, 0, 0, 0, 0, 0, b'k', 0, 0xff, 0, 1, b'n']);
        for bad in [&v[..11], &[0u8, 2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 2][..], &v[..3]] {
            assert!(decode_timer_key(bad, "t").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_round_trip_and_sort_by_key_group() {
        let mut a = Vec::new();
        key_part(&mut a, 3, b"user-1");
        put_namespace(&mut a, b"ns");
        a.extend_from_slice(b"uk");
        let d = decode_key(&a, "s").unwrap();
        assert_eq!(
            (d.kg, d.key, d.namespace, d.user_key),
            (3, &b"user-1"[..], &b"ns"[..], &b"uk"[..])
        );
        let mut b = Vec::new();
        key_part(&mut b, 300, b"");
        assert!(a < b, "key group 3 sorts before 300");
        assert!(decode_key(&[0, 1, 9], "s").is_err());
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn lists_pack_and_unpack() {
        let mut l = Vec::new();
        pack(&mut l, b"a");
        pack(&mut l, b"");
        pack(&mut l, b"ccc");
        assert_eq!(elements(&l, "s").unwrap(), [&b"a"[..], b"", b"ccc"]);
        assert!(elements(&[5, 1], "s").is_err());
    }
}
