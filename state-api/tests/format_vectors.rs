//! The test vectors of `docs/format.md`: the bytes below are part of the
//! format and must never change for their version.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use flowstate_api::backend::{StateKind, StateMetaInfo};
use flowstate_api::checkpoint::{
    HandleFile, IncrementalStateHandle, InlineReader, KeyGroupsStateHandle, OperatorState, StateScope,
    StreamStateHandle,
};
use flowstate_api::format::canonical::{
    write_canonical_snapshot, CanonicalSnapshot, KeyGroupSource, KeyGroupWriter, Record, SnapshotHeader,
};
use flowstate_api::keygroup::murmur3_32;
use flowstate_api::operator::DistributionMode;
use flowstate_api::serializer::VoidNamespaceSerializer;
use flowstate_api::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The key group of u64 key 42 (bincode bytes `2a`) with max parallelism 128.
const KEY_42_KEY_GROUP: u32 = 28;

/// A canonical snapshot of key group `KEY_42_KEY_GROUP` only, holding one
/// value state "count" (u64, void namespace) with key 42 -> 7.
const SNAPSHOT: &str = concat!(
    "46534b47020000003a00000074b40b0e1c1d80010c62696e636f6465323a7536",
    "34010105636f756e74000e766f69642d6e616d657370616365010c62696e636f",
    "6465323a75363401000006000000227fa06a00012a000107"
);

/// `_metadata` version 1 of checkpoint 1 with operator "op" (parallelism 1,
/// max 128) whose one keyed handle inlines `SNAPSHOT`: still read.
const METADATA_V1: &str = concat!(
    "46534d44010000006a000000ec2ece4901000001026f7001800101011c1d014a",
    "015846534b47020000003a00000074b40b0e1c1d80010c62696e636f6465323a",
    "753634010105636f756e74000e766f69642d6e616d657370616365010c62696e",
    "636f6465323a75363401000006000000227fa06a00012a000107"
);

/// The same metadata as written now (version 2): version, length and
/// checksum differ, and an operator-state handle count (0) follows the
/// keyed handles.
const METADATA: &str = concat!(
    "46534d44 0200 0000 6b000000 6b263d3c ",
    "01000001026f7001800101011c1d014a",
    "015846534b47020000003a00000074b40b0e1c1d80010c62696e636f6465323a",
    "753634010105636f756e74000e766f69642d6e616d657370616365010c62696e",
    "636f6465323a75363401000006000000227fa06a00012a000107 ",
    "00",
);

async fn snapshot_bytes() -> (KeyGroupsStateHandle, Vec<u8>) {
    // Build exactly what a backend writes, through the public writer.
    struct One;
    impl KeyGroupSource for One {
        fn write_key_group(&mut self, _kg: u32, out: &mut KeyGroupWriter) -> Result<()> {
            out.value(0, &[42], &[], &[7]);
            Ok(())
        }
    }
    let header = SnapshotHeader {
        range: KeyGroupRange::new(KEY_42_KEY_GROUP, KEY_42_KEY_GROUP + 1).unwrap(),
        max_parallelism: 128,
        key_serializer: Bincode::<u64>::new().id(),
        states: vec![StateMetaInfo {
            name: "count".into(),
            kind: StateKind::Value,
            namespace_serializer: VoidNamespaceSerializer.id(),
            value_serializer: Bincode::<u64>::new().id(),
            user_key_serializer: None,
            ttl: false,
        }],
        compressed: false,
    };
    let storage = CheckpointStorage::in_memory("vectors");
    let location = storage.init_checkpoint(1).await.unwrap();
    let stream = location.create_output_stream(StateScope::Exclusive).await.unwrap();
    let written = write_canonical_snapshot(&header, One, Default::default(), stream, None)
        .await
        .unwrap();
    let StreamStateHandle::Inline(b) = &written.handle.stream else {
        panic!()
    };
    let bytes = b.to_vec();
    (written.handle, bytes)
}

