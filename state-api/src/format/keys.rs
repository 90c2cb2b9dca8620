//! Byte layouts the native backends share inside their keys and values:
//! packed list values, escaped keys (timer keys sort by key bytes, then
//! namespace) and the end of a key prefix.

use crate::error::{Error, Result};
use crate::format::codec::{put_varint, Reader};

/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Appends one list element (`varint length | bytes`); a list value is its
/// elements one after the other, so appending is concatenating.
#[inline]
pub fn pack(out: &mut Vec<u8>, element: &[u8]) {
    put_varint(out, element.len() as u64);
    out.extend_from_slice(element);
}

/// Calls `f` with each element of a packed list, in order (nothing is
/// collected); `what` names the state in errors.
#[inline]
pub fn for_each_element(packed: &[u8], what: &str, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut r = Reader::new(packed);
    while !r.is_empty() {
        f(r.bytes("list element")
            .map_err(|e| e.context(format!("state {what}: malformed list")))?)?;
    }
    Ok(())
}

/// The elements of a packed list; `what` names the state in errors.
pub fn elements<'a>(packed: &'a [u8], what: &str) -> Result<Vec<&'a [u8]>> {
    let mut r = Reader::new(packed);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(
            r.bytes("list element")
                .map_err(|e| e.context(format!("state {what}: malformed list")))?,
        );
    }
    Ok(out)
}

/// Appends `key` escaped (`00` as `00 ff`) and terminated (`00 01`): escaped
/// keys compare as their bytes do, and whatever follows the terminator
/// (a namespace) only breaks ties.
pub fn put_escaped(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// The key escaped at the start of `raw` by [`put_escaped`], and the bytes
/// after its terminator. `Corrupted`, with `what` in the message, when the
/// escape or the terminator is missing.
pub fn read_escaped<'a>(raw: &'a [u8], what: &str) -> Result<(Vec<u8>, &'a [u8])> {
    let bad = |why: &str| Error::corrupted(format!("{what}: malformed escaped key ({why})"));
    let mut key = Vec::with_capacity(raw.len().saturating_sub(2));
    let mut i = 0;
    loop {
        match raw.get(i..i + 2) {
            Some([0, 1]) => return Ok((key, &raw[i + 2..])),
            Some([0, 0xff]) => {
                key.push(0);
                i += 2;
            }
            Some([0, _]) => return Err(bad("bad escape")),
            _ => match raw.get(i) {
                Some(&b) if b != 0 => {
                    key.push(b);
                    i += 1;
                }
                _ => return Err(bad("unterminated key")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_round_trip_and_sort_as_their_bytes() {
        let keys: [&[u8]; 6] = [b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0b"];
        let mut escaped: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut out = Vec::new();
                put_escaped(&mut out, k);
                out.extend_from_slice(b"ns");
                out
            })
            .collect();
        for (k, e) in keys.iter().zip(&escaped) {
            let (key, rest) = read_escaped(e, "test").unwrap();
            assert_eq!((key.as_slice(), rest), (*k, b"ns".as_slice()));
        }
        escaped.sort();
        let mut sorted = keys.to_vec();
        sorted.sort();
        let back: Vec<Vec<u8>> = escaped.iter().map(|e| read_escaped(e, "test").unwrap().0).collect();
        assert_eq!(back, sorted.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
        for damaged in [&b"a\0\x02"[..], b"ab", b"\0"] {
            assert_eq!(
                read_escaped(damaged, "test").unwrap_err().kind(),
                crate::ErrorKind::Corrupted
            );
        }
    }

    #[test]
    fn lists_pack_and_unpack() {
        let mut packed = Vec::new();
        for e in [&b"x"[..], b"", &[7u8; 300]] {
            pack(&mut packed, e);
        }
        assert_eq!(elements(&packed, "l").unwrap(), [&b"x"[..], b"", &[7u8; 300]]);
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        packed.pop();
        assert!(elements(&packed, "l").is_err());
    }
}
