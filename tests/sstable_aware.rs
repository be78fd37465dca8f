//! Regression tests for issue #10's defects, each named after what went wrong, on a data
//! directory that behaves like a Cassandra 4.x node (real corpus files as SSTable
//! contents from the in-repo sample, so they run in any clone; transaction logs with real
//! checksums) against the real S3 server.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Running, S3};
use tablesnap::cassandra::{Record, RecordType};
use tablesnap::daemon::Config;
use tablesnap::layout::{self, Layout};

const HOST: &str = "node1.example.com";
const WAIT: Duration = Duration::from_secs(60);
const NB: &str = "legacy_tables/legacy_nb_simple-84180d72e04a3ae68cc91ac6cdffd3f3";

fn config(s3: &S3, prefix: &str, paths: Vec<PathBuf>) -> Config {
    let mut c = Config::new(s3.store_options(), Layout::new(prefix, HOST, ":"), paths);
    c.index_delay = Duration::from_millis(300);
    c
}

fn key(prefix: &str, path: &Path) -> String {
    Layout::new(prefix, HOST, ":").data_key(path.to_str().unwrap())
}

/// A transaction log record line as Cassandra writes it.
fn record(kind: RecordType, path: &str, n: i32) -> String {
    let mut r = Record::new(kind, path);
    r.num_files = n;
    format!("{r}\n")
}

