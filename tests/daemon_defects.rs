//! Regression tests for issue #10's defects 6 to 14 (1 to 4 are in `sstable_aware.rs`;
//! 5, the order of two index writes of one directory, is `daemon::index`'s unit and
//! property tests), each named after what went wrong, against the real S3 server and on
//! `file://` destinations.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Running, S3};
use tablesnap::daemon::{self, Config, DaemonError};
use tablesnap::layout::{self, Layout};
use tablesnap::store::{PutMeta, StoreOptions};

const HOST: &str = "node1.example.com";
const WAIT: Duration = Duration::from_secs(60);

fn config(s3: &S3, prefix: &str, paths: Vec<PathBuf>) -> Config {
    let mut c = Config::new(s3.store_options(), Layout::new(prefix, HOST, ":"), paths);
    c.index_delay = Duration::from_millis(300);
    c
}

fn key(prefix: &str, path: &Path) -> String {
    Layout::new(prefix, HOST, ":").data_key(path.to_str().unwrap())
}

/// A small complete SSTable of generation `g`: Data.db of `len` bytes and a TOC.
fn sstable(dir: &Path, g: u32, len: usize, fill: u8) -> Vec<PathBuf> {
    let data = dir.join(format!("nb-{g}-big-Data.db"));
    std::fs::write(&data, vec![fill; len]).unwrap();
    let toc = dir.join(format!("nb-{g}-big-TOC.txt"));
    std::fs::write(&toc, b"Data.db\nTOC.txt\n").unwrap();
    vec![data, toc]
}

fn file_opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        destination: format!("file://{}", dir.display()),
        ..Default::default()
    }
}

async fn wait_key(s3: &S3, k: &str, within: Duration) -> bool {
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < within {
        if s3.raw_get(k).await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn once(cfg: Config) -> Result<daemon::Summary, DaemonError> {
    let mut cfg = cfg;
    cfg.once = true;
    tokio::time::timeout(WAIT, daemon::run(cfg, std::future::pending()))
        .await
        .expect("--once did not finish")
}

/// Defect 6: indexes started only when the whole file queue was empty, so under a backlog
/// (here: another table's files behind a slow link) a durable SSTable's restore point
/// waited for every other upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_does_not_wait_for_other_directories_backlog() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("backlog");
    let data = tempfile::tempdir().unwrap();
    let (a, b) = (data.path().join("ks/a-1"), data.path().join("ks/b-1"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.threads = 1;
        c.index_delay = Duration::from_millis(1500);
        c.upload.throttle = Some(Arc::new(tablesnap::throttle::Throttle::new(200 << 10)));
        c
    })
    .await;
    let bs = sstable(&b, 1, 100, 1);
    let kb = key(&prefix, &bs[0]);
    assert!(wait_key(&s3, &kb, WAIT).await, "b's Data.db");
    // Now a backlog of ~6 s in another table, while b's index is in its quiet period.
    let mut backlog = vec![];
    for g in 1..=12 {
        backlog.push(sstable(&a, g, 100 << 10, g as u8)[0].clone());
    }
    let ib = layout::index_key(&kb);
    assert!(
        wait_key(&s3, &ib, Duration::from_secs(20)).await,
        "b's index"
    );
    let last = key(&prefix, backlog.last().unwrap());
    assert!(
        s3.raw_get(&last).await.is_none(),
        "the backlog drained before b's index: the test proves nothing"
    );
    d.stop().await;
}

/// Defect 7a: an index made due during the shutdown drain (its Data.db finished uploading
/// after SIGTERM) was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_the_index_of_an_upload_it_finishes() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("drainindex");
    let data = tempfile::tempdir().unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.upload.throttle = Some(Arc::new(tablesnap::throttle::Throttle::new(400 << 10)));
        c.shutdown_timeout = Duration::from_secs(30);
        c
    })
    .await;
    // TOC first, so that only the Data.db is in flight when the shutdown comes.
    std::fs::write(data.path().join("nb-1-big-TOC.txt"), b"Data.db\nTOC.txt\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let f = data.path().join("nb-1-big-Data.db");
    std::fs::write(&f, vec![3u8; 1 << 20]).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let k = key(&prefix, &f);
    assert!(
        s3.raw_get(&k).await.is_none(),
        "uploaded before the shutdown"
    );
    let s = d.stop().await;
    assert_eq!(s.pending, 0, "{s}");
    assert_eq!(
        s3.raw_get(&k).await.map(|b| b.len()),
        Some(1 << 20),
        "Data.db finished in the drain"
    );
    let idx = s3
        .raw_get(&layout::index_key(&k))
        .await
        .expect("the index made due in the drain was dropped");
    let l = layout::parse_listing(&idx).unwrap();
    assert_eq!(l.names, ["nb-1-big-Data.db", "nb-1-big-TOC.txt"]);
}

