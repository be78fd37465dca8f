//! Which file set to restore per table, and where each file goes: a pure function of one
//! listing (plus the chosen index bodies), so `--dry-run` shows exactly what a restore does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

pub use super::listing::{ListedDir, Listing};
pub use super::mapping::{TableMapping, existing_table_dirs};
use super::mapping::{table_map, table_prefix};
pub use super::points::{IndexCheck, needed_bodies};
use super::points::{Walk, walk};
use crate::layout::{self, INDEX_SUFFIX, Layout};
use crate::store::ObjectInfo;

/// Which file set(s) to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The newest index directly in ORIGIN (the original's default).
    Newest,
    /// The file set of `ORIGIN/FILE-listdir.json` (`-f FILE`).
    File(String),
    /// Every table directory under ORIGIN, each into `TARGET/<relative dir>` (`-r`).
    Recursive,
}

/// What to restore and where: everything [`plan`] needs besides the listings.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub layout: Layout,
    /// The directory as it was on the backed-up host, absolute, without a trailing `/`.
    pub origin: String,
    pub target: PathBuf,
    pub selection: Selection,
    /// Newest index at or before this time (1 s resolution, like LastModified).
    pub as_of: Option<DateTime<Utc>>,
    /// `--commitlogs PATH`: the archive directory on the backed-up host.
    pub commitlogs: Option<String>,
    /// Where commit logs go (default `TARGET/commitlogs`).
    pub commitlog_target: Option<PathBuf>,
    /// With `-r`: restoring into table directories that exist under another id.
    pub mapping: TableMapping,
    /// `--keep-generations`: never rename an SSTable to keep the node from reusing a
    /// generation the bucket holds ([`super::generations`]).
    pub keep_generations: bool,
}

impl RestoreOptions {
    /// The key prefix (without the trailing `/`) whose single listing drives the plan.
    pub fn origin_key(&self) -> String {
        self.layout.data_key(&self.origin)
    }
    /// The key prefix of the commit-log directory, if `--commitlogs` was given.
    pub fn commitlog_key(&self) -> Option<String> {
        self.commitlogs
            .as_deref()
            .map(|p| self.layout.data_key(p.trim_end_matches('/')))
    }
}

/// Why nothing (or not everything) can be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("ORIGIN must be an absolute path as it was on the backed-up host, got {0:?}")]
    RelativeOrigin(String),
    #[error("nothing to restore: no index (*{INDEX_SUFFIX}) found under {prefix}/{detail}")]
    NothingToRestore { prefix: String, detail: String },
    #[error("no index {key} in the bucket")]
    NoSuchIndex { key: String },
    #[error("-f expects a plain file name such as nb-7-big-Data.db, got {0:?}")]
    BadFileArg(String),
}

/// A per-table problem found while planning; the other tables are still restored.
#[derive(Debug, thiserror::Error)]
pub enum TableProblem {
    #[error("index {key} cannot be used: {why}")]
    BadIndex { key: String, why: String },
    #[error(
        "index {index} is incomplete, {} object(s) missing: {}; nothing restored for it (choose another with -f or --as-of)",
        missing.len(),
        crate::restore::escape(&missing.join(", "))
    )]
    Incomplete { index: String, missing: Vec<String> },
    #[error("index {key} was not fetched")]
    IndexNotFetched { key: String },
    #[error("directory {dir:?} (from key {key}) would be restored outside TARGET; refused")]
    Outside { key: String, dir: String },
    #[error("index {index} names {name:?}, but {key} is not in the bucket")]
    MissingObject {
        index: String,
        name: String,
        key: String,
    },
    #[error(
        "{} and {} would both be restored to {}; neither is restored (use --map-table OLD=NEW, or restore them one at a time)",
        crate::restore::escape(first),
        crate::restore::escape(second),
        dest.display()
    )]
    SameDestination {
        first: String,
        second: String,
        dest: PathBuf,
    },
}

