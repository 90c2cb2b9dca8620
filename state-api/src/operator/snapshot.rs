//! Operator state snapshots: the synchronous view and the asynchronous
//! write of one stream per subtask, one block per state.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::store::*;
use crate::checkpoint::{CheckpointLocation, CheckpointOutputStream, StateScope, StreamStateHandle};
use crate::checkpoint::{OperatorStateBlock, OperatorStateHandle};
use crate::error::{Error, ErrorKind, Result};
use crate::format::codec::{crc32c, crc32c_append, put_bytes};

/// One state as the synchronous phase saw it.
pub(super) struct View {
    pub(super) meta: Arc<Meta>,
    pub(super) data: Data,
}

/// An operator state snapshot whose synchronous phase is done: each state's
/// entries as they were are referenced, and the store is free to change.
/// Await it (or call [`run`](PendingOperatorSnapshot::run)) on any runtime
/// to write them; dropping it writes nothing. Once the store is closed or
/// dropped it fails instead ([`Closed`](crate::ErrorKind::Closed)).
#[must_use = "a pending snapshot does nothing until awaited"]
pub struct PendingOperatorSnapshot {
    pub(super) checkpoint_id: u64,
    pub(super) subtask_index: u32,
    pub(super) views: Vec<View>,
    pub(super) location: Arc<CheckpointLocation>,
    pub(super) sync_duration: Duration,
    /// The store's closed flag.
    pub(super) closed: Arc<AtomicBool>,
}

impl fmt::Debug for PendingOperatorSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingOperatorSnapshot")
            .field("checkpoint_id", &self.checkpoint_id)
            .field("subtask_index", &self.subtask_index)
            .field("states", &self.views.len())
            .field("sync_duration", &self.sync_duration)
            .finish_non_exhaustive()
    }
}

impl PendingOperatorSnapshot {
    /// The checkpoint id.
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    /// How long the synchronous phase took.
    pub fn sync_duration(&self) -> Duration {
        self.sync_duration
    }

    /// The asynchronous phase: writes every state's block, in name order,
    /// into one exclusive stream of the location and returns the handle.
    /// A store without entries writes nothing (the stream is
    /// [`Empty`](StreamStateHandle::Empty)); one without states gives an
    /// [empty](OperatorStateHandle::is_empty) handle.
    ///
    /// If the store was closed or dropped before this phase completes, it
    /// fails with [`Closed`](crate::ErrorKind::Closed), naming the
    /// checkpoint, and deletes what it wrote.
    pub async fn run(self) -> Result<OperatorStateHandle> {
        let (id, subtask) = (self.checkpoint_id, self.subtask_index);
        let closed = ClosedFlag(&self.closed);
        let handle = write_views(subtask, &self.views, &self.location, closed)
            .await
            .map_err(|e| {
                e.context(format!(
                    "operator state snapshot of subtask {subtask} for checkpoint {id}"
                ))
            })?;
        tracing::debug!(
            checkpoint_id = id,
            subtask,
            states = handle.states.len(),
            bytes = handle.state_size(),
            "operator state snapshot complete"
        );
        Ok(handle)
    }
}

impl IntoFuture for PendingOperatorSnapshot {
    type Output = Result<OperatorStateHandle>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<OperatorStateHandle>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// A pending snapshot's view of its store's closed flag.
#[derive(Clone, Copy)]
pub(super) struct ClosedFlag<'a>(&'a AtomicBool);

impl ClosedFlag<'_> {
    /// `Closed` once the store was closed or dropped.
    fn check(self) -> Result<()> {
        if self.0.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                "the operator state store was closed before its snapshot completed",
            ));
        }
        Ok(())
    }
}

pub(super) fn block_of(view: &View, offset: u64, length: u64, crc32c: u32) -> OperatorStateBlock {
    OperatorStateBlock {
        name: view.meta.name.to_string(),
        mode: view.meta.mode,
        value_serializer: view.meta.value.clone(),
        key_serializer: view.meta.key.clone(),
        offset,
        length,
        entries: view.data.len() as u64,
        crc32c,
    }
}

