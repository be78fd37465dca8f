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
//!   includes the components Cassandra writes after `Data.db` (Statistics, TOC, Digest).
//! * Shutdown: stop watching, let in-flight uploads finish within a deadline, then cancel
//!   them (their multipart uploads are aborted), and return a summary.

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
use crate::upload::{Outcome, UploadConfig, UploadError, Uploader};
use crate::watch::{Events, WatchError, WatchEvent, Watcher, scan};

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
    Index(PathBuf, Vec<PathBuf>, Result<Vec<String>, UploadError>),
}

struct PendingIndex {
    files: Vec<PathBuf>,
    first: Instant,
    due: Instant,
}

/// Runs the daemon until `shutdown` resolves (or, with `once`, until everything is stored).
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, DaemonError> {
    let store = Store::open(&cfg.store)?;
    // Fail fast on configuration problems, with few retries so a wrong endpoint is quick.
    let probe_store = Store::open(&StoreOptions {
        max_retries: Some(2),
        retry_timeout: Some(Duration::from_secs(15)),
        ..cfg.store.clone()
    })?;
    let host_prefix = cfg.layout.host_prefix();
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
    // The destination must answer before anything is uploaded. Bad credentials or a missing
    // bucket are fatal at once; an endpoint that does not answer is waited for (the watches
    // are already in place, so nothing written meanwhile is missed), except with --once.
    tokio::pin!(shutdown);
    let probe_dir = host_prefix.trim_end_matches('/');
    let probe_dir = if probe_dir.is_empty() { "x" } else { probe_dir };
    let mut attempt = 0;
    loop {
        let source = match probe_store.probe(probe_dir).await {
            Ok(()) => break,
            Err(e @ StoreError::NoCredentials { .. }) => return Err(e.into()), // credentials: says it all
            Err(e) => e,
        };
        let err = DaemonError::Probe {
            dest: uploader.store().destination().to_string(),
            hint: probe_hint(source.kind()),
            source,
        };
        let transient = matches!(&err, DaemonError::Probe { source, .. } if source.kind() == ErrorKind::Transient);
        if !transient || cfg.once {
            return Err(err);
        }
        attempt += 1;
        let delay = backoff(attempt, None).min(Duration::from_secs(30));
        tracing::error!(
            "{err}; retrying in {delay:?} (already watching: nothing written meanwhile is missed)"
        );
        tokio::select! {
            _ = &mut shutdown => return Ok(Summary::default()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::info!(
        destination = %uploader.store().destination(),
        key_prefix = %host_prefix,
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

    if let Some(w) = &watcher {
        metrics
            .watched_dirs
            .store(w.watched_dirs() as u64, Ordering::Relaxed);
    }
    let mut d = Daemon {
        cfg: &cfg,
        uploader,
        metrics: metrics.clone(),
        pending_since: HashMap::new(),
        pending_order: BTreeSet::new(),
        roots,
        queue: VecDeque::new(),
        queued: HashSet::new(),
        running: HashSet::new(),
        rerun: HashSet::new(),
        retry_at: BTreeMap::new(),
        attempts: HashMap::new(),
        indexes: HashMap::new(),
        failures: 0,
        gave_up: 0,
    };
    let mut progress = crate::progress::Progress::none(); // progress:
    if cfg.backup || cfg.once {
        metrics.rescan("startup");
        d.reconcile_and_scan().await;
        progress = crate::progress::Progress::start(&d.queue); // progress:
    }
    if let Some(r) = &cfg.ready {
        r.notify_one();
    }

    let permits = Arc::new(Semaphore::new(cfg.threads.max(1)));
    let mut tasks: JoinSet<Done> = JoinSet::new();
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
        while let Some(task) = d.next_task(cfg.once) {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                d.unpop(task);
                break;
            };
            let up = d.uploader.clone();
            let c = cancel.clone();
            tasks.spawn(async move {
                let _permit = permit;
                match task {
                    Task::File(p) => {
                        let r = up.ensure_durable(&p, &c).await;
                        Done::File(p, r)
                    }
                    Task::Index(dir, files) => {
                        let r = up.write_index(&dir, &files, &c).await;
                        Done::Index(dir, files, r)
                    }
                }
            });
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
            Some(done) = tasks.join_next() => {
                if let Ok(Done::File(p, Ok(o))) = &done { progress.file_done(p, o) } // progress:
                match done {
                    Ok(done) => d.finished(done),
                    Err(e) => tracing::error!("upload task failed: {e}"),
                }
            }
            evs = async { watcher.as_mut().unwrap().next().await }, if watcher.is_some() => {
                match evs {
                    Ok(evs) => for ev in evs {
                        if ev == WatchEvent::Overflow {
                            // Directory creations may be among the lost events: watch them now.
                            let w = watcher.as_mut().expect("watching");
                            for dir in w.rewatch(&d.roots) {
                                tracing::info!(dir = %dir.display(), "watching a directory whose creation event was lost");
                            }
                        }
                        d.on_event(ev)
                    },
                    Err(e @ WatchError::Limit { .. }) => tracing::error!("{e}"),
                    Err(e) => {
                        tracing::error!("{e}; rescanning");
                        d.metrics.rescan("watch_error");
                        d.rescan();
                    }
                }
            }
            _ = async { rescan.as_mut().unwrap().tick().await }, if rescan.is_some() => {
                tracing::info!("periodic rescan");
                d.metrics.rescan("interval");
                if let Some(w) = watcher.as_mut() {
                    w.rewatch(&d.roots);
                }
                d.reconcile_and_scan().await;
            }
            _ = unwatched_retry.tick(), if watcher.as_ref().is_some_and(|w| w.has_unwatched()) => {
                let w = watcher.as_mut().expect("watching");
                for ev in w.retry_unwatched() {
                    d.on_event(ev);
                }
            }
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                if let Some(w) = &cfg.watchdog { (w.ping)() }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if wake.is_some() => {}
        }
    }

    drop(watcher);
    // Indexes still in their quiet period: write them now (inside the shutdown deadline), so
    // a Data.db uploaded just before SIGTERM does not wait for the next start to be indexed.
    for (dir, pi) in std::mem::take(&mut d.indexes) {
        let up = d.uploader.clone();
        let c = cancel.clone();
        tasks.spawn(async move {
            let r = up.write_index(&dir, &pi.files, &c).await;
            Done::Index(dir, pi.files, r)
        });
    }
    if !tasks.is_empty() {
        let deadline = tokio::time::sleep(cfg.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                n = tasks.join_next() => match n {
                    Some(Ok(done)) => d.finished(done),
                    Some(Err(e)) => tracing::error!("upload task failed: {e}"),
                    None => break,
                },
                _ = &mut deadline => {
                    tracing::warn!(in_flight = tasks.len(), "shutdown deadline reached: cancelling uploads in flight (multipart uploads are aborted)");
                    cancel.cancel();
                    while let Some(n) = tasks.join_next().await {
                        if let Ok(done) = n { d.finished(done) }
                    }
                    break;
                }
            }
        }
    }
    progress.finish(); // progress:
    let s = &d.uploader.stats;
    let summary = Summary {
        files_uploaded: s.files_uploaded.load(Ordering::Relaxed),
        bytes_uploaded: s.bytes_uploaded.load(Ordering::Relaxed),
        files_present: d.metrics.files_present.load(Ordering::Relaxed),
        files_vanished: s.files_vanished.load(Ordering::Relaxed),
        indexes_written: s.indexes_written.load(Ordering::Relaxed),
        failures: d.failures,
        pending: d.queue.len() + d.retry_at.values().map(Vec::len).sum::<usize>() + d.indexes.len(),
    };
    tracing::info!("tablesnap stopped: {summary}");
    if cfg.once && (d.gave_up > 0 || summary.pending > 0) {
        return Err(DaemonError::Incomplete {
            failed: d.gave_up + summary.pending,
        });
    }
    Ok(summary)
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
    retry_at: BTreeMap<Instant, Vec<Task>>,
    attempts: HashMap<PathBuf, u32>,
    indexes: HashMap<PathBuf, PendingIndex>,
    failures: u64,
    gave_up: usize,
}

impl Daemon<'_> {
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
        if self.running.contains(&p) {
            self.rerun.insert(p);
            return;
        }
        if self.queued.insert(p.clone()) {
            self.queue.push_back(p);
        }
    }

    fn on_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::File(p) => {
                if let Some(dir) = p.parent() {
                    // More activity in a directory with a pending index: wait for it to settle.
                    if let Some(pi) = self.indexes.get_mut(dir) {
                        let max = pi.first + self.cfg.index_delay * 10;
                        pi.due = (Instant::now() + self.cfg.index_delay).min(max);
                    }
                }
                self.enqueue(p);
            }
            WatchEvent::NewDir(dir) => {
                tracing::info!(dir = %dir.display(), "new directory: watching and scanning it");
                for f in scan(&dir, false) {
                    self.enqueue(f);
                }
            }
            WatchEvent::Unwatched(dir) => {
                for f in scan(&dir, true) {
                    self.enqueue(f);
                }
            }
            WatchEvent::Gone(p) => {
                // A file being uploaded or queued is handled there (it will be "vanished").
                if !self.running.contains(&p) && !self.queued.contains(&p) {
                    self.uploader.forget(&p);
                }
            }
            WatchEvent::Overflow => {
                tracing::warn!(
                    "inotify queue overflowed: events were lost; rescanning every watched directory"
                );
                self.metrics.rescan("overflow");
                self.rescan();
            }
        }
    }

    fn rescan(&mut self) {
        let recursive = self.cfg.recursive || self.cfg.auto_add;
        for r in self.roots.clone() {
            for f in scan(&r, recursive) {
                self.enqueue(f);
            }
        }
    }

    async fn reconcile_and_scan(&mut self) {
        for r in self.roots.clone() {
            match self.uploader.reconcile(&r).await {
                Ok(n) => {
                    tracing::info!(path = %r.display(), objects = n, "listed what is already stored")
                }
                Err(e) => tracing::warn!("{e}; falling back to one HEAD per file"),
            }
        }
        let recursive = self.cfg.recursive || (self.cfg.once && self.cfg.auto_add);
        for r in self.roots.clone() {
            for f in scan(&r, recursive) {
                if !f
                    .to_str()
                    .is_some_and(|s| self.uploader.filter().accepts(s))
                {
                    continue;
                }
                if self.cfg.upload.with_index
                    && f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(layout::wants_index)
                    && self.uploader.index_missing(&f)
                {
                    self.schedule_index(&f, true);
                }
                self.enqueue(f);
            }
        }
    }

    fn schedule_index(&mut self, data: &Path, now: bool) {
        let Some(dir) = data.parent() else { return };
        let due = if now || self.cfg.once {
            Instant::now()
        } else {
            Instant::now() + self.cfg.index_delay
        };
        let pi = self
            .indexes
            .entry(dir.to_path_buf())
            .or_insert(PendingIndex {
                files: vec![],
                first: Instant::now(),
                due,
            });
        if !pi.files.iter().any(|f| f == data) {
            pi.files.push(data.to_path_buf());
        }
    }

    fn next_task(&mut self, once: bool) -> Option<Task> {
        let now = Instant::now();
        if let Some(mut e) = self.retry_at.first_entry() {
            if *e.key() <= now {
                let t = e.get_mut().pop();
                if e.get().is_empty() {
                    e.remove();
                }
                if let Some(t) = t {
                    if let Task::File(p) = &t {
                        if self.running.contains(p) {
                            self.rerun.insert(p.clone());
                            return self.next_task(once);
                        }
                        self.running.insert(p.clone());
                    }
                    return Some(t);
                }
            }
        }
        if let Some(p) = self.queue.pop_front() {
            self.queued.remove(&p);
            self.running.insert(p.clone());
            return Some(Task::File(p));
        }
        // Indexes go last, once the queue is drained (in --once mode only then).
        let due = self
            .indexes
            .iter()
            .filter(|(dir, pi)| {
                pi.due <= now
                    && !self
                        .running
                        .iter()
                        .any(|r| r.parent() == Some(dir.as_path()))
                    && (!once || self.queue.is_empty())
            })
            .map(|(d, _)| d.clone())
            .next();
        if let Some(dir) = due {
            let pi = self.indexes.remove(&dir).expect("present");
            return Some(Task::Index(dir, pi.files));
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
                self.indexes.insert(
                    dir,
                    PendingIndex {
                        files,
                        first: Instant::now(),
                        due: Instant::now(),
                    },
                );
            }
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.retry_at.is_empty() && self.indexes.is_empty()
    }

    fn next_wake(&self) -> Option<Instant> {
        let r = self.retry_at.keys().next().copied();
        // An index already due that next_task did not start is waiting for a running upload
        // in its directory or for a permit: a finishing task wakes the loop, not a timer.
        let now = Instant::now();
        let i = self
            .indexes
            .values()
            .map(|p| p.due)
            .filter(|d| *d > now)
            .min();
        match (r, i) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
                        // A Data.db stored as a side effect of a sibling's index (while this task
                        // waited to retry) still needs its own index.
                        let stored = matches!(outcome, Outcome::Uploaded { .. })
                            || (outcome == Outcome::Present && self.uploader.unindexed(&p));
                        let is_data = p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(layout::wants_index);
                        if self.cfg.upload.with_index && is_data && stored {
                            self.schedule_index(&p, false);
                        }
                        let index_pending = self
                            .indexes
                            .get(p.parent().unwrap_or(&p))
                            .is_some_and(|pi| pi.files.contains(&p));
                        if self.cfg.delete_on_backup
                            && matches!(outcome, Outcome::Uploaded { .. } | Outcome::Present)
                            && !index_pending
                        {
                            self.uploader.delete_local(&p);
                        }
                    }
                    Err(e) => self.failed(Task::File(p.clone()), &p, e),
                }
                if self.rerun.remove(&p) {
                    self.enqueue(p);
                }
            }
            Done::Index(dir, files, r) => match r {
                Ok(names) => {
                    self.attempts.remove(&dir);
                    tracing::info!(dir = %dir.display(), files = names.len(), indexes = files.len(), "index written");
                    if self.cfg.delete_on_backup {
                        for f in &files {
                            self.uploader.delete_local(f);
                        }
                    }
                }
                Err(e) => self.failed(Task::Index(dir.clone(), files), &dir, e),
            },
        }
    }

    fn update_gauges(&self, in_flight: usize, watched: Option<usize>) {
        let m = &self.metrics;
        let retrying: usize = self.retry_at.values().map(Vec::len).sum();
        m.queue_depth
            .store((self.queue.len() + retrying) as u64, Ordering::Relaxed);
        m.in_flight.store(in_flight as u64, Ordering::Relaxed);
        m.pending_indexes
            .store(self.indexes.len() as u64, Ordering::Relaxed);
        if let Some(w) = watched {
            m.watched_dirs.store(w as u64, Ordering::Relaxed);
        }
        let oldest = self.pending_order.first().map(|(t, _)| *t).unwrap_or(0);
        m.oldest_pending_ms.store(oldest, Ordering::Relaxed);
    }

    fn failed(&mut self, task: Task, p: &Path, e: UploadError) {
        self.failures += 1;
        self.metrics.failure(match &e {
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
        if matches!(e, UploadError::Cancelled { .. }) {
            tracing::warn!("{e}");
            return;
        }
        if e.is_local() && self.cfg.once {
            tracing::error!("{e}; skipping it");
            self.gave_up += 1;
            return;
        }
        let n = self.attempts.entry(p.to_path_buf()).or_insert(0);
        *n += 1;
        let attempt = *n;
        if self.cfg.once && attempt > self.cfg.retries.max(4) {
            tracing::error!("{e}; giving up after {attempt} attempts");
            self.gave_up += 1;
            return;
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
        self.retry_at
            .entry(Instant::now() + delay)
            .or_default()
            .push(task);
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
