//! tableslurp end to end: a bucket laid out exactly as the original tablesnap wrote it (keys,
//! `-listdir.json`, `md5sum`/`stat` metadata) holding real SSTables, restored by the binary,
//! compared byte for byte (sha256) with the originals. Failure cases check the exit code, the
//! message, and that no partial or corrupt file is left under a final name.

mod restore_util;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use restore_util::*;
use tablesnap::layout;

const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");

fn slurp(
    opts: &tablesnap::store::StoreOptions,
    c: &Cleanup,
    extra: &[&str],
    origin: &str,
    target: &Path,
) -> std::process::Output {
    let mut a = s(&["-n", HOST]);
    a.extend(s(extra));
    a.extend(bucket_args(opts, c));
    a.push(origin.into());
    a.push(target.display().to_string());
    run(SLURP, &a)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Expected sha256 of every file of corpus table `rel` among `names`.
fn expected(corpus: &Path, rel: &str, names: &[String]) -> BTreeMap<String, String> {
    names
        .iter()
        .map(|n| (n.clone(), sha256_file(&corpus.join(rel).join(n))))
        .collect()
}

const HELLO_FOO: &str = "hello/foo-c2cebe20d60d11ebab539116fc548b6b";

fn gen_names(corpus: &Path, rel: &str, prefix: &str) -> Vec<String> {
    corpus_tables(corpus)[rel]
        .iter()
        .filter(|n| n.starts_with(prefix))
        .cloned()
        .collect()
}

/// Two file sets of one table: generation 1 alone (old), then generations 1 and 2 (new).
/// Returns them and a moment between the two indexes.
fn two_filesets(
    w: &Writer,
    c: &Cleanup,
    corpus: &Path,
) -> (Vec<String>, Vec<String>, chrono::DateTime<chrono::Utc>) {
    let g1 = gen_names(corpus, HELLO_FOO, "md-1-");
    let all = gen_names(corpus, HELLO_FOO, "md-");
    let dir = format!("{DATA}/{HELLO_FOO}");
    for n in &all {
        w.put_file(&format!("{dir}/{n}"), &corpus.join(HELLO_FOO).join(n));
    }
    let i1 = w.put_index(&dir, "md-1-big-Data.db", &g1);
    if c.is_s3() {
        // LastModified cannot be set on S3: let two whole seconds pass instead.
        let after_i1 = chrono::Utc::now();
        std::thread::sleep(Duration::from_millis(2100));
        w.put_index(&dir, "md-2-big-Data.db", &all);
        return (g1, all, after_i1 + chrono::Duration::seconds(1));
    }
    let i2 = w.put_index(&dir, "md-2-big-Data.db", &all);
    assert!(backdate(c, &i1, 3600));
    assert!(backdate(c, &i2, 60));
    (g1, all, chrono::Utc::now() - chrono::Duration::minutes(30))
}

#[test]
fn newest_fileset_restores_byte_for_byte() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let (_, all, _) = two_filesets(&w, &c, &corpus);
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("restore");
    let o = slurp(&opts, &c, &[], &format!("{DATA}/{HELLO_FOO}"), &target);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(tree(&target), expected(&corpus, HELLO_FOO, &all));
    // Stored mode bits come back.
    let m = std::fs::metadata(target.join("md-2-big-Data.db")).unwrap();
    let src = std::fs::metadata(corpus.join(HELLO_FOO).join("md-2-big-Data.db")).unwrap();
    assert_eq!(m.mode() & 0o7777, src.mode() & 0o7777);

    // A second run finds everything present and fetches nothing.
    let o = slurp(&opts, &c, &[], &format!("{DATA}/{HELLO_FOO}"), &target);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains(&format!("{} already present", all.len())),
        "{}",
        stderr(&o)
    );
}

#[test]
fn file_flag_restores_that_fileset() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let (g1, _, _) = two_filesets(&w, &c, &corpus);
    let t = tempfile::tempdir().unwrap();
    let o = slurp(
        &opts,
        &c,
        &["-f", "md-1-big-Data.db"],
        &format!("{DATA}/{HELLO_FOO}"),
        t.path(),
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(tree(t.path()), expected(&corpus, HELLO_FOO, &g1));
    // An index that does not exist is a "nothing to restore" error: exit 3.
    let o = slurp(
        &opts,
        &c,
        &["-f", "md-9-big-Data.db"],
        &format!("{DATA}/{HELLO_FOO}"),
        t.path(),
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("md-9-big-Data.db-listdir.json"));
}

