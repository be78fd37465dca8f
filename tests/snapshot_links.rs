//! Snapshot and incremental-backup links after a restart (issue #15, item 9): a link of a
//! live file that is already stored is copied inside the store, not sent again, also when
//! the daemon did not upload the live file in this run (a restart), and also when the live
//! file is already gone (TRUNCATE and DROP snapshot the table, then delete every SSTable
//! right after linking). Before, 16 of 16 links of a snapshot taken after a restart were
//! sent again and 0 copied. On `file://`, so the stored bytes can be read back.

mod common;

use std::path::{Path, PathBuf};

use tablesnap::daemon::{self, Config};
use tablesnap::layout::Layout;

const HOST: &str = "node1.example.com";
const TABLE: &str = "ks/t-0123456789abcdef0123456789abcdef";

fn config(bucket: &Path, root: &Path) -> Config {
    let mut c = common::once_on_file(bucket, root, HOST);
    // IN_CREATE: snapshots and backups are followed (the hard links).
    c.events.create = true;
    c
}

async fn once(c: Config) -> daemon::Summary {
    common::run_once(c).await
}

fn object(bucket: &Path, path: &Path) -> PathBuf {
    bucket.join(Layout::new("", HOST, ":").data_key(path.to_str().unwrap()))
}

/// Four complete SSTables: 8 files.
fn table(root: &Path) -> (PathBuf, Vec<PathBuf>) {
    let dir = root.join(TABLE);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = vec![];
    for g in 1..=4 {
        let data = dir.join(format!("nb-{g}-big-Data.db"));
        std::fs::write(&data, vec![g as u8; 10_000 + g]).unwrap();
        let toc = dir.join(format!("nb-{g}-big-TOC.txt"));
        std::fs::write(&toc, b"Data.db\nTOC.txt\n").unwrap();
        files.extend([data, toc]);
    }
    (dir, files)
}

/// `nodetool snapshot`: hard links of every live file under snapshots/<tag>/.
fn snapshot(dir: &Path, tag: &str, files: &[PathBuf]) -> Vec<PathBuf> {
    let snap = dir.join("snapshots").join(tag);
    std::fs::create_dir_all(&snap).unwrap();
    files
        .iter()
        .map(|f| {
            let l = snap.join(f.file_name().unwrap());
            std::fs::hard_link(f, &l).unwrap();
            l
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_links_after_a_restart_are_copied_in_the_store_not_sent_again() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let (dir, files) = table(data.path());
    let first = once(config(bucket.path(), data.path())).await;
    assert_eq!(first.files_uploaded, 8, "{first}");

    // After the restart: a snapshot of the stored live files.
    let links = snapshot(&dir, "daily-1", &files);
    let s = once(config(bucket.path(), data.path())).await;
    assert_eq!(s.files_copied, 8, "{s}");
    assert_eq!(s.files_uploaded, 0, "{s}");
    for (f, l) in files.iter().zip(&links) {
        assert_eq!(
            std::fs::read(object(bucket.path(), l)).unwrap(),
            std::fs::read(f).unwrap(),
            "{}",
            l.display()
        );
    }

    // TRUNCATE: the auto-snapshot links every file, then every live SSTable is deleted,
    // all before the daemon runs again.
    let links = snapshot(&dir, "truncated-1764000000000-t", &files);
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for f in &files {
        std::fs::remove_file(f).unwrap();
    }
    let s = once(config(bucket.path(), data.path())).await;
    assert_eq!(s.files_copied, 8, "{s}");
    assert_eq!(s.files_uploaded, 0, "{s}");
    for (b, l) in bytes.iter().zip(&links) {
        assert_eq!(
            &std::fs::read(object(bucket.path(), l)).unwrap(),
            b,
            "{}",
            l.display()
        );
    }
}

/// A file in a snapshot that is not the stored live file (another inode, or another size:
/// a name Cassandra reused) is sent, never copied from the live key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_file_that_is_not_the_stored_live_file_is_sent() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let (dir, files) = table(data.path());
    once(config(bucket.path(), data.path())).await;
    let snap = dir.join("snapshots/other");
    std::fs::create_dir_all(&snap).unwrap();
    // The same name and size as the live Data.db but other bytes, and another inode
    // (two links, so it is taken as a hard link).
    let fake = snap.join("nb-1-big-Data.db");
    std::fs::write(&fake, vec![0xAAu8; 10_001]).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::hard_link(&fake, outside.path().join("elsewhere")).unwrap();
    std::fs::hard_link(&files[1], snap.join("nb-1-big-TOC.txt")).unwrap();
    let s = once(config(bucket.path(), data.path())).await;
    assert_eq!(
        std::fs::read(object(bucket.path(), &fake)).unwrap(),
        vec![0xAAu8; 10_001]
    );
    assert_eq!(
        s.files_copied, 1,
        "only the TOC is a link of a stored file: {s}"
    );
}
