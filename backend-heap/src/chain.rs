//! Incremental checkpoints of the heap backend: per key group, a chain of
//! frames in shared files, a base followed by deltas (docs/format.md,
//! "Heap chains").
//!
//! Every write marks its key (key and namespace, or a timer) as changed in
//! its state's current change set. A checkpoint's sync phase seals the
//! current sets and decides, per key group, whether to keep its chain (no
//! change since the last confirmed checkpoint), add a delta (the changed
//! keys, each as a put of its value at the sync phase or as a delete), or
//! write it again whole. Sealed sets are dropped only when a checkpoint
//! that includes them is confirmed, so an aborted or unconfirmed checkpoint
//! makes the next delta larger and never forces a full one.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flowstate_api::backend::{AsyncOutput, StateId};
use flowstate_api::checkpoint::{
    CheckpointLocation, HandleFile, IncrementalStateHandle, NativeFormat, StateReader, StateScope, StreamStateHandle,
};
use flowstate_api::format::canonical::{decode_frame, encode_frame, SnapshotHeader, TtlFilter};
use flowstate_api::format::codec::{
    crc32c_append, decode_envelope, decode_timestamp, encode_envelope, encode_timestamp, put_bytes, put_varint, Reader,
};
use flowstate_api::{Error, ErrorKind, KeyGroupRange, KeyedStateHandle, RestoreMode, Result};

use crate::table::{
    compose, elements, packed, split_composite, ChangeSet, Changes, CompositeKey, Inline, Table, UserMap,
};

/// Magic of the chain index that follows the snapshot header in a heap
/// chain handle's metadata stream.
pub const CHAIN_MAGIC: [u8; 4] = *b"FSHC";
/// Version of the chain index.
pub const CHAIN_VERSION: u16 = 1;

/// Record operation: put (a value, a whole list, a whole map, a timer).
const OP_PUT: u8 = 0;
/// Record operation: delete (a key and namespace, or one timer).
const OP_DELETE: u8 = 1;
/// Segment flag: the frame is zstd-compressed.
const SEG_COMPRESSED: u8 = 1;

/// The most bytes of segments a restore reads at once.
const RESTORE_BATCH_BYTES: u64 = 16 << 20;

/// Options of the heap backend.
#[derive(Debug, Clone, PartialEq)]
pub struct HeapOptions {
    /// Checkpoints write only what changed since the last confirmed one
    /// (per key group, a delta on a chain); savepoints stay canonical and
    /// self-contained. Off by default: every checkpoint is a canonical full
    /// snapshot.
    pub incremental: bool,
    /// A key group's chain is written whole again once its deltas hold more
    /// than this many times the bytes of its base.
    pub max_delta_ratio: f64,
    /// Whether a restored chain may be shared by new checkpoints (claim) or
    /// not (no-claim: the first checkpoint writes every key group whole).
    pub restore_mode: RestoreMode,
}

impl Default for HeapOptions {
    fn default() -> Self {
        HeapOptions {
            incremental: false,
            max_delta_ratio: 1.0,
            restore_mode: RestoreMode::Claim,
        }
    }
}

impl HeapOptions {
    /// Incremental checkpoints with the default bounds.
    pub fn incremental() -> Self {
        HeapOptions {
            incremental: true,
            ..Self::default()
        }
    }

    /// Sets the restore mode.
    pub fn with_restore_mode(mut self, mode: RestoreMode) -> Self {
        self.restore_mode = mode;
        self
    }

    /// Sets the bound of a chain's deltas, as a multiple of its base.
    pub fn with_max_delta_ratio(mut self, ratio: f64) -> Self {
        self.max_delta_ratio = ratio;
        self
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if !(self.max_delta_ratio.is_finite() && self.max_delta_ratio >= 0.0) {
            return Err(Error::invalid(format!(
                "max_delta_ratio must be a finite number at least 0, not {}",
                self.max_delta_ratio
            )));
        }
        Ok(())
    }
}

/// One link of a key group's chain: a frame in a shared file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) file: Arc<HandleFile>,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) compressed: bool,
}

/// A key group's chain: its base, then its deltas, oldest first. Empty when
/// the key group holds nothing.
pub(crate) type Chain = Vec<Segment>;

