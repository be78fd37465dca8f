//! One end-to-end suite, written once, run against every kind of destination: S3 (Garage, and
//! Ceph RADOS Gateway),
//! Azure Blob Storage (Azurite) and Google Cloud Storage (fake-gcs-server), all on 127.0.0.1
//! and started by `scripts/test.sh` (`scripts/s3-server.sh`, `scripts/emulators.sh`).
//!
//! The three binaries run as an operator runs them, configured only through the environment
//! each backend documents, on real SSTables from `testdata/sstables` (`md` with two
//! generations, `jb` with old-style names, `da`/`bti` with a zero-byte component):
//! backfill (`--once -r`), live upload by the daemon with its index after a compaction,
//! `tablechop` retention, restore byte-identical with `tableslurp -r`, and
//! `tableslurp --verify` passing on the bucket and failing on a corrupted object. Every
//! assertion reads the bucket through a plain object_store client, not through tablesnap.
//!
//! Locally a missing Azure or GCS server skips its test with a printed line; in CI
//! (`TABLESNAP_REQUIRE_BACKENDS` or `CI=true`) it fails. GCS goes through
//! `scripts/gcs-xml-shim.py` (see the README: what is and is not proven for GCS).

mod common;

use common::backend::{Backend, azure, ceph, gcs, opath, s3};

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use object_store::{
    Attribute, AttributeValue, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
};
use tablesnap::layout::{self, Layout, StatMeta};

const SNAP: &str = env!("CARGO_BIN_EXE_tablesnap");
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const CHOP: &str = env!("CARGO_BIN_EXE_tablechop");
const HOST: &str = "h1";
const WAIT: Duration = Duration::from_secs(60);
const FOO: &str = "hello/foo-c2cebe20d60d11ebab539116fc548b6b";
const JB: &str = "Keyspace1/Standard1-4d331c44f018302b91c22dcf94c4bfad";
const BTI: &str = "legacy_tables/legacy_da_simple-27609b83f3a93b5d931777cede2368d3";
/// Its Data.db (1.1 MB) goes multipart with `--max-upload-size 1`.
const IOT: &str = "baselines/iot-5b608090e03d11ebb4c1d335f841c590";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_garage() {
    suite(s3()).await;
}

