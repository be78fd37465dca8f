//! tableslurp against the bad inputs of issue #11, on `file://` buckets holding real
//! SSTables: incomplete newest indexes, setuid bits and owners from the bucket, symlinks in
//! TARGET, wrong bytes of the right size, long names, objects with no checksum, control
//! characters in names. Each asserts on exit codes, bytes, modes and owners.

mod restore_util;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use restore_util::*;
use tablesnap::layout::{self, StatMeta};

const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const HELLO_FOO: &str = "hello/foo-c2cebe20d60d11ebab539116fc548b6b";

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

fn names(corpus: &Path, prefix: &str) -> Vec<String> {
    corpus_tables(corpus)[HELLO_FOO]
        .iter()
        .filter(|n| n.starts_with(prefix))
        .cloned()
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Generation 1 alone (an hour ago), then generations 1 and 2 (a minute ago); then
/// generation 2's Data.db is deleted from the bucket, as a lifecycle rule or a hand might.
fn newest_index_lacks_an_object(
    w: &Writer,
    c: &Cleanup,
    corpus: &Path,
) -> (Vec<String>, String, String) {
    let g1 = names(corpus, "md-1-");
    let all = names(corpus, "md-");
    let dir = format!("{DATA}/{HELLO_FOO}");
    for n in &all {
        w.put_file(&format!("{dir}/{n}"), &corpus.join(HELLO_FOO).join(n));
    }
    let i1 = w.put_index(&dir, "md-1-big-Data.db", &g1);
    let i2 = w.put_index(&dir, "md-2-big-Data.db", &all);
    assert!(backdate(c, &i1, 3600));
    assert!(backdate(c, &i2, 60));
    std::fs::remove_file(object_file(
        c,
        &w.layout.data_key(&format!("{dir}/md-2-big-Data.db")),
    ))
    .unwrap();
    (g1, i1, i2)
}

#[test]
fn an_incomplete_newest_index_falls_back_to_the_previous_one_with_a_warning() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let (g1, i1, i2) = newest_index_lacks_an_object(&w, &c, &corpus);
    let dir = format!("{DATA}/{HELLO_FOO}");
    let t = tempfile::tempdir().unwrap();

    // --dry-run shows which index is complete.
    let o = slurp(&opts, &c, &["--dry-run"], &dir, t.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("newer index {i2}"))
            && out.contains("incomplete: 1 object(s) missing (md-2-big-Data.db)")
            && out.contains(&format!("index {i1}")),
        "{out}"
    );

    let target = t.path().join("r");
    let o = slurp(&opts, &c, &[], &dir, &target);
    assert_eq!(o.status.code(), Some(0));
    let want: std::collections::BTreeMap<String, String> = g1
        .iter()
        .map(|n| (n.clone(), sha256_file(&corpus.join(HELLO_FOO).join(n))))
        .collect();
    assert_eq!(tree(&target), want);
    let err = stderr(&o);
    let warn = err
        .lines()
        .find(|l| l.contains("WARN") && l.contains(&i2) && l.contains(&i1))
        .unwrap_or_else(|| panic!("no warning naming both indexes: {err}"));
    assert!(warn.contains("md-2-big-Data.db"), "{warn}");

    // -f of the incomplete one: an error naming what is missing, nothing restored.
    let t2 = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &["-f", "md-2-big-Data.db"], &dir, t2.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("incomplete") && stderr(&o).contains("md-2-big-Data.db"),
        "{}",
        stderr(&o)
    );
    assert!(tree(t2.path()).is_empty());
    // --as-of a moment after the incomplete index: the same.
    let o = slurp(
        &opts,
        &c,
        &["--as-of", "2999-01-01T00:00:00Z"],
        &dir,
        t2.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&i2), "{}", stderr(&o));
    assert!(tree(t2.path()).is_empty());
}

