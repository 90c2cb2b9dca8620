//! File helpers of the backend's directories: a directory removed when
//! its guard drops, directory listings, hard-linking or copying a
//! directory, and blocking work off the async executor.

use std::path::{Path, PathBuf};

use flowstate_api::{Error, Result};

/// Deletes a directory when dropped (a snapshot's private checkpoint).
pub(crate) struct DirGuard(pub(crate) PathBuf);

impl DirGuard {
    /// Guards `dir`.
    pub(crate) fn new(dir: PathBuf) -> Self {
        DirGuard(dir)
    }

    /// Removes the directory on a blocking thread and waits for it.
    pub(crate) async fn remove(mut self) {
        let dir = std::mem::take(&mut self.0);
        let _ = blocking(move || {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
        .await;
    }
}

impl Drop for DirGuard {
    /// A guard dropped without [`DirGuard::remove`] (an error or a
    /// cancellation) removes its directory without blocking the caller.
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let dir = std::mem::take(&mut self.0);
        flowstate_api::runtime::run_detached(move || {
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}

/// Runs blocking work (file I/O, RocksDB) off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    flowstate_api::runtime::run_blocking(f).await
}

/// The files of a directory, with sizes.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    flowstate_api::runtime::check_blocking("listing a directory");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let meta = entry.metadata().map_err(|e| Error::io(entry.path().display(), e))?;
        if meta.is_file() {
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| Error::invalid(format!("file name {n:?} is not UTF-8")))?;
            out.push((name, meta.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// Hard-links every file of `src` into `dst` (created), copying where a
/// link is impossible (another device).
pub(crate) fn link_or_copy_dir(src: &Path, dst: &Path) -> Result<()> {
    flowstate_api::runtime::check_blocking("linking or copying a directory");
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst.display(), e))?;
    for (name, _) in list_files(src)? {
        let (from, to) = (src.join(&name), dst.join(&name));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| Error::io(to.display(), e))?;
        }
    }
    Ok(())
}
