//! Fault injection at the lowest contract: [`FailingBlobStore`] wraps any
//! [`BlobStore`] and fails the k-th write, flush, conditional put (the
//! metadata that completes a checkpoint) or delete, once (a transient
//! error) or from then on (an outage). Everything above it, the checkpoint
//! layout included, runs for real.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::checkpoint::{BlobListing, BlobMeta, BlobPath, BlobStore, BlobWriter};
use flowstate_api::{CheckpointStorage, Error, ErrorKind, Result};

/// The operations faults are injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A write to a new object.
    Write,
    /// Finishing (flushing and syncing) a new object.
    Flush,
    /// A conditional put: writing a checkpoint's metadata, the atomic step
    /// that completes it.
    Rename,
    /// Deleting objects.
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

/// When to fail, shared by a store and every store and writer it hands out.
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

/// A [`BlobStore`] that fails operations as its [`FaultPlan`] says; stores
/// it opens (savepoint directories, other jobs) share the plan.
#[derive(Debug, Clone)]
pub struct FailingBlobStore {
    inner: Arc<dyn BlobStore>,
    plan: Arc<FaultPlan>,
}

impl FailingBlobStore {
    /// Wraps `inner` with `plan`.
    pub fn new(inner: Arc<dyn BlobStore>, plan: Arc<FaultPlan>) -> Self {
        FailingBlobStore { inner, plan }
    }

    fn name(&self, path: &BlobPath) -> String {
        format!("{}/{path}", self.inner.root())
    }
}

/// `storage` over a [`FailingBlobStore`] wrapping its store, with faults
/// disarmed, and the plan to arm them.
pub fn failing(storage: &CheckpointStorage) -> (Arc<CheckpointStorage>, Arc<FaultPlan>) {
    let plan = Arc::new(FaultPlan::default());
    let store = FailingBlobStore::new(Arc::clone(storage.store()), Arc::clone(&plan));
    (Arc::new(storage.with_store(Arc::new(store))), plan)
}

#[async_trait]
impl BlobStore for FailingBlobStore {
    fn root(&self) -> &str {
        self.inner.root()
    }
    async fn create(&self, path: &BlobPath) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(FailingWriter {
            inner: self.inner.create(path).await?,
            plan: Arc::clone(&self.plan),
            name: self.name(path),
        }))
    }
    async fn put_if_absent(&self, path: &BlobPath, data: Bytes) -> Result<()> {
        self.plan.check(FaultOp::Rename, &self.name(path))?;
        self.inner.put_if_absent(path, data).await
    }
    async fn get_range(&self, path: &BlobPath, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.inner.get_range(path, range).await
    }
    async fn get_ranges(&self, path: &BlobPath, ranges: &[std::ops::Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(path, ranges).await
    }
    async fn head(&self, path: &BlobPath) -> Result<Option<BlobMeta>> {
        self.inner.head(path).await
    }
    async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>> {
        self.inner.list(prefix).await
    }
    async fn list_level(&self, prefix: Option<&BlobPath>) -> Result<BlobListing> {
        self.inner.list_level(prefix).await
    }
    async fn delete(&self, paths: &[BlobPath]) -> Result<()> {
        self.plan.check(
            FaultOp::Delete,
            &format!("{} ({} objects)", self.inner.root(), paths.len()),
        )?;
        self.inner.delete(paths).await
    }
    fn open(&self, location: &str) -> Result<Arc<dyn BlobStore>> {
        Ok(Arc::new(FailingBlobStore::new(
            self.inner.open(location)?,
            Arc::clone(&self.plan),
        )))
    }
    async fn local_path(&self, path: &BlobPath) -> Option<std::path::PathBuf> {
        self.inner.local_path(path).await
    }
}

struct FailingWriter {
    inner: Box<dyn BlobWriter>,
    plan: Arc<FaultPlan>,
    name: String,
}

#[async_trait]
impl BlobWriter for FailingWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.plan.check(FaultOp::Write, &self.name)?;
        self.inner.write(data).await
    }
    async fn finish(self: Box<Self>) -> Result<()> {
        if let Err(e) = self.plan.check(FaultOp::Flush, &self.name) {
            self.inner.abort().await;
            return Err(e);
        }
        self.inner.finish().await
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}
