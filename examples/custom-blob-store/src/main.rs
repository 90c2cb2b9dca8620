//! For storage implementers: a [`BlobStore`] of one's own. `FlatDirStore`
//! keeps every object as one file of a single directory, its path escaped
//! into the file name (`shared/ab` is `shared%2Fab`). The conformance
//! suite's `blob` contracts check it, then a heap backend checkpoints into
//! it through the checkpoint layout and restores.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::checkpoint::{BlobMeta, BlobPath, BlobStore, BlobWriter};
use flowstate_api::runtime::run_blocking;
use flowstate_api::*;
use flowstate_conformance::{block_on, StorageFactory};

/// Objects as files of one directory.
#[derive(Debug)]
struct FlatDirStore {
    dir: PathBuf,
    root: String,
}

fn escape(path: &str) -> String {
    path.replace('%', "%25").replace('/', "%2F")
}

fn unescape(name: &str) -> String {
    name.replace("%2F", "/").replace("%25", "%")
}

/// Temporary files are named `.tmp-<n>`, which no escaped path is.
fn temp_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(".tmp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl FlatDirStore {
    fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        Ok(FlatDirStore {
            dir: dir.to_path_buf(),
            root: dir.display().to_string(),
        })
    }

    fn file(&self, path: &BlobPath) -> PathBuf {
        self.dir.join(escape(path.as_str()))
    }
}

/// A new object: written to a temporary file, linked into place when finished.
struct FlatWriter {
    temp: PathBuf,
    target: PathBuf,
    data: Vec<u8>,
}

#[async_trait]
impl BlobWriter for FlatWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.data.extend_from_slice(&data);
        Ok(())
    }
    async fn finish(self: Box<Self>) -> Result<()> {
        let FlatWriter { temp, target, data } = *self;
        run_blocking(move || publish(&temp, &target, &data)).await
    }
    async fn abort(self: Box<Self>) {}
}

/// Writes `data` to `temp` and hard-links it to `target`, which must not
/// exist: a conflict otherwise.
fn publish(temp: &Path, target: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(temp, data).map_err(|e| Error::io(temp.display(), e))?;
    let linked = std::fs::hard_link(temp, target);
    let _ = std::fs::remove_file(temp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::new(
            ErrorKind::Conflict,
            format!("{} already exists", target.display()),
        )),
        Err(e) => Err(Error::io(target.display(), e)),
    }
}

#[async_trait]
impl BlobStore for FlatDirStore {
    fn root(&self) -> &str {
        &self.root
    }

    async fn create(&self, path: &BlobPath) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(FlatWriter {
            temp: self.dir.join(temp_name()),
            target: self.file(path),
            data: Vec::new(),
        }))
    }

    async fn put_if_absent(&self, path: &BlobPath, data: Bytes) -> Result<()> {
        let (temp, target) = (self.dir.join(temp_name()), self.file(path));
        run_blocking(move || publish(&temp, &target, &data)).await
    }

    async fn get_range(&self, path: &BlobPath, range: Range<u64>) -> Result<Bytes> {
        let file = self.file(path);
        run_blocking(move || match std::fs::read(&file) {
            Ok(all) => {
                let end = range.end.min(all.len() as u64) as usize;
                let start = (range.start as usize).min(end);
                Ok(Bytes::copy_from_slice(&all[start..end]))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found(format!("{} does not exist", file.display())))
            }
            Err(e) => Err(Error::io(file.display(), e)),
        })
        .await
    }

    async fn head(&self, path: &BlobPath) -> Result<Option<BlobMeta>> {
        let (file, path) = (self.file(path), path.clone());
        run_blocking(move || match std::fs::metadata(&file) {
            Ok(m) => Ok(Some(BlobMeta {
                path,
                size: m.len(),
                modified_millis: 0,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(file.display(), e)),
        })
        .await
    }

    async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>> {
        let dir = self.dir.clone();
        let prefix = prefix.map(|p| format!("{}/", p.as_str()));
        run_blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(dir.display(), e))? {
                let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
                let Some(name) = entry.file_name().to_str().map(unescape) else {
                    continue;
                };
                if name.starts_with(".tmp-") || prefix.as_ref().is_some_and(|p| !name.starts_with(p.as_str())) {
                    continue;
                }
                let size = entry
                    .metadata()
                    .map_err(|e| Error::io(entry.path().display(), e))?
                    .len();
                out.push(BlobMeta {
                    path: BlobPath::new(&name)?,
                    size,
                    modified_millis: 0,
                });
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, paths: &[BlobPath]) -> Result<()> {
        let files: Vec<PathBuf> = paths.iter().map(|p| self.file(p)).collect();
        run_blocking(move || {
            for f in files {
                match std::fs::remove_file(&f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(f.display(), e)),
                }
            }
            Ok(())
        })
        .await
    }

    fn open(&self, location: &str) -> Result<Arc<dyn BlobStore>> {
        Ok(Arc::new(FlatDirStore::new(Path::new(location))?))
    }
}

/// The conformance suite's view of the store: one directory per job.
struct FlatDirFactory {
    base: tempfile::TempDir,
}

impl StorageFactory for FlatDirFactory {
    fn name(&self) -> &str {
        "flat-dir"
    }
    // The suite's factories panic when they cannot set up, as tests do.
    #[allow(clippy::expect_used)]
    fn storage(&self, job_id: &str) -> Arc<CheckpointStorage> {
        let store = FlatDirStore::new(&self.base.path().join(job_id)).expect("a job directory");
        Arc::new(CheckpointStorage::new(Arc::new(store), job_id).expect("a valid job id"))
    }
}

fn main() -> Result<()> {
    let base = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
    let factory: Arc<dyn StorageFactory> = Arc::new(FlatDirFactory { base });

    // Every contract of the BlobStore group, as the suite runs them on ours.
    for contract in flowstate_conformance::storage_contracts()
        .into_iter()
        .filter(|c| c.group == "blob")
    {
        block_on((contract.run)(Arc::clone(&factory)));
        println!("blob contract {}: passed", contract.name);
    }

    // A checkpoint through the checkpoint layout over the store, and back.
    block_on(async {
        let storage = factory.storage("job");
        let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128);
        let mut backend = flowstate_heap::HeapBackend::new(config.clone())?;
        let big = backend.register(ValueStateDescriptor::<Vec<u8>>::new("big"))?;
        for k in 0..100u64 {
            backend.set_current_key(&k)?;
            backend.update(&big, vec![k as u8; 1_000])?;
        }
        let location = storage.init_checkpoint(1).await?;
        let result = backend
            .snapshot(1, Arc::clone(&location), SnapshotOptions::checkpoint())?
            .await?;
        let pointer = location
            .write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0))
            .await?;
        let resolved = storage.resolve(&pointer).await?;
        let mut restored = flowstate_heap::HeapBackend::restore(config, &[result.handle], &*resolved.reader).await?;
        let big = restored.register(ValueStateDescriptor::<Vec<u8>>::new("big"))?;
        restored.set_current_key(&42)?;
        if restored.value(&big)? != Some(vec![42; 1_000]) {
            return Err(Error::internal("the restored state differs"));
        }
        println!(
            "checkpoint {pointer}: {} bytes in a flat directory, restored",
            result.stats.bytes_written
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    /// CI runs the example through the test suite, built with the
    /// workspace's features.
    #[test]
    fn the_example_runs() {
        super::main().unwrap();
    }
}
