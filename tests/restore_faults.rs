//! Injected faults in the download path, through the library (no S3 mock: the bucket is a
//! real file:// destination): a download cut short is caught by the size/MD5 check, retried,
//! and never appears under its final name.

mod restore_util;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use restore_util::*;
use tablesnap::layout::Layout;
use tablesnap::restore::{self, ExecOptions, Quiet, RestoreOptions, Selection};
use tablesnap::store::Store;

fn setup(target: &std::path::Path) -> (Cleanup, Store, RestoreOptions, Vec<u8>) {
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let dir = "/d/ks/t-1";
    // Big enough to arrive in several chunks.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    w.put_data(&format!("{dir}/nb-1-big-Data.db"), &body, 0o100644);
    w.put_index(dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
    let store = Store::open(&opts).unwrap();
    let ro = RestoreOptions {
        layout: Layout::new(c.prefix.clone(), HOST, ":"),
        origin: dir.into(),
        target: target.to_path_buf(),
        selection: Selection::Newest,
        as_of: None,
        commitlogs: None,
        commitlog_target: None,
        mapping: Default::default(),
        keep_generations: false,
    };
    (c, store, ro, body)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn exec_with(fail_first: u32, calls: Arc<AtomicU32>) -> ExecOptions {
    ExecOptions {
        retry_pause: std::time::Duration::from_millis(1),
        fault: Some(Arc::new(move |_key: &str, attempt: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            (attempt <= fail_first).then_some(1000)
        })),
        ..Default::default()
    }
}

#[test]
fn truncated_downloads_are_retried_then_succeed() {
    let t = tempfile::tempdir().unwrap();
    let (_c, store, ro, body) = setup(t.path());
    rt().block_on(async {
        let plan = restore::prepare(&store, &ro, 4).await.unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let r = restore::execute(&store, &plan, &exec_with(2, calls.clone()), &Quiet).await;
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            std::fs::read(t.path().join("nb-1-big-Data.db")).unwrap(),
            body
        );
        assert_eq!(tree(t.path()).len(), 1, "no temp file left");
    });
}

#[test]
fn always_truncated_gives_up_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (_c, store, ro, _) = setup(t.path());
    rt().block_on(async {
        let plan = restore::prepare(&store, &ro, 4).await.unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let r = restore::execute(&store, &plan, &exec_with(99, calls.clone()), &Quiet).await;
        assert_eq!(r.failures.len(), 1);
        let msg = r.failures[0].1.to_string();
        assert!(
            msg.contains("gave up after 5 attempts") && msg.contains("size 1000"),
            "{msg}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert!(tree(t.path()).is_empty(), "{:?}", tree(t.path()));
    });
}

#[test]
fn large_objects_come_in_parallel_ranges_and_verify() {
    let t = tempfile::tempdir().unwrap();
    let (_c, store, ro, body) = setup(t.path());
    rt().block_on(async {
        let plan = restore::prepare(&store, &ro, 4).await.unwrap();
        // 3 MB object, 256 KiB ranges: 12 ranged GETs written at their offsets, hashed in
        // order behind them.
        let e = ExecOptions {
            range_threshold: 1 << 20,
            range_size: 256 << 10,
            ..Default::default()
        };
        let r = restore::execute(&store, &plan, &e, &Quiet).await;
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!(
            std::fs::read(t.path().join("nb-1-big-Data.db")).unwrap(),
            body
        );

        // A corrupted large object is caught by the in-order MD5 too: same size, one bit
        // flipped, the md5sum metadata of the good bytes.
        let mut bad = body.clone();
        bad[2_000_000] ^= 1;
        // (`store`, not the writer's: a client's pooled connections belong to the runtime
        // that opened them.)
        store
            .put(
                &ro.layout.data_key("/d/ks/t-1/nb-1-big-Data.db"),
                bytes::Bytes::from(bad),
                &tablesnap::store::PutMeta {
                    content_type: None,
                    user: vec![(tablesnap::layout::META_MD5, md5_hex(&body))],
                },
            )
            .await
            .unwrap();
        let t2 = tempfile::tempdir().unwrap();
        let ro2 = RestoreOptions {
            target: t2.path().to_path_buf(),
            ..ro
        };
        let plan = restore::prepare(&store, &ro2, 4).await.unwrap();
        let e = ExecOptions {
            retry_pause: std::time::Duration::from_millis(1),
            ..e
        };
        let r = restore::execute(&store, &plan, &e, &Quiet).await;
        assert_eq!(r.failures.len(), 1);
        assert!(r.failures[0].1.to_string().contains("MD5"));
        assert!(tree(t2.path()).is_empty());
    });
}

