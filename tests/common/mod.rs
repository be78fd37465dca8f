//! Shared helpers for the integration tests (`mod common;`).
//!
//! The S3 tests run against a real server: `bash scripts/test.sh` starts a local Garage and
//! exports `TABLESNAP_TEST_S3_*`. Without them, [`s3`] panics (a test never passes by silently
//! skipping its S3 part). A sample of real SSTables ships in `testdata/sstables`
//! ([`sample_sstables`]); the whole corpus (`../shared/sstables`) is optional locally
//! ([`sstables`] returns `None` and says so) and required in CI (`TABLESNAP_REQUIRE_SSTABLES`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{Attribute, ClientOptions, GetOptions, ObjectStore};
use sha2::{Digest, Sha256};
use tablesnap::daemon::{self, Config, Summary};
use tablesnap::store::{Store, StoreOptions};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

// ---- the S3 test server ------------------------------------------------------------------

/// Where the test S3 server is and how to sign in, from `TABLESNAP_TEST_S3_*`.
#[derive(Clone)]
pub struct S3 {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub bucket2: String,
    pub region: String,
    /// Raw clients by bucket. Per `S3` value (one per test), not global: a client's pooled
    /// connections belong to the tokio runtime that opened them, and each test has its own.
    pub raw_clients: Arc<std::sync::Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("bucket2", &self.bucket2)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests with `bash scripts/test.sh`, which starts a local S3 server (Garage) and sets TABLESNAP_TEST_S3_*"
        ),
    }
}

/// The test server from the environment; panics (one line) when `scripts/test.sh` did not
/// set it up.
pub fn s3() -> S3 {
    S3 {
        endpoint: required_env("TABLESNAP_TEST_S3_ENDPOINT"),
        access_key: required_env("TABLESNAP_TEST_S3_ACCESS_KEY"),
        secret_key: required_env("TABLESNAP_TEST_S3_SECRET_KEY"),
        bucket: required_env("TABLESNAP_TEST_S3_BUCKET"),
        bucket2: required_env("TABLESNAP_TEST_S3_BUCKET2"),
        region: required_env("TABLESNAP_TEST_S3_REGION"),
        raw_clients: Default::default(),
    }
}

impl S3 {
    /// `s3://BUCKET`, as given to the binaries.
    pub fn dest(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    /// Options for [`Store::open`] on the test bucket. Retries are capped so that a broken
    /// server fails a test in seconds rather than minutes.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            destination: self.dest(),
            access_key: Some(self.access_key.clone()),
            secret_key: Some(self.secret_key.clone()),
            region: Some(self.region.clone()),
            endpoint: Some(self.endpoint.clone()),
            max_retries: Some(3),
            retry_timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        }
    }

    /// A [`Store`] on the test bucket.
    pub fn store(&self) -> Store {
        Store::open(&self.store_options()).expect("open the test S3 store")
    }

    /// A key prefix no other test (or test run) uses: `t-{test}-{pid}-{nanos}/`.
    pub fn unique_prefix(&self, test: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let test: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("t-{test}-{}-{nanos}/", std::process::id())
    }

    /// Environment for running the binaries as subprocesses against the test server
    /// (`Command::envs(s3.cli_env())`). `AWS_ALLOW_HTTP` lets `object_store` talk plain HTTP
    /// to the local endpoint when the endpoint comes from the environment.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", &self.access_key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_key),
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_REGION", &self.region),
            ("AWS_DEFAULT_REGION", &self.region),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain([("AWS_ALLOW_HTTP".to_string(), "true".to_string())])
        .collect()
    }

    /// A plain `object_store` client on `bucket`, independent of `tablesnap::store`, to check
    /// what really landed in the bucket.
    pub fn raw_bucket(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        // Building a client parses the CA bundle (~40 ms): reuse it within a test.
        let mut clients = self.raw_clients.lock().unwrap();
        clients
            .entry(format!("{}|{}|{bucket}", self.endpoint, self.access_key))
            .or_insert_with(|| self.build_raw_bucket(bucket))
            .clone()
    }

    fn build_raw_bucket(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let s = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(&self.endpoint)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_region(&self.region)
            .with_virtual_hosted_style_request(false)
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .build()
            .expect("build the raw S3 client");
        Arc::new(s)
    }

    /// [`S3::raw_bucket`] on the test bucket.
    pub fn raw(&self) -> Arc<dyn ObjectStore> {
        self.raw_bucket(&self.bucket)
    }

    /// HEAD through the raw client: size, user metadata (`x-amz-meta-*` without the prefix)
    /// and Content-Type; `None` if there is no such object.
    pub async fn raw_head(
        &self,
        key: &str,
    ) -> Option<(u64, HashMap<String, String>, Option<String>)> {
        let path = raw_path(key);
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let r = match self.raw().get_opts(&path, opts).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return None,
            Err(e) => panic!("raw HEAD {key}: {e}"),
        };
        let mut meta = HashMap::new();
        let mut content_type = None;
        for (k, v) in r.attributes.iter() {
            match k {
                Attribute::Metadata(name) => {
                    meta.insert(name.to_string(), v.to_string());
                }
                Attribute::ContentType => content_type = Some(v.to_string()),
                _ => {}
            }
        }
        Some((r.meta.size, meta, content_type))
    }

    /// The whole body through the raw client; `None` if there is no such object.
    pub async fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        match self
            .raw()
            .get_opts(&raw_path(key), GetOptions::default())
            .await
        {
            Ok(r) => Some(r.bytes().await.expect("read body").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("raw GET {key}: {e}"),
        }
    }

    /// Every key starting with `prefix` (a plain string prefix, e.g. a
    /// [`S3::unique_prefix`]), with its size, sorted by key.
    pub async fn raw_keys(&self, prefix: &str) -> Vec<(String, u64)> {
        // object_store lists "directories": list the one containing the prefix, then filter.
        let dir = match prefix.rfind('/') {
            Some(i) if i > 0 => Some(raw_path(&prefix[..i])),
            _ => None,
        };
        let mut out: Vec<(String, u64)> = self
            .raw()
            .list(dir.as_ref())
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_else(|e| panic!("raw LIST {prefix}: {e}"))
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        out.sort();
        out
    }
}

