//! Local directories as object stores that read only regular files.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// `object_store`'s [`LocalFileSystem`], refusing to read anything but a
/// regular file: a FIFO (whose open would block forever), a device, a
/// socket or a symbolic link (which may lead out of the directory) where
/// an object should be fails the read with an error naming it. Writes,
/// listings and deletes are the local filesystem's own.
#[derive(Debug)]
pub struct LocalFiles {
    inner: LocalFileSystem,
}

impl LocalFiles {
    /// Objects are the files under `dir`, which must exist.
    pub fn new_with_prefix(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        Ok(LocalFiles {
            inner: LocalFileSystem::new_with_prefix(dir)?,
        })
    }

    /// Objects are absolute paths (`file://` URLs).
    pub fn new() -> Self {
        LocalFiles {
            inner: LocalFileSystem::new(),
        }
    }

    /// Refuses `location` if something other than a regular file is there;
    /// a missing one is left to the store (`NotFound`).
    fn check(&self, location: &Path) -> Result<()> {
        let path = self.inner.path_to_filesystem(location)?;
        match std::fs::symlink_metadata(&path) {
            // Not retryable: nothing but a change on disk makes it readable.
            Ok(meta) if !meta.is_file() => Err(object_store::Error::NotSupported {
                source: format!(
                    "{} is {}, not a regular file",
                    path.display(),
                    flowstate_api::checkpoint::file_type_name(meta.file_type())
                )
                .into(),
            }),
            _ => Ok(()),
        }
    }
}

impl Default for LocalFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LocalFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for LocalFiles {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(from)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// A FIFO, a symbolic link and a directory where an object should be
    /// are refused by name, at once; a regular file reads.
    #[tokio::test]
    async fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFiles::new_with_prefix(dir.path()).unwrap();
        store
            .put(&Path::from("db/a.sst"), PutPayload::from_static(b"data"))
            .await
            .unwrap();
        let fifo = dir.path().join("db/fifo.sst");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("db/link.sst")).unwrap();
        std::fs::create_dir(dir.path().join("db/dir.sst")).unwrap();
        let got = store.get(&Path::from("db/a.sst")).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"data");
        for (name, what) in [
            ("fifo.sst", "a FIFO"),
            ("link.sst", "a symbolic link"),
            ("dir.sst", "a directory"),
        ] {
            let location = Path::from(format!("db/{name}"));
            let e = store.get(&location).await.unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(name), "{name}: {e}");
            let e = store.get_range(&location, 0..1).await.unwrap_err().to_string();
            assert!(e.contains(what), "{name}: {e}");
            let e = store
                .copy(&location, &Path::from("db/copy"))
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{name}: {e}");
        }
        assert!(matches!(
            store.get(&Path::from("db/missing")).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
}