#[test]
fn as_of_restores_the_fileset_of_that_moment() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let (g1, _, mid) = two_filesets(&w, &c, &corpus);
    let t = tempfile::tempdir().unwrap();
    // Between the two indexes.
    let when = mid;
    let o = slurp(
        &opts,
        &c,
        &["--as-of", &when.to_rfc3339()],
        &format!("{DATA}/{HELLO_FOO}"),
        t.path(),
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(tree(t.path()), expected(&corpus, HELLO_FOO, &g1));
    // Before any index: nothing to restore (exit 3), nothing written.
    let t2 = tempfile::tempdir().unwrap();
    let early = (chrono::Utc::now() - chrono::Duration::days(1))
        .timestamp()
        .to_string();
    let o = slurp(
        &opts,
        &c,
        &["--as-of", &early],
        &format!("{DATA}/{HELLO_FOO}"),
        t2.path(),
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("nothing to restore"));
    assert!(tree(t2.path()).is_empty());
}

#[test]
fn equal_last_modified_restores_the_higher_generation() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let (_, all, _) = two_filesets(&w, &c, &corpus);
    // Both indexes in the same second; written in "wrong" order (gen 2's first) on purpose.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let dir = format!("{DATA}/{HELLO_FOO}");
    let i2 = layout::index_key(&w.layout.data_key(&format!("{dir}/md-2-big-Data.db")));
    let i1 = layout::index_key(&w.layout.data_key(&format!("{dir}/md-1-big-Data.db")));
    assert!(set_mtime(&c, &i2, t0));
    assert!(set_mtime(&c, &i1, t0 + Duration::from_millis(900)));
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &[], &dir, t.path());
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(tree(t.path()), expected(&corpus, HELLO_FOO, &all));
}

/// Backs up every table of the corpus (one index per Data.db naming the whole directory).
fn whole_corpus(w: &Writer, corpus: &Path) -> BTreeMap<String, Vec<String>> {
    let tables = corpus_tables(corpus);
    for (rel, names) in &tables {
        w.put_table(corpus, rel, names);
    }
    tables
}

#[test]
fn recursive_restores_every_table_and_commitlogs() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    let tables = whole_corpus(&w, &corpus);
    // Commit logs: one older than every index (skipped), two newer (restored). The indexes
    // were all written after `start`.
    let ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap() + 3_600_000;
    let old_ms = start.timestamp_millis() - 3_600_000;
    for (n, body) in [
        (format!("CommitLog-7-{old_ms}.log"), b"old".as_slice()),
        (format!("CommitLog-7-{ms}.log"), b"new1"),
        (format!("CommitLog-7-{}.log", ms + 10_000_000_000), b"new2"),
    ] {
        w.put_data(
            &format!("/var/lib/cassandra/commitlog_archive/{n}"),
            body,
            0o100644,
        );
    }
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("data");
    let mut a = s(&[
        "-n",
        HOST,
        "-r",
        "--commitlogs",
        "/var/lib/cassandra/commitlog_archive",
    ]);
    a.extend(bucket_args(&opts, &c));
    a.push(DATA.into());
    a.push(target.display().to_string());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0));
    let got = tree(&target);
    let mut want = BTreeMap::new();
    for (rel, names) in &tables {
        for (n, h) in expected(&corpus, rel, names) {
            want.insert(format!("{rel}/{n}"), h);
        }
    }
    for (n, body) in [
        (format!("CommitLog-7-{ms}.log"), b"new1".as_slice()),
        (format!("CommitLog-7-{}.log", ms + 10_000_000_000), b"new2"),
    ] {
        want.insert(
            format!("commitlogs/{n}"),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)),
        );
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