/// Bad input 1: `stat` metadata with setuid (mode 35309 = 0o104755) and another owner.
#[test]
fn setuid_from_the_bucket_is_dropped_and_owners_are_set() {
    let Some(corpus) = corpus() else { return };
    if !is_root() {
        eprintln!("SKIPPED: not root, cannot test owners");
        return;
    }
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let dir = "/d/ks/t-1";
    let data = std::fs::read(corpus.join(HELLO_FOO).join("md-1-big-Data.db")).unwrap();
    let stat = StatMeta {
        uid: 65534,
        gid: 65534,
        mode: 35309,
        user: None,
        group: None,
    };
    w.put_raw(
        &format!("{dir}/md-1-big-Data.db"),
        &data,
        vec![
            (layout::META_STAT, stat.to_json()),
            (layout::META_MD5, md5_hex(&data)),
        ],
    );
    // No stat at all: takes TARGET's owner and group, mode 0644.
    w.put_raw(
        &format!("{dir}/md-1-big-TOC.txt"),
        b"Data.db\nTOC.txt\n",
        vec![(layout::META_MD5, md5_hex(b"Data.db\nTOC.txt\n"))],
    );
    w.put_index(
        dir,
        "md-1-big-Data.db",
        &s(&["md-1-big-Data.db", "md-1-big-TOC.txt"]),
    );
    for preserve in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("r");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::chown(&target, Some(4242), Some(4343)).unwrap();
        let extra: &[&str] = if preserve { &["-p"] } else { &[] };
        let o = slurp(&opts, &c, extra, dir, &target);
        assert_eq!(o.status.code(), Some(0));
        let m = std::fs::metadata(target.join("md-1-big-Data.db")).unwrap();
        assert_eq!(
            m.mode() & 0o7777,
            0o755,
            "preserve={preserve}: setuid dropped"
        );
        let want_uid = if preserve { 65534 } else { 0 };
        assert_eq!((m.uid(), m.gid()), (want_uid, want_uid));
        assert_eq!(
            std::fs::read(target.join("md-1-big-Data.db")).unwrap(),
            data
        );
        let m = std::fs::metadata(target.join("md-1-big-TOC.txt")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!((m.uid(), m.gid()), (4242, 4343));
    }
}

/// Bad input 3: a table directory in TARGET that is a symlink to another directory.
#[test]
fn a_symlinked_table_directory_in_target_is_refused_by_name() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let g1 = names(&corpus, "md-1-");
    w.put_table(&corpus, HELLO_FOO, &g1);
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = t.path().join("data");
    std::fs::create_dir_all(target.join("hello")).unwrap();
    let link = target.join(HELLO_FOO);
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let o = slurp(&opts, &c, &[&["-r"][..], extra].concat(), DATA, &target);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(
            err.contains(&link.display().to_string()) && err.contains("symlink"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}

/// Bad input 4: a file in TARGET with the right size but other bytes is not "present".
#[test]
fn right_size_wrong_bytes_is_not_already_present() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let g1 = names(&corpus, "md-1-");
    w.put_table(&corpus, HELLO_FOO, &g1);
    let dir = format!("{DATA}/{HELLO_FOO}");
    let t = tempfile::tempdir().unwrap();
    assert_eq!(slurp(&opts, &c, &[], &dir, t.path()).status.code(), Some(0));
    let f = t.path().join("md-1-big-Data.db");
    let good = std::fs::read(&f).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x01;
    std::fs::write(&f, &bad).unwrap();
    let o = slurp(&opts, &c, &[], &dir, t.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("different content"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&f).unwrap(),
        bad,
        "not overwritten without --force"
    );
    let o = slurp(&opts, &c, &["--force"], &dir, t.path());
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read(&f).unwrap(), good);
    // Unchanged files are still recognised as present (by checksum).
    let o = slurp(&opts, &c, &[], &dir, t.path());
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains(&format!("{} already present", g1.len())),
        "{}",
        stderr(&o)
    );
}

/// Bad input 8: names of 240-255 bytes restore (the temp name used to add 16 bytes).
#[test]
fn names_up_to_name_max_restore() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let dir = "/d/ks/t-1";
    let data = std::fs::read(corpus.join(HELLO_FOO).join("md-1-big-Data.db")).unwrap();
    let mut listed = Vec::new();
    for len in [240usize, 250, 255] {
        let n = format!("{}-Data.db", "x".repeat(len - 8));
        assert_eq!(n.len(), len);
        // Written straight into the file:// bucket: the store's own upload adds a suffix to
        // its temp name, which does not fit next to a 255-byte name.
        let obj = object_file(&c, &w.layout.data_key(&format!("{dir}/{n}")));
        std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
        std::fs::write(&obj, &data).unwrap();
        listed.push(n);
    }
    w.put_index(dir, "nb-1-big-Data.db", &listed);
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &[], dir, t.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for n in &listed {
        assert_eq!(
            std::fs::read(t.path().join(n)).unwrap(),
            data,
            "{}",
            n.len()
        );
    }
    assert_eq!(tree(t.path()).len(), 3, "no temp file left");
}

