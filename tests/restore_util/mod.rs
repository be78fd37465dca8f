//! Helpers for the tableslurp/tablechop integration tests: a destination (a `file://` bucket
//! in a temp dir for now; the S3-specific parts are isolated in `dest()`/`backdate()` so the
//! suite can be pointed at the Garage harness later), a writer that lays out a bucket exactly
//! as the original tablesnap did (keys, `-listdir.json`, `md5sum`/`stat` metadata), the real
//! SSTable corpus, and sha256 helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use md5::{Digest as _, Md5};
use sha2::Sha256;
use tablesnap::layout::{self, Layout, StatMeta};
use tablesnap::store::{PutMeta, Store, StoreOptions};

pub const HOST: &str = "node1.example.com";
pub const DATA: &str = "/var/lib/cassandra/data";

/// Keeps the destination alive for the test; dropping it removes a local bucket.
pub struct Cleanup {
    _dir: tempfile::TempDir,
    /// file:// root, when the destination is local (enables `backdate`).
    pub root: Option<PathBuf>,
    /// Key prefix of this test: empty on a private file:// bucket, unique on a shared S3
    /// bucket so tests do not see each other's keys.
    pub prefix: String,
}

impl Cleanup {
    pub fn is_s3(&self) -> bool {
        self.root.is_none()
    }
}

/// The S3 test server, when `TABLESNAP_TEST_S3_ENDPOINT` (and the other `TABLESNAP_TEST_S3_*`)
/// are set: the only S3-specific part of these tests.
fn s3_env() -> Option<StoreOptions> {
    let v = |n: &str| {
        std::env::var(format!("TABLESNAP_TEST_S3_{n}"))
            .ok()
            .filter(|s| !s.is_empty())
    };
    let endpoint = v("ENDPOINT")?;
    Some(StoreOptions {
        destination: v("BUCKET").expect("TABLESNAP_TEST_S3_BUCKET"),
        access_key: v("ACCESS_KEY"),
        secret_key: v("SECRET_KEY"),
        region: Some(v("REGION").unwrap_or_else(|| "us-east-1".into())),
        endpoint: Some(endpoint),
        ..Default::default()
    })
}

/// A fresh, empty destination: the S3 test server under a unique prefix when configured,
/// else a file:// bucket in a temp dir.
pub fn dest() -> (StoreOptions, Cleanup) {
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some(opts) = s3_env() {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!(
            "slurp-{}-{}-{nanos}/",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        return (
            opts,
            Cleanup {
                _dir: dir,
                root: None,
                prefix,
            },
        );
    }
    file_dest_in(dir)
}

/// A file:// destination, whatever the environment says: for the tests that must set an
/// object's LastModified (ages, ties), which no S3 server lets a client do. They run in CI
/// too, against a real filesystem bucket, instead of being skipped there.
pub fn file_dest() -> (StoreOptions, Cleanup) {
    file_dest_in(tempfile::tempdir().expect("tempdir"))
}

fn file_dest_in(dir: tempfile::TempDir) -> (StoreOptions, Cleanup) {
    let root = dir.path().join("bucket");
    std::fs::create_dir_all(&root).unwrap();
    let opts = StoreOptions {
        destination: format!("file://{}", root.display()),
        ..Default::default()
    };
    (
        opts,
        Cleanup {
            _dir: dir,
            root: Some(root),
            prefix: String::new(),
        },
    )
}

/// The command-line arguments that reach the destination: endpoint flags, `--prefix`, BUCKET.
/// (Credentials go through the environment, see [`run`].)
pub fn bucket_args(opts: &StoreOptions, c: &Cleanup) -> Vec<String> {
    bucket_args_with_prefix(opts, &c.prefix)
}

pub fn bucket_args_with_prefix(opts: &StoreOptions, prefix: &str) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(e) = &opts.endpoint {
        v.push("--endpoint-url".into());
        v.push(e.clone());
    }
    if !prefix.is_empty() {
        v.push("--prefix".into());
        v.push(prefix.into());
    }
    v.push(opts.destination.clone());
    v
}

/// Sets an object's LastModified to `secs_ago` seconds before now (file:// only: the mtime
/// of the stored file). Returns false where the backend cannot do it.
pub fn backdate(c: &Cleanup, key: &str, secs_ago: u64) -> bool {
    set_mtime(c, key, SystemTime::now() - Duration::from_secs(secs_ago))
}

/// Sets an object's LastModified to exactly `t` (file:// only).
pub fn set_mtime(c: &Cleanup, key: &str, t: SystemTime) -> bool {
    let Some(root) = &c.root else { return false };
    let f = std::fs::File::options()
        .write(true)
        .open(root.join(key))
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    f.set_modified(t).unwrap();
    true
}

/// The file backing an object (file:// only), to corrupt it in tests.
pub fn object_file(c: &Cleanup, key: &str) -> PathBuf {
    c.root.as_ref().expect("file:// destination").join(key)
}

/// Every key of this test in the destination (one listing).
pub fn all_keys(opts: &StoreOptions, c: &Cleanup) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Store::open(opts).unwrap();
    let dir = c.prefix.trim_end_matches('/');
    let mut out: Vec<String> = rt
        .block_on(store.list_all(dir))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    out.sort();
    out
}