/// Defect 7b / 13: with a crawling --max-bandwidth, SIGTERM ended the process long after
/// --shutdown-timeout, and the summary said both "still pending" and "failed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_honours_the_shutdown_timeout() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("stoptimeout");
    let data = tempfile::tempdir().unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.upload.throttle = Some(Arc::new(tablesnap::throttle::Throttle::new(100)));
        c.shutdown_timeout = Duration::from_secs(2);
        c
    })
    .await;
    std::fs::write(data.path().join("manifest.json"), vec![b'x'; 4000]).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = std::time::Instant::now();
    let s = d.stop().await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "stopped {took:?} after the request"
    );
    assert_eq!((s.pending, s.failures), (1, 0), "{s}");
}

/// Defect 8: READY came only after the endpoint answered (and after the whole -B LIST):
/// under systemd's Type=notify an endpoint down at boot had the daemon killed and
/// restarted forever. Readiness now means "watching".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_the_endpoint_is_down_at_boot() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("readydown");
    let data = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let opts = StoreOptions {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..s3.store_options()
    };
    let mut c = Config::new(
        opts,
        Layout::new(&prefix, HOST, ":"),
        vec![data.path().into()],
    );
    c.backup = true;
    let t0 = std::time::Instant::now();
    let d = tokio::time::timeout(Duration::from_secs(20), Running::start(c))
        .await
        .expect("not ready while the endpoint is down");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(d.is_running(), "a down endpoint must not stop the daemon");
    d.stop().await;
}

/// Defect 9: file:// destinations were written without fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_destinations_fsync_what_they_store() {
    let data = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    sstable(data.path(), 1, 1000, 7);
    let before = tablesnap::store::LOCAL_SYNCS.load(std::sync::atomic::Ordering::Relaxed);
    let c = Config::new(
        file_opts(dest.path()),
        Layout::new("", HOST, ":"),
        vec![data.path().into()],
    );
    let s = once(c).await.unwrap();
    assert_eq!((s.files_uploaded, s.indexes_written), (2, 1), "{s}");
    let after = tablesnap::store::LOCAL_SYNCS.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        after - before >= 3,
        "{} fsyncs for 3 objects",
        after - before
    );
}

