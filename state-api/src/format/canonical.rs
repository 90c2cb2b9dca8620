//! The canonical snapshot format: backend-independent, key group by key
//! group, checksummed. Heap and RocksDB full snapshots and savepoints all
//! use it, so any of them restores into any backend at any parallelism.
//! The byte layout is specified in `docs/format.md`.

use std::io::Read;

use bytes::Bytes;

use crate::checkpoint::{CheckpointOutputStream, KeyGroupsStateHandle, StateReader, StreamStateHandle};
use crate::descriptor::{StateKind, StateMetaInfo, StorageKind};
use crate::error::{Error, ErrorKind, Result};
use crate::format::codec::{
    crc32c, crc32c_append, decode_envelope, encode_envelope, put_bytes, put_str, put_varint, Reader,
};
use crate::keygroup::KeyGroupRange;
use crate::serializer::SerializerId;
use crate::ttl::{is_expired, split_ttl_value};

/// First four bytes of every canonical snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"FSKG";
/// The format version written.
pub const SNAPSHOT_VERSION: u16 = 2;
/// Flag bit: key-group payloads are zstd-compressed.
pub const FLAG_ZSTD: u16 = 1;

/// What a snapshot file says about itself: the key groups it covers, the key
/// serializer and the states, in the order records refer to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The key groups written.
    pub range: KeyGroupRange,
    /// The job's max parallelism (number of key groups) when it was written:
    /// a key's key group depends on it, so a restore at another max
    /// parallelism is refused.
    pub max_parallelism: u32,
    /// The key serializer's identity.
    pub key_serializer: SerializerId,
    /// The states; a record's state index points into this list.
    pub states: Vec<StateMetaInfo>,
    /// Whether key-group payloads are zstd-compressed.
    pub compressed: bool,
}

fn kind_tag(kind: StateKind) -> u8 {
    match kind {
        StateKind::Value => 0,
        StateKind::List => 1,
        StateKind::Map => 2,
        StateKind::Reducing => 3,
        StateKind::Aggregating => 4,
        StateKind::Timers => 5,
    }
}

fn kind_from_tag(tag: u8) -> Result<StateKind> {
    Ok(match tag {
        0 => StateKind::Value,
        1 => StateKind::List,
        2 => StateKind::Map,
        3 => StateKind::Reducing,
        4 => StateKind::Aggregating,
        5 => StateKind::Timers,
        t => return Err(Error::corrupted(format!("unknown state kind {t}"))),
    })
}

fn put_serializer(out: &mut Vec<u8>, id: &SerializerId) {
    put_str(out, &id.name);
    put_varint(out, u64::from(id.version));
}

fn read_serializer(r: &mut Reader<'_>, what: &str) -> Result<SerializerId> {
    let name = r.str(what)?.to_string();
    let version = r.varint_u32(what)?;
    Ok(SerializerId { name, version })
}

/// Encodes a state's metadata (shared with the checkpoint metadata format).
pub(crate) fn put_state_meta(out: &mut Vec<u8>, s: &StateMetaInfo) {
    put_str(out, &s.name);
    out.push(kind_tag(s.kind));
    put_serializer(out, &s.namespace_serializer);
    put_serializer(out, &s.value_serializer);
    match &s.user_key_serializer {
        Some(id) => {
            out.push(1);
            put_serializer(out, id);
        }
        None => out.push(0),
    }
    out.push(u8::from(s.ttl));
}

pub(crate) fn read_state_meta(r: &mut Reader<'_>) -> Result<StateMetaInfo> {
    let name = r.str("state name")?.to_string();
    crate::descriptor::validate_state_name(&name).map_err(|e| Error::corrupted(e.message().to_string()))?;
    let kind = kind_from_tag(r.u8("state kind")?)?;
    let namespace_serializer = read_serializer(r, "namespace serializer")?;
    let value_serializer = read_serializer(r, "value serializer")?;
    let user_key_serializer = match r.u8("user-key serializer flag")? {
        0 => None,
        1 => Some(read_serializer(r, "user-key serializer")?),
        t => return Err(Error::corrupted(format!("bad user-key serializer flag {t}"))),
    };
    let ttl = match r.u8("ttl flag")? {
        0 => false,
        1 => true,
        t => return Err(Error::corrupted(format!("bad TTL flag {t}"))),
    };
    if (kind == StateKind::Map) != user_key_serializer.is_some() {
        return Err(Error::corrupted(format!(
            "state {name:?}: user-key serializer does not match kind {kind}"
        )));
    }
    if kind == StateKind::Timers && ttl {
        return Err(Error::corrupted(format!("timer service {name:?} cannot have a TTL")));
    }
    Ok(StateMetaInfo {
        name,
        kind,
        namespace_serializer,
        value_serializer,
        user_key_serializer,
        ttl,
    })
}