fn raw_path(key: &str) -> object_store::path::Path {
    object_store::path::Path::parse(key)
        .unwrap_or_else(|e| panic!("{key:?} is not a valid object_store path: {e}"))
}

// ---- the real SSTable corpus -------------------------------------------------------------

/// The sample of real SSTables shipped in this repository (`testdata/sstables`: 117 files,
/// formats `ic`, `jb`, `ka`, `md`, `nb`, `oa` and `da`/`bti`, `hello/*` with two generations,
/// one genuine zero-byte file), with its own `MANIFEST.tsv`. Always present: tests that need
/// only a few SSTables use it and never skip.
pub fn sample_sstables() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sstables");
    assert!(
        dir.join("MANIFEST.tsv").is_file(),
        "{} has no MANIFEST.tsv: the repository checkout is incomplete",
        dir.display()
    );
    dir
}

/// The whole real corpus (845 files), for the tests that need all of it:
/// `$TABLESNAP_SSTABLES`, else `../shared/sstables` next to the crate.
/// `None` (with a "skipping" line) when missing, unless `TABLESNAP_REQUIRE_SSTABLES` is set
/// (CI), where a missing corpus fails the test.
pub fn sstables() -> Option<PathBuf> {
    let (dir, from) = match std::env::var_os("TABLESNAP_SSTABLES") {
        Some(d) if !d.is_empty() => (PathBuf::from(d), "$TABLESNAP_SSTABLES"),
        _ => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/sstables"),
            "the default",
        ),
    };
    if dir.join("MANIFEST.tsv").is_file() {
        return Some(dir.canonicalize().unwrap_or(dir));
    }
    let required = std::env::var_os("TABLESNAP_REQUIRE_SSTABLES").is_some_and(|v| !v.is_empty());
    if required {
        panic!(
            "TABLESNAP_REQUIRE_SSTABLES is set but ../shared/sstables not found ({from}: {} has no MANIFEST.tsv)",
            dir.display()
        );
    }
    eprintln!(
        "skipping: ../shared/sstables not found ({from}: {} has no MANIFEST.tsv; set TABLESNAP_SSTABLES)",
        dir.display()
    );
    None
}

