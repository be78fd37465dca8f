//! What the daemon owes the store, file by file, as one explicit model.
//!
//! Every file the daemon has taken on and not yet finished with is in exactly one
//! [`State`]: queued for an upload slot, running (and whether an event asked for it again
//! meanwhile), or retrying at a time. What the rest of the daemon asks of it is derived
//! from that one map, never kept in step by hand: whether a directory is busy (its index
//! waits for its own uploads), whether a backfill still holds it (files a scan queued and
//! not tried once), the recovery-point gauge (when the oldest file not yet durable was first
//! seen), the queue and the retry timers. Before this model these were ten parallel
//! collections in `Daemon`, updated at each call site; a file given up on kept its
//! recovery-point time for ever, and a retrying file that got an event was queued *and*
//! retrying at once (uploaded twice).
//!
//! Pure: no clock (times are passed in), no I/O, no store. A property test checks it
//! against a plain reference model over random sequences of events.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;

use super::queue::UploadQueue;

/// Where a file the daemon owes the store stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Waiting in the upload queue for a slot.
    Queued,
    /// Being uploaded. `rerun`: an event came for it meanwhile (it was written again):
    /// queued again when this attempt ends, whatever its result.
    Running { rerun: bool },
    /// An attempt failed: tried again at `at` (or sooner, on an event).
    Retrying { at: Instant },
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Durable (or nothing to do: vanished, ignored).
    Done,
    /// Failed; try again at this time.
    Retry(Instant),
    /// Failed; not tried again until an event or a scan brings it back.
    GaveUp,
    /// Shutdown cancelled it: still owed, queued at the back.
    Cancelled,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// When it was first seen not durable (ms since the epoch): the recovery-point gauge.
    since_ms: u64,
    /// A scan queued it and it was not tried once yet: its directory's index waits for it.
    untried: bool,
    /// Failed attempts in a row (for the backoff).
    attempts: u32,
}

/// See the module doc. Each path is one allocation shared by the map, the queue, the timers
/// and the gauge's order (a backfill of a million files held each path eight times).
#[derive(Debug, Default)]
pub(super) struct Files {
    files: HashMap<Arc<Path>, Entry>,
    queue: UploadQueue,
    retries: BTreeSet<(Instant, Arc<Path>)>,
    pending: BTreeSet<(u64, Arc<Path>)>,
    /// Files owed per directory (derived from `files`, kept for O(1) lookups).
    busy: HashMap<Arc<Path>, usize>,
    /// Untried files per directory (likewise).
    untried: HashMap<Arc<Path>, usize>,
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new(""))
}

fn count_up(m: &mut HashMap<Arc<Path>, usize>, dir: &Path) {
    match m.get_mut(dir) {
        Some(n) => *n += 1,
        None => {
            m.insert(Arc::from(dir), 1);
        }
    }
}

fn count_down(m: &mut HashMap<Arc<Path>, usize>, dir: &Path) {
    if let Some(n) = m.get_mut(dir) {
        *n -= 1;
        if *n == 0 {
            m.remove(dir);
        }
    }
}

impl Files {
    pub(super) fn new() -> Self {
        Files {
            queue: UploadQueue::new(),
            ..Default::default()
        }
    }

    /// The file was written (an event) or found by a scan (`from_scan`: it holds its
    /// directory's index until tried once): owed from now, queued unless it is running.
    pub(super) fn enqueue(&mut self, p: &Path, now_ms: u64, from_scan: bool) {
        let Some((key, e)) = self.files.get_key_value(p) else {
            let key: Arc<Path> = Arc::from(p);
            self.queue.push_back(key.clone());
            self.pending.insert((now_ms, key.clone()));
            count_up(&mut self.busy, dir_of(p));
            if from_scan {
                count_up(&mut self.untried, dir_of(p));
            }
            self.files.insert(
                key,
                Entry {
                    state: State::Queued,
                    since_ms: now_ms,
                    untried: from_scan,
                    attempts: 0,
                },
            );
            return;
        };
        let key = key.clone();
        let state = e.state;
        let e = self.files.get_mut(p).expect("present");
        match state {
            State::Queued => {
                if from_scan && !e.untried {
                    e.untried = true;
                    count_up(&mut self.untried, dir_of(p));
                }
            }
            State::Running { .. } => e.state = State::Running { rerun: true },
            State::Retrying { at } => {
                // Written again: try now rather than at the backoff's time.
                self.retries.remove(&(at, key.clone()));
                e.state = State::Queued;
                self.queue.push_back(key);
            }
        }
    }