/// Defect 11: one odd file name (a tab; on file:// a 250-byte name) made a whole table
/// unrestorable: its index failed forever. It is reported once and left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odd_file_name_does_not_make_its_table_unrestorable() {
    let s3 = common::s3();
    let data = tempfile::tempdir().unwrap();
    let files = sstable(data.path(), 1, 1000, 9);
    std::fs::write(data.path().join("junk\tx"), b"odd").unwrap();
    let long = "y".repeat(254);
    std::fs::write(data.path().join(&long), b"long").unwrap();
    // Settled (a scan takes other files once they have not changed for a moment).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for dest in ["s3", "file"] {
        let prefix = s3.unique_prefix("oddname");
        let d = tempfile::tempdir().unwrap();
        let opts = if dest == "s3" {
            s3.store_options()
        } else {
            file_opts(d.path())
        };
        let c = Config::new(
            opts,
            Layout::new(&prefix, HOST, ":"),
            vec![data.path().into()],
        );
        let r = once(c).await;
        assert!(
            matches!(r, Err(DaemonError::Incomplete { .. })),
            "{dest}: {r:?}"
        );
        let store = tablesnap::store::Store::open(&if dest == "s3" {
            s3.store_options()
        } else {
            file_opts(d.path())
        })
        .unwrap();
        let idx = store
            .get_bytes(&layout::index_key(&key(&prefix, &files[0])))
            .await
            .unwrap_or_else(|e| panic!("{dest}: no index: {e}"));
        let names = layout::parse_listing(&idx).unwrap().names;
        assert!(
            names.iter().any(|n| n == "nb-1-big-Data.db"),
            "{dest}: {names:?}"
        );
        assert!(!names.iter().any(|n| n.contains('\t')), "{dest}: {names:?}");
        // The 254-byte name: too long for some stores (object_store's file:// stages it
        // under a longer name). Named only if stored.
        let long_key = key(&prefix, &data.path().join(&long));
        let stored = store.head(&long_key).await.ok().flatten().is_some();
        assert_eq!(names.contains(&long), stored, "{dest}: the 254-byte name");
    }
}

/// Defect 12: an object deleted by someone else (tablechop, a lifecycle rule, a person)
/// still counted as stored until a restart; --rescan-interval re-lists and stores it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_deleted_behind_our_back_is_stored_again_by_the_rescan() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("deletedbehind");
    let data = tempfile::tempdir().unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.rescan_interval = Some(Duration::from_secs(2));
        c
    })
    .await;
    let files = sstable(data.path(), 1, 1000, 4);
    let k = key(&prefix, &files[1]);
    assert!(wait_key(&s3, &layout::index_key(&key(&prefix, &files[0])), WAIT).await);
    s3.store().delete(&k).await.unwrap();
    assert!(s3.raw_get(&k).await.is_none());
    assert!(
        wait_key(&s3, &k, Duration::from_secs(20)).await,
        "the deleted object was never stored again"
    );
    d.stop().await;
}