/// What the files of one table directory (or the commit logs) share: where they are
/// listed, where they go, and which restore point they come from.
#[derive(Debug)]
pub struct FileSet {
    /// The listed directory holding the objects.
    pub listed: Arc<ListedDir>,
    /// Where the files go.
    pub target: PathBuf,
    /// The directory on the backed-up host.
    pub dir: String,
    /// The index the file set comes from (`""` for commit logs).
    pub index: String,
}

/// One file to fetch. Small on purpose (issue #18: a node's plan holds a million of them):
/// its key and name are a slot of its [`FileSet`]'s listing, its destination is derived.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    set: Arc<FileSet>,
    /// The object fetched: the name itself, or a superseded copy of it.
    stored: u32,
    /// The file's name when it differs from the stored object's (a superseded copy, a
    /// renumbered SSTable).
    renamed: Option<Box<str>>,
    /// Size from the listing.
    pub size: u64,
    /// Size of a file already at `dest` (filled by [`Plan::check_local`]).
    pub local_size: Option<u64>,
    /// For a `Data.db` whose `Digest` component is in the same file set: its slot.
    digest: Option<(u32, crate::digest::Algorithm)>,
}

/// The `Digest` component of a `Data.db`, and what to name when they disagree.
#[derive(Debug, Clone)]
pub struct DigestRef {
    /// Key of the Digest object.
    pub key: String,
    pub alg: crate::digest::Algorithm,
    /// The SSTable: the `Data.db` name without `Data.db`.
    pub sstable: String,
    /// The table directory on the backed-up host, and the index the file set comes from.
    pub dir: String,
    pub index: String,
}

impl PlannedFile {
    /// The key of the object fetched.
    pub fn key(&self) -> String {
        self.set.listed.key_of(self.stored)
    }

    /// The file's name in TARGET.
    pub fn name(&self) -> &str {
        match &self.renamed {
            Some(n) => n,
            None => self.set.listed.name(self.stored),
        }
    }

    /// Where the file goes.
    pub fn dest(&self) -> PathBuf {
        self.set.target.join(self.name())
    }

    /// The directory the file goes into.
    pub fn dest_dir(&self) -> &Path {
        &self.set.target
    }

    /// Restores the file under another name (same directory).
    pub fn rename(&mut self, name: String) {
        self.renamed = Some(name.into());
    }

    /// The key and algorithm of the `Digest` this `Data.db` is checked against.
    pub fn digest_key(&self) -> Option<(String, crate::digest::Algorithm)> {
        let (slot, alg) = self.digest?;
        Some((self.set.listed.key_of(slot), alg))
    }

    pub fn digest(&self) -> Option<DigestRef> {
        let (key, alg) = self.digest_key()?;
        Some(DigestRef {
            key,
            alg,
            sstable: self.name().trim_end_matches("Data.db").to_string(),
            dir: self.set.dir.clone(),
            index: self.set.index.clone(),
        })
    }

    /// One file outside any plan (tests): object `key` of `size` bytes restored to `dest`.
    pub fn standalone(key: &str, dest: &Path, size: u64) -> Self {
        let listed = ListedDir::single(key, size);
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let renamed = (listed.name(0) != name).then(|| name.into());
        PlannedFile {
            set: Arc::new(FileSet {
                listed,
                target: dest.parent().map(Path::to_path_buf).unwrap_or_default(),
                dir: String::new(),
                index: String::new(),
            }),
            stored: 0,
            renamed,
            size,
            local_size: None,
            digest: None,
        }
    }

    pub fn already_present(&self) -> bool {
        self.local_size == Some(self.size)
    }
}

/// The chosen file set of one table directory.
#[derive(Debug, Clone)]
pub struct TablePlan {
    /// The directory on the backed-up host.
    pub dir: String,
    pub target: PathBuf,
    pub index_key: String,
    pub index_time: DateTime<Utc>,
    /// How many indexes the directory has (all times) and how many were eligible.
    pub indexes_total: usize,
    /// Whether every object the chosen index names is in the bucket.
    pub complete: bool,
    /// The candidates examined, newest first, ending with the chosen one.
    pub checks: Vec<IndexCheck>,
    /// Restored into this existing `KS/TABLE-ID` (a re-created table), not its own.
    pub mapped_to: Option<String>,
    pub files: Vec<PlannedFile>,
    /// The SSTable restored under a higher generation, so the node goes on above every
    /// generation the bucket holds for the table ([`super::generations`]).
    pub renumbered: Option<super::generations::Renumbered>,
}