impl SnapshotHeader {
    /// Encodes magic, version, flags and the checksummed header frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        put_varint(&mut payload, u64::from(self.range.start()));
        put_varint(&mut payload, u64::from(self.range.end()));
        put_varint(&mut payload, u64::from(self.max_parallelism));
        put_serializer(&mut payload, &self.key_serializer);
        put_varint(&mut payload, self.states.len() as u64);
        for s in &self.states {
            put_state_meta(&mut payload, s);
        }
        let flags = if self.compressed { FLAG_ZSTD } else { 0 };
        encode_envelope(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, flags, &payload)
    }

    /// Decodes the header at the start of `data`; returns it and its length.
    pub fn decode(data: &[u8]) -> Result<(Self, usize)> {
        let env = decode_envelope(data, SNAPSHOT_MAGIC, "flowstate snapshot")?;
        if env.version != SNAPSHOT_VERSION {
            return Err(Error::unsupported(format!(
                "snapshot format version {}; this build reads version {SNAPSHOT_VERSION}",
                env.version
            )));
        }
        if env.flags & !FLAG_ZSTD != 0 {
            return Err(Error::unsupported(format!("unknown snapshot flags {:#06x}", env.flags)));
        }
        let flags = env.flags;
        let payload = env.payload;
        let mut p = Reader::new(payload);
        let start = p.varint_u32("key-group range start")?;
        let end = p.varint_u32("key-group range end")?;
        let range = KeyGroupRange::new(start, end).map_err(|e| Error::corrupted(e.message().to_string()))?;
        let max_parallelism = p.varint_u32("max parallelism")?;
        if max_parallelism == 0 || range.end() > max_parallelism {
            return Err(Error::corrupted(format!(
                "key-group range {range} does not fit max parallelism {max_parallelism}"
            )));
        }
        let key_serializer = read_serializer(&mut p, "key serializer")?;
        let n = p.count(8, "state count")?;
        let mut states = Vec::with_capacity(n);
        for _ in 0..n {
            states.push(read_state_meta(&mut p)?);
        }
        p.finish("snapshot header")?;
        let header = SnapshotHeader {
            range,
            max_parallelism,
            key_serializer,
            states,
            compressed: flags & FLAG_ZSTD != 0,
        };
        Ok((header, env.len))
    }
}

/// Drops expired TTL entries while a snapshot is written (full-snapshot
/// cleanup): per state, the TTL in milliseconds, or `None` to keep all.
#[derive(Debug, Clone, Default)]
pub struct TtlFilter {
    /// Per state index: the TTL to apply.
    pub ttl_millis: Vec<Option<u64>>,
    /// The time the snapshot was taken.
    pub now: u64,
}

impl TtlFilter {
    /// False when `value` of state index `state` has expired and the state
    /// drops expired entries from snapshots.
    #[inline]
    pub fn keeps(&self, state: u32, value: &[u8]) -> bool {
        match self.ttl_millis.get(state as usize).copied().flatten() {
            None => true,
            Some(ttl) => match split_ttl_value(value) {
                Ok((ts, _)) => !is_expired(ts, ttl, self.now),
                Err(_) => true,
            },
        }
    }
}

/// Collects the records of one key group.
#[derive(Debug)]
pub struct KeyGroupWriter {
    buf: Vec<u8>,
    filter: TtlFilter,
    records: u64,
}

impl KeyGroupWriter {
    fn new(filter: TtlFilter) -> Self {
        KeyGroupWriter {
            buf: Vec::with_capacity(64 << 10),
            filter,
            records: 0,
        }
    }

