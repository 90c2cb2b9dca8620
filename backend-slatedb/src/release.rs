//! Releasing SlateDB checkpoints when the checkpoint store no longer
//! retains the checkpoint that pinned them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::fail_fast::admin_builder;
use flowstate_api::checkpoint::{IncrementalStateHandle, KeyedStateHandle, NativeFormat};
use flowstate_api::lifecycle::{GcOptions, NativeStateRelease};
use flowstate_api::{Error, ErrorKind, Result};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::slate_err;
use crate::SlateDbOptions;

/// The name of the SlateDB checkpoint taken for flowstate checkpoint `id`.
pub(crate) fn checkpoint_name(id: u64) -> String {
    format!("flowstate:{id}")
}

/// Releases the SlateDB checkpoint a handle of the SlateDB backend pins:
/// the checkpoint named `flowstate:<checkpoint id>` of database
/// `<base path>/<backend id>`. See [`SlateDbOptions::release`].
#[derive(Debug, Clone)]
pub struct SlateDbRelease {
    object_store: Arc<dyn ObjectStore>,
    base_path: String,
}

impl SlateDbRelease {
    pub(crate) fn new(options: &SlateDbOptions) -> Self {
        SlateDbRelease {
            object_store: Arc::clone(&options.object_store),
            base_path: options.base_path.clone(),
        }
    }
}

/// True when the database at `path` has a manifest.
pub(crate) async fn exists(store: &Arc<dyn ObjectStore>, path: &str) -> Result<bool> {
    let manifests = object_store::path::Path::from(format!("{path}/manifest"));
    let first = store.list(Some(&manifests)).next().await.transpose().map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("listing the manifests of database {path}: {e}"),
        )
        .with_source(e)
    })?;
    Ok(first.is_some())
}

/// When the newest manifest of the database at `path` was written
/// (milliseconds since the Unix epoch); `None` without a manifest. Every
/// flush and checkpoint of a running database writes one.
async fn last_written(store: &Arc<dyn ObjectStore>, path: &str) -> Result<Option<u64>> {
    let manifests = object_store::path::Path::from(format!("{path}/manifest"));
    let mut listing = store.list(Some(&manifests));
    let mut newest = None;
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("listing the manifests of database {path}: {e}"),
            )
            .with_source(e)
        })?;
        let at = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
        newest = Some(newest.map_or(at, |n: u64| n.max(at)));
    }
    Ok(newest)
}

/// Deletes the database at `path` (one no checkpoint references, and no
/// process has open), first releasing what it pins in the databases it was
/// cloned from (SlateDB's `delete_db`); a path holding objects but no
/// manifest (a clone that failed midway) has its objects deleted.
pub(crate) async fn delete_database(store: &Arc<dyn ObjectStore>, path: &str) -> Result<()> {
    let admin = admin_builder(path, store).build();
    match admin.delete_db(true).await {
        Ok(_) => return Ok(()),
        Err(e) if exists(store, path).await? => {
            return Err(crate::error::from_slatedb(format!("deleting database {path}"), e));
        }
        Err(_) => {}
    }
    let prefix = object_store::path::Path::from(path);
    let what = |e: object_store::Error| {
        Error::new(ErrorKind::Unavailable, format!("deleting database {path}: {e}")).with_source(e)
    };
    let objects: Vec<object_store::path::Path> = store
        .list(Some(&prefix))
        .map(|m| m.map(|m| m.location))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<std::result::Result<_, _>>()
        .map_err(what)?;
    for o in objects {
        match store.delete(&o).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(what(e)),
        }
    }
    Ok(())
}

/// What [`SlateDbOptions::collect_garbage`] found, and removed unless it
/// was a dry run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlateDbGcReport {
    /// Databases deleted whole: of no running backend, referenced by no
    /// retained checkpoint, and read by no clone.
    pub deleted_databases: Vec<String>,
    /// SlateDB checkpoints of flowstate checkpoints that are not retained,
    /// released (`<database>#flowstate:<checkpoint id>`).
    pub released_checkpoints: Vec<String>,
    /// Databases of no running backend and no retained checkpoint, kept
    /// because a clone (a backend restored from them) still reads their
    /// files; SlateDB releases that once the clone's compaction has
    /// rewritten them, or the clone is deleted.
    pub read_by_clones: Vec<String>,
    /// Databases left alone because their newest manifest is younger than
    /// the minimum age: a backend may be writing them.
    pub recently_written: Vec<String>,
    /// Retained databases of no running backend on which SlateDB's
    /// collector ran once, deleting the files older than the minimum age
    /// that neither their manifest nor a remaining SlateDB checkpoint
    /// references (a running backend's database is collected by its own
    /// process).
    pub collected_databases: Vec<String>,
}

