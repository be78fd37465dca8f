//! Which file set to restore per table, and where each file goes: a pure function of one
//! listing (plus the chosen index bodies), so `--dry-run` shows exactly what a restore does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};

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

/// One file to fetch.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub key: String,
    pub name: String,
    pub dest: PathBuf,
    /// Size and ETag from the listing.
    pub size: u64,
    pub e_tag: Option<String>,
    /// Size of a file already at `dest` (filled by [`Plan::check_local`]).
    pub local_size: Option<u64>,
    /// For a `Data.db` whose `Digest` component is in the same file set: where that is.
    pub digest: Option<DigestRef>,
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
            f.local_size = std::fs::symlink_metadata(&f.dest)
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

/// The newest [`MAX_CANDIDATES`] of `it`, newest first.
fn newest_first<'a>(it: impl Iterator<Item = &'a ObjectInfo>) -> Vec<ObjectInfo> {
    let mut v: Vec<&ObjectInfo> = it.collect();
    v.sort_by(|a, b| newness(b).cmp(&newness(a)));
    v.into_iter().take(MAX_CANDIDATES).cloned().collect()
}

/// Picks the index per directory from one listing of the origin.
pub fn choose<'a>(
    listing: &'a [ObjectInfo],
    opts: &'a RestoreOptions,
) -> Result<Vec<Choice>, PlanError> {
    let origin = opts.origin.as_str();
    if !origin.starts_with('/') {
        return Err(PlanError::RelativeOrigin(origin.to_string()));
    }
    // Every index of the listing, grouped by its directory on the host.
    let mut by_dir: BTreeMap<&str, Vec<&ObjectInfo>> = BTreeMap::new();
    for o in listing {
        if !o.key.ends_with(INDEX_SUFFIX) {
            continue;
        }
        let Some(path) = opts.layout.path_of(&o.key) else {
            continue;
        };
        let (dir, _) = layout::split_dir(path);
        by_dir.entry(dir).or_default().push(o);
    }
    let eligible = |o: &&&ObjectInfo| {
        opts.as_of
            .is_none_or(|t| o.last_modified.timestamp() <= t.timestamp())
    };
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
            let o = listing
                .iter()
                .find(|o| o.key == key)
                .ok_or(PlanError::NoSuchIndex { key })?;
            Ok(vec![Choice {
                dir: origin.to_string(),
                target: opts.target.clone(),
                candidates: vec![o.clone()],
                strict: true,
                indexes_total: by_dir.get(origin).map_or(1, Vec::len),
                mapped_to: None,
            }])
        }
        Selection::Newest => {
            let all = by_dir.get(origin).map(Vec::as_slice).unwrap_or(&[]);
            let candidates = newest_first(all.iter().filter(eligible).copied());
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
                indexes_total: all.len(),
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
                let candidates = newest_first(all.iter().filter(eligible).copied());
                if !candidates.is_empty() {
                    out.push(Choice {
                        dir: dir.to_string(),
                        target,
                        candidates,
                        strict: opts.as_of.is_some(),
                        indexes_total: all.len(),
                        mapped_to: None,
                    });
                }
            }
            Ok(out)
        }
        Selection::Recursive => {
            let rel_of =
                |d: &'a str| -> Option<&'a str> { d.strip_prefix(origin)?.strip_prefix('/') };
            let map = table_map(by_dir.keys().filter_map(|d| rel_of(d)), &opts.mapping);
            let mut out = Vec::new();
            for (dir, all) in &by_dir {
                let candidates = newest_first(all.iter().filter(eligible).copied());
                if candidates.is_empty() {
                    continue;
                }
                // Directories that cannot be mapped are reported by plan().
                let mut target = target_for(origin, dir, &opts.target).unwrap_or_default();
                let mut mapped_to = None;
                if let Some((prefix, to)) = rel_of(dir)
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
                    indexes_total: all.len(),
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
    listing: &[ObjectInfo],
    bodies: &HashMap<String, Bytes>,
    commitlog_listing: Option<&[ObjectInfo]>,
    opts: &RestoreOptions,
) -> Result<Plan, PlanError> {
    let choices = choose(listing, opts)?;
    let by_key: HashMap<&str, &ObjectInfo> = listing.iter().map(|o| (o.key.as_str(), o)).collect();
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
        let (checks, chosen) = match walk(&c, bodies, &by_key, opts) {
            Walk::Need(key) => {
                plan.problems.push(TableProblem::IndexNotFetched { key });
                continue;
            }
            Walk::Done { checks, chosen } => (checks, chosen),
        };
        let (pos, names) = match chosen {
            Some(i) => (i, checks[i].names.clone()),
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
                (i, checks[i].names.clone())
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
        let index = &c.candidates[pos];
        let present: std::collections::HashSet<&str> = names
            .iter()
            .filter(|n| {
                by_key.contains_key(opts.layout.data_key(&format!("{}/{}", c.dir, n)).as_str())
            })
            .map(String::as_str)
            .collect();
        let mut files = Vec::with_capacity(names.len());
        // A name stored again with other bytes after this index: its bytes of then.
        let source = |key: String| superseded.source(&key, index.last_modified).to_string();
        for name in &names {
            let data_key = source(opts.layout.data_key(&format!("{}/{}", c.dir, name)));
            let Some(o) = by_key.get(data_key.as_str()) else {
                continue;
            };
            let digest = crate::digest::digest_for_data(name)
                .filter(|(d, _)| present.contains(d.as_str()))
                .map(|(d, alg)| DigestRef {
                    key: source(opts.layout.data_key(&format!("{}/{}", c.dir, d))),
                    alg,
                    sstable: name.trim_end_matches("Data.db").to_string(),
                    dir: c.dir.clone(),
                    index: index.key.clone(),
                });
            files.push(PlannedFile {
                key: data_key,
                dest: c.target.join(name),
                name: name.clone(),
                size: o.size,
                e_tag: o.e_tag.clone(),
                local_size: None,
                digest,
            });
        }
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
        for o in cl {
            let Some(path) = opts.layout.path_of(&o.key) else {
                continue;
            };
            let (d, name) = layout::split_dir(path);
            if d != dir || !layout::is_plain_name(name) {
                continue;
            }
            let Some(ms) = layout::commitlog_millis(name) else {
                continue;
            };
            if i64::try_from(ms).is_ok_and(|ms| ms > since_ms) {
                files.push(PlannedFile {
                    key: o.key.clone(),
                    name: name.to_string(),
                    dest: target.join(name),
                    size: o.size,
                    e_tag: o.e_tag.clone(),
                    local_size: None,
                    digest: None,
                });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        plan.commitlogs = Some(CommitlogPlan {
            dir: dir.to_string(),
            target,
            since_ms,
            files,
        });
    }
    Ok(plan)
}

/// Two files are never planned to one destination: tables whose files would land on the
/// same path (two backup directories mapped into one, or restored into one TARGET) are
/// both taken out of the plan, each pair a problem. Never a race for the same names.
fn refuse_shared_destinations(plan: &mut Plan) {
    let mut owner: HashMap<&Path, usize> = HashMap::new();
    let mut refused = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for (i, t) in plan.tables.iter().enumerate() {
        for f in &t.files {
            match owner.get(f.dest.as_path()) {
                Some(&j) if j != i => {
                    if refused.insert(i) | refused.insert(j) {
                        problems.push(TableProblem::SameDestination {
                            first: plan.tables[j].dir.clone(),
                            second: t.dir.clone(),
                            dest: f.dest.clone(),
                        });
                    }
                }
                Some(_) => {}
                None => {
                    owner.insert(&f.dest, i);
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