fn append(p: &Path, s: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

/// The components of the corpus's nb SSTable, renamed to generation `g`: (name, bytes).
fn nb_components(root: &Path, g: u32) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(root.join(NB))
        .unwrap()
        .flatten()
        .map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (
                n.replacen("nb-1-", &format!("nb-{g}-"), 1),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    // Data.db first, TOC last, as a flush writes them.
    v.sort_by_key(|(n, _)| (!n.ends_with("Data.db"), n.ends_with("TOC.txt"), n.clone()));
    v
}

/// A complete flush of generation `g`: log with ADD, every component, COMMIT, log removed.
fn flush(root: &Path, dir: &Path, g: u32) -> Vec<String> {
    let log = dir.join(format!(
        "nb_txn_flush_{g:08x}-0a7f-11ef-9a2b-5b2d6c9d3a11.log"
    ));
    append(
        &log,
        &record(RecordType::Add, &format!("{}/nb-{g}-big", dir.display()), 8),
    );
    let mut names = vec![];
    for (n, b) in nb_components(root, g) {
        std::fs::write(dir.join(&n), b).unwrap();
        names.push(n);
    }
    append(&log, &record(RecordType::Commit, "", 0));
    std::fs::remove_file(&log).unwrap();
    names
}

/// `-r -a` with IN_CREATE listened to as well as the defaults: hard links (snapshots,
/// incremental backups) are backed up.
fn following_links(s3: &S3, prefix: &str, data: &Path) -> Config {
    let mut c = config(s3, prefix, vec![data.into()]);
    c.recursive = true;
    c.auto_add = true;
    c.events = tablesnap::watch::Events::parse(&[
        "IN_MOVED_TO".into(),
        "IN_CLOSE_WRITE".into(),
        "IN_CREATE".into(),
    ])
    .unwrap();
    c
}

async fn index_of(s3: &S3, prefix: &str, data: &Path) -> Option<BTreeSet<String>> {
    let body = s3.raw_get(&layout::index_key(&key(prefix, data))).await?;
    Some(
        layout::parse_listing(&body)
            .unwrap()
            .names
            .into_iter()
            .collect(),
    )
}

async fn wait_index(s3: &S3, prefix: &str, data: &Path) -> BTreeSet<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(i) = index_of(s3, prefix, data).await {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no index for {}",
            data.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Defect 1: a compaction writes its output under its final name, in bursts, while a flush
/// lands in the same table. The flush's index must not name the unfinished output, and not
/// one byte of the unfinished file may be uploaded; once the compaction commits, a new
/// index names its output and no longer the input it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_compaction_output_is_never_uploaded_nor_indexed() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("torn");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/events-5b608090e03d11ebb4c1d335f841c590");
    std::fs::create_dir_all(&table).unwrap();
    let gen5 = flush(&root, &table, 5);
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c.backup = true;
        c
    })
    .await;
    wait_index(&s3, &prefix, &table.join("nb-5-big-Data.db")).await;

    // The compaction of nb-5 into nb-7 starts: log first, then Data.db, written in bursts
    // and still open.
    let log = table.join("nb_txn_compaction_6e3b8a70-0a7f-11ef-9a2b-5b2d6c9d3a11.log");
    append(
        &log,
        &record(RecordType::Add, &format!("{}/nb-7-big", table.display()), 8),
    );
    append(
        &log,
        &record(
            RecordType::Remove,
            &format!("{}/nb-5-big", table.display()),
            8,
        ),
    );
    let comps7 = nb_components(&root, 7);
    let data7 = &comps7[0];
    assert!(data7.0.ends_with("Data.db"));
    let mut w = std::fs::File::create(table.join(&data7.0)).unwrap();
    let half = data7.1.len() / 2;
    w.write_all(&data7.1[..half]).unwrap();
    w.flush().unwrap();
    // Its other components, closed, and even its TOC (early-open writes them before the end).
    for (n, b) in &comps7[1..] {
        std::fs::write(table.join(n), b).unwrap();
    }
    // Meanwhile a flush of nb-6 lands.
    let gen6 = flush(&root, &table, 6);
    let idx6 = wait_index(&s3, &prefix, &table.join("nb-6-big-Data.db")).await;
    let want: BTreeSet<String> = gen5.iter().chain(gen6.iter()).cloned().collect();
    assert_eq!(idx6, want, "the flush's index names exactly nb-5 and nb-6");
    // A pause between bursts: nothing of the open Data.db reaches the bucket.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let k7 = key(&prefix, &table.join(&data7.0));
    assert_eq!(
        s3.raw_get(&k7).await,
        None,
        "half-written nb-7 Data.db was uploaded"
    );
    // Its closed components wait for the COMMIT too: the compaction may still abort.
    for (n, _) in &comps7 {
        let k = key(&prefix, &table.join(n));
        assert_eq!(s3.raw_get(&k).await, None, "{n} stored before its COMMIT");
    }
    for k in s3.raw_keys(&prefix).await {
        assert!(
            !k.0.ends_with(layout::INDEX_SUFFIX) || !k.0.contains("nb-7-"),
            "an index for the unfinished SSTable: {}",
            k.0
        );
    }

    // The compaction finishes and commits; its input goes away.
    w.write_all(&data7.1[half..]).unwrap();
    drop(w);
    append(&log, &record(RecordType::Commit, "", 0));
    // As Cassandra does after COMMIT: the inputs are deleted, then the log.
    for n in &gen5 {
        std::fs::remove_file(table.join(n)).unwrap();
    }
    std::fs::remove_file(&log).unwrap();
    let idx7 = wait_index(&s3, &prefix, &table.join(&data7.0)).await;
    let want: BTreeSet<String> = gen6
        .iter()
        .cloned()
        .chain(comps7.iter().map(|(n, _)| n.clone()))
        .collect();
    assert_eq!(
        idx7, want,
        "nb-7's index names nb-6 and nb-7, not the obsolete nb-5"
    );
    assert_eq!(
        s3.raw_get(&k7).await.as_deref(),
        Some(data7.1.as_slice()),
        "nb-7 Data.db stored whole"
    );
    // No transaction log was ever uploaded.
    assert!(
        s3.raw_keys(&prefix)
            .await
            .iter()
            .all(|(k, _)| !k.contains("_txn_")),
        "a transaction log was uploaded"
    );
    d.stop().await;
}

