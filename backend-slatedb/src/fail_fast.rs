//! The object store SlateDB's administrative calls (checkpoints, clones,
//! releases, garbage collection) go through: their errors come back at once.
//!
//! SlateDB retries a failed request for as long as it may pass, and its
//! `Admin` has no bound to set: with the store down, or a file it refuses
//! where an object should be, a release or `flowstate gc` would wait
//! forever. The store's own client retries transient failures by its
//! configuration (`max_retries`, `retry_timeout`); what still fails is
//! marked final here, so SlateDB returns it. The kinds SlateDB acts on
//! (not found, already exists, precondition failed, …) pass unchanged.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use slatedb::admin::AdminBuilder;
use slatedb_common::retry::{should_retry, NonRetryable};

/// `inner`, whose errors SlateDB does not retry.
#[derive(Debug)]
struct FailFast {
    inner: Arc<dyn ObjectStore>,
}

/// Marks `e` final unless SlateDB already treats it so.
fn fail(e: object_store::Error) -> object_store::Error {
    if should_retry(&e) {
        object_store::Error::Generic {
            store: "flowstate",
            source: Box::new(NonRetryable(Box::new(e))),
        }
    } else {
        e
    }
}

/// An `Admin` builder for the database at `path` in `store`, whose calls
/// fail at once when the store does.
pub(crate) fn admin_builder<'a>(path: &'a str, store: &Arc<dyn ObjectStore>) -> AdminBuilder<&'a str> {
    AdminBuilder::new(
        path,
        Arc::new(FailFast {
            inner: Arc::clone(store),
        }),
    )
}

impl fmt::Display for FailFast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for FailFast {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await.map_err(fail)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await.map_err(fail)
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await.map_err(fail)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await.map_err(fail)
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations).map_err(fail).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix).map_err(fail).boxed()
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset).map_err(fail).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await.map_err(fail)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await.map_err(fail)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await.map_err(fail)
    }
}
