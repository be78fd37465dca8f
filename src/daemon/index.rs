//! The index scheduler: when each directory's `-listdir.json` is written. Pure (no I/O,
//! time passed in), so its invariants are tested directly and by a property test:
//!
//! 1. at most one index write in flight per directory, so a newer listing is always stored
//!    after an older one (two writes racing could land out of order, and the newest index
//!    by LastModified would hold the older listing);
//! 2. a Data.db handed to [`IndexScheduler::schedule`] is never dropped: it stays pending
//!    until a write that names it succeeds (a failed or deferred write puts it back,
//!    merged with anything scheduled meanwhile);
//! 3. an index is due a quiet period after its last activity, but never later than
//!    `max_wait` after it was first scheduled, and it does not wait for other directories'
//!    uploads: under a backlog the recovery point keeps moving.
//!
//! A directory is scheduled by a durable Data.db ([`IndexScheduler::schedule`]) or because
//! what its index would name changed otherwise ([`IndexScheduler::touch`]: a file stored
//! late, a TOC rewritten, a named file deleted after a compaction's COMMIT). A write with
//! no Data.db of its own is a restore point under a key of its own
//! (`crate::upload::Uploader::write_restore_point`), written only if its listing changed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Pending {
    files: BTreeSet<PathBuf>,
    first: Instant,
    due: Instant,
}

#[derive(Debug)]
pub struct IndexScheduler {
    pending: HashMap<PathBuf, Pending>,
    running: HashSet<PathBuf>,
    delay: Duration,
    max_wait: Duration,
}

impl IndexScheduler {
    pub fn new(delay: Duration) -> Self {
        Self {
            pending: HashMap::new(),
            running: HashSet::new(),
            delay,
            max_wait: delay * 10,
        }
    }

    /// A Data.db of `dir` is durable: its index is due after the quiet period (at once
    /// with `now_due`).
    pub fn schedule(&mut self, data: &Path, now: Instant, now_due: bool) {
        let Some(dir) = data.parent() else { return };
        let due = if now_due { now } else { now + self.delay };
        self.pending_entry(dir, due, now)
            .files
            .insert(data.to_path_buf());
    }

    /// `dir`'s pending index, created (first scheduled `now`, due at `due`) if none is.
    fn pending_entry(&mut self, dir: &Path, due: Instant, now: Instant) -> &mut Pending {
        self.pending.entry(dir.to_path_buf()).or_insert(Pending {
            files: BTreeSet::new(),
            first: now,
            due,
        })
    }

    /// What an index of `dir` would name may have changed, with no new Data.db: an index
    /// is due at `due` (postponing a pending one to it, within `max_wait` of its first
    /// scheduling). Coalesced with whatever is pending; still one write in flight.
    pub fn touch(&mut self, dir: &Path, due: Instant, now: Instant) {
        let max_wait = self.max_wait;
        let p = self.pending_entry(dir, due, now);
        p.due = p.due.max(due).min(p.first + max_wait);
    }

    /// More activity in `dir`: postpone its index (within `max_wait` of the first
    /// scheduling), so the components written after Data.db are in it.
    pub fn activity(&mut self, dir: &Path, now: Instant) {
        if let Some(p) = self.pending.get_mut(dir) {
            p.due = (now + self.delay).min(p.first + self.max_wait);
        }
    }

    /// Makes `dir`'s pending index due now (e.g. a transaction log was removed: an
    /// SSTable may just have become complete).
    pub fn hurry(&mut self, dir: &Path, now: Instant) {
        if let Some(p) = self.pending.get_mut(dir) {
            p.due = p.due.min(now);
        }
    }

    /// The next index to write: due, no write of the same directory in flight, and (unless
    /// it has waited `max_wait`) no upload of its directory in flight (`busy`). The
    /// directory is marked running until [`IndexScheduler::done`].
    #[cfg(test)]
    pub fn start(
        &mut self,
        now: Instant,
        busy: impl Fn(&Path) -> bool,
    ) -> Option<(PathBuf, Vec<PathBuf>)> {
        self.start_unless_held(now, busy, |_| false)
    }

    /// [`Self::start`], where a directory for which `held` is true waits whatever
    /// `max_wait` says: files a scan found there are still to be tried once (a backfill).
    /// An index written then would upload them itself, one after the other, and the
    /// Data.db files the uploads store meanwhile would each call for the same listing again.
    pub fn start_unless_held(
        &mut self,
        now: Instant,
        busy: impl Fn(&Path) -> bool,
        held: impl Fn(&Path) -> bool,
    ) -> Option<(PathBuf, Vec<PathBuf>)> {
        let dir = self
            .pending
            .iter()
            .filter(|(d, p)| {
                p.due <= now
                    && !self.running.contains(*d)
                    && (!busy(d) || now >= p.first + self.max_wait)
                    && !held(d)
            })
            .min_by_key(|(_, p)| p.due)
            .map(|(d, _)| d.clone())?;
        let p = self.pending.remove(&dir)?;
        self.running.insert(dir.clone());
        Some((dir, p.files.into_iter().collect()))
    }