/// What the backend knows of its chains: the chains of the last confirmed
/// checkpoint and of those whose async phase finished since.
#[derive(Default)]
pub(crate) struct Book {
    /// Per key-group index, the chain of the last confirmed checkpoint;
    /// `None` where there is none to build on (the next checkpoint writes
    /// the key group whole).
    pub(crate) base: Vec<Option<Chain>>,
    /// The last confirmed checkpoint; notifications at or below it are ignored.
    pub(crate) base_id: Option<u64>,
    /// Per checkpoint whose async phase finished: its seal and its chains.
    pub(crate) pending: BTreeMap<u64, (u64, Vec<Option<Chain>>)>,
    /// Per checkpoint newer than the base that may still complete: per key
    /// group, the chain it builds on (`None` where it writes the key group
    /// whole). Should it complete, it may subsume the base, and then only
    /// the files it references are sure to stay; so a later checkpoint
    /// builds on the base's chain of a key group only where every such
    /// checkpoint built on that same chain, and writes it whole elsewhere.
    pub(crate) planned: BTreeMap<u64, Vec<Option<Chain>>>,
}

/// The heap backend's incremental checkpoint state.
pub(crate) struct Incremental {
    pub(crate) book: Arc<Mutex<Book>>,
    /// Sequence number of the last seal.
    pub(crate) seq: u64,
    /// The next checkpoint writes every key group whole (after `compact`).
    pub(crate) rewrite_all: bool,
    /// Writes are tracked: from the first checkpoint's sync phase on, or
    /// from a restore that builds on restored chains. Before, every key
    /// group's next checkpoint writes it whole, so tracking would only cost.
    pub(crate) armed: bool,
    pub(crate) max_delta_ratio: f64,
    pub(crate) backend_id: String,
}

impl Incremental {
    pub(crate) fn new(key_groups: usize, max_delta_ratio: f64) -> Self {
        Incremental {
            book: Arc::new(Mutex::new(Book {
                base: vec![None; key_groups],
                ..Book::default()
            })),
            seq: 0,
            rewrite_all: false,
            armed: false,
            max_delta_ratio,
            backend_id: unique_backend_id(),
        }
    }

    pub(crate) fn book(&self) -> Result<std::sync::MutexGuard<'_, Book>> {
        lock(&self.book)
    }
}

fn lock(book: &Mutex<Book>) -> Result<std::sync::MutexGuard<'_, Book>> {
    book.lock()
        .map_err(|_| Error::internal("heap chain book lock poisoned"))
}

/// An id for this backend instance, unique across processes and restarts
/// (from the standard library's randomly keyed hasher).
fn unique_backend_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("heap-{:016x}", h.finish())
}

/// What a checkpoint does with one key group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Nothing changed since the base: its chain as it is.
    Keep,
    /// The changed keys, on top of the base's chain.
    Delta,
    /// Every entry: a new base.
    Whole,
}

/// One state as the sync phase froze it.
pub(crate) struct FrozenState {
    pub(crate) table: Table,
    pub(crate) sealed: Vec<Arc<ChangeSet>>,
}

/// What a checkpoint's sync phase decided.
pub(crate) struct Sealed {
    /// The states, frozen.
    pub(crate) states: Vec<FrozenState>,
    /// Per key-group index, what to write.
    pub(crate) plans: Vec<Plan>,
    /// The chains of the base.
    pub(crate) base: Vec<Option<Chain>>,
    /// The seal's sequence number.
    pub(crate) seq: u64,
}

/// The sync phase of an incremental checkpoint: seals the change sets and
/// plans every key group.
pub(crate) fn seal(
    inc: &mut Incremental,
    states: Vec<(&Table, &mut Option<Box<Changes>>)>,
    checkpoint_id: u64,
) -> Result<Sealed> {
    inc.seq += 1;
    inc.armed = true;
    let seq = inc.seq;
    let mut frozen = Vec::with_capacity(states.len());
    for (table, changes) in states {
        let key_groups = match table {
            Table::Value(m) => m.len(),
            Table::List(m) => m.len(),
            Table::Map(m) => m.len(),
            Table::Timers(t) => t.sets.len(),
        };
        let c = changes.get_or_insert_with(|| Box::new(Changes::new(key_groups)));
        let current = std::mem::replace(&mut c.current, vec![HashSet::default(); key_groups]);
        c.sealed.push((seq, Arc::new(current)));
        frozen.push(FrozenState {
            table: table.clone(),
            sealed: c.sealed.iter().map(|(_, s)| Arc::clone(s)).collect(),
        });
    }
    let rewrite_all = std::mem::take(&mut inc.rewrite_all);
    let mut book = inc.book()?;
    let mut plans = Vec::with_capacity(book.base.len());
    let mut builds_on = Vec::with_capacity(book.base.len());
    for (i, base) in book.base.iter().enumerate() {
        let changed = frozen.iter().any(|s| s.sealed.iter().any(|set| !set[i].is_empty()));
        let shared_by_all = || book.planned.values().all(|p| p[i] == *base);
        let plan = match base {
            None => Plan::Whole,
            Some(_) if rewrite_all || !shared_by_all() => Plan::Whole,
            Some(chain) if chain_too_long(chain, inc.max_delta_ratio) => Plan::Whole,
            Some(_) if !changed => Plan::Keep,
            Some(_) => Plan::Delta,
        };
        builds_on.push(if plan == Plan::Whole { None } else { base.clone() });
        plans.push(plan);
    }
    book.planned.insert(checkpoint_id, builds_on);
    let base = book.base.clone();
    Ok(Sealed {
        states: frozen,
        plans,
        base,
        seq,
    })
}

