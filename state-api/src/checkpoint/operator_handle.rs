//! The handle of one subtask's operator state snapshot: one stream holding
//! one contiguous block per state, and per state its name, mode,
//! serializers, block position, entry count and checksum.
//!
//! The metadata holds O(1) per state per subtask, never one offset per
//! entry, so union state with many entries does not blow up the checkpoint
//! metadata (Flink's FLINK-10122 / FLINK-21436): a restored subtask is
//! given references to whole blocks.

use bytes::Bytes;

use crate::checkpoint::StreamStateHandle;
use crate::descriptor::validate_state_name;
use crate::error::{Error, Result};
use crate::format::codec::{put_str, put_varint, Reader};
use crate::serializer::SerializerId;

/// How the entries of an operator state go to subtasks on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DistributionMode {
    /// List state: entries are split over the new subtasks (Flink's
    /// `SPLIT_DISTRIBUTE`).
    Split,
    /// Union list state: every subtask gets every entry.
    Union,
    /// Broadcast state: every subtask holds the same copy.
    Broadcast,
}

impl DistributionMode {
    /// The mode's name, as errors and tools print it.
    pub fn name(self) -> &'static str {
        match self {
            DistributionMode::Split => "split",
            DistributionMode::Union => "union",
            DistributionMode::Broadcast => "broadcast",
        }
    }
}

impl DistributionMode {
    /// The mode's tag in the metadata.
    pub(crate) fn tag(self) -> u8 {
        match self {
            DistributionMode::Split => 0,
            DistributionMode::Union => 1,
            DistributionMode::Broadcast => 2,
        }
    }

    fn from_tag(tag: u8) -> Result<Self> {
        match tag {
            0 => Ok(DistributionMode::Split),
            1 => Ok(DistributionMode::Union),
            2 => Ok(DistributionMode::Broadcast),
            t => Err(Error::corrupted(format!(
                "unknown operator state distribution mode {t}"
            ))),
        }
    }

    /// The fewest bytes one entry of a state of this mode takes in its
    /// block: a list element is at least its length byte, a broadcast entry
    /// at least its two length bytes.
    pub(crate) fn min_entry_len(self) -> u64 {
        match self {
            DistributionMode::Split | DistributionMode::Union => 1,
            DistributionMode::Broadcast => 2,
        }
    }
}

/// One state's block in an [`OperatorStateHandle`]'s stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorStateBlock {
    /// The state's name.
    pub name: String,
    /// How its entries are distributed on restore.
    pub mode: DistributionMode,
    /// Serializer of its list elements or broadcast map values.
    pub value_serializer: SerializerId,
    /// Serializer of its broadcast map keys; `None` for list state.
    pub key_serializer: Option<SerializerId>,
    /// Offset of the block in the stream.
    pub offset: u64,
    /// Length of the block in bytes.
    pub length: u64,
    /// Number of entries (list elements or map entries) in the block.
    pub entries: u64,
    /// CRC-32C of the block's bytes.
    pub crc32c: u32,
}

impl OperatorStateBlock {
    /// The block's byte range in the stream.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.length
    }
}

/// The operator state one subtask snapshotted: the stream written and the
/// block of each state in it, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorStateHandle {
    /// The subtask that wrote it.
    pub subtask_index: u32,
    /// The bytes: each state's block, in name order.
    pub stream: StreamStateHandle,
    /// Each state's block, in name order (states without entries included,
    /// with empty blocks, so their mode survives a restore).
    pub states: Vec<OperatorStateBlock>,
}

impl OperatorStateHandle {
    /// The handle in the encoding `_metadata` files use (docs/format.md):
    /// what a subtask sends to the coordinator of a checkpoint.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a handle written by [`to_bytes`](Self::to_bytes); `source`
    /// names the bytes in errors. Fails with `Corrupted` unless `bytes`
    /// hold exactly one valid handle.
    pub fn from_bytes(bytes: &Bytes, source: &str) -> Result<Self> {
        crate::checkpoint::handle::decode_exactly(bytes, source, "operator state handle", Self::decode)
    }

