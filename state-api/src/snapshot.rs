//! The two phases of a snapshot and what they report.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::checkpoint::{CheckpointKind, KeyedStateHandle};
use crate::error::Result;

/// How to take a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// A checkpoint (the backend's native, possibly incremental, format) or a
    /// canonical savepoint (self-contained, backend-independent).
    pub kind: CheckpointKind,
    /// zstd-compress state (canonical format), at this level.
    pub compression: Option<i32>,
    /// For a savepoint: the backend's native format instead of the
    /// canonical one (FLIP-203). A native RocksDB savepoint holds the files
    /// of a RocksDB checkpoint, self-contained and relocatable, shares
    /// nothing with checkpoints either way, and restores only into the
    /// RocksDB backend; a backend without a native format writes a
    /// canonical one. Checkpoints are always in the backend's own format.
    pub native: bool,
}

impl SnapshotOptions {
    /// A checkpoint without compression.
    pub fn checkpoint() -> Self {
        SnapshotOptions {
            kind: CheckpointKind::Checkpoint,
            compression: None,
            native: false,
        }
    }

    /// A canonical savepoint without compression.
    pub fn savepoint() -> Self {
        SnapshotOptions {
            kind: CheckpointKind::Savepoint,
            compression: None,
            native: false,
        }
    }

    /// A savepoint in the backend's native format (see
    /// [`native`](Self::native)).
    pub fn native_savepoint() -> Self {
        SnapshotOptions {
            native: true,
            ..Self::savepoint()
        }
    }

    /// Turns on zstd compression at `level` (1..=22; 3 is a good default).
    pub fn with_compression(mut self, level: i32) -> Self {
        self.compression = Some(level);
        self
    }
}

/// The figures every snapshot reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Time spent in the synchronous phase, on the task thread.
    pub sync_duration: Duration,
    /// Time spent in the asynchronous phase.
    pub async_duration: Duration,
    /// Bytes this snapshot wrote (new files and inlined bytes).
    pub bytes_written: u64,
    /// Full size of the state the handle references.
    pub full_size: u64,
    /// Records written (values, lists and map entries) where counted.
    pub records: u64,
}

/// A completed snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotResult {
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// The handle to put into the checkpoint metadata.
    pub handle: KeyedStateHandle,
    /// Its figures.
    pub stats: SnapshotStats,
}

/// What the async phase of a backend produces.
#[derive(Debug, Clone)]
pub struct AsyncOutput {
    /// The handle.
    pub handle: KeyedStateHandle,
    /// Bytes written by this snapshot.
    pub bytes_written: u64,
    /// Records written.
    pub records: u64,
}

type AsyncPhase = Pin<Box<dyn Future<Output = Result<AsyncOutput>> + Send + 'static>>;

/// A snapshot whose synchronous phase is done: an immutable view of the
/// state is captured, and the backend is free to go on. Await it (or call
/// [`run`](PendingSnapshot::run)) on any runtime to write the state.
/// Dropping it cancels the snapshot and leaves nothing referenced behind.
#[must_use = "a pending snapshot does nothing until awaited"]
pub struct PendingSnapshot {
    checkpoint_id: u64,
    sync_duration: Duration,
    phase: AsyncPhase,
}

impl std::fmt::Debug for PendingSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSnapshot")
            .field("checkpoint_id", &self.checkpoint_id)
            .field("sync_duration", &self.sync_duration)
            .finish_non_exhaustive()
    }
}

impl PendingSnapshot {
    /// Wraps a backend's async phase; `sync_started` is when its sync phase began.
    pub fn new(
        checkpoint_id: u64,
        sync_started: Instant,
        phase: impl Future<Output = Result<AsyncOutput>> + Send + 'static,
    ) -> Self {
        PendingSnapshot {
            checkpoint_id,
            sync_duration: sync_started.elapsed(),
            // The async phase never blocks its executor (checked in debug builds).
            phase: Box::pin(crate::runtime::nonblocking(phase)),
        }
    }

    /// The checkpoint id.
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    /// How long the synchronous phase took.
    pub fn sync_duration(&self) -> Duration {
        self.sync_duration
    }

    /// Runs the asynchronous phase.
    pub async fn run(self) -> Result<SnapshotResult> {
        let span = tracing::info_span!("snapshot_async", checkpoint_id = self.checkpoint_id);
        let started = Instant::now();
        let out = self.phase.instrument(span).await?;
        let stats = SnapshotStats {
            sync_duration: self.sync_duration,
            async_duration: started.elapsed(),
            bytes_written: out.bytes_written,
            full_size: out.handle.state_size(),
            records: out.records,
        };
        tracing::debug!(
            checkpoint_id = self.checkpoint_id,
            sync_ms = stats.sync_duration.as_secs_f64() * 1e3,
            async_ms = stats.async_duration.as_secs_f64() * 1e3,
            bytes = stats.bytes_written,
            "snapshot complete"
        );
        Ok(SnapshotResult {
            checkpoint_id: self.checkpoint_id,
            handle: out.handle,
            stats,
        })
    }
}

impl IntoFuture for PendingSnapshot {
    type Output = Result<SnapshotResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<SnapshotResult>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
