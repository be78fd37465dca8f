//! The daemon's main loop: one `select!` over inotify events, finished uploads, scans
//! that ran beside it, timers (retries, settling files, due indexes, rescans, the
//! watchdog) and the shutdown request. It starts work as permits allow and hands every
//! result to the state model ([`super::state`]); after it, the drain.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use super::state::{CANCEL_GRACE, Checked, Daemon, Done, Found, Task};
use crate::upload::UploadError;
use crate::watch::{WatchEvent, Watcher};

/// Runs until shutdown (or, with --once, until everything is stored), then drains.
/// `probe` (daemon mode) checks the destination beside the loop: a fatal answer (bad
/// credentials, missing bucket) ends the daemon and is returned.
pub(super) async fn main_loop(
    d: &mut Daemon<'_>,
    mut watcher: Option<Watcher>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    cancel: &CancellationToken,
    probe: Option<impl Future<Output = Result<(), DaemonError>>>,
) -> Option<DaemonError> {
    let mut probing = probe.is_some();
    let mut probe = std::pin::pin!(async move {
        match probe {
            Some(p) => p.await,
            None => std::future::pending().await,
        }
    });
    let mut fatal = None;
    let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel::<Found>();
    let (checked_tx, mut checked_rx) = tokio::sync::mpsc::unbounded_channel::<Checked>();
    d.found_tx = Some(found_tx.clone());
    d.checked_tx = Some(checked_tx);
    if d.cfg.backup || d.cfg.once {
        d.metrics.rescan("startup");
        d.spawn_scan("startup", true, &found_tx);
        d.before_startup = true;
    }

    let permits = Arc::new(Semaphore::new(d.cfg.threads.max(1)));
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut owners: HashMap<tokio::task::Id, Task> = HashMap::new();
    let Timers {
        mut unwatched_retry,
        mut watchdog,
        mut rescan,
        mut heartbeat,
    } = Timers::new(d.cfg);
    loop {
        // Start what we can.
        while let Some(task) = d.next_task() {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                d.unpop(task);
                break;
            };
            d.spawn(&mut tasks, &mut owners, task, permit, cancel);
        }
        d.update_gauges(tasks.len(), watcher.as_ref().map(|w| w.watched_dirs()));
        if d.cfg.once && tasks.is_empty() && d.idle() {
            break;
        }
        let wake = d.next_wake();
        tokio::select! {
            _ = shutdown.as_mut() => {
                tracing::info!("shutdown requested: no longer watching; finishing uploads in flight");
                break;
            }
            r = &mut probe, if probing => {
                probing = false;
                if let Err(e) = r {
                    fatal = Some(e);
                    break;
                }
            }
            Some(done) = tasks.join_next_with_id() => d.joined(done, &mut owners),
            Some(found) = found_rx.recv() => d.found(found),
            Some(c) = checked_rx.recv() => d.checked(c),
            evs = async { watcher.as_mut().unwrap().next().await }, if watcher.is_some() => {
                match evs {
                    Ok(evs) => on_events(d, watcher.as_mut().unwrap(), evs, &found_tx),
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
            _ = heartbeat.tick() => d.metrics.alive(),
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                if let Some(w) = &d.cfg.watchdog { (w.ping)(); }
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
    if fatal.is_some() {
        cancel.cancel();
    }
    d.drain(&mut tasks, &mut owners, &permits, cancel).await;
    fatal
}

/// The loop's periodic wake-ups.
struct Timers {
    /// Directories that could not be watched (watch limit) are retried.
    unwatched_retry: tokio::time::Interval,
    /// systemd's watchdog, pinged from the loop itself: a hung loop gets restarted.
    watchdog: Option<tokio::time::Interval>,
    /// `--rescan-interval`: LIST and scan again.
    rescan: Option<tokio::time::Interval>,
    /// The loop's own heartbeat for `/healthz`, beating even when there is nothing to do.
    heartbeat: tokio::time::Interval,
}

impl Timers {
    fn new(cfg: &super::Config) -> Self {
        let every = |i: Duration, first: Instant| {
            let mut t = tokio::time::interval_at(first, i);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let now = Instant::now();
        Timers {
            unwatched_retry: every(Duration::from_secs(2), now),
            watchdog: cfg.watchdog.as_ref().map(|w| every(w.interval, now)),
            rescan: cfg.rescan_interval.map(|i| every(i, now + i)),
            heartbeat: every(crate::metrics::HEARTBEAT, now),
        }
    }
}

/// One batch of inotify events; an overflow rewatches and rescans beside the loop.
fn on_events(
    d: &mut Daemon<'_>,
    watcher: &mut Watcher,
    evs: Vec<WatchEvent>,
    found_tx: &tokio::sync::mpsc::UnboundedSender<Found>,
) {
    for ev in evs {
        if ev == WatchEvent::Overflow {
            // Directories created meanwhile were not seen: watch them too.
            for dir in watcher.rewatch(&d.roots) {
                tracing::info!(dir = %dir.display(), "watching a directory found after the overflow");
            }
            d.metrics.rescan("overflow");
            for dir in d.uploader.txn_events_lost() {
                d.touch_index(&dir);
            }
            tracing::warn!(
                "inotify queue overflowed: events were lost; rescanning every watched directory"
            );
            d.spawn_scan("overflow", false, found_tx);
            continue;
        }
        d.on_event(ev)
    }
}

impl Daemon<'_> {
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
        let previous = match &task {
            Task::Index(d, _) => self.named(d).cloned(),
            Task::File(_) => None,
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
                    // Scheduled with no Data.db of its own (what it would name changed
                    // otherwise): a restore point under a key of its own, if it changed.
                    let r = tokio::select! {
                        r = async {
                            if files.is_empty() {
                                up.write_restore_point(&dir, previous.as_deref(), &c).await
                            } else {
                                up.write_index(&dir, &files, previous.as_deref(), &c).await
                            }
                        } => r,
                        _ = grace => Err(UploadError::Cancelled { path: dir.clone() }),
                    };
                    let left = r
                        .as_ref()
                        .is_ok_and(|w| super::state::left_unsettled(&dir, &w.names, up.filter()));
                    Done::Index(dir, files, r, left)
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
                        self.finished(Done::Index(d, f, Err(e), false))
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
        self.draining = true;
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
}

#[cfg(test)]
mod tests {
    use super::super::files::State;
    use super::*;
    use crate::upload::Outcome;

    /// Regression (issue #10, defect 10): a panicking upload task left its path "running"
    /// for ever, and its directory got no more indexes. The panic is contained and the work
    /// retried, for a file and for an index alike.
    #[tokio::test]
    async fn a_panicking_task_is_retried_not_leaked() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::for_tests(dir.path());
        let p = dir.path().join("nb-1-big-Data.db");
        d.enqueue(p.clone());
        let task = d.next_task().expect("the file");
        assert!(matches!(d.files.state(&p), Some(State::Running { .. })));
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut owners = HashMap::new();
        let q = p.clone();
        let h = tasks.spawn(async move {
            if q.exists() || !q.exists() {
                panic!("boom");
            }
            Done::File(q, Ok(Outcome::Ignored))
        });
        owners.insert(h.id(), task);
        let r = tasks.join_next_with_id().await.unwrap();
        assert!(r.is_err(), "the task panicked");
        d.joined(r, &mut owners);
        assert!(
            matches!(d.files.state(&p), Some(State::Retrying { .. })),
            "left running for ever, or not retried"
        );
        assert!(owners.is_empty());

        // An index task that panics (another directory: this one still owes the retried
        // file, so its index rightly waits): its Data.db files are pending again.
        let p = dir.path().join("t2/nb-1-big-Data.db");
        d.indexes.schedule(&p, Instant::now(), true);
        let task = d.next_task().expect("the index");
        assert!(matches!(task, Task::Index(..)));
        let h = tasks.spawn(async { panic!("boom") });
        owners.insert(h.id(), task);
        let r = tasks.join_next_with_id().await.unwrap();
        d.joined(r, &mut owners);
        assert!(d.indexes.has_pending(&p), "the index was dropped");
    }
}
