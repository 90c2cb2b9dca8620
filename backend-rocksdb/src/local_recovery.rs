//! Local recovery: each completed checkpoint's files are also kept in a
//! local directory (hard-linked where possible), and a restore uses them
//! when every file matches its handle's size and CRC-32C.

use std::path::{Path, PathBuf};

use flowstate_api::checkpoint::HandleFile;
use flowstate_api::format::codec::crc32c;
use flowstate_api::{Error, Result};

use crate::files::list_files;
use crate::RocksDbBackend;

/// Local recovery: completed checkpoints are also kept on local disk and
/// restored from there when they verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecovery {
    /// Directories to keep copies in; a backend's copies go to one of them,
    /// chosen by its scope. They may be on other devices (files are copied
    /// where they cannot be hard-linked).
    pub dirs: Vec<PathBuf>,
    /// Identifies this backend's state across restarts, e.g.
    /// `<job>/<operator>-<subtask>`: one path component or several.
    pub scope: String,
}

impl LocalRecovery {
    /// Checks that there is somewhere to keep copies: without a directory,
    /// copies would silently go to the process's working directory.
    pub fn validate(&self) -> Result<()> {
        if self.dirs.is_empty() {
            return Err(Error::invalid(format!(
                "local recovery of scope {:?} has no directories: give at least one directory to keep local \
                 copies in, or disable local recovery",
                self.scope
            )));
        }
        // The scope is a directory under each of `dirs` whose stale `chk-*`
        // copies a backend deletes: empty, absolute or `..` would point that
        // at the directories themselves or elsewhere.
        let scope = &self.scope;
        if flowstate_api::checkpoint::validate_relative_path(scope).is_err() {
            return Err(Error::invalid(format!(
                "local recovery scope {scope:?} must be a relative path such as \"job/operator-0\" (not empty, \
                 absolute or with '..')"
            )));
        }
        Ok(())
    }
}

/// Where the local copy of checkpoint `id` goes.
pub(crate) fn local_dir(l: &LocalRecovery, id: u64) -> Result<PathBuf> {
    Ok(local_scope_dir(l)?.join(format!("chk-{id}")))
}

/// This backend's directory under the local recovery dirs; `Invalid` if
/// there are none (never the process's working directory).
pub(crate) fn local_scope_dir(l: &LocalRecovery) -> Result<PathBuf> {
    l.validate()?;
    let i = (crc32c(l.scope.as_bytes()) as usize) % l.dirs.len().max(1);
    let dir = l
        .dirs
        .get(i)
        .ok_or_else(|| Error::invalid("local recovery has no directories"))?;
    Ok(dir.join(&l.scope))
}

/// True if `dir` holds exactly the files of `wanted`, by size and CRC-32C.
pub(crate) fn verify_local(dir: &Path, wanted: &[HandleFile]) -> bool {
    flowstate_api::runtime::check_blocking("verifying a local copy");
    let Ok(present) = list_files(dir) else { return false };
    if present.len() != wanted.len() {
        return false;
    }
    wanted.iter().all(|f| {
        let path = dir.join(&f.name);
        std::fs::metadata(&path).is_ok_and(|m| m.len() == f.stream.size())
            && file_crc32c(&path).is_ok_and(|crc| crc == f.crc32c)
    })
}

/// The CRC-32C of a file, read in chunks.
pub(crate) fn file_crc32c(path: &Path) -> Result<u32> {
    flowstate_api::runtime::check_blocking("reading a file for its CRC-32C");
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path.display(), e))?;
        if n == 0 {
            return Ok(crc);
        }
        crc = flowstate_api::format::codec::crc32c_append(crc, &buf[..n]);
    }
}

impl<K> RocksDbBackend<K> {
    /// Takes over the local copy of the restored checkpoint `keep` (deleted
    /// once a newer checkpoint completes) and deletes any other copy of this
    /// backend's scope: they belong to earlier runs.
    pub(crate) fn adopt_local_copies(&mut self, keep: Option<u64>) -> Result<()> {
        flowstate_api::runtime::check_blocking("adopting local copies");
        let Some(l) = self.options().local_recovery.clone() else {
            return Ok(());
        };
        let scope = local_scope_dir(&l)?;
        let Ok(entries) = std::fs::read_dir(&scope) else {
            return Ok(());
        };
        let mut u = self
            .uploads
            .lock()
            .map_err(|_| Error::internal("upload registry lock poisoned"))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok());
            match id {
                Some(id) if Some(id) == keep => u.local_copies.push((id, entry.path())),
                Some(_) => {
                    let _ = std::fs::remove_dir_all(entry.path());
                    crate::crash::point("restore.local-copy-removed");
                }
                None => {}
            }
        }
        Ok(())
    }
}
