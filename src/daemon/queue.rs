//! The upload queue: which queued file gets the next free upload slot.
//!
//! One first-in-first-out queue put a flush of table B behind every output of a compaction
//! of table A that committed just before it: `bench/lcs_stall.py` measured probe files of
//! another table waiting 1.2 s behind 2,400 small outputs; with real output sizes (a
//! compaction rewrites hundreds of GB) that is hours in which no other table's restore point
//! moves. Here files stay first in, first out within their directory, and the slots
//! alternate between two picks:
//!
//! * the directory with the fewest files queued (the oldest such directory on a tie): a
//!   flush's eight files go before a compaction's thousands, and a backfill finishes small
//!   tables (each with its restore point) first;
//! * the oldest file queued, whatever its directory: the big backlog still gets every other
//!   slot, so nothing waits for ever.
//!
//! Pure (no clock, no I/O); a property test checks it against a plain list.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Default)]
struct DirQueue {
    /// (seq, file), in queue order: seqs ascend.
    files: VecDeque<(i64, Arc<Path>)>,
    /// When the directory last came into the queue (tie-break among equal lengths).
    since: i64,
}

/// See the module doc. A directory is keyed by one shared `Arc<Path>` in all three maps, so
/// a push or a pop allocates nothing but a new directory's key.
#[derive(Debug, Default)]
pub struct UploadQueue {
    dirs: HashMap<Arc<Path>, DirQueue>,
    /// (files queued, since, dir): the smallest directory first.
    by_len: BTreeSet<(usize, i64, Arc<Path>)>,
    /// (seq of the directory's first file, dir): the oldest file first.
    by_age: BTreeSet<(i64, Arc<Path>)>,
    /// Next seq at the back; the next one at the front is `front - 1`.
    back: i64,
    front: i64,
    len: usize,
    /// Whose turn the next pop is: the smallest directory's (else the oldest file's).
    smallest_next: bool,
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new(""))
}