/// The sample of real SSTables shipped in this repository (`testdata/sstables`). Always
/// `Some`: the suites only need `hello/*` and a few tables of each format, so they run in any
/// clone (the `Option` keeps the callers' `let Some(..) else` unchanged).
pub fn corpus() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sstables");
    assert!(
        p.join("MANIFEST.tsv").is_file(),
        "{} has no MANIFEST.tsv: the repository checkout is incomplete",
        p.display()
    );
    Some(p)
}

/// `KS/TABLE` directories of the corpus → their file names (sorted).
pub fn corpus_tables(corpus: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for ks in std::fs::read_dir(corpus).unwrap() {
        let ks = ks.unwrap().path();
        if !ks.is_dir() {
            continue;
        }
        for t in std::fs::read_dir(&ks).unwrap() {
            let t = t.unwrap().path();
            if !t.is_dir() {
                continue;
            }
            let mut names: Vec<String> = std::fs::read_dir(&t)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let rel = t
                .strip_prefix(corpus)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, names);
        }
    }
    out
}

pub fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

pub fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// Writes a bucket the way the original tablesnap did.
pub struct Writer {
    pub store: Store,
    pub layout: Layout,
    pub rt: tokio::runtime::Runtime,
}

impl Writer {
    pub fn new(opts: &StoreOptions, c: &Cleanup) -> Self {
        Self::with_layout(opts, Layout::new(c.prefix.clone(), HOST, ":"))
    }

    pub fn with_layout(opts: &StoreOptions, layout: Layout) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            store: Store::open(opts).unwrap(),
            layout,
            rt,
        }
    }

    /// Uploads bytes as the data object of `abs_path`, with `md5sum` and `stat` metadata.
    pub fn put_data(&self, abs_path: &str, body: &[u8], mode: u32) -> String {
        let stat = StatMeta {
            uid: 105,
            gid: 107,
            mode,
            user: Some("cassandra".into()),
            group: Some("cassandra".into()),
        };
        self.put_raw(
            abs_path,
            body,
            vec![
                (layout::META_STAT, stat.to_json()),
                (layout::META_MD5, md5_hex(body)),
            ],
        )
    }

    /// Uploads with exactly this metadata (e.g. a wrong md5sum, or none).
    pub fn put_raw(
        &self,
        abs_path: &str,
        body: &[u8],
        user: Vec<(&'static str, String)>,
    ) -> String {
        let key = self.layout.data_key(abs_path);
        let meta = PutMeta {
            content_type: None,
            user,
        };
        self.rt
            .block_on(self.store.put(&key, Bytes::copy_from_slice(body), &meta))
            .unwrap();
        key
    }

    /// Uploads a local file as `abs_path`, with its real mode bits.
    pub fn put_file(&self, abs_path: &str, local: &Path) -> String {
        let body = std::fs::read(local).unwrap();
        let mode = std::fs::metadata(local).unwrap().mode();
        self.put_data(abs_path, &body, mode)
    }

    /// Writes the index of `dir/data_name` listing `names`, as the original's json.dumps.
    pub fn put_index(&self, dir: &str, data_name: &str, names: &[String]) -> String {
        let key = layout::index_key(&self.layout.data_key(&format!("{dir}/{data_name}")));
        self.put_index_body(&key, layout::listdir_json(dir, names).into_bytes())
    }

    pub fn put_index_body(&self, key: &str, body: Vec<u8>) -> String {
        let meta = PutMeta {
            content_type: Some(layout::INDEX_CONTENT_TYPE.into()),
            user: vec![],
        };
        self.rt
            .block_on(self.store.put(key, Bytes::from(body), &meta))
            .unwrap();
        key.to_string()
    }

    /// Backs up a whole corpus table directory `rel` (`KS/TABLE`) under `DATA/rel`, with one
    /// index per `*Data.db` naming `names_for(data_name)`. Returns the index keys.
    pub fn put_table(&self, corpus: &Path, rel: &str, names: &[String]) -> Vec<String> {
        let dir = format!("{DATA}/{rel}");
        for n in names {
            self.put_file(&format!("{dir}/{n}"), &corpus.join(rel).join(n));
        }
        let mut idx = Vec::new();
        for n in names.iter().filter(|n| layout::wants_index(n)) {
            idx.push(self.put_index(&dir, n, names));
        }
        idx
    }
}

/// Runs a binary with `args`, never inheriting AWS settings from the environment.
pub fn run(bin: &str, args: &[String]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION")
        .env("RUST_LOG", "info");
    if let Some(o) = s3_env() {
        // Credentials through the environment, as production should do it.
        cmd.env("AWS_ACCESS_KEY_ID", o.access_key.unwrap_or_default())
            .env("AWS_SECRET_ACCESS_KEY", o.secret_key.unwrap_or_default())
            .env("AWS_REGION", o.region.unwrap_or_default());
    }
    let out = cmd.output().expect("run binary");
    eprintln!(
        "--- {} {}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        bin,
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Every regular file under `dir` (relative path → sha256), temp files included so a
/// leftover would show.
pub fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if dir.exists() {
        tree_walk(dir, dir, &mut out);
    }
    out
}

fn tree_walk(root: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            tree_walk(root, &p, out);
        } else {
            out.insert(
                p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                sha256_file(&p),
            );
        }
    }
}
