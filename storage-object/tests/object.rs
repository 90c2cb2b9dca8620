//! The object-store adapter's own behaviour, on `object_store`'s in-memory
//! store (the conformance suite runs the layout's contracts on it too).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use flowstate_api::checkpoint::{BlobPath, BlobStore};
use flowstate_api::ErrorKind;
use flowstate_object::object_store::memory::InMemory;
use flowstate_object::object_store::{ObjectStore, ObjectStoreExt};
use flowstate_object::ObjectBlobStore;
use futures::TryStreamExt;

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
    // One range at a time: the same answers.
    assert_eq!(blob.get_range(&p, 3..9).await.unwrap().as_ref(), &data[3..9]);
    assert_eq!(
        blob.get_range(&p, n - 4..n + 100).await.unwrap().as_ref(),
        &data[data.len() - 4..]
    );
    assert!(blob.get_range(&p, n + 5..n + 9).await.unwrap().is_empty());
    assert!(blob.get_range(&p, 7..7).await.unwrap().is_empty());
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

/// Every scheme builds, and its root is the URL pointers name.
#[tokio::test]
async fn urls_build_every_scheme() {
    use flowstate_object::ObjectStoreBuilder;
    let dir = tempfile::tempdir().unwrap();
    let file_url = format!("file://{}/ckpt", dir.path().display());
    let cases = [
        (
            ObjectStoreBuilder::new("s3://bucket/a/b").with_option("region", "eu-west-1"),
            "s3://bucket/a/b",
        ),
        (
            ObjectStoreBuilder::new("s3a://bucket").with_option("aws_region", "eu-west-1"),
            "s3a://bucket",
        ),
        (ObjectStoreBuilder::new("gs://bucket/a"), "gs://bucket/a"),
        (
            ObjectStoreBuilder::new("az://container/a").with_option("account_name", "acct"),
            "az://container/a",
        ),
        (ObjectStoreBuilder::new(file_url.as_str()), file_url.as_str()),
        (ObjectStoreBuilder::new("memory://name/a/"), "memory://name/a"),
    ];
    for (builder, root) in cases {
        let store = builder.without_env().build().unwrap();
        assert_eq!(store.root(), root);
    }
    // A file URL is a real directory: what is written is a file there.
    let store = ObjectStoreBuilder::new(file_url.as_str()).build().unwrap();
    store
        .put_if_absent(&path("chk-1/_metadata"), Bytes::from_static(b"m"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("ckpt/chk-1/_metadata")).unwrap(), b"m");
    let other = store
        .open(&format!("file://{}/savepoints", dir.path().display()))
        .unwrap();
    assert_eq!(other.root(), format!("file://{}/savepoints", dir.path().display()));
}

/// A misspelt or foreign option key is refused by name, never ignored; so
/// are bad values and unknown schemes.
#[test]
fn unknown_options_are_refused_by_name() {
    use flowstate_object::ObjectStoreBuilder;
    let refused = |b: ObjectStoreBuilder, needle: &str| {
        let e = b.without_env().build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert!(e.to_string().contains(needle), "{e} should name {needle}");
    };
    refused(
        ObjectStoreBuilder::new("s3://b/x").with_option("regoin", "eu-west-1"),
        "regoin",
    );
    refused(
        ObjectStoreBuilder::new("gs://b/x").with_option("aws_region", "eu-west-1"),
        "aws_region",
    );
    refused(
        ObjectStoreBuilder::new("az://c/x").with_option("bucket_nmae", "x"),
        "bucket_nmae",
    );
    refused(
        ObjectStoreBuilder::new("memory://b").with_option("region", "x"),
        "region",
    );
    refused(
        ObjectStoreBuilder::new("s3://b/x").with_option("max_retries", "many"),
        "max_retries",
    );
    refused(
        ObjectStoreBuilder::new("s3://b/x").with_option("retry_timeout", "1 fortnight"),
        "retry_timeout",
    );
    refused(
        ObjectStoreBuilder::new("s3://b/x").with_option("part_size", "1024"),
        "5 MiB",
    );
    refused(ObjectStoreBuilder::new("ftp://b/x"), "ftp");
    refused(ObjectStoreBuilder::new("not a url"), "not a url");
    refused(ObjectStoreBuilder::new("memory://b/x").with_entropy(2), "_entropy_");
    refused(
        ObjectStoreBuilder::new("memory://b/_entropy_/x").with_entropy(9),
        "entropy length",
    );
}