impl TablePlan {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Commit logs to restore.
#[derive(Debug, Clone)]
pub struct CommitlogPlan {
    pub dir: String,
    pub target: PathBuf,
    /// Only logs whose timestamp is strictly newer than this (epoch ms) are restored.
    pub since_ms: i64,
    pub files: Vec<PlannedFile>,
}

/// Everything a restore will do.
#[derive(Debug, Default)]
pub struct Plan {
    /// The backed-up host (`-n`).
    pub host: String,
    /// TARGET: every table directory is under it.
    pub target: PathBuf,
    pub tables: Vec<TablePlan>,
    pub commitlogs: Option<CommitlogPlan>,
    /// Tables that cannot be restored, with the reason.
    pub problems: Vec<TableProblem>,
    /// Directories with indexes that `-r` leaves alone (snapshots/, backups/).
    pub skipped_dirs: Vec<String>,
}

impl Plan {
    /// Every file of the plan, tables first, then commit logs.
    pub fn files(&self) -> impl Iterator<Item = &PlannedFile> {
        self.tables
            .iter()
            .flat_map(|t| t.files.iter())
            .chain(self.commitlogs.iter().flat_map(|c| c.files.iter()))
    }

    pub fn total_bytes(&self) -> u64 {
        self.files().map(|f| f.size).sum()
    }

    /// Records which destination files already exist and their sizes.
    pub fn check_local(&mut self) {
        let all = self
            .tables
            .iter_mut()
            .flat_map(|t| t.files.iter_mut())
            .chain(self.commitlogs.iter_mut().flat_map(|c| c.files.iter_mut()));
        for f in all {
            f.local_size = std::fs::symlink_metadata(f.dest())
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
        }
    }
}

/// The index chosen for one directory.
#[derive(Debug, Clone)]
pub struct Choice {
    pub dir: String,
    pub target: PathBuf,
    /// The eligible indexes, newest first (at most [`MAX_CANDIDATES`]); the first complete
    /// one is restored. `-f` gives exactly one.
    pub candidates: Vec<ObjectInfo>,
    /// `-f`/`--as-of`: the first candidate or nothing (no stepping back to an older one).
    pub strict: bool,
    pub indexes_total: usize,
    /// `KS/TABLE-ID` in TARGET this directory is restored into, when that differs from
    /// the backup's ([`TableMapping`]).
    pub mapped_to: Option<String>,
}

impl Choice {
    /// The newest eligible index.
    pub fn newest(&self) -> &ObjectInfo {
        &self.candidates[0]
    }
}

/// How many indexes of one directory are examined, newest first, for a complete one.
pub const MAX_CANDIDATES: usize = 32;

/// The order in which indexes of one directory are "newer": LastModified at one-second
/// resolution (what S3 listings give), then the SSTable generation of the data file the index
/// belongs to (written later), then the key. Shared with [`crate::retention`].
pub fn newness(o: &ObjectInfo) -> (i64, Option<layout::Generation>, &str) {
    let name = layout::data_key_of_index(&o.key)
        .map(|d| layout::split_dir(d).1)
        .unwrap_or("");
    (
        o.last_modified.timestamp(),
        layout::sstable_generation(name),
        &o.key,
    )
}

/// [`newness`] of an index in a listed directory (within one directory, the key order is
/// the name order).
fn listed_newness(d: &ListedDir, i: u32) -> (i64, Option<layout::Generation>, &str) {
    let l = d.get(i);
    let data = l.name.strip_suffix(INDEX_SUFFIX).unwrap_or("");
    (
        l.last_modified.timestamp(),
        layout::sstable_generation(data),
        l.name,
    )
}

/// Directories below a table that `-r` does not restore as tables of their own.
fn is_snapshot_dir(rel: &str) -> bool {
    rel.split('/')
        .enumerate()
        .any(|(i, c)| i >= 2 && (c == "snapshots" || c == "backups"))
}

/// Maps `dir` (under `origin`) to a directory under `target`, or `None` if it would escape.
fn target_for(origin: &str, dir: &str, target: &Path) -> Option<PathBuf> {
    if dir == origin {
        return Some(target.to_path_buf());
    }
    let rel = dir.strip_prefix(origin)?.strip_prefix('/')?;
    let mut out = target.to_path_buf();
    for c in rel.split('/') {
        if !layout::is_plain_name(c) {
            return None;
        }
        out.push(c);
    }
    // Belt and braces: the result must be a plain descendant of target.
    let ok = out
        .strip_prefix(target)
        .map(|r| r.components().all(|c| matches!(c, Component::Normal(_))))
        .unwrap_or(false);
    ok.then_some(out)
}

/// The indexes of one listed directory.
struct DirIndexes<'a> {
    listed: &'a ListedDir,
    slots: Vec<u32>,
}

