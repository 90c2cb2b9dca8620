//! For tooling that reads or writes flowstate's files: the on-disk formats.
//!
//! Engines and storages do not need this module; backends use it to write
//! and read their full snapshots. Its items are deliberately not re-exported
//! at the crate root: use them as `flowstate_api::format::codec::...` and
//! `flowstate_api::format::canonical::...`.
//!
//! At a glance (the byte-level specification, with test vectors, is
//! `docs/format.md` in the repository):
//!
//! - Every file starts with the same envelope,
//!   `magic[4] | version u16 | flags u16 | len u32 | crc32c u32 | payload`,
//!   little-endian, the CRC-32C covering the first 8 bytes and the payload
//!   ([`codec::encode_envelope`], [`codec::decode_envelope`]). Inside,
//!   integers are LEB128 varints and byte strings are length-prefixed; the
//!   [`codec::Reader`] checks every length against the bytes present.
//! - Canonical snapshots (magic `FSKG`, [`canonical`]): a header naming the
//!   key-group range, max parallelism, key serializer and states, then one
//!   checksummed, optionally zstd-compressed frame per key group, so a
//!   restore reads only the key groups it owns. Full snapshots and
//!   savepoints of every backend use it, so any of them restores into any
//!   backend at any parallelism.
//! - Checkpoint metadata (`_metadata`, magic `FSMD`): the envelope around
//!   the operators' state handles, encoded by
//!   [`CheckpointMetadata`](crate::checkpoint::CheckpointMetadata) (magic and
//!   version: [`METADATA_MAGIC`](crate::checkpoint::METADATA_MAGIC),
//!   [`METADATA_VERSION`](crate::checkpoint::METADATA_VERSION)).
//! - Key groups: a key's key group is a MurmurHash3 of its serialized bytes
//!   ([`key_group_for_key_bytes`](crate::key_group_for_key_bytes)).
//!
//! The modules:
//!
//! - [`codec`] (`codec.rs`): varints, byte strings, the bounds-checked
//!   reader, CRC-32C and the envelope.
//! - [`canonical`] (`canonical.rs`): the canonical snapshot writer
//!   ([`canonical::write_canonical_snapshot`]) and reader
//!   ([`canonical::CanonicalSnapshot`]).
//! - [`keys`] (`keys.rs`): what the native backends' keys and values share:
//!   packed lists, escaped keys, prefix ends.

pub mod canonical;
pub mod codec;
pub mod keys;
