//! Entropy injection: data files spread over many key prefixes.
//!
//! The store's prefix holds the marker [`ENTROPY_MARKER`] as one whole
//! segment (`_entropy_/checkpoints/job`). A checkpoint data file's key
//! replaces the marker with `length` hex digits derived from the file's path
//! (`3f/checkpoints/job/shared/<file>`); a `_metadata` object's key drops the
//! marker (`checkpoints/job/chk-7/_metadata`), so pointers, listing for the
//! latest checkpoint and copies of the metadata never depend on it.
//! Savepoints get no entropy: their files sit at the top of their own
//! directory, which moves as a whole. Other locations of the same store
//! (another job's checkpoints) get the marker after the same leading
//! segments.
//!
//! The digits are a function of the path (the first digits of its FNV-1a
//! hash), never random, so nothing about them is recorded: a handle's path
//! names its object and checkpoints stay resolvable and relocatable by path.
//! Paths already end in unique names, so the digits are evenly spread.
//! Listing a directory lists the plain tree and every entropy prefix in use.

use object_store::path::{Path, PathPart};

/// The segment of a prefix that entropy replaces (Flink's default marker).
pub const ENTROPY_MARKER: &str = "_entropy_";
/// The most hex digits of entropy: 16^4 = 65,536 prefixes.
pub const MAX_ENTROPY_LENGTH: usize = 4;

/// Where and how much entropy goes into data-file keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entropy {
    /// Segments before the marker.
    pub(crate) before: Vec<String>,
    /// Segments after the marker.
    pub(crate) after: Vec<String>,
    /// Hex digits replacing it.
    pub(crate) length: usize,
}

impl Entropy {
    /// The entropy of `prefix`, split at its marker segment; `None` without one.
    pub(crate) fn split(prefix: &str, length: usize) -> Option<Entropy> {
        let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        let at = segments.iter().position(|s| *s == ENTROPY_MARKER)?;
        Some(Entropy {
            before: segments[..at].iter().map(|s| s.to_string()).collect(),
            after: segments[at + 1..].iter().map(|s| s.to_string()).collect(),
            length,
        })
    }

    /// Whether a blob at `path` (relative to the store) is a data file that
    /// gets entropy: a checkpoint's files are in a directory (`chk-<n>/`,
    /// `shared/`, `taskowned/`); `_metadata` objects and the files at a
    /// store's top level (a savepoint's, which must move as one directory)
    /// get none.
    pub(crate) fn applies(path: &str) -> bool {
        match path.rsplit_once('/') {
            Some((_, name)) => name != flowstate_api::checkpoint::METADATA_FILE,
            None => false,
        }
    }

    /// The same entropy for another prefix of the store: the one that has
    /// this entropy's segments before the marker, with the marker right after
    /// them. `None` for a prefix outside them.
    pub(crate) fn for_prefix(&self, prefix: &str) -> Option<Entropy> {
        let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        let rest = segments.strip_prefix(self.before.iter().map(String::as_str).collect::<Vec<_>>().as_slice())?;
        Some(Entropy {
            before: self.before.clone(),
            after: rest.iter().map(|s| s.to_string()).collect(),
            length: self.length,
        })
    }

    /// The hex digits for `path`.
    pub(crate) fn value(&self, path: &str) -> String {
        let hash = fnv1a(path.as_bytes());
        format!("{hash:016x}")[..self.length].to_string()
    }

    /// Whether `segment` could be a value of this entropy.
    pub(crate) fn is_value(&self, segment: &str) -> bool {
        segment.len() == self.length && segment.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    /// The segments before the marker, as a key.
    pub(crate) fn before_key(&self) -> Path {
        join(&Path::default(), self.before.iter().map(String::as_str))
    }

    /// The key prefix with `value` in place of the marker (or without the
    /// marker for `None`).
    pub(crate) fn prefix(&self, value: Option<&str>) -> Path {
        let segments = self
            .before
            .iter()
            .map(String::as_str)
            .chain(value)
            .chain(self.after.iter().map(String::as_str));
        join(&Path::default(), segments)
    }
}

/// `base` with `segments` appended.
pub(crate) fn join<'a>(base: &Path, segments: impl IntoIterator<Item = &'a str>) -> Path {
    let mut parts: Vec<PathPart<'static>> = base.parts().map(|p| PathPart::from(p.as_ref().to_string())).collect();
    parts.extend(
        segments
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| PathPart::from(s.to_string())),
    );
    parts.into_iter().collect()
}

/// 64-bit FNV-1a: small, stable and documented (docs/format.md).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_are_stable_hex_of_the_path() {
        let e = Entropy::split("a/_entropy_/b/c", 4).unwrap();
        assert_eq!(e.before, ["a"]);
        assert_eq!(e.after, ["b", "c"]);
        // Test vectors of docs/format.md.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(e.value("a"), "af63");
        assert_eq!(e.value("shared/x"), e.value("shared/x"));
        assert!(e.is_value(&e.value("shared/x")));
        assert!(!e.is_value("af6g") && !e.is_value("af6"));
        assert_eq!(e.prefix(Some("af63")).as_ref(), "a/af63/b/c");
        assert_eq!(e.prefix(None).as_ref(), "a/b/c");
        assert!(Entropy::applies("shared/x") && Entropy::applies("chk-1/f"));
        assert!(!Entropy::applies("chk-1/_metadata") && !Entropy::applies("_metadata"));
        assert!(
            !Entropy::applies("savepoint-file"),
            "a savepoint's files move with its directory"
        );
        let other = e.for_prefix("a/x/y").unwrap();
        assert_eq!(other.prefix(Some("00")).as_ref(), "a/00/x/y");
        assert_eq!(e.for_prefix("b/x"), None);
        assert_eq!(Entropy::split("a/b", 2), None);
    }
}