    /// The next file whose retry time has come: running now.
    pub(super) fn pop_retry(&mut self, now: Instant) -> Option<Arc<Path>> {
        let (at, _) = self.retries.first()?;
        if *at > now {
            return None;
        }
        let (_, p) = self.retries.pop_first()?;
        if let Some(e) = self.files.get_mut(&p) {
            e.state = State::Running { rerun: false };
        }
        Some(p)
    }

    /// The next queued file ([`UploadQueue`]'s order): running now.
    pub(super) fn pop_queued(&mut self) -> Option<Arc<Path>> {
        let p = self.queue.pop_front()?;
        if let Some(e) = self.files.get_mut(&p) {
            e.state = State::Running { rerun: false };
        }
        Some(p)
    }

    /// A running file that found no slot after all: first in the queue again.
    pub(super) fn unpop(&mut self, p: &Path) {
        if let Some((key, e)) = self.files.get_key_value(p) {
            if matches!(e.state, State::Running { .. }) {
                let key = key.clone();
                self.queue.push_front(key);
                if let Some(e) = self.files.get_mut(p) {
                    e.state = State::Queued;
                }
            }
        }
    }

    /// Failed attempts of `p` in a row.
    pub(super) fn attempts(&self, p: &Path) -> u32 {
        self.files.get(p).map_or(0, |e| e.attempts)
    }

    pub(super) fn set_attempts(&mut self, p: &Path, n: u32) {
        if let Some(e) = self.files.get_mut(p) {
            e.attempts = n;
        }
    }

    /// An attempt of a running file ended. A file written again meanwhile is queued again
    /// (pending from now, if this attempt made it durable or gave up on it).
    pub(super) fn finish(&mut self, p: &Path, ended: Ended, now_ms: u64) {
        let Some((key, e)) = self.files.get_key_value(p) else {
            return;
        };
        let key = key.clone();
        let (since, untried) = (e.since_ms, e.untried);
        let rerun = matches!(e.state, State::Running { rerun: true });
        if !matches!(e.state, State::Running { .. }) {
            return;
        }
        if untried {
            count_down(&mut self.untried, dir_of(p));
        }
        let e = self.files.get_mut(p).expect("present");
        e.untried = false;
        match ended {
            Ended::Cancelled => {
                e.state = State::Queued;
                self.queue.push_back(key);
            }
            Ended::Retry(_) | Ended::Done | Ended::GaveUp if rerun => {
                e.state = State::Queued;
                if !matches!(ended, Ended::Retry(_)) {
                    e.attempts = 0;
                    self.pending.remove(&(since, key.clone()));
                    self.pending.insert((now_ms, key.clone()));
                    e.since_ms = now_ms;
                }
                self.queue.push_back(key);
            }
            Ended::Retry(at) => {
                e.state = State::Retrying { at };
                self.retries.insert((at, key));
            }
            Ended::Done | Ended::GaveUp => {
                self.files.remove(p);
                self.pending.remove(&(since, key));
                count_down(&mut self.busy, dir_of(p));
            }
        }
    }

    #[cfg(test)]
    pub(super) fn state(&self, p: &Path) -> Option<State> {
        self.files.get(p).map(|e| e.state)
    }

    /// Whether the daemon owes the store `p` (queued, running or retrying).
    pub(super) fn owes(&self, p: &Path) -> bool {
        self.files.contains_key(p)
    }

    /// Whether `dir` has files owed: its index waits for them.
    pub(super) fn busy(&self, dir: &Path) -> bool {
        self.busy.contains_key(dir)
    }

    /// Whether `dir` has files a scan queued and that were not tried once yet: its index
    /// waits for them, `max_wait` or not (a backfill writes one listing per directory).
    pub(super) fn held(&self, dir: &Path) -> bool {
        self.untried.contains_key(dir)
    }

