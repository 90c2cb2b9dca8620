//! Checkpoint metadata: the `_metadata` file that makes a checkpoint exist.
//!
//! Written last, it lists every operator's state handles. Its byte layout is
//! in `docs/format.md`: the common envelope (magic `FSMD`, version,
//! checksum) around hand-encoded fields, so every count and length is
//! checked against the bytes present.
//!
//! Version 2 adds each operator's operator-state handles after its keyed
//! handles; version 1 files (without them) are still read.

use bytes::Bytes;

use std::collections::BTreeSet;

use crate::checkpoint::handle::{KeyedStateHandle, StreamStateHandle};
use crate::checkpoint::operator_handle::OperatorStateHandle;
use crate::error::{Error, Result};
use crate::format::codec::{decode_envelope, encode_envelope, put_str, put_varint, Reader};

/// First four bytes of a `_metadata` file.
pub const METADATA_MAGIC: [u8; 4] = *b"FSMD";
/// The metadata format version written: 2 (operator state). Version 1 is
/// still read.
pub const METADATA_VERSION: u16 = 2;

/// What a completed checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointKind {
    /// A periodic checkpoint, owned by the job.
    Checkpoint,
    /// A savepoint in the canonical format: self-contained and owned by the user.
    Savepoint,
}

/// The state of one operator: keyed and operator (non-keyed) state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorState {
    /// The operator's id, stable across restarts.
    pub operator_id: String,
    /// Parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// Max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// One handle per subtask that had state.
    pub keyed: Vec<KeyedStateHandle>,
    /// One operator-state handle per subtask that had operator state, each
    /// naming its subtask.
    pub operator_state: Vec<OperatorStateHandle>,
}

impl OperatorState {
    /// The keyed state of operator `operator_id`.
    pub fn new(operator_id: &str, parallelism: u32, max_parallelism: u32, keyed: Vec<KeyedStateHandle>) -> Self {
        OperatorState {
            operator_id: operator_id.to_string(),
            parallelism,
            max_parallelism,
            keyed,
            operator_state: Vec::new(),
        }
    }

    /// Sets the operator (non-keyed) state handles, one per subtask that had any.
    pub fn with_operator_state(mut self, operator_state: Vec<OperatorStateHandle>) -> Self {
        self.operator_state = operator_state;
        self
    }

    /// Every stream the operator's keyed and operator-state handles reference.
    pub fn streams(&self) -> impl Iterator<Item = &StreamStateHandle> {
        self.keyed
            .iter()
            .flat_map(KeyedStateHandle::streams)
            .chain(self.operator_state.iter().map(|h| &h.stream))
    }
}

/// The content of `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointMetadata {
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub kind: CheckpointKind,
    /// When it was triggered, in milliseconds of the job's clock.
    pub timestamp_millis: u64,
    /// The operators' states.
    pub operators: Vec<OperatorState>,
}

impl CheckpointMetadata {
    /// An empty checkpoint of `kind`.
    pub fn new(checkpoint_id: u64, kind: CheckpointKind, timestamp_millis: u64) -> Self {
        CheckpointMetadata {
            checkpoint_id,
            kind,
            timestamp_millis,
            operators: Vec::new(),
        }
    }

    /// Adds an operator's state.
    pub fn with_operator(mut self, operator: OperatorState) -> Self {
        self.operators.push(operator);
        self
    }

    /// The state of operator `id`, if present.
    pub fn operator(&self, id: &str) -> Option<&OperatorState> {
        self.operators.iter().find(|o| o.operator_id == id)
    }

    /// Total size of all referenced state, keyed and operator state.
    pub fn state_size(&self) -> u64 {
        self.operators
            .iter()
            .flat_map(OperatorState::streams)
            .map(StreamStateHandle::size)
            .sum()
    }