#[test]
fn corrupted_object_fails_with_exit_1_and_no_file() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let names = gen_names(&corpus, HELLO_FOO, "md-1-");
    let dir = format!("{DATA}/{HELLO_FOO}");
    for n in &names {
        let body = std::fs::read(corpus.join(HELLO_FOO).join(n)).unwrap();
        if n == "md-1-big-Filter.db" {
            // md5sum metadata of other bytes: what a corrupted object looks like.
            w.put_raw(
                &format!("{dir}/{n}"),
                &body,
                vec![(layout::META_MD5, md5_hex(b"something else"))],
            );
        } else {
            w.put_data(&format!("{dir}/{n}"), &body, 0o100644);
        }
    }
    w.put_index(&dir, "md-1-big-Data.db", &names);
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &[], &dir, t.path());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("md-1-big-Filter.db") && e.contains("MD5"), "{e}");
    assert!(e.contains("gave up after 5 attempts"), "{e}");
    let got = tree(t.path());
    // Every other file is restored; the corrupt one is not there, nor any temp file.
    let mut want = expected(&corpus, HELLO_FOO, &names);
    want.remove("md-1-big-Filter.db");
    // And the SSTable is reported as missing a component its TOC lists.
    assert!(e.contains("TOC.txt lists md-1-big-Filter.db"), "{e}");
    assert_eq!(got, want);

    // --verify names the bad key and exits 1, writing nothing.
    let mut a = s(&["-n", HOST, "--verify"]);
    a.extend(bucket_args(&opts, &c));
    a.push(dir.clone());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&w.layout.data_key(&format!("{dir}/md-1-big-Filter.db"))));
}

#[test]
fn verify_passes_on_a_good_bucket_and_writes_nothing() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    two_filesets(&w, &c, &corpus);
    let t = tempfile::tempdir().unwrap();
    let o = slurp(
        &opts,
        &c,
        &["--verify"],
        &format!("{DATA}/{HELLO_FOO}"),
        t.path(),
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("verified 16 files, 0 problems"),
        "{}",
        stderr(&o)
    );
    assert!(tree(t.path()).is_empty());
}

#[test]
fn index_naming_parent_dir_is_refused_and_nothing_escapes() {
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let dir = format!("{DATA}/ks/t-1");
    w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"data", 0o100644);
    w.put_data(&format!("{DATA}/ks/x"), b"outside", 0o100644);
    let key = layout::index_key(&w.layout.data_key(&format!("{dir}/nb-1-big-Data.db")));
    w.put_index_body(
        &key,
        br#"{"/var/lib/cassandra/data/ks/t-1": ["nb-1-big-Data.db", "../x"]}"#.to_vec(),
    );
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("t");
    let o = slurp(&opts, &c, &[], &dir, &target);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("\"../x\"") && e.contains(&key), "{e}");
    // Nothing at all was written, inside or outside TARGET.
    assert_eq!(tree(t.path()), BTreeMap::new());
}

#[test]
fn unwritable_target_is_a_clear_error() {
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let dir = format!("{DATA}/ks/t-1");
    w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"data", 0o100644);
    w.put_index(&dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
    let t = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: fails even for root.
    std::fs::write(t.path().join("file"), b"").unwrap();
    let target = t.path().join("file/restore");
    let o = slurp(&opts, &c, &[], &dir, &target);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("cannot create target directory"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn existing_files_are_never_overwritten_without_force() {
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let dir = format!("{DATA}/ks/t-1");
    w.put_data(
        &format!("{dir}/nb-1-big-Data.db"),
        b"the real data",
        0o100644,
    );
    w.put_index(&dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("nb-1-big-Data.db");
    std::fs::write(&f, b"local").unwrap();
    let o = slurp(&opts, &c, &[], &dir, t.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not overwritten"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&f).unwrap(), b"local");
    let o = slurp(&opts, &c, &["--force"], &dir, t.path());
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read(&f).unwrap(), b"the real data");
}

#[test]
fn dry_run_prints_the_plan_and_downloads_nothing() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    two_filesets(&w, &c, &corpus);
    let t = tempfile::tempdir().unwrap();
    let o = slurp(
        &opts,
        &c,
        &["--dry-run"],
        &format!("{DATA}/{HELLO_FOO}"),
        t.path(),
    );
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("md-2-big-Data.db-listdir.json"), "{out}");
    assert!(out.contains("16 files"), "{out}");
    assert!(out.contains("0 already present"), "{out}");
    assert!(tree(t.path()).is_empty());
}

#[test]
fn list_shows_the_inventory() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    two_filesets(&w, &c, &corpus);
    let mut a = s(&["-n", HOST, "--list"]);
    a.extend(bucket_args(&opts, &c));
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains(HELLO_FOO))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = line.split('\t').collect();
    assert_eq!(cols[0], HOST);
    assert_eq!(cols[2], "2", "two indexes: {line}");
    assert_eq!(cols[5], "18", "16 data objects + 2 indexes: {line}");
    // Every host.
    let mut a = s(&["-n", "*", "--list"]);
    a.extend(bucket_args(&opts, &c));
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains(HOST));
}

