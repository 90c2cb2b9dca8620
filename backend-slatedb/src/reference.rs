//! The backend's metadata stream in a checkpoint handle: the registered
//! states (a canonical snapshot header) followed by the reference to the
//! SlateDB checkpoint that holds the state (docs/format.md, "SlateDB
//! checkpoints").

use flowstate_api::checkpoint::validate_relative_path;
use flowstate_api::format::canonical::SnapshotHeader;
use flowstate_api::format::codec::{decode_envelope, encode_envelope, put_str, Reader};
use flowstate_api::{Error, Result};

/// Magic of the reference envelope: `FSSD`.
pub const REFERENCE_MAGIC: [u8; 4] = *b"FSSD";
/// Version of the reference envelope.
pub const REFERENCE_VERSION: u16 = 1;

/// A SlateDB checkpoint of one database: what a checkpoint of the SlateDB
/// backend references instead of files of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlateDbCheckpointRef {
    /// The database's path in the object store (relative, `/`-separated).
    pub db_path: String,
    /// The SlateDB checkpoint's id (a UUID).
    pub checkpoint: [u8; 16],
    /// The manifest the SlateDB checkpoint pins.
    pub manifest_id: u64,
}

impl SlateDbCheckpointRef {
    /// The checkpoint id as a UUID.
    pub fn checkpoint_uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.checkpoint)
    }

    /// A name for messages: `<path>#<uuid>`.
    pub fn describe(&self) -> String {
        format!("SlateDB checkpoint {}#{}", self.db_path, self.checkpoint_uuid())
    }
}

/// The metadata stream: `header` then the reference envelope.
pub(crate) fn encode_meta(header: &SnapshotHeader, reference: &SlateDbCheckpointRef) -> Vec<u8> {
    let mut out = header.encode();
    let mut payload = Vec::with_capacity(reference.db_path.len() + 32);
    put_str(&mut payload, &reference.db_path);
    payload.extend_from_slice(&reference.checkpoint);
    flowstate_api::format::codec::put_varint(&mut payload, reference.manifest_id);
    out.extend_from_slice(&encode_envelope(REFERENCE_MAGIC, REFERENCE_VERSION, 0, &payload));
    out
}

/// Reads a metadata stream written by [`encode_meta`]; `source` names it
/// in errors. Anything malformed is `Corrupted`, a later version
/// `Unsupported`.
pub fn decode_meta(data: &[u8], source: &str) -> Result<(SnapshotHeader, SlateDbCheckpointRef)> {
    let ctx = |e: Error| e.context(format!("{source}: SlateDB backend metadata"));
    let (header, len) = SnapshotHeader::decode(data).map_err(ctx)?;
    let env = decode_envelope(&data[len..], REFERENCE_MAGIC, "SlateDB checkpoint reference").map_err(ctx)?;
    if env.version != REFERENCE_VERSION || env.flags != 0 {
        return Err(ctx(Error::unsupported(format!(
            "SlateDB checkpoint reference version {} flags {:#06x}; this build reads version {REFERENCE_VERSION}",
            env.version, env.flags
        ))));
    }
    if len + env.len != data.len() {
        return Err(ctx(Error::corrupted(format!(
            "{} bytes after the SlateDB checkpoint reference",
            data.len() - len - env.len
        ))));
    }
    let mut r = Reader::new(env.payload);
    let db_path = r.str("database path").map_err(ctx)?.to_string();
    validate_relative_path(&db_path)
        .map_err(|e| ctx(Error::corrupted(format!("database path {db_path:?}: {}", e.message()))))?;
    let checkpoint = r.array::<16>("SlateDB checkpoint id").map_err(ctx)?;
    let manifest_id = r.varint("manifest id").map_err(ctx)?;
    r.finish("SlateDB checkpoint reference").map_err(ctx)?;
    Ok((
        header,
        SlateDbCheckpointRef {
            db_path,
            checkpoint,
            manifest_id,
        },
    ))
}
