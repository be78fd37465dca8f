//! Files the daemon waits on before it may queue them, as one explicit model.
//!
//! A closed component of an SSTable that an open transaction adds may still be aborted, and
//! a file a scan found modified moments ago may still be written: such a file waits, and is
//! looked at again later. A look reads its directory (and the directory's transaction logs)
//! once for all the files waiting there, beside the main loop: a readdir of a 50,000-entry
//! LCS directory per waiting file stalled the loop. Each file is in one [`Phase`]: waiting
//! until a time, due (its directory's look is still busy with an earlier round), or part of
//! a look in flight (and perhaps asked for again meanwhile). A transaction log that goes
//! away hurries its directory: what waits there is due at once, and a look in flight that
//! read the log is followed by another.
//!
//! Before this model the same facts were four collections (a timer map of paths, a map of
//! directories to look at, the looks in flight, the hurried directories): a file could wait
//! in several of them at once and be looked at twice per round.
//!
//! Pure: no clock (times are passed in), no I/O. A property test checks it against a plain
//! reference model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Looked at again at this time.
    Until(Instant),
    /// Its time has come; its directory's look is still in flight (it goes in the next).
    Due,
    /// In the look in flight; `again`: asked for again meanwhile (the look may have read
    /// the directory before the change), looked at again then whatever the answer says.
    Looking { again: Option<Instant> },
}

#[derive(Debug)]
struct Wait {
    phase: Phase,
    /// A close event brought it (only an open transaction holds it back), not a scan; a
    /// look uses this up.
    event: bool,
}

/// What a look said of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Ready: the caller queues it.
    Ready,
    /// Not ready: looked at again at this time (unless a hurry or a new request is sooner).
    Again(Instant),
    /// Gone, or given up on for this run.
    Drop,
}

#[derive(Debug, Default)]
pub(super) struct WaitingFiles {
    files: HashMap<Arc<Path>, Wait>,
    timers: BTreeSet<(Instant, Arc<Path>)>,
    /// Directories with due files, and which.
    due: BTreeMap<PathBuf, BTreeSet<Arc<Path>>>,
    /// Directories whose look is in flight, and whether a transaction log went away since
    /// it started (what it finds still waiting is due at once).
    looking: HashMap<PathBuf, bool>,
    /// The waiting files of each directory (for a hurry).
    by_dir: HashMap<PathBuf, BTreeSet<Arc<Path>>>,
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

fn earliest(a: Option<Instant>, b: Instant) -> Instant {
    a.map_or(b, |a| a.min(b))
}

impl WaitingFiles {
    /// `p` waits until `at` (a file already waiting keeps the sooner time).
    pub(super) fn wait(&mut self, p: &Path, at: Instant, event: bool) {
        let Some((key, w)) = self.files.get_key_value(p) else {
            let key: Arc<Path> = Arc::from(p);
            self.timers.insert((at, key.clone()));
            self.by_dir
                .entry(dir_of(p).to_path_buf())
                .or_default()
                .insert(key.clone());
            self.files.insert(
                key,
                Wait {
                    phase: Phase::Until(at),
                    event,
                },
            );
            return;
        };
        let key = key.clone();
        let phase = match w.phase {
            Phase::Until(t) if at < t => {
                self.timers.remove(&(t, key.clone()));
                self.timers.insert((at, key));
                Phase::Until(at)
            }
            Phase::Looking { again } => Phase::Looking {
                again: Some(earliest(again, at)),
            },
            other => other,
        };
        let w = self.files.get_mut(p).expect("present");
        w.phase = phase;
        w.event |= event;
    }

    /// Files whose time has come are due.
    pub(super) fn advance(&mut self, now: Instant) {
        while let Some((t, _)) = self.timers.first() {
            if *t > now {
                break;
            }
            let Some((_, p)) = self.timers.pop_first() else {
                break;
            };
            self.due
                .entry(dir_of(&p).to_path_buf())
                .or_default()
                .insert(p.clone());
            if let Some(w) = self.files.get_mut(&p) {
                w.phase = Phase::Due;
            }
        }
    }

    /// One look per directory with due files and no look in flight: the directory and its
    /// files (with whether an event brought each). They are in that look until
    /// [`WaitingFiles::answered`].
    pub(super) fn start_looks(&mut self) -> Vec<(PathBuf, Vec<(PathBuf, bool)>)> {
        let dirs: Vec<PathBuf> = self
            .due
            .keys()
            .filter(|d| !self.looking.contains_key(*d))
            .cloned()
            .collect();
        let mut looks = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let files = self.due.remove(&dir).unwrap_or_default();
            let mut list = Vec::with_capacity(files.len());
            for p in files {
                if let Some(w) = self.files.get_mut(&p) {
                    w.phase = Phase::Looking { again: None };
                    list.push((p.to_path_buf(), std::mem::take(&mut w.event)));
                }
            }
            self.looking.insert(dir.clone(), false);
            looks.push((dir, list));
        }
        looks
    }