    #[inline]
    fn record_head(&mut self, state: u32, key: &[u8], namespace: &[u8]) {
        put_varint(&mut self.buf, u64::from(state));
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, namespace);
        self.records += 1;
    }

    /// A value (also reducing and aggregating state).
    #[inline]
    pub fn value(&mut self, state: u32, key: &[u8], namespace: &[u8], value: &[u8]) {
        if self.filter.keeps(state, value) {
            self.record_head(state, key, namespace);
            put_bytes(&mut self.buf, value);
        }
    }

    /// A whole list; empty lists (after TTL filtering) are not written.
    pub fn list<'a, I>(&mut self, state: u32, key: &[u8], namespace: &[u8], elements: I)
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        let elements = elements.into_iter();
        let n = elements.clone().filter(|e| self.filter.keeps(state, e)).count();
        if n == 0 {
            return;
        }
        self.record_head(state, key, namespace);
        put_varint(&mut self.buf, n as u64);
        for e in elements {
            if self.filter.keeps(state, e) {
                put_bytes(&mut self.buf, e);
            }
        }
    }

    /// One timer of a timer service.
    #[inline]
    pub fn timer(&mut self, state: u32, key: &[u8], namespace: &[u8], timestamp: i64) {
        self.record_head(state, key, namespace);
        self.buf
            .extend_from_slice(&crate::format::codec::encode_timestamp(timestamp));
    }

    /// One entry of a map.
    #[inline]
    pub fn map_entry(&mut self, state: u32, key: &[u8], namespace: &[u8], user_key: &[u8], value: &[u8]) {
        if self.filter.keeps(state, value) {
            self.record_head(state, key, namespace);
            put_bytes(&mut self.buf, user_key);
            put_bytes(&mut self.buf, value);
        }
    }

    fn finish_frame(&mut self, kg: u32, level: Option<i32>) -> Result<Vec<u8>> {
        let frame = encode_frame(kg, &self.buf, level)?;
        self.buf.clear();
        Ok(frame)
    }
}

/// Encodes one key-group frame (docs/format.md): `u32 len | u32 crc | stored`,
/// where `stored` is `payload`, or with `level` its zstd compression after
/// its `u32` length, and `crc` is the CRC-32C of `kg` (4 bytes, little
/// endian) followed by `stored`, so a frame moved to another key group fails
/// its check.
pub fn encode_frame(kg: u32, payload: &[u8], level: Option<i32>) -> Result<Vec<u8>> {
    let compressed;
    let stored: &[u8] = match level {
        None => payload,
        Some(level) => {
            let mut s = Vec::with_capacity(payload.len() / 2 + 16);
            s.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            let z = zstd::bulk::compress(payload, level)
                .map_err(|e| Error::internal(format!("zstd compression of key group {kg} failed: {e}")))?;
            s.extend_from_slice(&z);
            compressed = s;
            &compressed
        }
    };
    let len = u32::try_from(stored.len())
        .map_err(|_| Error::invalid(format!("key group {kg} holds more than 4 GiB of state")))?;
    let crc = crc32c_append(crc32c(&kg.to_le_bytes()), stored);
    let mut frame = Vec::with_capacity(8 + stored.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(stored);
    Ok(frame)
}

/// Checks and opens the key-group frame of `kg` at the start of `data`
/// (written by [`encode_frame`]); returns the payload (decompressed when
/// `compressed`) and the frame's length. Fails with `Corrupted` on a short
/// frame or a checksum mismatch.
pub fn decode_frame(kg: u32, data: &Bytes, compressed: bool) -> Result<(Bytes, usize)> {
    let mut r = Reader::new(data);
    let len = r.u32_le("frame length")? as usize;
    let crc = r.u32_le("frame checksum")?;
    let stored = r.take(len, "key-group frame")?;
    let actual = crc32c_append(crc32c(&kg.to_le_bytes()), stored);
    if actual != crc {
        return Err(Error::corrupted(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )));
    }
    let payload = if compressed {
        decompress(stored)?
    } else {
        data.slice(8..8 + len)
    };
    Ok((payload, 8 + len))
}

/// A backend's view of its state, frozen at the sync phase, that writes one
/// key group at a time.
pub trait KeyGroupSource: Send {
    /// Writes every record of key group `kg`.
    fn write_key_group(&mut self, kg: u32, out: &mut KeyGroupWriter) -> Result<()>;
}

/// What a canonical snapshot write produced.
#[derive(Debug, Clone)]
pub struct CanonicalWriteResult {
    /// The handle to the written stream.
    pub handle: KeyGroupsStateHandle,
    /// Records written (values, lists and map entries).
    pub records: u64,
}

