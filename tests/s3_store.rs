//! `tablesnap::store::Store` against a real S3 server (Garage, started by `scripts/test.sh`):
//! bytes, keys and metadata as they land in the bucket, checked with an independent client.

mod common;

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::PutPayload;
use rand::{RngCore, SeedableRng};
use tablesnap::layout::{self, META_MD5, META_STAT};
use tablesnap::store::{ErrorKind, PutMeta, Store, StoreError, StoreOptions};

const MIB: usize = 1024 * 1024;

/// What the original writes in `x-amz-meta-stat`: Python's `json.dumps`, with ", " and ": ".
const STAT: &str =
    r#"{"uid": 999, "gid": 999, "mode": 33188, "user": "cassandra", "group": "cassandra"}"#;

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn data_meta(body: &[u8]) -> PutMeta {
    PutMeta {
        content_type: Some("application/octet-stream".into()),
        user: vec![(META_MD5, md5_hex(body)), (META_STAT, STAT.to_string())],
    }
}

fn expected_user_meta(body: &[u8]) -> HashMap<String, String> {
    HashMap::from([
        (META_MD5.to_string(), md5_hex(body)),
        (META_STAT.to_string(), STAT.to_string()),
    ])
}

/// A key shaped like a real one: host, data directory, table id, SSTable component.
fn cassandra_key(prefix: &str, component: &str) -> String {
    format!(
        "{prefix}ip-10-120-130-140.eu-west-1.compute.internal:/var/lib/cassandra/data/\
         telemetry_production_eu_west_1/\
         sensor_readings_by_device_and_day_v2-5b6080d0c57b11eebf6e1d7f2c3ac590/{component}"
    )
}

async fn get_all(store: &Store, key: &str) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .get_stream(key, None)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("read {key}: {e}"));
    chunks.concat()
}

#[tokio::test]
async fn put_then_head_returns_exactly_the_metadata_and_content_type() {
    let s3 = common::s3();
    let store = s3.store();
    let p = s3.unique_prefix("put-head");
    let key = cassandra_key(&p, "nb-1-big-Data.db");
    let body = random_bytes(100_000, 1);

    assert!(
        store.head(&key).await.unwrap().is_none(),
        "fresh key exists"
    );
    store
        .put(&key, Bytes::from(body.clone()), &data_meta(&body))
        .await
        .unwrap();

    let info = store.head(&key).await.unwrap().expect("object after put");
    assert_eq!(info.key, key);
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(info.metadata, expected_user_meta(&body));
    assert_eq!(
        info.expected_md5().as_deref(),
        Some(md5_hex(&body).as_str())
    );
    // A single PUT: the ETag is the MD5 too.
    assert_eq!(
        info.e_tag
            .as_deref()
            .map(|e| e.trim_matches('"').to_ascii_lowercase()),
        Some(md5_hex(&body))
    );

    let (size, meta, ct) = s3.raw_head(&key).await.expect("raw head");
    assert_eq!(size, body.len() as u64);
    assert_eq!(meta, expected_user_meta(&body));
    assert_eq!(ct.as_deref(), Some("application/octet-stream"));
    assert_eq!(s3.raw_get(&key).await.unwrap(), body);
    assert_eq!(store.get_bytes(&key).await.unwrap().as_ref(), &body[..]);
}

#[tokio::test]
async fn index_object_under_a_200_byte_cassandra_key() {
    let s3 = common::s3();
    let store = s3.store();
    let p = s3.unique_prefix("long-key");
    let data_key = cassandra_key(&p, "nb-1234-big-Data.db");
    let key = layout::index_key(&data_key);
    assert!(key.ends_with("nb-1234-big-Data.db-listdir.json"), "{key}");
    let unprefixed = &key[p.len()..];
    assert!(
        unprefixed.len() >= 200,
        "only {} bytes: {unprefixed}",
        unprefixed.len()
    );

    let dir = "/var/lib/cassandra/data/telemetry_production_eu_west_1/sensor_readings_by_device_and_day_v2-5b6080d0c57b11eebf6e1d7f2c3ac590";
    let names: Vec<String> = [
        "nb-1234-big-Data.db",
        "nb-1234-big-Index.db",
        "nb-1234-big-TOC.txt",
    ]
    .map(String::from)
    .to_vec();
    let body = layout::listdir_json(dir, &names);
    let meta = PutMeta {
        content_type: Some(layout::INDEX_CONTENT_TYPE.into()),
        user: vec![],
    };
    store
        .put(&key, Bytes::from(body.clone()), &meta)
        .await
        .unwrap();

    assert_eq!(
        s3.raw_keys(&p).await,
        vec![(key.clone(), body.len() as u64)]
    );
    let (_, user, ct) = s3.raw_head(&key).await.unwrap();
    assert!(user.is_empty(), "{user:?}");
    assert_eq!(ct.as_deref(), Some("application/json"));
    let got = store.get_bytes(&key).await.unwrap();
    assert_eq!(got.as_ref(), body.as_bytes());
    let listing = layout::parse_listing(&got).unwrap();
    assert_eq!(listing.dir, dir);
    assert_eq!(listing.names, names);
}