    pub(super) fn queued_len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn retrying_len(&self) -> usize {
        self.retries.len()
    }

    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.retries.first().map(|(t, _)| *t)
    }

    /// When the oldest file not yet durable was first seen (ms since the epoch).
    pub(super) fn oldest_pending_ms(&self) -> Option<u64> {
        self.pending.first().map(|(t, _)| *t)
    }

    /// Nothing queued or waiting to be retried (running files are the caller's tasks).
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.retries.is_empty()
    }

    /// The one allocation of `p` the model holds, if it owes it.
    #[cfg(test)]
    pub(super) fn shared(&self, p: &Path) -> Option<Arc<Path>> {
        self.files.get_key_value(p).map(|(k, _)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    /// The reference: a plain map of what each file is, with every derived answer counted
    /// from it at the time it is asked.
    #[derive(Debug, Default)]
    struct Reference {
        files: BTreeMap<PathBuf, (State, u64, bool)>,
    }

    impl Reference {
        fn enqueue(&mut self, p: &Path, now_ms: u64, scan: bool) {
            match self.files.get_mut(p) {
                None => {
                    self.files
                        .insert(p.to_path_buf(), (State::Queued, now_ms, scan));
                }
                Some((s, _, u)) => match *s {
                    State::Queued => *u |= scan,
                    State::Running { .. } => *s = State::Running { rerun: true },
                    State::Retrying { .. } => *s = State::Queued,
                },
            }
        }
        fn finish(&mut self, p: &Path, ended: Ended, now_ms: u64) {
            let Some((s, since, u)) = self.files.get_mut(p) else {
                return;
            };
            let State::Running { rerun } = *s else {
                return;
            };
            *u = false;
            match ended {
                Ended::Cancelled => *s = State::Queued,
                Ended::Retry(_) if rerun => *s = State::Queued,
                Ended::Retry(at) => *s = State::Retrying { at },
                Ended::Done | Ended::GaveUp if rerun => {
                    *s = State::Queued;
                    *since = now_ms;
                }
                Ended::Done | Ended::GaveUp => {
                    self.files.remove(p);
                }
            }
        }
        fn in_state(&self, f: impl Fn(&State) -> bool) -> Vec<&PathBuf> {
            self.files
                .iter()
                .filter(|(_, (s, _, _))| f(s))
                .map(|(p, _)| p)
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue {
            file: usize,
            scan: bool,
        },
        PopQueued,
        PopRetry,
        Finish {
            pick: usize,
            ended: u8,
            delay_ms: u64,
        },
        Unpop {
            pick: usize,
        },
        Advance {
            ms: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..8usize, any::<bool>()).prop_map(|(file, scan)| Op::Enqueue { file, scan }),
            3 => Just(Op::PopQueued),
            1 => Just(Op::PopRetry),
            4 => (0..8usize, 0..4u8, 1..500u64)
                .prop_map(|(pick, ended, delay_ms)| Op::Finish { pick, ended, delay_ms }),
            1 => (0..8usize).prop_map(|pick| Op::Unpop { pick }),
            1 => (1..400u64).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// Eight files in three directories.
    fn path(i: usize) -> PathBuf {
        PathBuf::from(format!("/d/t{}/nb-{i}-big-Data.db", i % 3))
    }

    fn check(m: &Files, r: &Reference) -> Result<(), TestCaseError> {
        for i in 0..8 {
            let p = path(i);
            prop_assert_eq!(
                m.state(&p),
                r.files.get(&p).map(|f| f.0),
                "state of {:?}",
                p
            );
            prop_assert_eq!(m.owes(&p), r.files.contains_key(&p));
        }
        for t in 0..3 {
            let dir = PathBuf::from(format!("/d/t{t}"));
            let here = |p: &Path| p.parent() == Some(dir.as_path());
            prop_assert_eq!(
                m.busy(&dir),
                r.files.keys().any(|p| here(p)),
                "busy {:?}",
                dir
            );
            prop_assert_eq!(
                m.held(&dir),
                r.files.iter().any(|(p, f)| here(p) && f.2),
                "held {:?}",
                dir
            );
        }
        prop_assert_eq!(m.queued_len(), r.in_state(|s| *s == State::Queued).len());
        let retrying = r.in_state(|s| matches!(s, State::Retrying { .. }));
        prop_assert_eq!(m.retrying_len(), retrying.len());
        let next = r
            .files
            .values()
            .filter_map(|f| match f.0 {
                State::Retrying { at } => Some(at),
                _ => None,
            })
            .min();
        prop_assert_eq!(m.next_retry(), next);
        prop_assert_eq!(m.oldest_pending_ms(), r.files.values().map(|f| f.1).min());
        prop_assert_eq!(
            m.is_idle(),
            r.in_state(|s| !matches!(s, State::Running { .. }))
                .is_empty()
        );
        // The derived counters hold nothing stale.
        prop_assert_eq!(m.busy.values().sum::<usize>(), r.files.len());
        prop_assert_eq!(
            m.untried.values().sum::<usize>(),
            r.files.values().filter(|f| f.2).count()
        );
        prop_assert_eq!(m.pending.len(), r.files.len());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Every answer the daemon asks of the model (a file's state, whether a directory is
        /// busy or held by its backfill, the queue's length, the next retry, the oldest
        /// pending file) matches a plain map of what each file is, after any sequence of
        /// events, scans, pops, attempts ending every way, and put-backs.
        #[test]
        fn the_model_matches_a_plain_map_of_each_file(ops in proptest::collection::vec(op(), 1..80)) {
            let t0 = Instant::now();
            let mut now_ms = 1_000u64;
            let mut m = Files::new();
            let mut r = Reference::default();
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            for op in ops {
                match op {
                    Op::Enqueue { file, scan } => {
                        m.enqueue(&path(file), now_ms, scan);
                        r.enqueue(&path(file), now_ms, scan);
                    }
                    Op::PopQueued => {
                        let got = m.pop_queued();
                        let queued = r.in_state(|s| *s == State::Queued);
                        match got {
                            None => prop_assert!(queued.is_empty(), "{:?} queued, none popped", queued),
                            Some(p) => {
                                prop_assert!(queued.iter().any(|q| **q == *p), "popped {:?}, not queued", p);
                                r.files.get_mut(&*p).unwrap().0 = State::Running { rerun: false };
                            }
                        }
                    }
                    Op::PopRetry => {
                        let now = at(now_ms);
                        let due: Vec<(Instant, PathBuf)> = r
                            .files
                            .iter()
                            .filter_map(|(p, f)| match f.0 {
                                State::Retrying { at } if at <= now => Some((at, p.clone())),
                                _ => None,
                            })
                            .collect();
                        match m.pop_retry(now) {
                            None => prop_assert!(due.is_empty(), "{:?} due, none popped", due),
                            Some(p) => {
                                let first = due.iter().map(|d| d.0).min();
                                let this = due.iter().find(|d| *d.1 == *p).map(|d| d.0);
                                prop_assert!(this.is_some(), "popped {:?}, not due", p);
                                prop_assert_eq!(this, first, "not the earliest retry");
                                r.files.get_mut(&*p).unwrap().0 = State::Running { rerun: false };
                            }
                        }
                    }
                    Op::Finish { pick, ended, delay_ms } => {
                        let running: Vec<PathBuf> = r
                            .in_state(|s| matches!(s, State::Running { .. }))
                            .into_iter()
                            .cloned()
                            .collect();
                        // Mostly a running file; sometimes any (a stray end is ignored).
                        let p = match running.get(pick) {
                            Some(p) => p.clone(),
                            None => path(pick),
                        };
                        let ended = match ended {
                            0 => Ended::Done,
                            1 => Ended::Retry(at(now_ms + delay_ms)),
                            2 => Ended::GaveUp,
                            _ => Ended::Cancelled,
                        };
                        m.finish(&p, ended, now_ms);
                        r.finish(&p, ended, now_ms);
                    }
                    Op::Unpop { pick } => {
                        let p = path(pick);
                        m.unpop(&p);
                        if let Some(f) = r.files.get_mut(&p) {
                            if matches!(f.0, State::Running { .. }) {
                                f.0 = State::Queued;
                            }
                        }
                    }
                    Op::Advance { ms } => now_ms += ms,
                }
                check(&m, &r)?;
            }
        }
    }

    /// A backfill of a node with nothing stored held each queued path about eight times (a
    /// first run over 889,776 files peaked at 1.6 GiB): the map, the queue and the gauge's
    /// order share one allocation of each path.
    #[test]
    fn a_queued_path_is_held_once() {
        let mut m = Files::new();
        let p = Path::new("/d/ks/t-1/nb-1-big-Data.db");
        m.enqueue(p, 1, true);
        m.enqueue(p, 2, false);
        let held = m.shared(p).expect("owed");
        // The map, the queue, the pending order, and `held` itself.
        assert_eq!(Arc::strong_count(&held), 4);
        let popped = m.pop_queued().expect("queued");
        assert!(Arc::ptr_eq(&popped, &held));
    }
}
