//! Issue #15: the daemon over time, on a data directory that behaves like a Cassandra 4.x
//! node (the in-repo sample's nb SSTable as contents, transaction logs with real
//! checksums), with `file://` destinations (no server needed). Each test is named after
//! what went wrong and is bounded in time, so a regression fails instead of hanging.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Running;
use tablesnap::cassandra::{Record, RecordType};
use tablesnap::daemon::Config;
use tablesnap::layout::{self, Layout};
use tablesnap::store::StoreOptions;

const HOST: &str = "node1.example.com";
const WAIT: Duration = Duration::from_secs(30);
const NB: &str = "legacy_tables/legacy_nb_simple-84180d72e04a3ae68cc91ac6cdffd3f3";

fn key(path: &Path) -> String {
    Layout::new("", HOST, ":").data_key(path.to_str().unwrap())
}

/// Where the file:// bucket `bucket` keeps the object of `key`.
fn object(bucket: &Path, key: &str) -> PathBuf {
    bucket.join(key.trim_start_matches('/'))
}

fn config(bucket: &Path, paths: Vec<PathBuf>) -> Config {
    let mut c = Config::new(
        StoreOptions {
            destination: format!("file://{}", bucket.display()),
            ..Default::default()
        },
        Layout::new("", HOST, ":"),
        paths,
    );
    c.index_delay = Duration::from_millis(300);
    c
}

/// A running `-r -a` daemon on `roots` (no `-B`), storing into the file:// `bucket`.
async fn live(bucket: &Path, roots: Vec<PathBuf>) -> Running {
    let mut c = config(bucket, roots);
    c.recursive = true;
    c.auto_add = true;
    Running::start(c).await
}

fn record(kind: RecordType, path: &str) -> String {
    format!("{}\n", Record::new(kind, path))
}

fn append(p: &Path, s: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

/// The components of the sample's nb SSTable, renamed to generation `g`, Data.db first and
/// TOC last (as a flush writes them): (name, bytes).
fn nb_components(g: u32) -> Vec<(String, Vec<u8>)> {
    salted_components(g, 0)
}

/// [`nb_components`] with other bytes when `salt` is not 0: every byte of `Data.db` plus
/// `salt`, and its `Digest.crc32` to match (a valid SSTable of other contents, as a later
/// flush under a reused name would be).
fn salted_components(g: u32, salt: u8) -> Vec<(String, Vec<u8>)> {
    let mut v = sample_components(g);
    if salt != 0 {
        let mut crc = 0;
        for (n, b) in v.iter_mut() {
            if n.ends_with("Data.db") {
                b.iter_mut().for_each(|x| *x = x.wrapping_add(salt));
                crc = crc32fast::hash(b);
            }
        }
        for (n, b) in v.iter_mut() {
            if n.ends_with("Digest.crc32") {
                *b = crc.to_string().into_bytes();
            }
        }
    }
    v
}

fn sample_components(g: u32) -> Vec<(String, Vec<u8>)> {
    let root = common::sample_sstables();
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
    v.sort_by_key(|(n, _)| (!n.ends_with("Data.db"), n.ends_with("TOC.txt"), n.clone()));
    v
}

/// A flush of generation `g` under `log_op` (`flush`, `compaction`): a log with ADD (and a
/// REMOVE per input), every component, COMMIT, then (Cassandra's cleanup) the inputs and
/// the log are deleted. Returns the names of the new SSTable's files.
fn transaction(dir: &Path, g: u32, inputs: &[(u32, Vec<String>)]) -> Vec<String> {
    salted_transaction(dir, g, 0, inputs)
}

/// [`transaction`] writing [`salted_components`].
fn salted_transaction(dir: &Path, g: u32, salt: u8, inputs: &[(u32, Vec<String>)]) -> Vec<String> {
    transaction_of(dir, g, salted_components(g, salt), inputs)
}

/// [`transaction`] writing `components` as generation `g`.
fn transaction_of(
    dir: &Path,
    g: u32,
    components: Vec<(String, Vec<u8>)>,
    inputs: &[(u32, Vec<String>)],
) -> Vec<String> {
    let op = if inputs.is_empty() {
        "flush"
    } else {
        "compaction"
    };
    let log = dir.join(format!(
        "nb_txn_{op}_{g:08x}-0a7f-11ef-9a2b-5b2d6c9d3a11.log"
    ));
    append(
        &log,
        &record(RecordType::Add, &format!("{}/nb-{g}-big", dir.display())),
    );
    for (i, _) in inputs {
        append(
            &log,
            &record(RecordType::Remove, &format!("{}/nb-{i}-big", dir.display())),
        );
    }
    let mut names = vec![];
    for (n, b) in components {
        std::fs::write(dir.join(&n), b).unwrap();
        names.push(n);
    }
    append(&log, &record(RecordType::Commit, ""));
    for (_, files) in inputs {
        for n in files {
            std::fs::remove_file(dir.join(n)).unwrap();
        }
    }
    std::fs::remove_file(&log).unwrap();
    names
}

/// The names in the index stored under `data`'s key, if any.
fn index_of(bucket: &Path, data: &Path) -> Option<BTreeSet<String>> {
    let body = std::fs::read(object(bucket, &layout::index_key(&key(data)))).ok()?;
    Some(
        layout::parse_listing(&body)
            .unwrap()
            .names
            .into_iter()
            .collect(),
    )
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, f: impl FnMut() -> bool) {
    until_within(what, WAIT, f, String::new).await
}

/// Waits at most `within` until `f` holds; on a timeout the failure shows `state()`.
async fn until_within(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let t0 = tokio::time::Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < within,
            "timed out waiting until {what}{}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Flushes generations `a` and `b` into `t` and waits until the newest index names both:
/// their file names, and all of them together.
async fn two_flushes_indexed(
    bucket: &Path,
    t: &Path,
    a: u32,
    b: u32,
) -> (Vec<String>, Vec<String>, BTreeSet<String>) {
    let first = transaction(t, a, &[]);
    let second = transaction(t, b, &[]);
    let both: BTreeSet<String> = first.iter().chain(second.iter()).cloned().collect();
    until(&format!("an index names nb-{a} and nb-{b}"), || {
        newest_index(bucket, t).is_some_and(|(_, n)| n == both)
    })
    .await;
    (first, second, both)
}

/// Every key in the file:// bucket (file paths below it, as keys).
fn bucket_keys(bucket: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![bucket.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(bucket)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out
}

fn table(data: &Path) -> PathBuf {
    let t = data.join("ks/events-5b608090e03d11ebb4c1d335f841c590");
    std::fs::create_dir_all(&t).unwrap();
    t
}

/// Item 1: Cassandra rewrites a finished SSTable's Statistics.db (incremental repair, an
/// LCS level change) as `nb-5-big-Statistics.db.tmp`, then renames it over Statistics.db.
/// The `.tmp` passed the default `-tmp` rule and was uploaded (and could be named in an
/// index); it must never be. The rename (IN_MOVED_TO) does not overwrite the stored
/// Statistics.db either: earlier restore points name it, and must restore the bytes they
/// saw. The stored copy belongs to the same SSTable (its Data.db is the one stored), and an
/// older repairedAt or level is the safe side: the SSTable is repaired or re-levelled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statistics_rewrite_tmp_is_never_stored_and_its_rename_is() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let d = live(bucket.path(), vec![data.path().into()]).await;
    let gen5 = transaction(&t, 5, &[]);
    let data5 = t.join("nb-5-big-Data.db");
    until("nb-5 is indexed", || {
        index_of(bucket.path(), &data5).is_some()
    })
    .await;

    let stats = t.join("nb-5-big-Statistics.db");
    let tmp = t.join("nb-5-big-Statistics.db.tmp");
    let mut new_stats = std::fs::read(&stats).unwrap();
    new_stats.extend_from_slice(b"repairedAt");
    std::fs::write(&tmp, &new_stats).unwrap();
    // Long enough for an upload of it (the defect) to happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::rename(&tmp, &stats).unwrap();
    let stats_obj = object(bucket.path(), &key(&stats));
    let old_stats = std::fs::read(&stats_obj).unwrap();
    assert_ne!(old_stats, new_stats);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    d.stop().await;
    assert_eq!(
        std::fs::read(&stats_obj).unwrap(),
        old_stats,
        "the stored Statistics.db was overwritten"
    );
    let keys = bucket_keys(bucket.path());
    assert!(
        !keys.iter().any(|k| k.ends_with(".tmp")),
        "a temporary was stored: {keys:?}"
    );
    let idx = index_of(bucket.path(), &data5).unwrap();
    assert_eq!(
        idx,
        gen5.into_iter().collect(),
        "the index names nb-5 whole"
    );
}

/// Runs the tablesnap binary with `args`, killed after `within`: (exit code, or None if it
/// had to be killed; its stderr).
fn run_bounded(args: &[&str], within: Duration) -> (Option<i32>, String) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tablesnap"))
        .args(args)
        .env_clear()
        .env("HOME", "/tmp")
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if t0.elapsed() > within {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        code,
        std::fs::read_to_string(err.path()).unwrap_or_default(),
    )
}

/// Item 2: a file whose mtime is in the future (a clock stepped back, `rsync -a` from a
/// skewed host) was never "settled" (its age was computed against the clock), so `--once`
/// waited for it for ever and no index named it. It is settled once it has stayed the same
/// for the settle period as the daemon sees it: `--once` ends, stores it and names it.
#[test]
fn once_with_a_future_mtime_file_ends_stores_it_and_names_it() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let gen1 = transaction(&t, 1, &[]);
    let schema = t.join("schema.cql");
    std::fs::write(&schema, b"CREATE TABLE ks.events (k int PRIMARY KEY);\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&schema)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(86400))
        .unwrap();
    let (code, err) = run_bounded(
        &[
            "--once",
            "-r",
            "-n",
            HOST,
            &format!("file://{}", bucket.path().display()),
            data.path().to_str().unwrap(),
        ],
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(0), "--once did not end well (None: hung): {err}");
    assert_eq!(
        std::fs::read(object(bucket.path(), &key(&schema))).ok(),
        Some(std::fs::read(&schema).unwrap()),
        "the future-mtime file is not stored: {err}"
    );
    // Stored after the first index was written: an index is written again, naming it.
    let (_, idx) = newest_index(bucket.path(), &t).expect("no index");
    let want: BTreeSet<String> = gen1.into_iter().chain(["schema.cql".to_string()]).collect();
    assert_eq!(idx, want, "{err}");
}

/// The newest index of `dir` in the file:// bucket (by mtime, as LastModified), with its
/// names.
fn newest_index(bucket: &Path, dir: &Path) -> Option<(String, BTreeSet<String>)> {
    let prefix = key(dir);
    let d = object(bucket, &prefix);
    let newest = std::fs::read_dir(d)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(layout::INDEX_SUFFIX)
        })
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())?;
    let body = std::fs::read(newest.path()).ok()?;
    Some((
        newest.file_name().to_string_lossy().into_owned(),
        layout::parse_listing(&body)
            .ok()?
            .names
            .into_iter()
            .collect(),
    ))
}