impl DirIndexes<'_> {
    /// The newest [`MAX_CANDIDATES`] eligible ones, newest first.
    fn newest_first(&self, as_of: Option<DateTime<Utc>>) -> Vec<ObjectInfo> {
        let d = self.listed;
        let mut v: Vec<u32> = self
            .slots
            .iter()
            .copied()
            .filter(|&i| as_of.is_none_or(|t| d.get(i).last_modified.timestamp() <= t.timestamp()))
            .collect();
        v.sort_by(|&a, &b| listed_newness(d, b).cmp(&listed_newness(d, a)));
        v.into_iter()
            .take(MAX_CANDIDATES)
            .map(|i| d.object(i))
            .collect()
    }
}

/// The directory on the host that a listed directory stands for.
fn host_dir<'a>(layout: &Layout, d: &ListedDir, scratch: &'a mut String) -> Option<&'a str> {
    scratch.clear();
    scratch.push_str(d.key());
    scratch.push_str("/x");
    let path = layout.path_of(scratch)?;
    Some(layout::split_dir(path).0)
}

/// Picks the index per directory from one listing of the origin.
pub fn choose(listing: &Listing, opts: &RestoreOptions) -> Result<Vec<Choice>, PlanError> {
    let origin = opts.origin.as_str();
    if !origin.starts_with('/') {
        return Err(PlanError::RelativeOrigin(origin.to_string()));
    }
    // Every index of the listing, grouped by its directory on the host.
    let mut by_dir: BTreeMap<String, DirIndexes<'_>> = BTreeMap::new();
    let mut scratch = String::new();
    for d in listing.dirs() {
        let slots: Vec<u32> = d
            .slots()
            .filter(|&i| d.name(i).ends_with(INDEX_SUFFIX))
            .collect();
        if slots.is_empty() {
            continue;
        }
        let Some(dir) = host_dir(&opts.layout, d, &mut scratch) else {
            continue;
        };
        by_dir.insert(dir.to_string(), DirIndexes { listed: d, slots });
    }
    let as_of_detail = || {
        opts.as_of
            .map(|t| format!(" at or before {}", t.to_rfc3339()))
            .unwrap_or_default()
    };
    match &opts.selection {
        Selection::File(f) => {
            let f = f.strip_suffix(INDEX_SUFFIX).unwrap_or(f);
            if !layout::is_plain_name(f) {
                return Err(PlanError::BadFileArg(f.to_string()));
            }
            let key = layout::index_key(&opts.layout.data_key(&format!("{origin}/{f}")));
            let (d, i) = listing.find(&key).ok_or(PlanError::NoSuchIndex { key })?;
            Ok(vec![Choice {
                dir: origin.to_string(),
                target: opts.target.clone(),
                candidates: vec![d.object(i)],
                strict: true,
                indexes_total: by_dir.get(origin).map_or(1, |d| d.slots.len()),
                mapped_to: None,
            }])
        }
        Selection::Newest => {
            let candidates = by_dir
                .get(origin)
                .map(|d| d.newest_first(opts.as_of))
                .unwrap_or_default();
            if candidates.is_empty() {
                return Err(PlanError::NothingToRestore {
                    prefix: opts.origin_key(),
                    detail: as_of_detail(),
                });
            }
            let mut out = vec![Choice {
                dir: origin.to_string(),
                target: opts.target.clone(),
                candidates,
                strict: opts.as_of.is_some(),
                indexes_total: by_dir.get(origin).map_or(0, |d| d.slots.len()),
                mapped_to: None,
            }];
            // The table's secondary indexes (`.<index>/` right below it) belong to it: a
            // table restored without them comes back with indexes that find nothing.
            for (dir, all) in &by_dir {
                let is_index_dir = dir
                    .strip_prefix(origin)
                    .and_then(|r| r.strip_prefix("/."))
                    .is_some_and(|r| !r.is_empty() && !r.contains('/'));
                let Some(target) = is_index_dir
                    .then(|| target_for(origin, dir, &opts.target))
                    .flatten()
                else {
                    continue;
                };
                let candidates = all.newest_first(opts.as_of);
                if !candidates.is_empty() {
                    out.push(Choice {
                        dir: dir.to_string(),
                        target,
                        candidates,
                        strict: opts.as_of.is_some(),
                        indexes_total: all.slots.len(),
                        mapped_to: None,
                    });
                }
            }
            Ok(out)
        }
        Selection::Recursive => {
            let rel_of = |d: &str| -> Option<String> {
                d.strip_prefix(origin)?
                    .strip_prefix('/')
                    .map(str::to_string)
            };
            let rels: Vec<String> = by_dir.keys().filter_map(|d| rel_of(d)).collect();
            let map = table_map(rels.iter().map(String::as_str), &opts.mapping);
            let mut out = Vec::new();
            for (dir, all) in &by_dir {
                let candidates = all.newest_first(opts.as_of);
                if candidates.is_empty() {
                    continue;
                }
                // Directories that cannot be mapped are reported by plan().
                let mut target = target_for(origin, dir, &opts.target).unwrap_or_default();
                let mut mapped_to = None;
                let rel = rel_of(dir);
                if let Some((prefix, to)) = rel
                    .as_deref()
                    .and_then(|r| table_prefix(r).map(|p| (r, p)))
                    .and_then(|(r, p)| map.get(p).map(|to| (r, to)))
                {
                    let rest = &prefix[table_prefix(prefix).unwrap_or("").len()..];
                    if let Some(t) = target_for("", &format!("/{to}{rest}"), &opts.target) {
                        mapped_to = Some(to.clone());
                        target = t;
                    }
                }
                out.push(Choice {
                    dir: dir.to_string(),
                    target,
                    candidates,
                    strict: opts.as_of.is_some(),
                    indexes_total: all.slots.len(),
                    mapped_to,
                });
            }
            if out.is_empty() {
                return Err(PlanError::NothingToRestore {
                    prefix: opts.origin_key(),
                    detail: format!("*/{}", as_of_detail()),
                });
            }
            Ok(out)
        }
    }
}