    /// A transaction log of `dir` went away: what waits there is due now, and what a look
    /// in flight finds still waiting comes back at once (see [`WaitingFiles::look_done`]).
    pub(super) fn hurry(&mut self, dir: &Path, now: Instant) {
        if let Some(h) = self.looking.get_mut(dir) {
            *h = true;
        }
        let Some(files) = self.by_dir.get(dir) else {
            return;
        };
        let until: Vec<(Instant, Arc<Path>)> = files
            .iter()
            .filter_map(|p| match self.files.get(p)?.phase {
                Phase::Until(t) if t > now => Some((t, p.clone())),
                _ => None,
            })
            .collect();
        for (t, p) in until {
            self.timers.remove(&(t, p.clone()));
            self.timers.insert((now, p.clone()));
            if let Some(w) = self.files.get_mut(&p) {
                w.phase = Phase::Until(now);
            }
        }
    }

    /// The look at `dir` answered: whether it was hurried meanwhile (then a file it found
    /// not ready is looked at again at once, not at its recheck time).
    pub(super) fn look_done(&mut self, dir: &Path) -> bool {
        self.looking.remove(dir).unwrap_or(false)
    }

    /// What the look said of `p` (after [`WaitingFiles::look_done`]). A file asked for again
    /// during the look waits until then whatever the look said (the caller still queues a
    /// ready one: a second look finds it queued and queues nothing twice).
    pub(super) fn answered(&mut self, p: &Path, verdict: Verdict) {
        let Some(w) = self.files.get(p) else {
            return;
        };
        let Phase::Looking { again } = w.phase else {
            return;
        };
        let next = match (verdict, again) {
            (Verdict::Again(t), a) => Some(earliest(a, t)),
            (_, a) => a,
        };
        let key = self.files.get_key_value(p).map(|(k, _)| k.clone());
        match (next, key) {
            (Some(t), Some(key)) => {
                self.timers.insert((t, key));
                if let Some(w) = self.files.get_mut(p) {
                    w.phase = Phase::Until(t);
                }
            }
            _ => self.remove(p),
        }
    }

    fn remove(&mut self, p: &Path) {
        self.files.remove(p);
        let dir = dir_of(p);
        if let Some(s) = self.by_dir.get_mut(dir) {
            s.remove(p);
            if s.is_empty() {
                self.by_dir.remove(dir);
            }
        }
    }

