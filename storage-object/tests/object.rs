//! The object-store adapter's own behaviour, on `object_store`'s in-memory
//! store (the conformance suite runs the layout's contracts on it too).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use flowstate_api::{BlobPath, BlobStore, ErrorKind};
use flowstate_object::object_store::memory::InMemory;
use flowstate_object::object_store::{ObjectStore, ObjectStoreExt};
use flowstate_object::ObjectBlobStore;

fn store() -> (Arc<dyn ObjectStore>, ObjectBlobStore) {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let blob = ObjectBlobStore::new(Arc::clone(&inner), "memory://bucket", "ckpt/job").unwrap();
    (inner, blob)
}

fn path(p: &str) -> BlobPath {
    BlobPath::new(p).unwrap()
}

/// A create-if-absent finds the same bytes (its own retried write) and
/// succeeds; other bytes are a conflict, and the object keeps the first.
#[tokio::test]
async fn put_if_absent_accepts_its_own_write_and_refuses_another() {
    let (inner, blob) = store();
    let p = path("chk-1/_metadata");
    blob.put_if_absent(&p, Bytes::from_static(b"one")).await.unwrap();
    blob.put_if_absent(&p, Bytes::from_static(b"one")).await.unwrap();
    let e = blob.put_if_absent(&p, Bytes::from_static(b"two")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let key = object_store_path("ckpt/job/chk-1/_metadata");
    assert_eq!(inner.get(&key).await.unwrap().bytes().await.unwrap().as_ref(), b"one");
}

fn object_store_path(p: &str) -> flowstate_object::object_store::path::Path {
    flowstate_object::object_store::path::Path::from(p)
}

/// Objects above a part go through a multipart upload and read back whole;
/// ranges past the end are cut short, never extended.
#[tokio::test]
async fn large_objects_stream_in_parts_and_ranges_are_clamped() {
    let (_, blob) = store();
    let blob = blob.with_parts(5 << 20, 2).unwrap();
    let data: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    let p = path("shared/big");
    let mut w = blob.create(&p).await.unwrap();
    for chunk in data.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.finish().await.unwrap();
    assert_eq!(blob.head(&p).await.unwrap().unwrap().size, data.len() as u64);
    let n = data.len() as u64;
    let parts = blob
        .get_ranges(&p, &[0..10, (5 << 20) - 3..(5 << 20) + 3, n - 4..n + 100, n + 5..n + 9])
        .await
        .unwrap();
    assert_eq!(parts[0].as_ref(), &data[..10]);
    assert_eq!(parts[1].as_ref(), &data[(5 << 20) - 3..(5 << 20) + 3]);
    assert_eq!(parts[2].as_ref(), &data[data.len() - 4..]);
    assert!(parts[3].is_empty());
    let e = blob.get_range(&path("shared/absent"), 0..1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

/// An aborted writer leaves no object behind; part sizes below the stores'
/// 5 MiB minimum are refused.
#[tokio::test]
async fn aborted_uploads_leave_nothing() {
    let (_, blob) = store();
    let blob = blob.with_parts(5 << 20, 2).unwrap();
    let p = path("shared/aborted");
    let mut w = blob.create(&p).await.unwrap();
    w.write(Bytes::from(vec![7u8; 6 << 20])).await.unwrap();
    w.abort().await;
    assert!(blob.head(&p).await.unwrap().is_none());
    assert_eq!(blob.list(None).await.unwrap(), Vec::new());
    assert_eq!(
        blob.clone().with_parts(1 << 20, 1).unwrap_err().kind(),
        ErrorKind::Invalid
    );
}

/// Other locations in the same store open under it; another store's do not.
#[tokio::test]
async fn open_stays_in_the_same_store() {
    let (_, blob) = store();
    let sp = blob.open("memory://bucket/savepoints").unwrap();
    assert_eq!(sp.root(), "memory://bucket/savepoints");
    for bad in ["s3://other/x", "memory://bucketx/y", "/tmp/x", "memory://bucket/../x"] {
        assert!(blob.open(bad).is_err(), "{bad}");
    }
}
