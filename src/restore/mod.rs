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
//!
//! Memory grows with what is restored, not with the bucket (issue #18): the one LIST is
//! folded as it streams into [`listing`] (per directory, names in one arena: 24 bytes + the
//! name per object), a planned file is a slot of it (64 bytes), and `--dry-run` prints the
//! plan as it goes. A million-object node: 939 MiB before, about 160 MiB now (`bench/`).
//!
//! The code is split by stage: [`plan`](mod@plan) (pure choice of file sets), [`listing`]
//! (the LIST, compact), `points`
//! (complete restore points: the newest index whose every object exists), `mapping`
//! (restore into a re-created schema), `render` (`--dry-run`), [`space`] (room before
//! bytes), [`dirs`] (directories under TARGET without following symlinks), [`fetch`]
//! (downloads, written and verified), [`verify`](mod@verify) (MD5 and Cassandra digests;
//! `--verify`), [`commit`] (the group commit) and [`inventory`](mod@inventory) (`--list`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::StreamExt;

use crate::store::{ErrorKind, Store, StoreError};

mod commit;
pub mod dirs;
pub mod fetch;
pub mod generations;
pub mod inventory;
pub mod listing;
mod mapping;
pub mod plan;
mod points;
mod render;
pub mod sealed;
pub mod space;
pub mod superseded;
pub mod verify;

pub use fetch::{execute, gid_of, uid_of};
pub use inventory::{DirSummary, Inventory, inventory};
pub use listing::{Listing, ListingError};
pub use plan::{
    Choice, CommitlogPlan, DigestRef, FileSet, IndexCheck, Plan, PlanError, PlannedFile,
    RestoreOptions, Selection, TableMapping, TablePlan, TableProblem, choose, existing_table_dirs,
    newness, plan,
};
pub use verify::verify;

/// A name as it may be logged: control characters escaped ([`crate::layout::printable`]),
/// so a key cannot forge log lines.
pub fn escape(s: &str) -> String {
    crate::layout::printable(s).into_owned()
}

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
    /// Make each file durable (group commit: syncfs + fsync) before its rename, and each
    /// directory at the end. Off (`--no-fsync`), restored files are verified but left to
    /// the kernel's write-back, as s5cmd/rclone/aws-cli leave them.
    pub durable: bool,
    /// A download that delivers no byte for this long is abandoned (and retried).
    pub idle_timeout: Duration,
    /// Test hook: called with (key, bytes received so far) after each chunk of a download.
    pub chunk_hook: Option<ChunkHook>,
    /// `--identity`: the keys sealed objects are opened with ([`crate::seal`]).
    pub identities: Option<Arc<crate::seal::Identities>>,
}

/// See [`ExecOptions::chunk_hook`].
pub type ChunkHook = Arc<dyn Fn(&str, u64) + Send + Sync>;

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
            durable: true,
            idle_timeout: Duration::from_secs(120),
            chunk_hook: None,
            identities: None,
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
    #[error("{} {why}; not overwritten (use --force)", path.display())]
    Exists {
        path: PathBuf,
        key: String,
        /// e.g. "exists with 3 bytes but KEY has 5".
        why: String,
    },
    #[error("{key}: download stalled at byte {at}: {why}")]
    Stalled { key: String, at: u64, why: String },
    #[error(
        "{key}: no checksum at all (no md5sum metadata, no single-part ETag, no Digest): its content cannot be verified"
    )]
    NoChecksum { key: String },
    #[error(transparent)]
    Dir(#[from] dirs::DirError),
    #[error(transparent)]
    Digest(Box<DigestMismatch>),
    #[error(
        "{key} is sealed (age): pass --identity FILE with the secret key of one of its recipients"
    )]
    NeedIdentity { key: String },
    #[error(
        "{key} is sealed to other keys: none of the --identity keys given opens it; pass the \
         identity of one of its recipients (an older key for objects sealed before a rotation)"
    )]
    WrongIdentity { key: String },
    #[error("{key}: {why}")]
    Sealed { key: String, why: String },
    #[error(
        "{key}: {why}: the stored bytes are not what was sealed (tampered or corrupted); \
         nothing was written under its name"
    )]
    Tampered { key: String, why: String },
    #[error("{key}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        key: String,
        attempts: u32,
        #[source]
        last: Box<RestoreError>,
    },
}