/// Writes the views into one stream of `location`, checking `closed`
/// before each write to the stream and before returning; a failure leaves
/// nothing behind.
pub(super) async fn write_views(
    subtask_index: u32,
    views: &[View],
    location: &CheckpointLocation,
    closed: ClosedFlag<'_>,
) -> Result<OperatorStateHandle> {
    closed.check()?;
    let mut states = Vec::with_capacity(views.len());
    if views.iter().all(|v| v.data.len() == 0) {
        states.extend(views.iter().map(|v| block_of(v, 0, 0, crc32c(&[]))));
        return Ok(OperatorStateHandle {
            subtask_index,
            stream: StreamStateHandle::Empty,
            states,
        });
    }
    let stream = location.create_output_stream(StateScope::Exclusive).await?;
    let mut w = BlockWriter {
        stream,
        buf: Vec::with_capacity(WRITE_CHUNK),
        flushed: 0,
        crc: 0,
        crc_from: 0,
        closed,
    };
    for view in views {
        match w.block(view).await {
            Ok(b) => states.push(b),
            Err(e) => {
                w.stream.abort().await;
                return Err(e.context(format!("operator state {:?}", view.meta.name)));
            }
        }
    }
    let (stream, written) = w.close().await?;
    let failed = if stream.size() != written {
        Some(Error::internal(format!(
            "operator state stream {} holds {} bytes but {written} were written",
            stream.describe(),
            stream.size()
        )))
    } else {
        closed.check().err()
    };
    if let Some(e) = failed {
        if let Err(d) = location.discard(std::slice::from_ref(&stream)).await {
            tracing::warn!(error = %d, "could not discard an operator state stream");
        }
        return Err(e);
    }
    Ok(OperatorStateHandle {
        subtask_index,
        stream,
        states,
    })
}

/// Writes blocks into a stream through a buffer, computing each block's
/// checksum on the way.
pub(super) struct BlockWriter<'a> {
    pub(super) stream: CheckpointOutputStream,
    pub(super) buf: Vec<u8>,
    /// Bytes handed to the stream.
    pub(super) flushed: u64,
    /// Checksum of the current block up to `buf[crc_from..]`.
    pub(super) crc: u32,
    pub(super) crc_from: usize,
    /// Checked before each write to the stream.
    pub(super) closed: ClosedFlag<'a>,
}

impl BlockWriter<'_> {
    pub(super) fn position(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    pub(super) async fn flush(&mut self) -> Result<()> {
        self.closed.check()?;
        self.crc = crc32c_append(self.crc, &self.buf[self.crc_from..]);
        self.crc_from = 0;
        let data = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK)));
        self.flushed += data.len() as u64;
        self.stream.write_bytes(data).await
    }

    pub(super) async fn entry_done(&mut self) -> Result<()> {
        if self.buf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) async fn block(&mut self, view: &View) -> Result<OperatorStateBlock> {
        let offset = self.position();
        self.crc = 0;
        self.crc_from = self.buf.len();
        match &view.data {
            Data::List(list) => {
                for e in list.iter() {
                    put_bytes(&mut self.buf, e);
                    self.entry_done().await?;
                }
            }
            Data::Map(map) => {
                for (k, v) in map.iter() {
                    put_bytes(&mut self.buf, k);
                    put_bytes(&mut self.buf, v);
                    self.entry_done().await?;
                }
            }
        }
        let crc = crc32c_append(self.crc, &self.buf[self.crc_from..]);
        self.crc_from = self.buf.len();
        Ok(block_of(view, offset, self.position() - offset, crc))
    }

    /// Closes the stream: its handle and the bytes written.
    pub(super) async fn close(mut self) -> Result<(StreamStateHandle, u64)> {
        if !self.buf.is_empty() {
            if let Err(e) = self.flush().await {
                self.stream.abort().await;
                return Err(e);
            }
        }
        let written = self.flushed;
        Ok((self.stream.close().await?, written))
    }
}

impl OperatorStateStore {
    /// The synchronous phase of a snapshot for checkpoint `checkpoint_id`,
    /// written to `location`: takes a reference to each state's entries
    /// (O(number of states), nothing is copied) and returns the
    /// asynchronous phase, which writes them. Writes to the store after
    /// this call are not in the snapshot.
    pub fn snapshot(&self, checkpoint_id: u64, location: Arc<CheckpointLocation>) -> Result<PendingOperatorSnapshot> {
        let started = Instant::now();
        if location.checkpoint_id() != checkpoint_id {
            return Err(Error::invalid(format!(
                "operator state snapshot of checkpoint {checkpoint_id} given the location of checkpoint {} ({})",
                location.checkpoint_id(),
                location.pointer()
            )));
        }
        let views = self
            .by_name
            .values()
            .map(|&i| View {
                meta: Arc::clone(&self.slots[i].meta),
                data: self.slots[i].data.clone(),
            })
            .collect();
        Ok(PendingOperatorSnapshot {
            checkpoint_id,
            subtask_index: self.subtask_index,
            views,
            location,
            sync_duration: started.elapsed(),
            closed: Arc::clone(&self.closed),
        })
    }
}