/// Defect 2: a snapshot directory that appears with its hard links already in it (what a
/// late watch or an overflow rescan finds) must not send the node again with default
/// events; nor may a restart with -B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_not_uploaded_again_with_default_events() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("snapshots");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/events-5b608090e03d11ebb4c1d335f841c590");
    std::fs::create_dir_all(&table).unwrap();
    let gen1 = flush(&root, &table, 1);
    let start = || {
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c.backup = true;
        c
    };
    let d = Running::start(start()).await;
    wait_index(&s3, &prefix, &table.join("nb-1-big-Data.db")).await;
    // nodetool snapshot: links made in a temporary place, the tag directory appears whole.
    let staging = table.join("snapshots/.tmp-tag");
    std::fs::create_dir_all(&staging).unwrap();
    for n in &gen1 {
        std::fs::hard_link(table.join(n), staging.join(n)).unwrap();
    }
    std::fs::write(staging.join("manifest.json"), b"{\"files\":[]}").unwrap();
    std::fs::rename(&staging, table.join("snapshots/1700000000000")).unwrap();
    // Another flush after it: once its index is there, the snapshot had its chance.
    flush(&root, &table, 2);
    wait_index(&s3, &prefix, &table.join("nb-2-big-Data.db")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = d.stop().await;
    // A restart with -B (the unit always starts with it) scans everything again.
    let d = Running::start(start()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s2 = d.stop().await;
    let snap: Vec<_> = s3
        .raw_keys(&prefix)
        .await
        .into_iter()
        .filter(|(k, _)| k.contains("/snapshots/"))
        .collect();
    assert!(snap.is_empty(), "snapshot bytes sent: {snap:?}");
    assert_eq!(s.files_uploaded, 16, "{s}");
    assert_eq!(s2.files_uploaded, 0, "{s2}");
}

/// Defect 2, the other half: with IN_CREATE listened to (how the original was told to
/// follow hard links), snapshot links are backed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_uploaded_when_in_create_is_listened_to() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("snapshots-increate");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/events-5b608090e03d11ebb4c1d335f841c590");
    std::fs::create_dir_all(table.join("snapshots/t1")).unwrap();
    let gen1 = flush(&root, &table, 1);
    for n in &gen1 {
        std::fs::hard_link(table.join(n), table.join("snapshots/t1").join(n)).unwrap();
    }
    let mut c = config(&s3, &prefix, vec![data.path().into()]);
    c.recursive = true;
    c.once = true;
    c.events = tablesnap::watch::Events::parse(&["IN_CREATE".into()]).unwrap();
    let s = tokio::time::timeout(WAIT, tablesnap::daemon::run(c, std::future::pending()))
        .await
        .unwrap()
        .unwrap();
    // The live files are sent, their snapshot links copied in the store (or sent, when a
    // link's upload started before its live file was stored).
    assert_eq!(s.files_uploaded + s.files_copied, 16, "{s}");
    for n in &gen1 {
        let k = key(&prefix, &table.join("snapshots/t1").join(n));
        assert_eq!(
            s3.raw_get(&k).await,
            Some(std::fs::read(table.join(n)).unwrap()),
            "{k}"
        );
    }
}

/// Defect 3: a table directory created while watched and then renamed keeps its watch:
/// files written into it afterwards are uploaded under the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_directory_stays_watched() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("renamedir");
    let data = tempfile::tempdir().unwrap();
    let ks = data.path().join("ks");
    std::fs::create_dir_all(&ks).unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c
    })
    .await;
    let t1 = ks.join("t1-5b608090e03d11ebb4c1d335f841c590");
    std::fs::create_dir(&t1).unwrap();
    flush(&root, &t1, 1);
    wait_index(&s3, &prefix, &t1.join("nb-1-big-Data.db")).await;
    let t2 = ks.join("t2-5b608090e03d11ebb4c1d335f841c590");
    std::fs::rename(&t1, &t2).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gen2 = flush(&root, &t2, 2);
    let idx = wait_index(&s3, &prefix, &t2.join("nb-2-big-Data.db")).await;
    assert!(gen2.iter().all(|n| idx.contains(n)), "{idx:?}");
    for n in &gen2 {
        assert!(
            s3.raw_get(&key(&prefix, &t2.join(n))).await.is_some(),
            "{n} not uploaded after the rename"
        );
    }
    d.stop().await;
}

