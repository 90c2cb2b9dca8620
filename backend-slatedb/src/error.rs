//! SlateDB errors as flowstate errors: the kind says what went wrong and
//! whether retrying can help, the message names what was being done, and
//! the SlateDB error is kept as the source.

use std::fmt::Display;

use flowstate_api::{Error, ErrorKind};
use slatedb::{CloseReason, ErrorKind as SlateKind};

/// A flowstate error for SlateDB error `e`, which happened while doing
/// `what` (e.g. `reading state "count" of database job/slatedb/op/…`).
pub(crate) fn from_slatedb(what: impl Display, e: slatedb::Error) -> Error {
    let kind = match e.kind() {
        SlateKind::Unavailable => ErrorKind::Unavailable,
        SlateKind::Closed(CloseReason::Fenced) => ErrorKind::Conflict,
        SlateKind::Closed(_) => ErrorKind::Closed,
        SlateKind::Invalid => ErrorKind::Invalid,
        SlateKind::Data => ErrorKind::Corrupted,
        SlateKind::Transaction => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    };
    let fenced = matches!(e.kind(), SlateKind::Closed(CloseReason::Fenced));
    let message = if fenced {
        format!("SlateDB: {what}: another writer opened the database (this one is fenced): {e}")
    } else {
        format!("SlateDB: {what}: {e}")
    };
    Error::new(kind, message).with_source(e)
}

/// `map_err` helper: converts a SlateDB error, naming what `what` returns
/// (only built on failure).
pub(crate) fn slate_err<W: Display>(what: impl FnOnce() -> W) -> impl FnOnce(slatedb::Error) -> Error {
    move |e| from_slatedb(what(), e)
}