/// Bad input 8: an object with no checksum at all (no md5sum, no single-part ETag on a
/// file:// bucket) is flagged by --verify.
#[test]
fn verify_flags_objects_without_any_checksum() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let dir = "/d/ks/t-1";
    let data = std::fs::read(corpus.join(HELLO_FOO).join("md-1-big-Filter.db")).unwrap();
    w.put_raw(&format!("{dir}/md-1-big-Filter.db"), &data, vec![]);
    w.put_data(&format!("{dir}/md-1-big-TOC.txt"), b"Filter.db\n", 0o100644);
    w.put_index(
        dir,
        "md-1-big-Data.db",
        &s(&["md-1-big-Filter.db", "md-1-big-TOC.txt"]),
    );
    let mut a = s(&["-n", HOST, "--verify"]);
    a.extend(bucket_args(&opts, &c));
    a.push(dir.into());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("md-1-big-Filter.db") && err.contains("no checksum"),
        "{err}"
    );
    assert!(!err.contains("md-1-big-TOC.txt: no checksum"), "{err}");
}

/// Bad input 8: raw control characters from names never reach the log.
#[test]
fn control_characters_in_names_are_escaped_in_logs() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let dir = "/d/ks/t-1";
    w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"data", 0o100644);
    let evil = "x\nERROR forged line\r\u{1b}[31m";
    w.put_index(
        dir,
        "nb-1-big-Data.db",
        &["nb-1-big-Data.db".to_string(), evil.to_string()],
    );
    let t = tempfile::tempdir().unwrap();
    for extra in [&[][..], &["--dry-run"][..]] {
        let o = slurp(&opts, &c, extra, dir, t.path());
        assert_eq!(o.status.code(), Some(1));
        let all = format!("{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
        assert!(!all.contains('\r') && !all.contains('\u{1b}'), "{all:?}");
        assert!(
            !all.lines().any(|l| l.starts_with("ERROR forged")),
            "{all:?}"
        );
        assert!(all.contains("x\\nERROR forged line"), "{all:?}");
    }
}

/// A `Data.db` already corrupt on the node's disk (one byte flipped before upload, its
/// md5sum metadata computed from the flipped bytes, as tablesnap would): MD5 passes, the
/// SSTable's own Digest does not. --verify names host, table, SSTable and index; a restore
/// exits 1 and the file does not appear.
#[test]
fn a_data_db_corrupt_at_the_source_fails_its_digest() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let g1 = names(&corpus, "md-1-");
    assert!(g1.iter().any(|n| n.ends_with("Digest.crc32")), "{g1:?}");
    let dir = format!("{DATA}/{HELLO_FOO}");
    for n in &g1 {
        let mut body = std::fs::read(corpus.join(HELLO_FOO).join(n)).unwrap();
        if n == "md-1-big-Data.db" {
            let i = body.len() / 3;
            body[i] ^= 0x01;
        }
        w.put_data(&format!("{dir}/{n}"), &body, 0o100644);
    }
    let index = w.put_index(&dir, "md-1-big-Data.db", &g1);
    let mut a = s(&["-n", HOST, "--verify"]);
    a.extend(bucket_args(&opts, &c));
    a.push(dir.clone());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("does not match its Digest"))
        .unwrap_or_else(|| panic!("{err}"));
    for want in [HOST, dir.as_str(), "SSTable md-1-big-", index.as_str()] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &[], &dir, t.path());
    assert_eq!(o.status.code(), Some(1));
    // Confirmed once with MD5 too (it matches: the bytes are what was uploaded), then
    // reported.
    let err = stderr(&o);
    assert!(err.contains("checking again with MD5 as well"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("ERROR") && l.contains("does not match its Digest")),
        "{err}"
    );
    assert!(!t.path().join("md-1-big-Data.db").exists());
    assert!(
        !tree(t.path()).keys().any(|k| k.contains("tableslurp-tmp")),
        "no temp file left"
    );
    // The good copy passes both.
    let (opts2, c2) = file_dest();
    let w2 = Writer::new(&opts2, &c2);
    w2.put_table(&corpus, HELLO_FOO, &g1);
    let mut a = s(&["-n", HOST, "--verify"]);
    a.extend(bucket_args(&opts2, &c2));
    a.push(dir.clone());
    assert_eq!(run(SLURP, &a).status.code(), Some(0));
}

