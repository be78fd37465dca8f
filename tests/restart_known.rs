//! A `-B` restart with the compact known-stored set (issue #10, "memory that does not grow
//! with the node"): the startup LIST is streamed into a per-directory set and the scan
//! leaves files already stored out of the queue. These tests pin what must not change with
//! it: nothing stored is sent again, and whatever is missing, changed or unindexed still is.
//! On `file://`, so that the bucket's bytes can be read and changed directly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tablesnap::daemon::{self, Config};
use tablesnap::layout::{self, Layout};
use tablesnap::store::StoreOptions;

const HOST: &str = "node1.example.com";

fn config(bucket: &Path, paths: Vec<PathBuf>, backup: bool) -> Config {
    let opts = StoreOptions {
        destination: format!("file://{}", bucket.display()),
        ..Default::default()
    };
    let mut c = Config::new(opts, Layout::new("", HOST, ":"), paths);
    c.index_delay = Duration::from_millis(100);
    c.once = true;
    c.recursive = true;
    c.backup = backup;
    c
}

/// Where the object of local `path` lives in the bucket.
fn object(bucket: &Path, path: &Path) -> PathBuf {
    let key = Layout::new("", HOST, ":").data_key(path.to_str().unwrap());
    bucket.join(key)
}

async fn once(c: Config) -> daemon::Summary {
    tokio::time::timeout(
        Duration::from_secs(60),
        daemon::run(c, std::future::pending()),
    )
    .await
    .expect("--once did not finish")
    .expect("--once failed")
}