/// Item 3: an index was written only when a `Data.db` was stored. A compaction that
/// writes no new SSTable (TimeWindowCompactionStrategy dropping a fully expired one: its log
/// only REMOVEs, then COMMIT) deletes its inputs, and no `Data.db` lands afterwards: the
/// newest index went on naming the deleted SSTable for ever. What an index would name
/// changed, so a new one is written, within a bound, that no longer names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_deleted_after_a_commit_leave_the_index_with_no_new_data_db() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let d = live(bucket.path(), vec![data.path().into()]).await;
    let (gen5, gen6, _) = two_flushes_indexed(bucket.path(), &t, 5, 6).await;

    // nb-5 expires whole: REMOVE, COMMIT, its files deleted, then the log.
    let log = t.join("nb_txn_compaction_0000abcd-0a7f-11ef-9a2b-5b2d6c9d3a11.log");
    append(
        &log,
        &record(RecordType::Remove, &format!("{}/nb-5-big", t.display())),
    );
    append(&log, &record(RecordType::Commit, ""));
    for n in &gen5 {
        std::fs::remove_file(t.join(n)).unwrap();
    }
    std::fs::remove_file(&log).unwrap();
    let only6: BTreeSet<String> = gen6.iter().cloned().collect();
    until_within(
        "the newest index no longer names the deleted nb-5",
        Duration::from_secs(10),
        || newest_index(bucket.path(), &t).is_some_and(|(_, n)| n == only6),
        || format!(": {:?}", newest_index(bucket.path(), &t)),
    )
    .await;
    d.stop().await;
}

