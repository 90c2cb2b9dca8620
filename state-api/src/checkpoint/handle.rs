//! State handles: serializable references to the bytes of a snapshot.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::codec::{put_bytes, put_str, put_varint, Reader};
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

/// Checks the handles given to a restore before any state is built: each
/// must lie within `max_parallelism` key groups (else `Incompatible`, naming
/// both values), and no two may cover the same key group (else `Corrupted`:
/// the metadata lists a snapshot twice or mixes snapshots).
pub fn check_restore_handles(handles: &[KeyedStateHandle], max_parallelism: u32) -> Result<()> {
    let mut ranges: Vec<(KeyGroupRange, usize)> = Vec::with_capacity(handles.len());
    for (i, h) in handles.iter().enumerate() {
        let range = h.key_group_range();
        if range.end() > max_parallelism {
            return Err(Error::incompatible(format!(
                "state handle {i} covers key groups {range}, so it was taken at max parallelism {} or more; this \
                 backend runs at max parallelism {max_parallelism}: restore at the max parallelism of the snapshot",
                range.end()
            )));
        }
        if !range.is_empty() {
            ranges.push((range, i));
        }
    }
    ranges.sort_by_key(|(r, _)| (r.start(), r.end()));
    for pair in ranges.windows(2) {
        let [(a, i), (b, j)] = pair else { continue };
        if !a.intersect(b).is_empty() {
            return Err(Error::corrupted(format!(
                "state handles {i} ({a}) and {j} ({b}) overlap: each key group must come from exactly one handle"
            )));
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

/// The most bytes of key-group frames a restore reads at once.
pub(crate) const RESTORE_BATCH_BYTES: u64 = 16 << 20;

impl KeyGroupsStateHandle {
    /// The key groups of `want` this handle holds, as consecutive sub-ranges
    /// whose frames take at most `max_bytes` each (a larger key group is a
    /// batch of its own): a restore reads and inserts one batch at a time,
    /// so it holds a bounded part of the stream in memory.
    pub fn key_group_batches(&self, want: KeyGroupRange, max_bytes: u64) -> Result<Vec<KeyGroupRange>> {
        let overlap = self.range.intersect(&want);
        if overlap.is_empty() {
            return Ok(Vec::new());
        }
        let offsets = &self.offsets;
        if offsets.len() != self.range.len() as usize || !matches!(self.stream, StreamStateHandle::File { .. }) {
            return Ok(vec![overlap]);
        }
        let size = self.stream.size();
        let start_of = |kg: u32| offsets[(kg - self.range.start()) as usize];
        let end_of = |kg: u32| {
            offsets
                .get((kg + 1 - self.range.start()) as usize)
                .copied()
                .unwrap_or(size)
        };
        let mut out = Vec::new();
        let mut first = overlap.start();
        for kg in overlap.iter() {
            if kg > first && end_of(kg).saturating_sub(start_of(first)) > max_bytes {
                out.push(KeyGroupRange::new(first, kg)?);
                first = kg;
            }
        }
        out.push(KeyGroupRange::new(first, overlap.end())?);
        Ok(out)
    }

    /// A name for error messages that an operator can find: the key groups
    /// and, for a file, its path (inline state has no path of its own: it
    /// lives in the checkpoint's metadata).
    pub fn describe(&self) -> String {
        match &self.stream {
            StreamStateHandle::Empty => format!("empty state of key groups {}", self.range),
            StreamStateHandle::Inline(b) => format!("inline state of key groups {} ({} bytes)", self.range, b.len()),
            StreamStateHandle::File { path, .. } => format!("state file {path} (key groups {})", self.range),
        }
    }
}

/// One file of an incremental snapshot: its name in the backend's local
/// directory, where its bytes are stored, and their CRC-32C.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleFile {
    /// The local file name (one path component, e.g. `000042.sst`).
    pub name: String,
    /// Where the bytes are.
    pub stream: StreamStateHandle,
    /// CRC-32C of the bytes.
    pub crc32c: u32,
}

/// Whose files an [`IncrementalStateHandle`] holds, so a backend refuses a
/// native snapshot of another kind with a clear error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NativeFormat {
    /// The files of a RocksDB checkpoint (SST files, manifest, options).
    #[default]
    RocksDb,
    /// The heap backend's chains of key-group frames: a base and the deltas
    /// on top of it per key group (docs/format.md, "Heap chains").
    HeapChain,
    /// A reference to a SlateDB checkpoint of the disaggregated backend's
    /// database in object storage: no files of its own (docs/format.md,
    /// "SlateDB checkpoints").
    SlateDb,
}

impl NativeFormat {
    /// The backend that reads this format, for messages.
    pub fn backend(self) -> &'static str {
        match self {
            NativeFormat::RocksDb => "RocksDB",
            NativeFormat::HeapChain => "heap",
            NativeFormat::SlateDb => "SlateDB",
        }
    }

    /// What to do with a checkpoint of this format that another backend
    /// cannot restore, for messages.
    pub fn remedy(self) -> String {
        match self {
            NativeFormat::SlateDb => "restore it into the SlateDB backend".to_string(),
            f => format!(
                "restore it into the {} backend, or turn it into a canonical savepoint with `flowstate savepoint \
                 convert`",
                f.backend()
            ),
        }
    }
}