    /// Nothing waits and no look is in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.files.is_empty() && self.looking.is_empty()
    }

    /// When the next waiting file is due.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    #[cfg(test)]
    pub(super) fn phase(&self, p: &Path) -> Option<Phase> {
        self.files.get(p).map(|w| w.phase)
    }

    /// How many files wait (in any phase).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// The reference: per file its phase and event flag, per directory whether its look is
    /// in flight and hurried; every answer computed from these when asked.
    #[derive(Debug, Default)]
    struct Reference {
        files: BTreeMap<PathBuf, (Phase, bool)>,
        looking: BTreeMap<PathBuf, bool>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Wait {
            file: usize,
            after: u64,
            event: bool,
        },
        Advance {
            ms: u64,
        },
        StartLooks,
        Hurry {
            dir: usize,
        },
        Answer {
            dir: usize,
            verdicts: Vec<u8>,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..9usize, 0..300u64, any::<bool>())
                .prop_map(|(file, after, event)| Op::Wait { file, after, event }),
            2 => (1..200u64).prop_map(|ms| Op::Advance { ms }),
            2 => Just(Op::StartLooks),
            1 => (0..3usize).prop_map(|dir| Op::Hurry { dir }),
            2 => (0..3usize, proptest::collection::vec(0..3u8, 9))
                .prop_map(|(dir, verdicts)| Op::Answer { dir, verdicts }),
        ]
    }

    fn path(i: usize) -> PathBuf {
        PathBuf::from(format!("/d/t{}/nb-{i}-big-Data.db", i % 3))
    }

    fn dir(i: usize) -> PathBuf {
        PathBuf::from(format!("/d/t{i}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Each file is in exactly the phase a plain map says after any sequence of waits,
        /// clock steps, looks started, hurries and answers; a look never holds a file twice,
        /// nor a directory with a look in flight; an event is passed to exactly one look;
        /// a file asked for during its look is never dropped by that look's answer.
        #[test]
        fn the_model_matches_a_plain_map_of_each_waiting_file(ops in proptest::collection::vec(op(), 1..80)) {
            let t0 = Instant::now();
            let mut now = 0u64;
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let mut m = WaitingFiles::default();
            let mut r = Reference::default();
            let mut in_flight: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Wait { file, after, event } => {
                        let (p, t) = (path(file), at(now + after));
                        m.wait(&p, t, event);
                        match r.files.get_mut(&p) {
                            None => {
                                r.files.insert(p, (Phase::Until(t), event));
                            }
                            Some((ph, e)) => {
                                *e |= event;
                                *ph = match *ph {
                                    Phase::Until(u) => Phase::Until(u.min(t)),
                                    Phase::Due => Phase::Due,
                                    Phase::Looking { again } => Phase::Looking { again: Some(earliest(again, t)) },
                                };
                            }
                        }
                    }
                    Op::Advance { ms } => {
                        now += ms;
                        m.advance(at(now));
                        for (ph, _) in r.files.values_mut() {
                            if matches!(*ph, Phase::Until(u) if u <= at(now)) {
                                *ph = Phase::Due;
                            }
                        }
                    }
                    Op::StartLooks => {
                        let looks = m.start_looks();
                        let mut want: BTreeMap<PathBuf, Vec<(PathBuf, bool)>> = BTreeMap::new();
                        for (p, (ph, e)) in r.files.iter_mut() {
                            let d = p.parent().unwrap().to_path_buf();
                            if *ph == Phase::Due && !r.looking.contains_key(&d) {
                                want.entry(d).or_default().push((p.clone(), std::mem::take(e)));
                                *ph = Phase::Looking { again: None };
                            }
                        }
                        let mut got: BTreeMap<PathBuf, Vec<(PathBuf, bool)>> = BTreeMap::new();
                        for (d, mut files) in looks {
                            files.sort();
                            prop_assert!(got.insert(d.clone(), files).is_none(), "two looks at {:?}", d);
                        }
                        prop_assert_eq!(&got, &want);
                        for (d, files) in got {
                            r.looking.insert(d.clone(), false);
                            in_flight.insert(d, files.into_iter().map(|f| f.0).collect());
                        }
                    }
                    Op::Hurry { dir: i } => {
                        let d = dir(i);
                        m.hurry(&d, at(now));
                        if let Some(h) = r.looking.get_mut(&d) {
                            *h = true;
                        }
                        for (p, (ph, _)) in r.files.iter_mut() {
                            if let Phase::Until(u) = *ph {
                                if p.parent() == Some(d.as_path()) {
                                    *ph = Phase::Until(u.min(at(now)));
                                }
                            }
                        }
                    }
                    Op::Answer { dir: i, verdicts } => {
                        let d = dir(i);
                        let Some(files) = in_flight.remove(&d) else { continue };
                        let hurried = m.look_done(&d);
                        prop_assert_eq!(Some(hurried), r.looking.remove(&d));
                        for (p, v) in files.iter().zip(verdicts) {
                            let v = match v {
                                0 => Verdict::Ready,
                                1 => Verdict::Again(at(now + 50)),
                                _ => Verdict::Drop,
                            };
                            m.answered(p, v);
                            let (ph, _) = r.files.get(p).copied().expect("in the look");
                            let Phase::Looking { again } = ph else {
                                prop_assert!(false, "{:?} in a look but {:?}", p, ph);
                                unreachable!()
                            };
                            let next = match v {
                                Verdict::Again(t) => Some(earliest(again, t)),
                                _ => again,
                            };
                            match next {
                                Some(t) => r.files.get_mut(p).unwrap().0 = Phase::Until(t),
                                None => {
                                    r.files.remove(p);
                                }
                            }
                        }
                    }
                }
                for i in 0..9 {
                    let p = path(i);
                    prop_assert_eq!(m.phase(&p), r.files.get(&p).map(|f| f.0), "phase of {:?}", p);
                }
                prop_assert_eq!(m.len(), r.files.len());
                let next = r.files.values().filter_map(|f| match f.0 { Phase::Until(t) => Some(t), _ => None }).min();
                prop_assert_eq!(m.next_wake(), next);
                prop_assert_eq!(m.is_idle(), r.files.is_empty() && r.looking.is_empty());
                prop_assert_eq!(m.timers.len(), r.files.values().filter(|f| matches!(f.0, Phase::Until(_))).count());
                prop_assert_eq!(m.by_dir.values().map(BTreeSet::len).sum::<usize>(), r.files.len());
            }
        }
    }
}
