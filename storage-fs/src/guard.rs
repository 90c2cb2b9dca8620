//! Path containment and safe opening. Every read, write and delete of the
//! filesystem storage finds its target through [`confine`], and every read
//! opens it through [`open_regular`].

use std::fs::{File, FileType};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use flowstate_api::{validate_relative_path, Error, ErrorKind, Result};

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
    path.canonicalize().map_err(|e| Error::io(path.display(), e))
}

/// The one containment check: resolves the relative `path` under `root`
/// and refuses it unless the result is inside the canonical root. With
/// [`Last::Follow`] the whole path is resolved; with [`Last::Keep`] only its
/// parent directory, and the last component is appended as it is. The
/// returned path has no symlink in its directories, so using it does not
/// depend on links that were checked earlier.
pub(crate) fn confine(root: &Path, path: &str, last: Last) -> Result<PathBuf> {
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

/// Names a file type for error messages.
fn describe(t: FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "of an unknown type"
    }
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

/// Reads at most `limit + 1` bytes of `file`, enough to tell that it holds
/// more than `limit`.
fn read_bounded(file: File, path: &Path, len: u64, limit: u64) -> Result<Vec<u8>> {
    let capacity = usize::try_from(len.min(limit)).map_or(0, |n| n.saturating_add(1));
    let mut data = Vec::with_capacity(capacity);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path.display(), e))?;
    Ok(data)
}

/// Reads a state file that must hold exactly `size` bytes; never reads more
/// than `size + 1`.
pub(crate) fn read_sized(path: &Path, size: u64) -> Result<Vec<u8>> {
    let wrong = |actual: u64| {
        Error::corrupted(format!(
            "state file {} has {actual} bytes but its handle says {size}",
            path.display()
        ))
    };
    let (file, len) = open_regular(path)?;
    if len != size {
        return Err(wrong(len));
    }
    let data = read_bounded(file, path, len, size)?;
    if data.len() as u64 != size {
        // It changed since it was opened; more than `size + 1` was never read.
        return Err(wrong(data.len() as u64));
    }
    Ok(data)
}

/// Reads a whole file of at most `cap` bytes; a larger one is refused with
/// [`ErrorKind::LimitExceeded`] without reading more than `cap + 1` bytes.
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let too_large = || {
        Error::new(
            ErrorKind::LimitExceeded,
            format!("{} is larger than the limit of {cap} bytes", path.display()),
        )
    };
    let (file, len) = open_regular(path)?;
    if len > cap {
        return Err(too_large());
    }
    let data = read_bounded(file, path, len, cap)?;
    if data.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(data)
}
