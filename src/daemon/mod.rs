//! The tablesnap daemon: `run(config, shutdown)` wires watch → queue → upload → store, the
//! same code in production (shutdown = SIGTERM/SIGINT) and in tests (any future).
//!
//! * The queue deduplicates paths; a path that gets an event while it is being uploaded is
//!   queued again afterwards (the uploader skips it if nothing changed).
//! * At most `threads` uploads run at once (semaphore permits); large files also upload
//!   their parts concurrently inside the shared memory budget.
//! * Failures never stop the daemon and never drop a file: store errors are retried with
//!   exponential backoff and jitter (forever in daemon mode); a file that vanished is
//!   skipped; an unreadable file is reported and retried at the next rescan.
//! * Indexes are written a short quiet period after a `Data.db` is durable, so the listing
//!   includes the components Cassandra writes after `Data.db` (Statistics, TOC, Digest);
//!   an index names complete SSTables only ([`crate::cassandra`]), and [`index`] schedules
//!   them: one write in flight per directory, interleaved with file uploads.
//! * Readiness comes once the watches are in place; the destination probe, the startup
//!   `-B` LIST and scan and every periodic rescan run beside the main loop, never in it.
//! * Shutdown: stop watching, let in-flight uploads and the indexes they make due finish
//!   within a deadline, then cancel every request still running (multipart uploads are
//!   aborted), and return a summary.

mod index;

use index::IndexScheduler;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::layout::{self, Layout};
use crate::metrics::Metrics;
use crate::store::{ErrorKind, Store, StoreError, StoreOptions};
use crate::upload::{IndexWritten, Outcome, UploadConfig, UploadError, Uploader};
use crate::watch::{Events, Scan, WatchError, WatchEvent, Watcher, scan_closed};

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
    /// Quiet period after a `Data.db` upload before its index is written.
    pub index_delay: Duration,
    /// How long in-flight uploads may take to finish after a shutdown request.
    pub shutdown_timeout: Duration,
    /// Notified once the watches are in place and the startup scan is queued (tests wait on
    /// it; the binary reports readiness to systemd there).
    pub ready: Option<Arc<tokio::sync::Notify>>,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Called periodically from the main loop (systemd's watchdog): if the loop hangs, the
    /// pings stop and the service manager restarts the daemon.
    pub watchdog: Option<Watchdog>,
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
            watchdog: None,
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
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files ({} bytes) uploaded, {} already stored, {} vanished before upload, {} indexes written, {} failed attempts, {} still pending",
            self.files_uploaded,
            self.bytes_uploaded,
            self.files_present,
            self.files_vanished,
            self.indexes_written,
            self.failures,
            self.pending
        )
    }
}

enum Task {
    File(PathBuf),
    Index(PathBuf, Vec<PathBuf>),
}

enum Done {
    File(PathBuf, Result<Outcome, UploadError>),
    Index(PathBuf, Vec<PathBuf>, Result<IndexWritten, UploadError>),
}

/// What a scan running beside the main loop found.
struct Found {
    reason: &'static str,
    scan: Scan,
    /// Data.db files whose index the LIST showed missing.
    missing_index: Vec<PathBuf>,
}