/// The object shrinks while it is being downloaded (replaced by a shorter one on the same
/// inode): the store's reader then returns empty chunks forever. Before the fix this hung
/// at 100 % CPU with a temp file left; now it fails after a bounded number of attempts and
/// leaves nothing, on the single-stream path and on the ranged path.
#[test]
fn an_object_shrinking_mid_download_fails_bounded_and_leaves_no_temp_file() {
    for ranged in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (opts, c) = file_dest();
        let w = Writer::new(&opts, &c);
        let dir = "/d/ks/t-1";
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let key = w.put_data(&format!("{dir}/nb-1-big-Data.db"), &body, 0o100644);
        w.put_index(dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
        let store = Store::open(&opts).unwrap();
        let ro = RestoreOptions {
            layout: Layout::new(c.prefix.clone(), HOST, ":"),
            origin: dir.into(),
            target: t.path().to_path_buf(),
            selection: Selection::Newest,
            as_of: None,
            commitlogs: None,
            commitlog_target: None,
            mapping: Default::default(),
            keep_generations: false,
        };
        let obj = object_file(&c, &key);
        let obj_now = obj.clone();
        let shrunk = Arc::new(AtomicU32::new(0));
        let s2 = shrunk.clone();
        let e = ExecOptions {
            retry_pause: std::time::Duration::from_millis(1),
            range_threshold: if ranged { 1 << 20 } else { u64::MAX },
            range_size: 256 << 10,
            chunk_hook: Some(Arc::new(move |_k: &str, _at: u64| {
                // Ranged: the parallel ranges may all have read their bytes before the first
                // chunk reaches this hook, so that path is shrunk before execute (below).
                if !ranged && s2.fetch_add(1, Ordering::SeqCst) == 0 {
                    // 3 MB to 100 KB, under the open reader.
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&obj)
                        .unwrap()
                        .set_len(100_000)
                        .unwrap();
                }
            })),
            ..Default::default()
        };
        rt().block_on(async {
            let plan = restore::prepare(&store, &ro, 4).await.unwrap();
            if ranged {
                // The plan says 3 MB; the object is now 100 KB: ranges past the end come
                // back empty.
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&obj_now)
                    .unwrap()
                    .set_len(100_000)
                    .unwrap();
                shrunk.fetch_add(1, Ordering::SeqCst);
            }
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                restore::execute(&store, &plan, &e, &Quiet),
            )
            .await
            .unwrap_or_else(|_| panic!("ranged={ranged}: the download did not end"));
            assert_eq!(r.failures.len(), 1, "ranged={ranged}");
            let msg = r.failures[0].1.to_string();
            assert!(msg.contains("gave up after 5 attempts"), "{msg}");
            assert!(tree(t.path()).is_empty(), "{:?}", tree(t.path()));
        });
        assert!(shrunk.load(Ordering::SeqCst) > 0, "the hook ran");
    }
}

/// A large Data.db with a CRC-32 Digest, fetched as parallel ranges: each range is hashed
/// as it arrives and the CRCs are combined in order. The good bytes restore; one flipped
/// byte (md5sum of the flipped bytes, as a corrupt disk would give) is named by its Digest.
#[test]
fn large_data_db_is_checked_by_its_digest_across_ranges() {
    for corrupt in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (opts, c) = file_dest();
        let w = Writer::new(&opts, &c);
        let dir = "/d/ks/t-1";
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let crc = {
            let mut h = crc32fast::Hasher::new();
            h.update(&body);
            h.finalize()
        };
        let mut stored = body.clone();
        if corrupt {
            stored[2_500_000] ^= 0x10;
        }
        w.put_data(&format!("{dir}/nb-1-big-Data.db"), &stored, 0o100644);
        w.put_data(
            &format!("{dir}/nb-1-big-Digest.crc32"),
            crc.to_string().as_bytes(),
            0o100644,
        );
        let names = vec![
            "nb-1-big-Data.db".to_string(),
            "nb-1-big-Digest.crc32".to_string(),
        ];
        w.put_index(dir, "nb-1-big-Data.db", &names);
        let store = Store::open(&opts).unwrap();
        let ro = RestoreOptions {
            layout: Layout::new(c.prefix.clone(), HOST, ":"),
            origin: dir.into(),
            target: t.path().to_path_buf(),
            selection: Selection::Newest,
            as_of: None,
            commitlogs: None,
            commitlog_target: None,
            mapping: Default::default(),
            keep_generations: false,
        };
        let e = ExecOptions {
            range_threshold: 1 << 20,
            range_size: 256 << 10,
            ..Default::default()
        };
        rt().block_on(async {
            let plan = restore::prepare(&store, &ro, 4).await.unwrap();
            assert!(plan.tables[0].files[0].digest().is_some());
            let r = restore::execute(&store, &plan, &e, &Quiet).await;
            if corrupt {
                assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
                let msg = r.failures[0].1.to_string();
                assert!(msg.contains("does not match its Digest"), "{msg}");
                assert!(!t.path().join("nb-1-big-Data.db").exists());
            } else {
                assert!(r.ok(), "{:?}", r.failures);
                assert_eq!(
                    std::fs::read(t.path().join("nb-1-big-Data.db")).unwrap(),
                    body
                );
            }
        });
    }
}
