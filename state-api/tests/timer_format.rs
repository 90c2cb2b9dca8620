//! The timer test vectors of `docs/format.md`: a canonical snapshot holding
//! one timer, and the timestamp encoding. The bytes below are part of the
//! format and must never change.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use flowstate_api::checkpoint::{StateScope, StreamStateHandle};
use flowstate_api::format::canonical::{
    write_canonical_snapshot, CanonicalSnapshot, KeyGroupSource, KeyGroupWriter, Record, SnapshotHeader,
};
use flowstate_api::format::codec::encode_timestamp;
use flowstate_api::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Key group 28 (of u64 key 42 at max parallelism 128) of a canonical
/// snapshot holding one event-time timer service "t" (void namespace) with
/// the timer (1000, key 42).
const SNAPSHOT: &str = concat!(
    "46534b47020000004400000039c34389",
    "1c1d80010c62696e636f6465323a75363401",
    "010174050e766f69642d6e616d657370616365011a666c6f7773746174652e74696d65722e6576656e742d74696d65010000",
    "0c0000000cb8d42e",
    "00012a0080000000000003e8"
);

#[tokio::test]
async fn canonical_timer_vector() {
    struct One;
    impl KeyGroupSource for One {
        fn write_key_group(&mut self, _kg: u32, out: &mut KeyGroupWriter) -> Result<()> {
            out.timer(0, &[42], &[], 1000);
            Ok(())
        }
    }
    let header = SnapshotHeader {
        range: KeyGroupRange::new(28, 29).unwrap(),
        max_parallelism: 128,
        key_serializer: Bincode::<u64>::new().id(),
        states: vec![TimerServiceDescriptor::event_time("t").meta()],
        compressed: false,
    };
    let storage = CheckpointStorage::in_memory("vectors");
    let location = storage.init_checkpoint(1).await.unwrap();
    let stream = location.create_output_stream(StateScope::Exclusive).await.unwrap();
    let written = write_canonical_snapshot(&header, One, Default::default(), stream, None)
        .await
        .unwrap();
    let StreamStateHandle::Inline(b) = &written.handle.stream else {
        panic!("a small snapshot is inline")
    };
    assert_eq!(hex(b), SNAPSHOT);
    let snap = CanonicalSnapshot::open(Bytes::copy_from_slice(b), &written.handle, "vector").unwrap();
    let mut records = Vec::new();
    snap.key_group(28)
        .unwrap()
        .for_each(|r| {
            records.push(format!("{r:?}"));
            Ok(())
        })
        .unwrap();
    let want = Record::Timer {
        state: 0,
        key: &[42],
        namespace: &[],
        timestamp: 1000,
    };
    assert_eq!(records, [format!("{want:?}")]);
}

#[test]
fn timestamp_vectors() {
    assert_eq!(hex(&encode_timestamp(1000)), "80000000000003e8");
    assert_eq!(hex(&encode_timestamp(-1)), "7fffffffffffffff");
    assert_eq!(hex(&encode_timestamp(i64::MIN)), "0000000000000000");
}
