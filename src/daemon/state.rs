//! The daemon's state: its models ([`super::files`]: what is owed per file;
//! [`super::waiting`]: what may not be queued yet; [`super::index`]: when each directory's
//! index is written; a [`DirRecord`] per directory) and the transitions on each event,
//! finished task or scan, which apply them. No store request is made here; tasks are
//! spawned by [`super::run`], and directory reads happen beside the loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::files::{Ended, Files};
use super::index::IndexScheduler;
use super::waiting::{Verdict, WaitingFiles};
use super::{Config, DaemonError, Summary, backoff};
use crate::layout::{self, Names};
use crate::metrics::Metrics;
use crate::store::ErrorKind;
use crate::upload::{IndexWritten, Outcome, UploadError, Uploader};
use crate::watch::{Scan, WatchEvent, scan_closed, scan_closed_except};

pub(super) enum Task {
    File(PathBuf),
    Index(PathBuf, Vec<PathBuf>),
}

pub(super) enum Done {
    File(PathBuf, Result<Outcome, UploadError>),
    /// The directory, the Data.db files it was written for, the result, and whether it
    /// left out other files only because they were not settled yet (look again then).
    Index(
        PathBuf,
        Vec<PathBuf>,
        Result<IndexWritten, UploadError>,
        bool,
    ),
}

/// What a scan running beside the main loop found.
pub(super) struct Found {
    pub(super) reason: &'static str,
    pub(super) scan: Scan,
    /// Data.db files whose index the LIST showed missing.
    pub(super) missing_index: Vec<PathBuf>,
    /// What each directory's newest stored index names (after a LIST): compared with the
    /// directory as it is now, so changes made while the daemon was down are noticed.
    pub(super) stored_points: Vec<StoredPoint>,
}

/// A directory, what its newest stored restore point names, and the inputs it held for
/// other data directories (JBOD) when it was written.
pub(super) type StoredPoint = (PathBuf, Names, crate::upload::lineage::Holds);

/// What one look at a directory ([`crate::watch::check_waiting`]) said of files waiting
/// there.
pub(super) struct Checked {
    pub(super) dir: PathBuf,
    pub(super) files: Vec<crate::watch::Waiting>,
    /// Directory reads it made (one).
    pub(super) reads: u64,
}

/// How long a cancelled request may take to clean up (abort its multipart upload) before
/// it is dropped.
pub(super) const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How soon a Data.db of an SSTable that was not complete is looked at again (also at
/// once when a transaction log of its directory goes away): one look per directory for
/// all its waiting files, beside the main loop (`Daemon::start_checks`).
pub(super) const RECHECK: Duration = Duration::from_secs(5);

/// What the daemon keeps of one directory's restore point, beside its index schedule
/// ([`IndexScheduler`]).
#[derive(Debug, Default)]
pub(super) struct DirRecord {
    /// What the last index this run wrote (or found stored at startup) named: a file stored
    /// that it does not name, or one it names deleted, makes a new index due. Shared with
    /// the index task that reads it (a 50,000-name set is not copied per index).
    pub(super) named: Option<Arc<Names>>,
    /// Its index is due again because the last one left out files not settled yet (once:
    /// a file that never settles is named by a later index, not polled for).
    pub(super) second_look: bool,
    /// Failed index writes in a row (for the backoff).
    pub(super) attempts: u32,
}

pub(super) struct Daemon<'a> {
    pub(super) cfg: &'a Config,
    pub(super) uploader: Arc<Uploader>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) roots: Vec<PathBuf>,
    /// Every file owed to the store and where it stands (queued, running, retrying), with
    /// the upload queue, the retry timers, busy directories and the recovery-point gauge
    /// derived from it ([`super::files`]).
    pub(super) files: Files,
    /// Files waiting before they may be queued (an open transaction, a file written moments
    /// ago), with the looks at their directories beside the main loop
    /// ([`super::waiting`]).
    pub(super) waiting: WaitingFiles,
    /// Where the looks answer ([`Checked`]), and where scans of new directories do
    /// ([`Found`]); without them (unit tests) they run in place.
    pub(super) checked_tx: Option<tokio::sync::mpsc::UnboundedSender<Checked>>,
    pub(super) found_tx: Option<tokio::sync::mpsc::UnboundedSender<Found>>,
    pub(super) indexes: IndexScheduler,
    /// What the daemon knows of each directory's restore point ([`DirRecord`]).
    pub(super) dirs: HashMap<PathBuf, DirRecord>,
    /// Scans running beside the main loop.
    pub(super) scans: usize,
    /// The startup scan (-B, --once) has not answered yet: no index is written before it
    /// says what each directory's newest stored restore point names (and holds), or an
    /// index written meanwhile would be made without them.
    pub(super) before_startup: bool,
    pub(super) failures: u64,
    pub(super) gave_up: usize,
    /// Files, bytes, rate and ETA of the startup backfill (-B, --once).
    pub(super) progress: crate::progress::Progress,
    /// Shutting down: an SSTable that is not complete is left to the next run (its index
    /// would otherwise be retried until the deadline).
    pub(super) draining: bool,
}