impl UploadQueue {
    pub fn new() -> Self {
        UploadQueue {
            smallest_next: true,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes `dir` out of both orders (before its queue changes).
    fn unkey(&mut self, dir: &Arc<Path>) {
        if let Some(q) = self.dirs.get(dir) {
            if let Some(&(seq, _)) = q.files.front() {
                self.by_age.remove(&(seq, dir.clone()));
            }
            self.by_len.remove(&(q.files.len(), q.since, dir.clone()));
        }
    }

    /// Puts `dir` back in both orders (after its queue changed), or forgets it when empty.
    fn rekey(&mut self, dir: Arc<Path>) {
        let Some(q) = self.dirs.get(&dir) else {
            return;
        };
        match q.files.front() {
            None => {
                self.dirs.remove(&dir);
            }
            Some(&(seq, _)) => {
                self.by_len.insert((q.files.len(), q.since, dir.clone()));
                self.by_age.insert((seq, dir));
            }
        }
    }

    /// Queues `p` behind everything.
    pub fn push_back(&mut self, p: Arc<Path>) {
        let seq = self.back;
        self.back += 1;
        self.insert(p, seq, false);
    }

    /// Puts a file just taken back at the head (its task could not start).
    pub fn push_front(&mut self, p: Arc<Path>) {
        self.front -= 1;
        self.insert(p, self.front, true);
        // The pop it undoes does not count as a turn.
        self.smallest_next = !self.smallest_next;
    }

    fn insert(&mut self, p: Arc<Path>, seq: i64, at_front: bool) {
        let dir = match self.dirs.get_key_value(dir_of(&p)) {
            Some((d, _)) => d.clone(),
            None => Arc::from(dir_of(&p)),
        };
        self.unkey(&dir);
        let q = self.dirs.entry(dir.clone()).or_insert_with(|| DirQueue {
            files: VecDeque::new(),
            since: seq,
        });
        if at_front {
            q.files.push_front((seq, p));
        } else {
            q.files.push_back((seq, p));
        }
        self.len += 1;
        self.rekey(dir);
    }

    /// The next file to upload.
    pub fn pop_front(&mut self) -> Option<Arc<Path>> {
        let dir = if self.smallest_next {
            self.by_len.first().map(|(_, _, d)| d.clone())?
        } else {
            self.by_age.first().map(|(_, d)| d.clone())?
        };
        self.smallest_next = !self.smallest_next;
        self.unkey(&dir);
        let (_, p) = self
            .dirs
            .get_mut(&dir)
            .and_then(|q| q.files.pop_front())
            .expect("a keyed directory has a file");
        self.len -= 1;
        self.rekey(dir);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    /// The model's directory of `p` (owned).
    fn dir_of(p: &Path) -> PathBuf {
        super::dir_of(p).to_path_buf()
    }

    #[test]
    fn a_flush_goes_before_a_compaction_backlog_which_still_gets_every_other_slot() {
        let mut q = UploadQueue::new();
        for i in 0..100 {
            q.push_back(PathBuf::from(format!("/d/a/out-{i}")).into());
        }
        for i in 0..3 {
            q.push_back(PathBuf::from(format!("/d/b/flush-{i}")).into());
        }
        let order: Vec<String> = std::iter::from_fn(|| q.pop_front())
            .take(8)
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "/d/b/flush-0",
                "/d/a/out-0",
                "/d/b/flush-1",
                "/d/a/out-1",
                "/d/b/flush-2",
                "/d/a/out-2",
                "/d/a/out-3",
                "/d/a/out-4"
            ]
        );
        assert_eq!(q.len(), 95);
    }

    /// The plain model: a list in queue order, each pick computed by scanning it.
    #[derive(Default)]
    struct Model {
        items: Vec<(i64, PathBuf)>,
        since: HashMap<PathBuf, i64>,
        back: i64,
        front: i64,
        smallest_next: bool,
    }

    impl Model {
        fn push_back(&mut self, p: PathBuf) {
            let d = dir_of(&p);
            let seq = self.back;
            self.back += 1;
            self.since.entry(d).or_insert(seq);
            self.items.push((seq, p));
        }
        fn push_front(&mut self, p: PathBuf) {
            let d = dir_of(&p);
            self.front -= 1;
            self.since.entry(d).or_insert(self.front);
            self.items.push((self.front, p));
            self.smallest_next = !self.smallest_next;
        }
        fn pop(&mut self) -> Option<PathBuf> {
            if self.items.is_empty() {
                return None;
            }
            let dir = if self.smallest_next {
                let mut count: HashMap<PathBuf, usize> = HashMap::new();
                for (_, p) in &self.items {
                    *count.entry(dir_of(p)).or_default() += 1;
                }
                count
                    .into_iter()
                    .min_by_key(|(d, n)| (*n, self.since[d], d.clone()))
                    .map(|(d, _)| d)?
            } else {
                // The directory whose first file is the oldest.
                let mut firsts: HashMap<PathBuf, i64> = HashMap::new();
                for (s, p) in &self.items {
                    let e = firsts.entry(dir_of(p)).or_insert(*s);
                    *e = (*e).min(*s);
                }
                firsts
                    .into_iter()
                    .min_by_key(|(d, s)| (*s, d.clone()))
                    .map(|(d, _)| d)?
            };
            self.smallest_next = !self.smallest_next;
            let i = self
                .items
                .iter()
                .enumerate()
                .filter(|(_, (_, p))| dir_of(p) == dir)
                .min_by_key(|(_, (s, _))| *s)
                .map(|(i, _)| i)?;
            let (_, p) = self.items.remove(i);
            if !self.items.iter().any(|(_, q)| dir_of(q) == dir) {
                self.since.remove(&dir);
            }
            Some(p)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        Pop,
        /// Pop, then put it back at the front.
        Unpop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..5).prop_map(Op::Push),
            3 => Just(Op::Pop),
            1 => Just(Op::Unpop),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matches_the_plain_model_and_loses_nothing(ops in proptest::collection::vec(op(), 0..200)) {
            let mut q = UploadQueue::new();
            let mut m = Model { smallest_next: true, ..Default::default() };
            let mut n = 0;
            for o in ops {
                match o {
                    Op::Push(d) => {
                        n += 1;
                        let p = PathBuf::from(format!("/data/d{d}/f{n}"));
                        q.push_back(p.clone().into());
                        m.push_back(p);
                    }
                    Op::Pop => prop_assert_eq!(q.pop_front().map(|p| p.to_path_buf()), m.pop()),
                    Op::Unpop => {
                        let (a, b) = (q.pop_front().map(|p| p.to_path_buf()), m.pop());
                        prop_assert_eq!(&a, &b);
                        if let Some(p) = a {
                            q.push_front(p.clone().into());
                            m.push_front(p);
                        }
                    }
                }
                prop_assert_eq!(q.len(), m.items.len());
                prop_assert_eq!(q.is_empty(), m.items.is_empty());
            }
            // Drained, every file comes out once, in its directory's order.
            let mut last: HashMap<PathBuf, u64> = HashMap::new();
            while let Some(p) = q.pop_front().map(|p| p.to_path_buf()) {
                let want = m.pop();
                prop_assert_eq!(Some(&p), want.as_ref());
                let f: u64 = p.file_name().unwrap().to_str().unwrap()[1..].parse().unwrap();
                let prev = last.insert(dir_of(&p), f);
                prop_assert!(prev.is_none_or(|prev| prev < f), "{} out of its directory's order", p.display());
            }
            prop_assert!(m.items.is_empty());
            prop_assert!(q.dirs.is_empty() && q.by_len.is_empty() && q.by_age.is_empty());
        }
    }
}
