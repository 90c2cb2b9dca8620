//! Key groups: the unit of state redistribution when parallelism changes.
//!
//! A key belongs to key group `murmur3_32(serialized key, seed 0) % max_parallelism`.
//! The hash is MurmurHash3 x86 32-bit over the bytes the key serializer
//! produced, so the assignment is the same on every platform and every
//! version of flowstate (see `docs/format.md` for test vectors). Key groups
//! are assigned to operator indices with the same formulas as Apache Flink's
//! `KeyGroupRangeAssignment`, so a job keeps Flink's distribution.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest supported max parallelism, as in Flink (2^15).
pub const MAX_PARALLELISM_UPPER_BOUND: u32 = 1 << 15;

/// The smallest default max parallelism, as in Flink (2^7).
const DEFAULT_LOWER_BOUND_MAX_PARALLELISM: u32 = 1 << 7;

/// The default max parallelism for a given parallelism, following Flink's
/// `computeDefaultMaxParallelism`: `parallelism + parallelism / 2` rounded
/// up to a power of two, bounded to `[128, 32768]`. A parallelism outside
/// `1..=32768` is refused (`Invalid`), as Flink refuses it.
pub fn default_max_parallelism(parallelism: u32) -> Result<u32> {
    if parallelism == 0 || parallelism > MAX_PARALLELISM_UPPER_BOUND {
        return Err(Error::invalid(format!(
            "parallelism {parallelism} is outside 1..={MAX_PARALLELISM_UPPER_BOUND}"
        )));
    }
    let wanted = parallelism + parallelism / 2;
    let pow = wanted.next_power_of_two();
    Ok(pow.clamp(DEFAULT_LOWER_BOUND_MAX_PARALLELISM, MAX_PARALLELISM_UPPER_BOUND))
}

/// MurmurHash3, x86 32-bit variant, over `data` with `seed`.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The key group of a serialized key.
#[inline]
pub fn key_group_for_key_bytes(key: &[u8], max_parallelism: u32) -> u32 {
    murmur3_32(key, 0) % max_parallelism
}

/// The operator index that owns `key_group` (Flink's
/// `computeOperatorIndexForKeyGroup`).
pub fn operator_index_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u32) -> u32 {
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism)) as u32
}

/// Checks `1 <= parallelism <= max_parallelism <= 32768`.
pub fn check_parallelism(max_parallelism: u32, parallelism: u32) -> Result<()> {
    if max_parallelism == 0 || max_parallelism > MAX_PARALLELISM_UPPER_BOUND {
        return Err(Error::invalid(format!(
            "max parallelism {max_parallelism} is outside 1..={MAX_PARALLELISM_UPPER_BOUND}"
        )));
    }
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(Error::invalid(format!(
            "parallelism {parallelism} is outside 1..={max_parallelism} (the max parallelism)"
        )));
    }
    Ok(())
}

/// A contiguous range of key groups, `start..end` (end exclusive; empty when
/// `start == end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    start: u32,
    end: u32,
}

impl KeyGroupRange {
    /// `start..end`, end exclusive.
    pub fn new(start: u32, end: u32) -> Result<Self> {
        if start > end || end > MAX_PARALLELISM_UPPER_BOUND {
            return Err(Error::invalid(format!("invalid key-group range {start}..{end}")));
        }
        Ok(KeyGroupRange { start, end })
    }

    /// `first..=last`, as Flink writes ranges.
    pub fn inclusive(first: u32, last: u32) -> Result<Self> {
        Self::new(first, last.saturating_add(1))
    }

    /// All key groups of a job with `max_parallelism`.
    pub fn all(max_parallelism: u32) -> Result<Self> {
        check_parallelism(max_parallelism, 1)?;
        Self::new(0, max_parallelism)
    }

    /// The empty range.
    pub const fn empty() -> Self {
        KeyGroupRange { start: 0, end: 0 }
    }

