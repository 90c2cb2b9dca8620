//! The exactly-once check: a finished job's committed output and the state
//! in its last checkpoint against a failure-free computation.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use flowstate_api::checkpoint::ResolvedCheckpoint;
use flowstate_api::*;
use flowstate_heap::HeapBackendFactory;
use flowstate_rocksdb::{RocksDbBackendFactory, RocksDbOptions};

use crate::job::{self, COUNT, MAX_PARALLELISM};
use crate::log::WordState;
use crate::{sink, BackendKind, JobSettings, StorageSpec};

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The checkpoint whose state was read (the last epoch's).
    pub checkpoint: u64,
    /// Words in the failure-free computation.
    pub words: usize,
    /// Window results in the failure-free computation.
    pub windows: usize,
    /// Window results committed more than once.
    pub duplicates: u64,
    /// Sink transactions left pre-committed.
    pub pending: usize,
    /// Window results missing from the committed output.
    pub missing_windows: usize,
    /// Committed window results that no failure-free run produces.
    pub extra_windows: usize,
    /// Committed window results with another count.
    pub wrong_windows: usize,
    /// Words whose state (count, list, map) differs, or is missing or extra.
    pub state_mismatches: usize,
    /// The first difference found, for the message.
    pub first_difference: Option<String>,
}

impl Verdict {
    /// Whether output and state are exactly what a failure-free run gives.
    pub fn passed(&self) -> bool {
        self.duplicates == 0
            && self.pending == 0
            && self.missing_windows == 0
            && self.extra_windows == 0
            && self.wrong_windows == 0
            && self.state_mismatches == 0
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.passed() {
            write!(
                f,
                "exactly once: PASSED: {} words (count, list, map state in checkpoint {}) and {} window results \
                 equal a failure-free run",
                self.words, self.checkpoint, self.windows
            )
        } else {
            write!(
                f,
                "exactly once: FAILED: {} duplicate, {} missing, {} extra, {} wrong window results; {} pending \
                 transactions; {} words with other state (first: {})",
                self.duplicates,
                self.missing_windows,
                self.extra_windows,
                self.wrong_windows,
                self.pending,
                self.state_mismatches,
                self.first_difference.as_deref().unwrap_or("-")
            )
        }
    }
}

/// Checks the finished job in `dir` (with `storage_options` for an object
/// store): every window result committed once with the failure-free
/// count, and the per-word state of its last checkpoint, restored into
/// one backend over all key groups, equal to the failure-free state.
pub fn verify(dir: &Path, storage_options: &[(String, String)]) -> Result<Verdict> {
    let settings = JobSettings::load(dir)?
        .ok_or_else(|| Error::not_found(format!("{}: no job here (no job.json)", dir.display())))?;
    let expected = settings.shape.expected();
    let committed = sink::read_committed(&crate::sink_dir(dir))?;
    let spec = StorageSpec {
        url: settings.storage.clone(),
        options: storage_options.to_vec(),
    };
    let rt = crate::runtime()?;
    let storage = rt.block_on(async { spec.open() })?;
    let latest = rt
        .block_on(storage.latest_checkpoint())?
        .ok_or_else(|| Error::not_found(format!("{}: no completed checkpoint", settings.storage)))?;
    if latest.metadata.checkpoint_id != settings.shape.epochs {
        return Err(Error::invalid(format!(
            "{}: the job has not finished (its latest checkpoint is of epoch {} of {})",
            latest.pointer, latest.metadata.checkpoint_id, settings.shape.epochs
        )));
    }
    let words = match settings.backend {
        BackendKind::Heap => read_state(&rt, &HeapBackendFactory::new(), &latest)?,
        BackendKind::Rocksdb => {
            let work = tempdir_in(dir)?;
            let factory = RocksDbBackendFactory::new(RocksDbOptions::new(work.path()));
            read_state(&rt, &factory, &latest)?
        }
    };
    let mut v = Verdict {
        checkpoint: latest.metadata.checkpoint_id,
        words: expected.words.len(),
        windows: expected.windows.len(),
        duplicates: committed.duplicates,
        pending: committed.pending,
        ..Verdict::default()
    };
    let note = |v: &mut Verdict, what: String| {
        if v.first_difference.is_none() {
            v.first_difference = Some(what);
        }
    };
    for (k, n) in &expected.windows {
        match committed.results.get(k) {
            None => {
                v.missing_windows += 1;
                note(&mut v, format!("window {k:?} missing"));
            }
            Some(m) if m != n => {
                v.wrong_windows += 1;
                note(&mut v, format!("window {k:?}: {m}, expected {n}"));
            }
            Some(_) => {}
        }
    }
    for k in committed.results.keys() {
        if !expected.windows.contains_key(k) {
            v.extra_windows += 1;
            note(&mut v, format!("window {k:?} extra"));
        }
    }
    for (word, state) in &expected.words {
        if words.get(word) != Some(state) {
            v.state_mismatches += 1;
            note(
                &mut v,
                format!("word {word}: {:?}, expected {state:?}", words.get(word)),
            );
        }
    }
    for word in words.keys() {
        if !expected.words.contains_key(word) {
            v.state_mismatches += 1;
            note(&mut v, format!("word {word} extra"));
        }
    }
    Ok(v)
}

/// A scratch directory for a RocksDB restore, inside the job's directory.
fn tempdir_in(dir: &Path) -> Result<TempDir> {
    let path = dir.join(format!("verify-{}", flowstate_api::checkpoint::unique_file_name()));
    std::fs::create_dir_all(&path).map_err(|e| Error::io(path.display(), e))?;
    Ok(TempDir(path))
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The per-word state of `checkpoint`, restored at parallelism 1.
fn read_state<F: BackendFactory>(
    rt: &tokio::runtime::Runtime,
    factory: &F,
    checkpoint: &ResolvedCheckpoint,
) -> Result<BTreeMap<String, WordState>> {
    let config = KeyedBackendConfig::<String>::new(KeyGroupRange::all(MAX_PARALLELISM)?, MAX_PARALLELISM);
    let handles = checkpoint
        .metadata
        .operator(COUNT)
        .map(|o| o.keyed.clone())
        .unwrap_or_default();
    let backend = rt
        .block_on(factory.restore(config, &handles, Arc::clone(&checkpoint.reader)))
        .map_err(|e| e.context(format!("restoring {} at parallelism 1", checkpoint.pointer)))?;
    let mut backend = backend;
    let states = job::register(&mut backend)?;
    let mut out = BTreeMap::new();
    let (c, r, m) = (&states.count, &states.rare, &states.by_partition);
    backend.apply_to_all_keys(&states.count, &VoidNamespace, |b, word| {
        let state = WordState {
            count: b.value(c)?.unwrap_or(0),
            rare: b.list(r)?,
            by_partition: b.map_entries(m)?.into_iter().collect(),
        };
        out.insert(word.clone(), state);
        Ok(())
    })?;
    Ok(out)
}