/// Builds the restore plan. Pure: `listing` is the one listing of
/// [`RestoreOptions::origin_key`], `bodies` the bodies of the indexes [`choose`] picks (by
/// key), `commitlog_listing` the listing of [`RestoreOptions::commitlog_key`].
pub fn plan(
    listing: &Listing,
    bodies: &HashMap<String, Bytes>,
    commitlog_listing: Option<&Listing>,
    opts: &RestoreOptions,
) -> Result<Plan, PlanError> {
    let choices = choose(listing, opts)?;
    let superseded = super::superseded::Superseded::new(listing, &opts.layout);
    let mut plan = Plan {
        host: opts.layout.name.clone(),
        target: opts.target.clone(),
        ..Plan::default()
    };
    for c in choices {
        let newest = c.newest().key.clone();
        let rel = c
            .dir
            .strip_prefix(opts.origin.as_str())
            .unwrap_or("")
            .trim_start_matches('/');
        if opts.selection == Selection::Recursive && is_snapshot_dir(rel) {
            plan.skipped_dirs.push(c.dir.clone());
            continue;
        }
        if target_for(&opts.origin, &c.dir, &opts.target).is_none() {
            plan.problems.push(TableProblem::Outside {
                key: newest,
                dir: c.dir,
            });
            continue;
        }
        let (mut checks, chosen) = match walk(&c, bodies, listing, opts) {
            Walk::Need(key) => {
                plan.problems.push(TableProblem::IndexNotFetched { key });
                continue;
            }
            Walk::Done { checks, chosen } => (checks, chosen),
        };
        let pos = match chosen {
            Some(i) => i,
            None if c.strict => {
                // -f / --as-of: that file set or nothing.
                let ch = &checks[0];
                plan.problems.push(match &ch.unusable {
                    Some(why) => TableProblem::BadIndex {
                        key: ch.key.clone(),
                        why: why.clone(),
                    },
                    None => TableProblem::Incomplete {
                        index: ch.key.clone(),
                        missing: ch.missing.clone(),
                    },
                });
                continue;
            }
            None => {
                // No complete file set at all: the newest usable one, every gap an error.
                let Some(i) = checks.iter().position(|ch| ch.unusable.is_none()) else {
                    for ch in &checks {
                        plan.problems.push(TableProblem::BadIndex {
                            key: ch.key.clone(),
                            why: ch.unusable.clone().unwrap_or_default(),
                        });
                    }
                    continue;
                };
                for name in &checks[i].missing {
                    plan.problems.push(TableProblem::MissingObject {
                        index: checks[i].key.clone(),
                        name: name.clone(),
                        key: opts.layout.data_key(&format!("{}/{}", c.dir, name)),
                    });
                }
                i
            }
        };
        if pos > 0 && chosen.is_some() {
            let first = &checks[0];
            tracing::warn!(
                "{}: newest index {} is {}; restoring the older complete index {}",
                crate::restore::escape(&c.dir),
                crate::restore::escape(&first.key),
                first.describe(),
                crate::restore::escape(&checks[pos].key)
            );
        }
        // The names become the files; no check's names are kept past this point.
        let names = std::mem::take(&mut checks[pos].names);
        for ch in &mut checks {
            ch.names = Vec::new();
        }
        let index = &c.candidates[pos];
        let files = table_files(&c, index, &names, listing, &superseded, opts);
        drop(names);
        plan.tables.push(TablePlan {
            dir: c.dir.clone(),
            target: c.target.clone(),
            index_key: index.key.clone(),
            index_time: index.last_modified,
            indexes_total: c.indexes_total,
            complete: chosen.is_some(),
            checks,
            mapped_to: c.mapped_to.clone(),
            files,
            renumbered: None,
        });
    }
    if !opts.keep_generations {
        let max = super::generations::bucket_max(listing, &opts.layout);
        for (i, r) in super::generations::avoid_reuse(&mut plan, &max) {
            plan.tables[i].renumbered = Some(r);
        }
    }
    refuse_shared_destinations(&mut plan);
    if opts.commitlogs.is_some() && plan.tables.is_empty() {
        tracing::warn!("no table restored: commit logs are not restored either");
    }
    if let (Some(dir), Some(cl), false) = (
        opts.commitlogs.as_deref(),
        commitlog_listing,
        plan.tables.is_empty(),
    ) {
        plan.commitlogs = Some(commitlog_plan(dir, cl, &plan, opts));
    }
    Ok(plan)
}