/// A third real S3 implementation checks every assumption Garage lets pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_ceph_rgw() {
    if let Some(b) = ceph() {
        suite(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_azurite() {
    if let Some(b) = azure() {
        suite(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_fake_gcs_server() {
    if let Some(b) = gcs() {
        suite(b).await;
    }
}

// ---- the local side ------------------------------------------------------------------------

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Copies the files of `rel` in the sample whose name starts with `generation` ("" for all).
fn copy_table(rel: &str, to: &Path, generation: &str) -> Vec<PathBuf> {
    let src = common::sample_sstables().join(rel);
    std::fs::create_dir_all(to).unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(generation) {
            // A plain copy: written in place and closed, as Cassandra 3.0+ writes an SSTable.
            std::fs::copy(e.path(), to.join(&name)).unwrap();
            out.push(to.join(name));
        }
    }
    out.sort();
    out
}

/// A running `tablesnap` daemon and its log.
struct Daemon {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(args: &[&str], env: &[(String, String)]) -> Self {
        let mut child = Command::new(SNAP)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (l, err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let d = Daemon { child, log };
        common::wait_until(WAIT, "the daemon to start watching", || {
            d.log().contains("tablesnap started")
        });
        d
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> (Option<i32>, String) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        (status.code(), self.log())
    }
}

// ---- the suite -----------------------------------------------------------------------------

async fn suite(b: Backend) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("t-backends-{}-{}-{nanos}/", b.name, std::process::id());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dpath = data.to_str().unwrap();
    let layout = Layout::new(prefix.clone(), HOST, ":");
    let key = |p: &Path| layout.data_key(p.to_str().unwrap());
    let run = |bin: &str, args: &[&str]| common::run_bin(bin, args, &b.env);
    let common_args = ["-n", HOST, "--prefix", &prefix, &b.dest];

    let foo_dir = data.join(FOO);
    let gen1 = copy_table(FOO, &foo_dir, "md-1-");
    copy_table(JB, &data.join(JB), "");
    copy_table(BTI, &data.join(BTI), "");
    assert!(
        files(&data)
            .iter()
            .any(|p| p.metadata().unwrap().len() == 0),
        "a zero-byte component is part of the run"
    );

    // 1. Backfill: every file, its metadata, and one index per Data.db naming its directory.
    let mut a = vec!["--once", "-r"];
    a.extend(common_args);
    a.push(dpath);
    let (code, out) = run(SNAP, &a);
    assert_eq!(code, 0, "{}: backfill: {out}", b.name);
    let local = files(&data);
    let mut want: BTreeSet<String> = local.iter().map(|p| key(p)).collect();
    let datas: Vec<&PathBuf> = local
        .iter()
        .filter(|p| p.to_str().unwrap().ends_with("-Data.db"))
        .collect();
    want.extend(
        datas
            .iter()
            .map(|p| format!("{}{}", key(p), layout::INDEX_SUFFIX)),
    );
    let stored = b.keys(&prefix).await;
    assert_eq!(
        stored.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "{}: the keys after the backfill",
        b.name
    );
    for p in &local {
        let (k, bytes) = (key(p), std::fs::read(p).unwrap());
        assert_eq!(b.get(&k).await, bytes, "{}: bytes of {k}", b.name);
        assert_eq!(stored[&k], bytes.len() as u64, "{}: size of {k}", b.name);
        let (meta, _) = b.head(&k).await;
        assert_eq!(
            meta.get("md5sum"),
            Some(&md5_hex(&bytes)),
            "{}: md5sum of {k}",
            b.name
        );
        let stat = StatMeta::parse(meta.get("stat").expect("stat metadata")).expect("stat JSON");
        assert_eq!(meta["stat"], stat.to_json(), "{}: stat of {k}", b.name);
    }
    for d in &datas {
        let k = format!("{}{}", key(d), layout::INDEX_SUFFIX);
        let (_, ct) = b.head(&k).await;
        assert_eq!(ct.as_deref(), Some("application/json"), "{}: {k}", b.name);
        let l = layout::parse_listing(&b.get(&k).await).unwrap();
        let dir = d.parent().unwrap();
        let mut names: Vec<String> = files(dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut got = l.names.clone();
        got.sort();
        assert_eq!((l.dir.as_str(), got), (dir.to_str().unwrap(), names), "{k}");
    }

    // 1b. A file above --max-upload-size goes multipart, with the same metadata.
    let iot = tmp.path().join("multipart").join(IOT);
    copy_table(IOT, &iot, "");
    let big = iot.join("md-2-big-Data.db");
    let mut a = vec![
        "--once",
        "--retries",
        "0",
        "--max-upload-size",
        "1",
        "--multipart-chunk-size",
        "5",
    ];
    a.extend(common_args);
    a.push(iot.to_str().unwrap());
    let (code, out) = run(SNAP, &a);
    let big_key = key(&big);
    if b.multipart {
        assert_eq!(code, 0, "{}: multipart backfill: {out}", b.name);
        let bytes = std::fs::read(&big).unwrap();
        assert!(bytes.len() > 1 << 20);
        assert_eq!(b.get(&big_key).await, bytes, "{}: {big_key}", b.name);
        let (meta, _) = b.head(&big_key).await;
        assert_eq!(meta.get("md5sum"), Some(&md5_hex(&bytes)), "{big_key}");
        assert!(meta.contains_key("stat"), "{big_key}: {meta:?}");
    } else {
        // What the README says about GCS: fake-gcs-server refuses the XML-API multipart
        // upload object_store starts (POST ?uploads). When it learns it, this fails: update
        // the README and run this step on GCS too.
        assert_eq!(code, 1, "{}: multipart backfill: {out}", b.name);
        assert!(
            out.contains("start multipart upload") && out.contains("invalid uploadType"),
            "{}: {out}",
            b.name
        );
    }
    let prefix_keys = b.keys(&prefix).await;
    for k in prefix_keys.keys().filter(|k| k.contains(IOT)) {
        b.raw.delete(&opath(k)).await.unwrap();
    }

    // 2. Live: the daemon uploads a compaction's new generation and indexes it. Indexes have
    // one-second LastModified: the new one must be visibly newer than the backfill's.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut a = vec!["-r", "-a"];
    a.extend(common_args);
    a.push(dpath);
    let daemon = Daemon::start(&a, &b.env);
    for p in &gen1 {
        std::fs::remove_file(p).unwrap();
    }
    let gen2 = copy_table(FOO, &foo_dir, "md-2-");
    let index2 = format!(
        "{}{}",
        key(&foo_dir.join("md-2-big-Data.db")),
        layout::INDEX_SUFFIX
    );
    let mut want2: BTreeSet<String> = gen2.iter().map(|p| key(p)).collect();
    want2.insert(index2.clone());
    b.wait_for(&prefix, &want2).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{}: daemon: {log}", b.name);
    assert!(log.contains("tablesnap stopped: 8 files"), "{log}");
    for p in &gen2 {
        assert_eq!(b.get(&key(p)).await, std::fs::read(p).unwrap(), "{p:?}");
    }
    let l = layout::parse_listing(&b.get(&index2).await).unwrap();
    let mut names = l.names.clone();
    names.sort();
    let gen2_names: Vec<String> = gen2
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names, gen2_names,
        "{}: the new index names generation 2",
        b.name
    );

    // 3. Retention: with nothing young, exactly generation 1 of foo (8 components and its
    // index) goes; every other table keeps its newest file set.
    let before = b.keys(&prefix).await;
    let doomed: BTreeSet<String> = before
        .keys()
        .filter(|k| k.contains(&format!("{FOO}/md-1-")))
        .cloned()
        .collect();
    assert_eq!(doomed.len(), 9, "{doomed:?}");
    let mut a = common_args.to_vec();
    a.extend([dpath, "0"]);
    let (code, out) = run(CHOP, &a);
    assert_eq!(code, 0, "{}: tablechop: {out}", b.name);
    let after: BTreeSet<String> = b.keys(&prefix).await.into_keys().collect();
    let expected: BTreeSet<String> = before
        .keys()
        .filter(|k| !doomed.contains(*k))
        .cloned()
        .collect();
    assert_eq!(after, expected, "{}: what tablechop kept", b.name);

    // 4. Restore of the whole data root: byte-identical to what is on disk now.
    let target = tmp.path().join("restored");
    let mut a = vec!["-r"];
    a.extend(common_args);
    a.extend([dpath, target.to_str().unwrap()]);
    let (code, out) = run(SLURP, &a);
    assert_eq!(code, 0, "{}: tableslurp -r: {out}", b.name);
    let restored: Vec<PathBuf> = files(&target);
    let local = files(&data);
    assert_eq!(
        restored
            .iter()
            .map(|p| p.strip_prefix(&target).unwrap())
            .collect::<Vec<_>>(),
        local
            .iter()
            .map(|p| p.strip_prefix(&data).unwrap())
            .collect::<Vec<_>>(),
        "{}: restored file set",
        b.name
    );
    for (r, l) in restored.iter().zip(&local) {
        assert_eq!(common::sha256_file(r), common::sha256_file(l), "{r:?}");
    }

    // 5. --verify passes on the bucket; after one object is corrupted (same size, its
    // original metadata kept) it fails with exit 1 and names that key.
    let mut a = vec!["-r", "--verify"];
    a.extend(common_args);
    a.push(dpath);
    let (code, out) = run(SLURP, &a);
    assert_eq!(code, 0, "{}: --verify: {out}", b.name);
    assert!(out.contains(", 0 problems"), "{out}");
    let victim = key(&foo_dir.join("md-2-big-Data.db"));
    let mut body = b.get(&victim).await;
    body[0] ^= 0xff;
    let (meta, _) = b.head(&victim).await;
    let mut attrs = Attributes::new();
    for (k, v) in meta {
        attrs.insert(Attribute::Metadata(k.into()), AttributeValue::from(v));
    }
    b.raw
        .put_opts(
            &opath(&victim),
            PutPayload::from(body),
            PutOptions {
                attributes: attrs,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{}: corrupt {victim}: {e}", b.name));
    let (code, out) = run(SLURP, &a);
    assert_eq!(code, 1, "{}: --verify of a corrupted bucket: {out}", b.name);
    assert!(out.contains(&victim), "{}: names {victim}: {out}", b.name);
}