    /// Every pending index whose directory has no write in flight, due or not (shutdown).
    pub fn start_all(&mut self) -> Vec<(PathBuf, Vec<PathBuf>)> {
        let dirs: Vec<PathBuf> = self
            .pending
            .keys()
            .filter(|d| !self.running.contains(*d))
            .cloned()
            .collect();
        dirs.into_iter()
            .filter_map(|d| {
                let p = self.pending.remove(&d)?;
                self.running.insert(d.clone());
                Some((d, p.files.into_iter().collect()))
            })
            .collect()
    }

    /// The write for `dir` ended. `again` are Data.db files it did not index (the write
    /// failed, or their SSTable is not complete yet): pending again, due at `retry`.
    pub fn done(&mut self, dir: &Path, again: Vec<PathBuf>, retry: Instant, now: Instant) {
        if again.is_empty() {
            self.running.remove(dir);
        } else {
            self.put_back(dir, again, retry, now);
        }
    }

    /// The write for `dir` did not happen (no permit, cancelled, failed): it is pending
    /// again, due at `due`, even when it has no Data.db of its own (a restore point that
    /// what the directory names calls for must not be lost with its attempt).
    pub fn put_back(&mut self, dir: &Path, files: Vec<PathBuf>, due: Instant, now: Instant) {
        self.running.remove(dir);
        let p = self.pending_entry(dir, due, now);
        p.files.extend(files);
        p.due = p.due.min(due);
    }

