//! Restore (`tableslurp`): choose which file set to bring back, then fetch it, verified.
//!
//! The original listed the bucket once per table, serially, and wrote straight to the final
//! file names (upstream #94: nothing restored after 6 hours on 179 tables). Here restore is
//! split in two:
//!
//! * [`plan`] is a pure function of one listing of `PREFIX+NAME+SEP+ORIGIN/` (plus the bodies
//!   of the chosen indexes and, for `--commitlogs`, the listing of the commit-log directory).
//!   It picks the index per table (newest, `-f`, `--as-of`, with a deterministic tie-break on
//!   equal LastModified), maps every listed name to a path inside TARGET (refusing anything
//!   that would escape it) and says how many bytes are involved. `--dry-run` prints it.
//! * [`execute`] downloads every planned file in parallel across all tables, large objects as
//!   parallel byte ranges written at their offsets, verifies size and MD5 (the `md5sum`
//!   metadata, else a single-part ETag), writes to a temp file in the target directory,
//!   makes it durable and renames it. A mismatch is retried; a file that cannot be verified
//!   never appears under its final name. [`verify`] does the same checks without writing.
//!
//! Speed, measured in `bench/` (a 2 GiB tree of 936 files on a local Garage): requests, not
//! bytes, bound a restore of many small files, so `-t` counts requests in flight (small GETs
//! and ranges share one gate) and defaults to 16; a large object is hashed in order while
//! its later ranges still download; and durability is a group commit (one `syncfs` for
//! every file finished meanwhile, then a per-file `fsync` that has nothing left to write but
//! still reports that file's write-back errors) instead of one journal commit per file.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::layout::{self, INDEX_SUFFIX, Layout, Listing, ListingError, StatMeta};
use crate::store::{ErrorKind, ObjectInfo, Store, StoreError};

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
    #[error("index {key} cannot be used: {source}")]
    BadIndex {
        key: String,
        #[source]
        source: ListingError,
    },
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
    pub files: Vec<PlannedFile>,
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
            f.local_size = std::fs::metadata(&f.dest)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
        }
    }

    /// The human-readable plan printed by `--dry-run`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for t in &self.tables {
            let present = t.files.iter().filter(|f| f.already_present()).count();
            let _ = writeln!(
                out,
                "{} -> {}\n  index {} ({}, {} index(es) in the directory)\n  {} files, {} bytes, {} already present",
                t.dir,
                t.target.display(),
                t.index_key,
                t.index_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                t.indexes_total,
                t.files.len(),
                t.bytes(),
                present
            );
            for f in &t.files {
                let state = match f.local_size {
                    Some(s) if s == f.size => "present",
                    Some(_) => "present, DIFFERENT SIZE",
                    None => "fetch",
                };
                let _ = writeln!(out, "    {:>12}  {}  [{}]", f.size, f.name, state);
            }
        }
        if let Some(c) = &self.commitlogs {
            let _ = writeln!(
                out,
                "commit logs {} -> {} (newer than {} ms): {} files, {} bytes",
                c.dir,
                c.target.display(),
                c.since_ms,
                c.files.len(),
                c.files.iter().map(|f| f.size).sum::<u64>()
            );
            for f in &c.files {
                let _ = writeln!(out, "    {:>12}  {}", f.size, f.name);
            }
        }
        for d in &self.skipped_dirs {
            let _ = writeln!(out, "skipped (snapshot/backup directory): {d}");
        }
        for p in &self.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
        let _ = writeln!(
            out,
            "total: {} tables, {} files, {} bytes",
            self.tables.len(),
            self.files().count(),
            self.total_bytes()
        );
        out
    }
}

/// The index chosen for one directory.
#[derive(Debug, Clone)]
pub struct Choice {
    pub dir: String,
    pub target: PathBuf,
    pub index: ObjectInfo,
    pub indexes_total: usize,
}

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

