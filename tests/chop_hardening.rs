//! Bad inputs on `file://` buckets (issue #11): symlinks in the bucket tree are never followed
//! (tablechop deleted files outside the bucket through them; tableslurp restored a file from
//! outside), a missing bucket is exit 3 for tablechop, an unusable key does not fail the
//! listing, huge or hostile index bodies give one warning per index, and `tablechop --json`
//! prints one decision per object.

mod restore_util;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;

use restore_util::*;
use tablesnap::layout;
use tablesnap::store::{ErrorKind, Store, StoreError, StoreOptions};

const CHOP: &str = env!("CARGO_BIN_EXE_tablechop");
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const DAY: u64 = 86_400;

fn chop(opts: &StoreOptions, c: &Cleanup, extra: &[&str]) -> std::process::Output {
    let mut a = s(&["-n", HOST]);
    a.extend(s(extra));
    a.extend(bucket_args(opts, c));
    a.push(DATA.into());
    a.push("7".into());
    run(CHOP, &a)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The directory of `abs_dir` (a host path) inside the file:// bucket.
fn bucket_dir(c: &Cleanup, abs_dir: &str) -> std::path::PathBuf {
    object_file(c, &format!("{HOST}:{abs_dir}"))
}

#[test]
fn chop_never_deletes_outside_the_bucket_through_a_symlink() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    // A real table: one old index and its file, and an old unnamed file (deleted).
    let dir = format!("{DATA}/ks/t-1");
    let data = w.put_data(&format!("{dir}/nb-2-big-Data.db"), b"d", 0o100644);
    let idx = w.put_index(&dir, "nb-2-big-Data.db", &["nb-2-big-Data.db".into()]);
    let gone = w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"old", 0o100644);
    for k in [&data, &idx] {
        backdate(&c, k, 50 * DAY);
    }
    // Older than the index that does not name it (rule 7 keeps what is not).
    backdate(&c, &gone, 51 * DAY);
    // Outside the bucket: old files a symlinked directory and a symlinked file point to.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("nb-9-big-Data.db");
    std::fs::write(&victim, b"precious").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60 * DAY);
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::os::unix::fs::symlink(outside.path(), bucket_dir(&c, &format!("{DATA}/ks/evil"))).unwrap();
    std::os::unix::fs::symlink(&victim, bucket_dir(&c, &format!("{dir}/nb-0-big-Data.db")))
        .unwrap();

    let o = chop(&opts, &c, &["-l"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let err = stderr(&o);
    assert_eq!(
        err.matches("symlink in the file:// bucket").count(),
        2,
        "each symlink reported once: {err}"
    );
    assert!(!err.contains("nb-9-big-Data.db"), "{err}");
    // The real table was handled as usual, the links left alone.
    assert!(!object_file(&c, &gone).exists());
    assert!(object_file(&c, &data).exists() && object_file(&c, &idx).exists());
    assert!(
        std::fs::symlink_metadata(bucket_dir(&c, &format!("{DATA}/ks/evil")))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // The library refuses to delete or read through them too.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&opts).unwrap();
    let through_dir = format!("{HOST}:{DATA}/ks/evil/nb-9-big-Data.db");
    let link = format!("{HOST}:{dir}/nb-0-big-Data.db");
    for key in [&through_dir, &link] {
        let e = rt.block_on(store.delete(key)).unwrap_err();
        assert!(matches!(e, StoreError::Symlink { .. }), "{key}: {e}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn restore_never_reads_through_a_symlink() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let dir = format!("{DATA}/ks/t-1");
    let names: Vec<String> = vec!["nb-1-big-Data.db".into(), "nb-1-big-TOC.txt".into()];
    w.put_data(&format!("{dir}/nb-1-big-TOC.txt"), b"Data.db\n", 0o100644);
    w.put_index(&dir, "nb-1-big-Data.db", &names);
    // The Data.db "object" is a symlink to a 0600 file outside the bucket.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"TOP SECRET").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&secret, bucket_dir(&c, &format!("{dir}/nb-1-big-Data.db")))
        .unwrap();
    // And a whole table directory that is a symlink to outside.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("nb-5-big-Data.db"), b"TOP SECRET").unwrap();
    std::os::unix::fs::symlink(other.path(), bucket_dir(&c, &format!("{DATA}/ks/t-2"))).unwrap();

    let t = tempfile::tempdir().unwrap();
    let mut a = s(&["-n", HOST, "-r"]);
    a.extend(bucket_args(&opts, &c));
    a.push(DATA.into());
    a.push(t.path().display().to_string());
    let o = run(SLURP, &a);
    assert_ne!(
        o.status.code(),
        Some(0),
        "a restore missing an object succeeded"
    );
    for (p, sha) in tree(t.path()) {
        assert_ne!(
            sha,
            sha256_bytes(b"TOP SECRET"),
            "{p} holds the outside file"
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&opts).unwrap();
    for key in [
        format!("{HOST}:{dir}/nb-1-big-Data.db"),
        format!("{HOST}:{DATA}/ks/t-2/nb-5-big-Data.db"),
    ] {
        let e = rt.block_on(store.get_with_info(&key)).err().unwrap();
        assert!(matches!(e, StoreError::Symlink { .. }), "{key}: {e}");
        let e = rt.block_on(store.get_stream(&key, None)).err().unwrap();
        assert!(matches!(e, StoreError::Symlink { .. }), "{key}: {e}");
        assert!(rt.block_on(store.head(&key)).is_err(), "{key}");
        assert!(rt.block_on(store.get_bytes(&key)).is_err(), "{key}");
    }
    let listed = rt
        .block_on(store.list_all(&format!("{HOST}:{DATA}")))
        .unwrap();
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{HOST}:{dir}/nb-1-big-Data.db-listdir.json"),
            format!("{HOST}:{dir}/nb-1-big-TOC.txt")
        ]
    );
    // Plain objects still read, with their metadata, whole and by range.
    let toc = format!("{HOST}:{dir}/nb-1-big-TOC.txt");
    let (info, _) = rt.block_on(store.get_with_info(&toc)).unwrap();
    assert_eq!(info.size, 8);
    assert_eq!(info.expected_md5(), Some(md5_hex(b"Data.db\n")));
    let head = rt.block_on(store.head(&toc)).unwrap().unwrap();
    assert_eq!(head.metadata, info.metadata);
    let part: Vec<u8> = rt.block_on(async {
        use futures::TryStreamExt;
        let s = store.get_stream(&toc, Some(2..6)).await.unwrap();
        let v: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
        v.concat()
    });
    assert_eq!(part, b"ta.d");
    assert!(
        rt.block_on(store.head(&format!("{HOST}:{dir}/nope")))
            .unwrap()
            .is_none()
    );
}

#[test]
fn missing_file_bucket_is_exit_3_for_tablechop_and_is_not_created() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("typo");
    let url = format!("file://{}", missing.display());
    let o = run(CHOP, &s(&["-n", HOST, &url, "/d", "7"]));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("bucket missing"), "{}", stderr(&o));
    assert!(!missing.exists(), "tablechop created the bucket");

    let opts = StoreOptions {
        destination: url,
        ..Default::default()
    };
    let e = Store::open_existing(&opts).unwrap_err();
    assert!(matches!(e, StoreError::BucketMissing { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // tablesnap's side still creates it (its README's first command writes to a new dir).
    let store = Store::open(&opts).unwrap();
    assert!(missing.is_dir());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.check_exists()).unwrap();
    Store::open_existing(&opts).unwrap();
}

#[test]
fn a_key_with_control_characters_is_skipped_once_and_the_rest_goes_on() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let dir = format!("{DATA}/ks/t-1");
    let keep = w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"d", 0o100644);
    let idx = w.put_index(&dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
    let old = w.put_data(&format!("{dir}/nb-0-big-Data.db"), b"o", 0o100644);
    for k in [&keep, &idx] {
        backdate(&c, k, 50 * DAY);
    }
    backdate(&c, &old, 51 * DAY);
    // Names object_store cannot turn into a key: a tab, a newline (forged log line), ESC.
    let odd = [
        "nb-1-big-Data\t.db",
        "x\nERROR forged line",
        "\u{1b}[31mred",
    ];
    for n in odd {
        let p = bucket_dir(&c, &format!("{dir}/{n}"));
        std::fs::write(&p, b"odd").unwrap();
    }
    std::fs::create_dir(bucket_dir(&c, &format!("{DATA}/ks/dir\twith tab"))).unwrap();

    let o = chop(&opts, &c, &["-l"]);
    assert_eq!(o.status.code(), Some(0), "one odd key failed the listing");
    let err = stderr(&o);
    assert_eq!(
        err.matches("key cannot be used").count(),
        4,
        "each odd key reported once: {err}"
    );
    assert!(
        !err.contains("\nERROR forged"),
        "raw newline in the log: {err}"
    );
    assert!(err.contains("x\\nERROR forged line"), "{err}");
    assert!(!object_file(&c, &old).exists());
    assert!(object_file(&c, &keep).exists());

    // tableslurp --list and a restore read the same listing: they go on too.
    let mut a = s(&["--list", "-n", HOST]);
    a.extend(bucket_args(&opts, &c));
    a.push(DATA.into());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0), "--list failed on an odd key");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{HOST}\t{dir}\t1\t")));
    let t = tempfile::tempdir().unwrap();
    let mut a = s(&["-n", HOST]);
    a.extend(bucket_args(&opts, &c));
    a.push(dir.clone());
    a.push(t.path().display().to_string());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0), "a restore failed on an odd key");
    assert_eq!(
        std::fs::read(t.path().join("nb-1-big-Data.db")).unwrap(),
        b"d"
    );
    for n in odd {
        assert!(bucket_dir(&c, &format!("{dir}/{n}")).exists(), "{n:?}");
    }
}

