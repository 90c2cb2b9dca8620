//! Bad-input contracts: every byte flip and every truncation of a snapshot
//! or of checkpoint metadata is refused as corrupted, without a panic and
//! without wrong state; hostile lengths never allocate unbounded memory.

use std::sync::Arc;

use bytes::Bytes;
use flowstate_api::backend::{StateKind, StateMetaInfo};
use flowstate_api::checkpoint::{
    InlineReader, KeyGroupsStateHandle, OperatorState, StreamStateHandle, METADATA_MAGIC, METADATA_VERSION,
};
use flowstate_api::format::canonical::SnapshotHeader;
use flowstate_api::format::codec::{crc32c, crc32c_append, put_varint};
use flowstate_api::serializer::VoidNamespaceSerializer;
use flowstate_api::*;

use crate::{full_config, snapshot_and_complete, BackendFactory, Ctx};

/// A small snapshot with every storage kind, and the bytes of its stream.
async fn small_snapshot<F: BackendFactory>(ctx: &Ctx<F>) -> (KeyGroupsStateHandle, Bytes) {
    let storage = ctx.storage.storage(&crate::job_id("corruption"));
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l")).unwrap();
    let m = b.register(MapStateDescriptor::<u64, u64>::new("m")).unwrap();
    for k in 0..3u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.append_all(&l, [k, k]).unwrap();
        b.map_put(&m, k, k).unwrap();
    }
    // Savepoints are canonical in every backend.
    let (result, pointer) = snapshot_and_complete(&mut b, &storage, 1, SnapshotOptions::savepoint()).await;
    let KeyedStateHandle::KeyGroups(handle) = result.handle else {
        panic!("a savepoint must be a canonical snapshot")
    };
    let reader = storage.resolve(&pointer).await.unwrap().reader;
    let data = reader.read(&handle.stream).await.unwrap();
    (handle, data)
}

async fn restore_inline<F: BackendFactory>(ctx: &Ctx<F>, handle: &KeyGroupsStateHandle, data: Bytes) -> Result<()> {
    let handle = KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
        range: handle.range,
        offsets: handle.offsets.clone(),
        stream: StreamStateHandle::Inline(data),
    });
    let mut b = ctx
        .backend
        .restore(full_config::<u64>(), &[handle], Arc::new(InlineReader))
        .await?;
    // Reaching here with corrupted input would be a defect; show what was restored.
    let v = b.register(ValueStateDescriptor::<u64>::new("v"))?;
    Err(Error::internal(format!(
        "restored {} entries from corrupted bytes",
        b.entry_count(&v)?
    )))
}

/// Every single-byte flip of a snapshot is refused as corrupted.
pub async fn every_byte_flip_of_a_snapshot_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let (handle, data) = small_snapshot(&ctx).await;
    // The unmodified bytes restore (the check below is not vacuous).
    let intact = KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
        stream: StreamStateHandle::Inline(data.clone()),
        ..handle.clone()
    });
    ctx.backend
        .restore(full_config::<u64>(), &[intact], Arc::new(InlineReader))
        .await
        .unwrap();
    for i in 0..data.len() {
        for mask in [0x01u8, 0xff] {
            let mut bad = data.to_vec();
            bad[i] ^= mask;
            let err = restore_inline(&ctx, &handle, Bytes::from(bad)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupted, "byte {i} ^ {mask:#x}: {err}");
        }
    }
}

/// Every truncation of a snapshot is refused as corrupted.
pub async fn every_truncation_of_a_snapshot_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let (handle, data) = small_snapshot(&ctx).await;
    for len in 0..data.len() {
        let err = restore_inline(&ctx, &handle, data.slice(..len)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "truncated to {len}: {err}");
    }
    // A file handle whose recorded size disagrees with the bytes read is refused too.
    let h = KeyGroupsStateHandle {
        stream: StreamStateHandle::File {
            path: "chk-1/x".into(),
            size: data.len() as u64 + 1,
        },
        ..handle
    };
    let err = flowstate_api::format::canonical::CanonicalSnapshot::open(data, &h, "chk-1/x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    assert!(
        err.to_string().contains("chk-1/x"),
        "the error must name the file: {err}"
    );
}

/// Every byte flip and truncation of a `_metadata` file is refused as corrupted.
pub async fn every_byte_flip_of_metadata_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let (handle, _) = small_snapshot(&ctx).await;
    let mut metadata = CheckpointMetadata::new(9, CheckpointKind::Checkpoint, 1234);
    metadata.operators.push(OperatorState::new(
        "op",
        1,
        128,
        vec![KeyedStateHandle::KeyGroups(handle)],
    ));
    // A second operator: the handles of one operator may not overlap.
    metadata.operators.push(OperatorState::new(
        "op2",
        1,
        128,
        vec![KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
            range: KeyGroupRange::new(0, 2).unwrap(),
            offsets: vec![16, 40],
            stream: StreamStateHandle::File {
                path: "chk-9/abc".into(),
                size: 99,
            },
        })],
    ));
    let bytes = metadata.encode();
    assert_eq!(
        CheckpointMetadata::decode(&Bytes::from(bytes.clone()), "m").unwrap(),
        metadata
    );
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= mask;
            let err = CheckpointMetadata::decode(&Bytes::from(bad), "chk-9/_metadata").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupted, "byte {i} ^ {mask:#x}: {err}");
            assert!(err.to_string().contains("chk-9/_metadata"), "{err}");
        }
    }
    for len in 0..bytes.len() {
        let err = CheckpointMetadata::decode(&Bytes::copy_from_slice(&bytes[..len]), "m").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "truncated to {len}: {err}");
    }
}

