//! Retention (`tablechop`): which objects under `PREFIX+NAME+SEP+PATH/` may be deleted.
//!
//! The original kept only the newest index across the whole PATH (upstream #79): a table that
//! had not flushed for AGE_DAYS lost the files its only index named, so its backup could no
//! longer be restored. Here the rules are applied **per table directory**, and the decision is
//! the pure function [`decide`] so that every rule is unit-tested:
//!
//! 1. in every live directory, the newest index is kept, whatever its age (a snapshot's
//!    `snapshots/<tag>/` and the incremental `backups/` directories are not live: their
//!    indexes expire by age like any other, as in the original, so cleared snapshots go);
//! 2. every index younger than AGE is kept;
//! 3. every object a kept index names is kept;
//! 4. no object younger than AGE is deleted (it may belong to an index not yet written);
//! 5. nothing outside `PREFIX+NAME+SEP+PATH/` is ever touched;
//! 6. a kept index that cannot be read keeps everything under its directory;
//! 8. a superseded copy (`DIR/tablesnap-was-<ms>-NAME`, the bytes NAME held before
//!    tablesnap stored other bytes under it) is kept while a kept index of its directory made
//!    at or before it names NAME: tableslurp restores that index's NAME from it;
//! 9. a directory's `tablesnap-held.json` (the inputs its restore points keep naming for
//!    an output on another data directory not named there yet) is kept: the daemon reads
//!    it at a restart and deletes it itself once nothing is held;
//! 7. whatever AGE (even 0), no object stored in the same second as its directory's newest
//!    index or later is deleted, while that index is kept: tablesnap stores files before the index that names them,
//!    so such an object may be named by the next index (tablechop running beside the
//!    daemon must not delete what it is about to name); in a directory with no index at
//!    all, objects younger than [`INDEX_GRACE`] are kept for the same reason.
//!
//! Everything else under the prefix, old indexes included, is deleted.
//!
//! Memory is bounded by the listing, not by the index bodies: the listing is folded into
//! [`Tables`] (per directory: name, size, date of each object), the kept indexes of each
//! table are chosen from it ([`Tables::kept_indexes`]), their bodies are read one at a time
//! and their names folded into one set per directory ([`Kept`]), then each table is decided
//! on its own ([`Tables::decide`]) and every decision handed to the caller as it is made.
//! [`kept_indexes`] and [`decide`] are the same rules on a plain listing, for tests and small
//! callers.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};

use crate::layout::{self, INDEX_SUFFIX, Layout, Listing};
use crate::store::ObjectInfo;

/// What to keep and what to delete, keys sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    pub keep: Vec<String>,
    pub delete: Vec<String>,
    pub kept_bytes: u64,
    pub deleted_bytes: u64,
    /// Kept indexes whose body was missing or unreadable (their whole directory is kept).
    pub unreadable: Vec<String>,
}

/// Where retention applies: `PREFIX+NAME+SEP+PATH/`.
#[derive(Debug, Clone)]
pub struct Scope {
    pub layout: Layout,
    /// An absolute path on the backed-up host, without a trailing `/`.
    pub path: String,
}

impl Scope {
    pub fn new(layout: Layout, path: &str) -> Self {
        let p = path.trim_end_matches('/');
        Self {
            layout,
            path: if p.is_empty() { "/".into() } else { p.into() },
        }
    }

    /// The key "directory" listed (no trailing `/`).
    pub fn dir_key(&self) -> String {
        self.layout
            .data_key(if self.path == "/" { "" } else { &self.path })
    }

    /// Whether a key lies strictly under the scope.
    pub fn contains(&self, key: &str) -> bool {
        key.strip_prefix(&self.dir_key())
            .is_some_and(|r| r.starts_with('/'))
    }
}

/// How long an object of a directory without any index is kept whatever AGE (rule 7): the
/// daemon writes a directory's first index once its first complete SSTable is stored, which
/// for a large one can take hours.
pub const INDEX_GRACE: Duration = Duration::days(1);

