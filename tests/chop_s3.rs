//! tablechop and tableslurp against the real S3 server, on backups written by tablesnap
//! itself: a compaction leaves an old index and its files behind; tablechop with AGE_DAYS 0
//! removes exactly those, and what remains restores byte for byte. (Ages other than "now"
//! need LastModified in the past, which only the file:// tests can fake: see chop_cli.rs.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;

const SNAP: &str = env!("CARGO_BIN_EXE_tablesnap");
const CHOP: &str = env!("CARGO_BIN_EXE_tablechop");
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");

fn run(bin: &str, s3: &common::S3, args: &[&str]) -> (i32, String) {
    common::run_bin(bin, args, &s3.cli_env())
}

fn copy_gen(src: &Path, dst: &Path, generation: &str) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(generation) {
            std::fs::copy(e.path(), dst.join(&n)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chop_after_compaction_keeps_exactly_the_newest_file_set_per_table() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("chops3");
    let data = tempfile::tempdir().unwrap();
    let foo_src = std::fs::read_dir(root.join("hello"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("foo-"))
        .unwrap();
    let foo = data.path().join("hello").join(foo_src.file_name().unwrap());
    let other = data
        .path()
        .join("ks2/standard1-4d331c44f018302b91c22dcf94c4bfad");
    std::fs::create_dir_all(&foo).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    copy_gen(&foo_src, &foo, "md-1-");
    common::copy_tree(
        root.join("Keyspace1/Standard1-4d331c44f018302b91c22dcf94c4bfad"),
        &other,
    );
    let dpath = data.path().to_str().unwrap();
    let snap = |s3: &common::S3| {
        run(
            SNAP,
            s3,
            &["--once", "-r", "-n", "h1", "-p", &prefix, &s3.bucket, dpath],
        )
    };
    let (code, out) = snap(&s3);
    assert_eq!(code, 0, "{out}");
    // LastModified has one-second resolution: the next index must be visibly newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Compaction: generation 2 replaces generation 1.
    copy_gen(&foo_src, &foo, "md-2-");
    for e in std::fs::read_dir(&foo).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("md-1-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let (code, out) = snap(&s3);
    assert_eq!(code, 0, "{out}");
    let before: BTreeSet<String> = s3
        .raw_keys(&prefix)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let gen1: BTreeSet<String> = before
        .iter()
        .filter(|k| k.contains("/md-1-"))
        .cloned()
        .collect();
    assert_eq!(
        gen1.len(),
        9,
        "8 components and an index of generation 1: {gen1:?}"
    );

    // Dry run deletes nothing and says what it would delete.
    let (code, out) = run(
        CHOP,
        &s3,
        &[
            "-d", "-l", "-n", "h1", "--prefix", &prefix, &s3.bucket, dpath, "0",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let now: BTreeSet<String> = s3
        .raw_keys(&prefix)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(now, before);
    for k in &gen1 {
        assert!(out.contains(k.as_str()), "dry run does not list {k}: {out}");
    }

    let (code, out) = run(
        CHOP,
        &s3,
        &["-n", "h1", "--prefix", &prefix, &s3.bucket, dpath, "0"],
    );
    assert_eq!(code, 0, "{out}");
    let after: BTreeSet<String> = s3
        .raw_keys(&prefix)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let expected: BTreeSet<String> = before.difference(&gen1).cloned().collect();
    assert_eq!(
        after, expected,
        "exactly generation 1 of hello/foo is deleted"
    );

    // What remains restores, byte for byte, for both tables.
    let target = tempfile::tempdir().unwrap();
    let (code, out) = run(
        SLURP,
        &s3,
        &[
            "-r",
            "-n",
            "h1",
            "--prefix",
            &prefix,
            &s3.bucket,
            dpath,
            target.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    for dir in [&foo, &other] {
        let rel = dir.strip_prefix(data.path()).unwrap();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let restored = target.path().join(rel).join(p.file_name().unwrap());
            assert_eq!(
                common::sha256_file(&restored),
                common::sha256_file(&p),
                "{}",
                restored.display()
            );
        }
        let n_local = std::fs::read_dir(dir).unwrap().count();
        let n_restored = std::fs::read_dir(target.path().join(rel)).unwrap().count();
        assert_eq!(n_local, n_restored, "{}", rel.display());
    }
}

/// PUTs (or DELETEs) a key exactly as given, bytes `object_store` refuses to name included,
/// with curl's SigV4 signing: the way another tool can leave such a key in a bucket.
fn raw_key_request(s3: &common::S3, method: &str, key: &str) {
    let mut enc = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            "--aws-sigv4",
            &format!("aws:amz:{}:s3", s3.region),
            "--user",
            &format!("{}:{}", s3.access_key, s3.secret_key),
            "--data-binary",
            "odd",
            &format!("{}/{}/{enc}", s3.endpoint, s3.bucket),
        ])
        .output()
        .expect("curl (needed to write a raw key) is not installed");
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(code.starts_with('2'), "{method} {key:?}: HTTP {code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_control_characters_are_skipped_once_and_the_listing_goes_on() {
    let s3 = common::s3();
    let store = s3.store();
    let prefix = s3.unique_prefix("oddkeys");
    let dir = format!("{prefix}h1:/d/ks/t-1");
    // More than one 1000-key page, with unusable keys in the first and the second page.
    let good: Vec<String> = (0..1100).map(|i| format!("{dir}/obj-{i:04}")).collect();
    futures::stream::iter(good.iter().map(|k| {
        let store = &store;
        async move {
            store
                .put(k, bytes::Bytes::from_static(b"g"), &Default::default())
                .await
                .unwrap()
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
    let odd = [
        format!("{dir}/obj-0500\tx"),
        format!("{dir}/obj-1050\nERROR forged line"),
        format!("{dir}/obj-1099//empty-segment"),
    ];
    for k in &odd {
        raw_key_request(&s3, "PUT", k);
    }

    let listed: Vec<String> = store
        .list_all(&format!("{prefix}h1:/d"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, good, "every usable key, in order, once");

    let (code, out) = run(
        CHOP,
        &s3,
        &[
            "-d", "--json", "-n", "h1", "--prefix", &prefix, &s3.bucket, "/d", "0",
        ],
    );
    assert_eq!(code, 0, "{out}");
    // Every usable key is decided once (kept: a directory with no index keeps its objects
    // for a day whatever AGE_DAYS, retention rule 7).
    assert_eq!(out.matches("\"action\":\"").count(), 1100, "{out}");
    assert_eq!(out.matches("\"action\":\"keep\"").count(), 1100, "{out}");
    assert_eq!(out.matches("key cannot be used").count(), 3, "{out}");
    assert!(!out.contains("\nERROR forged"), "raw newline in the log");

    for k in &odd {
        raw_key_request(&s3, "DELETE", k);
    }
    store.delete_many(good).await.unwrap();
}

#[tokio::test]
async fn check_exists_tells_a_missing_bucket_from_an_existing_one() {
    let s3 = common::s3();
    tablesnap::store::Store::open_existing(&s3.store_options())
        .unwrap()
        .check_exists()
        .await
        .unwrap();
    let mut o = s3.store_options();
    o.destination = "s3://tablesnap-no-such-bucket-wt-c".into();
    let e = tablesnap::store::Store::open_existing(&o)
        .unwrap()
        .check_exists()
        .await
        .unwrap_err();
    assert!(
        matches!(e, tablesnap::store::StoreError::BucketMissing { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("bucket missing"), "{e}");
}