#[test]
fn key_group_of_key_42() {
    let mut b = Vec::new();
    Bincode::<u64>::new().serialize(&42, &mut b).unwrap();
    assert_eq!(b, [0x2a]);
    assert_eq!(murmur3_32(&b, 0), 0x1433_6e1c);
    assert_eq!(key_group_for_key_bytes(&b, 128), KEY_42_KEY_GROUP);
}

#[tokio::test]
async fn snapshot_vector() {
    let (handle, bytes) = snapshot_bytes().await;
    assert_eq!(handle.offsets, [74]);
    assert_eq!(hex(&bytes), hex(&unhex(SNAPSHOT)));
    let snap = CanonicalSnapshot::open(Bytes::from(bytes), &handle, "vector").unwrap();
    let mut records = Vec::new();
    snap.key_group(KEY_42_KEY_GROUP)
        .unwrap()
        .for_each(|r| {
            records.push(format!("{r:?}"));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        records,
        [format!(
            "{:?}",
            Record::Value {
                state: 0,
                key: &[42],
                namespace: &[],
                value: &[7]
            }
        )]
    );
}

#[tokio::test]
async fn metadata_vector() {
    let (handle, _) = snapshot_bytes().await;
    let mut m = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0);
    m.operators.push(OperatorState::new(
        "op",
        1,
        128,
        vec![KeyedStateHandle::KeyGroups(handle)],
    ));
    let bytes = m.encode();
    assert_eq!(hex(&bytes), hex(&unhex(METADATA)));
    assert_eq!(CheckpointMetadata::decode(&Bytes::from(bytes), "vector").unwrap(), m);
    let v1 = Bytes::from(unhex(METADATA_V1));
    assert_eq!(CheckpointMetadata::decode(&v1, "vector v1").unwrap(), m);
}

/// Checkpoint 2 with one incremental handle (see docs/format.md), version 1.
const INCREMENTAL_METADATA_V1: &str = concat!(
    "46534d44 0100 0000 4f000000 1741954d ",
    "02 00 00 01 02 6f70 01 8001 01 ",
    "02 00 8001 01 62 02 ",
    "01 0a 3030303030392e737374 04030201 02 09 7368617265642f7331 ac02 ",
    "01 07 43555252454e54 ddccbbaa 01 10 4d414e49464553542d3030303030350a ",
    "00",
);

/// The same as written now (version 2).
const INCREMENTAL_METADATA: &str = concat!(
    "46534d44 0200 0000 50000000 510b63b2 ",
    "02 00 00 01 02 6f70 01 8001 01 ",
    "02 00 8001 01 62 02 ",
    "01 0a 3030303030392e737374 04030201 02 09 7368617265642f7331 ac02 ",
    "01 07 43555252454e54 ddccbbaa 01 10 4d414e49464553542d3030303030350a ",
    "00 ",
    "00",
);

#[test]
fn incremental_metadata_vector() {
    let file = |name: &str, stream: StreamStateHandle, crc32c: u32| HandleFile {
        name: name.into(),
        stream,
        crc32c,
    };
    let h = IncrementalStateHandle {
        format: Default::default(),
        range: KeyGroupRange::new(0, 128).unwrap(),
        backend_id: "b".into(),
        checkpoint_id: 2,
        shared: vec![file(
            "000009.sst",
            StreamStateHandle::File {
                path: "shared/s1".into(),
                size: 300,
            },
            0x0102_0304,
        )],
        private: vec![file(
            "CURRENT",
            StreamStateHandle::Inline(Bytes::from_static(b"MANIFEST-000005\n")),
            0xaabb_ccdd,
        )],
        meta: StreamStateHandle::Empty,
    };
    let m = CheckpointMetadata::new(2, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "op",
        1,
        128,
        vec![KeyedStateHandle::Incremental(h)],
    ));
    let bytes = m.encode();
    assert_eq!(hex(&bytes), hex(&unhex(INCREMENTAL_METADATA)));
    assert_eq!(CheckpointMetadata::decode(&Bytes::from(bytes), "vector").unwrap(), m);
    let v1 = Bytes::from(unhex(INCREMENTAL_METADATA_V1));
    assert_eq!(CheckpointMetadata::decode(&v1, "vector v1").unwrap(), m);
}