/// Defect 4: the watched path is a symlink to the data directory (a mounted volume): the
/// daemon follows it like the original did, and keys keep the path as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_data_directory_is_watched() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("symlinkroot");
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("volume/data");
    let table = real.join("ks/t-5b608090e03d11ebb4c1d335f841c590");
    std::fs::create_dir_all(&table).unwrap();
    let link = tmp.path().join("cassandra-data");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![link.clone()]);
        c.recursive = true;
        c.auto_add = true;
        c
    })
    .await;
    assert!(d.is_running());
    flush(&root, &table, 3);
    let as_given = link.join("ks/t-5b608090e03d11ebb4c1d335f841c590/nb-3-big-Data.db");
    let idx = wait_index(&s3, &prefix, &as_given).await;
    assert_eq!(idx.len(), 8, "{idx:?}");
    d.stop().await;
}

/// With IN_CREATE listened to, a snapshot's hard links of SSTables already stored are
/// copied inside the store: same bytes and metadata, no byte sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_links_of_stored_files_are_copied_in_the_store() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("snapcopy");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/events-5b608090e03d11ebb4c1d335f841c590");
    std::fs::create_dir_all(&table).unwrap();
    let d = Running::start(following_links(&s3, &prefix, data.path())).await;
    let gen1 = flush(&root, &table, 1);
    wait_index(&s3, &prefix, &table.join("nb-1-big-Data.db")).await;
    let snap = table.join("snapshots/t1");
    std::fs::create_dir_all(&snap).unwrap();
    for n in &gen1 {
        std::fs::hard_link(table.join(n), snap.join(n)).unwrap();
    }
    wait_index(&s3, &prefix, &snap.join("nb-1-big-Data.db")).await;
    let s = d.stop().await;
    let live_bytes: u64 = gen1
        .iter()
        .map(|n| std::fs::metadata(table.join(n)).unwrap().len())
        .sum();
    assert_eq!(s.files_copied, 8, "{s}");
    assert_eq!(
        s.bytes_uploaded, live_bytes,
        "snapshot bytes were sent: {s}"
    );
    for n in &gen1 {
        let (a, b) = (key(&prefix, &table.join(n)), key(&prefix, &snap.join(n)));
        assert_eq!(s3.raw_get(&a).await, s3.raw_get(&b).await, "{b}");
        let (_, ma, _) = s3.raw_head(&a).await.unwrap();
        let (_, mb, _) = s3.raw_head(&b).await.unwrap();
        assert_eq!(ma, mb, "metadata of {b}");
        assert!(mb.contains_key("md5sum") && mb.contains_key("stat"));
    }
}

/// Issue #10, defect 12: an object deleted behind our back (tablechop, a lifecycle rule, a
/// person) still counted as stored, so later indexes named an object that was gone. A 404
/// met on the way (here: copying a snapshot link from it) forgets it, and the next index of
/// its directory stores it again before naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_found_missing_is_stored_again_before_an_index_names_it() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("foundmissing");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/events-5b608090e03d11ebb4c1d335f841c590");
    std::fs::create_dir_all(&table).unwrap();
    let d = Running::start(following_links(&s3, &prefix, data.path())).await;
    let gen1 = flush(&root, &table, 1);
    let data1 = table.join("nb-1-big-Data.db");
    wait_index(&s3, &prefix, &data1).await;
    // Someone deletes the live Data.db object.
    let k1 = key(&prefix, &data1);
    s3.store().delete(&k1).await.unwrap();
    // A snapshot links it: the copy from the deleted object meets a 404.
    let snap = table.join("snapshots/t1");
    std::fs::create_dir_all(&snap).unwrap();
    for n in &gen1 {
        std::fs::hard_link(table.join(n), snap.join(n)).unwrap();
    }
    let ks = key(&prefix, &snap.join("nb-1-big-Data.db"));
    let t0 = tokio::time::Instant::now();
    while s3.raw_get(&ks).await.is_none() {
        assert!(t0.elapsed() < WAIT, "the snapshot link was never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next flush's index names nb-1 again: it must have stored it again first.
    flush(&root, &table, 2);
    let idx = wait_index(&s3, &prefix, &table.join("nb-2-big-Data.db")).await;
    assert!(idx.contains("nb-1-big-Data.db"), "{idx:?}");
    assert_eq!(
        s3.raw_get(&k1).await,
        Some(std::fs::read(&data1).unwrap()),
        "the index names an object that is gone"
    );
    d.stop().await;
}
