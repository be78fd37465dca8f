//! Issue #15: the first `-B` backfill of a directory with N SSTables wrote 2,869 listings of
//! it (830 MB) for N = 2,000: an index started after `max_wait` while the backfill was still
//! uploading the directory, did the remaining uploads itself, and the Data.db files stored
//! meanwhile got the same listing PUT again under their keys; every key got a full PUT of
//! its own. The layout needs one `-listdir.json` per Data.db, but one listing does: written
//! once the directory's files are durable, PUT once and copied inside the store to the
//! other keys (on S3; on `file://` a copy would be a hard link sharing one LastModified,
//! so there each key is PUT). Counts only, no times.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tablesnap::daemon::{self, Config};
use tablesnap::layout::Layout;
use tablesnap::store::StoreOptions;

const HOST: &str = "node1.example.com";

/// A small real SSTable (every component, its TOC included).
fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/sstables/legacy_tables/legacy_nb_simple-84180d72e04a3ae68cc91ac6cdffd3f3")
}

/// `n` copies of the template under generations 1..=n in one table directory; returns it
/// and the names of the files.
fn table(root: &Path, n: usize) -> (PathBuf, BTreeSet<String>) {
    let dir = root.join("ks/t-84180d72e04a3ae68cc91ac6cdffd3f3");
    std::fs::create_dir_all(&dir).unwrap();
    let comps: Vec<(String, Vec<u8>)> = std::fs::read_dir(template())
        .unwrap()
        .flatten()
        .map(|e| {
            let n = e.file_name().into_string().unwrap();
            let c = n.strip_prefix("nb-1-big-").unwrap().to_string();
            (c, std::fs::read(e.path()).unwrap())
        })
        .collect();
    assert!(comps.iter().any(|(c, _)| c == "TOC.txt"));
    let mut names = BTreeSet::new();
    for g in 1..=n {
        for (c, body) in &comps {
            let name = format!("nb-{g}-big-{c}");
            std::fs::write(dir.join(&name), body).unwrap();
            names.insert(name);
        }
    }
    // Settled long ago, as a backfill finds them.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for n in &names {
        std::fs::File::options()
            .write(true)
            .open(dir.join(n))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    (dir, names)
}

fn config(bucket: &Path, root: &Path) -> Config {
    let opts = StoreOptions {
        destination: format!("file://{}", bucket.display()),
        ..Default::default()
    };
    let mut c = Config::new(opts, Layout::new("", HOST, ":"), vec![root.to_path_buf()]);
    // max_wait = 10 × 100 ms: far shorter than the backfill of the directory, as 10 s is
    // for a real one of thousands of SSTables.
    c.index_delay = Duration::from_millis(100);
    c.once = true;
    c.backup = true;
    c.recursive = true;
    c
}

/// Every `-listdir.json` below `dir` (a bucket directory).
fn index_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().into_string().unwrap();
        if n.ends_with("-listdir.json") {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_backfill_writes_one_listing_under_every_data_db_key() {
    const N: usize = 400;
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let (dir, names) = table(data.path(), N);
    let s = tokio::time::timeout(
        Duration::from_secs(300),
        daemon::run(config(bucket.path(), data.path()), std::future::pending()),
    )
    .await
    .expect("--once did not finish")
    .expect("--once failed");
    assert_eq!(s.files_uploaded, names.len() as u64, "{s}");

    let key = Layout::new("", HOST, ":").data_key(dir.to_str().unwrap());
    let stored_dir = bucket.path().join(key);
    let indexes = index_files(&stored_dir);
    // Every Data.db has its own index (the original's layout), and no extra restore point.
    let data_dbs: BTreeSet<&String> = names.iter().filter(|n| n.ends_with("Data.db")).collect();
    let expected: BTreeSet<PathBuf> = data_dbs
        .iter()
        .map(|n| stored_dir.join(format!("{n}-listdir.json")))
        .collect();
    assert_eq!(
        indexes.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "one index per Data.db, and nothing else (no tablesnap-<ms>-listdir.json)"
    );
    // Each names every SSTable of the directory.
    let want = serde_json::json!({ dir.to_str().unwrap(): names.iter().collect::<Vec<_>>() });
    for i in &indexes {
        let got: serde_json::Value = serde_json::from_slice(&std::fs::read(i).unwrap()).unwrap();
        assert_eq!(got, want, "{} does not name every SSTable", i.display());
    }
    // Each key written once: no listing PUT again over an index already written.
    assert_eq!(s.indexes_written, N as u64, "{s}");
    // One listing: a single write of the directory's index (no second one for Data.db
    // stored while a first ran), so one body, and the log says so.
    let bodies: BTreeSet<Vec<u8>> = indexes.iter().map(|i| std::fs::read(i).unwrap()).collect();
    assert_eq!(bodies.len(), 1);
}

/// The same against S3 (Garage): the copies are CopyObject, and keep what the layout asks
/// of an index (`Content-Type: application/json`, the exact body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_the_other_keys_are_copies_with_the_index_content_type() {
    const N: usize = 60;
    let s3 = common::s3();
    let prefix = s3.unique_prefix("backfill-copies");
    let data = tempfile::tempdir().unwrap();
    let (dir, names) = table(data.path(), N);
    let mut c = config(Path::new("/unused"), data.path());
    c.store = s3.store_options();
    c.layout = Layout::new(&prefix, HOST, ":");
    let s = tokio::time::timeout(
        Duration::from_secs(300),
        daemon::run(c, std::future::pending()),
    )
    .await
    .expect("--once did not finish")
    .expect("--once failed");
    assert_eq!(s.indexes_written, N as u64, "{s}");
    let dir_key = Layout::new(&prefix, HOST, ":").data_key(dir.to_str().unwrap());
    let keys: Vec<String> = s3
        .raw_keys(&prefix)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with("-listdir.json"))
        .collect();
    let expected: BTreeSet<String> = names
        .iter()
        .filter(|n| n.ends_with("Data.db"))
        .map(|n| format!("{dir_key}/{n}-listdir.json"))
        .collect();
    assert_eq!(keys.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let want = tablesnap::layout::listdir_json(
        dir.to_str().unwrap(),
        &names.iter().cloned().collect::<Vec<_>>(),
    );
    for k in &keys {
        let body = s3.raw_get(k).await.unwrap();
        assert_eq!(std::str::from_utf8(&body).unwrap(), want, "body of {k}");
        let (_, _, ct) = s3.raw_head(k).await.unwrap();
        assert_eq!(
            ct.as_deref(),
            Some("application/json"),
            "content type of {k}"
        );
    }
}