    /// True when the handle holds no state at all.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.stream == StreamStateHandle::Empty
    }

    /// Size of the stream, in bytes.
    pub fn state_size(&self) -> u64 {
        self.stream.size()
    }

    /// The block of state `name`, if the handle has one.
    pub fn state(&self, name: &str) -> Option<&OperatorStateBlock> {
        self.states
            .binary_search_by(|b| b.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.states[i])
    }

    /// A name for error messages: the subtask and, for a file, its path.
    pub fn describe(&self) -> String {
        format!(
            "operator state of subtask {} ({})",
            self.subtask_index,
            self.stream.describe()
        )
    }

    /// Checks what decoding checks, for handles built in memory: names
    /// valid and strictly in order, key serializers exactly on broadcast
    /// state, blocks in order without overlap inside the stream, and entry
    /// counts the block lengths can hold. Failures are `Corrupted`.
    pub fn validate(&self) -> Result<()> {
        let size = self.stream.size();
        let mut end = 0u64;
        let mut previous: Option<&str> = None;
        for b in &self.states {
            validate_state_name(&b.name).map_err(|e| Error::corrupted(e.message().to_string()))?;
            let name = &b.name;
            if previous.is_some_and(|p| p >= name.as_str()) {
                return Err(Error::corrupted(format!(
                    "operator state {name:?} is out of name order or listed twice"
                )));
            }
            previous = Some(name);
            if b.key_serializer.is_some() != (b.mode == DistributionMode::Broadcast) {
                return Err(Error::corrupted(format!(
                    "operator state {name:?} ({}) {} a key serializer",
                    b.mode.name(),
                    if b.key_serializer.is_some() { "has" } else { "lacks" }
                )));
            }
            let block_end = b.offset.checked_add(b.length).filter(|e| *e <= size).ok_or_else(|| {
                Error::corrupted(format!(
                    "operator state {name:?}: block at {} of {} bytes lies outside the {size}-byte stream",
                    b.offset, b.length
                ))
            })?;
            if b.offset < end {
                return Err(Error::corrupted(format!(
                    "operator state {name:?}: block at {} overlaps the previous block ending at {end}",
                    b.offset
                )));
            }
            end = block_end;
            if b.entries > b.length / b.mode.min_entry_len() {
                return Err(Error::corrupted(format!(
                    "operator state {name:?}: {} entries cannot fit in a block of {} bytes",
                    b.entries, b.length
                )));
            }
        }
        Ok(())
    }

    /// Appends the handle's encoding (see `docs/format.md`).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(self.subtask_index));
        self.stream.encode(out);
        put_varint(out, self.states.len() as u64);
        for b in &self.states {
            put_str(out, &b.name);
            out.push(b.mode.tag());
            put_serializer(out, &b.value_serializer);
            if let Some(k) = &b.key_serializer {
                put_serializer(out, k);
            }
            put_varint(out, b.offset);
            put_varint(out, b.length);
            put_varint(out, b.entries);
            out.extend_from_slice(&b.crc32c.to_le_bytes());
        }
    }

    /// Decodes a handle; inline streams are slices of `source`, which `r` reads.
    pub(crate) fn decode(r: &mut Reader<'_>, source: &Bytes) -> Result<Self> {
        let subtask_index = r.varint_u32("operator state subtask index")?;
        let stream = StreamStateHandle::decode(r, source).map_err(|e| Error::corrupted(e.message().to_string()))?;
        // name (2) + mode (1) + serializer (2) + offset, length, entries (3) + crc (4)
        let n = r.count(12, "operator state count")?;
        let mut states = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str("operator state name")?.to_string();
            let mode = DistributionMode::from_tag(r.u8("operator state mode")?)
                .map_err(|e| e.context(format!("operator state {name:?}")))?;
            let value_serializer = get_serializer(r, "operator state value serializer")?;
            let key_serializer = match mode {
                DistributionMode::Broadcast => Some(get_serializer(r, "broadcast state key serializer")?),
                _ => None,
            };
            let offset = r.varint("operator state block offset")?;
            let length = r.varint("operator state block length")?;
            let entries = r.varint("operator state entry count")?;
            let crc32c = r.u32_le("operator state block checksum")?;
            states.push(OperatorStateBlock {
                name,
                mode,
                value_serializer,
                key_serializer,
                offset,
                length,
                entries,
                crc32c,
            });
        }
        let handle = OperatorStateHandle {
            subtask_index,
            stream,
            states,
        };
        handle.validate()?;
        Ok(handle)
    }
}