/// An incremental snapshot of a native backend: immutable files shared
/// between checkpoints plus files private to this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalStateHandle {
    /// Whose files these are.
    pub format: NativeFormat,
    /// The key groups the snapshot covers.
    pub range: KeyGroupRange,
    /// The backend instance that wrote it (unique across restarts).
    pub backend_id: String,
    /// The checkpoint it belongs to.
    pub checkpoint_id: u64,
    /// Files in shared storage, possibly uploaded by earlier checkpoints.
    pub shared: Vec<HandleFile>,
    /// Files of this checkpoint only (manifest, options, current).
    pub private: Vec<HandleFile>,
    /// The backend's own metadata (registered states).
    pub meta: StreamStateHandle,
}

/// The result of snapshotting a keyed backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyedStateHandle {
    /// A canonical full snapshot.
    KeyGroups(KeyGroupsStateHandle),
    /// An incremental native snapshot.
    Incremental(IncrementalStateHandle),
}

impl KeyedStateHandle {
    /// The handle in the encoding `_metadata` files use (docs/format.md):
    /// what a subtask sends to the coordinator of a checkpoint.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a handle written by [`to_bytes`](Self::to_bytes); `source`
    /// names the bytes in errors. Fails with `Corrupted` unless `bytes`
    /// hold exactly one valid handle.
    pub fn from_bytes(bytes: &Bytes, source: &str) -> Result<Self> {
        decode_exactly(bytes, source, "keyed state handle", Self::decode)
    }

    /// The key groups covered.
    pub fn key_group_range(&self) -> KeyGroupRange {
        match self {
            KeyedStateHandle::KeyGroups(h) => h.range,
            KeyedStateHandle::Incremental(h) => h.range,
        }
    }

    /// True when the handle holds no state.
    pub fn is_empty(&self) -> bool {
        match self {
            KeyedStateHandle::KeyGroups(h) => h.stream == StreamStateHandle::Empty,
            KeyedStateHandle::Incremental(_) => false,
        }
    }

    /// Full size of the state the handle references, in bytes.
    pub fn state_size(&self) -> u64 {
        self.streams().iter().map(|s| s.size()).sum()
    }

    /// Every stream the handle references.
    pub fn streams(&self) -> Vec<&StreamStateHandle> {
        match self {
            KeyedStateHandle::KeyGroups(h) => vec![&h.stream],
            KeyedStateHandle::Incremental(h) => h
                .shared
                .iter()
                .chain(&h.private)
                .map(|f| &f.stream)
                .chain(std::iter::once(&h.meta))
                .collect(),
        }
    }

