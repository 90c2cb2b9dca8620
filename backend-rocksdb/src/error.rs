//! RocksDB errors as flowstate errors: the kind says what went wrong and
//! whether retrying can help, the message names what was being done, and
//! the RocksDB error is kept as the source.

use std::fmt::{self, Display};

use flowstate_api::{Error, ErrorKind};

/// A flowstate error for RocksDB error `e`, which happened while doing `what`
/// (e.g. `reading state "count"`, `opening /data/db`). Its source is a
/// [`RocksDbStatus`]: the RocksDB error and the file it names, if any.
pub(crate) fn from_rocksdb(what: impl Display, e: rocksdb::Error) -> Error {
    let kind = classify(e.kind(), e.as_ref());
    let message = format!("RocksDB: {what}: {e}");
    Error::new(kind, message).with_source(RocksDbStatus::new(e))
}

/// A RocksDB error with the file its status names (e.g. the SST file a
/// checksum mismatch was found in), read once where the error is made.
#[derive(Debug)]
pub(crate) struct RocksDbStatus {
    /// The file named, as RocksDB wrote its path.
    pub(crate) file: Option<String>,
    pub(crate) error: rocksdb::Error,
}

impl RocksDbStatus {
    fn new(error: rocksdb::Error) -> Self {
        RocksDbStatus {
            file: status_file(error.as_ref()).map(str::to_owned),
            error,
        }
    }
}

impl Display for RocksDbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RocksDbStatus {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The file a RocksDB status message names: its last word holding a path
/// separator (RocksDB ends messages about a file with `in <path>` or
/// `: <path>`, optionally followed by an offset and size).
fn status_file(message: &str) -> Option<&str> {
    message
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_end_matches(':'))
        .rfind(|w| w.contains('/'))
}

/// The file named by the RocksDB status behind `e`, if `e` came from
/// RocksDB and its status names one.
pub(crate) fn rocksdb_file(e: &Error) -> Option<&str> {
    std::error::Error::source(e)?
        .downcast_ref::<RocksDbStatus>()?
        .file
        .as_deref()
}

/// The error of a snapshot step that finds the backend closed.
pub(crate) fn closed(id: u64) -> Error {
    Error::new(
        ErrorKind::Closed,
        format!("checkpoint {id}: the RocksDB backend was closed"),
    )
}

/// The flowstate kind of a RocksDB error of `kind` with `message`.
///
/// Only failures that may go away by themselves are
/// [`Unavailable`](ErrorKind::Unavailable): a busy or timed-out operation,
/// and I/O errors other than a full disk, a refused permission or a bad
/// path.
pub(crate) fn classify(kind: rocksdb::ErrorKind, message: &str) -> ErrorKind {
    use rocksdb::ErrorKind as R;
    match kind {
        R::NotFound => ErrorKind::NotFound,
        R::Corruption => ErrorKind::Corrupted,
        R::InvalidArgument => ErrorKind::Invalid,
        R::NotSupported => ErrorKind::Unsupported,
        R::IOError => io_kind(message),
        R::ShutdownInProgress => ErrorKind::Closed,
        R::Busy | R::TimedOut | R::TryAgain | R::Incomplete => ErrorKind::Unavailable,
        // Errors of the Rust binding itself carry no RocksDB status.
        R::Unknown if message.starts_with("Failed to create RocksDB directory") => io_kind(message),
        R::Unknown
            if message.contains("CString")
                || message.contains("NUL")
                || message.starts_with("Invalid column family")
                || message.starts_with("Invalid option") =>
        {
            ErrorKind::Invalid
        }
        R::MergeInProgress | R::Aborted | R::Expired | R::CompactionTooLarge | R::ColumnFamilyDropped | R::Unknown => {
            ErrorKind::Internal
        }
    }
}