/// Picks the index per directory from one listing of the origin.
pub fn choose(listing: &[ObjectInfo], opts: &RestoreOptions) -> Result<Vec<Choice>, PlanError> {
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
                index: o.clone(),
                indexes_total: by_dir.get(origin).map_or(1, Vec::len),
            }])
        }
        Selection::Newest => {
            let all = by_dir.get(origin).map(Vec::as_slice).unwrap_or(&[]);
            let best = all
                .iter()
                .filter(eligible)
                .max_by(|a, b| newness(a).cmp(&newness(b)));
            match best {
                Some(o) => Ok(vec![Choice {
                    dir: origin.to_string(),
                    target: opts.target.clone(),
                    index: (*o).clone(),
                    indexes_total: all.len(),
                }]),
                None => Err(PlanError::NothingToRestore {
                    prefix: opts.origin_key(),
                    detail: as_of_detail(),
                }),
            }
        }
        Selection::Recursive => {
            let mut out = Vec::new();
            for (dir, all) in &by_dir {
                let Some(best) = all
                    .iter()
                    .filter(eligible)
                    .max_by(|a, b| newness(a).cmp(&newness(b)))
                else {
                    continue;
                };
                // Directories that cannot be mapped are reported by plan().
                let target = target_for(origin, dir, &opts.target).unwrap_or_default();
                out.push(Choice {
                    dir: dir.to_string(),
                    target,
                    index: (*best).clone(),
                    indexes_total: all.len(),
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
    let mut plan = Plan::default();
    for c in choices {
        let key = c.index.key.clone();
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
            plan.problems
                .push(TableProblem::Outside { key, dir: c.dir });
            continue;
        }
        let Some(body) = bodies.get(&key) else {
            plan.problems
                .push(TableProblem::IndexNotFetched { key: key.clone() });
            continue;
        };
        let listing_body = match layout::parse_listing(body) {
            Ok(l) => l,
            Err(source) => {
                plan.problems.push(TableProblem::BadIndex { key, source });
                continue;
            }
        };
        let Listing {
            dir: json_dir,
            names,
        } = listing_body;
        if json_dir.trim_end_matches('/') != c.dir {
            tracing::warn!(
                index = %key,
                listed = %json_dir,
                "index describes another directory than the one it is stored in; using the stored directory"
            );
        }
        let mut files = Vec::with_capacity(names.len());
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if !seen.insert(name.clone()) {
                continue;
            }
            let data_key = opts.layout.data_key(&format!("{}/{}", c.dir, name));
            match by_key.get(data_key.as_str()) {
                Some(o) => files.push(PlannedFile {
                    key: data_key,
                    dest: c.target.join(&name),
                    name,
                    size: o.size,
                    e_tag: o.e_tag.clone(),
                    local_size: None,
                }),
                None => plan.problems.push(TableProblem::MissingObject {
                    index: key.clone(),
                    name,
                    key: data_key,
                }),
            }
        }
        plan.tables.push(TablePlan {
            dir: c.dir,
            target: c.target,
            index_key: key,
            index_time: c.index.last_modified,
            indexes_total: c.indexes_total,
            files,
        });
    }
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

// ------------------------------------------------------------------------------------------
// Execution
// ------------------------------------------------------------------------------------------

/// Who should own restored files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ownership {
    /// Leave them to the user running the restore (the original's default).
    #[default]
    Current,
    /// `-p`: the user/group stored in the `stat` metadata (by name if it resolves here,
    /// else by id).
    Preserve,
    /// `-o`/`-g`: these ids (either may be absent).
    Ids { uid: Option<u32>, gid: Option<u32> },
}

/// Default `-t` of tableslurp. The original's 4 left a restore of many small files waiting on
/// round trips (bench/: 2 GiB tree, 11.4 s at 4, 6.8 s at 16, 6.7 s at 64).
pub const DEFAULT_THREADS: usize = 16;

/// Test hook: lets tests cut a download short to prove truncation is caught.
pub type FaultHook = Arc<dyn Fn(&str, u32) -> Option<u64> + Send + Sync>;

/// How to execute a plan.
#[derive(Clone)]
pub struct ExecOptions {
    /// Requests in flight (`-t`): small-file GETs and the ranges of large objects together.
    pub threads: usize,
    /// Download even when a file of the right size exists, replacing it (`--force`).
    pub force: bool,
    pub ownership: Ownership,
    /// Objects at least this big are fetched as parallel byte ranges.
    pub range_threshold: u64,
    pub range_size: u64,
    /// Attempts per file (the original: 5).
    pub attempts: u32,
    /// Pause between attempts (grows linearly).
    pub retry_pause: Duration,
    /// Called with (key, attempt): `Some(n)` truncates that attempt's data after n bytes.
    pub fault: Option<FaultHook>,
    /// Shared download bandwidth limit (`--max-bandwidth`).
    pub throttle: Option<std::sync::Arc<crate::throttle::Throttle>>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            threads: DEFAULT_THREADS,
            force: false,
            ownership: Ownership::Current,
            range_threshold: 64 << 20,
            range_size: 16 << 20,
            attempts: 5,
            retry_pause: Duration::from_millis(200),
            fault: None,
            throttle: None,
        }
    }
}

impl std::fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecOptions")
            .field("threads", &self.threads)
            .field("force", &self.force)
            .field("ownership", &self.ownership)
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// Why a file could not be restored or verified.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key} is not in the bucket")]
    Missing { key: String },
    #[error("{key}: size {actual}, expected {expected}")]
    Size {
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("{key}: MD5 {actual}, expected {expected}")]
    Md5 {
        key: String,
        expected: String,
        actual: String,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} exists with {local} bytes but {key} has {remote}; not overwritten (use --force)",
        path.display()
    )]
    Exists {
        path: PathBuf,
        key: String,
        local: u64,
        remote: u64,
    },
    #[error("{key}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        key: String,
        attempts: u32,
        #[source]
        last: Box<RestoreError>,
    },
}

impl RestoreError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { op, path, source }
    }

    /// Whether another attempt may succeed.
    fn retriable(&self) -> bool {
        match self {
            RestoreError::Size { .. } | RestoreError::Md5 { .. } => true,
            RestoreError::Store(e) => !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Denied),
            _ => false,
        }
    }
}

/// Observer of execution, e.g. a progress bar. All methods have empty defaults.
pub trait Observer: Send + Sync {
    fn bytes(&self, _n: u64) {}
    fn file_done(&self, _f: &PlannedFile, _outcome: &Outcome) {}
}

/// A no-op observer.
pub struct Quiet;
impl Observer for Quiet {}

/// What happened to one file.
#[derive(Debug)]
pub enum Outcome {
    Restored { attempts: u32 },
    AlreadyPresent,
    Verified,
    Failed(RestoreError),
}

