//! The tablesnap daemon: `run(config, shutdown)` wires watch → queue → upload → store, the
//! same code in production (shutdown = SIGTERM/SIGINT) and in tests (any future).
//!
//! * Every file owed to the store is in one state of one model (`files.rs`): queued,
//!   running (queued again afterwards if an event came meanwhile: the uploader skips it if
//!   nothing changed) or retrying at a time; files that may not be queued yet (a component
//!   of an SSTable whose transaction is open) are in another (`waiting.rs`). Both are pure
//!   and checked by property tests; `state.rs` applies events to them, `run.rs` does the I/O.
//! * At most `threads` uploads run at once (semaphore permits); large files also upload
//!   their parts concurrently inside the shared memory budget.
//! * Failures never stop the daemon and never drop a file: store errors are retried with
//!   exponential backoff and jitter (forever in daemon mode); a file that vanished is
//!   skipped; an unreadable file is reported and retried at the next rescan.
//! * Indexes are written a short quiet period after a `Data.db` is durable, so the listing
//!   includes the components Cassandra writes after `Data.db` (Statistics, TOC, Digest),
//!   and also whenever what the index would name changed otherwise: a file stored that the
//!   last index does not name (a late component, a file left out for a passing reason), a
//!   TOC stored, a file it names deleted (a compaction's inputs after its COMMIT); such an
//!   index goes under a key of its own (`DIR/tablesnap-<ms>-listdir.json`), never over an
//!   earlier restore point. An index names complete
//!   SSTables only ([`crate::cassandra`]), and `index.rs` schedules them: one write in
//!   flight per directory, interleaved with file uploads.
//! * Readiness comes once the watches are in place; the destination probe, the startup
//!   `-B` LIST and scan, every periodic rescan, the scan of a new directory and the looks
//!   at files waiting for their SSTable's COMMIT (one per directory per round, whatever
//!   the number of files waiting there) run beside the main loop, never in it: the loop
//!   reads no directory.
//! * A backfill writes one listing of a directory: its index waits until every file the
//!   scan queued there was tried once (not only `max_wait`), and one listing goes under
//!   every Data.db key, PUT once and copied inside the store.
//! * Shutdown: stop watching, let in-flight uploads and the indexes they make due finish
//!   within a deadline, then cancel every request still running (multipart uploads are
//!   aborted), and return a summary.

mod files;
mod index;
pub mod keeper;
mod queue;
mod run;
mod state;
mod waiting;

use state::Daemon;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::layout::Layout;
use crate::metrics::Metrics;
use crate::store::{ErrorKind, Store, StoreError, StoreOptions};
use crate::upload::{UploadConfig, Uploader};
use crate::watch::{Events, WatchError, Watcher};

/// Everything the daemon needs; built from the command line by `cli::snap`.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreOptions,
    pub layout: Layout,
    pub paths: Vec<PathBuf>,
    pub recursive: bool,
    pub auto_add: bool,
    /// `-B`: at start, upload existing files not already in the bucket.
    pub backup: bool,
    /// Upload what exists, then exit (implies `backup`; no watching).
    pub once: bool,
    pub events: Events,
    pub threads: usize,
    pub upload: UploadConfig,
    pub delete_on_backup: bool,
    /// The original's `--retries`: at least this many retries per failed upload.
    pub retries: u32,
    /// Periodic LIST-based reconcile and rescan.
    pub rescan_interval: Option<Duration>,
    /// Quiet period after a `Data.db` upload (or another change of what an index would
    /// name) before the index is written.
    pub index_delay: Duration,
    /// How long in-flight uploads may take to finish after a shutdown request.
    pub shutdown_timeout: Duration,
    /// Notified once the watches are in place and the startup scan is queued (tests wait on
    /// it; the binary reports readiness to systemd there).
    pub ready: Option<Arc<tokio::sync::Notify>>,
    /// Serve Prometheus metrics (and `/healthz`) here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `/healthz` answers 503 once uploads have failed at the destination this long with
    /// none succeeding; zero: never for that reason.
    pub health_failing_after: Duration,
    /// Called periodically from the main loop (systemd's watchdog): if the loop hangs, the
    /// pings stop and the service manager restarts the daemon.
    pub watchdog: Option<Watchdog>,
    /// `--object-lock-days`: every object stored is locked, and what a current index names
    /// is kept locked ([`keeper`]).
    pub object_lock: Option<crate::store::lock::LockPolicy>,
}

