//! tablechop over a node's life (issue #15, items 7 and 9), through the real binaries on a
//! `file://` bucket, where an object's LastModified is its file's mtime:
//! * run beside the daemon, `tablechop BUCKET PATH 0` never deletes an object stored after
//!   its directory's newest index (the daemon is about to name it), so the next index names
//!   only objects that are there;
//! * a cleared snapshot (`snapshots/<tag>/`) expires by age like any other directory, while
//!   the live table keeps its newest index whatever its age.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tablesnap::daemon::{self, Config};
use tablesnap::layout::Layout;

const HOST: &str = "node1.example.com";
const CHOP: &str = env!("CARGO_BIN_EXE_tablechop");
const TABLE: &str = "ks/t-0123456789abcdef0123456789abcdef";

fn config(bucket: &Path, root: &Path, create: bool) -> Config {
    let mut c = common::once_on_file(bucket, root, HOST);
    c.events.create = create;
    c
}

async fn once(c: Config) -> daemon::Summary {
    common::run_once(c).await
}

fn object(bucket: &Path, path: &Path) -> PathBuf {
    bucket.join(Layout::new("", HOST, ":").data_key(path.to_str().unwrap()))
}

fn sstable(dir: &Path, g: u32) -> Vec<PathBuf> {
    let data = dir.join(format!("nb-{g}-big-Data.db"));
    std::fs::write(&data, format!("data {g}")).unwrap();
    let toc = dir.join(format!("nb-{g}-big-TOC.txt"));
    std::fs::write(&toc, b"Data.db\nTOC.txt\n").unwrap();
    vec![data, toc]
}

fn age(files: impl IntoIterator<Item = PathBuf>, days: u64) {
    let t = SystemTime::now() - Duration::from_secs(days * 86_400);
    for f in files {
        std::fs::File::open(&f).unwrap().set_modified(t).unwrap();
    }
}

fn chop(bucket: &Path, path: &Path, days: &str) -> String {
    let (code, out) = common::run_bin(
        CHOP,
        &[
            "-n",
            HOST,
            &format!("file://{}", bucket.display()),
            path.to_str().unwrap(),
            days,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablechop_0_beside_the_daemon_keeps_what_the_next_index_will_name() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let dir = data.path().join(TABLE);
    std::fs::create_dir_all(&dir).unwrap();
    let first = sstable(&dir, 1);
    once(config(bucket.path(), data.path(), false)).await;
    // The backup is two days old; then the daemon stores a new SSTable's files, and
    // tablechop runs before the daemon writes the index that names them.
    let all: Vec<PathBuf> = walk(bucket.path());
    age(all, 2);
    let second = sstable(&dir, 2);
    for f in &second {
        let o = object(bucket.path(), f);
        std::fs::copy(f, &o).unwrap();
    }
    chop(bucket.path(), data.path(), "0");
    for f in first.iter().chain(&second) {
        assert!(
            object(bucket.path(), f).exists(),
            "{} was deleted",
            f.display()
        );
    }
    // The next index names both SSTables, all of whose objects are there.
    once(config(bucket.path(), data.path(), false)).await;
    for f in first.iter().chain(&second) {
        assert!(object(bucket.path(), f).exists(), "{} missing", f.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleared_snapshot_expires_by_age_and_the_live_table_keeps_its_newest_index() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let dir = data.path().join(TABLE);
    std::fs::create_dir_all(&dir).unwrap();
    let live = sstable(&dir, 1);
    let snap = dir.join("snapshots/daily-1");
    std::fs::create_dir_all(&snap).unwrap();
    let links: Vec<PathBuf> = live
        .iter()
        .map(|f| {
            let l = snap.join(f.file_name().unwrap());
            std::fs::hard_link(f, &l).unwrap();
            l
        })
        .collect();
    once(config(bucket.path(), data.path(), true)).await;
    let snap_objects: Vec<PathBuf> = walk(&object(bucket.path(), &snap));
    assert_eq!(
        snap_objects.len(),
        3,
        "2 files and the snapshot's index: {snap_objects:?}"
    );
    // `nodetool clearsnapshot`, then 30 days without a flush.
    std::fs::remove_dir_all(&snap).unwrap();
    age(walk(bucket.path()), 30);
    let out = chop(bucket.path(), data.path(), "7");
    for o in &snap_objects {
        assert!(!o.exists(), "{} kept: {out}", o.display());
    }
    for f in &live {
        assert!(
            object(bucket.path(), f).exists(),
            "{} deleted: {out}",
            f.display()
        );
    }
    let index = tablesnap::layout::index_key(
        &Layout::new("", HOST, ":").data_key(live[0].to_str().unwrap()),
    );
    assert!(
        bucket.path().join(index).exists(),
        "the live table's only index was deleted: {out}"
    );
    let _ = links;
}

/// Item 11: after tablechop kept a table's newest index only, a `-B --once` restart took
/// every SSTable whose own index was gone as "never indexed" and wrote an index for each (11
/// full listings for 12 SSTables). An index deleted by retention is older than the kept
/// newest one, which names everything: the restart writes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_tablechop_does_not_write_an_index_per_sstable() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let dir = data.path().join(TABLE);
    std::fs::create_dir_all(&dir).unwrap();
    for g in 1..=12 {
        let files = sstable(&dir, g);
        age(files, 2);
    }
    let first = once(config(bucket.path(), data.path(), false)).await;
    assert!(first.indexes_written >= 1, "{first}");
    // The backup is two days old, the indexes a little younger than their SSTables.
    let t = SystemTime::now() - Duration::from_secs(2 * 86_400);
    for o in walk(bucket.path()) {
        let idx = o
            .to_string_lossy()
            .ends_with(tablesnap::layout::INDEX_SUFFIX);
        let at = if idx { t + Duration::from_secs(60) } else { t };
        std::fs::File::open(&o).unwrap().set_modified(at).unwrap();
    }
    // Make one index the newest, as the last one written is.
    let indexes = |b: &Path| -> Vec<PathBuf> {
        walk(b)
            .into_iter()
            .filter(|o| {
                o.to_string_lossy()
                    .ends_with(tablesnap::layout::INDEX_SUFFIX)
            })
            .collect()
    };
    let newest = indexes(bucket.path()).into_iter().max().unwrap();
    std::fs::File::open(&newest)
        .unwrap()
        .set_modified(t + Duration::from_secs(120))
        .unwrap();
    let out = chop(bucket.path(), data.path(), "1");
    assert_eq!(indexes(bucket.path()), vec![newest.clone()], "{out}");

    let again = once(config(bucket.path(), data.path(), false)).await;
    assert_eq!(again.indexes_written, 0, "{again}");
    assert_eq!(indexes(bucket.path()), vec![newest], "{again}");
    assert_eq!(again.files_uploaded, 0, "{again}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
