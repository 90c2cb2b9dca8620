//! Path containment and safe opening. Every read, write and delete of the
//! filesystem storage finds its target through [`confine`], and every read
//! opens it through [`open_regular`].

use std::fs::{File, FileType};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flowstate_api::checkpoint::validate_relative_path;
use flowstate_api::{Error, Result};

/// What [`confine`] does with the last component of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last {
    /// Resolve it: a read sees what a symlink points to, which must be
    /// inside the root as well.
    Follow,
    /// Leave it as it is: only the parent directory is resolved, so a
    /// delete unlinks a symlink itself, never its target.
    Keep,
}

fn canonical(path: &Path) -> Result<PathBuf> {
    flowstate_api::runtime::check_blocking("resolving a path");
    path.canonicalize().map_err(|e| Error::io(path.display(), e))
}

/// The one containment check: resolves the relative `path` under `root`
/// and refuses it unless the result is inside the canonical root. With
/// [`Last::Follow`] the whole path is resolved; with [`Last::Keep`] only its
/// parent directory, and the last component is appended as it is. The
/// returned path has no symlink in its directories, so using it does not
/// depend on links that were checked earlier.
pub(crate) fn confine(root: &Path, path: &str, last: Last) -> Result<PathBuf> {
    flowstate_api::runtime::check_blocking("confining a path to the storage root");
    validate_relative_path(path)?;
    let real_root = canonical(root)?;
    let full = root.join(path);
    let real = match last {
        Last::Follow => canonical(&full)?,
        Last::Keep => match (full.parent(), full.file_name()) {
            (Some(parent), Some(name)) => canonical(parent)?.join(name),
            _ => return Err(Error::invalid(format!("path {path:?} has no file name"))),
        },
    };
    if !real.starts_with(&real_root) {
        return Err(Error::invalid(format!(
            "path {path:?} resolves to {} outside the root {}",
            real.display(),
            real_root.display()
        )));
    }
    Ok(real)
}

/// The directory `path` under `root` (the root itself if `path` is empty):
/// confined to the root, and a real directory, not a symlink to one.
pub(crate) fn real_dir(root: &Path, path: &str) -> Result<PathBuf> {
    flowstate_api::runtime::check_blocking("resolving a directory");
    if path.is_empty() {
        return canonical(root);
    }
    let real = confine(root, path, Last::Keep)?;
    let meta = std::fs::symlink_metadata(&real).map_err(|e| Error::io(real.display(), e))?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "{} is {}, not a directory",
            real.display(),
            describe(meta.file_type())
        )));
    }
    Ok(real)
}

fn describe(t: FileType) -> &'static str {
    flowstate_api::checkpoint::file_type_name(t)
}

fn not_regular(path: &Path, t: FileType) -> Error {
    Error::invalid(format!("{} is {}, not a regular file", path.display(), describe(t)))
}

/// Opens `path` for reading, refusing anything but a regular file before
/// a byte is read. The open does not block (`O_NONBLOCK`: a FIFO opens at
/// once), takes no controlling terminal and does not follow a symlink in
/// the last component; the type is then checked on the opened handle, so
/// nothing can be swapped in between. Returns the file and its length.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64)> {
    flowstate_api::runtime::check_blocking("opening a file");
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) => {
            // Sockets cannot be opened, and a symlink fails with O_NOFOLLOW:
            // say what is there rather than the bare OS error.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.is_file() {
                    return Err(not_regular(path, meta.file_type()));
                }
            }
            return Err(Error::io(path.display(), e));
        }
    };
    let meta = file.metadata().map_err(|e| Error::io(path.display(), e))?;
    if !meta.is_file() {
        return Err(not_regular(path, meta.file_type()));
    }
    Ok((file, meta.len()))
}

/// Reads the bytes of `range` of the regular file at `path`: fewer if the
/// file ends first, never more than the range.
pub(crate) fn read_range(path: &Path, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
    flowstate_api::runtime::check_blocking("reading a file");
    use std::io::{Seek, SeekFrom};
    let (mut file, len) = open_regular(path)?;
    let want = range.end.saturating_sub(range.start);
    let capacity = usize::try_from(want.min(len.saturating_sub(range.start))).unwrap_or(0);
    let mut data = Vec::with_capacity(capacity);
    if want == 0 {
        return Ok(data);
    }
    file.seek(SeekFrom::Start(range.start))
        .map_err(|e| Error::io(path.display(), e))?;
    file.take(want)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path.display(), e))?;
    Ok(data)
}
