//! Sealed backups (issue #16) through the three binaries, on every backend: `file://`, S3
//! (Garage), Azure (Azurite) and GCS (fake-gcs-server), the bucket read back through each
//! backend's own client.
//!
//! One bucket holds a table backed up in clear before sealing was turned on, and tables
//! sealed to two recipients (one by `--recipient`, one in a `--recipients-file`): a
//! snapshot of them (its links copied in the store, not sealed again) and a 12 MiB
//! `Data.db` stored as three multipart parts and restored as parallel ranges. Checked: every
//! sealed object is a standard age file that the `age` crate, and the stock `age` tool when
//! installed (required in CI), decrypts to the file; its metadata; indexes in clear; a
//! restart uploads nothing; a restore without an identity or with the wrong one stops
//! before writing anything (exit 3, naming the object); the right identity (either one)
//! restores byte-identical; `--verify` says what it checked; a flipped byte is found,
//! fetched again, reported, and nothing appears under the file's name.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use age::secrecy::ExposeSecret;
use common::backend::{Backend, azure, gcs, local, opath, s3};
use object_store::{Attribute, AttributeValue, Attributes, PutOptions, PutPayload};
use tablesnap::layout::{self, Layout};

const SNAP: &str = env!("CARGO_BIN_EXE_tablesnap");
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const HOST: &str = "sealed-node";
const FOO: &str = "hello/foo-c2cebe20d60d11ebab539116fc548b6b";
const JB: &str = "Keyspace1/Standard1-4d331c44f018302b91c22dcf94c4bfad";
const IOT: &str = "baselines/iot-5b608090e03d11ebb4c1d335f841c590";
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_on_file() {
    let tmp = tempfile::tempdir().unwrap();
    suite(local(&tmp.path().join("bucket"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_on_s3_garage() {
    suite(s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_on_azure_azurite() {
    if let Some(b) = azure() {
        suite(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_on_gcs_fake_gcs_server() {
    if let Some(b) = gcs() {
        suite(b).await;
    }
}

use common::files_with_bytes as tree;

fn copy_table(rel: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(common::sample_sstables().join(rel)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// An identity file as age-keygen writes it, and its public key.
fn keygen(path: &Path) -> (age::x25519::Identity, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    std::fs::write(
        path,
        format!(
            "# created: 2026-12-05T00:00:00Z\n# public key: {public}\n{}\n",
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    (id, public)
}

fn decrypt(id: &age::x25519::Identity, sealed: &[u8]) -> Vec<u8> {
    let d = age::Decryptor::new(sealed).expect("an age file");
    let mut out = Vec::new();
    d.decrypt(std::iter::once(id as &dyn age::Identity))
        .expect("the identity opens it")
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The stock `age` tool, required in CI (Debian's `age` package).
fn stock_age() -> Option<&'static str> {
    let ok = std::process::Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && common::backend::required() {
        panic!("the stock age tool is not installed (apt-get install age); CI requires it");
    }
    ok.then_some("age")
}

async fn suite(b: Backend) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("t-sealed-{}-{}-{nanos}/", b.name, std::process::id());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dpath = data.to_str().unwrap().to_string();
    let layout = Layout::new(prefix.clone(), HOST, ":");
    let run = |bin: &str, args: &[&str]| common::run_bin(bin, args, &b.env);
    let base = ["-n", HOST, "--prefix", &prefix];

    // 1. A table backed up in clear, before sealing was turned on.
    copy_table(JB, &data.join(JB));
    let mut args = vec!["--once", "-r"];
    args.extend(base);
    args.extend([b.dest.as_str(), dpath.as_str()]);
    let (code, out) = run(SNAP, &args);
    assert_eq!(code, 0, "{}: plain backfill: {out}", b.name);

    // 2. Sealing on: two recipients, one of them from a file (the break-glass key).
    let (id1, r1) = keygen(&tmp.path().join("team.key"));
    let (id2, r2) = keygen(&tmp.path().join("breakglass.key"));
    let (_, _) = keygen(&tmp.path().join("other.key"));
    let rfile = tmp.path().join("recipients.txt");
    std::fs::write(&rfile, format!("# break-glass, in the safe\n{r2}\n")).unwrap();
    copy_table(FOO, &data.join(FOO));
    // A 12 MiB Data.db (three 5 MiB parts), its Digest made to match.
    copy_table(IOT, &data.join(IOT));
    // Random bytes (as an LZ4-compressed Data.db is, to zstd): stored as they are.
    let mut big = vec![0u8; 12 << 20];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 32) as u8;
    }
    std::fs::write(data.join(IOT).join("md-2-big-Data.db"), &big).unwrap();
    std::fs::write(
        data.join(IOT).join("md-2-big-Digest.crc32"),
        crc32fast::hash(&big).to_string(),
    )
    .unwrap();
    // A 24 MiB Index.db that compresses about 2.4:1: compressed, then sealed, in two parts.
    // (12 MiB where the server takes no multipart upload: one PUT.)
    let index_len = if b.multipart { 24 << 20 } else { 12 << 20 };
    let mut index = Vec::with_capacity(index_len);
    let mut i = 0u64;
    while index.len() < index_len {
        index.extend_from_slice(
            format!(
                "key {:016x} pos {}\n",
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                i * 37
            )
            .as_bytes(),
        );
        i += 1;
    }
    index.truncate(index_len);
    std::fs::write(data.join(IOT).join("md-2-big-Index.db"), &index).unwrap();
    // A snapshot: hard links of the live files.
    let snap = data.join(FOO).join("snapshots").join("before-upgrade");
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(data.join(FOO)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::hard_link(&p, snap.join(p.file_name().unwrap())).unwrap();
        }
    }
    let rf = rfile.to_str().unwrap();
    let mut sealed_args = vec![
        "--once",
        "-r",
        "--recipient",
        &r1,
        "--recipients-file",
        rf,
        "--listen-events",
        "IN_MOVED_TO,IN_CLOSE_WRITE,IN_CREATE",
        "--compress",
        "zstd",
    ];
    if b.multipart {
        sealed_args.extend(["--max-upload-size", "1", "--multipart-chunk-size", "5"]);
    }
    sealed_args.extend(base);
    sealed_args.extend([b.dest.as_str(), dpath.as_str()]);
    let (code, out) = run(SNAP, &sealed_args);
    assert_eq!(code, 0, "{}: sealed backfill: {out}", b.name);

    // 3. What is stored: every object of the sealed tables an age file with its marks,
    // decrypting to the file; the plain table untouched; indexes in clear.
    let stored = b.keys(&prefix).await;
    let mut sealed_keys = 0;
    let age_tool = stock_age();
    for (rel, bytes) in tree(&data) {
        let path = data.join(&rel);
        let key = layout.data_key(path.to_str().unwrap());
        let body = b.get(&key).await;
        let (meta, _) = b.head(&key).await;
        if rel.starts_with(JB) {
            assert_eq!(body, bytes, "{}: {key} stays as stored in clear", b.name);
            assert!(!meta.contains_key("sealed"), "{}: {key}", b.name);
            continue;
        }
        sealed_keys += 1;
        assert!(
            body.starts_with(AGE_MAGIC),
            "{}: {key} is not an age file",
            b.name
        );
        assert_eq!(
            meta.get("sealed").map(String::as_str),
            Some("age"),
            "{}: {key}",
            b.name
        );
        assert_eq!(
            meta.get("plainsize"),
            Some(&bytes.len().to_string()),
            "{}: {key}",
            b.name
        );
        assert_eq!(
            meta.get("md5sum"),
            Some(&hex::encode(<md5::Md5 as md5::Digest>::digest(&bytes))),
            "{}: {key}: md5sum is the file's",
            b.name
        );
        assert_eq!(
            meta.get("sealedcrc32"),
            Some(&format!("{:08x}", crc32fast::hash(&body))),
            "{}: {key}",
            b.name
        );
        assert!(meta.contains_key("stat"), "{}: {key}", b.name);
        // Either recipient opens it; compressed (where that saves a tenth), then sealed.
        let id = if sealed_keys % 2 == 0 { &id1 } else { &id2 };
        let mut opened = decrypt(id, &body);
        let compressible = bytes.len() >= 4096
            && zstd::bulk::compress(&bytes, 3).unwrap().len() * 10 < bytes.len() * 8;
        if meta.get("compressed").map(String::as_str) == Some("zstd") {
            opened = zstd::stream::decode_all(&opened[..]).unwrap();
        } else {
            assert!(
                !compressible,
                "{}: {key} compresses well but is stored as it is",
                b.name
            );
        }
        assert!(opened == bytes, "{}: {key} decrypts to other bytes", b.name);
        // The snapshot's link is a copy of the live object: the same ciphertext.
        if let Ok(in_snap) = rel.strip_prefix(Path::new(FOO).join("snapshots/before-upgrade")) {
            let live = layout.data_key(data.join(FOO).join(in_snap).to_str().unwrap());
            assert!(
                b.get(&live).await == body,
                "{}: {key} was sealed again, not copied",
                b.name
            );
        }
    }
    assert!(
        sealed_keys >= 30,
        "{}: only {sealed_keys} sealed objects",
        b.name
    );
    // The big Data.db (random bytes) is stored as it is; the Index.db compressed.
    let dkey = layout.data_key(data.join(IOT).join("md-2-big-Data.db").to_str().unwrap());
    let (meta, _) = b.head(&dkey).await;
    assert!(
        !meta.contains_key("compressed"),
        "{}: an incompressible file stored compressed",
        b.name
    );
    let ikey = layout.data_key(data.join(IOT).join("md-2-big-Index.db").to_str().unwrap());
    let (meta, _) = b.head(&ikey).await;
    assert_eq!(
        meta.get("compressed").map(String::as_str),
        Some("zstd"),
        "{}",
        b.name
    );
    let stored_index = stored[&ikey];
    assert!(
        stored_index < (index_len as u64) * 9 / 10 && (!b.multipart || stored_index > (5 << 20)),
        "{}: the Index.db is stored in {stored_index} bytes",
        b.name
    );
    let indexes: Vec<&String> = stored
        .keys()
        .filter(|k| k.ends_with(layout::INDEX_SUFFIX))
        .collect();
    assert!(!indexes.is_empty());
    for k in indexes {
        let body = b.get(k).await;
        layout::parse_listing(&body)
            .unwrap_or_else(|e| panic!("{}: index {k} not in clear: {e}", b.name));
    }
    // The stock tools, as the README says: `age -d -i key.txt OBJECT > FILE`, and
    // `| zstd -d` for a compressed one.
    if age_tool.is_some() {
        let shell = |cmd: &str, key: &str, object: &[u8], want: &[u8]| {
            let obj = tmp.path().join("object.age");
            std::fs::write(&obj, object).unwrap();
            let out = std::process::Command::new("sh")
                .args(["-c", cmd, "sh"])
                .arg(tmp.path().join(key))
                .arg(&obj)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{}: {cmd}: {err}", b.name);
            assert!(out.stdout == want, "{}: {cmd} gave other bytes", b.name);
        };
        let index_obj = b.get(&ikey).await;
        shell(
            r#"age -d -i "$1" "$2" | zstd -d -c"#,
            "team.key",
            &index_obj,
            &index,
        );
        shell(
            r#"age -d -i "$1" "$2""#,
            "breakglass.key",
            &b.get(&dkey).await,
            &big,
        );
    }

    // 4. A restart stores nothing again, and on S3 (through a counting proxy) asks no HEAD
    // per file either: a listed sealed size is the file's size sealed, not another file.
    let files = tree(&data).len() as u64;
    let (code, out, requests) = if b.name == "s3" {
        let s3 = common::s3();
        let proxy = common::proxy::Proxy::start(&s3.endpoint).await;
        let mut env = b.env.clone();
        env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
        env.push(("AWS_ENDPOINT_URL".into(), proxy.url()));
        let args: Vec<String> = sealed_args.iter().map(|a| a.to_string()).collect();
        let (code, out) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::run_bin(SNAP, &args, &env)
        })
        .await
        .unwrap();
        (code, out, Some(proxy.counts().requests))
    } else {
        let (code, out) = run(SNAP, &sealed_args);
        (code, out, None)
    };
    assert_eq!(code, 0, "{}: restart: {out}", b.name);
    assert!(
        out.contains(" 0 files (0 bytes) uploaded"),
        "{}: restart uploaded again: {out}",
        b.name
    );
    if let Some(n) = requests {
        assert!(
            n < files / 2,
            "{}: the restart sent {n} requests for {files} stored files",
            b.name
        );
    }

    // 5. Restores without an identity, or with the wrong one: stopped before any write.
    let target = tmp.path().join("restore");
    let tpath = target.to_str().unwrap();
    let slurp = |extra: &[&str], to: &str| {
        let mut a = vec![
            "-r",
            "--range-threshold",
            "1048576",
            "--range-size",
            "1000000",
        ];
        a.extend(base);
        a.extend(extra);
        a.extend([b.dest.as_str(), dpath.as_str()]);
        if !to.is_empty() {
            a.push(to);
        }
        run(SLURP, &a)
    };
    let (code, out) = slurp(&[], tpath);
    assert_eq!(code, 3, "{}: restore without --identity: {out}", b.name);
    assert!(
        out.contains("is sealed (age): pass --identity"),
        "{}: {out}",
        b.name
    );
    assert!(
        tree(&target).is_empty(),
        "{}: files written without an identity",
        b.name
    );
    let other = tmp.path().join("other.key");
    let (code, out) = slurp(&["-i", other.to_str().unwrap()], tpath);
    assert_eq!(
        code, 3,
        "{}: restore with the wrong identity: {out}",
        b.name
    );
    assert!(out.contains("is sealed to other keys"), "{}: {out}", b.name);
    assert!(
        tree(&target).is_empty(),
        "{}: files written with the wrong identity",
        b.name
    );

    // 6. The right identity (the break-glass one alone will do) restores every byte; the
    // big Data.db by parallel ranges, Digest-checked.
    let bg = tmp.path().join("breakglass.key");
    let (code, out) = slurp(&["-i", bg.to_str().unwrap()], tpath);
    assert_eq!(code, 0, "{}: sealed restore: {out}", b.name);
    let want: BTreeMap<PathBuf, Vec<u8>> = tree(&data)
        .into_iter()
        .filter(|(p, _)| !p.components().any(|c| c.as_os_str() == "snapshots"))
        .collect();
    let got = tree(&target);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{}",
        b.name
    );
    for (p, bytes) in &want {
        assert!(
            &got[p] == bytes,
            "{}: {} restored with other bytes",
            b.name,
            p.display()
        );
    }
    // Again: all present (the plaintext size and MD5 compared, not the sealed size).
    let (code, out) = slurp(&["-i", bg.to_str().unwrap()], tpath);
    assert_eq!(code, 0, "{}: second restore: {out}", b.name);
    assert!(out.contains("restored 0 files"), "{}: {out}", b.name);

    // 7. --verify says what it could check.
    let (code, out) = slurp(&["--verify"], "");
    assert_eq!(code, 0, "{}: verify without identity: {out}", b.name);
    assert!(
        out.contains("checked by the CRC-32 of their stored bytes only"),
        "{}: {out}",
        b.name
    );
    let id1f = tmp.path().join("team.key");
    let (code, out) = slurp(&["--verify", "-i", id1f.to_str().unwrap()], "");
    assert_eq!(code, 0, "{}: verify with identity: {out}", b.name);
    assert!(
        out.contains("opened and checked by content"),
        "{}: {out}",
        b.name
    );

    // 8. One flipped byte in the middle of the big Data.db, metadata kept: found, fetched
    // once more, reported; nothing under its name.
    let big_path = data.join(IOT).join("md-2-big-Data.db");
    let big_key = layout.data_key(big_path.to_str().unwrap());
    let mut body = b.get(&big_key).await;
    let mid = body.len() / 2;
    body[mid] ^= 0x01;
    if let Some(root) = &b.root {
        // In place, its extended attributes kept.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join(&big_key))
            .unwrap();
        f.write_all_at(&body[mid..mid + 1], mid as u64).unwrap();
    } else {
        let (meta, _) = b.head(&big_key).await;
        let mut attrs = Attributes::new();
        for (k, v) in meta {
            attrs.insert(Attribute::Metadata(k.into()), AttributeValue::from(v));
        }
        b.raw
            .put_opts(
                &opath(&big_key),
                PutPayload::from(body),
                PutOptions {
                    attributes: attrs,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let t2 = tmp.path().join("restore-tampered");
    let (code, out) = slurp(&["-i", bg.to_str().unwrap()], t2.to_str().unwrap());
    assert_eq!(code, 1, "{}: restore of a tampered object: {out}", b.name);
    assert!(
        out.contains("does not authenticate") && out.contains("tampered"),
        "{}: {out}",
        b.name
    );
    assert!(
        out.contains("fetching it once more"),
        "{}: not retried: {out}",
        b.name
    );
    let restored = tree(&t2);
    let rel = big_path.strip_prefix(&data).unwrap();
    assert!(
        !restored.contains_key(rel),
        "{}: a tampered file appeared under its name",
        b.name
    );
    assert!(
        !restored
            .keys()
            .any(|p| p.to_string_lossy().contains("tableslurp-tmp")),
        "{}: a temp file was left behind",
        b.name
    );
    assert!(
        restored.len() + 1 >= want.len(),
        "{}: the other files are restored",
        b.name
    );
    let (code, out) = slurp(&["--verify", "-i", id1f.to_str().unwrap()], "");
    assert_eq!(code, 1, "{}: verify of a tampered object: {out}", b.name);
    let (code, out) = slurp(&["--verify"], "");
    assert_eq!(
        code, 1,
        "{}: CRC verify of a tampered object: {out}",
        b.name
    );
    assert!(out.contains("CRC-32"), "{}: {out}", b.name);
}

/// Bad keys are one line each, naming the thing, before anything runs: a recipient that is
/// not a key (exit 2), a recipients file holding a secret key (exit 2: the node must not
/// have it), an identity file that is missing or holds no key (exit 3, never quoting it).
#[test]
fn bad_keys_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bucket = format!("file://{}", tmp.path().join("bucket").display());
    std::fs::create_dir_all(tmp.path().join("bucket")).unwrap();
    let d = data.to_str().unwrap();
    let (code, out) = common::run_bin(
        SNAP,
        &["--once", "--recipient", "age1notakey", &bucket, d],
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("\"age1notakey\"") && out.contains("age-keygen"),
        "{out}"
    );
    let secret = tmp.path().join("key.txt");
    let (_, public) = keygen(&secret);
    let s = secret.to_str().unwrap();
    let (code, out) = common::run_bin(SNAP, &["--once", "--recipients-file", s, &bucket, d], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("holds a secret key") && out.contains("age-keygen -y"),
        "{out}"
    );
    let missing = tmp.path().join("nope.txt");
    let (code, out) = common::run_bin(
        SNAP,
        &[
            "--once",
            "--recipients-file",
            missing.to_str().unwrap(),
            &bucket,
            d,
        ],
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nope.txt"), "{out}");
    // A valid recipient: the run goes ahead.
    let (code, out) = common::run_bin(SNAP, &["--once", "--recipient", &public, &bucket, d], &[]);
    assert_eq!(code, 0, "{out}");
    // tableslurp: an identity file with a line that is no key; one that is missing.
    let bad = tmp.path().join("bad.key");
    std::fs::write(&bad, "AGE-SECRET-KEY-1NOTREALLYASECRET\n").unwrap();
    for (f, want) in [
        (&bad, "line 1 is not an age X25519 identity"),
        (&missing, "nope.txt"),
    ] {
        let (code, out) = common::run_bin(
            SLURP,
            &[
                "-n",
                "h",
                "-i",
                f.to_str().unwrap(),
                &bucket,
                d,
                tmp.path().join("t").to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 3, "{out}");
        assert!(out.contains(want), "{out}");
        assert!(
            !out.contains("NOTREALLYASECRET"),
            "a secret key quoted: {out}"
        );
    }
}

/// Key rotation on `file://`: a table sealed to two keys, then the node restarted with one
/// new key and a new table. The restart stores nothing again (the old objects' sealed size
/// is of two recipients, the new key makes one); new objects are sealed to the new key only;
/// the new identity alone is refused before anything is written, naming an old object;
/// both identities together restore every byte.
#[test]
fn a_key_rotation_keeps_old_objects_and_needs_both_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let bucket_dir = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let bucket = format!("file://{}", bucket_dir.display());
    let d = data.to_str().unwrap();
    let (old1, p1) = keygen(&tmp.path().join("old1.key"));
    let (_, p2) = keygen(&tmp.path().join("old2.key"));
    let (new, p3) = keygen(&tmp.path().join("new.key"));
    copy_table(FOO, &data.join(FOO));
    let snap = |recipients: &[&str]| {
        let mut a = vec!["--once", "-r", "-n", HOST];
        for r in recipients {
            a.extend(["--recipient", r]);
        }
        a.extend([bucket.as_str(), d]);
        common::run_bin(SNAP, &a, &[])
    };
    let (code, out) = snap(&[&p1, &p2]);
    assert_eq!(code, 0, "{out}");
    copy_table(JB, &data.join(JB));
    let (code, out) = snap(&[&p3]);
    assert_eq!(code, 0, "{out}");
    let jb_files = std::fs::read_dir(data.join(JB)).unwrap().count();
    assert!(
        out.contains(&format!(" {jb_files} files (")),
        "the restart stored more than the new table's {jb_files} files: {out}"
    );
    let layout = Layout::new("", HOST, ":");
    let obj = |rel: &str, name: &str| {
        std::fs::read(bucket_dir.join(layout.data_key(data.join(rel).join(name).to_str().unwrap())))
            .unwrap()
    };
    let old_obj = obj(FOO, "md-1-big-Data.db");
    assert!(
        decrypt(&old1, &old_obj) == std::fs::read(data.join(FOO).join("md-1-big-Data.db")).unwrap()
    );
    let new_obj = obj(JB, "Keyspace1-Standard1-jb-0-Data.db");
    assert!(
        decrypt(&new, &new_obj)
            == std::fs::read(data.join(JB).join("Keyspace1-Standard1-jb-0-Data.db")).unwrap()
    );
    assert!(
        age::Decryptor::new(&new_obj[..])
            .unwrap()
            .decrypt(std::iter::once(&old1 as &dyn age::Identity))
            .is_err(),
        "an object stored after the rotation opens with a retired key"
    );
    let target = tmp.path().join("restore");
    let slurp = |ids: &[&str]| {
        let mut a = vec!["-r", "-n", HOST];
        for i in ids {
            a.extend(["-i", i]);
        }
        a.extend([bucket.as_str(), d, target.to_str().unwrap()]);
        common::run_bin(SLURP, &a, &[])
    };
    let newk = tmp.path().join("new.key");
    let oldk = tmp.path().join("old2.key");
    let (code, out) = slurp(&[newk.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("is sealed to other keys") && out.contains(FOO),
        "{out}"
    );
    assert!(
        tree(&target).is_empty(),
        "written before the key check: {out}"
    );
    let (code, out) = slurp(&[newk.to_str().unwrap(), oldk.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(tree(&target), tree(&data));
}

/// `--compress zstd` without sealing, on `file://`: a compressible file is stored as zstd
/// frames that stock `zstd -d` reads (when installed), a small one as it is; the restore
/// (by ranges) and `--verify` (no key needed) give back every byte; a flipped byte fails.
#[test]
fn compressed_without_sealing_restores_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let bucket_dir = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let bucket = format!("file://{}", bucket_dir.display());
    let d = data.to_str().unwrap();
    copy_table(IOT, &data.join(IOT));
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("partition {i} clustering {} value\n", i % 13).into_bytes())
        .collect();
    let index = data.join(IOT).join("md-2-big-Index.db");
    std::fs::write(&index, &text).unwrap();
    let (code, out) = common::run_bin(
        SNAP,
        &["--once", "-r", "-n", HOST, "--compress", "zstd", &bucket, d],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let layout = Layout::new("", HOST, ":");
    let obj = bucket_dir.join(layout.data_key(index.to_str().unwrap()));
    let stored = std::fs::read(&obj).unwrap();
    assert!(
        stored.len() * 5 < text.len(),
        "{} of {}",
        stored.len(),
        text.len()
    );
    assert!(zstd::stream::decode_all(&stored[..]).unwrap() == text);
    if std::process::Command::new("zstd")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = std::process::Command::new("zstd")
            .args(["-d", "-c"])
            .arg(&obj)
            .output()
            .unwrap();
        assert!(out.status.success() && out.stdout == text, "zstd -d");
    }
    // Files under 4 KiB are stored as they are.
    let toc = data.join(IOT).join("md-2-big-TOC.txt");
    assert_eq!(
        std::fs::read(bucket_dir.join(layout.data_key(toc.to_str().unwrap()))).unwrap(),
        std::fs::read(&toc).unwrap()
    );
    let target = tmp.path().join("restore");
    let (code, out) = common::run_bin(
        SLURP,
        &[
            "-r",
            "-n",
            HOST,
            "--range-threshold",
            "65536",
            "--range-size",
            "300000",
            &bucket,
            d,
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(tree(&target), tree(&data));
    let (code, out) = common::run_bin(SLURP, &["-r", "-n", HOST, "--verify", &bucket, d], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("CRC-32 of their stored bytes"), "{out}");
    // One flipped byte in a frame: found (the frame's checksum), never restored.
    let mut bad = stored.clone();
    bad[stored.len() / 3] ^= 0x10;
    std::fs::write(&obj, &bad).unwrap();
    let t2 = tmp.path().join("restore2");
    let (code, out) = common::run_bin(
        SLURP,
        &["-r", "-n", HOST, &bucket, d, t2.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(!t2.join(IOT).join("md-2-big-Index.db").exists(), "{out}");
}