/// True when a chain's deltas outgrew its bound.
fn chain_too_long(chain: &Chain, ratio: f64) -> bool {
    match chain.split_first() {
        None => false,
        Some((base, deltas)) => deltas.iter().map(|s| s.len).sum::<u64>() as f64 > base.len as f64 * ratio,
    }
}

/// A checkpoint was confirmed: its chains become the base, and the change
/// sets it includes are dropped.
pub(crate) fn confirmed<'a>(
    inc: &mut Incremental,
    checkpoint_id: u64,
    changes: impl Iterator<Item = &'a mut Option<Box<Changes>>>,
) -> Result<()> {
    let mut book = inc.book()?;
    if book.base_id.is_some_and(|last| checkpoint_id <= last) {
        return Ok(());
    }
    // Only a checkpoint of this backend becomes the base (not a savepoint).
    if let Some((seq, chains)) = book.pending.remove(&checkpoint_id) {
        book.base = chains;
        book.base_id = Some(checkpoint_id);
        for c in changes.flatten() {
            c.sealed.retain(|(s, _)| *s > seq);
        }
    }
    book.pending.retain(|&k, _| k > checkpoint_id);
    // Checkpoints at or below it can no longer complete.
    book.planned.retain(|&k, _| k > checkpoint_id);
    Ok(())
}

/// A checkpoint was aborted: nothing of it becomes a base.
pub(crate) fn aborted(inc: &mut Incremental, checkpoint_id: u64) -> Result<()> {
    let mut book = inc.book()?;
    book.pending.remove(&checkpoint_id);
    book.planned.remove(&checkpoint_id);
    Ok(())
}

// ------------------------------------------------------------------ writing

/// A payload being built, and the records in it.
struct Payload {
    buf: Vec<u8>,
    records: u64,
}

/// Appends a record head.
#[inline]
fn head(p: &mut Payload, state: u32, op: u8, key: &[u8], namespace: &[u8]) {
    p.records += 1;
    let out = &mut p.buf;
    put_varint(out, u64::from(state));
    out.push(op);
    put_bytes(out, key);
    put_bytes(out, namespace);
}

/// Writes the entry `ck` of `table` in key group `kg` as a put, or nothing
/// when it is absent or expired (a delta then writes a delete).
fn put_entry(
    out: &mut Payload,
    state: u32,
    table: &Table,
    kg: usize,
    ck: &[u8],
    filter: &TtlFilter,
    delta: bool,
) -> Result<()> {
    let written = match table {
        Table::Value(maps) => match maps[kg].get(ck) {
            Some(v) if filter.keeps(state, v) => {
                let (key, ns) = split_composite(ck)?;
                head(out, state, OP_PUT, key, ns);
                put_bytes(&mut out.buf, v);
                true
            }
            _ => false,
        },
        Table::List(maps) => match maps[kg].get(ck) {
            Some(list) => {
                let n = elements(list).filter(|e| filter.keeps(state, e)).count();
                if n > 0 {
                    let (key, ns) = split_composite(ck)?;
                    head(out, state, OP_PUT, key, ns);
                    put_varint(&mut out.buf, n as u64);
                    for e in elements(list).filter(|e| filter.keeps(state, e)) {
                        put_bytes(&mut out.buf, e);
                    }
                }
                n > 0
            }
            None => false,
        },
        Table::Map(maps) => match maps[kg].get(ck) {
            Some(m) => {
                let n = m.values().filter(|v| filter.keeps(state, v)).count();
                if n > 0 {
                    let (key, ns) = split_composite(ck)?;
                    head(out, state, OP_PUT, key, ns);
                    put_varint(&mut out.buf, n as u64);
                    for (uk, v) in m.iter().filter(|(_, v)| filter.keeps(state, v)) {
                        put_bytes(&mut out.buf, uk);
                        put_bytes(&mut out.buf, v);
                    }
                }
                n > 0
            }
            None => false,
        },
        Table::Timers(t) => {
            // `ck` is the timestamp's 8 bytes, then the composite key.
            let mut r = Reader::new(ck);
            let ts = decode_timestamp(r.array::<8>("timer timestamp")?);
            let (key, ns) = split_composite(&ck[8..])?;
            let present = t.sets[kg].contains(&(ts, Inline::from_slice(key), Inline::from_slice(ns)));
            head(out, state, if present { OP_PUT } else { OP_DELETE }, key, ns);
            out.buf.extend_from_slice(&encode_timestamp(ts));
            return Ok(());
        }
    };
    if !written && delta {
        let (key, ns) = split_composite(ck)?;
        head(out, state, OP_DELETE, key, ns);
    }
    Ok(())
}

