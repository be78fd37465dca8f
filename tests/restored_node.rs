//! A node restored by tableslurp, then backed up again by a `-B` restart (issue #15, item 12:
//! "a restored node re-reads itself at every restart"). Restored files used to carry the
//! time of the restore as their mtime, so each looked modified long after its object was
//! stored: the replaced-node rule then read every file again to compare MD5s, 2 TB at every
//! restart of a 2 TB node. tableslurp now gives each restored file its object's
//! LastModified, and the restart reads no file data at all.
//!
//! One test in this binary: it measures the bytes this process reads (`/proc/self/io`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tablesnap::daemon::{self, Config};

const HOST: &str = "node1.example.com";
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const TABLE: &str = "ks/t-0123456789abcdef0123456789abcdef";
/// Bytes of each Data.db: 6 of them, 24 MiB in all.
const DATA_SIZE: usize = 4 << 20;

fn config(bucket: &Path, root: &Path, backup: bool) -> Config {
    let mut c = common::once_on_file(bucket, root, HOST);
    c.backup = backup;
    c
}

async fn once(c: Config) -> daemon::Summary {
    common::run_once(c).await
}

/// Bytes this process has read with read(2) and friends, page cache included.
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_node_is_not_read_again_at_its_restart() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let table = data.path().join(TABLE);
    std::fs::create_dir_all(&table).unwrap();
    for g in 1..=6u8 {
        let body: Vec<u8> = (0..DATA_SIZE).map(|i| (i as u8) ^ g).collect();
        std::fs::write(table.join(format!("nb-{g}-big-Data.db")), body).unwrap();
        std::fs::write(
            table.join(format!("nb-{g}-big-TOC.txt")),
            b"Data.db\nTOC.txt\n",
        )
        .unwrap();
    }
    let first = once(config(bucket.path(), data.path(), false)).await;
    assert_eq!(first.files_uploaded, 12, "{first}");

    // The backup is two days old: every object's LastModified (a file's mtime on file://).
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    for f in files_under(bucket.path()) {
        std::fs::File::open(&f)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
    }
    // The disk is lost; the node is restored to the same path.
    std::fs::remove_dir_all(&table).unwrap();
    let origin = table.to_str().unwrap();
    let (code, out) = common::run_bin(
        SLURP,
        &[
            "-n",
            HOST,
            &format!("file://{}", bucket.path().display()),
            origin,
            origin,
        ],
        &[],
    );
    assert_eq!(code, 0, "tableslurp: {out}");
    for g in 1..=6u8 {
        let restored = table.join(format!("nb-{g}-big-Data.db"));
        let m = std::fs::metadata(&restored).unwrap().modified().unwrap();
        let off = m
            .duration_since(two_days_ago)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_secs(2),
            "{} has mtime {m:?}",
            restored.display()
        );
    }

    // The restart over the restored node: nothing to send, and nothing to read.
    let before = bytes_read();
    let s = once(config(bucket.path(), data.path(), true)).await;
    let read = bytes_read() - before;
    assert_eq!(s.files_uploaded, 0, "{s}");
    assert!(
        read < (DATA_SIZE as u64) / 2,
        "the restart read {read} bytes of a node whose 6 Data.db files ({} bytes each) are stored: {s}",
        DATA_SIZE
    );
}
