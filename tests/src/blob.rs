//! The [`BlobStore`] contract: what the checkpoint layout relies on of any
//! store, run on each storage's own store (memory, filesystem, object store
//! in memory, the S3-compatible server). A third-party store passes these
//! before anything is layered on it.

use std::sync::Arc;

use bytes::Bytes;
use flowstate_api::checkpoint::{BlobListing, BlobPath, BlobStore};
use flowstate_api::ErrorKind;

use crate::StorageFactory;

/// A fresh, empty store of `factory`'s kind: the store under the storage
/// of a job no other contract uses.
fn store(factory: &dyn StorageFactory, contract: &str) -> Arc<dyn BlobStore> {
    Arc::clone(factory.storage(&crate::job_id(contract)).store())
}

fn path(p: &str) -> BlobPath {
    BlobPath::new(p).expect("a valid path")
}

async fn put(store: &dyn BlobStore, p: &str, data: &'static [u8]) {
    store
        .put_if_absent(&path(p), Bytes::from_static(data))
        .await
        .unwrap_or_else(|e| panic!("put {p} in {store:?}: {e}"));
}

async fn paths(store: &dyn BlobStore, prefix: Option<&str>) -> Vec<String> {
    let prefix = prefix.map(path);
    let mut all: Vec<String> = store
        .list(prefix.as_ref())
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?} of {store:?}: {e}"))
        .into_iter()
        .map(|m| m.path.as_str().to_string())
        .collect();
    all.sort();
    all
}

fn level(l: &BlobListing) -> (Vec<String>, Vec<String>) {
    let mut dirs: Vec<String> = l.dirs.iter().map(|d| d.as_str().to_string()).collect();
    let mut objects: Vec<String> = l.objects.iter().map(|o| o.path.as_str().to_string()).collect();
    dirs.sort();
    objects.sort();
    (dirs, objects)
}