/// The payload of key-group index `kg` under `plan`.
fn key_group_payload(
    states: &[FrozenState],
    kg: usize,
    plan: Plan,
    filter: &TtlFilter,
    out: &mut Payload,
) -> Result<()> {
    out.buf.clear();
    for (s, state) in states.iter().enumerate() {
        let s = s as u32;
        match plan {
            Plan::Keep => {}
            Plan::Whole => match &state.table {
                Table::Value(maps) => {
                    for ck in maps[kg].keys() {
                        put_entry(out, s, &state.table, kg, ck, filter, false)?;
                    }
                }
                Table::List(maps) => {
                    for ck in maps[kg].keys() {
                        put_entry(out, s, &state.table, kg, ck, filter, false)?;
                    }
                }
                Table::Map(maps) => {
                    for ck in maps[kg].keys() {
                        put_entry(out, s, &state.table, kg, ck, filter, false)?;
                    }
                }
                Table::Timers(t) => {
                    for (ts, key, ns) in t.sets[kg].iter() {
                        head(out, s, OP_PUT, key, ns);
                        out.buf.extend_from_slice(&encode_timestamp(*ts));
                    }
                }
            },
            Plan::Delta => {
                let mut keys: Vec<&CompositeKey> = state.sealed.iter().flat_map(|set| set[kg].iter()).collect();
                if state.sealed.len() > 1 {
                    keys.sort_unstable();
                    keys.dedup();
                }
                for ck in keys {
                    put_entry(out, s, &state.table, kg, ck, filter, true)?;
                }
            }
        }
    }
    Ok(())
}

/// The async phase of an incremental heap checkpoint.
pub(crate) struct ChainWrite {
    pub(crate) checkpoint_id: u64,
    pub(crate) seq: u64,
    pub(crate) header: SnapshotHeader,
    pub(crate) states: Vec<FrozenState>,
    pub(crate) plans: Vec<Plan>,
    pub(crate) base: Vec<Option<Chain>>,
    pub(crate) filter: TtlFilter,
    pub(crate) level: Option<i32>,
    pub(crate) book: Arc<Mutex<Book>>,
    pub(crate) backend_id: String,
    pub(crate) closed: Arc<AtomicBool>,
}

/// Frames in flight between the thread that builds them and the stream.
const FRAMES_IN_FLIGHT: usize = 4;

impl ChainWrite {
    /// Writes the frames of the key groups that changed to one shared file
    /// and the chain index to the metadata stream; on failure, deletes what
    /// it wrote.
    pub(crate) async fn run(self, location: Arc<CheckpointLocation>) -> Result<AsyncOutput> {
        let id = self.checkpoint_id;
        let mut written = Vec::new();
        match self.write(&location, &mut written).await {
            Ok(out) => Ok(out),
            Err(e) => {
                if let Err(d) = location.discard(&written).await {
                    tracing::warn!(checkpoint_id = id, error = %d, "files of a failed checkpoint were left for garbage collection");
                }
                Err(e.context(format!("checkpoint {id}")))
            }
        }
    }