fn put_serializer(out: &mut Vec<u8>, id: &SerializerId) {
    put_str(out, &id.name);
    put_varint(out, u64::from(id.version));
}

fn get_serializer(r: &mut Reader<'_>, what: &str) -> Result<SerializerId> {
    let name = r.str(what)?.to_string();
    let version = r.varint_u32(what)?;
    Ok(SerializerId::new(name, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn block(name: &str, mode: DistributionMode, offset: u64, length: u64, entries: u64) -> OperatorStateBlock {
        OperatorStateBlock {
            name: name.into(),
            mode,
            value_serializer: SerializerId::new("raw-bytes", 1),
            key_serializer: (mode == DistributionMode::Broadcast).then(|| SerializerId::new("raw-bytes", 1)),
            offset,
            length,
            entries,
            crc32c: 0x0102_0304,
        }
    }

    fn sample() -> OperatorStateHandle {
        OperatorStateHandle {
            subtask_index: 3,
            stream: StreamStateHandle::File {
                path: "chk-1/x".into(),
                size: 100,
            },
            states: vec![
                block("a", DistributionMode::Broadcast, 0, 40, 5),
                block("b", DistributionMode::Split, 40, 0, 0),
                block("c", DistributionMode::Union, 40, 60, 60),
            ],
        }
    }

    fn encoded(h: &OperatorStateHandle) -> Bytes {
        let mut b = Vec::new();
        h.encode(&mut b);
        Bytes::from(b)
    }

    fn decode(b: &Bytes) -> Result<OperatorStateHandle> {
        let mut r = Reader::new(b);
        let h = OperatorStateHandle::decode(&mut r, b)?;
        r.finish("handle")?;
        Ok(h)
    }

    #[test]
    fn handles_round_trip() {
        let h = sample();
        assert_eq!(decode(&encoded(&h)).unwrap(), h);
        assert_eq!(h.state("c").unwrap().range(), 40..100);
        assert!(h.state("d").is_none());
        let inline = OperatorStateHandle {
            subtask_index: 0,
            stream: StreamStateHandle::Inline(Bytes::from_static(b"\x01a")),
            states: vec![block("l", DistributionMode::Split, 0, 2, 1)],
        };
        assert_eq!(decode(&encoded(&inline)).unwrap(), inline);
    }

    #[test]
    fn every_truncation_is_corrupted() {
        let b = encoded(&sample());
        for len in 0..b.len() {
            let err = decode(&b.slice(..len)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupted, "{len}: {err}");
        }
    }

    #[test]
    fn hostile_handles_are_corrupted() {
        let bad = |f: &dyn Fn(&mut OperatorStateHandle)| {
            let mut h = sample();
            f(&mut h);
            let err = decode(&encoded(&h)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
            err
        };
        bad(&|h| h.states[0].name = "a\0".into());
        bad(&|h| h.states[0].name = String::new());
        bad(&|h| h.states[1].name = "a".into());
        bad(&|h| h.states.swap(0, 2));
        let e = bad(&|h| h.states[2].length = 61);
        assert!(e.message().contains("\"c\""), "{e}");
        bad(&|h| h.states[2].offset = u64::MAX);
        bad(&|h| h.states[1].offset = 39);
        bad(&|h| h.states[2].entries = 61);
        bad(&|h| h.states[0].entries = 21);
        bad(&|h| h.stream = StreamStateHandle::Empty);

        // An unknown mode tag.
        let mut b = encoded(&sample()).to_vec();
        let at = b.iter().position(|&x| x == b'a').unwrap() + 1;
        assert_eq!(b[at], 2);
        b[at] = 9;
        let err = decode(&Bytes::from(b)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
        assert!(err.message().contains("mode 9"), "{err}");

        // 2^62 states claimed in a few bytes: refused before allocating.
        let mut b = Vec::new();
        put_varint(&mut b, 0);
        StreamStateHandle::Empty.encode(&mut b);
        put_varint(&mut b, 1 << 62);
        let err = decode(&Bytes::from(b)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");

        // A stream path that leaves the root.
        let mut h = sample();
        h.stream = StreamStateHandle::File {
            path: "../x".into(),
            size: 100,
        };
        let err = decode(&encoded(&h)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    }
}