/// The kind of an I/O error, from the operating system's description in
/// its message.
fn io_kind(message: &str) -> ErrorKind {
    let has = |needles: &[&str]| needles.iter().any(|n| message.contains(n));
    if has(&["No space left", "Disk quota exceeded", "Too many open files"]) {
        ErrorKind::LimitExceeded
    } else if has(&[
        "Permission denied",
        "Operation not permitted",
        "Read-only file system",
        "Not a directory",
        "Is a directory",
        "File name too long",
    ]) {
        ErrorKind::Invalid
    } else if has(&["No such file or directory"]) {
        ErrorKind::NotFound
    } else {
        ErrorKind::Unavailable
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rocksdb::{Options, DB};

    #[test]
    fn every_rocksdb_kind_is_mapped() {
        use rocksdb::ErrorKind as R;
        let cases = [
            (R::NotFound, "NotFound: ", ErrorKind::NotFound),
            (
                R::Corruption,
                "Corruption: block checksum mismatch",
                ErrorKind::Corrupted,
            ),
            (R::NotSupported, "Not implemented: ", ErrorKind::Unsupported),
            (
                R::InvalidArgument,
                "Invalid argument: Column family already exists",
                ErrorKind::Invalid,
            ),
            (
                R::IOError,
                "IO error: While fsync: a file: Input/output error",
                ErrorKind::Unavailable,
            ),
            (R::MergeInProgress, "Merge in progress: ", ErrorKind::Internal),
            (R::Incomplete, "Result incomplete: ", ErrorKind::Unavailable),
            (R::ShutdownInProgress, "Shutdown in progress: ", ErrorKind::Closed),
            (R::TimedOut, "Operation timed out: ", ErrorKind::Unavailable),
            (R::Aborted, "Operation aborted: ", ErrorKind::Internal),
            (R::Busy, "Resource busy: ", ErrorKind::Unavailable),
            (R::Expired, "Operation expired: ", ErrorKind::Internal),
            (R::TryAgain, "Operation failed. Try again.: ", ErrorKind::Unavailable),
            (R::CompactionTooLarge, "Compaction too large: ", ErrorKind::Internal),
            (R::ColumnFamilyDropped, "Column family dropped: ", ErrorKind::Internal),
            (R::Unknown, "Could not initialize database.", ErrorKind::Internal),
        ];
        for (kind, message, want) in cases {
            assert_eq!(classify(kind.clone(), message), want, "{kind:?}: {message}");
        }
    }

    #[test]
    fn io_errors_are_retryable_only_when_transient() {
        let io = |m: &str| classify(rocksdb::ErrorKind::IOError, m);
        assert_eq!(
            io("IO error: No space left on device: While appending to file: /d/000012.sst"),
            ErrorKind::LimitExceeded
        );
        assert_eq!(
            io("IO error: While open a file for appending: /d/000012.sst: Permission denied"),
            ErrorKind::Invalid
        );
        assert_eq!(
            io("IO error: While mkdir if missing: /d: Read-only file system"),
            ErrorKind::Invalid
        );
        assert_eq!(
            io(
                "IO error: No such file or directory: While opening a file for sequentially reading: /d/CURRENT: \
                No such file or directory"
            ),
            ErrorKind::NotFound
        );
        assert_eq!(
            io("IO error: While lock file: /d/LOCK: Resource temporarily unavailable"),
            ErrorKind::Unavailable
        );
        let dir = "Failed to create RocksDB directory: `Os { code: 28, kind: StorageFull, message: \"No space left \
                   on device\" }`.";
        assert_eq!(classify(rocksdb::ErrorKind::Unknown, dir), ErrorKind::LimitExceeded);
    }

    fn err_of<T>(r: Result<T, rocksdb::Error>, what: &str) -> Error {
        match r {
            Ok(_) => panic!("{what}: expected an error"),
            Err(e) => from_rocksdb(what, e),
        }
    }

    #[test]
    fn real_errors_keep_their_source_and_name_what_was_done() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = err_of(DB::open(&Options::default(), &missing), "opening the missing db");
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert!(
            e.message()
                .starts_with("RocksDB: opening the missing db: Invalid argument"),
            "{e}"
        );
        let source = std::error::Error::source(&e).expect("source");
        let status = source.downcast_ref::<RocksDbStatus>().expect("a RocksDB status");
        assert!(std::error::Error::source(status)
            .and_then(|s| s.downcast_ref::<rocksdb::Error>())
            .is_some());
        assert_eq!(rocksdb_file(&e), status.file.as_deref());

        let mut options = Options::default();
        options.create_if_missing(true);
        let path = dir.path().join("db");
        let mut db = DB::open(&options, &path).unwrap();
        // An invalid column family (state) name is the caller's error.
        let e = err_of(db.create_cf("a\0b", &Options::default()), "creating state \"a\\0b\"");
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        let e = err_of(
            db.create_cf("default", &Options::default()),
            "creating state \"default\"",
        );
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        // The database is locked by `db`: another process may release it.
        let e = err_of(DB::open(&options, &path), "opening it twice");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        drop(db);

        // A path under a regular file.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = err_of(DB::open(&options, file.join("db")), "opening under a file");
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");

        // Damaged metadata.
        std::fs::write(path.join("CURRENT"), b"garbage").unwrap();
        let e = err_of(DB::open(&options, &path), "opening a damaged db");
        assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
    }

    #[test]
    fn the_file_a_status_names_is_kept_as_data() {
        let cases = [
            (
                "Corruption: block checksum mismatch: stored = 1, computed = 2, type = 1  in \
                 /w/db/000012.sst offset 0 size 4096",
                Some("/w/db/000012.sst"),
            ),
            (
                "Corruption: Bad table magic number: expected 1, found 2 in rel/db/000009.sst",
                Some("rel/db/000009.sst"),
            ),
            (
                "IO error: While open a file for random read: /w/db/000007.sst: No such file or directory",
                Some("/w/db/000007.sst"),
            ),
            ("Corruption: checksum mismatch", None),
            ("", None),
        ];
        for (message, want) in cases {
            assert_eq!(status_file(message), want, "{message}");
        }
        // An error that did not come from RocksDB names no file.
        assert_eq!(rocksdb_file(&Error::corrupted("in /w/db/000012.sst")), None);
    }
}