    async fn write(
        self,
        location: &Arc<CheckpointLocation>,
        written: &mut Vec<StreamStateHandle>,
    ) -> Result<AsyncOutput> {
        use futures::{SinkExt, StreamExt};
        let ChainWrite {
            checkpoint_id: id,
            seq,
            header,
            states,
            plans,
            base,
            filter,
            level,
            book,
            backend_id,
            closed,
        } = self;
        let range = header.range;
        let first = range.start();
        let any = plans.iter().any(|p| *p != Plan::Keep);
        // Frames of the key groups that are written, in order: (kg index, frame, records).
        let mut frames: Vec<(usize, u64, u64)> = Vec::new();
        let mut records_total = 0u64;
        let mut data = None;
        if any {
            let mut stream = location.create_output_stream(StateScope::Shared).await?;
            let (mut tx, mut rx) = futures::channel::mpsc::channel::<(usize, Vec<u8>)>(FRAMES_IN_FLIGHT);
            let producer_plans = plans.clone();
            let producer = flowstate_api::runtime::run_blocking(move || {
                let mut payload = Payload {
                    buf: Vec::with_capacity(64 << 10),
                    records: 0,
                };
                for (i, plan) in producer_plans.iter().enumerate() {
                    if *plan == Plan::Keep {
                        continue;
                    }
                    if closed.load(Ordering::Acquire) {
                        return Err(Error::new(
                            ErrorKind::Closed,
                            "the heap backend was closed during the snapshot",
                        ));
                    }
                    key_group_payload(&states, i, *plan, &filter, &mut payload)?;
                    let frame = if payload.buf.is_empty() {
                        Vec::new()
                    } else {
                        encode_frame(first + i as u32, &payload.buf, level)?
                    };
                    if futures::executor::block_on(tx.send((i, frame))).is_err() {
                        return Err(Error::new(ErrorKind::Closed, "the snapshot stream was closed"));
                    }
                }
                Ok(payload.records)
            });
            let mut crc = 0u32;
            let consumer = async {
                let r = async {
                    while let Some((i, frame)) = rx.next().await {
                        let at = stream.position();
                        let len = frame.len() as u64;
                        if len > 0 {
                            crc = crc32c_append(crc, &frame);
                            stream.write_bytes(frame.into()).await?;
                        }
                        frames.push((i, at, len));
                    }
                    Ok::<(), Error>(())
                }
                .await;
                rx.close();
                r
            };
            let (produced, consumed) = futures::join!(producer, consumer);
            match consumed.and(produced) {
                Ok(n) => records_total = n,
                Err(e) => {
                    stream.abort().await;
                    return Err(e);
                }
            }
            if frames.iter().all(|f| f.2 == 0) {
                // Only emptied key groups: no file.
                stream.abort().await;
            } else {
                let handle = stream.close().await?;
                written.push(handle.clone());
                data = Some(Arc::new(HandleFile {
                    name: format!("{id}-{backend_id}.chain"),
                    stream: handle,
                    crc32c: crc,
                }));
            }
        }
        // The new chains.
        let mut chains = base;
        let mut at = 0;
        for (i, plan) in plans.iter().enumerate() {
            let new = match (plan, frames.get(at)) {
                (Plan::Keep, _) => continue,
                (_, Some(&(j, offset, len))) if j == i => {
                    at += 1;
                    (len > 0)
                        .then(|| {
                            data.as_ref().map(|f| Segment {
                                file: Arc::clone(f),
                                offset,
                                len,
                                compressed: level.is_some(),
                            })
                        })
                        .flatten()
                }
                _ => return Err(Error::internal("the chain writer stopped early")),
            };
            chains[i] = Some(match (plan, chains[i].take(), new) {
                (Plan::Delta, Some(mut chain), Some(seg)) => {
                    chain.push(seg);
                    chain
                }
                (Plan::Delta, Some(chain), None) => chain,
                (_, _, seg) => seg.into_iter().collect(),
            });
        }
        let (files, index) = encode_index(&chains)?;
        let data_bytes = data.as_ref().map_or(0, |f| f.stream.size());
        let mut meta_bytes = header.encode();
        meta_bytes.extend_from_slice(&index);
        let mut meta = location.create_output_stream(StateScope::Exclusive).await?;
        meta.write(&meta_bytes).await?;
        let meta = meta.close().await?;
        written.push(meta.clone());
        lock(&book)?.pending.insert(id, (seq, chains));
        Ok(AsyncOutput {
            bytes_written: data_bytes + meta.size(),
            records: records_total,
            handle: KeyedStateHandle::Incremental(IncrementalStateHandle {
                format: NativeFormat::HeapChain,
                range,
                backend_id,
                checkpoint_id: id,
                shared: files.iter().map(|f| (**f).clone()).collect(),
                private: Vec::new(),
                meta,
            }),
        })
    }
}

/// The files the chains reference (each once, in name order) and the
/// chain index that points into that list.
fn encode_index(chains: &[Option<Chain>]) -> Result<(Vec<Arc<HandleFile>>, Vec<u8>)> {
    let mut files: Vec<Arc<HandleFile>> = Vec::new();
    for seg in chains.iter().flatten().flatten() {
        if !files.iter().any(|f| f.stream == seg.file.stream) {
            files.push(Arc::clone(&seg.file));
        }
    }
    files.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| a.stream.describe().cmp(&b.stream.describe()))
    });
    let mut payload = Vec::new();
    put_varint(&mut payload, chains.len() as u64);
    for chain in chains {
        let chain = chain
            .as_ref()
            .ok_or_else(|| Error::internal("a key group without a chain after a checkpoint"))?;
        put_varint(&mut payload, chain.len() as u64);
        for seg in chain {
            let file = files
                .iter()
                .position(|f| f.stream == seg.file.stream)
                .ok_or_else(|| Error::internal("a segment's file is not in the handle"))?;
            put_varint(&mut payload, file as u64);
            put_varint(&mut payload, seg.offset);
            put_varint(&mut payload, seg.len);
            payload.push(if seg.compressed { SEG_COMPRESSED } else { 0 });
        }
    }
    Ok((files, encode_envelope(CHAIN_MAGIC, CHAIN_VERSION, 0, &payload)))
}