/// One line of `MANIFEST.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative to the corpus root, e.g. `hello/world-.../nb-1-big-Data.db`.
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The entries of `ROOT/MANIFEST.tsv` (columns found by name in its header line).
pub fn manifest(root: impl AsRef<Path>) -> Vec<ManifestEntry> {
    let file = root.as_ref().join("MANIFEST.tsv");
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("MANIFEST.tsv is empty")
        .split('\t')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("MANIFEST.tsv has no {name:?} column: {header:?}"))
    };
    let (c_path, c_size, c_sha) = (col("file"), col("size_bytes"), col("sha256"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let get = |c: usize| {
                *f.get(c)
                    .unwrap_or_else(|| panic!("MANIFEST.tsv: short line {l:?}"))
            };
            ManifestEntry {
                path: get(c_path).to_string(),
                size: get(c_size)
                    .parse()
                    .unwrap_or_else(|e| panic!("MANIFEST.tsv: bad size in {l:?}: {e}")),
                sha256: get(c_sha).to_ascii_lowercase(),
            }
        })
        .collect()
}

// ---- files and hashes --------------------------------------------------------------------

/// Lowercase hex SHA-256 of a file (streamed).
pub fn sha256_file(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Copies the tree under `src` into `dst` (created if needed) with plain file copies, keeping
/// relative paths; returns the number of files copied.
pub fn copy_tree(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> usize {
    let (src, dst) = (src.as_ref(), dst.as_ref());
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    let mut n = 0;
    for entry in
        std::fs::read_dir(src).unwrap_or_else(|e| panic!("read_dir {}: {e}", src.display()))
    {
        let entry = entry.expect("read_dir entry");
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if std::fs::metadata(&from).expect("stat").is_dir() {
            n += copy_tree(&from, &to);
        } else {
            std::fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
            n += 1;
        }
    }
    n
}

// ---- waiting -------------------------------------------------------------------------------

/// Polls `f` every 50 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut f: F) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`] for async conditions (S3 listings, ...), without blocking the runtime.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
pub mod backend;
pub mod proxy;

/// How long the backend suites wait for an object to appear.
pub const WAIT_BACKEND: Duration = Duration::from_secs(60);

// ---- the daemon in this process ------------------------------------------------------------

/// How long a test waits for the daemon to become ready or to stop.
pub const DAEMON_WAIT: Duration = Duration::from_secs(60);

/// A daemon running in this process with the same `run()` the binary uses.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<Summary, daemon::DaemonError>>,
}

impl Running {
    pub async fn start(mut cfg: Config) -> Self {
        let ready = Arc::new(Notify::new());
        cfg.ready = Some(ready.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(daemon::run(cfg, async move {
            let _ = rx.await;
        }));
        tokio::select! {
            _ = ready.notified() => {}
            _ = tokio::time::sleep(DAEMON_WAIT) => panic!("daemon did not become ready"),
        }
        Running {
            stop: Some(tx),
            handle,
        }
    }

    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    pub async fn stop(mut self) -> Summary {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DAEMON_WAIT, self.handle)
            .await
            .expect("daemon did not stop")
            .expect("daemon panicked")
            .expect("daemon failed")
    }
}

/// Runs one of the binaries with only `env` (and PATH) in its environment and no stdin, as
/// an init script would. Returns the exit code and stdout + stderr together.
pub fn run_bin(bin: &str, args: &[&str], env: &[(String, String)]) -> (i32, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A `--once -r -B` daemon on a `file://` bucket under `host` (index delay 100 ms): the
/// restart-shaped runs of the node-life tests. Callers set `events.create` and the like.
pub fn once_on_file(bucket: &Path, root: &Path, host: &str) -> Config {
    let opts = StoreOptions {
        destination: format!("file://{}", bucket.display()),
        ..Default::default()
    };
    let mut c = Config::new(
        opts,
        tablesnap::layout::Layout::new("", host, ":"),
        vec![root.to_path_buf()],
    );
    c.index_delay = Duration::from_millis(100);
    c.once = true;
    c.recursive = true;
    c.backup = true;
    c
}

/// Runs a `--once` daemon to its end (at most two minutes).
pub async fn run_once(c: Config) -> Summary {
    tokio::time::timeout(
        Duration::from_secs(120),
        daemon::run(c, std::future::pending()),
    )
    .await
    .expect("--once did not finish")
    .expect("--once failed")
}

/// Every file under `dir`, relative, with its bytes.
pub fn files_with_bytes(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
