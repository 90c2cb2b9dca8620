//! The SlateDB backend's checkpoints in `inspect` and `gc`: such a
//! checkpoint references a SlateDB checkpoint of each subtask's database
//! instead of files of its own, so checking it means asking the database,
//! and collecting it means releasing SlateDB checkpoints and deleting the
//! databases no checkpoint needs.

use std::collections::BTreeSet;
use std::sync::Arc;

use flowstate_api::checkpoint::{IncrementalStateHandle, KeyedStateHandle, NativeFormat, StateReader};
use flowstate_api::lifecycle::GcOptions;
use flowstate_api::{CheckpointMetadata, Error, Result};
use flowstate_object::object_store::prefix::PrefixStore;
use flowstate_object::object_store::ObjectStore;
use flowstate_object::LocalFiles;
use flowstate_slatedb::{decode_meta, SlateDbCheckpointRef, SlateDbGcReport, SlateDbOptions};
use serde::Serialize;

use crate::stores::{is_url, object_store_builder};

/// Where the SlateDB backend's databases are: the object store the
/// database paths of its checkpoints are relative to.
pub(crate) struct Databases {
    store: Arc<dyn ObjectStore>,
    /// A local directory: SlateDB's collector writes no boundary files
    /// there (a local filesystem cannot overwrite them conditionally).
    local: bool,
    /// The location as given, for messages.
    pub(crate) location: String,
}

/// The bucket of an object-store URL: `s3://bucket/a/b` is `s3://bucket`.
fn bucket_root(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or_default()),
        None => url.to_string(),
    }
}

impl Databases {
    /// `explicit` (`--slatedb`) when given; otherwise, for checkpoints in a
    /// bucket, the bucket's root, where the SlateDB backend keeps its
    /// databases when it shares the checkpoints' bucket (as the demo does);
    /// `None` for checkpoints in a local directory without `--slatedb`.
    pub(crate) fn locate(
        explicit: Option<&str>,
        checkpoints: &str,
        storage_options: &[String],
    ) -> Result<Option<Databases>> {
        let location = match explicit {
            Some(l) => l.to_string(),
            None if is_url(checkpoints) => bucket_root(checkpoints),
            None => return Ok(None),
        };
        if is_url(&location) {
            let built = object_store_builder(&location, storage_options)?.build()?;
            let store: Arc<dyn ObjectStore> = match built.prefix() {
                "" => Arc::clone(built.store()),
                prefix => Arc::new(PrefixStore::new(Arc::clone(built.store()), prefix)),
            };
            return Ok(Some(Databases {
                store,
                local: false,
                location,
            }));
        }
        let meta = std::fs::metadata(&location).map_err(|e| Error::io(&location, e))?;
        if !meta.is_dir() {
            return Err(Error::invalid(format!("{location}: not a directory")));
        }
        let local = LocalFiles::new_with_prefix(&location).map_err(|e| Error::invalid(format!("{location}: {e}")))?;
        Ok(Some(Databases {
            store: Arc::new(local),
            local: true,
            location,
        }))
    }
}

/// The SlateDB handles among `keyed`.
fn slatedb_handles(keyed: &[KeyedStateHandle]) -> impl Iterator<Item = &IncrementalStateHandle> {
    keyed.iter().filter_map(|h| match h {
        KeyedStateHandle::Incremental(i) if i.format == NativeFormat::SlateDb => Some(i),
        _ => None,
    })
}

/// The reference a SlateDB handle holds, read through `reader`.
pub(crate) async fn reference(reader: &dyn StateReader, h: &IncrementalStateHandle) -> Result<SlateDbCheckpointRef> {
    let name = h.meta.describe();
    let data = reader.read(&h.meta).await?;
    decode_meta(&data, &name).map(|(_, r)| r)
}