#[test]
fn json_prints_one_decision_per_object() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let dir = format!("{DATA}/ks/t-1");
    let mut want: BTreeMap<String, (&str, &str)> = BTreeMap::new();
    let named = w.put_data(&format!("{dir}/nb-2-big-Data.db"), b"22", 0o100644);
    let idx2 = w.put_index(&dir, "nb-2-big-Data.db", &["nb-2-big-Data.db".into()]);
    let idx1 = w.put_index(&dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
    let old = w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"1", 0o100644);
    let young = w.put_data(&format!("{dir}/nb-3-big-Data.db"), b"333", 0o100644);
    for (k, d) in [
        (&named, 30),
        (&idx2, 20),
        (&idx1, 40),
        (&old, 40),
        (&young, 1),
    ] {
        backdate(&c, k, d * DAY);
    }
    want.insert(named.clone(), ("keep", "named by a kept index"));
    want.insert(idx2.clone(), ("keep", "newest index of its directory"));
    want.insert(
        idx1.clone(),
        ("delete", "older than AGE_DAYS and named by no kept index"),
    );
    want.insert(
        old.clone(),
        ("delete", "older than AGE_DAYS and named by no kept index"),
    );
    // Stored after the newest index: rule 7 (the next index may name it).
    want.insert(
        young.clone(),
        (
            "keep",
            "not older than its directory's newest index (the next index may name it)",
        ),
    );

    let before: BTreeSet<String> = all_keys(&opts, &c).into_iter().collect();
    let o = chop(&opts, &c, &["-d", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let mut got = BTreeMap::new();
    for line in out.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let obj = v.as_object().unwrap();
        assert_eq!(
            obj.keys().map(String::as_str).collect::<Vec<_>>(),
            ["key", "size", "last_modified", "action", "reason"]
        );
        let key = v["key"].as_str().unwrap().to_string();
        let size = std::fs::metadata(object_file(&c, &key)).unwrap().len();
        assert_eq!(v["size"].as_u64(), Some(size), "{key}");
        chrono::DateTime::parse_from_rfc3339(v["last_modified"].as_str().unwrap()).unwrap();
        got.insert(
            key,
            (
                v["action"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap().to_string(),
            ),
        );
    }
    // A dry run says what it would do: "would_delete", never "delete" (issue #19 item 7).
    let dry_want: BTreeMap<String, (String, String)> = want
        .iter()
        .map(|(k, (a, r))| {
            let a = if *a == "delete" { "would_delete" } else { a };
            (k.clone(), (a.to_string(), r.to_string()))
        })
        .collect();
    assert_eq!(got, dry_want);
    let after: BTreeSet<String> = all_keys(&opts, &c).into_iter().collect();
    assert_eq!(after, before, "-d deleted something");

    // Without -d the same decisions are carried out, and said as done.
    let o = chop(&opts, &c, &["--json"]);
    assert_eq!(o.status.code(), Some(0));
    let wet = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        wet,
        out.replace("\"action\":\"would_delete\"", "\"action\":\"delete\"")
    );
    assert_eq!(
        wet.matches("\"action\":\"delete\"").count(),
        want.values().filter(|(a, _)| *a == "delete").count()
    );
    let after: BTreeSet<String> = all_keys(&opts, &c).into_iter().collect();
    let kept: BTreeSet<String> = got
        .iter()
        .filter(|(_, (a, _))| a == "keep")
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(after, kept);
}