/// Frames in flight between the thread that builds them and the stream.
const FRAMES_IN_FLIGHT: usize = 4;

/// Writes a canonical snapshot of `header.range` from `source` to `stream`.
/// With no states, writes nothing and returns an empty handle.
/// `compression_level` turns zstd on.
///
/// The source is read, and frames compressed, on a blocking thread
/// ([`run_blocking`](crate::runtime::run_blocking)); frames reach the async stream
/// through a bounded channel, so the engine's executor is never blocked and
/// at most a few frames are in memory. If the stream fails (or this future
/// is dropped), the producer stops at its next frame.
pub async fn write_canonical_snapshot<S: KeyGroupSource + 'static>(
    header: &SnapshotHeader,
    mut source: S,
    filter: TtlFilter,
    mut stream: CheckpointOutputStream,
    compression_level: Option<i32>,
) -> Result<CanonicalWriteResult> {
    use futures::{SinkExt, StreamExt};
    if header.states.is_empty() {
        stream.abort().await;
        return Ok(CanonicalWriteResult {
            handle: KeyGroupsStateHandle {
                range: header.range,
                offsets: Vec::new(),
                stream: StreamStateHandle::Empty,
            },
            records: 0,
        });
    }
    let level = if header.compressed {
        Some(compression_level.unwrap_or(3))
    } else {
        None
    };
    let range = header.range;
    let (mut tx, mut rx) = futures::channel::mpsc::channel::<Vec<u8>>(FRAMES_IN_FLIGHT);
    let producer = crate::runtime::run_blocking(move || {
        let mut writer = KeyGroupWriter::new(filter);
        for kg in range.iter() {
            source.write_key_group(kg, &mut writer)?;
            let frame = writer.finish_frame(kg, level)?;
            if futures::executor::block_on(tx.send(frame)).is_err() {
                // The writer stopped (failed or was dropped).
                return Err(Error::new(ErrorKind::Closed, "the snapshot stream was closed"));
            }
        }
        Ok(writer.records)
    });
    let mut offsets = Vec::with_capacity(range.len() as usize);
    let consumer = async {
        let r = async {
            stream.write(&header.encode()).await?;
            while let Some(frame) = rx.next().await {
                offsets.push(stream.position());
                stream.write_bytes(frame.into()).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        // Unblocks a producer waiting to send after a failure.
        rx.close();
        r
    };
    let (records, written) = futures::join!(producer, consumer);
    let records = match (records, written) {
        (Ok(records), Ok(())) if offsets.len() == range.len() as usize => records,
        (Ok(_), Ok(())) => {
            stream.abort().await;
            return Err(Error::internal("the snapshot producer stopped early"));
        }
        // The stream's error is the cause when both failed.
        (_, Err(e)) | (Err(e), Ok(())) => {
            stream.abort().await;
            return Err(e);
        }
    };
    let handle = stream.close().await?;
    Ok(CanonicalWriteResult {
        handle: KeyGroupsStateHandle {
            range: header.range,
            offsets,
            stream: handle,
        },
        records,
    })
}

/// Inserts one batch of key groups of a canonical snapshot into a backend:
/// the backend, the snapshot, the key groups of the batch, the backend's
/// id of each state of the snapshot (in header order), and the snapshot's
/// name for errors.
pub type InsertKeyGroups<B> =
    fn(&mut B, &CanonicalSnapshot, KeyGroupRange, &[crate::descriptor::StateId], &str) -> Result<()>;

/// Restores the key groups of `backend`'s range held by the canonical
/// snapshot `handle`: reads its header and owned frames a bounded batch
/// (16 MiB) at a time on the
/// calling task, and checks the header
/// ([`restore_header`](crate::KeyedStateBackend::restore_header)) and runs
/// `insert` for each batch on a blocking thread. Returns the backend and
/// the bytes read.
pub async fn restore_key_groups<B: crate::KeyedStateBackend + Send + 'static>(
    backend: B,
    handle: &KeyGroupsStateHandle,
    reader: &dyn StateReader,
    insert: InsertKeyGroups<B>,
) -> Result<(B, u64)> {
    let range = backend.core().key_group_range();
    let name = handle.describe();
    let mut known: Option<Vec<crate::descriptor::StateId>> = None;
    let (mut this, mut bytes) = (backend, 0);
    for part in handle.key_group_batches(range, crate::checkpoint::handle::RESTORE_BATCH_BYTES)? {
        let (snapshot, read) = CanonicalSnapshot::read(reader, handle, part, &name)
            .await
            .map_err(|e| e.context(format!("restoring key groups {}", handle.range)))?;
        bytes += read;
        let (name, ids) = (name.clone(), known.clone());
        let (back, ids) = crate::runtime::run_blocking(move || {
            let ids = match ids {
                Some(ids) => ids,
                None => this.restore_header(snapshot.header(), &name)?,
            };
            insert(&mut this, &snapshot, part, &ids, &name)?;
            Ok((this, ids))
        })
        .await?;
        this = back;
        known = Some(ids);
    }
    Ok((this, bytes))
}

/// One record of a key group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A value (also reducing or aggregating state).
    Value {
        /// State index into the header.
        state: u32,
        /// Serialized key.
        key: &'a [u8],
        /// Serialized namespace.
        namespace: &'a [u8],
        /// The value bytes.
        value: &'a [u8],
    },
    /// A whole list.
    List {
        /// State index into the header.
        state: u32,
        /// Serialized key.
        key: &'a [u8],
        /// Serialized namespace.
        namespace: &'a [u8],
        /// The elements.
        elements: Vec<&'a [u8]>,
    },
    /// One map entry.
    MapEntry {
        /// State index into the header.
        state: u32,
        /// Serialized key.
        key: &'a [u8],
        /// Serialized namespace.
        namespace: &'a [u8],
        /// Serialized user key.
        user_key: &'a [u8],
        /// The value bytes.
        value: &'a [u8],
    },
    /// One timer.
    Timer {
        /// State index into the header.
        state: u32,
        /// Serialized key.
        key: &'a [u8],
        /// Serialized namespace.
        namespace: &'a [u8],
        /// When it fires.
        timestamp: i64,
    },
}

