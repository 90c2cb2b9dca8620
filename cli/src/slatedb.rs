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

use crate::admin::{is_url, object_store_builder, StoreArgs};

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
    pub(crate) fn locate(explicit: Option<&str>, checkpoints: &str, args: &StoreArgs) -> Result<Option<Databases>> {
        let location = match explicit {
            Some(l) => l.to_string(),
            None if is_url(checkpoints) => bucket_root(checkpoints),
            None => return Ok(None),
        };
        if is_url(&location) {
            let built = object_store_builder(&location, &args.storage_options)?.build()?;
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
    use crate::admin::{gc, inspect, GcArgs, InspectArgs, Outcome};
    use flowstate_api::checkpoint::OperatorState;
    use flowstate_api::{
        AsyncKeyedStateBackend, CheckpointKind, CheckpointStore, CheckpointStoreConfig, KeyGroupRange,
        KeyedBackendConfig, RecordCtx, SnapshotOptions, ValueStateDescriptor,
    };
    use flowstate_slatedb::SlateDbBackend;
    use std::time::Duration;

    async fn write(b: &Arc<SlateDbBackend<u64>>, round: u64) {
        let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..100u64 {
            RecordCtx::for_key(Arc::clone(b), &k)
                .unwrap()
                .update(&v, round)
                .await
                .unwrap();
        }
    }

    async fn complete(store: &mut CheckpointStore, b: &SlateDbBackend<u64>, id: u64) {
        let location = store.begin_checkpoint(id).await.unwrap();
        let result = b
            .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
            .await
            .unwrap()
            .await
            .unwrap();
        let m = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
            "op",
            1,
            128,
            vec![result.handle],
        ));
        store.complete(&location, m).await.unwrap();
        b.notify_checkpoint_complete(id).await.unwrap();
    }

    /// Files (not directories) under `dir`.
    fn files_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 })
                .sum()
        })
    }

    /// Names of the SlateDB checkpoints of the database at `path`.
    async fn names(store: &Arc<dyn ObjectStore>, path: &str) -> Vec<Option<String>> {
        let admin = slatedb_admin(store, path);
        admin
            .list_checkpoints(None)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect()
    }

    fn slatedb_admin(store: &Arc<dyn ObjectStore>, path: &str) -> flowstate_slatedb::slatedb::admin::Admin {
        flowstate_slatedb::slatedb::admin::AdminBuilder::new(path, Arc::clone(store)).build()
    }

    /// `gc --slatedb` releases the SlateDB checkpoint of a subsumed
    /// checkpoint that no one released and deletes a dead attempt's
    /// database (a dry run only reports them, as findings); `inspect
    /// --verify --slatedb` finds the retained checkpoint's SlateDB
    /// checkpoint in its database, refuses a manifest that is a link out
    /// of the directory, and names the checkpoint once it is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gc_and_verify_know_the_slatedb_databases() {
        let dir = tempfile::tempdir().unwrap();
        let databases = dir.path().join("slatedb");
        std::fs::create_dir(&databases).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFiles::new_with_prefix(&databases).unwrap());
        let options = SlateDbOptions::new(Arc::clone(&store), "job/op")
            .unwrap()
            .with_boundary_files(false);
        let config = || KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128).unwrap(), 128);

        // A dead attempt wrote its database and never checkpointed.
        let dead = Arc::new(SlateDbBackend::open(options.clone(), config()).await.unwrap());
        write(&dead, 0).await;
        dead.db().flush().await.unwrap();
        let dead_path = dead.path().to_string();
        dead.close().await.unwrap();

        // The next attempt completes checkpoints 1 and 2 through a store
        // that releases no SlateDB checkpoint.
        let storage = Arc::new(flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "job").unwrap());
        let mut checkpoints = CheckpointStore::open(storage, CheckpointStoreConfig::default())
            .await
            .unwrap();
        let live = Arc::new(SlateDbBackend::open(options.clone(), config()).await.unwrap());
        write(&live, 1).await;
        complete(&mut checkpoints, &live, 1).await;
        write(&live, 2).await;
        complete(&mut checkpoints, &live, 2).await;
        let live_path = live.path().to_string();
        live.close().await.unwrap();
        assert_eq!(names(&store, &live_path).await.len(), 2);

        let job = dir.path().join("checkpoints").join("job");
        let args = |delete: bool| GcArgs {
            target: job.display().to_string(),
            delete,
            min_age: Duration::ZERO,
            slatedb: Some(databases.display().to_string()),
            store: StoreArgs::default(),
        };
        assert_eq!(gc(args(false)).await.unwrap(), Outcome::Findings);
        assert!(
            files_under(&databases.join(&dead_path)) > 0,
            "a dry run deletes nothing"
        );
        assert_eq!(names(&store, &live_path).await.len(), 2);
        assert_eq!(gc(args(true)).await.unwrap(), Outcome::Clean);
        assert_eq!(
            files_under(&databases.join(&dead_path)),
            0,
            "the dead attempt's database is gone"
        );
        assert_eq!(names(&store, &live_path).await, [Some("flowstate:2".to_string())]);

        let verify = |slatedb: Option<&std::path::Path>| InspectArgs {
            pointer: job.join("chk-2").display().to_string(),
            verify: true,
            slatedb: slatedb.map(|p| p.display().to_string()),
            store: StoreArgs::default(),
        };
        assert_eq!(inspect(verify(Some(&databases))).await.unwrap(), Outcome::Clean);
        // The newest manifest replaced by a link to a copy outside the
        // directory is a finding: only regular files are read there.
        let manifests = databases.join(&live_path).join("manifest");
        let newest = std::fs::read_dir(&manifests)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let outside = dir.path().join("elsewhere.manifest");
        std::fs::rename(&newest, &outside).unwrap();
        std::os::unix::fs::symlink(&outside, &newest).unwrap();
        assert_eq!(inspect(verify(Some(&databases))).await.unwrap(), Outcome::Findings);
        std::fs::remove_file(&newest).unwrap();
        std::fs::rename(&outside, &newest).unwrap();
        let admin = slatedb_admin(&store, &live_path);
        for c in admin.list_checkpoints(None).await.unwrap() {
            admin.delete_checkpoint(c.id).await.unwrap();
        }
        assert_eq!(inspect(verify(Some(&databases))).await.unwrap(), Outcome::Findings);
        // Without `--slatedb` only the reference itself is checked.
        assert_eq!(inspect(verify(None)).await.unwrap(), Outcome::Clean);
    }

    #[test]
    fn a_bucket_url_roots_at_its_bucket() {
        assert_eq!(bucket_root("s3://b/checkpoints/job"), "s3://b");
        assert_eq!(bucket_root("s3://b"), "s3://b");
        assert_eq!(bucket_root("memory:///x"), "memory://");
    }
}