    /// The paths of every file the handle references.
    pub fn file_paths(&self) -> impl Iterator<Item = &str> {
        self.streams().into_iter().filter_map(StreamStateHandle::file_path)
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
            KeyedStateHandle::Incremental(h) => {
                out.push(match h.format {
                    NativeFormat::RocksDb => 2,
                    NativeFormat::HeapChain => 3,
                    NativeFormat::SlateDb => 4,
                });
                put_varint(out, u64::from(h.range.start()));
                put_varint(out, u64::from(h.range.end()));
                put_str(out, &h.backend_id);
                put_varint(out, h.checkpoint_id);
                for files in [&h.shared, &h.private] {
                    put_varint(out, files.len() as u64);
                    for f in files {
                        put_str(out, &f.name);
                        out.extend_from_slice(&f.crc32c.to_le_bytes());
                        f.stream.encode(out);
                    }
                }
                h.meta.encode(out);
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
            tag @ (2..=4) => {
                let format = match tag {
                    2 => NativeFormat::RocksDb,
                    3 => NativeFormat::HeapChain,
                    _ => NativeFormat::SlateDb,
                };
                let start = r.varint_u32("key-group range start")?;
                let end = r.varint_u32("key-group range end")?;
                let range = KeyGroupRange::new(start, end).map_err(|e| Error::corrupted(e.message().to_string()))?;
                let backend_id = r.str("backend id")?.to_string();
                let checkpoint_id = r.varint("checkpoint id")?;
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let n = r.count(6, "incremental file count")?;
                    list.reserve(n);
                    for _ in 0..n {
                        let name = r.str("incremental file name")?.to_string();
                        if name.contains('/') {
                            return Err(Error::corrupted(format!("file name {name:?} has a '/'")));
                        }
                        validate_relative_path(&name)?;
                        let crc32c = r.u32_le("file checksum")?;
                        let stream = StreamStateHandle::decode(r, source)?;
                        list.push(HandleFile { name, stream, crc32c });
                    }
                }
                let [shared, private] = lists;
                let meta = StreamStateHandle::decode(r, source)?;
                Ok(KeyedStateHandle::Incremental(IncrementalStateHandle {
                    format,
                    range,
                    backend_id,
                    checkpoint_id,
                    shared,
                    private,
                    meta,
                }))
            }
            t => Err(Error::corrupted(format!("unknown keyed state handle tag {t}"))),
        }
    }
}