/// The result of [`execute`] or [`verify`].
#[derive(Debug, Default)]
pub struct Report {
    pub restored: usize,
    pub restored_bytes: u64,
    pub present: usize,
    pub verified: usize,
    pub failures: Vec<(String, RestoreError)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Downloads every file of the plan. Never returns early: each file's failure is in the report.
pub async fn execute(
    store: &Store,
    plan: &Plan,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Report {
    let mut report = Report::default();
    // Create every target directory first; a table whose directory cannot be made fails whole.
    let mut bad_dirs: HashMap<PathBuf, String> = HashMap::new();
    let dirs = plan
        .tables
        .iter()
        .map(|t| t.target.clone())
        .chain(plan.commitlogs.iter().map(|c| c.target.clone()));
    for d in dirs {
        if let Err(e) = std::fs::create_dir_all(&d) {
            bad_dirs.insert(d.clone(), e.to_string());
        }
    }
    let bad_dirs = &bad_dirs;
    let uid_gid = match &opts.ownership {
        Ownership::Ids { uid, gid } => Some((*uid, *gid)),
        _ => None,
    };
    let gate = &Semaphore::new(opts.threads.max(1));
    let (commit, committer) = GroupCommit::new();
    let downloads = async move {
        let commit = &commit;
        futures::stream::iter(plan.files().map(|f| async move {
            let parent = f.dest.parent().map(Path::to_path_buf).unwrap_or_default();
            let outcome = if let Some(e) = bad_dirs.get(&parent) {
                Outcome::Failed(RestoreError::Io {
                    op: "create directory",
                    path: parent,
                    source: std::io::Error::other(e.clone()),
                })
            } else {
                let ctx = Ctx {
                    store,
                    opts,
                    ids: uid_gid,
                    observer,
                    gate,
                    commit,
                };
                restore_one(&ctx, f).await
            };
            observer.file_done(f, &outcome);
            (f, outcome)
        }))
        .buffer_unordered(opts.threads.max(1))
        .collect::<Vec<_>>()
        .await
        // `commit` is dropped here, which ends the committer.
    };
    let (results, ()) = tokio::join!(downloads, committer);
    // The renames: one more syncfs per filesystem, then each directory's fsync (cheap now,
    // and the one that reports an error of that directory).
    let dirs: std::collections::BTreeSet<PathBuf> = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Restored { .. }))
        .filter_map(|(f, _)| f.dest.parent().map(Path::to_path_buf))
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        let mut opened = Vec::new();
        for d in dirs {
            match File::open(&d) {
                Ok(f) => opened.push((d, Arc::new(f))),
                Err(e) => tracing::warn!("fsync directory {}: {e}", d.display()),
            }
        }
        let files: Vec<Arc<File>> = opened.iter().map(|(_, f)| f.clone()).collect();
        for ((d, _), r) in opened.iter().zip(sync_batch(&files)) {
            if let Err(e) = r {
                tracing::warn!("fsync directory {}: {e}", d.display());
            }
        }
    })
    .await;
    for (f, o) in results {
        match o {
            Outcome::Restored { .. } => {
                report.restored += 1;
                report.restored_bytes += f.size;
            }
            Outcome::AlreadyPresent => report.present += 1,
            Outcome::Verified => report.verified += 1,
            Outcome::Failed(e) => report.failures.push((f.key.clone(), e)),
        }
    }
    report
}

/// Checks every file of the plan (exists, size, streaming MD5) without writing anything.
pub async fn verify(
    store: &Store,
    plan: &Plan,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Report {
    let results = futures::stream::iter(plan.files().map(|f| async move {
        let outcome = match verify_one(store, f, observer).await {
            Ok(()) => Outcome::Verified,
            Err(e) => Outcome::Failed(e),
        };
        observer.file_done(f, &outcome);
        (f, outcome)
    }))
    .buffer_unordered(opts.threads.max(1))
    .collect::<Vec<_>>()
    .await;
    let mut report = Report::default();
    for (f, o) in results {
        match o {
            Outcome::Failed(e) => report.failures.push((f.key.clone(), e)),
            _ => report.verified += 1,
        }
    }
    report
}

async fn verify_one(
    store: &Store,
    f: &PlannedFile,
    observer: &dyn Observer,
) -> Result<(), RestoreError> {
    // One GET: the metadata comes with the bytes.
    let (info, mut s) = store
        .get_with_info(&f.key)
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => RestoreError::Missing { key: f.key.clone() },
            _ => RestoreError::Store(e),
        })?;
    if info.size != f.size {
        return Err(RestoreError::Size {
            key: f.key.clone(),
            expected: f.size,
            actual: info.size,
        });
    }
    let mut h = Md5::new();
    let mut n = 0u64;
    while let Some(chunk) = s.try_next().await? {
        h.update(&chunk);
        n += chunk.len() as u64;
        observer.bytes(chunk.len() as u64);
    }
    check(&f.key, &info, n, &hex::encode(h.finalize()))
}

fn check(key: &str, info: &ObjectInfo, n: u64, md5: &str) -> Result<(), RestoreError> {
    if n != info.size {
        return Err(RestoreError::Size {
            key: key.to_string(),
            expected: info.size,
            actual: n,
        });
    }
    match info.expected_md5() {
        Some(want) if want != md5 => Err(RestoreError::Md5 {
            key: key.to_string(),
            expected: want,
            actual: md5.to_string(),
        }),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                key,
                "no md5sum metadata and no single-part ETag: verified the size only"
            );
            Ok(())
        }
    }
}

fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tableslurp-tmp"))
}

/// What every download of one [`execute`] shares.
struct Ctx<'a> {
    store: &'a Store,
    opts: &'a ExecOptions,
    ids: Option<(Option<u32>, Option<u32>)>,
    observer: &'a dyn Observer,
    /// `-t`: one permit per request in flight.
    gate: &'a Semaphore,
    commit: &'a GroupCommit,
}

