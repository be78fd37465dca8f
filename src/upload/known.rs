//! The keys the uploader knows are stored, kept compact so that memory does not grow with
//! the node (issue #10): a `-B` restart over a million stored objects used to hold a
//! `HashMap<String, Known>` of full keys (plus the whole LIST as a `Vec<ObjectInfo>`).
//!
//! Keys are grouped per directory (the part before the last `/`, held once). What a LIST
//! found is a sorted, immutable run of names in one string arena with their size and
//! LastModified (24 bytes + the name per object); what this run recorded (uploads, checks,
//! MD5 verifications, file fingerprints) is a small map beside it that shadows the run.
//! Forgetting a listed name marks its slot; the next LIST of the directory rebuilds it.

use super::Known;
use std::collections::HashMap;

/// A listed object: its name is `arena[off..off + len]` (`len`'s top bit: forgotten).
#[derive(Clone, Copy)]
struct Slot {
    size: u64,
    stored_at: i64,
    off: u32,
    len: u32,
}

const GONE: u32 = 1 << 31;

impl Slot {
    fn gone(&self) -> bool {
        self.len & GONE != 0
    }
}

#[derive(Default)]
struct Dir {
    /// The names of `listed`, concatenated.
    arena: String,
    /// What the directory's last LIST found, sorted by name.
    listed: Vec<Slot>,
    /// The `seq` of that LIST (when it started).
    listed_seq: u64,
    /// Slots of `listed` not forgotten.
    live: usize,
    /// Recorded by this run since: shadows `listed`.
    recorded: HashMap<Box<str>, Known>,
}

impl Dir {
    fn name(&self, s: &Slot) -> &str {
        let off = s.off as usize;
        &self.arena[off..off + (s.len & !GONE) as usize]
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.listed
            .binary_search_by(|s| self.name(s).cmp(name))
            .ok()
    }

    fn get(&self, name: &str) -> Option<Known> {
        if let Some(k) = self.recorded.get(name) {
            return Some(*k);
        }
        let s = self.listed[self.find(name)?];
        (!s.gone()).then_some(Known {
            size: s.size,
            verified: false,
            file: None,
            seq: self.listed_seq,
            stored_at: s.stored_at,
        })
    }

    /// The newest index known in this directory: (LastModified, name). Among the same
    /// second, the order tableslurp and tablechop use ([`crate::restore::newness`]): the
    /// higher SSTable generation, then the greater name. (By name alone `nb-99-big` beat
    /// `nb-111-big`: a restart over such a tie took the older listing as the restore point
    /// and stored again, as superseded, every SSTable only the newer one named.)
    fn newest_index(&self) -> Option<(i64, &str)> {
        let listed = self
            .listed
            .iter()
            .filter(|s| !s.gone() && !self.recorded.contains_key(self.name(s)))
            .map(|s| (s.stored_at, self.name(s)));
        let recorded = self.recorded.iter().map(|(n, k)| (k.stored_at, n.as_ref()));
        listed
            .chain(recorded)
            .filter_map(|(t, n)| {
                let data = n.strip_suffix(crate::layout::INDEX_SUFFIX)?;
                Some((t, crate::layout::sstable_generation(data), n))
            })
            .max()
            .map(|(t, _, n)| (t, n))
    }

    fn is_empty(&self) -> bool {
        self.recorded.is_empty() && self.live == 0
    }

    fn len(&self) -> usize {
        let listed = self
            .listed
            .iter()
            .filter(|s| !s.gone() && !self.recorded.contains_key(self.name(s)))
            .count();
        listed + self.recorded.len()
    }
}

