//! State handles: serializable references to the bytes of a snapshot.

use bytes::Bytes;

use crate::codec::{put_bytes, put_str, put_varint, Reader};
use crate::error::{Error, Result};
use crate::keygroup::KeyGroupRange;

/// The bytes one output stream produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStateHandle {
    /// Nothing was written.
    Empty,
    /// Few enough bytes to be kept in the checkpoint metadata itself.
    Inline(Bytes),
    /// A file, by its path relative to the checkpoint root (the job directory
    /// for checkpoints, the savepoint directory for savepoints).
    File {
        /// Relative path with `/` separators; never absolute, never `..`.
        path: String,
        /// Exact size in bytes.
        size: u64,
    },
}

impl StreamStateHandle {
    /// Size of the referenced bytes.
    pub fn size(&self) -> u64 {
        match self {
            StreamStateHandle::Empty => 0,
            StreamStateHandle::Inline(b) => b.len() as u64,
            StreamStateHandle::File { size, .. } => *size,
        }
    }

    /// The file path, if this handle is a file.
    pub fn file_path(&self) -> Option<&str> {
        match self {
            StreamStateHandle::File { path, .. } => Some(path),
            _ => None,
        }
    }

    /// A name for error messages.
    pub fn describe(&self) -> String {
        match self {
            StreamStateHandle::Empty => "empty state handle".into(),
            StreamStateHandle::Inline(b) => format!("inline state handle ({} bytes)", b.len()),
            StreamStateHandle::File { path, .. } => path.clone(),
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            StreamStateHandle::Empty => out.push(0),
            StreamStateHandle::Inline(b) => {
                out.push(1);
                put_bytes(out, b);
            }
            StreamStateHandle::File { path, size } => {
                out.push(2);
                put_str(out, path);
                put_varint(out, *size);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>, source: &Bytes) -> Result<Self> {
        match r.u8("stream handle tag")? {
            0 => Ok(StreamStateHandle::Empty),
            1 => {
                let start = r.position();
                let b = r.bytes("inline state")?;
                let offset = start + (r.position() - start - b.len());
                Ok(StreamStateHandle::Inline(source.slice(offset..offset + b.len())))
            }
            2 => {
                let path = r.str("state file path")?.to_string();
                validate_relative_path(&path)?;
                let size = r.varint("state file size")?;
                Ok(StreamStateHandle::File { path, size })
            }
            t => Err(Error::corrupted(format!("unknown stream handle tag {t}"))),
        }
    }
}

/// Refuses paths that could leave the checkpoint root: empty, absolute,
/// `.`/`..` components, backslashes, NUL bytes or empty components.
pub fn validate_relative_path(path: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("state file path {path:?} refused: {why}")));
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.contains('\\') || path.contains('\0') || path.contains(':') {
        return bad("contains a backslash, colon or NUL");
    }
    for part in path.split('/') {
        match part {
            "" => return bad("empty component"),
            "." | ".." => return bad("leaves its directory"),
            _ => {}
        }
    }
    Ok(())
}

/// A full snapshot of a key-group range in the canonical format: one stream,
/// with the offset of each key group's frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGroupsStateHandle {
    /// The key groups the snapshot covers.
    pub range: KeyGroupRange,
    /// Offset of each key group's frame in the stream, in range order.
    pub offsets: Vec<u64>,
    /// The snapshot bytes.
    pub stream: StreamStateHandle,
}

/// The result of snapshotting a keyed backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyedStateHandle {
    /// A canonical full snapshot.
    KeyGroups(KeyGroupsStateHandle),
}

impl KeyedStateHandle {
    /// The key groups covered.
    pub fn key_group_range(&self) -> KeyGroupRange {
        match self {
            KeyedStateHandle::KeyGroups(h) => h.range,
        }
    }

    /// True when the handle holds no state.
    pub fn is_empty(&self) -> bool {
        match self {
            KeyedStateHandle::KeyGroups(h) => h.stream == StreamStateHandle::Empty,
        }
    }

    /// Full size of the state the handle references, in bytes.
    pub fn state_size(&self) -> u64 {
        match self {
            KeyedStateHandle::KeyGroups(h) => h.stream.size(),
        }
    }

    /// Every stream the handle references.
    pub fn streams(&self) -> Vec<&StreamStateHandle> {
        match self {
            KeyedStateHandle::KeyGroups(h) => vec![&h.stream],
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            KeyedStateHandle::KeyGroups(h) => {
                out.push(1);
                put_varint(out, u64::from(h.range.start()));
                put_varint(out, u64::from(h.range.end()));
                put_varint(out, h.offsets.len() as u64);
                for o in &h.offsets {
                    put_varint(out, *o);
                }
                h.stream.encode(out);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>, source: &Bytes) -> Result<Self> {
        match r.u8("keyed handle tag")? {
            1 => {
                let start = r.varint_u32("key-group range start")?;
                let end = r.varint_u32("key-group range end")?;
                let range = KeyGroupRange::new(start, end).map_err(|e| Error::corrupted(e.message().to_string()))?;
                let n = r.count(1, "key-group offsets")?;
                if n != 0 && n != range.len() as usize {
                    return Err(Error::corrupted(format!(
                        "{n} key-group offsets for the {} key groups of {range}",
                        range.len()
                    )));
                }
                let mut offsets = Vec::with_capacity(n);
                for _ in 0..n {
                    offsets.push(r.varint("key-group offset")?);
                }
                let stream = StreamStateHandle::decode(r, source)?;
                Ok(KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
                    range,
                    offsets,
                    stream,
                }))
            }
            t => Err(Error::corrupted(format!("unknown keyed state handle tag {t}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "c:x",
            "a\0",
        ] {
            assert!(validate_relative_path(p).is_err(), "{p:?}");
        }
        for p in ["chk-1/abc", "shared/x.sst", "f"] {
            validate_relative_path(p).unwrap();
        }
    }

    #[test]
    fn keyed_handles_round_trip() {
        let h = KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
            range: KeyGroupRange::new(3, 5).unwrap(),
            offsets: vec![10, 300],
            stream: StreamStateHandle::File {
                path: "chk-2/a".into(),
                size: 999,
            },
        });
        let mut b = Vec::new();
        h.encode(&mut b);
        let src = Bytes::from(b);
        let mut r = Reader::new(&src);
        assert_eq!(KeyedStateHandle::decode(&mut r, &src).unwrap(), h);
        assert!(r.is_empty());
    }
}