    /// The paths of every file the checkpoint's handles reference (relative
    /// to the checkpoint root), without duplicates.
    pub fn file_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .operators
            .iter()
            .flat_map(OperatorState::streams)
            .filter_map(StreamStateHandle::file_path)
            .map(str::to_string)
            .collect();
        paths.sort_unstable();
        paths.dedup();
        paths
    }

    /// Encodes the metadata file.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        put_varint(&mut p, self.checkpoint_id);
        p.push(match self.kind {
            CheckpointKind::Checkpoint => 0,
            CheckpointKind::Savepoint => 1,
        });
        put_varint(&mut p, self.timestamp_millis);
        put_varint(&mut p, self.operators.len() as u64);
        for op in &self.operators {
            put_str(&mut p, &op.operator_id);
            put_varint(&mut p, u64::from(op.parallelism));
            put_varint(&mut p, u64::from(op.max_parallelism));
            put_varint(&mut p, op.keyed.len() as u64);
            for h in &op.keyed {
                h.encode(&mut p);
            }
            put_varint(&mut p, op.operator_state.len() as u64);
            for h in &op.operator_state {
                h.encode(&mut p);
            }
        }
        encode_envelope(METADATA_MAGIC, METADATA_VERSION, 0, &p)
    }

    /// Decodes a metadata file; `name` (its path or pointer) is in every error.
    pub fn decode(data: &Bytes, name: &str) -> Result<Self> {
        Self::decode_inner(data).map_err(|e| e.context(format!("checkpoint metadata {name}")))
    }

    fn decode_inner(data: &Bytes) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::corrupted("file is empty"));
        }
        let env = decode_envelope(data, METADATA_MAGIC, "flowstate checkpoint metadata")?;
        if !(1..=METADATA_VERSION).contains(&env.version) || env.flags != 0 {
            return Err(Error::unsupported(format!(
                "metadata format version {} flags {:#x}; this build reads versions 1 to {METADATA_VERSION}",
                env.version, env.flags
            )));
        }
        if env.len != data.len() {
            return Err(Error::corrupted(format!(
                "{} bytes after the metadata",
                data.len() - env.len
            )));
        }
        let payload = data.slice(16..env.len);
        let mut r = Reader::new(&payload);
        let checkpoint_id = r.varint("checkpoint id")?;
        let kind = match r.u8("checkpoint kind")? {
            0 => CheckpointKind::Checkpoint,
            1 => CheckpointKind::Savepoint,
            t => return Err(Error::corrupted(format!("unknown checkpoint kind {t}"))),
        };
        let timestamp_millis = r.varint("timestamp")?;
        let n = r.count(4, "operator count")?;
        let mut operators = Vec::with_capacity(n);
        for _ in 0..n {
            let operator_id = r.str("operator id")?.to_string();
            let parallelism = r.varint_u32("parallelism")?;
            let max_parallelism = r.varint_u32("max parallelism")?;
            let k = r.count(4, "keyed handle count")?;
            let mut keyed = Vec::with_capacity(k);
            for _ in 0..k {
                keyed.push(KeyedStateHandle::decode(&mut r, &payload)?);
            }
            crate::checkpoint::handle::check_restore_handles(&keyed, max_parallelism)
                .map_err(|e| Error::corrupted(format!("operator {operator_id:?}: {}", e.message())))?;
            let operator_state = if env.version >= 2 {
                decode_operator_state(&mut r, &payload, parallelism)
                    .map_err(|e| e.context(format!("operator {operator_id:?}")))?
            } else {
                Vec::new()
            };
            operators.push(OperatorState {
                operator_id,
                parallelism,
                max_parallelism,
                keyed,
                operator_state,
            });
        }
        r.finish("checkpoint metadata")?;
        Ok(CheckpointMetadata {
            checkpoint_id,
            kind,
            timestamp_millis,
            operators,
        })
    }
}

