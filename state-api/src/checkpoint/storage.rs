//! What checkpoint storage shares with its readers: state scopes,
//! capabilities, the [`StateReader`] contract restores read through,
//! pointers and file naming. The storage itself is
//! [`CheckpointStorage`](crate::checkpoint::CheckpointStorage), the
//! checkpoint layout over a [`BlobStore`](crate::checkpoint::BlobStore).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::checkpoint::handle::StreamStateHandle;
use crate::checkpoint::metadata::CheckpointMetadata;
use crate::error::{Error, Result};

/// Who owns the files a stream writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateScope {
    /// Owned by one checkpoint (`chk-<id>/`).
    Exclusive,
    /// Shared between checkpoints (`shared/`), e.g. incremental SST files.
    Shared,
    /// Owned by the backend across checkpoints (`taskowned/`).
    TaskOwned,
}

/// What a storage can do; backends and the conformance suite read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageCapabilities {
    /// Streams of at most this many bytes are inlined into the metadata.
    pub inline_threshold: usize,
    /// Largest state a single stream may hold, if limited.
    pub max_state_size: Option<u64>,
    /// True when checkpoints survive the end of the process.
    pub durable: bool,
    /// True when shared (`StateScope::Shared`) files are supported.
    pub shared_state: bool,
}

impl StorageCapabilities {
    /// Capabilities with the given inline threshold, maximum state size,
    /// durability and shared-state support.
    pub fn new(inline_threshold: usize, max_state_size: Option<u64>, durable: bool, shared_state: bool) -> Self {
        StorageCapabilities {
            inline_threshold,
            max_state_size,
            durable,
            shared_state,
        }
    }
}

/// Reads back the state streams of a checkpoint.
#[async_trait]
pub trait StateReader: Send + Sync + fmt::Debug {
    /// All bytes of `handle`. Files whose paths leave the checkpoint root are refused.
    async fn read(&self, handle: &StreamStateHandle) -> Result<Bytes>;
    /// The given byte ranges of `handle`, in order: what a restore that
    /// owns only some key groups reads. Ranges must lie within the handle's
    /// size. The default reads the whole stream; storages read only the ranges.
    async fn read_ranges(&self, handle: &StreamStateHandle, ranges: &[std::ops::Range<u64>]) -> Result<Vec<Bytes>> {
        check_ranges(handle, ranges)?;
        let all = self.read(handle).await?;
        Ok(ranges
            .iter()
            .map(|r| all.slice(r.start as usize..r.end as usize))
            .collect())
    }
    /// The local file holding `handle`'s bytes, if the storage is a local
    /// filesystem: a restore on the same device may hard-link it instead of
    /// copying (and still verifies it). Async: finding it may touch the
    /// filesystem.
    async fn local_path(&self, handle: &StreamStateHandle) -> Option<std::path::PathBuf> {
        let _ = handle;
        None
    }
    /// Whether checkpoints taken after the restore may reference the files
    /// read here. False when the checkpoint store restored them without
    /// claim ([`RestoreMode::NoClaim`](crate::RestoreMode)): it refuses a
    /// checkpoint that shares them, so a backend's first checkpoint after
    /// such a restore writes everything anew. The store decides this, not
    /// the backend's own options.
    fn claimed(&self) -> bool {
        true
    }
}

/// The reader of a checkpoint restored without claim: reads through
/// `inner`, and says its files must not be shared.
#[derive(Debug)]
pub(crate) struct UnclaimedReader(pub(crate) Arc<dyn StateReader>);

#[async_trait]
impl StateReader for UnclaimedReader {
    async fn read(&self, handle: &StreamStateHandle) -> Result<Bytes> {
        self.0.read(handle).await
    }

    async fn read_ranges(&self, handle: &StreamStateHandle, ranges: &[std::ops::Range<u64>]) -> Result<Vec<Bytes>> {
        self.0.read_ranges(handle, ranges).await
    }

    async fn local_path(&self, handle: &StreamStateHandle) -> Option<std::path::PathBuf> {
        self.0.local_path(handle).await
    }

    fn claimed(&self) -> bool {
        false
    }
}

/// Reads inline handles only: what is needed when every stream was inlined.
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineReader;

#[async_trait]
impl StateReader for InlineReader {
    async fn read(&self, handle: &StreamStateHandle) -> Result<Bytes> {
        match handle {
            StreamStateHandle::Empty => Ok(Bytes::new()),
            StreamStateHandle::Inline(b) => Ok(b.clone()),
            StreamStateHandle::File { path, .. } => Err(Error::unsupported(format!(
                "state file {path} cannot be read here: this storage keeps only inline state"
            ))),
        }
    }
}

/// A completed checkpoint found by its pointer.
#[derive(Debug, Clone)]
pub struct ResolvedCheckpoint {
    /// The normalized pointer.
    pub pointer: String,
    /// The decoded metadata.
    pub metadata: CheckpointMetadata,
    /// Reads the checkpoint's state streams.
    pub reader: Arc<dyn StateReader>,
}

/// A file a storage holds for a job, as listed for retention and garbage collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Path relative to the job's root, with `/` separators (`chk-3/_metadata`, `shared/…`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, in milliseconds since the Unix epoch.
    pub modified_millis: u64,
}

/// Refuses ranges outside a handle's declared size.
pub(crate) fn check_ranges(handle: &StreamStateHandle, ranges: &[Range<u64>]) -> Result<()> {
    let size = handle.size();
    for r in ranges {
        if r.start > r.end || r.end > size {
            return Err(Error::invalid(format!(
                "byte range {}..{} is outside {} ({size} bytes)",
                r.start,
                r.end,
                handle.describe()
            )));
        }
    }
    Ok(())
}