impl<'a> Record<'a> {
    /// The state index into the header.
    pub fn state(&self) -> u32 {
        match self {
            Record::Value { state, .. }
            | Record::List { state, .. }
            | Record::MapEntry { state, .. }
            | Record::Timer { state, .. } => *state,
        }
    }

    /// The serialized key.
    pub fn key(&self) -> &'a [u8] {
        match self {
            Record::Value { key, .. }
            | Record::List { key, .. }
            | Record::MapEntry { key, .. }
            | Record::Timer { key, .. } => key,
        }
    }

    /// The serialized namespace.
    pub fn namespace(&self) -> &'a [u8] {
        match self {
            Record::Value { namespace, .. }
            | Record::List { namespace, .. }
            | Record::MapEntry { namespace, .. }
            | Record::Timer { namespace, .. } => namespace,
        }
    }
}

/// A canonical snapshot opened for reading: header parsed, key groups
/// verified one at a time as they are read.
#[derive(Debug, Clone)]
pub struct CanonicalSnapshot {
    /// Bytes `base..base + data.len()` of the stream.
    data: Bytes,
    base: u64,
    header: SnapshotHeader,
    kinds: Vec<StorageKind>,
    offsets: Vec<u64>,
    name: String,
}

impl CanonicalSnapshot {
    /// Opens the bytes `data` that `handle` references; `name` is used in
    /// every error message (the file or checkpoint).
    pub fn open(data: Bytes, handle: &KeyGroupsStateHandle, name: &str) -> Result<Self> {
        let ctx = |e: Error| e.context(format!("snapshot {name}"));
        if data.len() as u64 != handle.stream.size() {
            return Err(ctx(Error::corrupted(format!(
                "holds {} bytes but its handle says {} (truncated or replaced)",
                data.len(),
                handle.stream.size()
            ))));
        }
        let (header, header_len) = SnapshotHeader::decode(&data).map_err(ctx)?;
        if header.range != handle.range {
            return Err(ctx(Error::corrupted(format!(
                "covers key groups {} but its handle says {}",
                header.range, handle.range
            ))));
        }
        if handle.offsets.len() != header.range.len() as usize {
            return Err(ctx(Error::corrupted(format!(
                "handle lists {} key-group offsets for {} key groups",
                handle.offsets.len(),
                header.range.len()
            ))));
        }
        if let Some(o) = handle
            .offsets
            .iter()
            .find(|o| **o < header_len as u64 || **o >= data.len() as u64)
        {
            return Err(ctx(Error::corrupted(format!(
                "key-group offset {o} lies outside the key-group frames"
            ))));
        }
        let kinds = header.states.iter().map(|s| s.kind.storage()).collect();
        Ok(CanonicalSnapshot {
            data,
            base: 0,
            header,
            kinds,
            offsets: handle.offsets.clone(),
            name: name.to_string(),
        })
    }

