//! Output streams that inline small state and spill larger state to a file.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::{CheckpointOutputStream, Error, Result, StreamStateHandle};

use crate::guard::real_dir;
use crate::{blocking, unique_name};

/// A state file being written.
struct Open {
    file: File,
    path: PathBuf,
    relative: String,
}

/// An output stream of the filesystem storage. Bytes are buffered; at most
/// the inline threshold stays in memory and is inlined on close, more goes
/// to a new file in the stream's directory. Dropping the stream before
/// [`close`](CheckpointOutputStream::close) deletes that file. The
/// directory must be a real directory inside the root, and the file is
/// created new (`O_EXCL`), so a planted symlink is never written through.
pub struct FsOutputStream {
    /// What handle paths are relative to.
    root: PathBuf,
    /// The stream's directory relative to `root` (empty for the root itself).
    relative_dir: String,
    inline_threshold: usize,
    write_buffer: usize,
    buf: Vec<u8>,
    pos: u64,
    open: Option<Open>,
    /// Where the location records the files its streams create.
    written: Written,
}

/// The root-relative paths of the files a location's streams created.
pub(crate) type Written = std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

impl FsOutputStream {
    pub(crate) fn new(
        root: PathBuf,
        relative_dir: String,
        inline_threshold: usize,
        write_buffer: usize,
        written: Written,
    ) -> Self {
        FsOutputStream {
            root,
            relative_dir,
            inline_threshold,
            write_buffer,
            buf: Vec::new(),
            pos: 0,
            open: None,
            written,
        }
    }

    fn create(root: &std::path::Path, relative_dir: &str) -> Result<Open> {
        let dir = real_dir(root, relative_dir)?;
        loop {
            let name = unique_name();
            let path = dir.join(&name);
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let relative = if relative_dir.is_empty() {
                        name
                    } else {
                        format!("{relative_dir}/{name}")
                    };
                    return Ok(Open { file, path, relative });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(path.display(), e)),
            }
        }
    }

    /// Moves the buffer into the file, creating the file if needed.
    async fn spill(&mut self) -> Result<()> {
        let open = self.open.take();
        let (root, relative_dir) = (self.root.clone(), self.relative_dir.clone());
        let written = std::sync::Arc::clone(&self.written);
        let mut buf = std::mem::take(&mut self.buf);
        let (open, mut buf) = blocking(move || {
            let mut open = match open {
                Some(o) => o,
                None => {
                    let o = Self::create(&root, &relative_dir)?;
                    written
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(o.relative.clone());
                    o
                }
            };
            if let Err(e) = open.file.write_all(&buf) {
                let _ = std::fs::remove_file(&open.path);
                return Err(Error::io(open.path.display(), e));
            }
            buf.clear();
            Ok((open, buf))
        })
        .await?;
        buf.reserve(self.write_buffer);
        self.buf = buf;
        self.open = Some(open);
        Ok(())
    }
}

impl Drop for FsOutputStream {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            drop(open.file);
            let _ = std::fs::remove_file(&open.path);
        }
    }
}

#[async_trait]
impl CheckpointOutputStream for FsOutputStream {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        self.pos += data.len() as u64;
        let limit = if self.open.is_some() {
            self.write_buffer
        } else {
            self.inline_threshold.max(self.write_buffer)
        };
        if self.buf.len() > limit {
            self.spill().await?;
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.pos
    }

    async fn close(mut self: Box<Self>) -> Result<StreamStateHandle> {
        if self.open.is_none() {
            if self.pos == 0 {
                return Ok(StreamStateHandle::Empty);
            }
            if self.buf.len() <= self.inline_threshold {
                return Ok(StreamStateHandle::Inline(Bytes::from(std::mem::take(&mut self.buf))));
            }
        }
        self.spill().await?;
        let open = self.open.take().ok_or_else(|| Error::internal("state file vanished"))?;
        let size = self.pos;
        let relative = open.relative.clone();
        blocking(move || match open.file.sync_all() {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&open.path);
                Err(Error::io(open.path.display(), e))
            }
        })
        .await?;
        Ok(StreamStateHandle::File { path: relative, size })
    }

    async fn abort(self: Box<Self>) {
        // Drop deletes the file.
    }
}