#[tokio::test]
async fn multipart_upload_with_metadata_reads_back_byte_for_byte() {
    let s3 = common::s3();
    let store = s3.store();
    let p = s3.unique_prefix("multipart");
    let key = cassandra_key(&p, "nb-2-big-Data.db");
    let part = 5 * MIB;
    let body = random_bytes(3 * part + 123_457, 2);
    let meta = data_meta(&body);

    let mut upload = store.start_multipart(&key, &meta).await.unwrap();
    for chunk in body.chunks(part) {
        upload
            .put_part(PutPayload::from(Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    upload.complete().await.unwrap();
    store.finish_multipart(&key, &meta).await.unwrap();

    let info = store
        .head(&key)
        .await
        .unwrap()
        .expect("object after upload");
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(info.metadata, expected_user_meta(&body));
    // A multipart ETag is not the MD5 ("-4" suffix): the md5sum metadata is what tells.
    assert!(
        info.e_tag.as_deref().unwrap_or("").contains("-4"),
        "{:?}",
        info.e_tag
    );
    assert_eq!(
        info.expected_md5().as_deref(),
        Some(md5_hex(&body).as_str())
    );
    let (_, _, ct) = s3.raw_head(&key).await.unwrap();
    assert_eq!(ct.as_deref(), Some("application/octet-stream"));

    let got = get_all(&store, &key).await;
    assert_eq!(got.len(), body.len());
    assert!(got == body, "multipart body differs");

    // A range across the first part boundary.
    let r = (part as u64 - 10)..(part as u64 + 10);
    let chunks: Vec<Bytes> = store
        .get_stream(&key, Some(r.clone()))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(chunks.concat(), &body[r.start as usize..r.end as usize]);
}

#[tokio::test]
async fn list_dir_returns_only_keys_under_the_directory() {
    let s3 = common::s3();
    let store = s3.store();
    let p = s3.unique_prefix("list-dir");
    let inside = [
        format!("{p}host:/data/ks/dir/a-Data.db"),
        format!("{p}host:/data/ks/dir/sub/b-Data.db"),
    ];
    let outside = [
        format!("{p}host:/data/ks/dir2/c-Data.db"),
        format!("{p}host:/data/ks/dirx"),
        format!("{p}host:/data/ks/dir.db"),
    ];
    for (i, k) in inside.iter().chain(&outside).enumerate() {
        let body = vec![b'x'; i + 1];
        store
            .put(k, Bytes::from(body.clone()), &data_meta(&body))
            .await
            .unwrap();
    }
    let want: BTreeSet<(String, u64)> = inside
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i as u64 + 1))
        .collect();
    for dir in [
        format!("{p}host:/data/ks/dir"),
        format!("{p}host:/data/ks/dir/"),
    ] {
        let got: BTreeSet<(String, u64)> = store
            .list_all(&dir)
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        assert_eq!(got, want, "list_dir({dir:?})");
    }
    assert!(
        store
            .list_all(&format!("{p}host:/data/ks/nothing"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s3.raw_keys(&p).await.len(), 5);
}

#[tokio::test]
async fn delete_many_deletes_exactly_the_given_keys() {
    let s3 = common::s3();
    let store = s3.store();
    let p = s3.unique_prefix("delete-many");
    let keys: Vec<String> = (0..6)
        .map(|i| cassandra_key(&p, &format!("nb-{i}-big-Data.db")))
        .collect();
    for k in &keys {
        store
            .put(k, Bytes::from_static(b"data"), &PutMeta::default())
            .await
            .unwrap();
    }
    let mut doomed: Vec<String> = keys[..4].to_vec();
    doomed.push(cassandra_key(&p, "nb-99-big-Data.db")); // never existed
    assert_eq!(store.delete_many(doomed).await.unwrap(), 5);

    let left: Vec<String> = s3.raw_keys(&p).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, keys[4..].to_vec());
    assert!(store.head(&keys[0]).await.unwrap().is_none());
    assert_eq!(store.delete_many(vec![]).await.unwrap(), 0);
}

#[tokio::test]
async fn the_second_bucket_is_separate() {
    let s3 = common::s3();
    let p = s3.unique_prefix("bucket2");
    let key = format!("{p}k");
    let store2 = Store::open(&StoreOptions {
        destination: format!("s3://{}", s3.bucket2),
        ..s3.store_options()
    })
    .unwrap();
    store2
        .put(&key, Bytes::from_static(b"two"), &PutMeta::default())
        .await
        .unwrap();
    assert_eq!(store2.get_bytes(&key).await.unwrap().as_ref(), b"two");
    assert!(s3.raw_head(&key).await.is_none(), "leaked into bucket 1");
}

fn assert_no_secret(e: &StoreError, secret: &str) {
    let shown = format!("{e}");
    assert!(!shown.contains(secret), "Display shows the secret: {shown}");
    let debug = format!("{e:?}");
    assert!(!debug.contains(secret), "Debug shows the secret: {debug}");
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        assert!(
            !s.to_string().contains(secret),
            "a source shows the secret: {s}"
        );
        src = s.source();
    }
}

#[tokio::test]
async fn missing_bucket_is_not_found_and_named() {
    let s3 = common::s3();
    let bucket = format!("tablesnap-missing-{}", std::process::id());
    let store = Store::open(&StoreOptions {
        destination: format!("s3://{bucket}"),
        ..s3.store_options()
    })
    .unwrap();
    let key = "host:/var/lib/cassandra/data/ks/t-1/nb-1-big-Data.db";

    let e = store
        .put(key, Bytes::from_static(b"x"), &PutMeta::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "put: {e}");
    assert!(
        e.to_string().contains(&bucket),
        "put error does not name the bucket: {e}"
    );
    assert_no_secret(&e, &s3.secret_key);

    let e = store
        .start_multipart(key, &PutMeta::default())
        .await
        .expect_err("multipart was started");
    assert_eq!(e.kind(), ErrorKind::NotFound, "start multipart: {e}");
    assert!(
        e.to_string().contains(&bucket),
        "multipart error does not name the bucket: {e}"
    );

    let e = store.get_bytes(key).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "get: {e}");
    assert!(
        e.to_string().contains(&bucket),
        "get error does not name the bucket: {e}"
    );

    // Listings are how tableslurp/tablechop and the startup probe meet a wrong bucket first.
    let e = store.probe("host:/var/lib").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "probe: {e}");
    assert!(
        e.to_string().contains(&bucket),
        "probe error does not name the bucket: {e}"
    );
    let e = store.list_all("host:/var/lib").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "list: {e}");
    assert!(
        e.to_string().contains(&bucket),
        "list error does not name the bucket: {e}"
    );
    assert_no_secret(&e, &s3.secret_key);
}