/// A periodic liveness ping from the daemon's main loop.
#[derive(Clone)]
pub struct Watchdog {
    pub interval: Duration,
    pub ping: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watchdog({:?})", self.interval)
    }
}

impl Config {
    pub fn new(store: StoreOptions, layout: Layout, paths: Vec<PathBuf>) -> Self {
        Self {
            store,
            layout,
            paths,
            recursive: false,
            auto_add: false,
            backup: false,
            once: false,
            events: Events::default(),
            threads: 4,
            upload: UploadConfig::default(),
            delete_on_backup: false,
            retries: 0,
            rescan_interval: None,
            index_delay: Duration::from_millis(1000),
            shutdown_timeout: Duration::from_secs(30),
            ready: None,
            metrics_addr: None,
            health_failing_after: crate::metrics::DEFAULT_FAILING_AFTER,
            watchdog: None,
            object_lock: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot use {dest}: {hint} ({source})")]
    Probe {
        dest: String,
        hint: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("{path} is not a directory that can be watched")]
    NotADir { path: PathBuf },
    #[error(
        "--object-lock-days: {dest} does not have Object Lock enabled; create a bucket with it (aws s3api create-bucket --object-lock-enabled-for-bucket ...) or drop --object-lock-days"
    )]
    NoObjectLock { dest: String },
    #[error("{0}")]
    Watch(#[from] WatchError),
    #[error("cannot serve metrics on {addr}: {source}; choose another --metrics-addr")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} file(s) could not be uploaded (see the errors above)")]
    Incomplete { failed: usize },
}

impl DaemonError {
    /// Process exit code: 3 for configuration/destination problems, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Incomplete { .. } => 1,
            _ => 3,
        }
    }
}

/// What a run did, for the shutdown line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub files_uploaded: u64,
    pub bytes_uploaded: u64,
    pub files_present: u64,
    pub files_vanished: u64,
    pub indexes_written: u64,
    pub failures: u64,
    pub pending: usize,
    /// Hard links stored by a copy inside the store (no bytes sent).
    pub files_copied: u64,
    /// Stored objects kept under a `tablesnap-was-` name before other bytes took their name.
    pub files_superseded: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files ({} bytes) uploaded, {} already stored, {} vanished before upload, {} indexes written, {} failed attempts, {} still pending, {} hard links copied in the store, {} superseded objects kept",
            self.files_uploaded,
            self.bytes_uploaded,
            self.files_present,
            self.files_vanished,
            self.indexes_written,
            self.failures,
            self.pending,
            self.files_copied,
            self.files_superseded
        )
    }
}