/// `tables` tables of `n` complete SSTables (Data.db + TOC.txt) each.
fn tree(root: &Path, tables: usize, n: usize) -> Vec<PathBuf> {
    let mut files = vec![];
    for t in 0..tables {
        let dir = root.join(format!("ks/t{t}-0123456789abcdef0123456789abcdef"));
        std::fs::create_dir_all(&dir).unwrap();
        for g in 1..=n {
            let data = dir.join(format!("nb-{g}-big-Data.db"));
            std::fs::write(&data, format!("data {t} {g}")).unwrap();
            let toc = dir.join(format!("nb-{g}-big-TOC.txt"));
            std::fs::write(&toc, b"Data.db\nTOC.txt\n").unwrap();
            files.extend([data, toc]);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_a_stored_tree_sends_nothing_again() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let files = tree(data.path(), 3, 40);
    let first = once(config(bucket.path(), vec![data.path().into()], false)).await;
    assert_eq!(first.files_uploaded, files.len() as u64, "{first}");
    assert_eq!(first.indexes_written, 3 * 40, "{first}");
    let before: Vec<_> = files
        .iter()
        .map(|p| {
            std::fs::metadata(object(bucket.path(), p))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    let s = once(config(bucket.path(), vec![data.path().into()], true)).await;
    assert_eq!(
        (
            s.files_uploaded,
            s.files_present,
            s.indexes_written,
            s.failures
        ),
        (0, files.len() as u64, 0, 0),
        "{s}"
    );
    for (p, t) in files.iter().zip(before) {
        let now = std::fs::metadata(object(bucket.path(), p))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(now, t, "{} was stored again", p.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_stores_what_is_missing_changed_or_unindexed() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let files = tree(data.path(), 2, 5);
    once(config(bucket.path(), vec![data.path().into()], false)).await;
    let t0 = files[0].parent().unwrap().to_path_buf();
    let t1 = files.last().unwrap().parent().unwrap().to_path_buf();
    // A file that is not an SSTable's, changed size since it was stored.
    let other = t1.join("notes.txt");
    std::fs::write(&other, b"v1").unwrap();
    let old = filetime(&other, 1_600_000_000);
    once(config(bucket.path(), vec![data.path().into()], false)).await;
    // Deleted from the bucket by someone else: stored again, and indexed.
    let gone = t0.join("nb-2-big-Data.db");
    std::fs::remove_file(object(bucket.path(), &gone)).unwrap();
    // An index deleted (see below).
    let unindexed = t1.join("nb-4-big-Data.db");
    let index =
        layout::index_key(&Layout::new("", HOST, ":").data_key(unindexed.to_str().unwrap()));
    std::fs::remove_file(bucket.path().join(&index)).unwrap();
    std::fs::write(&other, b"version 2").unwrap();
    filetime(&other, old);
    // A new SSTable nobody stored yet.
    std::fs::write(t1.join("nb-9-big-Data.db"), b"new").unwrap();
    std::fs::write(t1.join("nb-9-big-TOC.txt"), b"Data.db\nTOC.txt\n").unwrap();

    let s = once(config(bucket.path(), vec![data.path().into()], true)).await;
    assert_eq!(s.failures, 0, "{s}");
    assert_eq!(
        s.files_uploaded, 4,
        "Data.db gone, notes.txt changed, nb-9's two: {s}"
    );
    assert_eq!(s.files_present, files.len() as u64 - 1, "{s}");
    assert_eq!(
        std::fs::read(object(bucket.path(), &gone)).unwrap(),
        b"data 0 2"
    );
    assert_eq!(
        std::fs::read(object(bucket.path(), &other)).unwrap(),
        b"version 2"
    );
    let listed = |k: &str| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bucket.path().join(k)).unwrap()).unwrap();
        let mut names: Vec<String> = v
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    // The index deleted is written again only if no index of its directory is as new as
    // its Data.db's object (tablechop deletes superseded indexes: issue #15 item 11); either
    // way the directory's newest restore point names nb-4, and the new nb-9.
    let dir_obj = object(bucket.path(), &t1);
    let newest = std::fs::read_dir(&dir_obj)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(layout::INDEX_SUFFIX)
        })
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .unwrap();
    let rel = newest
        .path()
        .strip_prefix(bucket.path())
        .unwrap()
        .to_path_buf();
    let names = listed(rel.to_str().unwrap());
    assert!(names.contains(&"nb-4-big-Data.db".to_string()), "{names:?}");
    assert!(names.contains(&"nb-9-big-Data.db".to_string()), "{names:?}");
    let _ = index;
    let gone_index =
        layout::index_key(&Layout::new("", HOST, ":").data_key(gone.to_str().unwrap()));
    assert!(listed(&gone_index).contains(&"nb-2-big-Data.db".to_string()));
    let new_index = layout::index_key(
        &Layout::new("", HOST, ":").data_key(t1.join("nb-9-big-Data.db").to_str().unwrap()),
    );
    assert!(listed(&new_index).contains(&"nb-9-big-TOC.txt".to_string()));
}

/// Sets the file's mtime (seconds); returns the value set.
fn filetime(p: &Path, secs: i64) -> i64 {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs as u64);
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
    secs
}

/// Indexes of the same second that name different sets, as the original tablesnap wrote
/// them (one per `Data.db` as it was uploaded, each the listing of that moment: nb-g's
/// index names nb-1 to nb-g) and as a restart within the second of the last write leaves
/// them. The restart took the greatest name as the newest (`nb-9` > `nb-40`): the listing
/// of nb-9's moment, so every SSTable after it looked like the node's earlier timeline: read
/// again to compare its MD5 or, with no MD5 stored, stored again beside a superseded copy
/// (62 of 80 files here). The newest is the one tableslurp restores: nb-40's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_same_second_indexes_takes_the_one_tableslurp_restores() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let files = tree(data.path(), 1, 40);
    let first = once(config(bucket.path(), vec![data.path().into()], false)).await;
    assert_eq!(first.files_uploaded, files.len() as u64, "{first}");
    let dir = files[0].parent().unwrap();
    // One second, after every object was stored (as the original's indexes follow their
    // Data.db).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let second = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(now + 1);
    for g in 1..=40 {
        let names: Vec<String> = (1..=g)
            .flat_map(|s| [format!("nb-{s}-big-Data.db"), format!("nb-{s}-big-TOC.txt")])
            .collect();
        let index = object(
            bucket.path(),
            &dir.join(format!("nb-{g}-big-Data.db-listdir.json")),
        );
        std::fs::write(&index, layout::listdir_json(dir.to_str().unwrap(), &names)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&index)
            .unwrap()
            .set_modified(second)
            .unwrap();
    }
    // Objects without tablesnap's metadata (the original's bucket copied by a tool that
    // drops it, or written by another): a name the restore point does not name is then
    // stored again, since nothing proves it holds the same bytes.
    let before: Vec<_> = files
        .iter()
        .map(|p| {
            let o = object(bucket.path(), p);
            let b = std::fs::read(&o).unwrap();
            std::fs::remove_file(&o).unwrap();
            std::fs::write(&o, &b).unwrap();
            b
        })
        .collect();
    let s = once(config(bucket.path(), vec![data.path().into()], true)).await;
    assert_eq!(
        (
            s.files_uploaded,
            s.files_superseded,
            s.files_present,
            s.failures
        ),
        (0, 0, files.len() as u64, 0),
        "{s}"
    );
    for (p, b) in files.iter().zip(before) {
        assert_eq!(std::fs::read(object(bucket.path(), p)).unwrap(), b);
    }
    let copies = std::fs::read_dir(object(bucket.path(), dir))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(layout::SUPERSEDED_PREFIX)
        })
        .count();
    assert_eq!(copies, 0, "superseded copies of live SSTables");
}