async fn restore_one(ctx: &Ctx<'_>, f: &PlannedFile) -> Outcome {
    let opts = ctx.opts;
    match std::fs::symlink_metadata(&f.dest) {
        Ok(m) if !opts.force => {
            return if m.is_file() && m.len() == f.size {
                Outcome::AlreadyPresent
            } else {
                Outcome::Failed(RestoreError::Exists {
                    path: f.dest.clone(),
                    key: f.key.clone(),
                    local: m.len(),
                    remote: f.size,
                })
            };
        }
        _ => {}
    }
    let tmp = temp_path(&f.dest);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = fetch_once(ctx, f, &tmp, attempt).await;
        match r {
            Ok(()) => return Outcome::Restored { attempts: attempt },
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if !e.retriable() {
                    return Outcome::Failed(e);
                }
                if attempt >= opts.attempts {
                    return Outcome::Failed(RestoreError::GaveUp {
                        key: f.key.clone(),
                        attempts: attempt,
                        last: Box::new(e),
                    });
                }
                tracing::warn!(key = %f.key, attempt, "{e}; retrying");
                tokio::time::sleep(opts.retry_pause * attempt).await;
            }
        }
    }
}

/// One attempt: download to `tmp`, verify, set mode/owner, make durable, rename.
async fn fetch_once(
    ctx: &Ctx<'_>,
    f: &PlannedFile,
    tmp: &Path,
    attempt: u32,
) -> Result<(), RestoreError> {
    let (store, opts, observer) = (ctx.store, ctx.opts, ctx.observer);
    // A fresh file, never through a symlink planted at the temp name.
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RestoreError::io("remove stale", tmp)(e));
        }
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(RestoreError::io("create", tmp))?;
    let file = Arc::new(file);
    let limit = opts.fault.as_ref().and_then(|h| h(&f.key, attempt));
    let missing = |e: StoreError| match e.kind() {
        ErrorKind::NotFound => RestoreError::Missing { key: f.key.clone() },
        _ => RestoreError::Store(e),
    };
    let ids = ctx.ids;
    let (info, md5) = if f.size >= opts.range_threshold && opts.range_size > 0 && limit.is_none() {
        // Large: HEAD for size and metadata, then parallel ranges, hashed in order behind them.
        let info = {
            let _permit = ctx.gate.acquire().await.expect("gate closed");
            store
                .head(&f.key)
                .await?
                .ok_or_else(|| RestoreError::Missing { key: f.key.clone() })?
        };
        let md5 = fetch_ranges(ctx, &f.key, info.size, &file, tmp).await?;
        (info, md5)
    } else {
        // Small: one GET gives the metadata and the bytes, hashed as they stream in.
        let _permit = ctx.gate.acquire().await.expect("gate closed");
        let (info, stream) = store.get_with_info(&f.key).await.map_err(missing)?;
        let md5 = fetch_stream(stream, &file, tmp, limit, opts, observer).await?;
        (info, md5)
    };
    let n = file
        .metadata()
        .map_err(RestoreError::io("stat", tmp))?
        .len();
    check(&f.key, &info, n, &md5.1)?;
    let stat = info
        .metadata
        .get(layout::META_STAT)
        .and_then(|s| StatMeta::parse(s));
    if let Some(st) = &stat {
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(st.mode & 0o7777))
            .map_err(RestoreError::io("chmod", tmp))?;
    }
    let owner = match (&opts.ownership, ids) {
        (Ownership::Preserve, _) => stat.as_ref().map(|st| {
            (
                Some(st.user.as_deref().and_then(uid_of).unwrap_or(st.uid)),
                Some(st.group.as_deref().and_then(gid_of).unwrap_or(st.gid)),
            )
        }),
        (_, Some(ids)) => Some(ids),
        _ => None,
    };
    if let Some((uid, gid)) = owner {
        chown(tmp, uid, gid)?;
    }
    ctx.commit
        .durable(file)
        .await
        .map_err(RestoreError::io("fsync", tmp))?;
    // The directory entry is made durable once per directory, at the end of execute().
    std::fs::rename(tmp, &f.dest).map_err(RestoreError::io("rename into place", &f.dest))?;
    Ok(())
}