/// Defect 13: a FIFO where an SSTable should be made `open` block forever (wedging a
/// runtime thread, and SIGTERM with it). Files are opened non-blocking, checked on the
/// descriptor.
#[test]
fn a_fifo_is_refused_at_once_not_opened_for_ever() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nb-5-big-Data.db");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = p.clone();
    std::thread::spawn(move || {
        let _ = tx.send(tablesnap::upload::open_regular(&p2).map(|_| ()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("open of a FIFO blocked");
    let e = r.expect_err("a FIFO is not a data file");
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

/// Defect 13: a file name that is not UTF-8 was skipped by --once without a word (and
/// exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_fails_once_loudly() {
    use std::os::unix::ffi::OsStrExt;
    let data = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    sstable(data.path(), 1, 100, 1);
    std::fs::write(
        data.path()
            .join(std::ffi::OsStr::from_bytes(b"bad\xff-name")),
        b"x",
    )
    .unwrap();
    let c = Config::new(
        file_opts(dest.path()),
        Layout::new("", HOST, ":"),
        vec![data.path().into()],
    );
    let r = once(c).await;
    assert!(
        matches!(r, Err(DaemonError::Incomplete { failed: 1 })),
        "{r:?}"
    );
}

/// Defect 14: a replaced node reusing the host name restarts integer generations at 1. A
/// same-size object was taken as already stored (a restore returned the old node's data);
/// a different-size one was overwritten (the old node's restore points then named new
/// bytes). Both are refused, and the old objects stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_node_with_the_same_name_never_mixes_with_the_old_one() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("replacednode");
    let data = tempfile::tempdir().unwrap();
    let new = sstable(data.path(), 1, 1000, 0xaa);
    let other = data.path().join("nb-2-big-Data.db");
    std::fs::write(&other, vec![0xbbu8; 2000]).unwrap();
    std::fs::write(data.path().join("nb-2-big-TOC.txt"), b"Data.db\nTOC.txt\n").unwrap();
    // The old node's objects under the same keys: same size for nb-1, another for nb-2.
    let store = s3.store();
    let put = |p: &Path, body: Vec<u8>| {
        let k = key(&prefix, p);
        let store = store.clone();
        async move {
            let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(&body));
            let meta = PutMeta {
                content_type: None,
                user: vec![("md5sum", md5), ("stat", "{}".into())],
            };
            store.put(&k, body.into(), &meta).await.unwrap();
        }
    };
    put(&new[0], vec![0x11; 1000]).await;
    put(&other, vec![0x22; 1500]).await;
    // The new node's files were written after the old objects (here: an hour later).
    for f in [&new[0], &other] {
        let t = std::time::SystemTime::now() + Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let r = once(config(&s3, &prefix, vec![data.path().into()])).await;
    assert!(matches!(r, Err(DaemonError::Incomplete { .. })), "{r:?}");
    assert_eq!(
        s3.raw_get(&key(&prefix, &new[0])).await,
        Some(vec![0x11; 1000]),
        "same size: the old node's object must stay, and not count as this node's"
    );
    assert_eq!(
        s3.raw_get(&key(&prefix, &other)).await,
        Some(vec![0x22; 1500]),
        "another size: the old node's object must not be overwritten"
    );
    // No index names the other node's Data.db.
    for f in [&new[0], &other] {
        assert_eq!(s3.raw_get(&layout::index_key(&key(&prefix, f))).await, None);
    }
    // Asked explicitly, the operator gets it overwritten.
    let mut c = config(&s3, &prefix, vec![data.path().into()]);
    c.upload.overwrite_collisions = true;
    let s = once(c).await.unwrap();
    assert_eq!(s.files_uploaded, 2, "{s}");
    assert_eq!(
        s3.raw_get(&key(&prefix, &other)).await,
        Some(vec![0xbb; 2000])
    );
}

/// Defect 13: `--once` with an unreadable subdirectory exited 0, saying nothing. Root reads
/// every directory, so the binary runs as `nobody` here.
#[test]
fn once_names_an_unreadable_subdirectory_and_exits_1() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to run the binary as nobody");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    for d in [data.path(), bucket.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let ok = data.path().join("ks/ok-1");
    std::fs::create_dir_all(&ok).unwrap();
    sstable(&ok, 1, 100, 1);
    let closed = data.path().join("ks/closed-1");
    std::fs::create_dir_all(&closed).unwrap();
    sstable(&closed, 2, 100, 2);
    for d in [data.path().join("ks"), ok.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in std::fs::read_dir(&ok).unwrap().flatten() {
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tablesnap"))
        .args(["--once", "-r", "-n", "h"])
        .arg(format!("file://{}", bucket.path().display()))
        .arg(data.path())
        .env_clear()
        .env("HOME", "/tmp")
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("cannot read the directory") && l.contains("closed-1")),
        "{err}"
    );
    // The readable table is backed up all the same.
    let idx = bucket.path().join(
        layout::index_key(&format!("h:{}/nb-1-big-Data.db", ok.display())).trim_start_matches('/'),
    );
    assert!(idx.exists(), "{err}");
}

/// Shutdown with an SSTable that is not complete (its Data.db stored, no TOC yet): the
/// drain leaves its index to the next run instead of retrying it until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_spin_on_an_sstable_that_is_not_complete() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("drainunfinished");
    let data = tempfile::tempdir().unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.shutdown_timeout = Duration::from_secs(20);
        c
    })
    .await;
    let f = data.path().join("nb-1-big-Data.db");
    std::fs::write(&f, vec![1u8; 100]).unwrap();
    assert!(wait_key(&s3, &key(&prefix, &f), WAIT).await);
    let t0 = std::time::Instant::now();
    let s = d.stop().await;
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "the drain spun until the deadline: {:?} ({s})",
        t0.elapsed()
    );
    assert_eq!(
        s3.raw_get(&layout::index_key(&key(&prefix, &f))).await,
        None,
        "an index for an SSTable without its TOC"
    );
}