    /// Reads only what a backend owning key groups `want` needs: the header
    /// and the frames of the key groups in both `want` and the handle's
    /// range, with two ranged reads. Returns the snapshot and the bytes read.
    pub async fn read(
        reader: &dyn StateReader,
        handle: &KeyGroupsStateHandle,
        want: KeyGroupRange,
        name: &str,
    ) -> Result<(Self, u64)> {
        let ctx = |e: Error| e.context(format!("snapshot {name}"));
        let size = handle.stream.size();
        let overlap = handle.range.intersect(&want);
        let offsets = &handle.offsets;
        // Inline streams are in memory already; a snapshot read whole anyway
        // gains nothing from ranges.
        if !matches!(handle.stream, StreamStateHandle::File { .. }) || overlap == handle.range || offsets.is_empty() {
            let data = reader.read(&handle.stream).await?;
            let n = data.len() as u64;
            return Ok((Self::open(data, handle, name)?, n));
        }
        if offsets.len() != handle.range.len() as usize || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(ctx(Error::corrupted(format!(
                "handle lists {} key-group offsets, not in order, for {} key groups",
                offsets.len(),
                handle.range.len()
            ))));
        }
        let header_end = offsets[0];
        let frames = if overlap.is_empty() {
            header_end..header_end
        } else {
            let first = (overlap.start() - handle.range.start()) as usize;
            let last = (overlap.end() - handle.range.start()) as usize;
            offsets[first]..offsets.get(last).copied().unwrap_or(size)
        };
        if header_end > size || frames.end > size {
            return Err(ctx(Error::corrupted(format!(
                "key-group offsets reach past the end of the stream ({size} bytes)"
            ))));
        }
        let parts = reader
            .read_ranges(&handle.stream, &[0..header_end, frames.clone()])
            .await?;
        let [head, data] = <[Bytes; 2]>::try_from(parts)
            .map_err(|_| Error::internal("a ranged read returned the wrong number of parts"))?;
        let (header, header_len) = SnapshotHeader::decode(&head).map_err(ctx)?;
        if header_len as u64 != header_end {
            return Err(ctx(Error::corrupted(format!(
                "the first key-group frame starts at {header_end}, not after the {header_len}-byte header"
            ))));
        }
        if header.range != handle.range {
            return Err(ctx(Error::corrupted(format!(
                "covers key groups {} but its handle says {}",
                header.range, handle.range
            ))));
        }
        let read = head.len() as u64 + data.len() as u64;
        let kinds = header.states.iter().map(|s| s.kind.storage()).collect();
        Ok((
            CanonicalSnapshot {
                data,
                base: frames.start,
                header,
                kinds,
                offsets: offsets.clone(),
                name: name.to_string(),
            },
            read,
        ))
    }

    /// The header.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The verified, decompressed records of key group `kg`.
    pub fn key_group(&self, kg: u32) -> Result<KeyGroupRecords<'_>> {
        let ctx = |e: Error| e.context(format!("snapshot {}, key group {kg}", self.name));
        if !self.header.range.contains(kg) {
            return Err(ctx(Error::invalid(format!(
                "not in the snapshot's range {}",
                self.header.range
            ))));
        }
        let at = self.offsets[(kg - self.header.range.start()) as usize];
        let end = self.base + self.data.len() as u64;
        if at < self.base || at >= end {
            return Err(ctx(Error::invalid(
                "its bytes were not read (outside the key groups asked for)",
            )));
        }
        let offset = (at - self.base) as usize;
        let (payload, _) = decode_frame(kg, &self.data.slice(offset..), self.header.compressed).map_err(ctx)?;
        Ok(KeyGroupRecords {
            payload,
            kinds: &self.kinds,
            name: &self.name,
            kg,
        })
    }
}