#[tokio::test]
async fn bad_credentials_are_denied_and_never_shown() {
    let s3 = common::s3();
    let key = format!("{}k", s3.unique_prefix("bad-creds"));
    let wrong_secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let cases = [
        (
            "wrong secret",
            StoreOptions {
                secret_key: Some(wrong_secret.into()),
                ..s3.store_options()
            },
        ),
        (
            "unknown key id",
            StoreOptions {
                access_key: Some("GK000000000000000000000000".into()),
                secret_key: Some(wrong_secret.into()),
                ..s3.store_options()
            },
        ),
    ];
    for (what, opts) in cases {
        let store = Store::open(&opts).unwrap();
        let e = store
            .put(&key, Bytes::from_static(b"x"), &PutMeta::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{what}: put: {e}");
        assert!(
            e.to_string().contains(&s3.bucket),
            "{what}: does not name the bucket: {e}"
        );
        assert_no_secret(&e, wrong_secret);
        assert_no_secret(&e, &s3.secret_key);

        let e = store.head(&key).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{what}: head: {e}");
        assert_no_secret(&e, wrong_secret);

        let e = store
            .start_multipart(&key, &PutMeta::default())
            .await
            .expect_err("multipart was started");
        assert_eq!(e.kind(), ErrorKind::Denied, "{what}: start multipart: {e}");

        let e = store.probe("host:/var").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{what}: probe: {e}");
        assert!(
            e.to_string().contains(&s3.bucket),
            "{what}: probe does not name the bucket: {e}"
        );
        let e = store.list_all("host:/var").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{what}: list: {e}");
        assert_no_secret(&e, wrong_secret);

        let e = store.delete_many(vec![key.clone()]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{what}: delete_many: {e}");
    }
    assert!(
        s3.raw_head(&key).await.is_none(),
        "a denied put wrote the object"
    );
}

/// The original's `-R` (REDUCED_REDUNDANCY) and `--with-sse` (AES256) must not break uploads
/// on S3-compatible servers: Garage accepts both headers (and ignores them).
#[tokio::test]
async fn storage_class_and_sse_headers_are_accepted() {
    let s3 = common::s3();
    let p = s3.unique_prefix("sc-sse");
    for (what, opts) in [
        (
            "rr",
            StoreOptions {
                storage_class: Some("REDUCED_REDUNDANCY".into()),
                ..s3.store_options()
            },
        ),
        (
            "sse",
            StoreOptions {
                sse: true,
                ..s3.store_options()
            },
        ),
        (
            "rr-sse",
            StoreOptions {
                sse: true,
                storage_class: Some("REDUCED_REDUNDANCY".into()),
                ..s3.store_options()
            },
        ),
    ] {
        let store = Store::open(&opts).unwrap();
        let body = random_bytes(1000, 3);
        let key = cassandra_key(&p, &format!("{what}-Data.db"));
        store
            .put(&key, Bytes::from(body.clone()), &data_meta(&body))
            .await
            .unwrap_or_else(|e| panic!("{what}: put: {e}"));
        assert_eq!(s3.raw_get(&key).await.unwrap(), body, "{what}");
        assert_eq!(
            s3.raw_head(&key).await.unwrap().1,
            expected_user_meta(&body),
            "{what}"
        );

        let key = format!("{key}-mp");
        let mut up = store
            .start_multipart(&key, &data_meta(&body))
            .await
            .unwrap_or_else(|e| panic!("{what}: start multipart: {e}"));
        up.put_part(PutPayload::from(Bytes::from(body.clone())))
            .await
            .unwrap_or_else(|e| panic!("{what}: part: {e}"));
        up.complete()
            .await
            .unwrap_or_else(|e| panic!("{what}: complete: {e}"));
        assert_eq!(s3.raw_get(&key).await.unwrap(), body, "{what} multipart");
        assert_eq!(
            s3.raw_head(&key).await.unwrap().1,
            expected_user_meta(&body),
            "{what} multipart"
        );
    }
}

/// Every real SSTable of the corpus (845 files, `ic` through `da`, two of them empty) through
/// the store under Cassandra-shaped keys: listed with the right sizes, read back with the
/// MANIFEST's sha256.
#[tokio::test]
async fn real_sstables_round_trip_through_the_store() {
    let Some(corpus) = common::sstables() else {
        return;
    };
    let entries = common::manifest(&corpus);
    assert!(
        entries.len() >= 800,
        "only {} manifest entries",
        entries.len()
    );
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let copied = common::copy_tree(&corpus, &data_dir);
    assert!(copied > entries.len(), "copied {copied} files");
    for e in &entries {
        assert_eq!(
            common::sha256_file(data_dir.join(&e.path)),
            e.sha256,
            "copy of {}",
            e.path
        );
    }

    let s3 = common::s3();
    let store = s3.store();
    let p = s3.unique_prefix("corpus");
    let host = layout::Layout::new(p.clone(), "cassandra-1.example.com", ":");
    let root = "/var/lib/cassandra/data";
    let key_of = |rel: &str| host.data_key(&format!("{root}/{rel}"));

    futures::stream::iter(&entries)
        .map(|e| {
            let (store, key, file) = (&store, key_of(&e.path), data_dir.join(&e.path));
            async move {
                let body = std::fs::read(&file).unwrap();
                store
                    .put(&key, Bytes::from(body.clone()), &data_meta(&body))
                    .await
                    .unwrap_or_else(|err| panic!("put {key}: {err}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    let listed: BTreeSet<(String, u64)> = store
        .list_all(&host.data_key(root))
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let want: BTreeSet<(String, u64)> = entries.iter().map(|e| (key_of(&e.path), e.size)).collect();
    assert_eq!(listed, want);

    futures::stream::iter(&entries)
        .map(|e| {
            let (store, key) = (&store, key_of(&e.path));
            async move {
                let got = get_all(store, &key).await;
                assert_eq!(common::sha256_bytes(&got), e.sha256, "{key}");
                let info = store.head(&key).await.unwrap().unwrap();
                assert_eq!(info.expected_md5(), Some(md5_hex(&got)), "{key}");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    let keys: Vec<String> = want.into_iter().map(|(k, _)| k).collect();
    assert_eq!(store.delete_many(keys).await.unwrap(), entries.len());
    assert!(s3.raw_keys(&p).await.is_empty());
}
