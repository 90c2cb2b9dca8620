//! The backend's metadata stream in a checkpoint handle: the registered
//! states (a canonical snapshot header) followed by the reference to the
//! SlateDB checkpoint that holds the state (docs/format.md, "SlateDB
//! checkpoints").

use std::sync::Arc;

use flowstate_api::checkpoint::validate_relative_path;
use flowstate_api::format::canonical::SnapshotHeader;
use flowstate_api::format::codec::{decode_envelope, encode_envelope, put_str, Reader};
use flowstate_api::{Error, Result};
use object_store::ObjectStore;

use crate::error::slate_err;

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

    /// Checks that the SlateDB checkpoint is there, in the object store the
    /// database paths are relative to: the database has a manifest, and
    /// the checkpoint is among its checkpoints, pinning the manifest this
    /// reference names. `NotFound` when the database or the checkpoint is
    /// gone, `Corrupted` when it pins another manifest.
    pub async fn check(&self, store: &Arc<dyn ObjectStore>) -> Result<()> {
        let what = self.describe();
        if !crate::release::exists(store, &self.db_path)
            .await
            .map_err(|e| e.context(what.clone()))?
        {
            return Err(Error::not_found(format!(
                "{what}: the database does not exist (no manifest under {}/manifest)",
                self.db_path
            )));
        }
        let admin = crate::fail_fast::admin_builder(&self.db_path, store).build();
        let listed = admin
            .list_checkpoints(None)
            .await
            .map_err(slate_err(|| format!("{what}: listing the database's checkpoints")))?;
        match listed.iter().find(|c| c.id == self.checkpoint_uuid()) {
            None => Err(Error::not_found(format!(
                "{what}: the database has no such checkpoint (released, or the database was deleted)"
            ))),
            Some(c) if c.manifest_id != self.manifest_id => Err(Error::corrupted(format!(
                "{what}: the checkpoint pins manifest {}, the reference says {}",
                c.manifest_id, self.manifest_id
            ))),
            Some(_) => Ok(()),
        }
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

/// Reads a metadata stream (header, then reference); `source` names it
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

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_api::serializer::default_serializer;
    use flowstate_api::KeyGroupRange;

    fn sample() -> (SnapshotHeader, SlateDbCheckpointRef) {
        let header = SnapshotHeader {
            range: KeyGroupRange::new(0, 2).unwrap(),
            max_parallelism: 2,
            key_serializer: default_serializer::<u64>().id(),
            states: Vec::new(),
            compressed: false,
        };
        let reference = SlateDbCheckpointRef {
            db_path: "j/slatedb/o/d".into(),
            checkpoint: [0x11; 16],
            manifest_id: 7,
        };
        (header, reference)
    }

    /// The test vector of docs/format.md, "SlateDB checkpoints".
    #[test]
    fn the_reference_envelope_matches_the_documented_bytes() {
        let (header, reference) = sample();
        let bytes = encode_meta(&header, &reference);
        let envelope = &bytes[header.encode().len()..];
        let hex: String = envelope.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "46535344010000001f000000e7efa4ca0d6a2f736c61746564622f6f2f641111111111111111111111111111111107"
        );
        assert_eq!(decode_meta(&bytes, "t").unwrap(), (header, reference));
    }

    #[test]
    fn damaged_metadata_is_refused() {
        let (header, reference) = sample();
        let bytes = encode_meta(&header, &reference);
        let n = bytes.len();
        for (bad, kind) in [
            (bytes[..n - 1].to_vec(), flowstate_api::ErrorKind::Corrupted),
            ([&bytes[..], &[0]].concat(), flowstate_api::ErrorKind::Corrupted),
            (header.encode(), flowstate_api::ErrorKind::Corrupted),
            (b"garbage".to_vec(), flowstate_api::ErrorKind::Corrupted),
        ] {
            let e = decode_meta(&bad, "handle x").unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().contains("handle x"), "{e}");
        }
        let mut flipped = bytes.clone();
        flipped[n - 3] ^= 1;
        assert_eq!(
            decode_meta(&flipped, "h").unwrap_err().kind(),
            flowstate_api::ErrorKind::Corrupted
        );
        let escaping = SlateDbCheckpointRef {
            db_path: "../elsewhere".into(),
            ..reference
        };
        let e = decode_meta(&encode_meta(&header, &escaping), "h").unwrap_err();
        assert_eq!(e.kind(), flowstate_api::ErrorKind::Corrupted, "{e}");
    }
}