/// Room before bytes: a restore that cannot fit in TARGET's filesystem (a 256 KiB tmpfs
/// here) is refused before any download, with one line naming both figures; --dry-run
/// shows them.
#[test]
fn a_restore_that_cannot_fit_is_refused_before_downloading() {
    let Some(corpus) = corpus() else { return };
    if !is_root() {
        eprintln!("SKIPPED: not root, cannot mount a small tmpfs");
        return;
    }
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let rel = "baselines/iot-5b608090e03d11ebb4c1d335f841c590"; // ~1.1 MiB: cannot fit
    let names = corpus_tables(&corpus)[rel].clone();
    w.put_table(&corpus, rel, &names);
    let dir = format!("{DATA}/{rel}");
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: cannot mount tmpfs");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    let target = mnt.join("r");
    let o = slurp(&opts, &c, &["--dry-run"], &dir, &target);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("room: ") && l.contains("to fetch") && l.contains("NOT ENOUGH")),
        "{out}"
    );
    let o = slurp(&opts, &c, &[], &dir, &target);
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("not enough room"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("to fetch") && line.contains("free"), "{line}");
    assert!(tree(&mnt).is_empty(), "nothing downloaded");
}

/// --no-fsync still verifies every file and restores the same bytes (only the durability
/// wait is skipped).
#[test]
fn no_fsync_restores_the_same_verified_bytes() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let g1 = names(&corpus, "md-1-");
    let dir = format!("{DATA}/{HELLO_FOO}");
    for n in &g1 {
        let mut body = std::fs::read(corpus.join(HELLO_FOO).join(n)).unwrap();
        if n == "md-1-big-Data.db" {
            body[7] ^= 1;
        }
        w.put_data(&format!("{dir}/{n}"), &body, 0o100644);
    }
    w.put_index(&dir, "md-1-big-Data.db", &g1);
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &["--no-fsync"], &dir, t.path());
    assert_eq!(o.status.code(), Some(1), "the Digest is still checked");
    assert!(!t.path().join("md-1-big-Data.db").exists());
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    w.put_table(&corpus, HELLO_FOO, &g1);
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &["--no-fsync"], &dir, t.path());
    assert_eq!(o.status.code(), Some(0));
    let want: std::collections::BTreeMap<String, String> = g1
        .iter()
        .map(|n| (n.clone(), sha256_file(&corpus.join(HELLO_FOO).join(n))))
        .collect();
    assert_eq!(tree(t.path()), want);
}

/// Bad input 6: an index body over the 64 MiB cap is never fetched; the table steps back
/// to the older complete index (with the warning), and alone it is one clear error.
#[test]
fn an_index_over_the_cap_is_not_read_and_the_previous_one_is_used() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let g1 = names(&corpus, "md-1-");
    let dir = format!("{DATA}/{HELLO_FOO}");
    for n in &g1 {
        w.put_file(&format!("{dir}/{n}"), &corpus.join(HELLO_FOO).join(n));
    }
    let i1 = w.put_index(&dir, "md-1-big-Data.db", &g1);
    assert!(backdate(&c, &i1, 3600));
    // A 65 MiB index (sparse: the listing size is what counts).
    let big = w.put_index(&dir, "md-2-big-Data.db", &g1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(object_file(&c, &big))
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &[], &dir, t.path());
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.lines()
            .any(|l| l.contains(&big) && l.contains(&i1) && l.contains("limit")),
        "{err}"
    );
    assert_eq!(tree(t.path()).len(), g1.len());
    // -f of the big one: one error naming it.
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &["-f", "md-2-big-Data.db"], &dir, t.path());
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(
        err.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{err}"
    );
    assert!(err.contains(&big) && err.contains("limit"), "{err}");
}

/// Bad input 7: one object key with a tab or newline under the prefix does not block the
/// restore of everything else.
#[test]
fn an_odd_key_under_the_prefix_does_not_block_the_restore() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let g1 = names(&corpus, "md-1-");
    w.put_table(&corpus, HELLO_FOO, &g1);
    let dir = format!("{DATA}/{HELLO_FOO}");
    for odd in ["bad\tname", "bad\nname"] {
        let f = object_file(&c, &w.layout.data_key(&format!("{dir}/{odd}")));
        std::fs::write(f, b"x").unwrap();
    }
    let t = tempfile::tempdir().unwrap();
    let o = slurp(&opts, &c, &[], &dir, t.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(tree(t.path()).len(), g1.len());
    let mut a = s(&["-n", HOST, "--list"]);
    a.extend(bucket_args(&opts, &c));
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("bad\nname"));
}
