//! The one error type of the flowstate crates.

use std::fmt;

/// What went wrong, coarsely: the part of an error a program matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A checkpoint, file, state or key that was asked for does not exist.
    NotFound,
    /// Stored bytes fail a check: bad magic, checksum, length or encoding.
    Corrupted,
    /// The caller passed something unusable: a bad argument, pointer or handle.
    Invalid,
    /// Restored state does not match what is registered now (kind, key, value
    /// or namespace serializer, TTL).
    Incompatible,
    /// The operation is not supported by this backend or storage.
    Unsupported,
    /// The target exists already (e.g. a checkpoint id written twice).
    Conflict,
    /// A configured limit was exceeded (e.g. the memory storage's maximum state size).
    LimitExceeded,
    /// A storage or service failed or could not be reached; retrying may help.
    Unavailable,
    /// The backend, storage or stream was closed or cancelled.
    Closed,
    /// A bug: an invariant of flowstate itself was broken.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Corrupted => "corrupted",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Conflict => "conflict",
            ErrorKind::LimitExceeded => "limit exceeded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Closed => "closed",
            ErrorKind::Internal => "internal error",
        };
        f.write_str(s)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of any flowstate crate: a kind, a message that names the state,
/// file or checkpoint concerned, and the underlying cause if there is one.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Prefixes the message with context, e.g. the file being read.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind or the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for [`ErrorKind::Corrupted`].
    pub fn corrupted(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupted, message)
    }

    /// Shorthand for [`ErrorKind::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Invalid, message)
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Incompatible`].
    pub fn incompatible(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Incompatible, message)
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// An I/O error on `what` (a path or name), classified by its kind.
    ///
    /// Only failures that may go away by themselves are
    /// [`Unavailable`](ErrorKind::Unavailable) (interrupted, timed out,
    /// would block, a reset connection, unknown errors). A full disk, an
    /// exceeded quota, a file too large or too many open files is
    /// [`LimitExceeded`](ErrorKind::LimitExceeded); a refused permission, a
    /// read-only filesystem or a bad path (not a directory, a directory, an
    /// invalid file name) is [`Invalid`](ErrorKind::Invalid): the configured
    /// location is unusable until someone changes it.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        // EMFILE and ENFILE have no stable `io::ErrorKind`.
        const TOO_MANY_OPEN_FILES: [i32; 2] = [24, 23];
        let kind = match err.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::AlreadyExists => ErrorKind::Conflict,
            Io::InvalidInput => ErrorKind::Invalid,
            Io::UnexpectedEof | Io::InvalidData => ErrorKind::Corrupted,
            Io::Unsupported => ErrorKind::Unsupported,
            Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge => ErrorKind::LimitExceeded,
            Io::PermissionDenied
            | Io::ReadOnlyFilesystem
            | Io::NotADirectory
            | Io::IsADirectory
            | Io::InvalidFilename => ErrorKind::Invalid,
            _ if cfg!(unix) && err.raw_os_error().is_some_and(|c| TOO_MANY_OPEN_FILES.contains(&c)) => {
                ErrorKind::LimitExceeded
            }
            _ => ErrorKind::Unavailable,
        };
        Error::new(kind, format!("{what}: {err}")).with_source(err)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            // Name the cause unless the message already carries it.
            let cause = source.to_string();
            if !self.message.contains(&cause) {
                write!(f, " ({cause})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_message_and_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = Error::new(ErrorKind::Unavailable, "writing chk-3/_metadata").with_source(io);
        assert_eq!(e.to_string(), "unavailable: writing chk-3/_metadata (denied)");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn io_errors_are_classified() {
        let e = Error::io("f", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = Error::io("f", std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert_eq!(e.kind(), ErrorKind::Corrupted);
    }

    #[test]
    fn only_transient_io_errors_are_retryable() {
        use std::io::ErrorKind as Io;
        let cases = [
            (Io::StorageFull, ErrorKind::LimitExceeded),
            (Io::QuotaExceeded, ErrorKind::LimitExceeded),
            (Io::FileTooLarge, ErrorKind::LimitExceeded),
            (Io::PermissionDenied, ErrorKind::Invalid),
            (Io::ReadOnlyFilesystem, ErrorKind::Invalid),
            (Io::NotADirectory, ErrorKind::Invalid),
            (Io::IsADirectory, ErrorKind::Invalid),
            (Io::InvalidFilename, ErrorKind::Invalid),
            (Io::Interrupted, ErrorKind::Unavailable),
            (Io::TimedOut, ErrorKind::Unavailable),
            (Io::WouldBlock, ErrorKind::Unavailable),
            (Io::ConnectionReset, ErrorKind::Unavailable),
            (Io::Other, ErrorKind::Unavailable),
        ];
        for (io, want) in cases {
            let e = Error::io("chk-3/state", std::io::Error::from(io));
            assert_eq!(e.kind(), want, "{io:?}: {e}");
            let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
            assert_eq!(
                source.map(std::io::Error::kind),
                Some(io),
                "the io error stays the source"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn os_errors_of_full_or_read_only_disks_are_not_retryable() {
        // ENOSPC, EDQUOT, EFBIG, EROFS, EACCES, EPERM, ENOTDIR, EISDIR, ENAMETOOLONG, EMFILE, ENFILE.
        let cases = [
            (28, ErrorKind::LimitExceeded),
            (122, ErrorKind::LimitExceeded),
            (27, ErrorKind::LimitExceeded),
            (30, ErrorKind::Invalid),
            (13, ErrorKind::Invalid),
            (1, ErrorKind::Invalid),
            (20, ErrorKind::Invalid),
            (21, ErrorKind::Invalid),
            (36, ErrorKind::Invalid),
            (24, ErrorKind::LimitExceeded),
            (23, ErrorKind::LimitExceeded),
            (5, ErrorKind::Unavailable),
        ];
        for (code, want) in cases {
            let e = Error::io("/ckpt/job/chk-3", std::io::Error::from_raw_os_error(code));
            assert_eq!(e.kind(), want, "os error {code}: {e}");
        }
    }

    #[test]
    fn context_prefixes_message() {
        let e = Error::corrupted("bad checksum").context("chk-1/state-0");
        assert_eq!(e.message(), "chk-1/state-0: bad checksum");
    }
}