#[test]
fn preserve_and_owner_flags_chown() {
    // chown needs root.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: not root, cannot test chown");
        return;
    }
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let dir = format!("{DATA}/ks/t-1");
    // stat metadata says uid 105 / gid 107 ("cassandra", unknown here: ids are used).
    w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"data", 0o100640);
    w.put_index(&dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &["-p"], &dir, &t.path().join("p"));
    assert_eq!(o.status.code(), Some(0));
    let m = std::fs::metadata(t.path().join("p/nb-1-big-Data.db")).unwrap();
    let want_uid = tablesnap::restore::uid_of("cassandra").unwrap_or(105);
    let want_gid = tablesnap::restore::gid_of("cassandra").unwrap_or(107);
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (want_uid, want_gid, 0o640)
    );
    let o = slurp(
        &opts,
        &c,
        &["-o", "4242", "-g", "4343"],
        &dir,
        &t.path().join("o"),
    );
    assert_eq!(o.status.code(), Some(0));
    let m = std::fs::metadata(t.path().join("o/nb-1-big-Data.db")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4242, 4343));
    let o = slurp(
        &opts,
        &c,
        &["-o", "no-such-user-xyz"],
        &dir,
        &t.path().join("x"),
    );
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn prefix_and_separator_are_honoured_and_metadata_less_objects_restore() {
    let (opts, c) = dest();
    let prefix = format!("{}backups/", c.prefix);
    let w = Writer::with_layout(
        &opts,
        tablesnap::layout::Layout::new(prefix.clone(), HOST, "|"),
    );
    let dir = "/d/ks/t-1";
    // No md5sum/stat metadata at all: size-only verification, with a warning.
    w.put_raw(&format!("{dir}/nb-1-big-Data.db"), b"bare", vec![]);
    w.put_index(dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
    let t = tempfile::tempdir().unwrap();
    let mut a = s(&["-n", HOST, "--keyname-separator", "|"]);
    a.extend(bucket_args_with_prefix(&opts, &prefix));
    a.push(dir.into());
    a.push(t.path().display().to_string());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0));
    // On S3 the single-part ETag is the MD5 and is checked instead; a file:// bucket has
    // neither, so only the size is checked, with a warning.
    assert_eq!(
        stderr(&o).contains("verified the size only"),
        !c.is_s3(),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(t.path().join("nb-1-big-Data.db")).unwrap(),
        b"bare"
    );
    // Without the prefix (or with the default separator) nothing is found: exit 3.
    let o = slurp(&opts, &c, &["--keyname-separator", "|"], dir, t.path());
    assert_eq!(o.status.code(), Some(3));
    let mut a = s(&["-n", HOST]);
    a.extend(bucket_args_with_prefix(&opts, &prefix));
    a.push(dir.into());
    a.push(t.path().display().to_string());
    assert_eq!(run(SLURP, &a).status.code(), Some(3));
}

#[test]
fn missing_bucket_is_exit_3() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("file"), b"").unwrap();
    let o = run(
        SLURP,
        &s(&[
            "-n",
            HOST,
            &format!("file://{}/file/bucket", t.path().display()),
            "/d",
            &t.path().join("restore").display().to_string(),
        ]),
    );
    assert_eq!(o.status.code(), Some(3));
    // Bad usage is 2.
    let o = run(SLURP, &s(&["--no-such-flag"]));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn max_bandwidth_limits_the_download_rate() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    w.put_data("/data/ks/t-1/nb-1-big-Data.db", &body, 0o100644);
    w.put_index(
        "/data/ks/t-1",
        "nb-1-big-Data.db",
        &["nb-1-big-Data.db".to_string()],
    );
    let target = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let mut a = bucket_args(&opts, &c);
    a.extend([
        "-n".into(),
        HOST.into(),
        "--max-bandwidth".into(),
        "1M".into(),
    ]);
    a.push("/data/ks/t-1".into());
    a.push(target.path().to_str().unwrap().into());
    let o = run(SLURP, &a);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // 3 MiB at 1 MiB/s with one second of burst: at least two seconds.
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        std::fs::read(target.path().join("nb-1-big-Data.db")).unwrap(),
        body
    );
}