// ------------------------------------------------------------------ reading

/// A heap chain handle's metadata, decoded and checked against the handle.
pub(crate) struct ChainIndex {
    pub(crate) header: SnapshotHeader,
    /// Per key group of the handle's range, its chain.
    pub(crate) chains: Vec<Chain>,
}

/// Decodes the metadata stream `data` of `handle` (`name` names it in errors).
pub(crate) fn decode_index(data: &[u8], handle: &IncrementalStateHandle, name: &str) -> Result<ChainIndex> {
    let ctx = |e: Error| e.context(format!("chain index of {name}"));
    let (header, header_len) = SnapshotHeader::decode(data).map_err(ctx)?;
    if header.range != handle.range {
        return Err(ctx(Error::corrupted(format!(
            "covers key groups {} but its handle says {}",
            header.range, handle.range
        ))));
    }
    let env = decode_envelope(&data[header_len..], CHAIN_MAGIC, "heap chain index").map_err(ctx)?;
    if env.len != data.len() - header_len {
        return Err(ctx(Error::corrupted(format!(
            "{} bytes after the chain index",
            data.len() - header_len - env.len
        ))));
    }
    let files: Vec<Arc<HandleFile>> = handle.shared.iter().cloned().map(Arc::new).collect();
    let mut r = Reader::new(env.payload);
    let n = r.count(1, "key-group chains").map_err(ctx)?;
    if n != handle.range.len() as usize {
        return Err(ctx(Error::corrupted(format!(
            "{n} chains for the {} key groups of {}",
            handle.range.len(),
            handle.range
        ))));
    }
    let mut chains = Vec::with_capacity(n);
    for kg in handle.range.iter() {
        let segments = r.count(4, "chain length").map_err(ctx)?;
        let mut chain = Vec::with_capacity(segments);
        for _ in 0..segments {
            let file = r.varint("segment file").map_err(ctx)?;
            let offset = r.varint("segment offset").map_err(ctx)?;
            let len = r.varint("segment length").map_err(ctx)?;
            let flags = r.u8("segment flags").map_err(ctx)?;
            let file = usize::try_from(file).ok().and_then(|f| files.get(f)).ok_or_else(|| {
                ctx(Error::corrupted(format!(
                    "key group {kg}: segment in file {file} of {}",
                    files.len()
                )))
            })?;
            let size = file.stream.size();
            if len < 8 || offset.checked_add(len).is_none_or(|end| end > size) || flags & !SEG_COMPRESSED != 0 {
                return Err(ctx(Error::corrupted(format!(
                    "key group {kg}: segment {offset}+{len} (flags {flags:#x}) does not fit {} ({size} bytes)",
                    file.stream.describe()
                ))));
            }
            chain.push(Segment {
                file: Arc::clone(file),
                offset,
                len,
                compressed: flags & SEG_COMPRESSED != 0,
            });
        }
        chains.push(chain);
    }
    r.finish("chain index").map_err(ctx)?;
    Ok(ChainIndex { header, chains })
}

/// Names a chain handle for errors.
pub(crate) fn describe(h: &IncrementalStateHandle) -> String {
    format!(
        "heap checkpoint {} of backend {} (key groups {}, index {})",
        h.checkpoint_id,
        h.backend_id,
        h.range,
        h.meta.describe()
    )
}

/// Reads the metadata of a chain handle and decodes it.
pub(crate) async fn read_index(h: &IncrementalStateHandle, reader: &dyn StateReader) -> Result<ChainIndex> {
    let name = describe(h);
    let data = reader
        .read(&h.meta)
        .await
        .map_err(|e| e.context(format!("reading the chain index of {name}")))?;
    decode_index(&data, h, &name)
}