/// Secrets given as options appear neither in `Debug` output nor in the
/// errors of a store that cannot be reached.
#[tokio::test]
async fn credentials_never_appear_in_debug_output_or_errors() {
    use flowstate_api::{CheckpointKind, CheckpointMetadata, CheckpointStorage};
    use flowstate_object::ObjectStoreBuilder;
    const KEY: &str = "AKIAFLOWSTATEKEYID42";
    const SECRET: &str = "flowstate-secret-7c1d9e0b55aa";
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let builder = ObjectStoreBuilder::new("s3://bucket/ckpt/job")
        .without_env()
        .with_option("endpoint", format!("http://127.0.0.1:{port}"))
        .with_option("allow_http", "true")
        .with_option("region", "us-east-1")
        .with_option("access_key_id", KEY)
        .with_option("secret_access_key", SECRET)
        .with_option("max_retries", "1")
        .with_option("retry_timeout", "2s");
    let debug = format!("{builder:?}");
    assert!(!debug.contains(SECRET) && !debug.contains(KEY), "{debug}");
    let store = builder.build().unwrap();
    let debug = format!("{store:?}");
    assert!(!debug.contains(SECRET) && !debug.contains(KEY), "{debug}");
    let storage = CheckpointStorage::new(Arc::new(store), "job").unwrap();
    let e = match storage.init_checkpoint(1).await {
        Err(e) => e,
        Ok(location) => location
            .write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0))
            .await
            .unwrap_err(),
    };
    let e2 = storage.latest_checkpoint().await.unwrap_err();
    for text in [e.to_string(), format!("{e:?}"), e2.to_string(), format!("{e2:?}")] {
        assert!(
            text.contains("chk-1") || text.contains("listing"),
            "errors name what failed: {text}"
        );
        assert!(!text.contains(SECRET) && !text.contains(KEY), "{text}");
    }
}

/// With entropy, checkpoint data files spread over hex prefixes and
/// `_metadata` stays at the plain path; everything lists, resolves, reads
/// and deletes through the plain root; savepoint files get no entropy.
#[tokio::test]
async fn entropy_spreads_data_files_and_keeps_metadata_plain() {
    use flowstate_api::checkpoint::StateScope;
    use flowstate_api::{CheckpointKind, CheckpointMetadata, CheckpointStorage};
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let blob = ObjectBlobStore::new(Arc::clone(&inner), "memory://bucket", "ckpt/_entropy_/job")
        .unwrap()
        .with_entropy(2)
        .unwrap();
    assert_eq!(blob.root(), "memory://bucket/ckpt/job");
    let storage = CheckpointStorage::new(Arc::new(blob), "job")
        .unwrap()
        .with_inline_threshold(0)
        .unwrap()
        .with_savepoint_dir("memory://bucket/ckpt/savepoints");
    let location = storage.init_checkpoint(1).await.unwrap();
    let mut handles = Vec::new();
    for (i, scope) in [
        StateScope::Shared,
        StateScope::Exclusive,
        StateScope::TaskOwned,
        StateScope::Shared,
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = location.create_output_stream(scope).await.unwrap();
        s.write(&vec![i as u8; 100 + i]).await.unwrap();
        handles.push(s.close().await.unwrap());
    }
    let pointer = location
        .write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0))
        .await
        .unwrap();
    assert_eq!(pointer, "memory://bucket/ckpt/job/chk-1");
    let keys: Vec<String> = inner
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(keys.contains(&"ckpt/job/chk-1/_metadata".to_string()), "{keys:?}");
    let data: Vec<&String> = keys.iter().filter(|k| !k.ends_with("_metadata")).collect();
    assert_eq!(data.len(), 4, "{keys:?}");
    for k in &data {
        let parts: Vec<&str> = k.split('/').collect();
        assert_eq!(parts[0], "ckpt");
        assert!(
            parts[1].len() == 2 && parts[1].bytes().all(|b| b.is_ascii_hexdigit()),
            "{k}"
        );
        assert_eq!(parts[2], "job", "{k}");
    }
    let latest = storage.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!(latest.metadata.checkpoint_id, 1);
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(
            latest.reader.read(h).await.unwrap().as_ref(),
            &vec![i as u8; 100 + i][..]
        );
    }
    // Listing through the store sees the data files under their plain paths.
    let store = storage.store();
    let listed = store.list(None).await.unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(listed.iter().any(|m| m.path.as_str().starts_with("shared/")));
    let level = store.list_level(None).await.unwrap();
    let dirs: Vec<&str> = level.dirs.iter().map(|d| d.as_str()).collect();
    assert_eq!(dirs, ["chk-1", "shared", "taskowned"]);
    let paths: Vec<BlobPath> = listed.iter().map(|m| m.path.clone()).collect();
    store.delete(&paths).await.unwrap();
    assert_eq!(inner.list(None).try_collect::<Vec<_>>().await.unwrap().len(), 0);
    // A savepoint is one directory: no entropy in its keys.
    let sp = storage.init_savepoint(2, None).await.unwrap();
    let mut s = sp.create_output_stream(StateScope::Shared).await.unwrap();
    s.write(&[1; 10]).await.unwrap();
    s.close().await.unwrap();
    sp.write_metadata(&CheckpointMetadata::new(2, CheckpointKind::Savepoint, 0))
        .await
        .unwrap();
    let keys: Vec<String> = inner
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("ckpt/savepoints/savepoint-job-2-")),
        "{keys:?}"
    );
}

/// An engine on another executor (no Tokio runtime) streams an object
/// larger than a part: the part uploads run on the store's own runtime.
#[test]
fn multipart_uploads_work_outside_tokio() {
    let (_, blob) = store();
    let blob = blob.with_parts(5 << 20, 2).unwrap();
    let data: Vec<u8> = (0..(11u32 << 20)).map(|i| (i % 253) as u8).collect();
    let p = path("shared/outside");
    futures::executor::block_on(async {
        let mut w = blob.create(&p).await.unwrap();
        for chunk in data.chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        w.finish().await.unwrap();
        assert_eq!(
            blob.get_range(&p, 0..data.len() as u64 + 1).await.unwrap().as_ref(),
            &data[..]
        );
    });
}