/// The operator-state handles of an operator of `parallelism`: each of a
/// distinct subtask below it.
fn decode_operator_state(r: &mut Reader<'_>, payload: &Bytes, parallelism: u32) -> Result<Vec<OperatorStateHandle>> {
    // subtask (1) + stream tag (1) + state count (1)
    let n = r.count(3, "operator-state handle count")?;
    let mut handles = Vec::with_capacity(n);
    let mut subtasks = BTreeSet::new();
    for _ in 0..n {
        let h = OperatorStateHandle::decode(r, payload)?;
        if h.subtask_index >= parallelism {
            return Err(Error::corrupted(format!(
                "operator-state handle of subtask {} at parallelism {parallelism}",
                h.subtask_index
            )));
        }
        if !subtasks.insert(h.subtask_index) {
            return Err(Error::corrupted(format!(
                "two operator-state handles of subtask {}",
                h.subtask_index
            )));
        }
        handles.push(h);
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::operator::{DistributionMode, OperatorStateBlock};
    use crate::serializer::SerializerId;

    fn op_handle(subtask_index: u32, path: &str) -> OperatorStateHandle {
        OperatorStateHandle {
            subtask_index,
            stream: StreamStateHandle::File {
                path: path.into(),
                size: 50,
            },
            states: vec![OperatorStateBlock {
                name: "offsets".into(),
                mode: DistributionMode::Union,
                value_serializer: SerializerId::new("bincode2:u64", 1),
                key_serializer: None,
                offset: 0,
                length: 50,
                entries: 10,
                crc32c: 7,
            }],
        }
    }

    fn sample() -> CheckpointMetadata {
        CheckpointMetadata::new(4, CheckpointKind::Checkpoint, 99).with_operator(
            OperatorState::new("op", 3, 128, Vec::new())
                .with_operator_state(vec![op_handle(2, "chk-4/b"), op_handle(0, "chk-4/a")]),
        )
    }

    #[test]
    fn operator_state_round_trips_and_is_referenced() {
        let m = sample();
        let bytes = Bytes::from(m.encode());
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
        assert_eq!(CheckpointMetadata::decode(&bytes, "m").unwrap(), m);
        assert_eq!(m.file_paths(), ["chk-4/a", "chk-4/b"]);
        assert_eq!(m.state_size(), 100);
    }

    #[test]
    fn version_1_is_read_and_later_versions_are_not() {
        let mut p = Vec::new();
        put_varint(&mut p, 4);
        p.push(0);
        put_varint(&mut p, 99);
        put_varint(&mut p, 1);
        put_str(&mut p, "op");
        put_varint(&mut p, 3);
        put_varint(&mut p, 128);
        put_varint(&mut p, 0);
        let v1 = Bytes::from(encode_envelope(METADATA_MAGIC, 1, 0, &p));
        let m = CheckpointMetadata::decode(&v1, "v1").unwrap();
        assert_eq!(m.operators[0], OperatorState::new("op", 3, 128, Vec::new()));
        // Version 2 needs the operator-state count.
        let short = Bytes::from(encode_envelope(METADATA_MAGIC, 2, 0, &p));
        let e = CheckpointMetadata::decode(&short, "v2").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
        p.push(0);
        let v3 = Bytes::from(encode_envelope(METADATA_MAGIC, 3, 0, &p));
        let e = CheckpointMetadata::decode(&v3, "v3").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    }

    #[test]
    fn bad_operator_state_subtasks_are_corrupted() {
        for handles in [
            vec![op_handle(3, "chk-4/a")],
            vec![op_handle(1, "chk-4/a"), op_handle(1, "chk-4/b")],
        ] {
            let mut m = sample();
            m.operators[0].operator_state = handles;
            let e = CheckpointMetadata::decode(&Bytes::from(m.encode()), "m").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
            assert!(e.message().contains("\"op\"") && e.message().contains("subtask"), "{e}");
        }
    }

    #[test]
    fn truncated_metadata_is_refused() {
        let bytes = sample().encode();
        // Every shorter payload, in a valid envelope: never a panic, always an error.
        let payload = &bytes[16..];
        for len in 0..payload.len() {
            let cut = Bytes::from(encode_envelope(METADATA_MAGIC, METADATA_VERSION, 0, &payload[..len]));
            let e = CheckpointMetadata::decode(&cut, "m").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupted, "{len}: {e}");
        }
    }
}
