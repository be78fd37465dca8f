//! tablesnap checks each `Data.db` against its SSTable's own Digest (Cassandra's checksum)
//! in the read it already makes for MD5 (issue #11): a file corrupt on the node's disk is
//! logged and counted, and still uploaded, since it is the node's real state. Real SSTables
//! from the in-repo sample (`testdata/sstables`), one of each Digest algorithm.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Running;
use tablesnap::daemon::Config;
use tablesnap::layout::{self, Layout};
use tablesnap::store::StoreOptions;

/// Copies a sample table into `dst` and flips one byte in the middle of each of its
/// Data.db files. Returns the corrupted Data.db files and their new bytes.
fn corrupt_copy(table: &str, dst: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let src = common::sample_sstables().join(table);
    std::fs::create_dir_all(dst).unwrap();
    let mut data = vec![];
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut bytes = std::fs::read(e.path()).unwrap();
        if name.ends_with("-Data.db") {
            let i = bytes.len() / 2;
            bytes[i] ^= 0x01;
            data.push((dst.join(&name), bytes.clone()));
        }
        std::fs::write(dst.join(&name), &bytes).unwrap();
    }
    assert!(!data.is_empty(), "no Data.db in {table}");
    data
}

fn file_opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        destination: format!("file://{}", dir.display()),
        ..Default::default()
    }
}

/// One byte flipped on the local disk before upload: `tablesnap --once` names the file as
/// corrupt on this disk (CRC-32, Adler-32 and SHA-1 tables alike), stores it anyway and
/// exits 0; an intact table next to it is not reported.
#[test]
fn a_data_db_corrupt_on_this_disk_is_reported_and_still_stored() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let mut corrupt = vec![];
    for t in [
        "legacy_tables/legacy_nb_simple-84180d72e04a3ae68cc91ac6cdffd3f3",
        "legacy_tables/legacy_ka_simple-5edea35d664539748ab2b705f09f5306",
        "Keyspace1/legacyleveled-705a7289d1f8384095e5b5e02fb2df7f",
    ] {
        corrupt.extend(corrupt_copy(t, &data.path().join(t)));
    }
    let intact = common::sample_sstables()
        .join("legacy_tables/legacy_oa_simple-3ad1db7999763a30b35fc2fdcd2f7de9");
    let intact_dst = data
        .path()
        .join("legacy_tables/legacy_oa_simple-3ad1db7999763a30b35fc2fdcd2f7de9");
    common::copy_tree(&intact, &intact_dst);
    let dest = format!("file://{}", bucket.path().display());
    let (code, out) = common::run_bin(
        env!("CARGO_BIN_EXE_tablesnap"),
        &[
            "--once",
            "-r",
            "-n",
            "h",
            &dest,
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let reports: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("does not match its SSTable's Digest"))
        .collect();
    assert_eq!(reports.len(), corrupt.len(), "{out}");
    for (p, bytes) in &corrupt {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(
            reports.iter().any(|l| l.contains(&*name)),
            "{name} not reported: {out}"
        );
        // Stored as it is on the disk: the node's real state.
        let stored = bucket
            .path()
            .join(format!("h:{}", p.display()).trim_start_matches('/'));
        assert_eq!(
            std::fs::read(&stored).unwrap(),
            *bytes,
            "{}",
            stored.display()
        );
    }
    assert!(
        !reports.iter().any(|l| l.contains("legacy_oa_simple")),
        "an intact table was reported: {out}"
    );
}

/// The daemon counts it in `tablesnap_corrupt_sstables_total` (one per corrupt Data.db,
/// whether its Digest was written before or after the Data.db was read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_counts_corrupt_sstables_in_its_metrics() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = Config::new(
        file_opts(bucket.path()),
        Layout::new("", "h", ":"),
        vec![data.path().into()],
    );
    c.recursive = true;
    c.auto_add = true;
    c.index_delay = Duration::from_millis(300);
    c.metrics_addr = Some(addr);
    let d = Running::start(c).await;
    let (p, _) = corrupt_copy(
        "legacy_tables/legacy_nb_simple-84180d72e04a3ae68cc91ac6cdffd3f3",
        &data.path().join("ks/t-84180d72e04a3ae68cc91ac6cdffd3f3"),
    )
    .remove(0);
    let index = bucket
        .path()
        .join(layout::index_key(&format!("h:{}", p.display())).trim_start_matches('/'));
    common::wait_until(Duration::from_secs(60), "the index", || index.exists());
    let metrics = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "tablesnap_corrupt_sstables_total 1"),
        "{metrics}"
    );
    d.stop().await;
}