/// The segments of the key groups `want` (within the index's range), read
/// a bounded batch at a time: calls `apply` with each batch's key groups
/// and, per key group, the bytes of its segments in chain order.
pub(crate) async fn read_segments<S>(
    index: &ChainIndex,
    want: KeyGroupRange,
    reader: &dyn StateReader,
    mut state: S,
    mut apply: impl FnMut(S, Vec<(u32, Vec<(Bytes, bool)>)>) -> futures::future::BoxFuture<'static, Result<S>>,
) -> Result<(S, u64)> {
    let overlap = index.header.range.intersect(&want);
    let first = index.header.range.start();
    let mut read = 0u64;
    let mut batch: Vec<u32> = Vec::new();
    let mut batch_bytes = 0u64;
    let kgs: Vec<u32> = overlap.iter().collect();
    let mut at = 0;
    while at < kgs.len() || !batch.is_empty() {
        if at < kgs.len() {
            let kg = kgs[at];
            let bytes: u64 = index.chains[(kg - first) as usize].iter().map(|s| s.len).sum();
            if batch.is_empty() || batch_bytes + bytes <= RESTORE_BATCH_BYTES {
                batch.push(kg);
                batch_bytes += bytes;
                at += 1;
                continue;
            }
        }
        // Read the batch: per file, every segment's range, in one request.
        let mut by_file: Vec<(Arc<HandleFile>, Vec<std::ops::Range<u64>>)> = Vec::new();
        for &kg in &batch {
            for seg in &index.chains[(kg - first) as usize] {
                let r = seg.offset..seg.offset + seg.len;
                match by_file.iter_mut().find(|(f, _)| f.stream == seg.file.stream) {
                    Some((_, ranges)) => ranges.push(r),
                    None => by_file.push((Arc::clone(&seg.file), vec![r])),
                }
            }
        }
        let mut parts: Vec<(Arc<HandleFile>, std::vec::IntoIter<Bytes>)> = Vec::new();
        for (file, ranges) in by_file {
            let got = reader
                .read_ranges(&file.stream, &ranges)
                .await
                .map_err(|e| e.context(format!("reading heap chain file {}", file.stream.describe())))?;
            if got.len() != ranges.len() {
                return Err(Error::internal("a ranged read returned the wrong number of parts"));
            }
            read += got.iter().map(|b| b.len() as u64).sum::<u64>();
            parts.push((file, got.into_iter()));
        }
        let mut items = Vec::with_capacity(batch.len());
        for &kg in &batch {
            let mut segs = Vec::new();
            for seg in &index.chains[(kg - first) as usize] {
                let (_, it) = parts
                    .iter_mut()
                    .find(|(f, _)| f.stream == seg.file.stream)
                    .ok_or_else(|| Error::internal("a segment's file was not read"))?;
                let bytes = it
                    .next()
                    .ok_or_else(|| Error::internal("a ranged read returned too few parts"))?;
                segs.push((bytes, seg.compressed));
            }
            items.push((kg, segs));
        }
        state = apply(state, items).await?;
        batch.clear();
        batch_bytes = 0;
    }
    Ok((state, read))
}

/// Applies the records of one segment of key group `kg` (index `i` in the
/// backend's range) to `tables` (by the segment's state index), refusing
/// any key that does not belong to `kg`.
pub(crate) fn apply_segment(
    tables: &mut [&mut Table],
    ids: &[StateId],
    (kg, i): (u32, usize),
    (data, compressed): (&Bytes, bool),
    max_parallelism: u32,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let (payload, len) = decode_frame(kg, data, compressed)?;
    if len != data.len() {
        return Err(Error::corrupted(format!(
            "key group {kg}: segment of {} bytes holds a frame of {len}",
            data.len()
        )));
    }
    let mut r = Reader::new(&payload);
    while !r.is_empty() {
        let state = r.varint_u32("state index")?;
        let op = r.u8("record operation")?;
        let key = r.bytes("key")?;
        let ns = r.bytes("namespace")?;
        let found = flowstate_api::key_group_for_key_bytes(key, max_parallelism);
        if found != kg {
            return Err(Error::corrupted(format!(
                "a key of key group {found} is stored in key group {kg}"
            )));
        }
        let id = *ids
            .get(state as usize)
            .ok_or_else(|| Error::corrupted(format!("record refers to state {state} of {}", ids.len())))?;
        let table = tables
            .get_mut(id as usize)
            .ok_or_else(|| Error::internal(format!("state {id} has no table")))?;
        if op > OP_DELETE {
            return Err(Error::corrupted(format!("unknown record operation {op}")));
        }
        compose(scratch, key, ns);
        let ck: &[u8] = scratch;
        match &mut **table {
            Table::Value(maps) => {
                if op == OP_PUT {
                    maps[i].put(ck, r.bytes("value")?);
                } else {
                    maps[i].remove(ck);
                }
            }
            Table::List(maps) => {
                if op == OP_PUT {
                    let n = r.count(1, "list length")?;
                    let mut list = Vec::with_capacity(n);
                    for _ in 0..n {
                        list.push(r.bytes("list element")?);
                    }
                    maps[i].insert(CompositeKey::from_slice(ck), Arc::new(packed(list)));
                } else {
                    maps[i].remove(ck);
                }
            }
            Table::Map(maps) => {
                if op == OP_PUT {
                    let n = r.count(2, "map size")?;
                    let mut m = std::collections::BTreeMap::new();
                    for _ in 0..n {
                        let uk = r.bytes("map user key")?;
                        let v = r.bytes("map value")?;
                        m.insert(Inline::from_slice(uk), Inline::from_slice(v));
                    }
                    if m.is_empty() {
                        maps[i].remove(ck);
                    } else {
                        let m: UserMap = Arc::new(m);
                        maps[i].insert(CompositeKey::from_slice(ck), m);
                    }
                } else {
                    maps[i].remove(ck);
                }
            }
            Table::Timers(t) => {
                let ts = decode_timestamp(r.array::<8>("timer timestamp")?);
                if op == OP_PUT {
                    t.insert(i, ts, key, ns);
                } else {
                    t.remove(i, ts, key, ns);
                }
            }
        }
    }
    Ok(())
}