fn frame(kg: u32, stored: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc32c_append(crc32c(&kg.to_le_bytes()), stored).to_le_bytes());
    f.extend_from_slice(stored);
    f
}

/// A checksummed (so structurally valid) snapshot whose key group 0 holds
/// `payload`, compressed or not.
fn crafted(states: Vec<StateMetaInfo>, payload: &[u8], compressed: bool) -> (KeyGroupsStateHandle, Bytes) {
    let header = SnapshotHeader {
        range: KeyGroupRange::all(128).unwrap(),
        max_parallelism: 128,
        key_serializer: Bincode::<u64>::new().id(),
        states,
        compressed,
    };
    let mut data = header.encode();
    let mut offsets = Vec::new();
    for kg in 0..128u32 {
        offsets.push(data.len() as u64);
        let body = if kg == 0 { payload.to_vec() } else { Vec::new() };
        let stored = if compressed {
            let mut s = (body.len() as u32).to_le_bytes().to_vec();
            s.extend_from_slice(&zstd_frame(&body));
            s
        } else {
            body
        };
        data.extend_from_slice(&frame(kg, &stored));
    }
    let data = Bytes::from(data);
    let handle = KeyGroupsStateHandle {
        range: header.range,
        offsets,
        stream: StreamStateHandle::Inline(data.clone()),
    };
    (handle, data)
}

/// A raw (uncompressed-block) zstd frame holding `body`, built by hand so the
/// suite does not depend on a zstd encoder.
fn zstd_frame(body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd]; // magic
    f.push(0x00); // frame header: no content size, no checksum, window descriptor follows
    f.push(0x58); // window descriptor: 2^(11+10) bytes... large enough
                  // One last raw block: header = last(1) | type raw(0) << 1 | size << 3, 3 bytes LE.
    let h = 1u32 | ((body.len() as u32) << 3);
    f.extend_from_slice(&h.to_le_bytes()[..3]);
    f.extend_from_slice(body);
    f
}

fn meta(name: &str, kind: StateKind) -> StateMetaInfo {
    StateMetaInfo {
        name: name.into(),
        kind,
        namespace_serializer: VoidNamespaceSerializer.id(),
        value_serializer: Bincode::<u64>::new().id(),
        user_key_serializer: (kind == StateKind::Map).then(|| Bincode::<u64>::new().id()),
        ttl: false,
    }
}

/// Length prefixes and counts far larger than the data are refused without
/// allocating for them.
pub async fn hostile_lengths_do_not_allocate<F: BackendFactory>(ctx: Ctx<F>) {
    let huge = u64::MAX >> 2;
    let key0 = {
        let k = (0u64..).find(|k| crate::operator_for_key(k, 128) == 0).unwrap();
        let mut b = Vec::new();
        Serializer::serialize(&Bincode::<u64>::new(), &k, &mut b).unwrap();
        b
    };
    let mut cases: Vec<(&str, Vec<StateMetaInfo>, Vec<u8>, bool)> = Vec::new();
    // A key whose length prefix claims 2^62 bytes.
    let mut p = Vec::new();
    put_varint(&mut p, 0);
    put_varint(&mut p, huge);
    p.extend_from_slice(b"xyz");
    cases.push(("key length", vec![meta("v", StateKind::Value)], p, false));
    // A list claiming 2^62 elements.
    let mut p = Vec::new();
    put_varint(&mut p, 0);
    put_varint(&mut p, key0.len() as u64);
    p.extend_from_slice(&key0);
    put_varint(&mut p, 0);
    put_varint(&mut p, huge);
    p.push(1);
    cases.push(("list length", vec![meta("l", StateKind::List)], p, false));
    // A record naming a state that does not exist.
    let mut p = Vec::new();
    put_varint(&mut p, 7);
    cases.push(("state index", vec![meta("v", StateKind::Value)], p, false));
    // A compressed frame claiming 4 GiB of output for a few bytes.
    cases.push((
        "compressed length",
        vec![meta("v", StateKind::Value)],
        b"abc".to_vec(),
        true,
    ));
    for (what, states, payload, compressed) in cases {
        let (mut handle, data) = crafted(states, &payload, compressed);
        let data = if compressed {
            // Overwrite the declared uncompressed length of key group 0 with 4 GiB - 1.
            let mut d = data.to_vec();
            let at = handle.offsets[0] as usize + 8;
            d[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            let stored_len = u32::from_le_bytes(d[at - 8..at - 4].try_into().unwrap()) as usize;
            let crc = crc32c_append(crc32c(&0u32.to_le_bytes()), &d[at..at + stored_len]);
            d[at - 4..at].copy_from_slice(&crc.to_le_bytes());
            Bytes::from(d)
        } else {
            data
        };
        handle.stream = StreamStateHandle::Inline(data.clone());
        let err = restore_inline(&ctx, &handle, data).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{what}: {err}");
    }
    // Metadata claiming 2^62 operators.
    let mut p = Vec::new();
    put_varint(&mut p, 1);
    p.push(0);
    put_varint(&mut p, 0);
    put_varint(&mut p, huge);
    let bytes = flowstate_api::format::codec::encode_envelope(METADATA_MAGIC, METADATA_VERSION, 0, &p);
    let err = CheckpointMetadata::decode(&Bytes::from(bytes), "hostile").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
}