/// Decodes exactly one `what` from `bytes` with `decode`; `source` names
/// the bytes in errors.
pub(crate) fn decode_exactly<T>(
    bytes: &Bytes,
    source: &str,
    what: &str,
    decode: impl FnOnce(&mut Reader<'_>, &Bytes) -> Result<T>,
) -> Result<T> {
    let mut r = Reader::new(bytes);
    let value = decode(&mut r, bytes).map_err(|e| e.context(source))?;
    if !r.is_empty() {
        return Err(Error::corrupted(format!(
            "{source}: {} bytes after the {what}",
            r.remaining()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_handles_travel_as_bytes() {
        let handles = [
            KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
                range: KeyGroupRange::new(3, 5).unwrap(),
                offsets: vec![0, 17],
                stream: StreamStateHandle::File {
                    path: "chk-1/a".into(),
                    size: 40,
                },
            }),
            KeyedStateHandle::Incremental(IncrementalStateHandle {
                format: Default::default(),
                range: KeyGroupRange::new(0, 64).unwrap(),
                backend_id: "b".into(),
                checkpoint_id: 2,
                shared: vec![HandleFile {
                    name: "000009.sst".into(),
                    stream: StreamStateHandle::File {
                        path: "shared/x".into(),
                        size: 9,
                    },
                    crc32c: 7,
                }],
                private: Vec::new(),
                meta: StreamStateHandle::Inline(Bytes::from_static(b"meta")),
            }),
        ];
        for h in handles {
            let bytes = Bytes::from(h.to_bytes());
            assert_eq!(KeyedStateHandle::from_bytes(&bytes, "subtask 0").unwrap(), h);
            let mut longer = bytes.to_vec();
            longer.push(0);
            let e = KeyedStateHandle::from_bytes(&Bytes::from(longer), "subtask 0").unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Corrupted, "{e}");
            assert!(e.to_string().contains("subtask 0"), "{e}");
            let e = KeyedStateHandle::from_bytes(&bytes.slice(..bytes.len() - 1), "subtask 0").unwrap_err();
            assert!(e.to_string().contains("subtask 0"), "{e}");
        }
    }

    #[test]
    fn only_files_of_their_own_are_offered_a_conversion() {
        for f in [NativeFormat::RocksDb, NativeFormat::HeapChain] {
            assert!(
                f.remedy().contains(f.backend()) && f.remedy().contains("savepoint convert"),
                "{f:?}"
            );
        }
        let slatedb = NativeFormat::SlateDb.remedy();
        assert!(
            slatedb.contains("SlateDB backend") && !slatedb.contains("convert"),
            "{slatedb}"
        );
    }

    #[test]
    fn slatedb_handles_travel_with_tag_4() {
        let h = KeyedStateHandle::Incremental(IncrementalStateHandle {
            format: NativeFormat::SlateDb,
            range: KeyGroupRange::new(0, 2).unwrap(),
            backend_id: "d".into(),
            checkpoint_id: 1,
            shared: Vec::new(),
            private: Vec::new(),
            meta: StreamStateHandle::Inline(Bytes::from_static(b"m")),
        });
        let bytes = h.to_bytes();
        assert_eq!(bytes, [4, 0, 2, 1, b'd', 1, 0, 0, 1, 1, b'm']);
        assert_eq!(KeyedStateHandle::from_bytes(&Bytes::from(bytes), "s").unwrap(), h);
    }

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
    fn key_group_batches_bound_the_bytes_read_at_once() {
        // Key groups 10..15, frames of 100 bytes after a 50-byte header.
        let h = KeyGroupsStateHandle {
            range: KeyGroupRange::new(10, 15).unwrap(),
            offsets: vec![50, 150, 250, 350, 450],
            stream: StreamStateHandle::File {
                path: "chk-1/a".into(),
                size: 550,
            },
        };
        let all = KeyGroupRange::all(128).unwrap();
        let batches = |want, max| h.key_group_batches(want, max).unwrap();
        assert_eq!(batches(all, 1000), [KeyGroupRange::new(10, 15).unwrap()]);
        assert_eq!(
            batches(all, 200),
            [(10, 12), (12, 14), (14, 15)].map(|(a, b)| KeyGroupRange::new(a, b).unwrap())
        );
        // A key group larger than the bound is a batch of its own.
        assert_eq!(batches(KeyGroupRange::new(11, 13).unwrap(), 10).len(), 2);
        assert!(batches(KeyGroupRange::new(20, 30).unwrap(), 10).is_empty());
    }

    #[test]
    fn restore_handles_must_fit_and_not_overlap() {
        let h = |start, end| {
            KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
                range: KeyGroupRange::new(start, end).unwrap(),
                offsets: Vec::new(),
                stream: StreamStateHandle::Empty,
            })
        };
        check_restore_handles(&[h(0, 64), h(64, 128)], 128).unwrap();
        check_restore_handles(&[], 128).unwrap();
        let e = check_restore_handles(&[h(0, 64), h(0, 64)], 128).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupted, "{e}");
        let e = check_restore_handles(&[h(64, 128), h(0, 100), h(100, 101)], 128).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupted, "{e}");
        // A wide handle overlapping one that is not its neighbour in start order.
        let e = check_restore_handles(&[h(0, 100), h(10, 20), h(50, 60)], 128).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupted, "{e}");
        let e = check_restore_handles(&[h(0, 256)], 128).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Incompatible, "{e}");
        assert!(e.message().contains("128") && e.message().contains("[0..=255]"), "{e}");
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

    #[test]
    fn incremental_handles_round_trip_and_hostile_counts_are_refused() {
        let file = |name: &str, path: &str| HandleFile {
            name: name.into(),
            stream: StreamStateHandle::File {
                path: path.into(),
                size: 10,
            },
            crc32c: 0xdead_beef,
        };
        let h = KeyedStateHandle::Incremental(IncrementalStateHandle {
            format: Default::default(),
            range: KeyGroupRange::new(0, 64).unwrap(),
            backend_id: "b1".into(),
            checkpoint_id: 9,
            shared: vec![file("000001.sst", "shared/a"), file("000002.sst", "shared/b")],
            private: vec![file("MANIFEST-000005", "chk-9/c")],
            meta: StreamStateHandle::Inline(Bytes::from_static(b"meta")),
        });
        let mut b = Vec::new();
        h.encode(&mut b);
        let src = Bytes::from(b);
        let mut r = Reader::new(&src);
        assert_eq!(KeyedStateHandle::decode(&mut r, &src).unwrap(), h);
        assert_eq!(h.file_paths().collect::<Vec<_>>(), ["shared/a", "shared/b", "chk-9/c"]);
        assert_eq!(h.state_size(), 34);

        // 2^62 shared files claimed in a few bytes: refused before allocating.
        let mut hostile = vec![2];
        put_varint(&mut hostile, 0);
        put_varint(&mut hostile, 64);
        put_str(&mut hostile, "b1");
        put_varint(&mut hostile, 9);
        put_varint(&mut hostile, 1 << 62);
        let src = Bytes::from(hostile);
        let err = KeyedStateHandle::decode(&mut Reader::new(&src), &src).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupted, "{err}");

        // A file name that is a path is refused.
        let mut bad = Vec::new();
        let evil = KeyedStateHandle::Incremental(IncrementalStateHandle {
            shared: vec![file("../x", "shared/a")],
            ..match h {
                KeyedStateHandle::Incremental(h) => h,
                _ => unreachable!(),
            }
        });
        evil.encode(&mut bad);
        let src = Bytes::from(bad);
        assert!(KeyedStateHandle::decode(&mut Reader::new(&src), &src).is_err());
    }
}