/// An object written in several chunks reads back whole once finished, and
/// by any range: a range running past the end is cut short, one starting
/// past it is empty, never an error or more bytes. A missing object is
/// `NotFound` to a read and `None` to `head`.
pub async fn written_objects_read_back_whole_and_by_range(factory: Arc<dyn StorageFactory>) {
    let store = store(&*factory, "blob-read");
    let p = path("shared/a");
    let mut w = store.create(&p).await.unwrap();
    for chunk in [&b"hello "[..], b"wide ", b"world"] {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.finish().await.unwrap();
    assert_eq!(store.head(&p).await.unwrap().map(|m| m.size), Some(16), "{store:?}");
    assert_eq!(store.get_range(&p, 0..16).await.unwrap(), &b"hello wide world"[..]);
    assert_eq!(store.get_range(&p, 11..100).await.unwrap(), &b"world"[..]);
    assert_eq!(store.get_range(&p, 16..17).await.unwrap(), &b""[..]);
    assert_eq!(store.get_range(&p, 50..60).await.unwrap(), &b""[..]);
    let parts = store.get_ranges(&p, &[0..1, 6..10, 14..99]).await.unwrap();
    assert_eq!(parts, [&b"h"[..], &b"wide"[..], &b"ld"[..]]);

    let empty = path("chk-1/empty");
    store.create(&empty).await.unwrap().finish().await.unwrap();
    assert_eq!(store.head(&empty).await.unwrap().map(|m| m.size), Some(0));
    assert_eq!(store.get_range(&empty, 0..10).await.unwrap(), &b""[..]);

    let missing = path("chk-1/missing");
    assert!(store.head(&missing).await.unwrap().is_none());
    let e = store.get_range(&missing, 0..1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

/// An object larger than a multipart part (8 MiB on object stores) streams
/// in chunks and reads back byte for byte, including ranges that straddle
/// the part boundary.
pub async fn large_objects_stream_and_read_back_exactly(factory: Arc<dyn StorageFactory>) {
    let store = store(&*factory, "blob-large");
    let data = Bytes::from(crate::noise(9 << 20, 7));
    let p = path("shared/large");
    let mut w = store.create(&p).await.unwrap();
    for chunk in data.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.finish().await.unwrap();
    assert_eq!(store.head(&p).await.unwrap().map(|m| m.size), Some(data.len() as u64));
    assert!(
        store.get_range(&p, 0..data.len() as u64).await.unwrap() == data,
        "{store:?}"
    );
    let boundary = 8u64 << 20;
    let around = store.get_range(&p, boundary - 3..boundary + 5).await.unwrap();
    assert_eq!(around, data.slice((boundary - 3) as usize..(boundary + 5) as usize));
}

/// Of several writers racing `put_if_absent` on one path, exactly one wins;
/// the others get `Conflict` and the object holds the winner's bytes. A
/// put over an object written by `create` is a conflict too.
pub async fn put_if_absent_has_exactly_one_winner(factory: Arc<dyn StorageFactory>) {
    let store = store(&*factory, "blob-race");
    let p = path("chk-7/_metadata");
    let put = |i: u8| {
        let (store, p) = (Arc::clone(&store), p.clone());
        async move { (i, store.put_if_absent(&p, Bytes::from(vec![i; 64 + i as usize])).await) }
    };
    let mut results = Vec::new();
    if factory.atomic_put_if_absent() {
        let tasks: Vec<_> = (0..8u8).map(|i| tokio::spawn(put(i))).collect();
        for t in tasks {
            results.push(t.await.expect("the writer task"));
        }
    } else {
        for i in 0..8u8 {
            results.push(put(i).await);
        }
    }
    let mut winners = Vec::new();
    for (i, result) in results {
        match result {
            Ok(()) => winners.push(i),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "writer {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners {winners:?} on {store:?}");
    let w = winners[0];
    assert_eq!(store.get_range(&p, 0..1000).await.unwrap(), vec![w; 64 + w as usize]);

    let created = path("chk-7/data");
    let mut writer = store.create(&created).await.unwrap();
    writer.write(Bytes::from_static(b"first")).await.unwrap();
    writer.finish().await.unwrap();
    let e = store
        .put_if_absent(&created, Bytes::from_static(b"second"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(store.get_range(&created, 0..100).await.unwrap(), &b"first"[..]);
}

/// A writer aborted before it finishes leaves no object: not readable, not
/// listed. One dropped leaves none either, once the clean-up its destructor
/// hands off has run.
pub async fn dropped_and_aborted_writers_leave_nothing(factory: Arc<dyn StorageFactory>) {
    let store = store(&*factory, "blob-abort");
    let dropped = path("shared/dropped");
    let mut w = store.create(&dropped).await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    drop(w);
    let gone = crate::eventually(|| async { store.head(&dropped).await.is_ok_and(|m| m.is_none()) }).await;
    assert!(gone, "{dropped} outlived its dropped writer in {store:?}");
    let aborted = path("shared/aborted");
    let mut w = store.create(&aborted).await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    w.abort().await;
    for p in [&dropped, &aborted] {
        assert!(store.head(p).await.unwrap().is_none(), "{p} in {store:?}");
        assert_eq!(store.get_range(p, 0..1).await.unwrap_err().kind(), ErrorKind::NotFound);
    }
    assert!(paths(&*store, None).await.is_empty(), "{store:?}");
}

/// `list` gives every object under a prefix at any depth, and only under
/// it (`lv/shared` does not match `lv/shared-not/…`); `list_level` gives
/// one level: the objects directly in it and its subdirectories. An absent
/// prefix lists nothing. (Under `lv/`: a filesystem storage keeps its
/// empty `shared/` and `taskowned/` directories at the root.)
pub async fn listings_show_each_prefix_and_level(factory: Arc<dyn StorageFactory>) {
    let store = store(&*factory, "blob-list");
    let objects = [
        "top",
        "chk-1/_metadata",
        "chk-2/a",
        "shared/x/deep",
        "shared/y",
        "shared-not/z",
        "sharedtop",
    ];
    for p in objects {
        put(&*store, &format!("lv/{p}"), b"data").await;
    }
    let mut all: Vec<String> = objects.iter().map(|p| format!("lv/{p}")).collect();
    all.sort();
    assert_eq!(paths(&*store, None).await, all, "{store:?}");
    assert_eq!(paths(&*store, Some("lv")).await, all, "{store:?}");
    assert_eq!(
        paths(&*store, Some("lv/shared")).await,
        ["lv/shared/x/deep", "lv/shared/y"]
    );
    assert_eq!(paths(&*store, Some("lv/shared/x")).await, ["lv/shared/x/deep"]);
    assert!(paths(&*store, Some("lv/absent")).await.is_empty());

    let top = level(&store.list_level(Some(&path("lv"))).await.unwrap());
    let dirs = ["lv/chk-1", "lv/chk-2", "lv/shared", "lv/shared-not"];
    assert_eq!(
        top,
        (
            dirs.iter().map(|d| d.to_string()).collect(),
            vec!["lv/sharedtop".into(), "lv/top".into()]
        ),
        "{store:?}"
    );
    let shared = level(&store.list_level(Some(&path("lv/shared"))).await.unwrap());
    assert_eq!(
        shared,
        (vec!["lv/shared/x".into()], vec!["lv/shared/y".into()]),
        "{store:?}"
    );
    let none = store.list_level(Some(&path("lv/absent"))).await.unwrap();
    assert_eq!(none, BlobListing::default());
}

/// Deleting objects that are gone, never existed, or are named twice in
/// one call is not an error; a deleted object is gone for every read.
pub async fn deleting_missing_objects_is_not_an_error(factory: Arc<dyn StorageFactory>) {
    let store = store(&*factory, "blob-delete");
    let (a, b) = (path("chk-1/a"), path("chk-1/b"));
    put(&*store, "chk-1/a", b"a").await;
    put(&*store, "chk-1/b", b"b").await;
    store.delete(&[path("never/was")]).await.unwrap();
    store.delete(&[a.clone(), a.clone()]).await.unwrap();
    store.delete(std::slice::from_ref(&a)).await.unwrap();
    assert!(store.head(&a).await.unwrap().is_none());
    assert_eq!(store.get_range(&a, 0..1).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(paths(&*store, None).await, ["chk-1/b"]);
    assert_eq!(store.get_range(&b, 0..1).await.unwrap(), &b"b"[..]);
}

/// Names that leave the root are refused before any store sees them;
/// unusual but valid names (spaces, `%`, `+`, `=`, non-ASCII, a leading
/// dot) round-trip exactly.
pub async fn hostile_paths_are_refused_and_odd_names_round_trip(factory: Arc<dyn StorageFactory>) {
    for bad in ["", "/abs", "a/../b", "..", ".", "a//b", "a/", "a\0b", "c:\\x", "a\\b"] {
        assert!(BlobPath::new(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(path("chk-1").join("../x").is_err());
    let store = store(&*factory, "blob-names");
    let odd = [
        "shared/a b",
        "shared/100%",
        "shared/x+y=z",
        "shared/naïve-ß",
        "shared/.hidden",
    ];
    for (i, p) in odd.iter().enumerate() {
        store
            .put_if_absent(&path(p), Bytes::from(vec![i as u8; 3]))
            .await
            .unwrap_or_else(|e| panic!("put {p:?} in {store:?}: {e}"));
    }
    let mut want: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(paths(&*store, Some("shared")).await, want, "{store:?}");
    for (i, p) in odd.iter().enumerate() {
        assert_eq!(
            store.get_range(&path(p), 0..10).await.unwrap(),
            vec![i as u8; 3],
            "{p:?}"
        );
    }
    let all: Vec<BlobPath> = odd.iter().map(|p| path(p)).collect();
    store.delete(&all).await.unwrap();
    assert!(paths(&*store, None).await.is_empty(), "{store:?}");
}
