//! Little binary helpers shared by every flowstate file format: LEB128
//! varints, length-prefixed byte strings and a bounds-checked reader.
//!
//! The reader never trusts a length it reads: every length is checked
//! against the bytes actually present before anything is sliced or
//! allocated, so hostile input cannot make it allocate unbounded memory.

use crate::error::{Error, Result};

/// Encodes a timestamp so that byte order is time order: big-endian with
/// the sign bit flipped (negative timestamps sort first).
#[inline]
pub fn encode_timestamp(timestamp: i64) -> [u8; 8] {
    ((timestamp as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`encode_timestamp`].
#[inline]
pub fn decode_timestamp(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a varint length and the bytes.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a length-prefixed UTF-8 string.
#[inline]
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Number of bytes `v` takes as a varint.
#[inline]
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A bounds-checked cursor over bytes. Errors are [`ErrorKind::Corrupted`](crate::ErrorKind)
/// and say what was being read; callers add the file name.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Offset of the next byte.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Fails unless everything was read.
    pub fn finish(&self, what: &str) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupted(format!(
                "{} unexpected bytes after {what} at offset {}",
                self.remaining(),
                self.pos
            )))
        }
    }

    /// The next `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::corrupted(format!(
                "{what}: needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A fixed-size array.
    #[inline]
    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// One byte.
    #[inline]
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian u16.
    pub fn u16_le(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// A little-endian u32.
    pub fn u32_le(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A little-endian u64.
    pub fn u64_le(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// An unsigned LEB128 varint of at most 10 bytes; overlong or
    /// overflowing encodings are refused.
    #[inline]
    pub fn varint(&mut self, what: &str) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let low = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(Error::corrupted(format!(
                    "{what}: varint overflows 64 bits at offset {}",
                    self.pos
                )));
            }
            v |= low << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(Error::corrupted(format!(
                        "{what}: overlong varint at offset {}",
                        self.pos
                    )));
                }
                return Ok(v);
            }
        }
        Err(Error::corrupted(format!(
            "{what}: varint longer than 10 bytes at offset {}",
            self.pos
        )))
    }

    /// A varint that must fit in a u32.
    pub fn varint_u32(&mut self, what: &str) -> Result<u32> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| Error::corrupted(format!("{what}: {v} does not fit in 32 bits")))
    }

    /// A count of items that each take at least `min_item_len` bytes: it
    /// cannot exceed what remains, so a hostile count cannot force a large
    /// allocation.
    pub fn count(&mut self, min_item_len: usize, what: &str) -> Result<usize> {
        let n = self.varint(what)?;
        let max = (self.remaining() / min_item_len.max(1)) as u64;
        if n > max {
            return Err(Error::corrupted(format!(
                "{what}: count {n} exceeds what the remaining {} bytes can hold",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    /// A varint length followed by that many bytes.
    #[inline]
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.varint(what)?;
        if n > self.remaining() as u64 {
            return Err(Error::corrupted(format!(
                "{what}: length {n} at offset {} exceeds the {} bytes that remain",
                self.pos,
                self.remaining()
            )));
        }
        self.take(n as usize, what)
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, what: &str) -> Result<&'a str> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b).map_err(|e| Error::corrupted(format!("{what}: not UTF-8: {e}")))
    }
}

/// CRC-32C (Castagnoli) of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// CRC-32C of `data` continuing from `crc`.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut r = Reader::new(&b);
            assert_eq!(r.varint("v").unwrap(), v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn malformed_varints_are_refused() {
        assert!(Reader::new(&[0x80]).varint("v").is_err()); // truncated
        assert!(Reader::new(&[0x80, 0x00]).varint("v").is_err()); // overlong
        assert!(Reader::new(&[0xff; 10]).varint("v").is_err()); // overflow
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varint("v")
                .is_err()
        );
    }

    #[test]
    fn huge_length_prefix_fails_without_allocating() {
        let mut b = Vec::new();
        put_varint(&mut b, u64::MAX / 2);
        b.extend_from_slice(b"abc");
        let err = Reader::new(&b).bytes("value").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupted);
        assert!(Reader::new(&b).count(1, "entries").is_err());
    }

    #[test]
    fn crc32c_matches_reference() {
        // RFC 3720, B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }
}

/// Wraps `payload` in the envelope every flowstate file starts with:
/// `magic[4] | version u16 | flags u16 | len u32 | crc32c u32 | payload`,
/// integers little-endian, the checksum over the first 8 bytes and the payload.
pub fn encode_envelope(magic: [u8; 4], version: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    let crc = crc32c_append(crc32c(&out), payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// An envelope read back by [`decode_envelope`].
#[derive(Debug)]
pub struct Envelope<'a> {
    /// Format version.
    pub version: u16,
    /// Format flags.
    pub flags: u16,
    /// The verified payload.
    pub payload: &'a [u8],
    /// Bytes the envelope took, payload included.
    pub len: usize,
}

/// Reads and verifies an envelope at the start of `data`. `what` names the
/// format in errors. Magic and checksum failures are `Corrupted`; the
/// version is left to the caller.
pub fn decode_envelope<'a>(data: &'a [u8], magic: [u8; 4], what: &str) -> Result<Envelope<'a>> {
    let mut r = Reader::new(data);
    let found = r.array::<4>("magic")?;
    if found != magic {
        return Err(Error::corrupted(format!(
            "not a {what} (magic {found:02x?}, expected {magic:02x?})"
        )));
    }
    let version = r.u16_le("version")?;
    let flags = r.u16_le("flags")?;
    let len = r.u32_le("length")? as usize;
    let crc = r.u32_le("checksum")?;
    let payload = r.take(len, what)?;
    let actual = crc32c_append(crc32c(&data[..8]), payload);
    if actual != crc {
        return Err(Error::corrupted(format!(
            "{what} checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )));
    }
    Ok(Envelope {
        version,
        flags,
        payload,
        len: r.position(),
    })
}