#[test]
fn huge_or_hostile_index_gives_one_warning_and_keeps_its_directory() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    // t-1: the newest index is over 64 MiB. t-2: the newest index names 300,000 bad names.
    let mut keys = Vec::new();
    for (t, body) in [
        ("t-1", {
            let mut b = format!("{{\"{DATA}/ks/t-1\": [").into_bytes();
            b.resize((layout::MAX_INDEX_BYTES + 10) as usize, b' ');
            b.extend_from_slice(b"]}");
            b
        }),
        ("t-2", {
            let mut b = format!("{{\"{DATA}/ks/t-2\": [").into_bytes();
            for i in 0..300_000 {
                b.extend_from_slice(format!("\"../../etc/{i}\\n\", ").as_bytes());
            }
            b.extend_from_slice(b"\"nb-1-big-Data.db\"]}");
            b
        }),
    ] {
        let dir = format!("{DATA}/ks/{t}");
        keys.push(w.put_data(&format!("{dir}/nb-0-big-Data.db"), b"old", 0o100644));
        keys.push(w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"d", 0o100644));
        let k = layout::index_key(&w.layout.data_key(&format!("{dir}/nb-1-big-Data.db")));
        keys.push(w.put_index_body(&k, body));
    }
    for k in &keys {
        backdate(&c, k, 50 * DAY);
    }
    let o = chop(&opts, &c, &[]);
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert_eq!(err.matches("cannot read index").count(), 2, "{err}");
    assert!(err.contains("larger than 67108864 bytes"), "{err}");
    assert!(err.contains("300000 entries"), "{err}");
    assert!(
        err.len() < 20_000,
        "log grows with the bad names: {} bytes",
        err.len()
    );
    for k in &keys {
        assert!(object_file(&c, k).exists(), "{k} deleted");
    }
}

fn sha256_bytes(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn a_file_where_a_directory_should_be_is_no_such_object() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let k = w.put_data(&format!("{DATA}/ks/f"), b"x", 0o100644);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&opts).unwrap();
    let under = format!("{k}/below");
    assert!(rt.block_on(store.head(&under)).unwrap().is_none());
    let e = rt.block_on(store.get_bytes(&under)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    rt.block_on(store.delete(&under)).unwrap();
    assert!(object_file(&c, &k).exists());
}
