//! The heap chain test vectors of docs/format.md ("Heap chains"): the bytes
//! the heap backend writes must match them exactly, and the documented
//! bytes must restore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use flowstate_api::checkpoint::{InlineReader, NativeFormat, StreamStateHandle};
use flowstate_api::*;
use flowstate_heap::{HeapBackend, HeapOptions};

/// Checkpoint 1's file: one frame of key group 28, a put of key 42 → 7.
const FILE_1: &str = "07000000 679b1f6c 00 00 01 2a 00 01 07";
/// Checkpoint 2's file: one frame of key group 28, a delete of key 42.
const FILE_2: &str = "05000000 4ae38c15 00 01 01 2a 00";
/// Checkpoint 2's chain index (after the snapshot header in its metadata).
const INDEX_2: &str = "46534843 0100 0000 0a000000 440080eb 01 02 00 00 0f 00 01 00 0d 00";

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

fn inline(s: &StreamStateHandle) -> Bytes {
    match s {
        StreamStateHandle::Inline(b) => b.clone(),
        other => panic!("not inline: {other:?}"),
    }
}

fn config() -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::<u64>::new(KeyGroupRange::new(28, 29).unwrap(), 128)
}

#[tokio::test]
async fn heap_chain_vector() {
    let storage = CheckpointStorage::in_memory("vectors");
    let mut b = HeapBackend::with_options(config(), HeapOptions::incremental()).unwrap();
    let count = b.register(ValueStateDescriptor::<u64>::new("count")).unwrap();
    b.set_current_key(&42).unwrap();
    b.update(&count, 7).unwrap();
    let location = storage.init_checkpoint(1).await.unwrap();
    b.snapshot(1, location, SnapshotOptions::checkpoint())
        .unwrap()
        .await
        .unwrap();
    b.notify_checkpoint_complete(1).unwrap();
    b.clear(&count).unwrap();
    let location = storage.init_checkpoint(2).await.unwrap();
    let result = b
        .snapshot(2, location, SnapshotOptions::checkpoint())
        .unwrap()
        .await
        .unwrap();
    let KeyedStateHandle::Incremental(h) = &result.handle else {
        panic!("not a chain: {:?}", result.handle)
    };
    assert_eq!(h.format, NativeFormat::HeapChain);
    assert_eq!(h.shared.len(), 2);
    assert!(h.private.is_empty());
    assert_eq!(hex(&inline(&h.shared[0].stream)), hex(&unhex(FILE_1)));
    assert_eq!(hex(&inline(&h.shared[1].stream)), hex(&unhex(FILE_2)));
    let crc = |b: &[u8]| flowstate_api::format::codec::crc32c(b);
    assert_eq!(h.shared[0].crc32c, crc(&unhex(FILE_1)));
    let meta = inline(&h.meta);
    let (header, len) = flowstate_api::format::canonical::SnapshotHeader::decode(&meta).unwrap();
    assert_eq!(header.states.len(), 1);
    assert_eq!(hex(&meta[len..]), hex(&unhex(INDEX_2)));

    // The documented bytes restore: key 42 was deleted by the delta.
    let restored = HeapBackend::restore_with_options(
        config(),
        HeapOptions::incremental(),
        std::slice::from_ref(&result.handle),
        &InlineReader,
    )
    .await
    .unwrap();
    let mut restored = restored;
    let count = restored.register(ValueStateDescriptor::<u64>::new("count")).unwrap();
    restored.set_current_key(&42).unwrap();
    assert_eq!(restored.value(&count).unwrap(), None);
    assert_eq!(restored.entry_count(&count).unwrap(), 0);
}