/// How long a cancelled request may take to clean up (abort its multipart upload) before
/// it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How soon a Data.db of an SSTable that was not complete is looked at again (also at
/// once when a transaction log of its directory goes away).
const RECHECK: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` resolves (or, with `once`, until everything is stored).
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, DaemonError> {
    let store = Store::open(&cfg.store)?;
    let roots = check_roots(&cfg)?;
    let uploader = Arc::new(Uploader::new(store, cfg.layout.clone(), cfg.upload.clone()));
    let metrics = Arc::new(Metrics::default());
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
        tracing::info!(%bound, "serving Prometheus metrics at /metrics");
    }

    // Watch before scanning, so nothing written between the scan and the watch is missed.
    let mut watcher = if cfg.once {
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
    if !probe(&cfg, &uploader, &mut shutdown).await? {
        return Ok(Summary::default());
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
    let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel::<Found>();
    let mut d = Daemon::new(&cfg, uploader, metrics.clone(), roots);
    if cfg.backup || cfg.once {
        metrics.rescan("startup");
        d.spawn_scan("startup", true, &found_tx);
    }

    let permits = Arc::new(Semaphore::new(cfg.threads.max(1)));
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut owners: HashMap<tokio::task::Id, Task> = HashMap::new();
    let mut unwatched_retry = tokio::time::interval(Duration::from_secs(2));
    unwatched_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = cfg.watchdog.as_ref().map(|w| {
        let mut t = tokio::time::interval(w.interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut rescan = cfg.rescan_interval.map(|i| {
        let mut t = tokio::time::interval_at(Instant::now() + i, i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });

    loop {
        // Start what we can.
        while let Some(task) = d.next_task() {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                d.unpop(task);
                break;
            };
            d.spawn(&mut tasks, &mut owners, task, permit, &cancel);
        }
        d.update_gauges(tasks.len(), watcher.as_ref().map(|w| w.watched_dirs()));
        if cfg.once && tasks.is_empty() && d.idle() {
            break;
        }
        let wake = d.next_wake();
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutdown requested: no longer watching; finishing uploads in flight");
                break;
            }
            Some(done) = tasks.join_next_with_id() => d.joined(done, &mut owners),
            Some(found) = found_rx.recv() => d.found(found),
            evs = async { watcher.as_mut().unwrap().next().await }, if watcher.is_some() => {
                match evs {
                    Ok(evs) => for ev in evs {
                        if ev == WatchEvent::Overflow {
                            // Directories created meanwhile were not seen: watch them too.
                            for dir in watcher.as_mut().unwrap().rewatch(&d.roots) {
                                tracing::info!(dir = %dir.display(), "watching a directory found after the overflow");
                            }
                            d.metrics.rescan("overflow");
                            tracing::warn!("inotify queue overflowed: events were lost; rescanning every watched directory");
                            d.spawn_scan("overflow", false, &found_tx);
                            continue;
                        }
                        d.on_event(ev)
                    },
                    Err(e) => {
                        tracing::error!("{e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            _ = unwatched_retry.tick(), if watcher.as_ref().is_some_and(|w| w.has_unwatched()) => {
                for ev in watcher.as_mut().unwrap().retry_unwatched() {
                    d.on_event(ev);
                }
            }
            _ = async { rescan.as_mut().unwrap().tick().await }, if rescan.is_some() => {
                if let Some(w) = watcher.as_mut() {
                    for dir in w.rewatch(&d.roots) {
                        tracing::info!(dir = %dir.display(), "watching a directory found by the rescan");
                    }
                }
                d.metrics.rescan("interval");
                d.spawn_scan("interval", true, &found_tx);
            }
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                if let Some(w) = &cfg.watchdog { (w.ping)(); }
            }
            _ = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    drop(watcher);
    d.drain(&mut tasks, &mut owners, &permits, &cancel).await;
    d.finish()
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

/// The destination must answer before anything is uploaded. Bad credentials or a missing
/// bucket are fatal at once; an endpoint that does not answer is waited for (the watches
/// are already in place, so nothing written meanwhile is missed), except with --once.
/// Returns false if shutdown came first.
async fn probe(
    cfg: &Config,
    uploader: &Uploader,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<bool, DaemonError> {
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
        let source = tokio::select! {
            r = probe_store.probe(probe_dir) => match r {
                Ok(()) => return Ok(true),
                Err(e) => e,
            },
            _ = shutdown.as_mut() => return Ok(false),
        };
        let transient = source.kind() == ErrorKind::Transient;
        let err = DaemonError::Probe {
            dest: uploader.store().destination().to_string(),
            hint: probe_hint(source.kind()),
            source,
        };
        if !transient || cfg.once {
            return Err(err);
        }
        attempt += 1;
        let delay = backoff(attempt, None).min(Duration::from_secs(30));
        tracing::error!(
            "{err}; retrying in {delay:?} (already watching: nothing written meanwhile is missed)"
        );
        let until = Instant::now() + delay;
        loop {
            // Keep the service manager's watchdog fed while waiting.
            if let Some(w) = &cfg.watchdog {
                (w.ping)();
            }
            let step = cfg
                .watchdog
                .as_ref()
                .map(|w| w.interval)
                .unwrap_or(delay)
                .min(until.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = shutdown.as_mut() => return Ok(false),
                _ = tokio::time::sleep(step) => {}
            }
            if Instant::now() >= until {
                break;
            }
        }
    }
}

struct Daemon<'a> {
    cfg: &'a Config,
    uploader: Arc<Uploader>,
    metrics: Arc<Metrics>,
    /// When each file not yet durable was first seen (for the recovery-point metric).
    pending_since: HashMap<PathBuf, u64>,
    pending_order: BTreeSet<(u64, PathBuf)>,
    roots: Vec<PathBuf>,
    queue: VecDeque<PathBuf>,
    queued: HashSet<PathBuf>,
    running: HashSet<PathBuf>,
    /// Paths that got an event while running: queue again when done.
    rerun: HashSet<PathBuf>,
    retry_at: BTreeMap<Instant, Vec<PathBuf>>,
    retrying: HashSet<PathBuf>,
    attempts: HashMap<PathBuf, u32>,
    /// Files the daemon still owes an upload (queued, running or retrying), per directory:
    /// an index waits for its own directory's uploads, not for the whole queue.
    busy_dirs: HashMap<PathBuf, usize>,
    owed: HashSet<PathBuf>,
    indexes: IndexScheduler,
    /// Other files a scan found modified moments ago: looked at again when settled.
    unsettled: BTreeMap<Instant, Vec<PathBuf>>,
    /// Scans running beside the main loop.
    scans: usize,
    failures: u64,
    gave_up: usize,
}

impl<'a> Daemon<'a> {
    fn new(
        cfg: &'a Config,
        uploader: Arc<Uploader>,
        metrics: Arc<Metrics>,
        roots: Vec<PathBuf>,
    ) -> Self {
        Daemon {
            cfg,
            uploader,
            metrics,
            pending_since: HashMap::new(),
            pending_order: BTreeSet::new(),
            roots,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            running: HashSet::new(),
            rerun: HashSet::new(),
            retry_at: BTreeMap::new(),
            retrying: HashSet::new(),
            attempts: HashMap::new(),
            busy_dirs: HashMap::new(),
            owed: HashSet::new(),
            indexes: IndexScheduler::new(cfg.index_delay),
            unsettled: BTreeMap::new(),
            scans: 0,
            failures: 0,
            gave_up: 0,
        }
    }

    fn hardlinks(&self) -> bool {
        self.cfg.events.create
    }

    fn owe(&mut self, p: &Path) {
        if self.owed.insert(p.to_path_buf()) {
            if let Some(d) = p.parent() {
                *self.busy_dirs.entry(d.to_path_buf()).or_insert(0) += 1;
            }
        }
    }

    fn settle(&mut self, p: &Path) {
        if self.queued.contains(p) || self.running.contains(p) || self.retrying.contains(p) {
            return;
        }
        if self.owed.remove(p) {
            if let Some(d) = p.parent() {
                if let Some(n) = self.busy_dirs.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        self.busy_dirs.remove(d);
                    }
                }
            }
        }
    }

    fn enqueue(&mut self, p: PathBuf) {
        let Some(s) = p.to_str() else {
            tracing::error!(path = %p.display(), "skipping a path that is not UTF-8 (it cannot be named in a key)");
            return;
        };
        if !self.uploader.filter().accepts(s) {
            tracing::debug!(path = s, "skipped by the include/exclude rules");
            return;
        }
        if !self.pending_since.contains_key(&p) {
            let t = crate::metrics::now_ms();
            self.pending_since.insert(p.clone(), t);
            self.pending_order.insert((t, p.clone()));
        }
        self.owe(&p);
        if self.running.contains(&p) {
            self.rerun.insert(p);
            return;
        }
        if self.queued.insert(p.clone()) {
            self.queue.push_back(p);
        }
    }

    /// Runs a scan (and with `list`, first the LIST of what is stored) beside the main
    /// loop; its findings come back through `tx`.
    fn spawn_scan(
        &mut self,
        reason: &'static str,
        list: bool,
        tx: &tokio::sync::mpsc::UnboundedSender<Found>,
    ) {
        self.scans += 1;
        let roots = self.roots.clone();
        let up = self.uploader.clone();
        let recursive = self.cfg.recursive || self.cfg.auto_add;
        let hardlinks = self.hardlinks();
        let with_index = self.cfg.upload.with_index;
        let tx = tx.clone();
        tokio::spawn(async move {
            if list {
                for r in &roots {
                    match up.reconcile(r).await {
                        Ok(n) => {
                            tracing::info!(path = %r.display(), objects = n, "listed what is already stored")
                        }
                        Err(e) => tracing::warn!("{e}; falling back to one HEAD per file"),
                    }
                }
            }
            let scan = tokio::task::spawn_blocking(move || {
                let mut all = Scan::default();
                for r in &roots {
                    let s = scan_closed(r, recursive, hardlinks);
                    all.ready.extend(s.ready);
                    all.unsettled.extend(s.unsettled);
                    all.unreadable.extend(s.unreadable);
                    all.not_utf8.extend(s.not_utf8);
                }
                all
            })
            .await
            .unwrap_or_default();
            let missing_index = if list && with_index {
                scan.ready
                    .iter()
                    .filter(|f| {
                        f.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(layout::wants_index)
                            && up.index_missing(f)
                    })
                    .cloned()
                    .collect()
            } else {
                vec![]
            };
            let _ = tx.send(Found {
                reason,
                scan,
                missing_index,
            });
        });
    }

    fn found(&mut self, f: Found) {
        self.scans = self.scans.saturating_sub(1);
        let n = f.scan.ready.len();
        for (dir, e) in f.scan.unreadable {
            tracing::error!(dir = %dir.display(), "cannot read the directory ({e}): its files are not backed up; fix its permissions");
            if self.cfg.once {
                self.gave_up += 1;
            }
        }
        for p in f.scan.not_utf8 {
            tracing::error!(path = %p.display(), "skipping a file whose name is not UTF-8 (it cannot be named in a key)");
            if self.cfg.once {
                self.gave_up += 1;
            }
        }
        let now = Instant::now();
        for p in f.missing_index {
            self.indexes.schedule(&p, now, true);
        }
        for p in f.scan.ready {
            self.enqueue(p);
        }
        if !f.scan.unsettled.is_empty() {
            self.unsettled
                .entry(now + crate::upload::SETTLE)
                .or_default()
                .extend(f.scan.unsettled);
        }
        tracing::debug!(reason = f.reason, files = n, "scan done");
    }

    fn on_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::File(p) => {
                if !crate::watch::event_wanted(&p, self.hardlinks()) {
                    return;
                }
                if let Some(dir) = p.parent() {
                    // More activity in a directory with a pending index: wait for it to settle.
                    self.indexes.activity(dir, Instant::now());
                }
                self.enqueue(p);
            }
            WatchEvent::NewDir(dir) => {
                tracing::info!(dir = %dir.display(), "new directory: watching and scanning it");
                self.take_scan(scan_closed(&dir, false, self.hardlinks()));
            }
            WatchEvent::Unwatched(dir) => {
                self.take_scan(scan_closed(&dir, true, self.hardlinks()));
            }
            WatchEvent::Gone(p) => {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if crate::cassandra::is_txn_log(name) {
                    // A transaction ended: SSTables of this directory may just have become
                    // complete (or obsolete); its pending index need not wait.
                    if let Some(dir) = p.parent() {
                        self.indexes.hurry(dir, Instant::now());
                    }
                }
                // A file being uploaded or queued is handled there (it will be "vanished").
                if !self.running.contains(&p) && !self.queued.contains(&p) {
                    self.uploader.forget(&p);
                }
            }
            WatchEvent::Overflow => {}
        }
    }

    fn take_scan(&mut self, s: Scan) {
        self.scans += 1;
        self.found(Found {
            reason: "new directory",
            scan: s,
            missing_index: vec![],
        });
    }

    fn next_task(&mut self) -> Option<Task> {
        let now = Instant::now();
        // Files a scan left waiting: ready now, or later (or gone).
        while let Some(e) = self.unsettled.first_entry() {
            if *e.key() > now {
                break;
            }
            for p in e.remove() {
                match crate::watch::ready_now(&p) {
                    Some(true) => self.enqueue(p),
                    Some(false)
                        if self.cfg.once
                            && crate::cassandra::parse_name(
                                p.file_name().and_then(|n| n.to_str()).unwrap_or(""),
                            )
                            .is_some() =>
                    {
                        // A run that ends cannot wait for a compaction: a later one takes it.
                        tracing::warn!(path = %p.display(), "its SSTable is not complete (being written?): not uploaded by this run");
                    }
                    Some(false) => self
                        .unsettled
                        .entry(now + RECHECK.min(crate::upload::SETTLE * 2))
                        .or_default()
                        .push(p),
                    None => {}
                }
            }
        }
        if let Some(mut e) = self.retry_at.first_entry() {
            if *e.key() <= now {
                let p = e.get_mut().pop();
                if e.get().is_empty() {
                    e.remove();
                }
                if let Some(p) = p {
                    self.retrying.remove(&p);
                    if self.running.contains(&p) {
                        self.rerun.insert(p);
                        return self.next_task();
                    }
                    self.running.insert(p.clone());
                    return Some(Task::File(p));
                }
            }
        }
        // A due index goes before the queue: the recovery point must move under a backlog.
        // It waits only for its own directory's uploads (at most ten quiet periods).
        let busy = &self.busy_dirs;
        if let Some((dir, files)) = self.indexes.start(now, |d| busy.contains_key(d)) {
            return Some(Task::Index(dir, files));
        }
        if let Some(p) = self.queue.pop_front() {
            self.queued.remove(&p);
            self.running.insert(p.clone());
            return Some(Task::File(p));
        }
        None
    }

    fn unpop(&mut self, t: Task) {
        match t {
            Task::File(p) => {
                self.running.remove(&p);
                self.queued.insert(p.clone());
                self.queue.push_front(p);
            }
            Task::Index(dir, files) => {
                let now = Instant::now();
                self.indexes.done(&dir, files, now, now);
            }
        }
    }

    fn spawn(
        &mut self,
        tasks: &mut JoinSet<Done>,
        owners: &mut HashMap<tokio::task::Id, Task>,
        task: Task,
        permit: tokio::sync::OwnedSemaphorePermit,
        cancel: &CancellationToken,
    ) {
        let up = self.uploader.clone();
        let c = cancel.clone();
        let owner = match &task {
            Task::File(p) => Task::File(p.clone()),
            Task::Index(d, f) => Task::Index(d.clone(), f.clone()),
        };
        let h = tasks.spawn(async move {
            let _permit = permit;
            // Every request honours the shutdown deadline: after a cancel, a task gets a
            // short grace to clean up (abort its multipart upload), then it is dropped.
            let grace = async {
                c.cancelled().await;
                tokio::time::sleep(CANCEL_GRACE).await;
            };
            match task {
                Task::File(p) => {
                    let r = tokio::select! {
                        r = up.ensure_durable(&p, &c) => r,
                        _ = grace => Err(UploadError::Cancelled { path: p.clone() }),
                    };
                    Done::File(p, r)
                }
                Task::Index(dir, files) => {
                    let r = tokio::select! {
                        r = up.write_index(&dir, &files, &c) => r,
                        _ = grace => Err(UploadError::Cancelled { path: dir.clone() }),
                    };
                    Done::Index(dir, files, r)
                }
            }
        });
        owners.insert(h.id(), owner);
    }

    /// A task ended. A panic is contained: its file or index is retried like a failure.
    fn joined(
        &mut self,
        r: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
        owners: &mut HashMap<tokio::task::Id, Task>,
    ) {
        match r {
            Ok((id, done)) => {
                owners.remove(&id);
                self.finished(done);
            }
            Err(e) => {
                tracing::error!("upload task failed: {e}; retrying its work");
                let err = |p: &Path| UploadError::Read {
                    path: p.to_path_buf(),
                    source: std::io::Error::other("the upload task panicked"),
                };
                match owners.remove(&e.id()) {
                    Some(Task::File(p)) => {
                        let e = err(&p);
                        self.finished(Done::File(p, Err(e)))
                    }
                    Some(Task::Index(d, f)) => {
                        let e = err(&d);
                        self.finished(Done::Index(d, f, Err(e)))
                    }
                    None => {}
                }
            }
        }
    }

    /// After the main loop: stop taking new files, let the uploads in flight and the
    /// indexes pending (or made due by them) finish until the deadline, then cancel.
    async fn drain(
        &mut self,
        tasks: &mut JoinSet<Done>,
        owners: &mut HashMap<tokio::task::Id, Task>,
        permits: &Arc<Semaphore>,
        cancel: &CancellationToken,
    ) {
        let deadline = tokio::time::sleep(self.cfg.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            for (dir, files) in self.indexes.start_all() {
                // Beyond the permits if need be: shutdown is no time to wait for a slot.
                let permit = match permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => Arc::new(Semaphore::new(1))
                        .try_acquire_owned()
                        .expect("fresh"),
                };
                self.spawn(tasks, owners, Task::Index(dir, files), permit, cancel);
            }
            if tasks.is_empty() {
                return;
            }
            tokio::select! {
                n = tasks.join_next_with_id() => match n {
                    Some(r) => self.joined(r, owners),
                    None => return,
                },
                _ = &mut deadline => {
                    tracing::warn!(in_flight = tasks.len(), "shutdown deadline reached: cancelling uploads in flight (multipart uploads are aborted)");
                    cancel.cancel();
                    while let Some(r) = tasks.join_next_with_id().await {
                        self.joined(r, owners);
                    }
                    return;
                }
            }
        }
    }

    #[allow(clippy::result_large_err)]
    fn finish(self) -> Result<Summary, DaemonError> {
        let s = &self.uploader.stats;
        let pending_files = self.queue.len() + self.retry_at.values().map(Vec::len).sum::<usize>();
        let summary = Summary {
            files_uploaded: s.files_uploaded.load(Ordering::Relaxed),
            bytes_uploaded: s.bytes_uploaded.load(Ordering::Relaxed),
            files_present: self.metrics.files_present.load(Ordering::Relaxed),
            files_vanished: s.files_vanished.load(Ordering::Relaxed),
            indexes_written: s.indexes_written.load(Ordering::Relaxed),
            failures: self.failures,
            pending: pending_files + self.indexes.pending_len() + self.indexes.running_len(),
        };
        tracing::info!("tablesnap stopped: {summary}");
        if self.cfg.once && (self.gave_up > 0 || summary.pending > 0) {
            return Err(DaemonError::Incomplete {
                failed: self.gave_up + summary.pending,
            });
        }
        Ok(summary)
    }

    fn idle(&self) -> bool {
        self.queue.is_empty()
            && self.retry_at.is_empty()
            && self.indexes.is_idle()
            && self.unsettled.is_empty()
            && self.scans == 0
    }

    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        [
            self.retry_at.keys().next().copied(),
            self.unsettled.keys().next().copied(),
            // An index already due that was not started is waiting for its directory's
            // uploads or for a permit: a finishing task wakes the loop, not a timer (but
            // one that waits for max_wait needs the timer: poll once a second then).
            self.indexes
                .next_wake(now)
                .map(|t| t.max(now + Duration::from_millis(if t <= now { 1000 } else { 0 }))),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn finished(&mut self, done: Done) {
        match done {
            Done::File(p, r) => {
                self.running.remove(&p);
                match r {
                    Ok(outcome) => {
                        self.attempts.remove(&p);
                        if let Some(t) = self.pending_since.remove(&p) {
                            self.pending_order.remove(&(t, p.clone()));
                        }
                        self.stored(&p, outcome);
                    }
                    Err(e) => self.failed(&p, e),
                }
                if self.rerun.remove(&p) {
                    self.enqueue(p.clone());
                }
                self.settle(&p);
            }
            Done::Index(dir, files, r) => {
                let now = Instant::now();
                match r {
                    Ok(w) => {
                        self.attempts.remove(&dir);
                        if !w.indexed.is_empty() {
                            tracing::info!(dir = %dir.display(), files = w.names.len(), indexes = w.indexed.len(), "index written");
                        }
                        if !w.deferred.is_empty() {
                            tracing::debug!(dir = %dir.display(), deferred = w.deferred.len(), "Data.db of SSTables not complete yet: indexed later");
                        }
                        if self.cfg.delete_on_backup {
                            // An SSTable's components go once an index names them (deleted
                            // earlier, the SSTable would look incomplete to that index).
                            for n in &w.names {
                                self.uploader.delete_local(&dir.join(n));
                            }
                        }
                        if self.cfg.once && !w.deferred.is_empty() {
                            // Nothing will complete them while this run waits: a later run
                            // (or the daemon) indexes them.
                            for f in &w.deferred {
                                tracing::warn!(path = %f.display(), "its SSTable is not complete (being written?): not indexed by this run");
                            }
                            self.indexes.done(&dir, vec![], now, now);
                        } else {
                            self.indexes.done(&dir, w.deferred, now + RECHECK, now);
                        }
                    }
                    Err(UploadError::Cancelled { .. }) => {
                        // Shutdown: still pending (the summary counts it).
                        self.indexes.done(&dir, files, now, now);
                    }
                    Err(e) => {
                        let retry = self.index_failed(&dir, e);
                        match retry {
                            Some(delay) => self.indexes.done(&dir, files, now + delay, now),
                            None => self.indexes.done(&dir, vec![], now, now),
                        }
                    }
                }
            }
        }
    }

    /// A file is durable (or needs nothing): schedule its directory's index.
    fn stored(&mut self, p: &Path, outcome: Outcome) {
        match outcome {
            Outcome::Uploaded { bytes } => {
                self.metrics
                    .last_success_ms
                    .store(crate::metrics::now_ms(), Ordering::Relaxed);
                tracing::info!(path = %p.display(), bytes, "uploaded")
            }
            Outcome::Present => {
                self.metrics.files_present.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = %p.display(), "already stored")
            }
            Outcome::Vanished => {
                tracing::info!(path = %p.display(), "vanished before upload (compacted?); skipped")
            }
            Outcome::Ignored => {}
        }
        // A Data.db stored as a side effect of a sibling's index (while this task waited to
        // retry) still needs its own index.
        let stored = matches!(outcome, Outcome::Uploaded { .. })
            || (outcome == Outcome::Present && self.uploader.unindexed(p));
        let is_data = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(layout::wants_index);
        if self.cfg.upload.with_index && is_data && stored {
            self.indexes.schedule(p, Instant::now(), self.cfg.once);
        } else if let Some(dir) = p.parent() {
            self.indexes.activity(dir, Instant::now());
        }
        let sstable = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| crate::cassandra::parse_name(n).is_some());
        if self.cfg.delete_on_backup
            && matches!(outcome, Outcome::Uploaded { .. } | Outcome::Present)
            && !(sstable && self.cfg.upload.with_index)
            && !self.indexes.has_pending(p)
        {
            self.uploader.delete_local(p);
        }
    }

    fn update_gauges(&self, in_flight: usize, watched: Option<usize>) {
        let m = &self.metrics;
        let retrying: usize = self.retry_at.values().map(Vec::len).sum();
        m.queue_depth
            .store((self.queue.len() + retrying) as u64, Ordering::Relaxed);
        m.in_flight.store(in_flight as u64, Ordering::Relaxed);
        m.pending_indexes
            .store(self.indexes.pending_len() as u64, Ordering::Relaxed);
        if let Some(w) = watched {
            m.watched_dirs.store(w as u64, Ordering::Relaxed);
        }
        let oldest = self.pending_order.first().map(|(t, _)| *t).unwrap_or(0);
        m.oldest_pending_ms.store(oldest, Ordering::Relaxed);
    }

    fn count_failure(&mut self, e: &UploadError) {
        if matches!(e, UploadError::Cancelled { .. }) {
            return;
        }
        self.failures += 1;
        self.metrics.failure(match e {
            e if e.is_unstorable() => "unstorable",
            UploadError::Read { .. } | UploadError::NotUtf8 { .. } => "local",
            UploadError::Changed { .. } => "changed",
            UploadError::Cancelled { .. } => "other",
            UploadError::Store { source, .. } => match source.kind() {
                ErrorKind::Transient => "transient",
                ErrorKind::Denied => "denied",
                ErrorKind::NotFound => "not_found",
                ErrorKind::Other => "other",
            },
        });
    }

    /// How long to wait before trying again, or None to give up (with --once).
    fn retry_delay(&mut self, p: &Path, e: &UploadError) -> Option<Duration> {
        if matches!(e, UploadError::Cancelled { .. }) {
            tracing::warn!("{e}");
            return None;
        }
        if e.is_unstorable() {
            // Retrying cannot help: say it once, and the indexes leave it out.
            if self.uploader.report_unstorable(p) {
                tracing::error!(
                    "{e}; this file cannot be backed up under its name (rename it, or exclude it with -e)"
                );
            }
            if self.cfg.once {
                self.gave_up += 1;
            }
            return None;
        }
        if e.is_local() && self.cfg.once {
            tracing::error!("{e}; skipping it");
            self.gave_up += 1;
            return None;
        }
        let n = self.attempts.entry(p.to_path_buf()).or_insert(0);
        *n += 1;
        let attempt = *n;
        if self.cfg.once && attempt > self.cfg.retries.max(4) {
            tracing::error!("{e}; giving up after {attempt} attempts");
            self.gave_up += 1;
            return None;
        }
        let delay = if matches!(e, UploadError::Changed { .. }) {
            Duration::from_millis(200)
        } else if e.is_local() {
            // Permissions or I/O: someone has to fix it; check again now and then (and at
            // every rescan) without hammering the disk.
            backoff(attempt + 4, None)
        } else {
            backoff(attempt, e.store_kind())
        };
        tracing::warn!("{e}; attempt {attempt} failed, retrying in {delay:?}");
        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        Some(delay)
    }

    fn failed(&mut self, p: &Path, e: UploadError) {
        if let UploadError::Cancelled { .. } = e {
            // Shutdown: not a failure, still pending (the summary counts it).
            tracing::warn!("{e}");
            if self.queued.insert(p.to_path_buf()) {
                self.queue.push_back(p.to_path_buf());
            }
            return;
        }
        self.count_failure(&e);
        if let Some(delay) = self.retry_delay(p, &e) {
            self.retrying.insert(p.to_path_buf());
            self.retry_at
                .entry(Instant::now() + delay)
                .or_default()
                .push(p.to_path_buf());
        }
    }

    fn index_failed(&mut self, dir: &Path, e: UploadError) -> Option<Duration> {
        self.count_failure(&e);
        self.retry_delay(dir, &e)
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