/// Why an object is kept or deleted (the `reason` of `tablechop --json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The newest index of its directory, kept whatever its age.
    NewestIndex,
    /// An index younger than AGE_DAYS.
    YoungIndex,
    /// Named by a kept index.
    Named,
    /// Under the directory of a kept index that could not be read.
    UnreadableIndex,
    /// Younger than AGE_DAYS (it may belong to an index not written yet).
    Young,
    /// Not older than its directory's newest index (or, with no index, than
    /// [`INDEX_GRACE`]): the next index may name it (rule 7).
    AwaitingIndex,
    /// A superseded copy (`tablesnap-was-<ms>-NAME`) of the bytes a kept index made before
    /// it names under NAME (rule 8).
    Superseded,
    /// The record of inputs held for other data directories (`tablesnap-held.json`): the
    /// daemon deletes it when nothing is held (rule 9).
    Holds,
    /// Older than AGE_DAYS and named by no kept index.
    Old,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NewestIndex => "newest index of its directory",
            Reason::YoungIndex => "index younger than AGE_DAYS",
            Reason::Named => "named by a kept index",
            Reason::UnreadableIndex => "in the directory of a kept index that could not be read",
            Reason::Young => "younger than AGE_DAYS",
            Reason::AwaitingIndex => {
                "not older than its directory's newest index (the next index may name it)"
            }
            Reason::Superseded => {
                "the bytes a kept older index names under a name stored again since"
            }
            Reason::Holds => {
                "the inputs tablesnap holds for other data directories (it deletes this itself)"
            }
            Reason::Old => "older than AGE_DAYS and named by no kept index",
        }
    }
}

/// One decision about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'a> {
    pub key: &'a str,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    pub delete: bool,
    pub reason: Reason,
}

/// One object of a directory, in as little memory as its listing entry allows.
#[derive(Debug, Clone)]
struct Entry {
    name: Box<str>,
    size: u64,
    modified: DateTime<Utc>,
}

/// The listing of a scope, folded per directory on the host (`/data/ks/t-1` → its objects).
#[derive(Debug)]
pub struct Tables {
    scope: Scope,
    dirs: BTreeMap<Box<str>, Vec<Entry>>,
    objects: u64,
}

/// The names kept indexes list, one set per directory, plus the directories whose kept
/// index could not be read (kept whole, subdirectories included).
#[derive(Debug, Default)]
pub struct Kept {
    names: HashMap<Box<str>, HashSet<Box<str>>>,
    whole: HashSet<Box<str>>,
}

impl Kept {
    /// Records that a kept index of `index_dir`, whose body describes `body_dir`, names `name`.
    /// The original keeps `body_dir/name`; the index's own directory is the same in every
    /// sane bucket, and keeping both is the safe side when they differ.
    pub fn add(&mut self, index_dir: &str, body_dir: &str, name: &str) {
        let body_dir = body_dir.trim_end_matches('/');
        self.insert(index_dir, name);
        if body_dir != index_dir {
            self.insert(if body_dir.is_empty() { "/" } else { body_dir }, name);
        }
    }

    fn insert(&mut self, dir: &str, name: &str) {
        match self.names.get_mut(dir) {
            Some(set) => {
                if !set.contains(name) {
                    set.insert(name.into());
                }
            }
            None => {
                self.names
                    .entry(dir.into())
                    .or_default()
                    .insert(name.into());
            }
        }
    }

    /// A kept index of `dir` could not be read: keep everything under `dir`.
    pub fn keep_whole(&mut self, dir: &str) {
        self.whole.insert(dir.into());
    }

    fn named(&self, dir: &str, name: &str) -> bool {
        self.names.get(dir).is_some_and(|s| s.contains(name))
    }

    fn whole(&self, mut dir: &str) -> bool {
        loop {
            if self.whole.contains(dir) {
                return true;
            }
            match dir.rfind('/') {
                Some(0) if dir.len() > 1 => dir = "/",
                Some(i) if i > 0 => dir = &dir[..i],
                _ => return false,
            }
        }
    }
}

/// A kept index: its key, its directory on the host, and why it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptIndex {
    pub key: String,
    pub dir: String,
    pub reason: Reason,
}

fn young(t: DateTime<Utc>, now: DateTime<Utc>, age: Duration) -> bool {
    now.signed_duration_since(t) < age
}

/// "Newer" among the indexes of one directory: LastModified at one-second resolution (what
/// S3 listings give), then the SSTable generation of the data file (written later), then the
/// name. The same order tableslurp uses to pick the index it restores.
fn newness(e: &Entry) -> (i64, Option<layout::Generation>, &str) {
    let data = e.name.strip_suffix(INDEX_SUFFIX).unwrap_or("");
    (
        e.modified.timestamp(),
        layout::sstable_generation(data),
        &e.name,
    )
}

impl Tables {
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            dirs: BTreeMap::new(),
            objects: 0,
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Objects folded in so far.
    pub fn len(&self) -> u64 {
        self.objects
    }