/// The job-relative path of checkpoint `checkpoint_id`'s metadata file.
pub fn metadata_path(checkpoint_id: u64) -> String {
    format!("chk-{checkpoint_id}/{METADATA_FILE}")
}

/// The checkpoint id of a job-relative `chk-<n>/_metadata` path.
pub fn metadata_path_id(path: &str) -> Option<u64> {
    checkpoint_dir_id(path.strip_suffix(METADATA_FILE)?.strip_suffix('/')?)
}

/// The checkpoint id of a directory named `chk-<n>`, `n` written as this
/// project writes it (decimal, no sign, no leading zero): `chk-007` is not
/// a checkpoint directory of ours.
pub fn checkpoint_dir_id(name: &str) -> Option<u64> {
    let n = name.strip_prefix("chk-")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

/// A file name no other writer picks: process id, wall-clock nanoseconds and
/// a process-wide counter, in hex (`0000a1b2-17f3c…-2a`). Garbage collection
/// deletes only files named this way (optionally with an extension).
pub fn unique_file_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Wall time, not the job's injected clock: names must not repeat across
    // processes and restarts, which a manual or replayed clock would allow.
    let nanos = crate::ttl::SystemClock::now_nanos();
    format!("{:08x}-{:x}-{:x}", std::process::id(), nanos, n)
}

/// True for names [`unique_file_name`] makes, with an optional `.ext`
/// suffix, and for temporary metadata files (`_metadata.inprogress-<name>`).
pub fn is_own_file_name(name: &str) -> bool {
    let name = name.strip_prefix("_metadata.inprogress-").unwrap_or(name);
    let stem = match name.split_once('.') {
        Some((stem, ext)) if !ext.is_empty() && ext.bytes().all(|b| b.is_ascii_alphanumeric()) => stem,
        Some(_) => return false,
        None => name,
    };
    let parts: Vec<&str> = stem.split('-').collect();
    parts.len() == 3
        && parts[0].len() == 8
        && parts.iter().all(|p| {
            !p.is_empty() && p.len() <= 32 && p.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

/// The metadata file name inside a checkpoint directory.
pub const METADATA_FILE: &str = "_metadata";

/// A checkpoint pointer split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPointer<'a> {
    /// Everything before the checkpoint directory (no trailing `/`).
    pub parent: &'a str,
    /// The checkpoint directory's name, e.g. `chk-7` or `savepoint-ab12`.
    pub dir: &'a str,
    /// The checkpoint id, for `chk-<n>` directories.
    pub checkpoint_id: Option<u64>,
}

impl ParsedPointer<'_> {
    /// The normalized pointer: `<parent>/<dir>`.
    pub fn normalized(&self) -> String {
        if self.parent.is_empty() {
            self.dir.to_string()
        } else {
            format!("{}/{}", self.parent, self.dir)
        }
    }
}

/// Parses `…/chk-<n>/_metadata`, `…/chk-<n>`, `…/chk-<n>/` (and the same
/// with `savepoint-<name>`) into parent and checkpoint directory.
pub fn parse_pointer(pointer: &str) -> Result<ParsedPointer<'_>> {
    let p = pointer.trim();
    if p.is_empty() {
        return Err(Error::invalid("empty checkpoint pointer"));
    }
    let p = p.strip_suffix('/').unwrap_or(p);
    let p = p.strip_suffix(METADATA_FILE).unwrap_or(p);
    let p = p.strip_suffix('/').unwrap_or(p);
    let (parent, dir) = match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    };
    let checkpoint_id = match dir.strip_prefix("chk-") {
        Some(n) => Some(
            n.parse::<u64>()
                .map_err(|_| Error::invalid(format!("checkpoint pointer {pointer:?}: {dir:?} is not chk-<number>")))?,
        ),
        None if dir.starts_with("savepoint-") && dir.len() > "savepoint-".len() => None,
        None => {
            return Err(Error::invalid(format!(
                "checkpoint pointer {pointer:?} does not name a chk-<n> or savepoint-<name> directory"
            )))
        }
    };
    Ok(ParsedPointer {
        parent,
        dir,
        checkpoint_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_forms_name_the_same_checkpoint() {
        let a = parse_pointer("/ckpt/job/chk-7/_metadata").unwrap();
        let b = parse_pointer("/ckpt/job/chk-7").unwrap();
        let c = parse_pointer("/ckpt/job/chk-7/").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.checkpoint_id, Some(7));
        assert_eq!(a.normalized(), "/ckpt/job/chk-7");
        assert_eq!(
            parse_pointer("s3://b/sp/savepoint-1a2b/").unwrap().dir,
            "savepoint-1a2b"
        );
    }

    #[test]
    fn own_file_names_are_recognized() {
        let n = unique_file_name();
        assert!(is_own_file_name(&n), "{n}");
        assert!(is_own_file_name(&format!("{n}.sst")));
        assert!(is_own_file_name(&format!("_metadata.inprogress-{n}")));
        for other in [
            "_metadata",
            "MANIFEST-000001",
            "notes.txt",
            "0000abcd-1-",
            "0000abcd-1-2.",
            "0000ABCD-1-2",
            "x-1-2",
        ] {
            assert!(!is_own_file_name(other), "{other}");
        }
        assert_eq!(metadata_path_id(&metadata_path(12)), Some(12));
        assert_eq!(metadata_path_id("chk-x/_metadata"), None);
        assert_eq!(metadata_path_id("shared/_metadata"), None);
    }

    #[test]
    fn bad_pointers_are_refused() {
        for p in [
            "",
            "   ",
            "/ckpt/job",
            "/ckpt/job/chk-x",
            "/ckpt/job/chk-",
            "savepoint-",
            "/_metadata",
        ] {
            assert!(parse_pointer(p).is_err(), "{p:?}");
        }
    }
}
