//! Restore errors name something an operator can find.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use flowstate_api::checkpoint::{InlineReader, KeyGroupsStateHandle, StreamStateHandle};
use flowstate_api::*;
use flowstate_heap::HeapBackend;

fn config() -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::new(KeyGroupRange::all(128).unwrap(), 128)
}

fn handle(stream: StreamStateHandle) -> KeyedStateHandle {
    KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
        range: KeyGroupRange::new(0, 64).unwrap(),
        offsets: vec![0; 64],
        stream,
    })
}

#[tokio::test(flavor = "current_thread")]
async fn damaged_inline_state_names_its_key_groups() {
    let damaged = handle(StreamStateHandle::Inline(Bytes::from_static(b"not a snapshot")));
    let err = HeapBackend::restore(config(), &[damaged], &InlineReader)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    assert!(
        err.message().contains("inline state of key groups [0..=63] (14 bytes)"),
        "{err}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn unreadable_state_file_names_its_key_groups() {
    let file = handle(StreamStateHandle::File {
        path: "chk-4/0000abcd-1-2".into(),
        size: 100,
    });
    let err = HeapBackend::restore(config(), &[file], &InlineReader)
        .await
        .unwrap_err();
    assert!(err.message().contains("key groups [0..=63]"), "{err}");
    assert!(err.message().contains("chk-4/0000abcd-1-2"), "{err}");
}