    pub fn is_empty(&self) -> bool {
        self.objects == 0
    }

    /// Folds one listed object in; objects outside the scope are ignored (rule 5).
    pub fn add(&mut self, o: &ObjectInfo) {
        self.add_parts(&o.key, o.size, o.last_modified);
    }

    pub fn add_parts(&mut self, key: &str, size: u64, modified: DateTime<Utc>) {
        if !self.scope.contains(key) {
            return;
        }
        let Some(path) = self.scope.layout.path_of(key) else {
            return;
        };
        let (dir, name) = layout::split_dir(path);
        let e = Entry {
            name: name.into(),
            size,
            modified,
        };
        match self.dirs.get_mut(dir) {
            Some(v) => v.push(e),
            None => {
                self.dirs.insert(dir.into(), vec![e]);
            }
        }
        self.objects += 1;
    }

    /// The indexes to keep (rules 1 and 2), in key order: their bodies feed [`Kept`].
    pub fn kept_indexes(&self, now: DateTime<Utc>, age: Duration) -> Vec<KeptIndex> {
        let mut out = Vec::new();
        for (dir, entries) in &self.dirs {
            for (e, reason) in kept_in_dir(dir, entries, now, age) {
                out.push(KeptIndex {
                    key: self.key(dir, &e.name),
                    dir: dir.to_string(),
                    reason,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The newest index of every directory, snapshots and backups included (what the
    /// Object Lock keeper keeps locked, with what it names), in key order.
    pub fn newest_indexes(&self) -> Vec<KeptIndex> {
        let mut out: Vec<KeptIndex> = self
            .dirs
            .iter()
            .filter_map(|(dir, entries)| {
                let newest = entries
                    .iter()
                    .filter(|e| e.name.ends_with(INDEX_SUFFIX))
                    .max_by(|a, b| newness(a).cmp(&newness(b)))?;
                Some(KeptIndex {
                    key: self.key(dir, &newest.name),
                    dir: dir.to_string(),
                    reason: Reason::NewestIndex,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    fn key(&self, dir: &str, name: &str) -> String {
        let d = if dir == "/" { "" } else { dir };
        self.scope.layout.data_key(&format!("{d}/{name}"))
    }

    /// The directories (on the host) that hold objects, in order: decide them one by one
    /// with [`Tables::decide_dir`].
    pub fn dirs(&self) -> impl Iterator<Item = &str> {
        self.dirs.keys().map(|d| &**d)
    }

    /// Decides every object, table by table, handing each decision to `on` as it is made
    /// (rules 1-6; `kept` must hold the names of every [`Tables::kept_indexes`] body, or mark
    /// its directory whole).
    pub fn decide(
        &self,
        kept: &Kept,
        now: DateTime<Utc>,
        age: Duration,
        mut on: impl FnMut(&Verdict<'_>),
    ) {
        for dir in self.dirs.keys() {
            self.decide_dir(dir, kept, now, age, &mut on);
        }
    }

    /// Decides the objects directly in `dir`, in name order.
    pub fn decide_dir(
        &self,
        dir: &str,
        kept: &Kept,
        now: DateTime<Utc>,
        age: Duration,
        mut on: impl FnMut(&Verdict<'_>),
    ) {
        let Some(entries) = self.dirs.get(dir) else {
            return;
        };
        let kept_idx: HashMap<&str, Reason> = kept_in_dir(dir, entries, now, age)
            .into_iter()
            .map(|(e, r)| (&*e.name, r))
            .collect();
        let whole = kept.whole(dir);
        let newest_index = entries
            .iter()
            .filter(|e| e.name.ends_with(INDEX_SUFFIX))
            .map(|e| e.modified.timestamp())
            .max();
        // Rule 7 waits for a next index only where the newest is still kept (always in a
        // live directory; a snapshot whose indexes expired gets none).
        let newest_kept = entries.iter().any(|e| {
            Some(e.modified.timestamp()) == newest_index && kept_idx.contains_key(&*e.name)
        });
        // Indexes are never "about to be named": rule 7 is for the objects they name.
        let awaiting = |e: &Entry| {
            !e.name.ends_with(INDEX_SUFFIX)
                && match newest_index {
                    Some(t) => newest_kept && e.modified.timestamp() >= t,
                    None => young(e.modified, now, INDEX_GRACE),
                }
        };
        // Rule 8: the oldest kept index of the directory; a superseded copy made after it
        // may hold what a kept index names (each is restored from the first copy made at
        // or after it), so it stays while such an index names its file.
        let oldest_kept = entries
            .iter()
            .filter(|e| kept_idx.contains_key(&*e.name))
            .map(|e| e.modified)
            .min();
        let needed_copy = |e: &Entry| {
            layout::parse_superseded(&e.name).is_some_and(|(_, original)| {
                kept.named(dir, original) && oldest_kept.is_some_and(|t| t <= e.modified)
            })
        };
        let mut order: Vec<&Entry> = entries.iter().collect();
        order.sort_by(|a, b| a.name.cmp(&b.name));
        for e in order {
            let reason = if let Some(r) = kept_idx.get(&*e.name) {
                *r
            } else if kept.named(dir, &e.name) {
                Reason::Named
            } else if needed_copy(e) {
                Reason::Superseded
            } else if &*e.name == layout::HOLDS_NAME {
                Reason::Holds
            } else if whole {
                Reason::UnreadableIndex
            } else if awaiting(e) {
                Reason::AwaitingIndex
            } else if young(e.modified, now, age) {
                Reason::Young
            } else {
                Reason::Old
            };
            on(&Verdict {
                key: &self.key(dir, &e.name),
                size: e.size,
                last_modified: e.modified,
                delete: reason == Reason::Old,
                reason,
            });
        }
    }
}

/// Rules 1 and 2 in one directory: its newest index (live directories only), and every index
/// younger than AGE.
fn kept_in_dir<'a>(
    dir: &str,
    entries: &'a [Entry],
    now: DateTime<Utc>,
    age: Duration,
) -> Vec<(&'a Entry, Reason)> {
    let live =
        crate::cassandra::dir_kind(std::path::Path::new(dir)) == crate::cassandra::DirKind::Live;
    let idx = entries.iter().filter(|e| e.name.ends_with(INDEX_SUFFIX));
    let Some(newest) = idx.clone().max_by(|a, b| newness(a).cmp(&newness(b))) else {
        return Vec::new();
    };
    idx.filter_map(|e| {
        if live && std::ptr::eq(e, newest) {
            Some((e, Reason::NewestIndex))
        } else if young(e.modified, now, age) {
            Some((e, Reason::YoungIndex))
        } else {
            None
        }
    })
    .collect()
}

/// The indexes to keep (rules 1 and 2) of a plain listing: the bodies of these are needed by
/// [`decide`].
pub fn kept_indexes(
    objects: &[ObjectInfo],
    scope: &Scope,
    now: DateTime<Utc>,
    age: Duration,
) -> Vec<String> {
    let mut t = Tables::new(scope.clone());
    for o in objects {
        t.add(o);
    }
    t.kept_indexes(now, age)
        .into_iter()
        .map(|k| k.key)
        .collect()
}

/// Decides what to delete. `objects` is the listing of the scope (anything outside it is
/// ignored), `indexes` the parsed bodies of (at least) the [`kept_indexes`]; a kept index
/// without a body keeps its whole directory.
pub fn decide(
    objects: &[ObjectInfo],
    indexes: &HashMap<String, Listing>,
    scope: &Scope,
    now: DateTime<Utc>,
    age: Duration,
) -> Decision {
    let mut t = Tables::new(scope.clone());
    for o in objects {
        t.add(o);
    }
    let mut kept = Kept::default();
    let mut d = Decision::default();
    for k in t.kept_indexes(now, age) {
        match indexes.get(&k.key) {
            Some(l) => {
                for n in &l.names {
                    kept.add(&k.dir, &l.dir, n);
                }
            }
            None => {
                kept.keep_whole(&k.dir);
                d.unreadable.push(k.key);
            }
        }
    }
    t.decide(&kept, now, age, |v| {
        if v.delete {
            d.delete.push(v.key.to_string());
            d.deleted_bytes += v.size;
        } else {
            d.keep.push(v.key.to_string());
            d.kept_bytes += v.size;
        }
    });
    d.keep.sort();
    d.keep.dedup();
    d.delete.sort();
    d.delete.dedup();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const DAY: i64 = 86_400;
    const NOW: i64 = 100 * DAY;

    fn obj(key: &str, days_old: f64) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: 10,
            last_modified: Utc
                .timestamp_opt(NOW - (days_old * DAY as f64) as i64, 0)
                .unwrap(),
            e_tag: None,
            metadata: HashMap::new(),
        }
    }

    struct Case {
        name: &'static str,
        /// (key, age in days)
        objects: Vec<(&'static str, f64)>,
        /// index key → names (unlisted indexes are unreadable)
        bodies: Vec<(&'static str, &'static str, Vec<&'static str>)>,
        age_days: i64,
        delete: Vec<&'static str>,
    }

    fn run(c: &Case) -> Decision {
        let objects: Vec<ObjectInfo> = c.objects.iter().map(|(k, a)| obj(k, *a)).collect();
        let indexes = c
            .bodies
            .iter()
            .map(|(k, dir, names)| {
                (
                    k.to_string(),
                    Listing {
                        dir: dir.to_string(),
                        names: names.iter().map(|s| s.to_string()).collect(),
                    },
                )
            })
            .collect();
        let scope = Scope::new(Layout::new("", "h", ":"), "/d");
        decide(
            &objects,
            &indexes,
            &scope,
            Utc.timestamp_opt(NOW, 0).unwrap(),
            Duration::days(c.age_days),
        )
    }

    #[test]
    fn a_superseded_copy_is_kept_as_such_only_after_a_kept_index_naming_its_file() {
        let scope = Scope::new(Layout::new("", "h", ":"), "/d");
        let mut t = Tables::new(scope);
        for (k, a) in [
            ("h:/d/t/nb-1-big-Data.db-listdir.json", 3.0),
            ("h:/d/t/tablesnap-was-1-nb-1-big-Data.db", 2.5),
            ("h:/d/t/tablesnap-was-2-nb-2-big-Data.db", 2.5),
            ("h:/d/t/tablesnap-was-0-nb-1-big-Data.db", 3.5),
            ("h:/d/t/nb-1-big-Data.db", 2.5),
        ] {
            t.add(&obj(k, a));
        }
        let mut kept = Kept::default();
        kept.add("/d/t", "/d/t", "nb-1-big-Data.db");
        let mut reasons = BTreeMap::new();
        t.decide_dir(
            "/d/t",
            &kept,
            Utc.timestamp_opt(NOW, 0).unwrap(),
            Duration::days(0),
            |v| {
                reasons.insert(v.key.to_string(), (v.reason, v.delete));
            },
        );
        let r = |k: &str| reasons[&format!("h:/d/t/{k}")];
        assert_eq!(
            r("tablesnap-was-1-nb-1-big-Data.db"),
            (Reason::Superseded, false)
        );
        // The newest index names no nb-2: that copy only waits like any later object.
        assert_eq!(
            r("tablesnap-was-2-nb-2-big-Data.db"),
            (Reason::AwaitingIndex, false)
        );
        // Made before every kept index: no kept restore point reads it.
        assert_eq!(r("tablesnap-was-0-nb-1-big-Data.db"), (Reason::Old, true));
        assert_eq!(r("nb-1-big-Data.db"), (Reason::Named, false));
    }

    /// Rule 9: the daemon's record of held inputs outlives AGE_DAYS (0 here) and the
    /// newest index: a restart needs it while an output on another disk uploads.
    #[test]
    fn the_record_of_held_inputs_is_kept_whatever_its_age() {
        let mut t = Tables::new(Scope::new(Layout::new("", "h", ":"), "/d"));
        for (k, a) in [
            ("h:/d/t/nb-1-big-Data.db-listdir.json", 1.0),
            ("h:/d/t/tablesnap-held.json", 3.0),
            ("h:/d/t/nb-9-big-Data.db", 3.0),
        ] {
            t.add(&obj(k, a));
        }
        let mut reasons = BTreeMap::new();
        t.decide_dir(
            "/d/t",
            &Kept::default(),
            Utc.timestamp_opt(NOW, 0).unwrap(),
            Duration::days(0),
            |v| {
                reasons.insert(v.key.to_string(), (v.reason, v.delete));
            },
        );
        assert_eq!(
            reasons["h:/d/t/tablesnap-held.json"],
            (Reason::Holds, false)
        );
        assert_eq!(reasons["h:/d/t/nb-9-big-Data.db"], (Reason::Old, true));
    }

    #[test]
    fn decide_table_of_cases() {
        let cases = vec![
            Case {
                name: "old index superseded by a young one is deleted with its files",
                objects: vec![
                    ("h:/d/t/a-1-Data.db", 20.0),
                    ("h:/d/t/a-1-Data.db-listdir.json", 20.0),
                    ("h:/d/t/a-2-Data.db", 1.0),
                    ("h:/d/t/a-2-Data.db-listdir.json", 1.0),
                ],
                bodies: vec![(
                    "h:/d/t/a-2-Data.db-listdir.json",
                    "/d/t",
                    vec!["a-2-Data.db"],
                )],
                age_days: 7,
                delete: vec!["h:/d/t/a-1-Data.db", "h:/d/t/a-1-Data.db-listdir.json"],
            },
            Case {
                name: "upstream #79: a table idle for AGE keeps its newest index and files",
                objects: vec![
                    ("h:/d/busy/b-9-Data.db", 0.5),
                    ("h:/d/busy/b-9-Data.db-listdir.json", 0.5),
                    ("h:/d/idle/i-1-Data.db", 30.0),
                    ("h:/d/idle/i-1-TOC.txt", 30.0),
                    ("h:/d/idle/i-1-Data.db-listdir.json", 30.0),
                    ("h:/d/idle/i-0-Data.db", 40.0),
                    ("h:/d/idle/i-0-Data.db-listdir.json", 40.0),
                ],
                bodies: vec![
                    (
                        "h:/d/busy/b-9-Data.db-listdir.json",
                        "/d/busy",
                        vec!["b-9-Data.db"],
                    ),
                    (
                        "h:/d/idle/i-1-Data.db-listdir.json",
                        "/d/idle",
                        vec!["i-1-Data.db", "i-1-TOC.txt"],
                    ),
                ],
                age_days: 7,
                delete: vec![
                    "h:/d/idle/i-0-Data.db",
                    "h:/d/idle/i-0-Data.db-listdir.json",
                ],
            },
            Case {
                name: "old files named by a kept index survive; young unnamed objects survive",
                objects: vec![
                    ("h:/d/t/old-shared.db", 50.0),
                    ("h:/d/t/old-gone.db", 50.0),
                    ("h:/d/t/young-unindexed.db", 0.1),
                    ("h:/d/t/x-3-Data.db-listdir.json", 2.0),
                ],
                bodies: vec![(
                    "h:/d/t/x-3-Data.db-listdir.json",
                    "/d/t",
                    vec!["old-shared.db"],
                )],
                age_days: 7,
                delete: vec!["h:/d/t/old-gone.db"],
            },
            Case {
                name: "every young index keeps its files, old non-newest ones go",
                objects: vec![
                    ("h:/d/t/f1", 10.0),
                    ("h:/d/t/f2", 10.0),
                    ("h:/d/t/f3", 10.0),
                    ("h:/d/t/n-1-Data.db-listdir.json", 10.0),
                    ("h:/d/t/n-2-Data.db-listdir.json", 3.0),
                    ("h:/d/t/n-3-Data.db-listdir.json", 1.0),
                ],
                bodies: vec![
                    ("h:/d/t/n-2-Data.db-listdir.json", "/d/t", vec!["f2"]),
                    ("h:/d/t/n-3-Data.db-listdir.json", "/d/t", vec!["f3"]),
                ],
                age_days: 5,
                delete: vec!["h:/d/t/f1", "h:/d/t/n-1-Data.db-listdir.json"],
            },
            Case {
                name: "nothing outside NAME:PATH/ is touched (other host, sibling path)",
                objects: vec![
                    ("h:/d/t/old", 50.0),
                    ("h:/dx/t/old", 50.0),
                    ("h2:/d/t/old", 50.0),
                    ("h:/e/old", 50.0),
                ],
                bodies: vec![],
                age_days: 1,
                delete: vec!["h:/d/t/old"],
            },
            Case {
                name: "an unreadable kept index keeps its whole directory",
                objects: vec![
                    ("h:/d/t/a", 50.0),
                    ("h:/d/t/sub/b", 50.0),
                    ("h:/d/t/z-1-Data.db-listdir.json", 50.0),
                    ("h:/d/u/c", 50.0),
                ],
                bodies: vec![],
                age_days: 1,
                delete: vec!["h:/d/u/c"],
            },
            Case {
                name: "equal LastModified: the higher generation is the newest index (the other's data, stored in that second too, waits: rule 7)",
                objects: vec![
                    ("h:/d/t/nb-9-big-Data.db", 30.0),
                    ("h:/d/t/nb-10-big-Data.db", 30.0),
                    ("h:/d/t/nb-9-big-Data.db-listdir.json", 30.0),
                    ("h:/d/t/nb-10-big-Data.db-listdir.json", 30.0),
                ],
                bodies: vec![(
                    "h:/d/t/nb-10-big-Data.db-listdir.json",
                    "/d/t",
                    vec!["nb-10-big-Data.db"],
                )],
                age_days: 7,
                delete: vec!["h:/d/t/nb-9-big-Data.db-listdir.json"],
            },
            Case {
                name: "rule 7: tablechop 0 beside the daemon keeps what was stored after the newest index",
                objects: vec![
                    ("h:/d/t/a-1-Data.db", 2.0),
                    ("h:/d/t/a-1-Data.db-listdir.json", 2.0),
                    ("h:/d/t/a-0-Data.db", 3.0),
                    ("h:/d/t/a-2-Data.db", 0.001),
                    ("h:/d/t/a-2-TOC.txt", 0.001),
                ],
                bodies: vec![(
                    "h:/d/t/a-1-Data.db-listdir.json",
                    "/d/t",
                    vec!["a-1-Data.db"],
                )],
                age_days: 0,
                delete: vec!["h:/d/t/a-0-Data.db"],
            },
            Case {
                name: "rule 8: once no kept index is older than the copy, it goes",
                objects: vec![
                    ("h:/d/t/nb-1-big-Data.db-listdir.json", 5.0),
                    ("h:/d/t/tablesnap-was-1-nb-1-big-Data.db", 4.5),
                    ("h:/d/t/tablesnap-was-2-nb-2-big-Data.db", 4.5),
                    ("h:/d/t/nb-1-big-Data.db", 3.0),
                    ("h:/d/t/tablesnap-1-listdir.json", 2.0),
                ],
                bodies: vec![
                    (
                        "h:/d/t/nb-1-big-Data.db-listdir.json",
                        "/d/t",
                        vec!["nb-1-big-Data.db"],
                    ),
                    (
                        "h:/d/t/tablesnap-1-listdir.json",
                        "/d/t",
                        vec!["nb-1-big-Data.db"],
                    ),
                ],
                age_days: 4,
                delete: vec![
                    "h:/d/t/nb-1-big-Data.db-listdir.json",
                    "h:/d/t/tablesnap-was-1-nb-1-big-Data.db",
                    "h:/d/t/tablesnap-was-2-nb-2-big-Data.db",
                ],
            },
            Case {
                name: "rule 7: with no index at all, a day's grace whatever AGE",
                objects: vec![("h:/d/t/x", 0.5), ("h:/d/t/y", 2.0)],
                bodies: vec![],
                age_days: 0,
                delete: vec!["h:/d/t/y"],
            },
            Case {
                name: "a cleared snapshot expires by age; the live table keeps its newest index",
                objects: vec![
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/nb-1-big-Data.db",
                        30.0,
                    ),
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/nb-1-big-Data.db-listdir.json",
                        30.0,
                    ),
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/snapshots/s1/nb-1-big-Data.db",
                        30.0,
                    ),
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/snapshots/s1/nb-1-big-Data.db-listdir.json",
                        30.0,
                    ),
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/snapshots/s2/nb-1-big-Data.db",
                        2.0,
                    ),
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/snapshots/s2/nb-1-big-Data.db-listdir.json",
                        2.0,
                    ),
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/backups/nb-1-big-Data.db",
                        30.0,
                    ),
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/backups/nb-1-big-Data.db-listdir.json",
                        30.0,
                    ),
                ],
                bodies: vec![
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/nb-1-big-Data.db-listdir.json",
                        "/d/ks/t-0123456789abcdef0123456789abcdef",
                        vec!["nb-1-big-Data.db"],
                    ),
                    (
                        "h:/d/ks/t-0123456789abcdef0123456789abcdef/snapshots/s2/nb-1-big-Data.db-listdir.json",
                        "/d/ks/t-0123456789abcdef0123456789abcdef/snapshots/s2",
                        vec!["nb-1-big-Data.db"],
                    ),
                ],
                age_days: 7,
                delete: vec![
                    "h:/d/ks/t-0123456789abcdef0123456789abcdef/backups/nb-1-big-Data.db",
                    "h:/d/ks/t-0123456789abcdef0123456789abcdef/backups/nb-1-big-Data.db-listdir.json",
                    "h:/d/ks/t-0123456789abcdef0123456789abcdef/snapshots/s1/nb-1-big-Data.db",
                    "h:/d/ks/t-0123456789abcdef0123456789abcdef/snapshots/s1/nb-1-big-Data.db-listdir.json",
                ],
            },
            Case {
                name: "a directory with no index at all: only old objects go",
                objects: vec![("h:/d/t/old", 8.0), ("h:/d/t/new", 6.0)],
                bodies: vec![],
                age_days: 7,
                delete: vec!["h:/d/t/old"],
            },
        ];
        for c in &cases {
            let d = run(c);
            assert_eq!(d.delete, c.delete, "{}", c.name);
            let in_scope = c
                .objects
                .iter()
                .filter(|(k, _)| k.starts_with("h:/d/"))
                .count();
            assert_eq!(d.keep.len() + d.delete.len(), in_scope, "{}", c.name);
            assert_eq!(d.deleted_bytes, 10 * d.delete.len() as u64, "{}", c.name);
        }
    }

    #[test]
    fn folded_tables_give_one_reason_per_object() {
        let scope = Scope::new(Layout::new("", "h", ":"), "/d");
        let mut t = Tables::new(scope);
        for (k, a) in [
            ("h:/d/t/n-1-Data.db-listdir.json", 40.0),
            ("h:/d/t/n-2-Data.db-listdir.json", 3.0),
            ("h:/d/t/n-3-Data.db-listdir.json", 1.0),
            ("h:/d/t/f2", 30.0),
            ("h:/d/t/f3", 30.0),
            ("h:/d/t/f-young", 2.0),
            ("h:/d/t/f-after", 0.5),
            ("h:/d/t/f-old", 30.0),
            ("h:/d/u/z-1-Data.db-listdir.json", 30.0),
            ("h:/d/u/sub/deep", 30.0),
            ("h:/d/v/named-elsewhere", 30.0),
            ("h:/other/x", 30.0),
        ] {
            t.add(&obj(k, a));
        }
        assert_eq!(t.len(), 11, "the key outside the scope is not folded in");
        let now = Utc.timestamp_opt(NOW, 0).unwrap();
        let age = Duration::days(7);
        let kept = t.kept_indexes(now, age);
        assert_eq!(
            kept.iter()
                .map(|k| (k.key.as_str(), k.dir.as_str(), k.reason))
                .collect::<Vec<_>>(),
            [
                (
                    "h:/d/t/n-2-Data.db-listdir.json",
                    "/d/t",
                    Reason::YoungIndex
                ),
                (
                    "h:/d/t/n-3-Data.db-listdir.json",
                    "/d/t",
                    Reason::NewestIndex
                ),
                (
                    "h:/d/u/z-1-Data.db-listdir.json",
                    "/d/u",
                    Reason::NewestIndex
                ),
            ]
        );
        let mut k = Kept::default();
        k.add("/d/t", "/d/t", "f2");
        // A body describing another directory keeps the name in both.
        k.add("/d/t", "/d/v/", "f3");
        k.add("/d/t", "/d/v", "named-elsewhere");
        k.keep_whole("/d/u");
        let mut got = Vec::new();
        t.decide(&k, now, age, |v| {
            assert_eq!(v.delete, v.reason == Reason::Old);
            got.push((v.key.to_string(), v.reason));
        });
        let got: Vec<(&str, Reason)> = got.iter().map(|(k, r)| (k.as_str(), *r)).collect();
        assert_eq!(
            got,
            [
                ("h:/d/t/f-after", Reason::AwaitingIndex),
                ("h:/d/t/f-old", Reason::Old),
                ("h:/d/t/f-young", Reason::Young),
                ("h:/d/t/f2", Reason::Named),
                ("h:/d/t/f3", Reason::Named),
                ("h:/d/t/n-1-Data.db-listdir.json", Reason::Old),
                ("h:/d/t/n-2-Data.db-listdir.json", Reason::YoungIndex),
                ("h:/d/t/n-3-Data.db-listdir.json", Reason::NewestIndex),
                ("h:/d/u/z-1-Data.db-listdir.json", Reason::NewestIndex),
                ("h:/d/u/sub/deep", Reason::UnreadableIndex),
                ("h:/d/v/named-elsewhere", Reason::Named),
            ]
        );
    }

    #[test]
    fn unreadable_index_is_reported() {
        let c = Case {
            name: "",
            objects: vec![("h:/d/t/z-1-Data.db-listdir.json", 50.0)],
            bodies: vec![],
            age_days: 1,
            delete: vec![],
        };
        assert_eq!(run(&c).unreadable, ["h:/d/t/z-1-Data.db-listdir.json"]);
    }

    #[test]
    fn scope_is_a_directory_not_a_string_prefix() {
        let s = Scope::new(Layout::new("p/", "h", ":"), "/var/lib/");
        assert_eq!(s.dir_key(), "p/h:/var/lib");
        assert!(s.contains("p/h:/var/lib/x"));
        assert!(!s.contains("p/h:/var/library/x"));
        assert!(!s.contains("p/h:/var/lib"));
    }
}