impl<'a> Daemon<'a> {
    pub(super) fn new(
        cfg: &'a Config,
        uploader: Arc<Uploader>,
        metrics: Arc<Metrics>,
        roots: Vec<PathBuf>,
    ) -> Self {
        Daemon {
            cfg,
            uploader,
            metrics,
            roots,
            files: Files::new(),
            waiting: WaitingFiles::default(),
            checked_tx: None,
            found_tx: None,
            indexes: IndexScheduler::new(cfg.index_delay),
            dirs: HashMap::new(),
            scans: 0,
            before_startup: false,
            failures: 0,
            gave_up: 0,
            progress: crate::progress::Progress::none(),
            draining: false,
        }
    }

    pub(super) fn hardlinks(&self) -> bool {
        self.cfg.events.create
    }

    pub(super) fn enqueue(&mut self, p: PathBuf) {
        self.take_on(p, false)
    }

    /// `p` is owed from now (`from_scan`: a scan found it, and its directory's index waits
    /// until it was tried once), unless it is not UTF-8 or filtered out.
    fn take_on(&mut self, p: PathBuf, from_scan: bool) {
        let Some(s) = p.to_str() else {
            tracing::error!(path = %p.display(), "skipping a path that is not UTF-8 (it cannot be named in a key)");
            return;
        };
        if !self.uploader.filter().accepts(s) {
            tracing::debug!(path = s, "skipped by the include/exclude rules");
            return;
        }
        self.files.enqueue(&p, crate::metrics::now_ms(), from_scan);
    }