impl SlateDbOptions {
    /// Removes what no one needs among the databases under the base path:
    /// the SlateDB checkpoints of flowstate checkpoints not in `retained`
    /// (the keyed handles of every checkpoint the job retains), and whole
    /// databases that, after that, no retained checkpoint references and
    /// no clone reads: those of failed attempts and finished jobs. On the
    /// retained databases of no running backend, SlateDB's collector runs
    /// once, so the files only released checkpoints kept go too.
    ///
    /// The databases of running backends are left alone: those in `live`
    /// (their backend ids) and those whose newest manifest is younger than
    /// `options.min_age` (their checkpoints in flight are not retained
    /// yet). Run it with the job stopped, with every running backend in
    /// `live`, or with a minimum age longer than the checkpoint interval.
    /// Unless `options` deletes, it only reports.
    pub async fn collect_garbage(
        &self,
        retained: &[KeyedStateHandle],
        live: &[&str],
        options: &GcOptions,
    ) -> Result<SlateDbGcReport> {
        let dry_run = options.dry_run;
        let now = options.clock.now_millis();
        let min_age = u64::try_from(options.min_age.as_millis()).unwrap_or(u64::MAX);
        let mut wanted: HashMap<&str, HashSet<u64>> = HashMap::new();
        for h in retained {
            if let KeyedStateHandle::Incremental(h) = h {
                if h.format == NativeFormat::SlateDb {
                    wanted.entry(h.backend_id.as_str()).or_default().insert(h.checkpoint_id);
                }
            }
        }
        let store = &self.object_store;
        let base = object_store::path::Path::from(self.base_path.as_str());
        let listing = store.list_with_delimiter(Some(&base)).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("listing the databases under {}: {e}", self.base_path),
            )
            .with_source(e)
        })?;
        let mut report = SlateDbGcReport::default();
        let mut pending: Vec<(String, String)> = Vec::new();
        for (id, path) in listing
            .common_prefixes
            .iter()
            .filter_map(|p| Some((p.filename()?.to_string(), p.to_string())))
            .filter(|(id, _)| !live.contains(&id.as_str()))
        {
            match last_written(store, &path).await? {
                Some(at) if now.saturating_sub(at) < min_age => report.recently_written.push(path),
                _ => pending.push((id, path)),
            }
        }
        let mut collect = Vec::new();
        // Deleting a clone releases what it pinned in its sources, which
        // may then go too: repeat while databases are deleted.
        loop {
            let mut deleted_any = false;
            let mut still = Vec::new();
            for (id, path) in pending {
                if !exists(store, &path).await? {
                    report.deleted_databases.push(path.clone());
                    if !dry_run {
                        delete_database(store, &path).await?;
                    }
                    continue;
                }
                let admin = admin_builder(&path, store).build();
                let checkpoints = admin
                    .list_checkpoints(None)
                    .await
                    .map_err(slate_err(|| format!("listing the checkpoints of database {path}")))?;
                let keep = wanted.get(id.as_str());
                let (mut kept, mut pinned) = (false, false);
                for c in &checkpoints {
                    match c.name.as_deref().and_then(|n| n.strip_prefix("flowstate:")) {
                        Some(n) if keep.is_some_and(|k| n.parse().is_ok_and(|id: u64| k.contains(&id))) => kept = true,
                        Some(n) => {
                            let name = format!("{path}#flowstate:{n}");
                            if !report.released_checkpoints.contains(&name) {
                                report.released_checkpoints.push(name);
                            }
                            if !dry_run {
                                admin.delete_checkpoint(c.id).await.map_err(slate_err(|| {
                                    format!("releasing checkpoint {} of database {path}", c.id)
                                }))?;
                            }
                        }
                        None => pinned = true,
                    }
                }
                if kept || keep.is_some() {
                    collect.push(path);
                    continue;
                }
                if pinned && !dry_run {
                    still.push((id, path));
                    continue;
                }
                if pinned {
                    report.read_by_clones.push(path);
                    continue;
                }
                report.deleted_databases.push(path.clone());
                if !dry_run {
                    delete_database(store, &path).await?;
                }
                deleted_any = true;
            }
            if !deleted_any || still.is_empty() {
                report.read_by_clones.extend(still.into_iter().map(|(_, p)| p));
                break;
            }
            pending = still;
        }
        if !dry_run {
            for path in collect {
                let admin = admin_builder(&path, store).build();
                admin
                    .run_gc_once(self.collector_options(options.min_age))
                    .await
                    .map_err(slate_err(|| format!("collecting the garbage of database {path}")))?;
                report.collected_databases.push(path);
            }
        }
        Ok(report)
    }
}

#[async_trait::async_trait]
impl NativeStateRelease for SlateDbRelease {
    fn format(&self) -> NativeFormat {
        NativeFormat::SlateDb
    }

    async fn release(&self, handle: &IncrementalStateHandle) -> Result<()> {
        let path = format!("{}/{}", self.base_path, handle.backend_id);
        if !exists(&self.object_store, &path).await? {
            return Ok(());
        }
        let admin = admin_builder(&path, &self.object_store).build();
        let name = checkpoint_name(handle.checkpoint_id);
        let listed = admin
            .list_checkpoints(Some(&name))
            .await
            .map_err(slate_err(|| format!("listing the checkpoints of database {path}")))?;
        for c in listed.iter().filter(|c| c.name.as_deref() == Some(name.as_str())) {
            admin.delete_checkpoint(c.id).await.map_err(slate_err(|| {
                format!(
                    "releasing SlateDB checkpoint {} (checkpoint {}) of database {path}",
                    c.id, handle.checkpoint_id
                )
            }))?;
        }
        Ok(())
    }
}