/// The operator state stream of one subtask: broadcast state "b" (raw bytes
/// `k` -> `v`), split list state "l" (`a`, `bc`) and empty union state "u".
const OPERATOR_STATE_STREAM: &str = "016b0176 0161026263";

/// `_metadata` of checkpoint 1 with operator "op" (parallelism 1, max 128),
/// no keyed state, and the operator state above inlined.
const OPERATOR_STATE_METADATA: &str = concat!(
    "46534d44 0200 0000 63000000 42f95f47 ",
    "01 00 00 01 02 6f70 01 8001 00 ",
    "01 00 01 09 016b0176 0161026263 03 ",
    "01 62 02 09 7261772d6279746573 01 09 7261772d6279746573 01 00 04 01 964fe725 ",
    "01 6c 00 09 7261772d6279746573 01 04 05 02 3edf8546 ",
    "01 75 01 09 7261772d6279746573 01 09 00 00 00000000",
);

#[tokio::test]
async fn operator_state_vector() {
    let raw = || -> SharedSerializer<Vec<u8>> { std::sync::Arc::new(RawBytes) };
    let mut store = OperatorStateStore::new(0, 1).unwrap();
    let b = store
        .broadcast_state(&MapStateDescriptor::with_serializers("b", raw(), raw()))
        .unwrap();
    let l = store
        .list_state(&ListStateDescriptor::with_serializer("l", raw()))
        .unwrap();
    store
        .union_list_state(&ListStateDescriptor::with_serializer("u", raw()))
        .unwrap();
    b.put(&mut store, b"k".to_vec(), b"v".to_vec()).unwrap();
    l.add_all(&mut store, [b"a".to_vec(), b"bc".to_vec()]).unwrap();

    let storage = CheckpointStorage::in_memory("vectors");
    let location = storage.init_checkpoint(1).await.unwrap();
    let handle = store.snapshot(1, location).unwrap().await.unwrap();
    let StreamStateHandle::Inline(stream) = &handle.stream else {
        panic!("{handle:?}")
    };
    assert_eq!(hex(stream), hex(&unhex(OPERATOR_STATE_STREAM)));
    assert_eq!(handle.state("b").unwrap().crc32c, 0x25e7_4f96);
    assert_eq!(handle.state("l").unwrap().crc32c, 0x4685_df3e);

    let m = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0)
        .with_operator(OperatorState::new("op", 1, 128, Vec::new()).with_operator_state(vec![handle]));
    let bytes = m.encode();
    assert_eq!(hex(&bytes), hex(&unhex(OPERATOR_STATE_METADATA)));
    let decoded = CheckpointMetadata::decode(&Bytes::from(bytes), "vector").unwrap();
    assert_eq!(decoded, m);

    // And back: the restored subtask holds the same entries.
    let old = &decoded.operator("op").unwrap().operator_state;
    let mut restored = OperatorStateStore::restore(0, 1, old, 1, &InlineReader).await.unwrap();
    let b = restored
        .broadcast_state(&MapStateDescriptor::with_serializers("b", raw(), raw()))
        .unwrap();
    let l = restored
        .list_state(&ListStateDescriptor::with_serializer("l", raw()))
        .unwrap();
    assert_eq!(b.entries(&restored).unwrap(), [(b"k".to_vec(), b"v".to_vec())]);
    assert_eq!(l.get(&restored).unwrap(), [b"a".to_vec(), b"bc".to_vec()]);
    assert_eq!(restored.mode("u"), Some(DistributionMode::Union));
}