/// Runs the daemon until `shutdown` resolves (or, with `once`, until everything is stored).
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, DaemonError> {
    let mut store = Store::open(&cfg.store)?;
    let roots = check_roots(&cfg)?;
    if let Some(policy) = cfg.object_lock {
        store = store.with_lock(policy)?;
        if !store.object_lock_enabled().await? {
            return Err(DaemonError::NoObjectLock {
                dest: store.destination().to_string(),
            });
        }
        tracing::info!(
            mode = policy.mode.as_str(),
            days = policy.days,
            "every object stored is locked; what the newest indexes name is kept locked"
        );
    }
    let mut upload_cfg = cfg.upload.clone();
    upload_cfg.copy_hardlinks |= cfg.events.create;
    let uploader = Arc::new(Uploader::new(store, cfg.layout.clone(), upload_cfg));
    let metrics = Arc::new(Metrics::default());
    metrics.failing_after_ms.store(
        cfg.health_failing_after.as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let cancel = CancellationToken::new();
    let _stop_metrics = cancel.clone().drop_guard();
    if let Some(addr) = cfg.metrics_addr {
        let bound = crate::metrics::serve(
            addr,
            metrics.clone(),
            uploader.clone(),
            cancel.child_token(),
        )
        .await
        .map_err(|source| DaemonError::Metrics { addr, source })?;
        tracing::info!(%bound, "serving Prometheus metrics at /metrics and health at /healthz");
    }

    // Watch before scanning, so nothing written between the scan and the watch is missed.
    let watcher = if cfg.once {
        None
    } else {
        let mut w = Watcher::new(cfg.events, cfg.recursive, cfg.auto_add)?;
        for r in &roots {
            w.add_root(r)?;
        }
        Some(w)
    };
    if let Some(w) = &watcher {
        metrics
            .watched_dirs
            .store(w.watched_dirs() as u64, Ordering::Relaxed);
    }
    // Ready as soon as the watches are in place: from here on nothing written is missed,
    // however long the endpoint takes to answer or the startup LIST runs.
    if let Some(r) = &cfg.ready {
        r.notify_one();
    }
    tokio::pin!(shutdown);
    let dest = uploader.store().destination().to_string();
    if cfg.once {
        tokio::select! {
            r = probe(&cfg, &dest) => r?,
            _ = shutdown.as_mut() => return Ok(Summary::default()),
        }
    }
    tracing::info!(
        destination = %uploader.store().destination(),
        key_prefix = %cfg.layout.host_prefix(),
        paths = ?roots,
        watched_dirs = watcher.as_ref().map(|w| w.watched_dirs()).unwrap_or(0),
        recursive = cfg.recursive,
        auto_add = cfg.auto_add,
        backup = cfg.backup || cfg.once,
        once = cfg.once,
        threads = cfg.threads,
        index = cfg.upload.with_index,
        "tablesnap started"
    );
    let keeper = cfg.object_lock.map(|policy| {
        keeper::Keeper::new(
            uploader.store().clone(),
            cfg.layout.clone(),
            roots.clone(),
            policy,
        )
    });
    let keeper = match keeper {
        Some(k) if !cfg.once => {
            spawn_keeper(k, cfg.rescan_interval, cancel.child_token());
            None
        }
        k => k,
    };
    let mut d = Daemon::new(&cfg, uploader, metrics, roots);
    let probing = (!cfg.once).then(|| probe(&cfg, &dest));
    if let Some(fatal) = run::main_loop(&mut d, watcher, &mut shutdown, &cancel, probing).await {
        let _ = d.finish();
        return Err(fatal);
    }
    if let Some(mut k) = keeper {
        // --once: after everything is stored and named, what is named is kept locked.
        match k.start(chrono::Utc::now()).await {
            Ok(kept) if kept.failed > 0 => d.gave_up += kept.failed,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("object lock: {e}");
                d.gave_up += 1;
            }
        }
    }
    d.finish()
}

