//! Restores and rescales as SlateDB clones.
//!
//! For a backend of key groups R, every handle whose key groups meet R is
//! a source: its SlateDB checkpoint is cloned into the backend's fresh
//! database, projected to the key groups of R it holds when it holds
//! others too (always, with several sources: SlateDB requires their ranges
//! to be disjoint). A clone writes a manifest referencing the sources'
//! files and pins them in each source with a checkpoint of its own; no
//! state is copied. Compaction in the clone later rewrites the sources'
//! files into its own, keeping only the projected keys.

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use flowstate_api::checkpoint::{
    check_restore_handles, KeyGroupsStateHandle, KeyedStateHandle, NativeFormat, StateReader,
};
use flowstate_api::format::canonical::{check_compatible, SnapshotHeader};
use flowstate_api::{Error, KeyGroupRange, KeyedBackendConfig, Result};
use slatedb::CloneSourceSpec;

use crate::error::slate_err;
use crate::keys::key_group_bytes;
use crate::reference::{decode_meta, SlateDbCheckpointRef};
use crate::{ListConcat, SlateDbOptions};

/// One database to clone from.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) reference: SlateDbCheckpointRef,
    /// The key groups of the source to keep, if not all of them.
    pub(crate) projection: Option<KeyGroupRange>,
}

/// What a restore clones and which states it brings.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) sources: Vec<Source>,
    /// Each source's registered states, with a name for messages.
    pub(crate) headers: Vec<(SnapshotHeader, String)>,
    /// Canonical snapshots (savepoints, full checkpoints of other
    /// backends) whose key groups are written into the database after the
    /// clone.
    pub(crate) canonical: Vec<KeyGroupsStateHandle>,
}

/// Reads the handles that meet the backend's key groups and checks them.
pub(crate) async fn plan<K>(
    options: &SlateDbOptions,
    config: &KeyedBackendConfig<K>,
    handles: &[KeyedStateHandle],
    reader: Option<&dyn StateReader>,
) -> Result<Plan> {
    check_restore_handles(handles, config.max_parallelism)?;
    let want = config.key_group_range;
    let meeting: Vec<&KeyedStateHandle> = handles
        .iter()
        .filter(|h| !h.is_empty() && !h.key_group_range().intersect(&want).is_empty())
        .collect();
    let mut plan = Plan::default();
    let mut native = Vec::new();
    for handle in &meeting {
        match handle {
            KeyedStateHandle::Incremental(h) if h.format == NativeFormat::SlateDb => native.push(h),
            KeyedStateHandle::Incremental(h) => {
                return Err(Error::incompatible(format!(
                    "the handle of key groups {} holds a {} checkpoint, which the SlateDB backend does not read \
                     (it restores its own checkpoints and canonical snapshots): {}",
                    h.range,
                    h.format.backend(),
                    h.format.remedy()
                )))
            }
            KeyedStateHandle::KeyGroups(h) => plan.canonical.push(h.clone()),
            other => {
                return Err(Error::incompatible(format!(
                    "the handle of key groups {} is of a kind the SlateDB backend does not read",
                    other.key_group_range()
                )))
            }
        }
    }
    for h in &native {
        let source = format!(
            "SlateDB handle of key groups {} (backend {}, checkpoint {})",
            h.range, h.backend_id, h.checkpoint_id
        );
        let reader = reader.ok_or_else(|| Error::invalid(format!("{source}: restoring needs a state reader")))?;
        let bytes = reader
            .read(&h.meta)
            .await
            .map_err(|e| e.context(format!("{source}: reading its metadata")))?;
        let (header, reference) = decode_meta(&bytes, &source)?;
        check_compatible(&header, &config.key_serializer.id(), config.max_parallelism, &source)?;
        if header.range != h.range {
            return Err(Error::corrupted(format!(
                "{source}: its metadata covers key groups {}",
                header.range
            )));
        }
        if !reference.db_path.starts_with(&format!("{}/", options.base_path)) {
            tracing::debug!(
                db = %reference.db_path,
                base = %options.base_path,
                "restoring from a database outside the base path"
            );
        }
        let overlap = h.range.intersect(&want);
        let projection = (native.len() > 1 || overlap != h.range).then_some(overlap);
        plan.sources.push(Source { reference, projection });
        plan.headers.push((header, source));
    }
    Ok(plan)
}

/// Clones the sources of `plan` into a new database at `path` (nothing to
/// do without sources). Fails with `NotFound` when a source's SlateDB
/// checkpoint is gone.
pub(crate) async fn clone_sources(options: &SlateDbOptions, path: &str, plan: &Plan) -> Result<()> {
    let store = &options.object_store;
    for s in &plan.sources {
        s.reference.check(store).await.map_err(|e| e.context("restore"))?;
    }
    let spec = |s: &Source| {
        let spec = CloneSourceSpec::with_checkpoint(s.reference.db_path.as_str(), s.reference.checkpoint_uuid());
        match s.projection {
            Some(kgs) => {
                let (start, end): (Bytes, Bytes) = key_group_bytes(kgs.start(), kgs.end());
                spec.with_projection_range((Bound::Included(start), Bound::Excluded(end)))
            }
            None => spec,
        }
    };
    let mut sources = plan.sources.iter();
    let Some(first) = sources.next() else {
        return Ok(());
    };
    let admin = crate::fail_fast::admin_builder(path, store)
        .with_merge_operator(Arc::new(ListConcat))
        .build();
    let mut builder = admin.create_clone_builder_from_source(spec(first));
    for s in sources {
        builder = builder.with_source(spec(s));
    }
    builder.build().await.map_err(slate_err(|| {
        let from: Vec<String> = plan.sources.iter().map(|s| s.reference.describe()).collect();
        format!("cloning {} into database {path}", from.join(", "))
    }))
}
