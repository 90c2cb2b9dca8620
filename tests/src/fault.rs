//! A fault-injecting checkpoint storage: wraps any storage and fails the
//! k-th write, flush, rename (metadata) or delete, once (a transient error)
//! or from then on (an outage).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::{
    CheckpointKind, CheckpointLocation, CheckpointMetadata, CheckpointOutputStream, CheckpointStorage, Error,
    ErrorKind, ResolvedCheckpoint, Result, StateScope, StorageCapabilities, StoredFile, StreamStateHandle,
};

/// The operations faults are injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A write to an output stream.
    Write,
    /// Closing (flushing and syncing) an output stream.
    Flush,
    /// Writing a checkpoint's metadata (the atomic rename that completes it).
    Rename,
    /// Deleting files or disposing of a location.
    Delete,
}

/// How an injected fault behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the k-th operation fails.
    Transient,
    /// The k-th and every later operation fail.
    Outage,
}

/// When to fail, shared by a storage and everything it hands out.
#[derive(Debug, Default)]
pub struct FaultPlan {
    ops: AtomicU64,
    fail_at: AtomicU64,
    outage: AtomicBool,
    armed: AtomicBool,
    fired: AtomicU64,
    log: Mutex<Vec<FaultOp>>,
}

impl FaultPlan {
    /// Counts operations from now and fails the `k`-th (0-based) in `mode`.
    pub fn arm(&self, k: u64, mode: FaultMode) {
        self.ops.store(0, Ordering::SeqCst);
        self.fired.store(0, Ordering::SeqCst);
        self.fail_at.store(k, Ordering::SeqCst);
        self.outage.store(mode == FaultMode::Outage, Ordering::SeqCst);
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Stops injecting.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Operations counted since [`arm`](Self::arm).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// Failures injected since [`arm`](Self::arm).
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// The operations counted since [`arm`](Self::arm), in order.
    pub fn log(&self) -> Vec<FaultOp> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn check(&self, op: FaultOp, what: &str) -> Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(op);
        let at = self.fail_at.load(Ordering::SeqCst);
        if n == at || (n > at && self.outage.load(Ordering::SeqCst)) {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("injected failure of {op:?} (operation {n}) on {what}"),
            ));
        }
        Ok(())
    }
}

/// A storage that fails operations as its [`FaultPlan`] says.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn CheckpointStorage>,
    plan: Arc<FaultPlan>,
}

impl FaultyStorage {
    /// Wraps `inner`, with faults disarmed.
    pub fn new(inner: Arc<dyn CheckpointStorage>) -> Self {
        FaultyStorage {
            inner,
            plan: Arc::default(),
        }
    }

    /// The plan, to arm and disarm.
    pub fn plan(&self) -> &Arc<FaultPlan> {
        &self.plan
    }

    fn wrap(&self, inner: Arc<dyn CheckpointLocation>) -> Arc<dyn CheckpointLocation> {
        Arc::new(FaultyLocation {
            inner,
            plan: Arc::clone(&self.plan),
        })
    }
}

#[async_trait]
impl CheckpointStorage for FaultyStorage {
    fn job_id(&self) -> &str {
        self.inner.job_id()
    }
    fn capabilities(&self) -> StorageCapabilities {
        self.inner.capabilities()
    }
    async fn init_checkpoint(&self, checkpoint_id: u64) -> Result<Arc<dyn CheckpointLocation>> {
        Ok(self.wrap(self.inner.init_checkpoint(checkpoint_id).await?))
    }
    async fn init_savepoint(&self, checkpoint_id: u64, target: Option<&str>) -> Result<Arc<dyn CheckpointLocation>> {
        Ok(self.wrap(self.inner.init_savepoint(checkpoint_id, target).await?))
    }
    async fn resolve(&self, pointer: &str) -> Result<ResolvedCheckpoint> {
        self.inner.resolve(pointer).await
    }
    async fn latest_checkpoint(&self) -> Result<Option<ResolvedCheckpoint>> {
        self.inner.latest_checkpoint().await
    }
    fn checkpoint_pointer(&self, checkpoint_id: u64) -> String {
        self.inner.checkpoint_pointer(checkpoint_id)
    }
    async fn list_files(&self) -> Result<Vec<StoredFile>> {
        self.inner.list_files().await
    }
    async fn read_file(&self, path: &str) -> Result<Bytes> {
        self.inner.read_file(path).await
    }
    async fn delete_files(&self, paths: &[String]) -> Result<()> {
        self.plan.check(FaultOp::Delete, &format!("{paths:?}"))?;
        self.inner.delete_files(paths).await
    }
    async fn stat_file(&self, path: &str) -> Result<Option<StoredFile>> {
        self.inner.stat_file(path).await
    }
    async fn checkpoint_dirs(&self) -> Result<Vec<u64>> {
        self.inner.checkpoint_dirs().await
    }
}

#[derive(Debug)]
struct FaultyLocation {
    inner: Arc<dyn CheckpointLocation>,
    plan: Arc<FaultPlan>,
}

#[async_trait]
impl CheckpointLocation for FaultyLocation {
    fn checkpoint_id(&self) -> u64 {
        self.inner.checkpoint_id()
    }
    fn kind(&self) -> CheckpointKind {
        self.inner.kind()
    }
    fn pointer(&self) -> &str {
        self.inner.pointer()
    }
    async fn create_output_stream(&self, scope: StateScope) -> Result<Box<dyn CheckpointOutputStream>> {
        Ok(Box::new(FaultyStream {
            inner: self.inner.create_output_stream(scope).await?,
            plan: Arc::clone(&self.plan),
            name: format!("{} ({scope:?} stream)", self.inner.pointer()),
        }))
    }
    async fn write_metadata(&self, metadata: &CheckpointMetadata) -> Result<String> {
        self.plan.check(FaultOp::Rename, self.inner.pointer())?;
        self.inner.write_metadata(metadata).await
    }
    async fn dispose(&self) -> Result<()> {
        self.plan.check(FaultOp::Delete, self.inner.pointer())?;
        self.inner.dispose().await
    }
    async fn discard(&self, handles: &[StreamStateHandle]) -> Result<()> {
        self.plan.check(FaultOp::Delete, self.inner.pointer())?;
        self.inner.discard(handles).await
    }
}

struct FaultyStream {
    inner: Box<dyn CheckpointOutputStream>,
    plan: Arc<FaultPlan>,
    name: String,
}

#[async_trait]
impl CheckpointOutputStream for FaultyStream {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.plan.check(FaultOp::Write, &self.name)?;
        self.inner.write(data).await
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
    async fn close(self: Box<Self>) -> Result<StreamStateHandle> {
        if let Err(e) = self.plan.check(FaultOp::Flush, &self.name) {
            self.inner.abort().await;
            return Err(e);
        }
        self.inner.close().await
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}