/// The files of the index `index` of directory `c.dir`: every name of it in the listing,
/// from the object that held its bytes when the index was written.
fn table_files(
    c: &Choice,
    index: &ObjectInfo,
    names: &[String],
    listing: &Listing,
    superseded: &super::superseded::Superseded,
    opts: &RestoreOptions,
) -> Vec<PlannedFile> {
    let dir_key = opts.layout.data_key(&c.dir);
    let Some(listed) = listing.dir(&dir_key) else {
        return Vec::new();
    };
    let set = Arc::new(FileSet {
        listed: listed.clone(),
        target: c.target.clone(),
        dir: c.dir.clone(),
        index: index.key.clone(),
    });
    // A name stored again with other bytes after this index: its bytes of then. Every
    // copy is in the name's own directory.
    let mut key = String::new();
    let mut slot_of = |name: &str| -> Option<u32> {
        key.clear();
        key.push_str(&dir_key);
        key.push('/');
        key.push_str(name);
        let source = superseded.source(&key, index.last_modified);
        let (_, n) = source.rsplit_once('/')?;
        listed.find(n)
    };
    let named: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let Some(stored) = slot_of(name) else {
            continue;
        };
        // Only a Digest the index names, and that is in the bucket.
        let digest = crate::digest::digest_for_data(name)
            .filter(|(d, _)| named.contains(d.as_str()) && listed.find(d).is_some())
            .and_then(|(d, alg)| Some((slot_of(&d)?, alg)));
        let renamed = (listed.name(stored) != name.as_str()).then(|| name.as_str().into());
        files.push(PlannedFile {
            set: set.clone(),
            stored,
            renamed,
            size: listed.get(stored).size,
            local_size: None,
            digest,
        });
    }
    files
}