/// Item 1: TRUNCATE (and DROP) snapshot the table, then delete every SSTable. The newest
/// index went on naming all of them, so the newest restore point, and any `--as-of` after
/// the truncate, brought the deleted data back. Now a restore point naming nothing is
/// written under a key of its own (no earlier restore point is overwritten: the one
/// before the truncate still restores the data, byte for byte), and tableslurp restores
/// the table empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_leaves_a_restore_point_that_names_nothing() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let d = live(bucket.path(), vec![data.path().into()]).await;
    let (_, _, both) = two_flushes_indexed(bucket.path(), &t, 1, 2).await;
    // The newest listing naming both may be nb-1's index; nb-2's own follows it.
    let nb2_index = object(
        bucket.path(),
        &layout::index_key(&key(&t.join("nb-2-big-Data.db"))),
    );
    until("nb-2 has its own index", || {
        index_of(bucket.path(), &t.join("nb-2-big-Data.db")).is_some_and(|n| n == both)
    })
    .await;
    let before = std::fs::read(&nb2_index).unwrap();
    // The restore points' LastModified are whole seconds apart from here on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let as_of_before = chrono::Utc::now().to_rfc3339();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // TRUNCATE: a snapshot (hard links), then every live SSTable deleted.
    let snap = t.join("snapshots").join("truncated-1733250000000-events");
    std::fs::create_dir_all(&snap).unwrap();
    for n in &both {
        std::fs::hard_link(t.join(n), snap.join(n)).unwrap();
    }
    for n in &both {
        std::fs::remove_file(t.join(n)).unwrap();
    }
    until("the newest index names nothing", || {
        newest_index(bucket.path(), &t).is_some_and(|(_, n)| n.is_empty())
    })
    .await;
    let (k, _) = newest_index(bucket.path(), &t).unwrap();
    assert!(
        k.starts_with(layout::RESTORE_POINT_PREFIX) && k.ends_with(layout::INDEX_SUFFIX),
        "the empty restore point is under {k}"
    );
    // The restore point before the truncate is untouched.
    assert_eq!(
        std::fs::read(object(
            bucket.path(),
            &layout::index_key(&key(&t.join("nb-2-big-Data.db")))
        ))
        .unwrap(),
        before
    );
    d.stop().await;

    // Newest: the table comes back empty, and says so. --as-of before: the data, exact.
    let dest = format!("file://{}", bucket.path().display());
    let origin = t.to_str().unwrap();
    let now_dir = tempfile::tempdir().unwrap();
    let (code, out) = common::run_bin(
        env!("CARGO_BIN_EXE_tableslurp"),
        &["-n", HOST, &dest, origin, now_dir.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let restored: Vec<_> = std::fs::read_dir(now_dir.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(
        restored.is_empty(),
        "restored after the truncate: {restored:?}\n{out}"
    );
    assert!(out.contains("names no file"), "{out}");
    let then_dir = tempfile::tempdir().unwrap();
    let (code, out) = common::run_bin(
        env!("CARGO_BIN_EXE_tableslurp"),
        &[
            "-n",
            HOST,
            "--as-of",
            &as_of_before,
            &dest,
            origin,
            then_dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    for n in &both {
        assert_eq!(
            std::fs::read(then_dir.path().join(n)).unwrap(),
            std::fs::read(snap.join(n)).unwrap(),
            "{n}"
        );
    }
}

/// Item 1 across a restart: the table is truncated while the daemon is down (no event
/// sees the deletes). The `-B` restart compares each directory's newest stored index with
/// the directory as it is, and writes a restore point naming nothing; a restart with
/// nothing changed writes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_while_the_daemon_is_down_is_seen_at_the_restart() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let gen1 = transaction(&t, 1, &[]);
    let first = common::run_once(common::once_on_file(bucket.path(), data.path(), HOST)).await;
    assert!(first.indexes_written >= 1, "{first}");
    let (_, named) = newest_index(bucket.path(), &t).unwrap();
    assert_eq!(named, gen1.iter().cloned().collect::<BTreeSet<_>>());
    let same = common::run_once(common::once_on_file(bucket.path(), data.path(), HOST)).await;
    assert_eq!(same.indexes_written, 0, "nothing changed: {same}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    for n in &gen1 {
        std::fs::remove_file(t.join(n)).unwrap();
    }
    let after = common::run_once(common::once_on_file(bucket.path(), data.path(), HOST)).await;
    assert_eq!(after.indexes_written, 1, "{after}");
    let (k, named) = newest_index(bucket.path(), &t).unwrap();
    assert!(named.is_empty(), "{k} names {named:?}");
    assert!(k.starts_with(layout::RESTORE_POINT_PREFIX), "{k}");
}

/// Item 3: after a TRUNCATE, Cassandra numbers the table's generations from 1 again. The new
/// `nb-1-big-*` either overwrote the objects the pre-truncate restore point names (which
/// then silently restored the new bytes) or, refused as a collision, was never backed up.
/// Now the old bytes are kept under `tablesnap-was-<ms>-NAME` before the new ones are stored:
/// the newest restore point names the new SSTable, and a restore `--as-of` before the
/// TRUNCATE still brings back exactly the old bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_name_keeps_what_an_earlier_restore_point_names() {
    reused_name(false).await;
}

/// The same with `-B`: the directory is covered by the startup LIST, so a name not known
/// stored was uploaded at once, over the old objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_name_keeps_what_an_earlier_restore_point_names_with_b() {
    reused_name(true).await;
}

async fn reused_name(backup: bool) {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let d = Running::start({
        let mut c = config(bucket.path(), vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c.backup = backup;
        c
    })
    .await;
    let (gen1, names, as_of, before) = flushed_and_indexed(bucket.path(), &t).await;
    for n in &gen1 {
        std::fs::remove_file(t.join(n)).unwrap();
    }
    until("the truncate's restore point", || {
        newest_index(bucket.path(), &t).is_some_and(|(_, n)| n.is_empty())
    })
    .await;
    // nb-1 again, as a flush writes it: every component, the Data.db the same size with
    // other bytes (and so its Digest).
    let again = salted_transaction(&t, 1, 3, &[]);
    assert_eq!(again, gen1);
    until_within(
        "the newest restore point names the new nb-1",
        WAIT,
        || newest_index(bucket.path(), &t).is_some_and(|(_, n)| n == names),
        || format!(": {:?}", newest_index(bucket.path(), &t)),
    )
    .await;
    let summary = d.stop().await;
    assert_eq!(summary.failures, 0, "{summary}");
    // The newest restore point's objects are the node's new bytes.
    holds_the_files(bucket.path(), &t, &names, "the newest restore point");
    superseded_then_restored(bucket.path(), &t, &before, &names, &as_of);
}

/// nb-1 flushed into `t` and named by its directory's newest restore point, then a time
/// after that restore point (restore points are told apart by the second): the files'
/// names, as a set, that time (RFC 3339) and every file's bytes.
async fn flushed_and_indexed(
    bucket: &Path,
    t: &Path,
) -> (
    Vec<String>,
    BTreeSet<String>,
    String,
    Vec<(String, Vec<u8>)>,
) {
    let gen1 = transaction(t, 1, &[]);
    let names: BTreeSet<String> = gen1.iter().cloned().collect();
    until("an index names nb-1", || {
        newest_index(bucket, t).is_some_and(|(_, n)| n == names)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let as_of = chrono::Utc::now().to_rfc3339();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = gen1
        .iter()
        .map(|n| (n.clone(), std::fs::read(t.join(n)).unwrap()))
        .collect();
    (gen1, names, as_of, before)
}

/// The old bytes are kept, each under one superseded name of its own; a restore `--as-of`
/// before the TRUNCATE brings them back (Digest checked), the newest restore point the new
/// ones.
fn superseded_then_restored(
    bucket: &Path,
    t: &Path,
    before: &[(String, Vec<u8>)],
    names: &BTreeSet<String>,
    as_of: &str,
) {
    // The old bytes are kept, each under one superseded name of its own (the Data.db and
    // its Digest here).
    let dir_obj = object(bucket, &key(t));
    for (n, bytes) in before {
        let copies: Vec<PathBuf> = std::fs::read_dir(&dir_obj)
            .unwrap()
            .flatten()
            .filter(|e| {
                layout::parse_superseded(&e.file_name().to_string_lossy())
                    .is_some_and(|(_, o)| o == n)
            })
            .map(|e| e.path())
            .collect();
        // Components with the same bytes as before are simply the same object.
        let same = std::fs::read(t.join(n)).unwrap() == *bytes;
        assert_eq!(copies.len(), usize::from(!same), "{n}: {copies:?}");
        if !same {
            assert_eq!(&std::fs::read(&copies[0]).unwrap(), bytes, "{n}");
        }
    }
    // A restore before the TRUNCATE brings back the old bytes, Digest checked; the newest
    // restore point the new ones.
    let dest = format!("file://{}", bucket.display());
    let origin = t.to_str().unwrap();
    let old = tempfile::tempdir().unwrap();
    let (code, out) = common::run_bin(
        env!("CARGO_BIN_EXE_tableslurp"),
        &[
            "-n",
            HOST,
            "--as-of",
            as_of,
            &dest,
            origin,
            old.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    for (n, bytes) in before {
        assert_eq!(
            &std::fs::read(old.path().join(n)).unwrap_or_else(|e| panic!("{n}: {e}: {out}")),
            bytes,
            "restored {n} as of {as_of}: {out}"
        );
    }
    let got: BTreeSet<String> = std::fs::read_dir(old.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = before.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(got, want, "restored as of {as_of}: {out}");
    let newest = tempfile::tempdir().unwrap();
    let (code, out) = common::run_bin(
        env!("CARGO_BIN_EXE_tableslurp"),
        &["-n", HOST, &dest, origin, newest.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    for n in names {
        assert_eq!(
            std::fs::read(newest.path().join(n)).unwrap(),
            std::fs::read(t.join(n)).unwrap(),
            "restored {n} from the newest restore point: {out}"
        );
    }
}

/// Item 6: an index built on an existing SSTable (SAI, `SSTable.registerComponents`) writes
/// its components, then a new `TOC.txt` listing them (`TOC.txt.tmp` renamed over it). The
/// stored TOC was kept (earlier restore points name it), so later restore points brought
/// the SAI files back beside a TOC that did not list them. Now the old TOC is kept under a
/// superseded name: the newest restore point names the SAI files and the new TOC, one from
/// before the build the old TOC and no SAI file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_build_rewrites_the_toc_and_each_restore_point_restores_its_own() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let d = live(bucket.path(), vec![data.path().into()]).await;
    let (_, old, as_of, before) = flushed_and_indexed(bucket.path(), &t).await;
    let toc = t.join("nb-1-big-TOC.txt");
    let old_toc = std::fs::read_to_string(&toc).unwrap();
    let sai = [
        "SAI+aa+GroupComplete.db",
        "SAI+aa+GroupMeta.db",
        "SAI+aa+TokenValues.db",
        "SAI+aa+events_idx+ColumnComplete.db",
        "SAI+aa+events_idx+Meta.db",
    ];
    for (i, c) in sai.iter().enumerate() {
        std::fs::write(t.join(format!("nb-1-big-{c}")), vec![i as u8 + 1; 100 + i]).unwrap();
    }
    let new_toc = format!("{old_toc}{}\n", sai.join("\n"));
    std::fs::write(t.join("nb-1-big-TOC.txt.tmp"), &new_toc).unwrap();
    std::fs::rename(t.join("nb-1-big-TOC.txt.tmp"), &toc).unwrap();
    let mut all = old.clone();
    all.extend(sai.iter().map(|c| format!("nb-1-big-{c}")));
    until_within(
        "the newest restore point names the SAI files",
        WAIT,
        || newest_index(bucket.path(), &t).is_some_and(|(_, n)| n == all),
        || format!(": {:?}", newest_index(bucket.path(), &t)),
    )
    .await;
    let summary = d.stop().await;
    assert_eq!(summary.failures, 0, "{summary}");
    assert_eq!(summary.files_superseded, 1, "the TOC only: {summary}");
    holds_the_files(bucket.path(), &t, &all, "the newest restore point");
    superseded_then_restored(bucket.path(), &t, &before, &all, &as_of);
    assert_eq!(
        std::fs::read_to_string(object(bucket.path(), &key(&toc))).unwrap(),
        new_toc
    );
}

/// Item 2: JBOD. A compaction reads `nb-1` from one data directory and `nb-2` from the
/// other and writes `nb-3` into the first; its transaction log is replicated in the
/// table's directory on both disks (Cassandra's `LogReplicaSet`). After the COMMIT and the
/// inputs' deletion, the second disk's newest restore point went on naming `nb-1`: a node
/// restored from it had the SSTable and its replacement side by side. Each directory's
/// newest restore point names exactly what is live in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_across_jbod_directories_leaves_no_zombie() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let (t1, t2) = (table(d1.path()), table(d2.path()));
    let d = live(bucket.path(), vec![d1.path().into(), d2.path().into()]).await;
    let (gen1, gen2) = jbod_flushed(bucket.path(), &t1, &t2).await;

    let name = "nb_txn_compaction_0000cafe-0a7f-11ef-9a2b-5b2d6c9d3a11.log";
    let logs = [t1.join(name), t2.join(name)];
    let records = [
        record(RecordType::Add, &format!("{}/nb-3-big", t1.display())),
        record(RecordType::Remove, &format!("{}/nb-1-big", t2.display())),
        record(RecordType::Remove, &format!("{}/nb-2-big", t1.display())),
    ];
    for r in &records {
        for l in &logs {
            append(l, r);
        }
    }
    let mut gen3 = vec![];
    for (n, b) in nb_components(3) {
        std::fs::write(t1.join(&n), b).unwrap();
        gen3.push(n);
    }
    for l in &logs {
        append(l, &record(RecordType::Commit, ""));
    }
    for n in &gen1 {
        std::fs::remove_file(t2.join(n)).unwrap();
    }
    for n in &gen2 {
        std::fs::remove_file(t1.join(n)).unwrap();
    }
    for l in &logs {
        std::fs::remove_file(l).unwrap();
    }
    until_within(
        "disk 1 names nb-3 only, disk 2 nothing",
        WAIT,
        || {
            newest_index(bucket.path(), &t1).is_some_and(|(_, n)| n == set(&gen3))
                && newest_index(bucket.path(), &t2).is_some_and(|(_, n)| n.is_empty())
        },
        || {
            format!(
                ": disk 1 {:?}, disk 2 {:?}",
                newest_index(bucket.path(), &t1),
                newest_index(bucket.path(), &t2)
            )
        },
    )
    .await;
    d.stop().await;
}

/// A compaction whose output cannot be stored (its key holds another node's file: a
/// collision) deletes its inputs after the COMMIT. The restore point that the deletes call
/// for must not lose their data: it goes on naming the inputs (still in the bucket) until a
/// replacement is durable, rather than naming neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_stay_named_while_their_replacement_cannot_be_stored() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let d = live(bucket.path(), vec![data.path().into()]).await;
    let (gen1, gen2, both) = two_flushes_indexed(bucket.path(), &t, 1, 2).await;
    // Another node's nb-3 is already under nb-3's key (older, other bytes, other size).
    let foreign = object(bucket.path(), &key(&t.join("nb-3-big-Data.db")));
    std::fs::write(&foreign, b"another node's nb-3").unwrap();
    std::fs::File::open(&foreign)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    transaction(&t, 3, &[(1, gen1.clone()), (2, gen2.clone())]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let summary = d.stop().await;
    let (k, named) = newest_index(bucket.path(), &t).unwrap();
    assert!(
        both.iter().all(|n| named.contains(n)),
        "{k} lost the inputs whose replacement is not stored: {named:?} ({summary})"
    );
    assert!(!named.contains("nb-3-big-Data.db"), "{k}: {named:?}");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"another node's nb-3");
}

/// Item 13: a compaction's output held back every index of its directory while it
/// uploaded: a flush right after the COMMIT waited 24 s behind a 64 MiB output at
/// `--max-bandwidth 2M` (a 200 GB output: hours). Its inputs are stored and named, and hold
/// its data: the flush's index names them in its place, and the output's own index
/// replaces them once it is stored. Both restore points restore exactly what they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_compaction_output_uploading_does_not_hold_back_a_flush() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let d = Running::start(slow(bucket.path(), vec![data.path().into()])).await;
    let (gen1, gen2, both) = two_flushes_indexed(bucket.path(), &t, 1, 2).await;

    let (big, bytes) = big_components(3);
    let gen3 = transaction_of(&t, 3, big, &[(1, gen1.clone()), (2, gen2.clone())]);
    let gen4 = transaction(&t, 4, &[]);
    let flushed = tokio::time::Instant::now();
    let data3 = t.join("nb-3-big-Data.db");
    let stored3 = || std::fs::read(object(bucket.path(), &key(&data3))).is_ok_and(|b| b == bytes);

    // The flush is named within seconds, beside the inputs, while the output uploads.
    let meanwhile: BTreeSet<String> = both.iter().chain(gen4.iter()).cloned().collect();
    until_within(
        "an index names nb-4 with the compaction's inputs",
        Duration::from_secs(8),
        || newest_index(bucket.path(), &t).is_some_and(|(_, n)| n == meanwhile),
        || format!(": {:?}", newest_index(bucket.path(), &t)),
    )
    .await;
    assert!(
        !stored3(),
        "nb-3 was stored {:?} after the flush: the test proves nothing",
        flushed.elapsed()
    );
    let (k, _) = newest_index(bucket.path(), &t).unwrap();
    holds_the_files(bucket.path(), &t, &gen4.iter().cloned().collect(), &k);
    for (n, b) in sample_components(1).into_iter().chain(sample_components(2)) {
        assert_eq!(
            std::fs::read(object(bucket.path(), &key(&t.join(&n)))).unwrap(),
            b,
            "{k} names {n}, whose object is not the input's bytes"
        );
    }

    // Then the output's own index replaces its inputs.
    let after: BTreeSet<String> = gen3.iter().chain(gen4.iter()).cloned().collect();
    until_within(
        "an index names nb-3 and nb-4 only",
        Duration::from_secs(60),
        || newest_index(bucket.path(), &t).is_some_and(|(_, n)| n == after),
        || format!(": {:?}", newest_index(bucket.path(), &t)),
    )
    .await;
    assert!(stored3());
    let summary = d.stop().await;
    assert_eq!(summary.failures, 0, "{summary}");
}

/// A compaction's backlog held every other table's flush behind it: the upload queue was
/// first in, first out, so a flush of table B right after a compaction of table A committed
/// waited for every output of A to start uploading (`bench/lcs_stall.py`: 1.2 s behind 2,400
/// small outputs; with real sizes, hours without a restore point for B). Now the free slots
/// alternate between the smallest queued directory and the oldest queued file: B's flush is
/// stored and named while A's outputs still upload, and A's restore points are all right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_another_table_is_not_held_behind_a_compaction_backlog() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let a = table(data.path());
    let b = data
        .path()
        .join("ks/users-0c3b1a40e03d11ebb4c1d335f841c590");
    std::fs::create_dir_all(&b).unwrap();
    let d = Running::start(slow(bucket.path(), vec![data.path().into()])).await;
    let (gen1, gen2, _) = two_flushes_indexed(bucket.path(), &a, 1, 2).await;

    // A compacts nb-1 and nb-2 into 40 outputs of 1 MiB: 40 MiB, about 20 s at 2 MiB/s.
    let log = a.join("nb_txn_compaction_0000beef-0a7f-11ef-9a2b-5b2d6c9d3a11.log");
    for i in [1, 2] {
        append(
            &log,
            &record(RecordType::Remove, &format!("{}/nb-{i}-big", a.display())),
        );
    }
    let mut outputs = BTreeSet::new();
    let mut datas = vec![];
    for g in 3..43 {
        append(
            &log,
            &record(RecordType::Add, &format!("{}/nb-{g}-big", a.display())),
        );
        let (components, _) = sized_components(g, 1 << 20);
        for (n, bytes) in components {
            std::fs::write(a.join(&n), bytes).unwrap();
            if n.ends_with("Data.db") {
                datas.push(a.join(&n));
            }
            outputs.insert(n);
        }
    }
    append(&log, &record(RecordType::Commit, ""));
    for n in gen1.iter().chain(gen2.iter()) {
        std::fs::remove_file(a.join(n)).unwrap();
    }
    std::fs::remove_file(&log).unwrap();
    // Then B flushes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flushed = tokio::time::Instant::now();
    let gen_b = transaction(&b, 1, &[]);
    until_within(
        "B's flush named while A's outputs upload",
        Duration::from_secs(8),
        || newest_index(bucket.path(), &b).is_some_and(|(_, n)| n == set(&gen_b)),
        || format!(": {:?}", newest_index(bucket.path(), &b)),
    )
    .await;
    // 40 MiB at 2 MiB/s take 20 s: B was named long before A's outputs were all stored.
    let stored = datas
        .iter()
        .filter(|p| std::fs::metadata(object(bucket.path(), &key(p))).is_ok())
        .count();
    assert!(
        stored < datas.len(),
        "all of A's outputs were stored {:?} after B's flush: the test proves nothing",
        flushed.elapsed()
    );
    let (k, _) = newest_index(bucket.path(), &b).unwrap();
    holds_the_files(bucket.path(), &b, &set(&gen_b), &k);
    until_within(
        "A's newest index names its 40 outputs",
        Duration::from_secs(90),
        || newest_index(bucket.path(), &a).is_some_and(|(_, n)| n == outputs),
        || {
            format!(
                ": {:?}",
                newest_index(bucket.path(), &a).map(|(k, n)| (k, n.len()))
            )
        },
    )
    .await;
    let (k, _) = newest_index(bucket.path(), &a).unwrap();
    holds_the_files(bucket.path(), &a, &outputs, &k);
    let summary = d.stop().await;
    assert_eq!(summary.failures, 0, "{summary}");
}

/// A `-r -a` daemon on `roots` that stores at 2 MiB/s in 5 MiB parts: a 24 MiB file takes
/// about 12 s.
fn slow(bucket: &Path, roots: Vec<PathBuf>) -> Config {
    let mut c = config(bucket, roots);
    c.recursive = true;
    c.auto_add = true;
    c.upload.throttle = Some(std::sync::Arc::new(tablesnap::throttle::Throttle::new(
        2 << 20,
    )));
    c.upload.max_upload_size = 1 << 20;
    c.upload.part_size = Some(5 << 20);
    c
}

/// The sample's components as generation `g` with a 24 MiB `Data.db` (and its Digest to
/// match): (components, the Data.db bytes).
fn big_components(g: u32) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    sized_components(g, 24 << 20)
}

/// [`big_components`] with a `Data.db` of `size` bytes (other bytes for each `g`).
fn sized_components(g: u32, size: usize) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let mut big = sample_components(g);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(g);
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let crc = crc32fast::hash(&bytes);
    for (n, b) in big.iter_mut() {
        if n.ends_with("Data.db") {
            *b = bytes.clone();
        } else if n.ends_with("Digest.crc32") {
            *b = crc.to_string().into_bytes();
        }
    }
    (big, bytes)
}

/// Flushes nb-1 into disk 2's table `t2` and nb-2 into disk 1's `t1`, and waits until each
/// disk's newest index names its own.
async fn jbod_flushed(bucket: &Path, t1: &Path, t2: &Path) -> (Vec<String>, Vec<String>) {
    let gen1 = transaction(t2, 1, &[]);
    let gen2 = transaction(t1, 2, &[]);
    until("both disks indexed", || {
        newest_index(bucket, t2).is_some_and(|(_, n)| n == set(&gen1))
            && newest_index(bucket, t1).is_some_and(|(_, n)| n == set(&gen2))
    })
    .await;
    (gen1, gen2)
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// A compaction of nb-1 (disk 2) and nb-2 (disk 1) into a 24 MiB nb-3 on disk 1, its log
/// replicated on both disks as `LogReplicaSet` writes it: ADD and REMOVEs, the output,
/// COMMIT, then the inputs and the logs deleted. Returns nb-3's names and Data.db bytes.
fn jbod_compaction(
    t1: &Path,
    t2: &Path,
    gen1: &[String],
    gen2: &[String],
    id: &str,
) -> (Vec<String>, Vec<u8>) {
    let name = format!("nb_txn_compaction_{id}-0a7f-11ef-9a2b-5b2d6c9d3a11.log");
    let logs = [t1.join(&name), t2.join(&name)];
    for r in [
        record(RecordType::Add, &format!("{}/nb-3-big", t1.display())),
        record(RecordType::Remove, &format!("{}/nb-1-big", t2.display())),
        record(RecordType::Remove, &format!("{}/nb-2-big", t1.display())),
    ] {
        for l in &logs {
            append(l, &r);
        }
    }
    let (big, bytes) = big_components(3);
    let mut gen3 = vec![];
    for (n, b) in big {
        std::fs::write(t1.join(&n), b).unwrap();
        gen3.push(n);
    }
    for l in &logs {
        append(l, &record(RecordType::Commit, ""));
    }
    for n in gen1 {
        std::fs::remove_file(t2.join(n)).unwrap();
    }
    for n in gen2 {
        std::fs::remove_file(t1.join(n)).unwrap();
    }
    for l in &logs {
        std::fs::remove_file(l).unwrap();
    }
    (gen3, bytes)
}

/// Until disk 1 names exactly nb-3 and disk 2 nothing: while nb-3's object does not hold
/// its bytes, disk 2's newest index must still name nb-1 (`gen1`). The output must take
/// over 5 s to store, or the test proves nothing.
async fn input_held_until_output_named(
    bucket: &Path,
    (t1, t2): (&Path, &Path),
    gen1: &[String],
    (gen3, bytes): (&[String], &[u8]),
    since: &str,
) {
    let data3 = t1.join("nb-3-big-Data.db");
    let t0 = tokio::time::Instant::now();
    loop {
        let stored3 = std::fs::read(object(bucket, &key(&data3))).is_ok_and(|b| b == bytes);
        let on2 = newest_index(bucket, t2).map(|(_, n)| n);
        if !stored3 {
            assert_eq!(
                on2.as_ref(),
                Some(&set(gen1)),
                "disk 2 dropped nb-1 while its output on disk 1 was not stored ({:?} after {since})",
                t0.elapsed()
            );
        }
        let on1 = newest_index(bucket, t1).map(|(_, n)| n);
        if on1 == Some(set(gen3)) && on2.as_ref().is_some_and(|n| n.is_empty()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "disk 1 {on1:?}, disk 2 {on2:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t0.elapsed() > Duration::from_secs(5),
        "the output was stored in {:?}: the test proves nothing",
        t0.elapsed()
    );
}

/// JBOD: a compaction with an input on disk 2 writes its output on disk 1. While that
/// output uploads (hours for a big one), disk 2's newest restore point dropped the input at
/// once: a whole-node restore then had the input's data on neither disk. Now disk 2 names
/// the input until disk 1's index names the output, then leaves it out (no zombie).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jbod_input_stays_named_until_its_output_is_on_the_other_disk() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let (t1, t2) = (table(d1.path()), table(d2.path()));
    let d = Running::start(slow(
        bucket.path(),
        vec![d1.path().into(), d2.path().into()],
    ))
    .await;
    let (gen1, gen2) = jbod_flushed(bucket.path(), &t1, &t2).await;
    let (gen3, bytes) = jbod_compaction(&t1, &t2, &gen1, &gen2, "0000beef");
    input_held_until_output_named(
        bucket.path(),
        (&t1, &t2),
        &gen1,
        (&gen3, &bytes),
        "the COMMIT",
    )
    .await;
    let summary = d.stop().await;
    assert_eq!(summary.failures, 0, "{summary}");
}

/// The JBOD window across a restart: tablesnap learnt that nb-3 (disk 1) replaced nb-1
/// (disk 2) from the COMMIT, and held nb-1 named on disk 2 while nb-3 uploaded; then it
/// was killed mid-upload. The restart forgot the lineage, and disk 2's first restore point
/// dropped nb-1 at once while nb-3 was still not stored: a whole-node restore had nb-1's
/// data on neither disk. Now the hold is stored beside disk 2's restore points
/// (`tablesnap-held.json`) and read back at the restart; it is deleted once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jbod_input_stays_held_across_a_restart_while_its_output_uploads() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let (t1, t2) = (table(d1.path()), table(d2.path()));
    let roots = || vec![d1.path().to_path_buf(), d2.path().to_path_buf()];
    // A long quiet period: the hold is stored when the log goes (which hurries disk 2's
    // listing, and the listing stores it first), not a quiet period later.
    let mut c = slow(bucket.path(), roots());
    c.index_delay = Duration::from_secs(5);
    let d = Running::start(c).await;
    let (gen1, gen2) = jbod_flushed(bucket.path(), &t1, &t2).await;
    let (gen3, bytes) = jbod_compaction(&t1, &t2, &gen1, &gen2, "0000cafe");
    let held = object(bucket.path(), &key(&t2.join("tablesnap-held.json")));
    until_within(
        "disk 2's hold stored as its log goes",
        Duration::from_secs(2),
        || held.exists(),
        String::new,
    )
    .await;
    let body = std::fs::read_to_string(&held).unwrap();
    assert!(
        body.contains(&format!("\"nb-1-big\":[\"{}/nb-3-big\"]", t1.display())),
        "{body}"
    );
    let data3 = t1.join("nb-3-big-Data.db");
    assert!(
        std::fs::read(object(bucket.path(), &key(&data3)))
            .ok()
            .as_deref()
            != Some(&bytes[..]),
        "nb-3 stored before the kill: the test proves nothing"
    );
    // Killed (no drain) while nb-3 uploads.
    d.handle.abort();
    let _ = d.handle.await;
    let mut c = slow(bucket.path(), roots());
    c.backup = true;
    let d = Running::start(c).await;
    input_held_until_output_named(
        bucket.path(),
        (&t1, &t2),
        &gen1,
        (&gen3, &bytes),
        "the restart",
    )
    .await;
    until("disk 2's hold deleted once released", || !held.exists()).await;
    let summary = d.stop().await;
    assert_eq!(summary.failures, 0, "{summary}");
}

/// Item 9: with `IN_CREATE` (snapshots backed up), `nodetool snapshot` links each SSTable's
/// components into `snapshots/<tag>/` (created by the first link), then writes
/// `manifest.json` and `schema.cql` there, as Cassandra does (no staging directory). Both
/// were uploaded but never named by the snapshot's index (younger than 2 s when it was
/// written, and no later index came). The snapshot's newest restore point names them, and
/// restores their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restore_point_names_its_manifest_and_schema() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let mut c = config(bucket.path(), vec![data.path().into()]);
    c.recursive = true;
    c.auto_add = true;
    c.events.create = true;
    let d = Running::start(c).await;
    let gen1 = transaction(&t, 1, &[]);
    until("nb-1 indexed", || {
        newest_index(bucket.path(), &t).is_some_and(|(_, n)| n.len() == gen1.len())
    })
    .await;
    let snap = t.join("snapshots/1733300000000-nightly");
    std::fs::create_dir_all(&snap).unwrap();
    for n in &gen1 {
        std::fs::hard_link(t.join(n), snap.join(n)).unwrap();
    }
    let manifest = format!(
        "{{\"files\":[{}],\"created_at\":\"2026-12-04T08:00:00Z\"}}\n",
        gen1.iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    std::fs::write(snap.join("manifest.json"), &manifest).unwrap();
    std::fs::write(
        snap.join("schema.cql"),
        "CREATE TABLE ks.events (k int PRIMARY KEY);\n",
    )
    .unwrap();
    let all: BTreeSet<String> = gen1
        .iter()
        .cloned()
        .chain(["manifest.json".to_string(), "schema.cql".to_string()])
        .collect();
    until_within(
        "the snapshot's newest restore point names its SSTable, manifest.json and schema.cql",
        Duration::from_secs(20),
        || newest_index(bucket.path(), &snap).is_some_and(|(_, n)| n == all),
        || format!(": {:?}", newest_index(bucket.path(), &snap)),
    )
    .await;
    holds_the_files(bucket.path(), &snap, &all, "the snapshot's restore point");
    let summary = d.stop().await;
    assert_eq!(summary.failures, 0, "{summary}");
}

/// The generation Cassandra gives its next SSTable in `dir`: one above the highest on disk.
fn next_generation(dir: &Path) -> u32 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            tablesnap::cassandra::parse_name(&n).and_then(|f| f.id.parse::<u32>().ok())
        })
        .max()
        .unwrap_or(0)
        + 1
}