/// The daemon's lock keeper: a first pass at start, then one at every rescan interval
/// (hourly without one), until the daemon stops.
fn spawn_keeper(mut k: keeper::Keeper, every: Option<Duration>, stop: CancellationToken) {
    let every = every.unwrap_or(Duration::from_secs(3600));
    tokio::spawn(async move {
        let work = async {
            let mut started = false;
            loop {
                let now = chrono::Utc::now();
                let r = if started {
                    k.pass(now).await
                } else {
                    k.start(now).await
                };
                match r {
                    Ok(_) => started = true,
                    Err(e) => tracing::warn!("object lock: {e}; tried again in {every:?}"),
                }
                tokio::time::sleep(every).await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = work => {}
        }
    });
}

/// Every watched path, absolute, a directory (a symlink to one is followed, as the
/// original did; keys keep the path as given), and nameable in a key.
#[allow(clippy::result_large_err)]
fn check_roots(cfg: &Config) -> Result<Vec<PathBuf>, DaemonError> {
    let mut roots = Vec::new();
    for p in &cfg.paths {
        let abs = abspath(p).map_err(|_| DaemonError::NotADir { path: p.clone() })?;
        if !abs.is_dir() {
            return Err(DaemonError::NotADir { path: abs });
        }
        let key = cfg.layout.data_key(&abs.to_string_lossy());
        Store::path(&key)?;
        roots.push(abs);
    }
    Ok(roots)
}

/// Whether the destination answers as it should. Bad credentials or a missing bucket are
/// fatal; an endpoint that does not answer is asked again with backoff (forever in daemon
/// mode, where this runs beside the main loop: the watches are in place and uploads retry
/// on their own, so nothing written meanwhile is lost), except with --once.
async fn probe(cfg: &Config, dest: &str) -> Result<(), DaemonError> {
    // Few retries per attempt, so a wrong endpoint is reported quickly.
    let probe_store = Store::open(&StoreOptions {
        max_retries: Some(2),
        retry_timeout: Some(Duration::from_secs(15)),
        ..cfg.store.clone()
    })?;
    let host_prefix = cfg.layout.host_prefix();
    let probe_dir = host_prefix.trim_end_matches('/');
    let probe_dir = if probe_dir.is_empty() { "x" } else { probe_dir };
    let mut attempt = 0;
    loop {
        let source = match probe_store.probe(probe_dir).await {
            Ok(()) => return Ok(()),
            // No credentials anywhere: the error says what was tried and what to set.
            Err(e @ StoreError::NoCredentials { .. }) => return Err(e.into()),
            Err(e) => e,
        };
        let transient = source.kind() == ErrorKind::Transient;
        let err = DaemonError::Probe {
            dest: dest.to_string(),
            hint: probe_hint(source.kind()),
            source,
        };
        if !transient || cfg.once {
            return Err(err);
        }
        attempt += 1;
        let delay = backoff(attempt, None).min(Duration::from_secs(30));
        tracing::error!(
            "{err}; asking again in {delay:?} (watching meanwhile: nothing written is missed)"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Python's `os.path.abspath`, which the original applied to watched paths: absolute, with
/// `.` and `..` resolved lexically. Symlinks are kept as given (keys name the path the
/// operator configured, as they always did).
pub fn abspath(p: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(p)?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// What to tell an operator whose destination does not answer as it should.
pub fn probe_hint(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => {
            "the bucket does not exist; check that the bucket exists and its name and region (--aws-region)"
        }
        ErrorKind::Denied => {
            "access denied; check the credentials (-k/-s, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the instance role) and that they may list and write the bucket"
        }
        ErrorKind::Transient => {
            "the endpoint did not answer; check the endpoint (--endpoint-url, AWS_ENDPOINT_URL) and the network"
        }
        ErrorKind::Other => {
            "check that the bucket exists, the endpoint is reachable and the credentials may list it"
        }
    }
}

/// Exponential backoff with full jitter: 1 s, 2 s, 4 s ... capped at 5 minutes (permission
/// errors start higher: someone has to fix them).
fn backoff(attempt: u32, kind: Option<ErrorKind>) -> Duration {
    let base_ms: u64 = if kind == Some(ErrorKind::Denied) {
        30_000
    } else {
        1_000
    };
    let cap = 300_000u64;
    let exp = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(16))
        .min(cap);
    let jitter = rand::random::<u64>() % (exp / 2 + 1);
    Duration::from_millis(exp / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_paths_are_normalized_like_os_path_abspath() {
        assert_eq!(
            abspath(Path::new("/a/b/../c/./d/")).unwrap(),
            Path::new("/a/c/d")
        );
        assert_eq!(abspath(Path::new("/../x")).unwrap(), Path::new("/x"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(abspath(Path::new("x/..")).unwrap(), cwd);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for a in 1..40 {
            let d = backoff(a, None);
            assert!(d <= Duration::from_secs(300), "{a}: {d:?}");
            let floor = (1000u64 << (a - 1).min(16)).min(300_000) / 2;
            assert!(d >= Duration::from_millis(floor), "{a}: {d:?}");
        }
        assert!(backoff(1, Some(ErrorKind::Denied)) >= Duration::from_secs(15));
    }
}