/// Streams the whole object into `file`, hashing as it goes. Returns (bytes, md5 hex).
async fn fetch_stream(
    mut s: futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
    file: &File,
    path: &Path,
    limit: Option<u64>,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Result<(u64, String), RestoreError> {
    let mut h = Md5::new();
    let mut off = 0u64;
    while let Some(mut chunk) = s.try_next().await? {
        if let Some(l) = limit {
            if off + chunk.len() as u64 > l {
                chunk.truncate((l - off.min(l)) as usize);
            }
        }
        if let Some(t) = &opts.throttle {
            t.take(chunk.len() as u64).await;
        }
        h.update(&chunk);
        file.write_all_at(&chunk, off)
            .map_err(RestoreError::io("write", path))?;
        off += chunk.len() as u64;
        observer.bytes(chunk.len() as u64);
        if limit.is_some_and(|l| off >= l) {
            break;
        }
    }
    Ok((off, hex::encode(h.finalize())))
}

/// Fetches `size` bytes as parallel ranges, each written at its offset as it streams in, so
/// memory stays at a few chunks per range in flight. Behind them, the file is read back
/// (from the page cache) and hashed in order as far as the ranges are complete, so little
/// is left to hash when the last range lands. Returns (bytes, md5 hex).
async fn fetch_ranges(
    ctx: &Ctx<'_>,
    key: &str,
    size: u64,
    file: &Arc<File>,
    path: &Path,
) -> Result<(u64, String), RestoreError> {
    let (store, opts, observer) = (ctx.store, ctx.opts, ctx.observer);
    file.set_len(size)
        .map_err(RestoreError::io("allocate", path))?;
    let ranges: Vec<Range<u64>> = (0..size)
        .step_by(opts.range_size as usize)
        .map(|s| s..(s + opts.range_size).min(size))
        .collect();
    // How far from the start every byte is written: the hasher may read up to here.
    let (written_tx, mut written) = watch::channel(0u64);
    let complete = Mutex::new(InOrder::new(ranges.len()));
    let (ranges, complete) = (&ranges, &complete);
    // Owns the sender, so the hasher learns when the download has ended.
    let download = async move {
        let written_tx = &written_tx;
        futures::stream::iter(ranges.iter().enumerate().map(|(i, r)| async move {
            let want = r.end - r.start;
            let _permit = ctx.gate.acquire().await.expect("gate closed");
            let mut s = store.get_stream(key, Some(r.clone())).await?;
            let mut off = r.start;
            while let Some(chunk) = s.try_next().await? {
                if off + chunk.len() as u64 > r.end {
                    return Err(RestoreError::Size {
                        key: key.to_string(),
                        expected: want,
                        actual: off + chunk.len() as u64 - r.start,
                    });
                }
                if let Some(t) = &opts.throttle {
                    t.take(chunk.len() as u64).await;
                }
                file.write_all_at(&chunk, off)
                    .map_err(RestoreError::io("write", path))?;
                off += chunk.len() as u64;
                observer.bytes(chunk.len() as u64);
            }
            if off != r.end {
                return Err(RestoreError::Size {
                    key: key.to_string(),
                    expected: want,
                    actual: off - r.start,
                });
            }
            let prefix = complete.lock().expect("poisoned").done(i);
            let upto = ranges.get(prefix).map_or(size, |r| r.start);
            written_tx.send_if_modified(|w| std::mem::replace(w, upto) != upto);
            Ok::<_, RestoreError>(())
        }))
        .buffer_unordered(opts.threads.max(1))
        .try_collect::<Vec<()>>()
        .await
    };
    let hash = async {
        let mut h = Md5::new();
        let mut at = 0u64;
        while at < size {
            if written.changed().await.is_err() && *written.borrow() <= at {
                // The download ended without writing further: its error is reported.
                std::future::pending::<()>().await;
            }
            let upto = *written.borrow_and_update();
            if upto > at {
                let f = file.clone();
                let p = path.to_path_buf();
                h = tokio::task::spawn_blocking(move || hash_range(&f, &p, at..upto, h))
                    .await
                    .map_err(|e| RestoreError::io("hash", path)(std::io::Error::other(e)))??;
                at = upto;
            }
        }
        Ok::<_, RestoreError>((at, hex::encode(h.finalize())))
    };
    let (_, md5) = tokio::try_join!(download, hash)?;
    Ok(md5)
}

/// Which of `n` ranges are complete, and how many from the first are, without a gap.
struct InOrder {
    done: Vec<bool>,
    prefix: usize,
}

impl InOrder {
    fn new(n: usize) -> Self {
        Self {
            done: vec![false; n],
            prefix: 0,
        }
    }

    /// Marks range `i` complete; returns the length of the complete prefix.
    fn done(&mut self, i: usize) -> usize {
        self.done[i] = true;
        while self.prefix < self.done.len() && self.done[self.prefix] {
            self.prefix += 1;
        }
        self.prefix
    }
}

/// Feeds bytes `r` of `file` to `h`.
fn hash_range(file: &File, path: &Path, r: Range<u64>, mut h: Md5) -> Result<Md5, RestoreError> {
    let mut buf = vec![0u8; (1 << 20).min((r.end - r.start) as usize)];
    let mut at = r.start;
    while at < r.end {
        let k = buf.len().min((r.end - at) as usize);
        file.read_exact_at(&mut buf[..k], at)
            .map_err(RestoreError::io("read back", path))?;
        h.update(&buf[..k]);
        at += k as u64;
    }
    Ok(h)
}

/// Group commit of finished files. Each file waits for one `syncfs` that started after it
/// was complete: one journal commit covers every file finished meanwhile, instead of one
/// per file. Then `fsync` of the file itself, which now has nothing left to write, still
/// reports a write-back error of that file (and does the work if `syncfs` failed).
struct GroupCommit {
    tx: mpsc::UnboundedSender<(Arc<File>, oneshot::Sender<std::io::Result<()>>)>,
}

impl GroupCommit {
    /// The handle, and the committer to run beside the downloads; it ends once the handle
    /// is dropped and every request has been answered.
    fn new() -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Arc<File>, oneshot::Sender<_>)>();
        let committer = async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let files: Vec<Arc<File>> = batch.iter().map(|(f, _)| f.clone()).collect();
                let results = tokio::task::spawn_blocking(move || sync_batch(&files))
                    .await
                    .unwrap_or_else(|e| {
                        (0..batch.len())
                            .map(|_| Err(std::io::Error::other(e.to_string())))
                            .collect()
                    });
                for ((_, reply), r) in batch.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
        };
        (Self { tx }, committer)
    }

    /// Returns once `file` (data and inode) is on stable storage.
    async fn durable(&self, file: Arc<File>) -> std::io::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((file, reply))
            .map_err(|_| std::io::Error::other("committer stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("committer stopped")))
    }
}