/// Item 4: a point-in-time restore onto the same host and path, then the node goes on.
/// The bucket holds `nb-3` and `nb-4` of the abandoned timeline; restored `--as-of` before
/// them, the node would number its next flush `nb-3` again, with other bytes: refused as a
/// collision for ever, never backed up. tableslurp restores one SSTable above the bucket's
/// highest generation, so the next flush takes a name the bucket never held; the abandoned
/// timeline's restore points keep restoring their own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_restore_goes_on_without_reusing_a_stored_name() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let d = live(bucket.path(), vec![data.path().into()]).await;
    let (gen1, gen2, _) = two_flushes_indexed(bucket.path(), &t, 1, 2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let as_of = chrono::Utc::now().to_rfc3339();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The timeline the restore abandons: a compaction of both, then a flush.
    let gen3 = salted_transaction(&t, 3, 7, &[(1, gen1), (2, gen2)]);
    let gen4 = salted_transaction(&t, 4, 9, &[]);
    let later: BTreeSet<String> = gen3.iter().chain(&gen4).cloned().collect();
    until("the abandoned timeline is indexed", || {
        newest_index(bucket.path(), &t).is_some_and(|(_, n)| n == later)
    })
    .await;
    d.stop().await;
    let abandoned: Vec<(PathBuf, Vec<u8>)> = later
        .iter()
        .map(|n| {
            let o = object(bucket.path(), &key(&t.join(n)));
            let b = std::fs::read(&o).unwrap();
            (o, b)
        })
        .collect();
    let abandoned_index = newest_index(bucket.path(), &t).unwrap();

    // Restore the table as it was before them, into its own (emptied) directory.
    std::fs::remove_dir_all(&t).unwrap();
    std::fs::create_dir_all(&t).unwrap();
    let dest = format!("file://{}", bucket.path().display());
    let origin = t.to_str().unwrap();
    let (code, out) = common::run_bin(
        env!("CARGO_BIN_EXE_tableslurp"),
        &["-n", HOST, "--as-of", &as_of, &dest, origin, origin],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restored as nb-5-big"), "{out}");
    assert_eq!(
        next_generation(&t),
        6,
        "restored {:?}",
        std::fs::read_dir(&t)
    );

    // The node goes on: the daemon restarts (-B), Cassandra flushes its next generation.
    let d = Running::start({
        let mut c = config(bucket.path(), vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c.backup = true;
        c
    })
    .await;
    let g = next_generation(&t);
    let new = salted_transaction(&t, g, 11, &[]);
    let live: BTreeSet<String> = std::fs::read_dir(&t)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(live.is_superset(&new.iter().cloned().collect()));
    until_within(
        "the newest restore point names the restored SSTables and the new flush",
        WAIT,
        || newest_index(bucket.path(), &t).is_some_and(|(_, n)| n == live),
        || format!(": {:?}", newest_index(bucket.path(), &t)),
    )
    .await;
    let summary = d.stop().await;
    assert_eq!(summary.failures, 0, "{summary}");
    // Every name the newest restore point holds has the node's bytes in the bucket.
    holds_the_files(bucket.path(), &t, &live, "the newest restore point");
    // The abandoned timeline is untouched: its objects and its restore point.
    unchanged(&abandoned);
    let abandoned_key = object(bucket.path(), &format!("{}/{}", key(&t), abandoned_index.0));
    let body = std::fs::read(abandoned_key).unwrap();
    let names: BTreeSet<String> = layout::parse_listing(&body)
        .unwrap()
        .names
        .into_iter()
        .collect();
    assert_eq!(names, later);
}

/// Item 3's hole after a restart: the name of a stored SSTable is reused, same size, other
/// bytes, a minute after its object was stored (a TRUNCATE, Cassandra restarted, a flush).
/// The `-B` restart took the new Data.db as stored (same size, within 15 minutes of the
/// object) and named it: that restore point restored the old bytes. Now the local file is
/// suspect (written after its object) and the MD5s decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_takes_a_reused_name_of_the_same_size_as_stored() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let gen1 = transaction(&t, 1, &[]);
    let first = common::run_once(common::once_on_file(bucket.path(), data.path(), HOST)).await;
    assert!(first.indexes_written >= 1, "{first}");
    let old: Vec<(PathBuf, Vec<u8>)> = gen1
        .iter()
        .map(|n| {
            let o = object(bucket.path(), &key(&t.join(n)));
            // Stored a minute ago (a file:// object's LastModified is its mtime).
            std::fs::File::open(&o)
                .unwrap()
                .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
                .unwrap();
            (o.clone(), std::fs::read(&o).unwrap())
        })
        .collect();
    for n in &gen1 {
        std::fs::remove_file(t.join(n)).unwrap();
    }
    let again = salted_transaction(&t, 1, 5, &[]);
    assert_eq!(again, gen1);
    let mut c = common::once_on_file(bucket.path(), data.path(), HOST);
    c.backup = true;
    // Other bytes under a name the newest restore point holds: a collision (as for a
    // replaced node reusing the host name), refused and reported, never named.
    let after = tokio::time::timeout(
        Duration::from_secs(120),
        tablesnap::daemon::run(c, std::future::pending()),
    )
    .await
    .expect("--once ends");
    assert!(
        matches!(
            after,
            Err(tablesnap::daemon::DaemonError::Incomplete { .. })
        ),
        "{after:?}"
    );
    let (k, named) = newest_index(bucket.path(), &t).unwrap();
    holds_the_files(bucket.path(), &t, &named, &format!("{k} ({after:?})"));
    // The earlier restore point's bytes are kept.
    unchanged(&old);
}

/// Item 3 after a restart, as a node does it: TRUNCATE (Cassandra first snapshots the table
/// as `snapshots/truncated-<ms>-TABLE`), a flush numbering `nb-1` again, all while tablesnap
/// was down. The snapshot tells the old objects from a replaced node's: they were stored
/// before the TRUNCATE, so they are superseded (kept) and the new SSTable is backed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_truncate_backs_up_the_reused_name_and_keeps_the_old_bytes() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let t = table(data.path());
    let gen1 = transaction(&t, 1, &[]);
    let names: BTreeSet<String> = gen1.iter().cloned().collect();
    let first = common::run_once(common::once_on_file(bucket.path(), data.path(), HOST)).await;
    assert!(first.indexes_written >= 1, "{first}");
    // The objects and their index were stored a while ago (a file:// object's
    // LastModified is its mtime).
    for e in std::fs::read_dir(object(bucket.path(), &key(&t)))
        .unwrap()
        .flatten()
    {
        std::fs::File::open(e.path())
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
            .unwrap();
    }
    let as_of = (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc3339();
    let before: Vec<(String, Vec<u8>)> = gen1
        .iter()
        .map(|n| (n.clone(), std::fs::read(t.join(n)).unwrap()))
        .collect();
    // TRUNCATE: the snapshot (hard links), then every SSTable deleted.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let snap = t.join(format!("snapshots/truncated-{ms}-t"));
    std::fs::create_dir_all(&snap).unwrap();
    for n in &gen1 {
        std::fs::hard_link(t.join(n), snap.join(n)).unwrap();
        std::fs::remove_file(t.join(n)).unwrap();
    }
    let again = salted_transaction(&t, 1, 5, &[]);
    assert_eq!(again, gen1);
    let mut c = common::once_on_file(bucket.path(), data.path(), HOST);
    c.backup = true;
    let after = tokio::time::timeout(
        Duration::from_secs(120),
        tablesnap::daemon::run(c, std::future::pending()),
    )
    .await
    .expect("--once ends")
    .expect("the reused names are backed up, not refused");
    assert_eq!(after.failures, 0, "{after}");
    assert!(after.files_superseded >= 1, "{after}");
    let (k, named) = newest_index(bucket.path(), &t).unwrap();
    assert_eq!(named, names, "{k}");
    holds_the_files(bucket.path(), &t, &names, &k);
    superseded_then_restored(bucket.path(), &t, &before, &names, &as_of);
}

/// Each of `names` in the file:// `bucket` holds the bytes of the file of that name in `dir`.
fn holds_the_files(bucket: &Path, dir: &Path, names: &BTreeSet<String>, what: &str) {
    for n in names {
        assert_eq!(
            std::fs::read(object(bucket, &key(&dir.join(n)))).unwrap(),
            std::fs::read(dir.join(n)).unwrap(),
            "{what} names {n}, whose object holds other bytes than the file"
        );
    }
}

/// Each object still holds the bytes it had.
fn unchanged(objects: &[(PathBuf, Vec<u8>)]) {
    for (o, b) in objects {
        assert_eq!(
            &std::fs::read(o).unwrap(),
            b,
            "{} was overwritten",
            o.display()
        );
    }
}