    /// Runs a scan (and with `list`, first the LIST of what is stored) beside the main
    /// loop; its findings come back through `tx`.
    pub(super) fn spawn_scan(
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
        let delete_on_backup = self.cfg.delete_on_backup;
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
            // Files already stored as they are are only counted, not queued (a restart
            // over a million stored files would otherwise queue each to find it present);
            // their Data.db whose index the LIST showed missing still get one.
            let leave_out = !delete_on_backup;
            let scanner = up.clone();
            let scan_roots = roots.clone();
            let (scan, mut missing_index) = tokio::task::spawn_blocking(move || {
                let mut all = Scan::default();
                let mut missing = Vec::new();
                let mut stored = |p: &Path, m: &std::fs::Metadata| {
                    if !leave_out || !scanner.stored_as_is(p, m) {
                        return false;
                    }
                    if list && with_index && wants_index(p) && scanner.index_missing(p) {
                        missing.push(p.to_path_buf());
                    }
                    true
                };
                for r in &scan_roots {
                    let s = scan_closed_except(r, recursive, hardlinks, &mut stored);
                    all.ready.extend(s.ready);
                    all.unsettled.extend(s.unsettled);
                    all.unreadable.extend(s.unreadable);
                    all.not_utf8.extend(s.not_utf8);
                    all.stored += s.stored;
                }
                (all, missing)
            })
            .await
            .unwrap_or_default();
            if list && with_index {
                missing_index.extend(
                    scan.ready
                        .iter()
                        .filter(|f| wants_index(f) && up.index_missing(f))
                        .cloned(),
                );
            }
            let stored_points = if list && with_index {
                stored_points(&up, &roots, hardlinks).await
            } else {
                vec![]
            };
            let _ = tx.send(Found {
                reason,
                scan,
                missing_index,
                stored_points,
            });
        });
    }

    pub(super) fn found(&mut self, f: Found) {
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
        if f.reason == "startup" {
            self.before_startup = false;
            self.progress = crate::progress::Progress::start(f.scan.ready.iter(), f.scan.stored);
        }
        let now = Instant::now();
        for p in f.missing_index {
            self.indexes.schedule(&p, now, true);
        }
        // The newest restore point of each directory as stored: a new one is due if the
        // directory changed while the daemon was down (written only if what it would name
        // differs, see `Uploader::write_restore_point`).
        self.restore_holds(&f.stored_points);
        for (dir, names, _) in f.stored_points {
            if self.named(&dir).is_some() || !dir.is_dir() {
                continue;
            }
            self.uploader.retire_unnamed(&dir, &names);
            self.dirs.entry(dir.clone()).or_default().named = Some(Arc::new(names));
            self.touch_index(&dir);
        }
        self.metrics
            .files_present
            .fetch_add(f.scan.stored, Ordering::Relaxed);
        for p in f.scan.ready {
            self.take_on(p, true);
        }
        for p in f.scan.unsettled {
            self.waiting.wait(&p, now + crate::upload::SETTLE, false);
        }
        tracing::debug!(
            reason = f.reason,
            files = n,
            stored = f.scan.stored,
            "scan done"
        );
    }

    /// The inputs the run before held for outputs on other data directories (JBOD) hold
    /// again while those outputs are not named by their directory's newest restore point
    /// (a restart while a big output uploaded must not drop its inputs on the other disk).
    fn restore_holds(&self, points: &[StoredPoint]) {
        let named: HashMap<&Path, &Names> =
            points.iter().map(|(d, n, _)| (d.as_path(), n)).collect();
        let is_named = |out: &Path| {
            let (Some(d), Some(s)) = (out.parent(), out.file_name().and_then(|n| n.to_str()))
            else {
                return false;
            };
            let prefix = format!("{s}-");
            named
                .get(d)
                .is_some_and(|n| n.iter().any(|x| x.starts_with(&prefix)))
        };
        for (dir, _, holds) in points {
            if !holds.is_empty() && self.named(dir).is_none() {
                self.uploader.restore_holds(dir, holds, is_named);
            }
        }
    }

    pub(super) fn on_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::File(p) => {
                self.remember_lineage(&p);
                if !crate::watch::event_wanted(&p, self.hardlinks()) {
                    return;
                }
                let now = Instant::now();
                if let Some(dir) = p.parent() {
                    // More activity in a directory with a pending index: wait for it to settle.
                    self.indexes.activity(dir, now);
                    // A closed component of an SSTable an open transaction ADDs may still be
                    // aborted: it waits for the COMMIT (the log's removal hurries it).
                    // Whether one is open is read beside the loop (the directory's logs).
                    let sstable = p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(crate::cassandra::parse_name)
                        .is_some();
                    if sstable {
                        self.waiting.wait(&p, now, true);
                        return;
                    }
                }
                self.enqueue(p);
            }
            WatchEvent::NewDir(dir) => {
                tracing::info!(dir = %dir.display(), "new directory: watching and scanning it");
                self.scan_new_dir(dir, false);
            }
            WatchEvent::Unwatched(dir) => {
                self.scan_new_dir(dir, true);
            }
            WatchEvent::Gone(p) => {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if let (Some(dir), Some(f)) = (p.parent(), crate::cassandra::parse_name(name)) {
                    for d in self.uploader.sstable_file_gone(dir, f.sstable) {
                        self.touch_index(&d);
                    }
                }
                if crate::cassandra::is_txn_log(name) {
                    for d in self.uploader.txn_log_gone(&p) {
                        self.touch_index(&d);
                    }
                    // A transaction ended: SSTables of this directory may just have become
                    // complete (or obsolete); its waiting files and pending index need not
                    // wait.
                    if let Some(dir) = p.parent() {
                        let now = Instant::now();
                        self.indexes.hurry(dir, now);
                        self.waiting.hurry(dir, now);
                    }
                }
                // A file the last index names is gone (a compaction's inputs deleted after
                // its COMMIT, an expired SSTable dropped): the index would name less now.
                // Files deleted by --delete-on-backup stay named, and are no change.
                else if !self.cfg.delete_on_backup && !crate::cassandra::is_temporary(name) {
                    if let Some(dir) = p.parent() {
                        if self.named(dir).is_none_or(|n| n.contains(name)) {
                            self.touch_index(dir);
                        }
                    }
                }
                // A file being uploaded or queued is handled there (it will be "vanished").
                if !self.files.owes(&p) {
                    self.uploader.forget(&p);
                }
            }
            WatchEvent::Overflow => {}
        }
    }

    /// A transaction log was written (each record is appended and closed): if it is
    /// committed and replaced SSTables, remember what it replaced before Cassandra deletes
    /// it (right after the inputs). Read here, not beside the loop, because the log may be
    /// gone by then; at most 1 MiB, a few records per flush or compaction.
    fn remember_lineage(&mut self, p: &Path) {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        if !crate::cassandra::is_txn_log(name) {
            return;
        }
        let Some(body) = crate::cassandra::read_small(p) else {
            return;
        };
        let parsed = crate::cassandra::parse_txn_log(&body);
        tracing::debug!(log = %p.display(), state = ?parsed.state, added = ?parsed.added, removed = ?parsed.removed, "a transaction log");
        for d in self.uploader.txn_log_read(p, &parsed) {
            self.touch_index(&d);
        }
    }

    /// What an index of `dir` would name changed: one is due after the quiet period (at
    /// once with --once), coalesced with whatever is pending for `dir`.
    pub(super) fn touch_index(&mut self, dir: &Path) {
        if !self.cfg.upload.with_index {
            return;
        }
        tracing::debug!(dir = %dir.display(), "what its restore point names may have changed");
        let now = Instant::now();
        let due = if self.cfg.once {
            now
        } else {
            now + self.cfg.index_delay
        };
        self.indexes.touch(dir, due, now);
    }

    /// Scans a new directory (with `recursive`, its subtree) beside the main loop.
    fn scan_new_dir(&mut self, dir: PathBuf, recursive: bool) {
        let hardlinks = self.hardlinks();
        let (Some(tx), Ok(rt)) = (self.found_tx.clone(), tokio::runtime::Handle::try_current())
        else {
            return self.take_scan(scan_closed(&dir, recursive, hardlinks));
        };
        self.scans += 1;
        rt.spawn_blocking(move || {
            let _ = tx.send(Found {
                reason: "new directory",
                scan: scan_closed(&dir, recursive, hardlinks),
                missing_index: vec![],
                stored_points: vec![],
            });
        });
    }

    /// Starts one look at each directory with files due and none in flight, beside the
    /// main loop; the answers come back as [`Checked`].
    fn start_checks(&mut self) {
        for (dir, files) in self.waiting.start_looks() {
            let look = move |dir: PathBuf| {
                let before = crate::watch::dir_reads();
                let files = crate::watch::check_waiting(&dir, &files);
                let reads = crate::watch::dir_reads() - before;
                Checked { dir, files, reads }
            };
            match (
                self.checked_tx.clone(),
                tokio::runtime::Handle::try_current(),
            ) {
                (Some(tx), Ok(rt)) => {
                    rt.spawn_blocking(move || {
                        let _ = tx.send(look(dir));
                    });
                }
                _ => {
                    let c = look(dir);
                    self.checked(c);
                }
            }
        }
    }

    /// A look at a directory answered: files ready are queued, others wait again.
    pub(super) fn checked(&mut self, c: Checked) {
        let hurried = self.waiting.look_done(&c.dir);
        tracing::trace!(dir = %c.dir.display(), files = c.files.len(), reads = c.reads, "looked at files waiting there");
        let now = Instant::now();
        for w in c.files {
            let verdict = match w.ready {
                Some(true) => Verdict::Ready,
                Some(false)
                    if self.cfg.once
                        && !w.event
                        && crate::cassandra::parse_name(
                            w.path.file_name().and_then(|n| n.to_str()).unwrap_or(""),
                        )
                        .is_some() =>
                {
                    // A run that ends cannot wait for a compaction: a later one takes it.
                    tracing::warn!(path = %w.path.display(), "its SSTable is not complete (being written?): not uploaded by this run");
                    Verdict::Drop
                }
                Some(false) if hurried => Verdict::Again(now),
                Some(false) if w.event => Verdict::Again(now + RECHECK),
                Some(false) => Verdict::Again(now + RECHECK.min(crate::upload::SETTLE * 2)),
                None => Verdict::Drop,
            };
            self.waiting.answered(&w.path, verdict);
            if verdict == Verdict::Ready {
                self.enqueue(w.path);
            }
        }
    }

    pub(super) fn take_scan(&mut self, s: Scan) {
        self.scans += 1;
        self.found(Found {
            reason: "new directory",
            scan: s,
            missing_index: vec![],
            stored_points: vec![],
        });
    }

    pub(super) fn next_task(&mut self) -> Option<Task> {
        let now = Instant::now();
        // Files waiting whose time has come: looked at beside the loop, one look per
        // directory (`start_checks`).
        self.waiting.advance(now);
        self.start_checks();
        if let Some(p) = self.files.pop_retry(now) {
            return Some(Task::File(p.to_path_buf()));
        }
        // A due index goes before the queue: the recovery point must move under a backlog.
        // It waits only for its own directory's uploads (at most ten quiet periods).
        let files = &self.files;
        if self.before_startup {
            // Indexes wait for the startup comparison (see `before_startup`).
        } else if let Some((dir, due)) =
            self.indexes
                .start_unless_held(now, |d| files.busy(d), |d| files.held(d))
        {
            return Some(Task::Index(dir, due));
        }
        self.files.pop_queued().map(|p| Task::File(p.to_path_buf()))
    }

    pub(super) fn unpop(&mut self, t: Task) {
        match t {
            Task::File(p) => self.files.unpop(&p),
            Task::Index(dir, files) => {
                let now = Instant::now();
                self.indexes.put_back(&dir, files, now, now);
            }
        }
    }

    #[allow(clippy::result_large_err)]
    pub(super) fn finish(mut self) -> Result<Summary, DaemonError> {
        self.progress.finish();
        let s = &self.uploader.stats;
        let pending_files = self.files.queued_len() + self.files.retrying_len();
        let summary = Summary {
            files_uploaded: s.files_uploaded.load(Ordering::Relaxed),
            bytes_uploaded: s.bytes_uploaded.load(Ordering::Relaxed),
            files_present: self.metrics.files_present.load(Ordering::Relaxed),
            files_vanished: s.files_vanished.load(Ordering::Relaxed),
            indexes_written: s.indexes_written.load(Ordering::Relaxed),
            failures: self.failures,
            files_copied: s.files_copied.load(Ordering::Relaxed),
            files_superseded: s.files_superseded.load(Ordering::Relaxed),
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

    pub(super) fn idle(&self) -> bool {
        self.files.is_idle() && self.indexes.is_idle() && self.waiting.is_idle() && self.scans == 0
    }

    pub(super) fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        [
            self.files.next_retry(),
            self.waiting.next_wake(),
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

    pub(super) fn finished(&mut self, done: Done) {
        match done {
            Done::File(p, r) => {
                let ended = match r {
                    Ok(outcome) => {
                        self.progress.file_done(&p, &outcome);
                        self.stored(&p, outcome);
                        Ended::Done
                    }
                    Err(e) => self.failed(&p, e),
                };
                self.files.finish(&p, ended, crate::metrics::now_ms());
            }
            Done::Index(dir, files, r, left_unsettled) => {
                let now = Instant::now();
                match r {
                    Ok(w) => {
                        for d in &w.touch {
                            self.touch_index(d);
                        }
                        let draining = self.draining;
                        let rec = self.dirs.entry(dir.clone()).or_default();
                        rec.attempts = 0;
                        if !w.indexed.is_empty() {
                            tracing::info!(dir = %dir.display(), files = w.names.len(), indexes = w.indexed.len(), "index written");
                            rec.named = Some(Arc::new(w.names.iter().collect()));
                        }
                        if std::mem::take(&mut rec.second_look) {
                            // This was the second look: a file still not settled is named
                            // by the index its own upload makes due.
                        } else if left_unsettled && !draining {
                            rec.second_look = true;
                            self.indexes.touch(&dir, now + crate::upload::SETTLE, now);
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
                        if (self.cfg.once || self.draining) && !w.deferred.is_empty() {
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
                        self.indexes.put_back(&dir, files, now, now);
                    }
                    Err(e) => {
                        let retry = self.index_failed(&dir, e);
                        match retry {
                            Some(delay) => self.indexes.put_back(&dir, files, now + delay, now),
                            None => self.indexes.done(&dir, vec![], now, now),
                        }
                    }
                }
            }
        }
    }

    /// A file is durable (or needs nothing): schedule its directory's index.
    pub(super) fn stored(&mut self, p: &Path, outcome: Outcome) {
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
            Outcome::Copied { bytes } => {
                self.metrics
                    .last_success_ms
                    .store(crate::metrics::now_ms(), Ordering::Relaxed);
                tracing::info!(path = %p.display(), bytes, "hard link: copied in the store from another link of the same file")
            }
            Outcome::Vanished => {
                tracing::info!(path = %p.display(), "vanished before upload (compacted?); skipped")
            }
            Outcome::Ignored => {}
        }
        // A Data.db stored as a side effect of a sibling's index (while this task waited to
        // retry) still needs its own index.
        let stored = matches!(outcome, Outcome::Uploaded { .. } | Outcome::Copied { .. })
            || (outcome == Outcome::Present && self.uploader.unindexed(p));
        let is_data = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(layout::wants_index);
        if self.cfg.upload.with_index && is_data && stored {
            self.indexes.schedule(p, Instant::now(), self.cfg.once);
        } else if let Some(dir) = p.parent() {
            self.indexes.activity(dir, Instant::now());
            // Another file stored: if the last index does not name it (a late component,
            // a file left out for a passing reason) or it is a TOC (which decides what is
            // complete), what the index would name changed.
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let toc = crate::cassandra::parse_name(name).is_some_and(|f| f.component == "TOC.txt");
            if matches!(outcome, Outcome::Uploaded { .. } | Outcome::Copied { .. })
                && (toc || self.named(dir).is_none_or(|n| !n.contains(name)))
            {
                self.touch_index(dir);
            }
        }
        let sstable = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| crate::cassandra::parse_name(n).is_some());
        if self.cfg.delete_on_backup
            && matches!(
                outcome,
                Outcome::Uploaded { .. } | Outcome::Present | Outcome::Copied { .. }
            )
            && !(sstable && self.cfg.upload.with_index)
            && !self.indexes.has_pending(p)
        {
            self.uploader.delete_local(p);
        }
    }

    pub(super) fn update_gauges(&self, in_flight: usize, watched: Option<usize>) {
        let m = &self.metrics;
        let owed = self.files.queued_len() + self.files.retrying_len();
        m.queue_depth.store(owed as u64, Ordering::Relaxed);
        m.in_flight.store(in_flight as u64, Ordering::Relaxed);
        m.pending_indexes
            .store(self.indexes.pending_len() as u64, Ordering::Relaxed);
        if let Some(w) = watched {
            m.watched_dirs.store(w as u64, Ordering::Relaxed);
        }
        let oldest = self.files.oldest_pending_ms().unwrap_or(0);
        m.oldest_pending_ms.store(oldest, Ordering::Relaxed);
    }

    pub(super) fn count_failure(&mut self, e: &UploadError) {
        if matches!(e, UploadError::Cancelled { .. }) {
            return;
        }
        self.failures += 1;
        self.metrics.failure(match e {
            UploadError::Collision { .. } => "collision",
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
    /// `attempts` counts the failures in a row of `p` (one more now).
    pub(super) fn retry_delay(
        &mut self,
        p: &Path,
        e: &UploadError,
        attempts: &mut u32,
    ) -> Option<Duration> {
        if matches!(e, UploadError::Cancelled { .. }) {
            tracing::warn!("{e}");
            return None;
        }
        if e.is_unstorable() {
            // Retrying cannot help: say it once, and the indexes leave it out.
            if self.uploader.report_unstorable(p) {
                if let UploadError::Collision { .. } = e {
                    tracing::error!("{e}");
                } else {
                    tracing::error!(
                        "{e}; this file cannot be backed up under its name (rename it, or exclude it with -e)"
                    );
                }
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
        *attempts += 1;
        let attempt = *attempts;
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

    /// An attempt of `p` failed: how it ends (retried at a time, or given up on: then it no
    /// longer holds the recovery-point gauge; a later event or rescan brings it back).
    pub(super) fn failed(&mut self, p: &Path, e: UploadError) -> Ended {
        if let UploadError::Cancelled { .. } = e {
            // Shutdown: not a failure, still pending (the summary counts it).
            tracing::warn!("{e}");
            return Ended::Cancelled;
        }
        self.count_failure(&e);
        let mut attempts = self.files.attempts(p);
        match self.retry_delay(p, &e, &mut attempts) {
            Some(delay) => {
                self.files.set_attempts(p, attempts);
                Ended::Retry(Instant::now() + delay)
            }
            None => Ended::GaveUp,
        }
    }

    pub(super) fn index_failed(&mut self, dir: &Path, e: UploadError) -> Option<Duration> {
        self.count_failure(&e);
        let mut attempts = self.dirs.get(dir).map_or(0, |r| r.attempts);
        let delay = self.retry_delay(dir, &e, &mut attempts);
        let rec = self.dirs.entry(dir.to_path_buf()).or_default();
        rec.attempts = if delay.is_some() { attempts } else { 0 };
        delay
    }

    /// What the last index this run wrote (or found stored) for `dir` named.
    pub(super) fn named(&self, dir: &Path) -> Option<&Arc<Names>> {
        self.dirs.get(dir).and_then(|r| r.named.as_ref())
    }
}

/// Whether this file gets an index (its name contains `Data.db`).
fn wants_index(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(layout::wants_index)
}

/// Whether `dir` holds another (non-SSTable) file that an index of `names` left out only
/// because it was not settled yet.
pub(super) fn left_unsettled(dir: &Path, names: &[String], filter: &crate::filter::Filter) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let name = e.file_name();
        let Some(n) = name.to_str() else { return false };
        e.file_type().is_ok_and(|t| t.is_file())
            && !crate::cassandra::is_txn_log(n)
            && !crate::cassandra::is_temporary(n)
            && crate::cassandra::parse_name(n).is_none()
            && filter.accepts(n)
            && !names.iter().any(|x| x == n)
            && !crate::upload::settled(&e.path())
    })
}

/// What the newest stored restore point of each directory under `roots` names (after their
/// LIST), for the directories this run backs up (snapshots and backups only with
/// `hardlinks`).
async fn stored_points(
    up: &crate::upload::Uploader,
    roots: &[PathBuf],
    hardlinks: bool,
) -> Vec<StoredPoint> {
    let mut out = Vec::new();
    for r in roots {
        out.extend(
            up.stored_restore_points(r)
                .await
                .into_iter()
                .filter(|(d, _, _)| {
                    hardlinks || crate::cassandra::dir_kind(d) == crate::cassandra::DirKind::Live
                }),
        );
    }
    out
}

/// A daemon on `root` storing to `file://ROOT/b`, for unit tests of the state (its
/// configuration is leaked: it lives as long as the test).
#[cfg(test)]
impl Daemon<'static> {
    pub(super) fn for_tests(root: &Path) -> Daemon<'static> {
        let cfg: &'static Config = Box::leak(Box::new(Config::new(
            crate::store::StoreOptions {
                destination: format!("file://{}", root.join("b").display()),
                ..Default::default()
            },
            crate::layout::Layout::new("", "h", ":"),
            vec![root.into()],
        )));
        let up = Arc::new(crate::upload::Uploader::new(
            crate::store::Store::open(&cfg.store).unwrap(),
            cfg.layout.clone(),
            cfg.upload.clone(),
        ));
        Daemon::new(
            cfg,
            up,
            Arc::new(crate::metrics::Metrics::default()),
            vec![root.into()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::store::{Store, StoreOptions};

    /// Issue #15 item 4: a file given up on (a collision, a name no key can hold, --once
    /// out of retries) kept its `pending_since`, so the recovery-point gauge
    /// (`tablesnap_oldest_pending_seconds`) stayed at its first sighting for ever. A file
    /// that is retried stays pending.
    #[test]
    fn a_file_given_up_on_is_no_longer_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(
            StoreOptions {
                destination: format!("file://{}", dir.path().join("b").display()),
                ..Default::default()
            },
            Layout::new("", "h", ":"),
            vec![dir.path().into()],
        );
        let up = |cfg: &Config| {
            Arc::new(Uploader::new(
                Store::open(&cfg.store).unwrap(),
                cfg.layout.clone(),
                cfg.upload.clone(),
            ))
        };
        let mut d = Daemon::new(
            &cfg,
            up(&cfg),
            Arc::new(Metrics::default()),
            vec![dir.path().into()],
        );
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for p in [&a, &b] {
            d.enqueue(p.clone());
            assert!(matches!(d.next_task(), Some(Task::File(_))));
        }
        d.update_gauges(0, None);
        assert!(d.metrics.oldest_pending_ms.load(Ordering::Relaxed) > 0);
        // Never retried: a collision.
        let collision = UploadError::Collision {
            path: a.clone(),
            key: "k".into(),
        };
        d.finished(Done::File(a.clone(), Err(collision)));
        assert!(!d.files.owes(&a), "given up on, still pending");
        // Retried: still pending.
        let changed = UploadError::Changed { path: b.clone() };
        d.finished(Done::File(b.clone(), Err(changed)));
        assert!(matches!(
            d.files.state(&b),
            Some(super::super::files::State::Retrying { .. })
        ));
        d.update_gauges(0, None);
        assert!(d.metrics.oldest_pending_ms.load(Ordering::Relaxed) > 0);

        // --once, out of retries.
        cfg.once = true;
        let mut d = Daemon::new(
            &cfg,
            up(&cfg),
            Arc::new(Metrics::default()),
            vec![dir.path().into()],
        );
        d.enqueue(a.clone());
        for _ in 0..10 {
            if !d.files.owes(&a) {
                break;
            }
            // Its retry is due at once (the test does not wait for the backoff).
            if d.files
                .pop_retry(Instant::now() + Duration::from_secs(3600))
                .is_none()
            {
                assert!(matches!(d.next_task(), Some(Task::File(_))));
            }
            let e = UploadError::Changed { path: a.clone() };
            d.finished(Done::File(a.clone(), Err(e)));
        }
        assert!(d.gave_up > 0);
        assert!(!d.files.owes(&a), "given up on, still pending");
        assert!(d.files.oldest_pending_ms().is_none());
        d.update_gauges(0, None);
        assert_eq!(d.metrics.oldest_pending_ms.load(Ordering::Relaxed), 0);
    }

    /// A restart's indexes wait for the startup comparison: written before it, an index
    /// would be made without the directory's stored restore point (what it named, what
    /// it held for another disk) and could drop what that one kept named.
    #[test]
    fn no_index_is_written_before_the_startup_comparison() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::for_tests(dir.path());
        d.before_startup = true;
        let p = dir.path().join("t/nb-1-big-Data.db");
        d.indexes.schedule(&p, Instant::now(), true);
        assert!(
            d.next_task().is_none(),
            "an index before the startup comparison"
        );
        d.scans = 1;
        d.found(Found {
            reason: "startup",
            scan: Scan::default(),
            missing_index: vec![],
            stored_points: vec![],
        });
        assert!(matches!(d.next_task(), Some(Task::Index(..))));
    }

    /// Issue #15: every component waiting for its SSTable's COMMIT was re-checked every
    /// 4-5 s with its own readdir and transaction-log reads, on the main loop: hundreds of
    /// outputs of a compaction in a 50,000-entry LCS directory stalled it. A recheck round
    /// is one look at each directory, beside the loop; the loop itself reads no directory.
    #[tokio::test(flavor = "current_thread")]
    async fn a_recheck_round_reads_each_directory_once_and_never_on_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("ks/t-0123456789abcdef0123456789abcdef");
        std::fs::create_dir_all(&t).unwrap();
        // A compaction with 300 outputs, still running (no COMMIT): their 600 closed
        // components wait; and 5,000 other entries in the directory.
        let mut log = String::new();
        let mut waiting = vec![];
        for g in 1..=300 {
            let add = crate::cassandra::Record::new(
                crate::cassandra::RecordType::Add,
                &format!("{}/nb-{g}-big", t.display()),
            );
            log.push_str(&format!("{add}\n"));
            let p = t.join(format!("nb-{g}-big-Data.db"));
            std::fs::write(&p, b"x").unwrap();
            let toc = t.join(format!("nb-{g}-big-TOC.txt"));
            std::fs::write(&toc, b"Data.db\nTOC.txt\n").unwrap();
            waiting.extend([p, toc]);
        }
        std::fs::write(
            t.join("nb_txn_compaction_00000000-0000-0000-0000-000000000001.log"),
            log,
        )
        .unwrap();
        for g in 1000..6000 {
            std::fs::write(t.join(format!("nb-{g}-big-Filter.db")), b"").unwrap();
        }
        let mut d = Daemon::for_tests(dir.path());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        d.checked_tx = Some(tx);
        for p in &waiting {
            d.waiting.wait(p, Instant::now(), false);
        }
        let before = crate::watch::dir_reads();
        assert!(d.next_task().is_none(), "nothing is ready");
        assert_eq!(
            crate::watch::dir_reads() - before,
            0,
            "the main loop read the directory"
        );
        // One look at the directory for the 600, its answer an event.
        let c = rx.recv().await.expect("the round's answer");
        assert_eq!(c.reads, 1, "one directory read per directory per round");
        d.checked(c);
        assert_eq!(d.files.queued_len(), 0, "still in the transaction");
        assert_eq!(d.waiting.len(), 600);
        // The COMMIT: the log goes, the waiting files are looked at again at once (one
        // more look) and queued.
        std::fs::remove_file(t.join("nb_txn_compaction_00000000-0000-0000-0000-000000000001.log"))
            .unwrap();
        d.on_event(WatchEvent::Gone(t.join(
            "nb_txn_compaction_00000000-0000-0000-0000-000000000001.log",
        )));
        assert!(d.next_task().is_none(), "answered beside the loop");
        assert_eq!(crate::watch::dir_reads() - before, 0);
        let c = rx.recv().await.expect("the round's answer");
        assert_eq!(c.reads, 1);
        d.checked(c);
        assert!(d.waiting.is_idle());
        assert_eq!(d.files.queued_len(), 600);
    }
}