fn sync_batch(files: &[Arc<File>]) -> Vec<std::io::Result<()>> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let mut synced = std::collections::HashSet::new();
    for f in files {
        if let Ok(m) = f.metadata() {
            if synced.insert(m.dev()) {
                // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
                if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                    tracing::debug!("syncfs: {}", std::io::Error::last_os_error());
                }
            }
        }
    }
    files.iter().map(|f| f.sync_all()).collect()
}

/// The uid of a local user name (or a numeric string).
pub fn uid_of(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string; getpwnam returns NULL or a pointer to static storage, read at once.
    let p = unsafe { libc::getpwnam(c.as_ptr()) };
    // SAFETY: p checked non-null.
    (!p.is_null()).then(|| unsafe { (*p).pw_uid })
}

/// The gid of a local group name (or a numeric string).
pub fn gid_of(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = CString::new(name).ok()?;
    // SAFETY: as in uid_of.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: g checked non-null.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), RestoreError> {
    std::os::unix::fs::chown(path, uid, gid).map_err(RestoreError::io("chown", path))
}

// ------------------------------------------------------------------------------------------
// Inventory (--list)
// ------------------------------------------------------------------------------------------

/// One directory of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSummary {
    pub host: String,
    pub dir: String,
    pub indexes: usize,
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    pub objects: usize,
    pub bytes: u64,
}

/// Summarises a listing per (host, directory). Keys are `PREFIX + HOST + SEP + /path`; the
/// host is what lies between the prefix and the first `SEP/`.
pub fn inventory(listing: &[ObjectInfo], prefix: &str, separator: &str) -> Vec<DirSummary> {
    let mut map: BTreeMap<(String, String), DirSummary> = BTreeMap::new();
    let marker = format!("{separator}/");
    for o in listing {
        let Some(rest) = o.key.strip_prefix(prefix) else {
            continue;
        };
        let Some(i) = rest.find(&marker) else {
            continue;
        };
        let host = &rest[..i];
        let path = &rest[i + separator.len()..];
        let (dir, _) = layout::split_dir(path);
        let e = map
            .entry((host.to_string(), dir.to_string()))
            .or_insert_with(|| DirSummary {
                host: host.to_string(),
                dir: dir.to_string(),
                indexes: 0,
                oldest: None,
                newest: None,
                objects: 0,
                bytes: 0,
            });
        e.objects += 1;
        e.bytes += o.size;
        if o.key.ends_with(INDEX_SUFFIX) {
            e.indexes += 1;
            e.oldest = Some(e.oldest.map_or(o.last_modified, |t| t.min(o.last_modified)));
            e.newest = Some(e.newest.map_or(o.last_modified, |t| t.max(o.last_modified)));
        }
    }
    map.into_values().collect()
}

// ------------------------------------------------------------------------------------------
// The whole restore, for the CLI
// ------------------------------------------------------------------------------------------