/// Turns a heap chain handle (an incremental heap checkpoint) into a
/// canonical snapshot written to `location`: what `flowstate savepoint
/// convert` does. The handle's state is rebuilt in memory, then written.
pub async fn chain_to_canonical(
    handle: &IncrementalStateHandle,
    reader: &dyn StateReader,
    location: &CheckpointLocation,
) -> Result<flowstate_api::checkpoint::KeyGroupsStateHandle> {
    if handle.format != NativeFormat::HeapChain {
        return Err(Error::incompatible(format!(
            "checkpoint {} of backend {} is a native {} checkpoint, not a heap chain",
            handle.checkpoint_id,
            handle.backend_id,
            handle.format.backend()
        )));
    }
    let name = describe(handle);
    let index = read_index(handle, reader).await?;
    let header = SnapshotHeader {
        compressed: false,
        ..index.header.clone()
    };
    let range = handle.range;
    let groups = range.len() as usize;
    let tables: Vec<Table> = header
        .states
        .iter()
        .map(|s| Table::new(s.kind.storage(), groups))
        .collect();
    let ids: Vec<StateId> = (0..header.states.len() as StateId).collect();
    let max = header.max_parallelism;
    let (tables, _) = read_segments(&index, range, reader, tables, move |mut tables: Vec<Table>, items| {
        let (ids, name) = (ids.clone(), name.clone());
        Box::pin(flowstate_api::runtime::run_blocking(move || {
            let mut scratch = Vec::new();
            let mut refs: Vec<&mut Table> = tables.iter_mut().collect();
            for (kg, segments) in items {
                let i = (kg - range.start()) as usize;
                for (n, (data, compressed)) in segments.iter().enumerate() {
                    apply_segment(&mut refs, &ids, (kg, i), (data, *compressed), max, &mut scratch)
                        .map_err(|e| e.context(format!("{name}, key group {kg}, segment {n}")))?;
                }
            }
            drop(refs);
            Ok(tables)
        }))
    })
    .await?;
    let source = crate::table::FrozenTables {
        tables,
        first_key_group: range.start(),
        closed: Arc::new(AtomicBool::new(false)),
    };
    let filter = TtlFilter {
        ttl_millis: vec![None; header.states.len()],
        now: 0,
    };
    let stream = location.create_output_stream(StateScope::Exclusive).await?;
    let written = flowstate_api::format::canonical::write_canonical_snapshot(&header, source, filter, stream, None)
        .await
        .map_err(|e| {
            e.context(format!(
                "converting heap checkpoint {} of key groups {range}",
                handle.checkpoint_id
            ))
        })?;
    Ok(written.handle)
}

/// Checks a heap chain handle whole, as `flowstate inspect --verify` does:
/// its index, and the checksum of every frame of every chain, read a
/// bounded batch at a time. Errors name the checkpoint, key group and
/// segment.
pub async fn verify_chain(handle: &IncrementalStateHandle, reader: &dyn StateReader) -> Result<()> {
    let name = describe(handle);
    let index = read_index(handle, reader).await?;
    read_segments(&index, handle.range, reader, (), move |(), items| {
        let name = name.clone();
        Box::pin(async move {
            for (kg, segments) in items {
                for (n, (data, compressed)) in segments.iter().enumerate() {
                    let (_, len) = decode_frame(kg, data, *compressed)
                        .map_err(|e| e.context(format!("{name}, key group {kg}, segment {n}")))?;
                    if len != data.len() {
                        return Err(Error::corrupted(format!(
                            "{name}, key group {kg}, segment {n}: {} bytes hold a frame of {len}",
                            data.len()
                        )));
                    }
                }
            }
            Ok(())
        })
    })
    .await?;
    Ok(())
}