fn split(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

/// Every key known to be stored, per directory.
#[derive(Default)]
pub(super) struct KnownSet {
    dirs: HashMap<Box<str>, Dir>,
}

impl KnownSet {
    pub(super) fn get(&self, key: &str) -> Option<Known> {
        let (d, n) = split(key);
        self.dirs.get(d)?.get(n)
    }

    pub(super) fn insert(&mut self, key: &str, k: Known) {
        let (d, n) = split(key);
        match self.dirs.get_mut(d) {
            Some(dir) => {
                dir.recorded.insert(n.into(), k);
            }
            None => {
                let mut dir = Dir::default();
                dir.recorded.insert(n.into(), k);
                self.dirs.insert(d.into(), dir);
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        let (d, n) = split(key);
        let Some(dir) = self.dirs.get_mut(d) else {
            return;
        };
        dir.recorded.remove(n);
        if let Some(i) = dir.find(n) {
            if !dir.listed[i].gone() {
                dir.listed[i].len |= GONE;
                dir.live -= 1;
            }
        }
        if dir.is_empty() {
            self.dirs.remove(d);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.dirs.values().map(Dir::len).sum()
    }

    /// The names known stored directly in directory key `dir` (`DIRKEY`, no trailing `/`).
    pub(super) fn names_in(&self, dir: &str) -> Vec<String> {
        let Some(d) = self.dirs.get(dir) else {
            return vec![];
        };
        let listed = d
            .listed
            .iter()
            .filter(|s| !s.gone() && !d.recorded.contains_key(d.name(s)))
            .map(|s| d.name(s).to_string());
        listed
            .chain(d.recorded.keys().map(|n| n.to_string()))
            .collect()
    }

    /// For each directory key at or below `under` (`DIRKEY/`) that holds an index: the
    /// directory key and the name of its newest index (by LastModified, then name).
    pub(super) fn newest_indexes_under(&self, under: &str) -> Vec<(String, String)> {
        let top = under.trim_end_matches('/');
        self.dirs
            .iter()
            .filter(|(dk, _)| dk.as_ref() == top || dk.starts_with(under))
            .filter_map(|(dk, d)| Some((dk.to_string(), d.newest_index()?.1.to_string())))
            .collect()
    }

    /// The LastModified (seconds) of the newest index known stored directly in directory
    /// key `dir` (`DIRKEY`, no trailing `/`), if any.
    pub(super) fn newest_index_at(&self, dir: &str) -> Option<i64> {
        Some(self.dirs.get(dir)?.newest_index()?.0)
    }

    /// Replaces what is known under `under` (`DIRKEY/`) by a LIST that started at
    /// `started`, keeping records newer than it (made while it ran: it cannot tell that
    /// they are gone), and the MD5 verification and fingerprint of objects it found with
    /// the same size.
    pub(super) fn replace_under(&mut self, under: &str, list: Listing, started: u64) {
        let top = under.trim_end_matches('/');
        let inside = |d: &str| d == top || d.starts_with(under);
        let stale: Vec<Box<str>> = self.dirs.keys().filter(|d| inside(d)).cloned().collect();
        let mut old: HashMap<Box<str>, Dir> = stale
            .into_iter()
            .filter_map(|d| self.dirs.remove_entry(&d))
            .collect();
        for (d, mut dir) in list.dirs {
            dir.listed_seq = started;
            for k in dir.recorded.values_mut() {
                k.seq = started; // names beyond the arena's reach (see `Listing::push`)
            }
            if let Some(o) = old.remove(&d) {
                for (n, k) in o.recorded {
                    if k.seq > started {
                        dir.recorded.insert(n, k);
                        continue;
                    }
                    let Some(s) = dir.find(&n).map(|i| dir.listed[i]) else {
                        continue;
                    };
                    if s.size == k.size && (k.verified || k.file.is_some()) {
                        let kept = Known {
                            size: s.size,
                            seq: started,
                            stored_at: s.stored_at,
                            ..k
                        };
                        dir.recorded.insert(n, kept);
                    }
                }
            }
            if !dir.is_empty() {
                self.dirs.insert(d, dir);
            }
        }
        for (d, mut o) in old {
            o.recorded.retain(|_, k| k.seq > started);
            o.listed = Vec::new();
            o.arena = String::new();
            o.live = 0;
            if !o.recorded.is_empty() {
                self.dirs.insert(d, o);
            }
        }
    }
}

/// A LIST being read, object by object, into the compact form.
#[derive(Default)]
pub(super) struct Listing {
    dirs: HashMap<Box<str>, Dir>,
    count: usize,
}

impl Listing {
    pub(super) fn push(&mut self, key: &str, size: u64, stored_at: i64) {
        let (d, n) = split(key);
        self.count += 1;
        if !self.dirs.contains_key(d) {
            self.dirs.insert(d.into(), Dir::default());
        }
        let dir = self.dirs.get_mut(d).expect("inserted above");
        let (Ok(off), Ok(len)) = (u32::try_from(dir.arena.len()), u32::try_from(n.len())) else {
            // Beyond 4 GiB of names in one directory: kept as a record instead.
            dir.recorded.insert(
                n.into(),
                Known {
                    size,
                    verified: false,
                    file: None,
                    seq: 0,
                    stored_at,
                },
            );
            return;
        };
        if len >= GONE {
            return;
        }
        dir.arena.push_str(n);
        dir.listed.push(Slot {
            size,
            stored_at,
            off,
            len,
        });
    }

    /// How many objects were pushed.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// Sorts each directory's names and gives back spare capacity.
    pub(super) fn finish(mut self) -> Self {
        for dir in self.dirs.values_mut() {
            let arena = std::mem::take(&mut dir.arena);
            let name = |s: &Slot| &arena[s.off as usize..(s.off + s.len) as usize];
            dir.listed.sort_by(|a, b| name(a).cmp(name(b)));
            dir.listed.dedup_by(|a, b| name(a) == name(b));
            dir.listed.shrink_to_fit();
            dir.live = dir.listed.len();
            dir.arena = arena;
            dir.arena.shrink_to_fit();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(size: u64, seq: u64) -> Known {
        Known {
            size,
            verified: true,
            file: Some((1, 2, 3)),
            seq,
            stored_at: 7,
        }
    }

    fn listing(keys: &[(&str, u64)]) -> Listing {
        let mut l = Listing::default();
        for (k, s) in keys {
            l.push(k, *s, 100);
        }
        l.finish()
    }

    /// Indexes of one second (the original's, a generated bucket, a restart within the
    /// second of the last write): the newest is the one tableslurp restores, the higher
    /// generation, not the greater name (`nb-99` > `nb-111` as strings).
    #[test]
    fn same_second_indexes_are_ordered_as_tableslurp_orders_them() {
        let mut set = KnownSet::default();
        let l = listing(&[
            ("h:/d/t/nb-99-big-Data.db-listdir.json", 1),
            ("h:/d/t/nb-111-big-Data.db-listdir.json", 1),
            ("h:/d/t/nb-111-big-Data.db", 1),
            ("h:/d/t/nb-99-big-Data.db", 1),
        ]);
        set.replace_under("h:/d/", l, 1);
        assert_eq!(
            set.newest_indexes_under("h:/d/"),
            [(
                "h:/d/t".to_string(),
                "nb-111-big-Data.db-listdir.json".to_string()
            )]
        );
        // A later second wins whatever its generation.
        let later = Known {
            stored_at: 101,
            ..known(1, 2)
        };
        set.insert("h:/d/t/nb-5-big-Data.db-listdir.json", later);
        assert_eq!(
            set.newest_indexes_under("h:/d/")[0].1,
            "nb-5-big-Data.db-listdir.json"
        );
    }

    #[test]
    fn listed_names_are_found_per_directory_and_forgotten() {
        let mut set = KnownSet::default();
        let l = listing(&[
            ("h:/d/t/nb-2-big-Data.db", 20),
            ("h:/d/t/snapshots/s/nb-1-big-Data.db", 5),
            ("h:/d/t/nb-1-big-Data.db", 10),
            ("h:/d/u/x", 1),
        ]);
        assert_eq!(l.count(), 4);
        set.replace_under("h:/d/", l, 3);
        let k = set.get("h:/d/t/nb-1-big-Data.db").unwrap();
        assert_eq!(
            (k.size, k.verified, k.file, k.seq, k.stored_at),
            (10, false, None, 3, 100)
        );
        assert_eq!(
            set.get("h:/d/t/snapshots/s/nb-1-big-Data.db").unwrap().size,
            5
        );
        assert!(set.get("h:/d/t/nb-3-big-Data.db").is_none());
        assert!(set.get("h:/d/nb-1-big-Data.db").is_none());
        assert_eq!(set.len(), 4);
        set.remove("h:/d/t/nb-1-big-Data.db");
        assert!(set.get("h:/d/t/nb-1-big-Data.db").is_none());
        assert_eq!(set.len(), 3);
        set.insert("h:/d/t/nb-1-big-Data.db", known(11, 4));
        assert_eq!(set.get("h:/d/t/nb-1-big-Data.db").unwrap().size, 11);
        assert_eq!(set.len(), 4);
        set.remove("h:/d/u/x");
        assert!(
            !set.dirs.contains_key("h:/d/u"),
            "an empty directory is dropped"
        );
    }

    #[test]
    fn a_list_keeps_newer_records_and_verifications_of_unchanged_objects() {
        let mut set = KnownSet::default();
        set.replace_under("h:/d/", listing(&[("h:/d/a", 1), ("h:/d/b", 2)]), 0);
        set.insert("h:/d/a", known(1, 1)); // verified, same size below: kept as verified
        set.insert("h:/d/b", known(2, 2)); // its object is gone from the next LIST
        set.insert("h:/d/c", known(3, 6)); // recorded while the next LIST ran: kept
        set.insert("h:/other/x", known(4, 2)); // outside the listed directory: untouched
        set.insert("h:/dx/y", known(4, 2)); // "h:/dx" is not under "h:/d/"
        set.replace_under("h:/d/", listing(&[("h:/d/a", 1), ("h:/d/e/f", 9)]), 5);
        let a = set.get("h:/d/a").unwrap();
        assert_eq!(
            (a.verified, a.file, a.seq, a.stored_at),
            (true, Some((1, 2, 3)), 5, 100)
        );
        assert!(
            set.get("h:/d/b").is_none(),
            "deleted by someone else: forgotten"
        );
        assert_eq!(set.get("h:/d/c").unwrap().seq, 6);
        assert_eq!(set.get("h:/d/e/f").unwrap().size, 9);
        assert!(set.get("h:/other/x").is_some());
        assert!(set.get("h:/dx/y").is_some());
        // A verified record whose object changed size is not carried over.
        set.insert("h:/d/a", known(1, 7));
        set.replace_under("h:/d/", listing(&[("h:/d/a", 2)]), 8);
        let a = set.get("h:/d/a").unwrap();
        assert_eq!((a.size, a.verified, a.file), (2, false, None));
        assert!(set.get("h:/d/c").is_none() && set.get("h:/d/e/f").is_none());
    }
}
