//! Releasing what native checkpoints hold outside the checkpoint storage.

use std::fmt;

use crate::checkpoint::{CheckpointMetadata, IncrementalStateHandle, KeyedStateHandle, NativeFormat};
use crate::error::Result;

/// Releases what a native checkpoint handle holds outside the checkpoint
/// storage: a backend whose state lives elsewhere (the SlateDB backend's
/// databases) pins it for each checkpoint, and the
/// [`CheckpointStore`](super::CheckpointStore) calls this when no retained
/// checkpoint needs that handle any more: its checkpoint was subsumed,
/// discarded at shutdown, or aborted after the handle was reported.
/// Register one with
/// [`CheckpointStore::with_native_release`](super::CheckpointStore::with_native_release).
///
/// A release that fails is logged and left for garbage collection; a
/// release of what is already released succeeds.
#[async_trait::async_trait]
pub trait NativeStateRelease: Send + Sync + fmt::Debug {
    /// The format of the handles it releases.
    fn format(&self) -> NativeFormat;
    /// Releases what `handle` pins.
    async fn release(&self, handle: &IncrementalStateHandle) -> Result<()>;
}

/// The native handles of `format` among `handles`.
pub(super) fn native_handles<'a>(
    handles: impl IntoIterator<Item = &'a KeyedStateHandle>,
    format: NativeFormat,
) -> Vec<&'a IncrementalStateHandle> {
    handles
        .into_iter()
        .filter_map(|h| match h {
            KeyedStateHandle::Incremental(h) if h.format == format => Some(h),
            _ => None,
        })
        .collect()
}

/// Every keyed handle of `metadata`.
pub(super) fn keyed_handles(metadata: &CheckpointMetadata) -> impl Iterator<Item = &KeyedStateHandle> {
    metadata.operators.iter().flat_map(|o| o.keyed.iter())
}