/// Errors that stop a restore before any file is fetched.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot list the backup: {0}")]
    List(#[source] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// One listing of the origin (and of the commit-log directory), the chosen index bodies
/// fetched `threads` at a time, then [`plan`], then [`Plan::check_local`].
pub async fn prepare(
    store: &Store,
    opts: &RestoreOptions,
    threads: usize,
) -> Result<Plan, PrepareError> {
    let listing = store
        .list_all(&opts.origin_key())
        .await
        .map_err(PrepareError::List)?;
    tracing::debug!(objects = listing.len(), "listed {}/", opts.origin_key());
    let choices = choose(&listing, opts)?;
    let fetched: Vec<(String, Result<Bytes, StoreError>)> = futures::stream::iter(
        choices
            .iter()
            .map(|c| async move { (c.index.key.clone(), store.get_bytes(&c.index.key).await) }),
    )
    .buffer_unordered(threads.max(1))
    .collect()
    .await;
    let mut bodies = HashMap::new();
    for (k, r) in fetched {
        match r {
            Ok(b) => {
                bodies.insert(k, b);
            }
            Err(e) if matches!(e.kind(), ErrorKind::Denied) => {
                return Err(PrepareError::List(e));
            }
            Err(e) => tracing::error!("cannot fetch index: {e}"),
        }
    }
    let cl = match opts.commitlog_key() {
        Some(k) => Some(store.list_all(&k).await.map_err(PrepareError::List)?),
        None => None,
    };
    let mut p = plan(&listing, &bodies, cl.as_deref(), opts)?;
    p.check_local();
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn obj(key: &str, size: u64, t: i64) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size,
            last_modified: Utc.timestamp_opt(t, 0).unwrap(),
            e_tag: None,
            metadata: HashMap::new(),
        }
    }

    fn opts(sel: Selection) -> RestoreOptions {
        RestoreOptions {
            layout: Layout::new("", "h", ":"),
            origin: "/d".into(),
            target: "/restore".into(),
            selection: sel,
            as_of: None,
            commitlogs: None,
            commitlog_target: None,
        }
    }

    /// A table dir with an index per generation `gens` at times `ts`, each naming its own
    /// Data.db and a shared TOC.
    fn table(dir: &str, gens: &[(u32, i64)]) -> (Vec<ObjectInfo>, HashMap<String, Bytes>) {
        let mut l = vec![obj(&format!("h:{dir}/toc.txt"), 3, 0)];
        let mut b = HashMap::new();
        for (g, t) in gens {
            let data = format!("h:{dir}/nb-{g}-big-Data.db");
            l.push(obj(&data, 100 + *g as u64, *t));
            let ik = layout::index_key(&data);
            l.push(obj(&ik, 10, *t));
            b.insert(
                ik,
                Bytes::from(layout::listdir_json(
                    dir,
                    &[format!("nb-{g}-big-Data.db"), "toc.txt".into()],
                )),
            );
        }
        (l, b)
    }

    fn chosen(p: &Plan) -> Vec<String> {
        p.tables.iter().map(|t| t.index_key.clone()).collect()
    }

    #[test]
    fn in_order_prefix_advances_only_over_complete_ranges() {
        // (range completed, complete prefix after it)
        let cases: &[(&[usize], &[usize])] = &[
            (&[0, 1, 2], &[1, 2, 3]),
            (&[2, 1, 0], &[0, 0, 3]),
            (&[1, 0, 3, 2], &[0, 2, 2, 4]),
            (&[0], &[1]),
        ];
        for (order, want) in cases {
            let mut io = InOrder::new(order.len());
            let got: Vec<usize> = order.iter().map(|&i| io.done(i)).collect();
            assert_eq!(&got, want, "completion order {order:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_answers_every_file_and_ends_with_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, committer) = GroupCommit::new();
        let files = async move {
            let commit = &commit;
            futures::future::join_all((0..50).map(|i| {
                let p = dir.path().join(format!("f{i}"));
                async move {
                    let f = File::create(&p).unwrap();
                    f.write_all_at(&[i as u8; 4096], 0).unwrap();
                    commit.durable(Arc::new(f)).await
                }
            }))
            .await
        };
        let (results, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(files, committer)
        })
        .await
        .expect("committer did not end after its handle was dropped");
        assert_eq!(results.len(), 50);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    }

    #[test]
    fn newest_picks_latest_index_directly_in_origin() {
        let (mut l, mut b) = table("/d", &[(1, 100), (2, 200)]);
        // A deeper directory's newer index is not considered without -r.
        let (l2, b2) = table("/d/sub", &[(9, 900)]);
        l.extend(l2);
        b.extend(b2);
        let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
        assert_eq!(chosen(&p), ["h:/d/nb-2-big-Data.db-listdir.json"]);
        let t = &p.tables[0];
        assert_eq!(t.files.len(), 2);
        assert_eq!(t.files[0].dest, PathBuf::from("/restore/nb-2-big-Data.db"));
        assert_eq!(t.files[0].key, "h:/d/nb-2-big-Data.db");
        assert_eq!(t.bytes(), 102 + 3);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn equal_last_modified_breaks_ties_by_generation_then_key() {
        // Generation 10 sorts after 9 numerically, not as a string.
        let (l, b) = table("/d", &[(9, 100), (10, 100), (2, 100)]);
        let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
        assert_eq!(chosen(&p), ["h:/d/nb-10-big-Data.db-listdir.json"]);
        // The listing order does not matter.
        let mut r = l.clone();
        r.reverse();
        let p = plan(&r, &b, None, &opts(Selection::Newest)).unwrap();
        assert_eq!(chosen(&p), ["h:/d/nb-10-big-Data.db-listdir.json"]);
        // Sub-second differences are ignored (S3 lists whole seconds).
        let mut l2 = l.clone();
        for o in &mut l2 {
            if o.key.contains("nb-2-") {
                o.last_modified += chrono::Duration::milliseconds(500);
            }
        }
        let p = plan(&l2, &b, None, &opts(Selection::Newest)).unwrap();
        assert_eq!(chosen(&p), ["h:/d/nb-10-big-Data.db-listdir.json"]);
    }

    #[test]
    fn as_of_picks_newest_at_or_before() {
        let (l, b) = table("/d", &[(1, 100), (2, 200), (3, 300)]);
        let mut o = opts(Selection::Newest);
        o.as_of = Some(Utc.timestamp_opt(200, 0).unwrap());
        assert_eq!(
            chosen(&plan(&l, &b, None, &o).unwrap()),
            ["h:/d/nb-2-big-Data.db-listdir.json"]
        );
        o.as_of = Some(Utc.timestamp_opt(299, 0).unwrap());
        assert_eq!(
            chosen(&plan(&l, &b, None, &o).unwrap()),
            ["h:/d/nb-2-big-Data.db-listdir.json"]
        );
        o.as_of = Some(Utc.timestamp_opt(99, 0).unwrap());
        assert!(matches!(
            plan(&l, &b, None, &o),
            Err(PlanError::NothingToRestore { .. })
        ));
    }

    #[test]
    fn file_selects_that_index() {
        let (l, b) = table("/d", &[(1, 100), (2, 200)]);
        let p = plan(
            &l,
            &b,
            None,
            &opts(Selection::File("nb-1-big-Data.db".into())),
        )
        .unwrap();
        assert_eq!(chosen(&p), ["h:/d/nb-1-big-Data.db-listdir.json"]);
        assert!(matches!(
            plan(
                &l,
                &b,
                None,
                &opts(Selection::File("nb-5-big-Data.db".into()))
            ),
            Err(PlanError::NoSuchIndex { .. })
        ));
        assert!(matches!(
            plan(&l, &b, None, &opts(Selection::File("../x".into()))),
            Err(PlanError::BadFileArg(_))
        ));
    }

    #[test]
    fn recursive_maps_every_table_under_target_and_skips_snapshots() {
        let mut l = Vec::new();
        let mut b = HashMap::new();
        for (dir, gens) in [
            ("/d/ks1/t1-aa", vec![(1, 100), (2, 200)]),
            ("/d/ks1/t2-bb", vec![(5, 50)]),
            ("/d/ks2/t3-cc/.idx", vec![(1, 10)]),
            ("/d/ks1/t1-aa/snapshots/tag", vec![(1, 10)]),
        ] {
            let (l2, b2) = table(dir, &gens);
            l.extend(l2);
            b.extend(b2);
        }
        let mut o = opts(Selection::Recursive);
        o.as_of = Some(Utc.timestamp_opt(150, 0).unwrap());
        let p = plan(&l, &b, None, &o).unwrap();
        let got: Vec<(String, PathBuf)> = p
            .tables
            .iter()
            .map(|t| (t.index_key.clone(), t.target.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "h:/d/ks1/t1-aa/nb-1-big-Data.db-listdir.json".to_string(),
                    PathBuf::from("/restore/ks1/t1-aa")
                ),
                (
                    "h:/d/ks1/t2-bb/nb-5-big-Data.db-listdir.json".to_string(),
                    PathBuf::from("/restore/ks1/t2-bb")
                ),
                (
                    "h:/d/ks2/t3-cc/.idx/nb-1-big-Data.db-listdir.json".to_string(),
                    PathBuf::from("/restore/ks2/t3-cc/.idx")
                ),
            ]
        );
        assert_eq!(p.skipped_dirs, ["/d/ks1/t1-aa/snapshots/tag"]);
    }

    #[test]
    fn unsafe_names_and_missing_objects_are_problems_not_files() {
        let mut l = vec![obj("h:/d/nb-1-big-Data.db", 5, 10)];
        let ik = "h:/d/nb-1-big-Data.db-listdir.json".to_string();
        l.push(obj(&ik, 5, 10));
        let mut b = HashMap::new();
        b.insert(
            ik.clone(),
            Bytes::from(r#"{"/d": ["../x", "nb-1-big-Data.db"]}"#),
        );
        let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
        assert!(p.tables.is_empty());
        assert!(matches!(
            &p.problems[..],
            [TableProblem::BadIndex {
                source: ListingError::UnsafeName(n),
                ..
            }] if n == "../x"
        ));
        b.insert(
            ik,
            Bytes::from(r#"{"/d": ["nb-1-big-Data.db", "gone.db"]}"#),
        );
        let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
        assert_eq!(p.tables[0].files.len(), 1);
        assert!(matches!(
            &p.problems[..],
            [TableProblem::MissingObject { key, .. }] if key == "h:/d/gone.db"
        ));
        // No index at all.
        assert!(matches!(
            plan(&[], &HashMap::new(), None, &opts(Selection::Newest)),
            Err(PlanError::NothingToRestore { .. })
        ));
    }

    #[test]
    fn target_mapping_refuses_escapes() {
        let t = Path::new("/restore");
        assert_eq!(target_for("/d", "/d", t), Some("/restore".into()));
        assert_eq!(target_for("/d", "/d/a/b", t), Some("/restore/a/b".into()));
        assert_eq!(target_for("/d", "/d/../x", t), None);
        assert_eq!(target_for("/d", "/d/a/./b", t), None);
        assert_eq!(target_for("/d", "/dx/a", t), None);
    }

    #[test]
    fn commitlogs_newer_than_oldest_chosen_index_compare_as_integers() {
        let mut l = Vec::new();
        let mut b = HashMap::new();
        for (dir, t) in [("/d/ks/a", 1_000), ("/d/ks/b", 2_000)] {
            let (l2, b2) = table(dir, &[(1, t)]);
            l.extend(l2);
            b.extend(b2);
        }
        let cl = vec![
            obj("h:/cl/CommitLog-7-999000.log", 1, 0),
            obj("h:/cl/CommitLog-7-1000000.log", 1, 0),
            obj("h:/cl/CommitLog-7-1000001.log", 1, 0),
            // 10 digits vs 7: a string comparison would get this wrong.
            obj("h:/cl/CommitLog-7-9999999999.log", 1, 0),
            obj("h:/cl/sub/CommitLog-7-5000000.log", 1, 0),
            obj("h:/cl/notes.txt", 1, 0),
        ];
        let mut o = opts(Selection::Recursive);
        o.commitlogs = Some("/cl/".into());
        let p = plan(&l, &b, Some(&cl), &o).unwrap();
        let c = p.commitlogs.unwrap();
        assert_eq!(c.since_ms, 1_000_000);
        let names: Vec<&str> = c.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["CommitLog-7-1000001.log", "CommitLog-7-9999999999.log"]
        );
        assert_eq!(c.target, PathBuf::from("/restore/commitlogs"));
    }

    #[test]
    fn inventory_groups_by_host_and_dir() {
        let l = vec![
            obj("p/h1:/d/t/a-Data.db", 10, 5),
            obj("p/h1:/d/t/a-Data.db-listdir.json", 1, 5),
            obj("p/h1:/d/t/b-Data.db-listdir.json", 1, 9),
            obj("p/h2:/d/t/a-Data.db", 7, 1),
        ];
        let inv = inventory(&l, "p/", ":");
        assert_eq!(inv.len(), 2);
        assert_eq!(inv[0].host, "h1");
        assert_eq!(inv[0].indexes, 2);
        assert_eq!(inv[0].bytes, 12);
        assert_eq!(inv[0].oldest.unwrap().timestamp(), 5);
        assert_eq!(inv[0].newest.unwrap().timestamp(), 9);
        assert_eq!(inv[1].host, "h2");
        assert_eq!(inv[1].indexes, 0);
    }
}