    /// When the next index becomes due (None: nothing pending that a timer must start).
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.pending
            .iter()
            .filter(|(d, _)| !self.running.contains(*d))
            .map(|(_, p)| p.due.max(now))
            .min()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.running.is_empty()
    }

    /// Whether a write for `dir` is pending or in flight with `data` in it.
    pub fn has_pending(&self, data: &Path) -> bool {
        data.parent()
            .and_then(|d| self.pending.get(d))
            .is_some_and(|p| p.files.contains(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: Duration = Duration::from_millis(1000);

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn one_write_per_directory_and_newer_after_older() {
        let t0 = Instant::now();
        let mut s = IndexScheduler::new(D);
        s.schedule(&p("/d/t/nb-1-big-Data.db"), t0, false);
        assert!(s.start(t0, |_| false).is_none(), "quiet period");
        let (dir, files) = s.start(t0 + D, |_| false).unwrap();
        assert_eq!((dir.as_path(), files.len()), (Path::new("/d/t"), 1));
        // A newer Data.db while the first write is in flight waits for it.
        s.schedule(&p("/d/t/nb-2-big-Data.db"), t0 + D, true);
        assert!(s.start(t0 + D * 5, |_| false).is_none());
        s.done(&dir, vec![], t0 + D * 5, t0 + D * 5);
        let (_, files) = s.start(t0 + D * 5, |_| false).unwrap();
        assert_eq!(files, [p("/d/t/nb-2-big-Data.db")]);
    }

    #[test]
    fn a_busy_directory_waits_at_most_max_wait_and_others_do_not_wait() {
        let t0 = Instant::now();
        let mut s = IndexScheduler::new(D);
        s.schedule(&p("/d/a/nb-1-big-Data.db"), t0, false);
        s.schedule(&p("/d/b/nb-1-big-Data.db"), t0, false);
        let busy = |d: &Path| d == Path::new("/d/a");
        let (dir, _) = s.start(t0 + D, busy).unwrap();
        assert_eq!(dir, p("/d/b"));
        assert!(s.start(t0 + D * 9, busy).is_none());
        assert_eq!(s.start(t0 + D * 10, busy).unwrap().0, p("/d/a"));
    }

    #[test]
    fn deferred_and_failed_files_come_back_merged() {
        let t0 = Instant::now();
        let mut s = IndexScheduler::new(D);
        s.schedule(&p("/d/t/nb-1-big-Data.db"), t0, true);
        let (dir, _) = s.start(t0, |_| false).unwrap();
        s.schedule(&p("/d/t/nb-2-big-Data.db"), t0, false);
        s.done(&dir, vec![p("/d/t/nb-1-big-Data.db")], t0 + D * 3, t0);
        let (_, files) = s.start(t0 + D * 3, |_| false).unwrap();
        assert_eq!(files.len(), 2);
    }

    #[test]
    fn a_touch_schedules_an_index_without_a_data_db_and_coalesces() {
        let t0 = Instant::now();
        let mut s = IndexScheduler::new(D);
        s.touch(Path::new("/d/t"), t0 + D, t0);
        assert!(s.start(t0, |_| false).is_none(), "quiet period");
        let (dir, files) = s.start(t0 + D, |_| false).unwrap();
        assert_eq!((dir.as_path(), files.len()), (Path::new("/d/t"), 0));
        // While it is in flight, a touch and a Data.db wait for it, as one write.
        s.touch(Path::new("/d/t"), t0 + D, t0 + D);
        s.schedule(&p("/d/t/nb-2-big-Data.db"), t0 + D, false);
        assert!(s.start(t0 + D * 3, |_| false).is_none());
        s.done(&dir, vec![], t0 + D * 3, t0 + D * 3);
        let (_, files) = s.start(t0 + D * 3, |_| false).unwrap();
        assert_eq!(files, [p("/d/t/nb-2-big-Data.db")]);
        // Touches keep postponing, but never past max_wait.
        for i in 0..30 {
            s.touch(Path::new("/d/u"), t0 + D * (i + 1), t0 + D * i);
        }
        assert!(s.next_wake(t0).unwrap() <= t0 + D * 10);
    }

    #[test]
    fn a_restore_point_put_back_without_a_data_db_is_not_lost() {
        let t0 = Instant::now();
        let mut s = IndexScheduler::new(D);
        s.touch(Path::new("/d/t"), t0, t0);
        let (dir, files) = s.start(t0, |_| false).unwrap();
        assert!(files.is_empty());
        // No permit for it (or it failed, or shutdown cancelled it): pending again.
        s.put_back(&dir, files, t0, t0);
        let (again, files) = s.start(t0, |_| false).expect("the restore point was lost");
        assert_eq!((again.as_path(), files.len()), (Path::new("/d/t"), 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Schedule(u8, u8, bool),
        Activity(u8),
        Touch(u8),
        Tick(u16),
        Start,
        Done(bool),
        StartAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 0u8..4, any::<bool>()).prop_map(|(d, f, n)| Op::Schedule(d, f, n)),
            (0u8..3).prop_map(Op::Activity),
            (0u8..3).prop_map(Op::Touch),
            (0u16..3000).prop_map(Op::Tick),
            Just(Op::Start),
            any::<bool>().prop_map(Op::Done),
            Just(Op::StartAll),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Against a reference model: never two writes of one directory in flight, never a
        /// scheduled Data.db lost (every one is pending, in flight, or was written), and a
        /// pending index always starts by max_wait after it was scheduled.
        #[test]
        fn scheduler_never_loses_or_reorders(ops in proptest::collection::vec(op(), 1..80)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut s = IndexScheduler::new(D);
            let mut in_flight: Vec<(PathBuf, Vec<PathBuf>)> = vec![];
            let mut owed: BTreeSet<PathBuf> = BTreeSet::new();
            for o in ops {
                match o {
                    Op::Schedule(d, f, n) => {
                        let f = p(&format!("/d/{d}/nb-{f}-big-Data.db"));
                        owed.insert(f.clone());
                        s.schedule(&f, now, n);
                    }
                    Op::Activity(d) => s.activity(&p(&format!("/d/{d}")), now),
                    Op::Touch(d) => s.touch(&p(&format!("/d/{d}")), now + D, now),
                    Op::Tick(ms) => now += Duration::from_millis(ms as u64),
                    Op::Start => {
                        if let Some(w) = s.start(now, |_| false) {
                            prop_assert!(!in_flight.iter().any(|(d, _)| *d == w.0), "two writes of {:?}", w.0);
                            in_flight.push(w);
                        }
                    }
                    Op::StartAll => {
                        for w in s.start_all() {
                            prop_assert!(!in_flight.iter().any(|(d, _)| *d == w.0));
                            in_flight.push(w);
                        }
                    }
                    Op::Done(ok) => {
                        if let Some((dir, files)) = in_flight.pop() {
                            if ok {
                                for f in &files { owed.remove(f); }
                                s.done(&dir, vec![], now, now);
                            } else {
                                s.done(&dir, files, now + D, now);
                            }
                        }
                    }
                }
                // Nothing owed is lost.
                for f in &owed {
                    let flying = in_flight.iter().any(|(_, fs)| fs.contains(f));
                    prop_assert!(flying || s.has_pending(f), "{f:?} lost");
                }
                // Liveness: whatever is pending and not blocked starts within max_wait.
                if let Some(w) = s.next_wake(now) {
                    prop_assert!(w <= now + D * 10);
                }
            }
        }
    }
}