/// The commit logs of `dir` newer than every restored table's index.
fn commitlog_plan(dir: &str, cl: &Listing, plan: &Plan, opts: &RestoreOptions) -> CommitlogPlan {
    let dir = dir.trim_end_matches('/');
    // Older than every restored table's index: those mutations are in the SSTables.
    let since_ms = plan
        .tables
        .iter()
        .map(|t| t.index_time.timestamp_millis())
        .min()
        .unwrap_or(i64::MAX);
    let target = opts
        .commitlog_target
        .clone()
        .unwrap_or_else(|| opts.target.join("commitlogs"));
    let mut files = Vec::new();
    if let Some(listed) = cl.dir(&opts.layout.data_key(dir)) {
        let set = Arc::new(FileSet {
            listed: listed.clone(),
            target: target.clone(),
            dir: dir.to_string(),
            index: String::new(),
        });
        // Slots are in name order.
        for i in listed.slots() {
            let name = listed.name(i);
            if !layout::is_plain_name(name) {
                continue;
            }
            let Some(ms) = layout::commitlog_millis(name) else {
                continue;
            };
            if i64::try_from(ms).is_ok_and(|ms| ms > since_ms) {
                files.push(PlannedFile {
                    set: set.clone(),
                    stored: i,
                    renamed: None,
                    size: listed.get(i).size,
                    local_size: None,
                    digest: None,
                });
            }
        }
    }
    CommitlogPlan {
        dir: dir.to_string(),
        target,
        since_ms,
        files,
    }
}

/// Two files are never planned to one destination: tables whose files would land on the
/// same path (two backup directories mapped into one, or restored into one TARGET) are
/// both taken out of the plan, each pair a problem. Never a race for the same names.
/// A file's destination is its table's target joined with a plain name, so only tables
/// with the same target can meet; their names are compared.
fn refuse_shared_destinations(plan: &mut Plan) {
    let mut by_target: HashMap<&Path, Vec<usize>> = HashMap::new();
    for (i, t) in plan.tables.iter().enumerate() {
        by_target.entry(t.target.as_path()).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = by_target.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    let mut refused = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for group in groups {
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for &i in &group {
            let t = &plan.tables[i];
            for f in &t.files {
                match owner.get(f.name()) {
                    Some(&j) if j != i => {
                        if refused.insert(i) | refused.insert(j) {
                            problems.push(TableProblem::SameDestination {
                                first: plan.tables[j].dir.clone(),
                                second: t.dir.clone(),
                                dest: f.dest(),
                            });
                        }
                    }
                    Some(_) => {}
                    None => {
                        owner.insert(f.name(), i);
                    }
                }
            }
        }
    }
    plan.problems.extend(problems);
    let mut i = 0;
    plan.tables.retain(|_| {
        i += 1;
        !refused.contains(&(i - 1))
    });
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