/// A `Data.db` whose bytes do not match its SSTable's Digest.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host}: table {dir}, SSTable {sstable}, index {index}: Data.db does not match its Digest \
     ({expected} in {digest_key}, {actual} computed from {key}): the backup was already bad \
     at the source (corrupt on the node's disk when it was uploaded)"
)]
pub struct DigestMismatch {
    pub host: String,
    pub dir: String,
    pub sstable: String,
    pub index: String,
    pub key: String,
    pub digest_key: String,
    pub expected: String,
    pub actual: String,
}

impl RestoreError {
    pub(super) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { op, path, source }
    }

    /// Whether another attempt may succeed.
    pub(super) fn retriable(&self) -> bool {
        match self {
            RestoreError::Size { .. } | RestoreError::Md5 { .. } | RestoreError::Stalled { .. } => {
                true
            }
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
    /// Of `verified`: sealed objects checked by their stored bytes' CRC-32 only (no
    /// `--identity`, so neither plaintext MD5 nor Digest).
    pub verified_sealed_only: usize,
    pub failures: Vec<(String, RestoreError)>,
    /// SSTables in TARGET missing a component their `TOC.txt` lists (after a restore).
    pub incomplete_sstables: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.incomplete_sstables.is_empty()
    }
}

// ------------------------------------------------------------------------------------------
// The whole restore, for the CLI
// ------------------------------------------------------------------------------------------

/// Errors that stop a restore before any file is fetched.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot list the backup: {0}")]
    List(#[source] StoreError),
    #[error(
        "cannot read index {}: {source}; stopping rather than restoring an older restore point in its place (try again, or choose one with -f or --as-of)",
        escape(key)
    )]
    Index {
        key: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The listing cannot be held ([`ListingError::TooLarge`]).
    #[error(transparent)]
    Listing(ListingError),
}

impl From<ListingError> for PrepareError {
    fn from(e: ListingError) -> Self {
        match e {
            ListingError::Store(e) => PrepareError::List(e),
            e @ ListingError::TooLarge { .. } => PrepareError::Listing(e),
        }
    }
}

/// One listing of the origin (and of the commit-log directory), the chosen index bodies
/// fetched `threads` at a time, then [`plan`], then [`Plan::check_local`].
pub async fn prepare(
    store: &Store,
    opts: &RestoreOptions,
    threads: usize,
) -> Result<Plan, PrepareError> {
    let listing = Listing::collect(store.list_dir(&opts.origin_key())).await?;
    tracing::debug!(objects = listing.len(), "listed {}/", opts.origin_key());
    // Newest index first per table; an older one only while the newer are incomplete.
    let mut bodies: HashMap<String, Bytes> = HashMap::new();
    loop {
        let want = plan::needed_bodies(&listing, &bodies, opts)?;
        if want.is_empty() {
            break;
        }
        let fetched: Vec<(String, Result<Bytes, StoreError>)> =
            futures::stream::iter(want.into_iter().map(|k| async move {
                let r = store.get_bytes(&k).await;
                (k, r)
            }))
            .buffer_unordered(threads.max(1))
            .collect()
            .await;
        for (k, r) in fetched {
            match r {
                Ok(b) if !b.is_empty() => {
                    bodies.insert(k, b);
                }
                Ok(_) => {
                    tracing::error!("index {} is empty", escape(&k));
                    bodies.insert(k, Bytes::new());
                }
                Err(e) if matches!(e.kind(), ErrorKind::Denied) => {
                    return Err(PrepareError::List(e));
                }
                // Deleted since the listing (tablechop): unusable, so the walk goes on to
                // the next older one, with the warning an incomplete index gets.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound) => {
                    tracing::warn!("index {} is gone since the listing: {e}", escape(&k));
                    bodies.insert(k, Bytes::new());
                }
                // Anything else (5xx, network, after the client's own retries): the restore
                // point is there but unread; an older one must not be restored silently.
                Err(source) => return Err(PrepareError::Index { key: k, source }),
            }
        }
    }
    let cl = match opts.commitlog_key() {
        Some(k) => Some(Listing::collect(store.list_dir(&k)).await?),
        None => None,
    };
    let mut p = plan(&listing, &bodies, cl.as_ref(), opts)?;
    p.check_local();
    Ok(p)
}
