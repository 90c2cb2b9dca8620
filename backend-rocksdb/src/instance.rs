//! The working directory of one backend instance, and the removal of those
//! that killed processes left behind.
//!
//! Each backend works in `<working_dir>/db-<unique>/`: the database in
//! `db/`, snapshot checkpoints (`snapshot-<id>-<unique>`, and the `.tmp`
//! directory RocksDB creates them through) and restore downloads
//! (`restore-<unique>`) beside it. The instance holds an exclusive lock
//! (`flock`) on `db-<unique>/owner.lock` for its whole life. The kernel
//! releases the lock when the process ends however it ends, so a directory
//! whose lock can be taken belongs to no live backend: opening a backend on
//! the same working directory removes it. A directory in use is never
//! removed, whichever process (or container sharing the filesystem) uses it.
//! A directory is made and locked as `creating-<unique>/` and only then
//! renamed to `db-<unique>/`, so no `db-*` directory is ever unlocked while
//! its backend lives.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowstate_api::{Error, Result};

/// The lock file inside an instance directory.
const OWNER_LOCK: &str = "owner.lock";
/// Prefix of instance directories.
const PREFIX: &str = "db-";
/// Prefix of an instance directory while it is being created and locked.
const CREATING: &str = "creating-";
/// A directory being created (or one of an older version without a lock
/// file) is only taken for abandoned once it is this old.
const UNLOCKED_GRACE: Duration = Duration::from_secs(60);

/// A backend's working directory, locked while it lives and removed when
/// it is dropped.
#[derive(Debug)]
pub(crate) struct InstanceDir {
    path: PathBuf,
    /// Holds the lock; released (by the kernel) when closed, after the
    /// directory is removed.
    lock: Option<File>,
}

impl InstanceDir {
    /// Removes the instance directories of dead backends under
    /// `working_dir`, then creates and locks a new one.
    pub(crate) fn create(working_dir: &Path) -> Result<Self> {
        flowstate_api::runtime::check_blocking("creating an instance directory");
        std::fs::create_dir_all(working_dir).map_err(|e| Error::io(working_dir.display(), e))?;
        remove_abandoned(working_dir);
        // Made and locked under a name the clean-up of others ignores, then
        // renamed: a `db-*` directory is locked from the moment it exists.
        let unique = flowstate_api::checkpoint::unique_file_name();
        let creating = working_dir.join(format!("{CREATING}{unique}"));
        std::fs::create_dir(&creating).map_err(|e| Error::io(creating.display(), e))?;
        let lock_path = creating.join(OWNER_LOCK);
        let lock = File::create(&lock_path).map_err(|e| Error::io(lock_path.display(), e))?;
        lock.try_lock()
            .map_err(|e| Error::internal(format!("{}: cannot lock a new file: {e}", lock_path.display())))?;
        let path = working_dir.join(format!("{PREFIX}{unique}"));
        if let Err(e) = std::fs::rename(&creating, &path) {
            let _ = std::fs::remove_dir_all(&creating);
            return Err(Error::io(path.display(), e));
        }
        Ok(InstanceDir { path, lock: Some(lock) })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A new, unique path inside the directory for a temporary directory
    /// such as `snapshot-<id>`.
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        self.path
            .join(format!("{what}-{}", flowstate_api::checkpoint::unique_file_name()))
    }
}

impl Drop for InstanceDir {
    /// Removes the directory, on a blocking thread when dropped on a Tokio
    /// runtime. It stays locked until it is gone; if the process ends first,
    /// the next backend opened on the working directory removes it.
    fn drop(&mut self) {
        let (path, lock) = (std::mem::take(&mut self.path), self.lock.take());
        flowstate_api::backend::run_detached(move || {
            let _ = std::fs::remove_dir_all(&path);
            drop(lock);
        });
    }
}

/// Removes every instance directory under `working_dir` whose lock can be
/// taken: no live backend holds it. Errors are logged, never fatal.
pub(crate) fn remove_abandoned(working_dir: &Path) {
    flowstate_api::runtime::check_blocking("removing abandoned instance directories");
    let Ok(entries) = std::fs::read_dir(working_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name.starts_with(CREATING) {
            // Left by a process killed while creating its directory.
            if is_old(&entry) {
                remove(&entry.path());
            }
            continue;
        }
        if !name.starts_with(PREFIX) {
            continue;
        }
        let dir = entry.path();
        let lock_path = dir.join(OWNER_LOCK);
        let lock = match File::options().read(true).write(true).open(&lock_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Directories are locked before they get this name: one
                // without a lock file was left by an older version.
                if is_old(&entry) {
                    remove(&dir);
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot check a RocksDB working directory");
                continue;
            }
        };
        match lock.try_lock() {
            // Held while removing, so no one adopts it meanwhile.
            Ok(()) => remove(&dir),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot lock a RocksDB working directory");
            }
        }
    }
}

/// True when the entry was last modified at least [`UNLOCKED_GRACE`] ago.
fn is_old(entry: &std::fs::DirEntry) -> bool {
    // Wall time, not the job's injected clock: it is compared with the
    // filesystem's modification time.
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(flowstate_api::ttl::SystemClock::age)
        .is_some_and(|age| age >= UNLOCKED_GRACE)
}

fn remove(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => tracing::info!(dir = %dir.display(), "removed the working directory of a backend that is gone"),
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an abandoned working directory"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_creation_and_clean_up_never_remove_a_live_directory() {
        let work = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let dir = work.path().to_path_buf();
                std::thread::spawn(move || {
                    let mut live = Vec::new();
                    for _ in 0..50 {
                        let instance = InstanceDir::create(&dir).unwrap();
                        assert!(instance.path().join(OWNER_LOCK).exists());
                        live.push(instance);
                        remove_abandoned(&dir);
                        for i in &live {
                            assert!(i.path().exists(), "a live instance directory was removed");
                        }
                        if live.len() > 3 {
                            live.remove(0);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn abandoned_directories_go_and_live_ones_stay() {
        let work = tempfile::tempdir().unwrap();
        let live = InstanceDir::create(work.path()).unwrap();
        // A killed process's directory: its lock file exists, nobody holds it.
        let dead = work.path().join("db-00000001-1-1");
        std::fs::create_dir_all(dead.join("db")).unwrap();
        std::fs::create_dir_all(dead.join("snapshot-3-00000001-2-2.tmp")).unwrap();
        File::create(dead.join(OWNER_LOCK)).unwrap();
        // Not ours: left alone.
        let other = work.path().join("notes");
        std::fs::create_dir_all(&other).unwrap();
        let second = InstanceDir::create(work.path()).unwrap();
        assert!(!dead.exists(), "the dead instance's directory was removed");
        assert!(
            live.path().join(OWNER_LOCK).exists(),
            "a live instance's directory stays"
        );
        assert!(second.path().exists() && other.exists());
        // A directory without a lock file that is new may be being created.
        let fresh = work.path().join("db-00000002-1-1");
        std::fs::create_dir_all(&fresh).unwrap();
        remove_abandoned(work.path());
        assert!(fresh.exists());
        drop(live);
        remove_abandoned(work.path());
        assert_eq!(
            std::fs::read_dir(work.path()).unwrap().count(),
            3,
            "second, notes, fresh"
        );
    }
}