    /// The key groups owned by operator `index` of `parallelism` (Flink's
    /// `computeKeyGroupRangeForOperatorIndex`).
    pub fn for_operator(max_parallelism: u32, parallelism: u32, index: u32) -> Result<Self> {
        check_parallelism(max_parallelism, parallelism)?;
        if index >= parallelism {
            return Err(Error::invalid(format!(
                "operator index {index} is outside 0..{parallelism}"
            )));
        }
        let (m, p, i) = (u64::from(max_parallelism), u64::from(parallelism), u64::from(index));
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m - 1) / p + 1;
        Self::new(start as u32, end as u32)
    }

    /// First key group.
    pub fn start(&self) -> u32 {
        self.start
    }

    /// One past the last key group.
    pub fn end(&self) -> u32 {
        self.end
    }

    /// Number of key groups.
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    /// True when the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// True when `key_group` is in the range.
    #[inline]
    pub fn contains(&self, key_group: u32) -> bool {
        key_group >= self.start && key_group < self.end
    }

    /// The key groups in both ranges.
    pub fn intersect(&self, other: &KeyGroupRange) -> KeyGroupRange {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        if start < end {
            KeyGroupRange { start, end }
        } else {
            KeyGroupRange::empty()
        }
    }

    /// Iterates the key groups.
    pub fn iter(&self) -> std::ops::Range<u32> {
        self.start..self.end
    }
}

impl std::fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            f.write_str("[]")
        } else {
            write!(f, "[{}..={}]", self.start, self.end - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
    }

    #[test]
    fn operator_ranges_partition_all_key_groups_like_flink() {
        for max in [1u32, 7, 128, 1000, 32768] {
            for par in [1u32, 2, 3, 4, 7, 15, 77, 128] {
                if par > max {
                    continue;
                }
                let mut next = 0;
                for i in 0..par {
                    let r = KeyGroupRange::for_operator(max, par, i).unwrap();
                    assert_eq!(r.start(), next, "max {max} par {par} op {i}");
                    for kg in r.iter() {
                        assert_eq!(operator_index_for_key_group(max, par, kg), i);
                    }
                    next = r.end();
                }
                assert_eq!(next, max);
            }
        }
        // Flink: maxParallelism 128, parallelism 3 -> [0..=42], [43..=85], [86..=127].
        assert_eq!(
            KeyGroupRange::for_operator(128, 3, 1).unwrap(),
            KeyGroupRange::inclusive(43, 85).unwrap()
        );
    }

    #[test]
    fn default_max_parallelism_follows_flink() {
        // min(max(roundUpToPowerOfTwo(p + p / 2), 128), 32768).
        for (p, max) in [
            (1, 128),
            (2, 128),
            (85, 128),
            (86, 256),
            (100, 256),
            (171, 256),
            (172, 512),
            (1000, 2048),
            (21_845, 32768),
            (21_846, 32768),
            (32_768, 32768),
        ] {
            assert_eq!(default_max_parallelism(p).unwrap(), max, "parallelism {p}");
        }
        // Every result is a power of two in [128, 32768], at least the parallelism.
        for p in 1..=MAX_PARALLELISM_UPPER_BOUND {
            let max = default_max_parallelism(p).unwrap();
            assert!(
                max.is_power_of_two() && (128..=32768).contains(&max) && max >= p,
                "{p} -> {max}"
            );
            check_parallelism(max, p).unwrap();
        }
    }

    #[test]
    fn default_max_parallelism_refuses_parallelism_outside_1_to_32768() {
        for p in [0, 32_769, 1_000_000, u32::MAX] {
            let e = default_max_parallelism(p).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Invalid, "{e}");
            assert!(
                e.message().contains(&format!("parallelism {p} ")) && e.message().contains("1..=32768"),
                "{e}"
            );
        }
    }

    #[test]
    fn intersect_and_bounds() {
        let a = KeyGroupRange::new(0, 64).unwrap();
        let b = KeyGroupRange::new(32, 128).unwrap();
        assert_eq!(a.intersect(&b), KeyGroupRange::new(32, 64).unwrap());
        assert!(a.intersect(&KeyGroupRange::new(64, 70).unwrap()).is_empty());
        assert!(KeyGroupRange::new(5, 4).is_err());
        assert!(KeyGroupRange::for_operator(128, 0, 0).is_err());
        assert!(KeyGroupRange::for_operator(128, 4, 4).is_err());
    }
}