/// Checks that every SlateDB checkpoint `m` references is in its
/// database; one line per one that is not. `None` when `m` references
/// some but `databases` is unknown.
pub(crate) async fn verify(
    m: &CheckpointMetadata,
    reader: &dyn StateReader,
    databases: Option<&Databases>,
) -> Option<Vec<String>> {
    let mut problems = Vec::new();
    let handles: Vec<&IncrementalStateHandle> = m.operators.iter().flat_map(|o| slatedb_handles(&o.keyed)).collect();
    if handles.is_empty() {
        return Some(problems);
    }
    let databases = databases?;
    for h in handles {
        // An unreadable reference is reported with the handle's metadata.
        if let Ok(r) = reference(reader, h).await {
            if let Err(e) = r.check(&databases.store).await {
                problems.push(format!("key groups {} in {}: {e}", h.range, databases.location));
            }
        }
    }
    Some(problems)
}

/// What `gc` did with the databases of one operator's SlateDB backend.
#[derive(Debug, Serialize)]
pub(crate) struct Collected {
    /// Where the databases are (the backend's base path).
    pub(crate) base: String,
    pub(crate) deleted_databases: Vec<String>,
    pub(crate) released_checkpoints: Vec<String>,
    pub(crate) read_by_clones: Vec<String>,
    pub(crate) recently_written: Vec<String>,
    pub(crate) collected_databases: Vec<String>,
}

impl Collected {
    fn new(base: String, r: SlateDbGcReport) -> Self {
        Collected {
            base,
            deleted_databases: r.deleted_databases,
            released_checkpoints: r.released_checkpoints,
            read_by_clones: r.read_by_clones,
            recently_written: r.recently_written,
            collected_databases: r.collected_databases,
        }
    }

    /// Something a run with `--delete` would remove.
    pub(crate) fn removes_something(&self) -> bool {
        !self.deleted_databases.is_empty() || !self.released_checkpoints.is_empty()
    }
}

/// Collects the databases of the SlateDB backends whose databases the
/// `retained` checkpoints reference (each operator's backend keeps its
/// databases side by side under one base path): SlateDB checkpoints no
/// retained checkpoint references are released, databases nothing needs
/// deleted, and SlateDB's collector runs on the rest. Databases written
/// within `options.min_age` are left alone (a job may be running).
pub(crate) async fn collect(
    databases: &Databases,
    retained: &[(Arc<CheckpointMetadata>, Arc<dyn StateReader>)],
    options: &GcOptions,
) -> Result<Vec<Collected>> {
    let mut handles = Vec::new();
    let mut bases = BTreeSet::new();
    for (m, reader) in retained {
        for o in &m.operators {
            for h in slatedb_handles(&o.keyed) {
                let r = reference(&**reader, h)
                    .await
                    .map_err(|e| e.context(format!("checkpoint {}", m.checkpoint_id)))?;
                if let Some((base, _)) = r.db_path.rsplit_once('/') {
                    bases.insert(base.to_string());
                }
            }
            handles.extend(o.keyed.iter().cloned());
        }
    }
    let mut out = Vec::new();
    for base in bases {
        let slate =
            SlateDbOptions::new(Arc::clone(&databases.store), base.as_str())?.with_boundary_files(!databases.local);
        let report = slate.collect_garbage(&handles, &[], options).await?;
        out.push(Collected::new(base, report));
    }
    Ok(out)
}

/// The SlateDB handles of `retained`, for a note when their databases are
/// unknown.
pub(crate) fn count_handles(retained: &[(Arc<CheckpointMetadata>, Arc<dyn StateReader>)]) -> usize {
    retained
        .iter()
        .flat_map(|(m, _)| m.operators.iter().flat_map(|o| slatedb_handles(&o.keyed)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_url_roots_at_its_bucket() {
        assert_eq!(bucket_root("s3://b/checkpoints/job"), "s3://b");
        assert_eq!(bucket_root("s3://b"), "s3://b");
        assert_eq!(bucket_root("memory:///x"), "memory://");
    }
}