fn decompress(stored: &[u8]) -> Result<Bytes> {
    let mut r = Reader::new(stored);
    let len = r.u32_le("uncompressed length")? as u64;
    let compressed = r.take(r.remaining(), "compressed payload")?;
    let decoder = zstd::stream::read::Decoder::new(compressed)
        .map_err(|e| Error::corrupted(format!("zstd: {e}")).with_source(e))?;
    let mut out = Vec::new();
    // Output grows only as data really decompresses, up to the declared length.
    decoder
        .take(len + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::corrupted(format!("zstd: {e}")).with_source(e))?;
    if out.len() as u64 != len {
        return Err(Error::corrupted(format!(
            "decompressed to {} bytes, expected {len}",
            out.len()
        )));
    }
    Ok(Bytes::from(out))
}

/// The records of one key group.
#[derive(Debug)]
pub struct KeyGroupRecords<'s> {
    payload: Bytes,
    kinds: &'s [StorageKind],
    name: &'s str,
    kg: u32,
}

impl KeyGroupRecords<'_> {
    /// Calls `f` with every record, in order.
    pub fn for_each(&self, mut f: impl FnMut(Record<'_>) -> Result<()>) -> Result<()> {
        let mut r = Reader::new(&self.payload);
        while !r.is_empty() {
            let record = self
                .next_record(&mut r)
                .map_err(|e| e.context(format!("snapshot {}, key group {}", self.name, self.kg)))?;
            f(record)?;
        }
        Ok(())
    }

    /// Like [`for_each`](Self::for_each), refusing any record whose key does
    /// not hash to this key group at `max_parallelism`.
    pub fn for_each_verified(&self, max_parallelism: u32, mut f: impl FnMut(Record<'_>) -> Result<()>) -> Result<()> {
        let kg = self.kg;
        self.for_each(|record| {
            let found = crate::keygroup::key_group_for_key_bytes(record.key(), max_parallelism);
            if found != kg {
                return Err(Error::corrupted(format!(
                    "snapshot {}: a key of key group {found} is stored in key group {kg}",
                    self.name
                )));
            }
            f(record)
        })
    }

    fn next_record<'a>(&self, r: &mut Reader<'a>) -> Result<Record<'a>> {
        let state = r.varint_u32("state index")?;
        let kind = *self
            .kinds
            .get(state as usize)
            .ok_or_else(|| Error::corrupted(format!("record refers to state {state} of {}", self.kinds.len())))?;
        let key = r.bytes("key")?;
        let namespace = r.bytes("namespace")?;
        Ok(match kind {
            StorageKind::Value => Record::Value {
                state,
                key,
                namespace,
                value: r.bytes("value")?,
            },
            StorageKind::List => {
                let n = r.count(1, "list length")?;
                let mut elements = Vec::with_capacity(n);
                for _ in 0..n {
                    elements.push(r.bytes("list element")?);
                }
                Record::List {
                    state,
                    key,
                    namespace,
                    elements,
                }
            }
            StorageKind::Map => Record::MapEntry {
                state,
                key,
                namespace,
                user_key: r.bytes("map user key")?,
                value: r.bytes("map value")?,
            },
            StorageKind::Timers => Record::Timer {
                state,
                key,
                namespace,
                timestamp: crate::format::codec::decode_timestamp(r.array::<8>("timer timestamp")?),
            },
        })
    }
}

/// Checks that a restored snapshot can be read by this backend: it was
/// written at the same max parallelism (else `Incompatible`, naming both
/// values) and with the key serializer in use (else `Incompatible`).
pub fn check_compatible(header: &SnapshotHeader, ours: &SerializerId, max_parallelism: u32, name: &str) -> Result<()> {
    if header.max_parallelism != max_parallelism {
        return Err(Error::new(
            ErrorKind::Incompatible,
            format!(
                "snapshot {name} was taken at max parallelism {} but this backend runs at max parallelism \
                 {max_parallelism}; key groups cannot be remapped: restore with max parallelism {}",
                header.max_parallelism, header.max_parallelism
            ),
        ));
    }
    if &header.key_serializer != ours {
        return Err(Error::new(
            ErrorKind::Incompatible,
            format!(
                "snapshot {name}: keys were written by {} but the backend's key serializer is {ours}",
                header.key_serializer
            ),
        ));
    }
    Ok(())
}
