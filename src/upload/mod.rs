//! One file into the store, the way the layout wants it, without ever storing a torn or
//! misdescribed object: stat and MD5 metadata, a single PUT for small files and a streamed,
//! concurrent multipart upload for large ones (memory bounded by a shared budget of part
//! buffers, never whole files), a check that the file did not change while it was read,
//! and the `-listdir.json` index written only after every file it names is durable.
//!
//! The uploader remembers which keys are known durable (from uploads and from the startup
//! LIST), so rescans and repeated events cost no requests. That set is compact (see
//! `known`): per directory, names with size and LastModified, never full keys, so a
//! restart over a million stored objects stays under 100 MiB.
//!
//! The parts: `transfer` sends the bytes (PUT, multipart, buffer pool, hashing), `presence`
//! answers "is this file stored already" from the known set, `collision` tells the node's
//! own object from another file under the same key, `links` copies hard links inside the
//! store, and `index` writes the `-listdir.json`. This file holds [`Uploader`], its errors
//! and the path through them all, [`Uploader::ensure_durable`].

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use md5::{Digest, Md5};
use object_store::PutPayload;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::filter::Filter;
use crate::layout::{self, Layout, StatMeta};
use crate::store::{ErrorKind, ObjectInfo, PutMeta, Store, StoreError};

mod collision;
mod index;
mod known;
pub mod lineage;
mod links;
pub mod point;
mod presence;
mod transfer;

pub use index::IndexWritten;
use transfer::BufPool;
pub use transfer::{md5_and, md5_of_file, md5_of_reader};

/// S3 allows at most this many parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// Smallest part S3 accepts (except the last).
const MIN_PART: u64 = 5 << 20;
/// Default part size: small enough that memory stays low, large enough for throughput.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Permits of the memory budget are counted in units of this many bytes.
const MEM_UNIT: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub with_index: bool,
    pub md5_on_start: bool,
    /// Overwrite an object that holds another file under the same key (see
    /// [`UploadError::Collision`]).
    pub overwrite_collisions: bool,
    /// Hard links are backed up (IN_CREATE listened to): a link of an inode already
    /// stored under another key is copied in the store, not sent again.
    pub copy_hardlinks: bool,
    /// Files above this size always go multipart (the original's `--max-upload-size`).
    pub max_upload_size: u64,
    /// Part size; `None` = [`DEFAULT_PART_SIZE`], grown so no file needs more than 10,000 parts.
    pub part_size: Option<u64>,
    pub filter: Filter,
    /// Bytes of file data held in memory at once across all uploads.
    pub memory_budget: u64,
    /// Shared bandwidth limit (`--max-bandwidth`).
    pub throttle: Option<Arc<crate::throttle::Throttle>>,
    /// `--recipient`: data objects are sealed to these keys ([`crate::seal`]).
    pub seal: Option<Arc<crate::seal::Recipients>>,
    /// `--compress zstd` ([`crate::compress`]).
    pub compress: bool,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            with_index: true,
            md5_on_start: false,
            overwrite_collisions: false,
            copy_hardlinks: false,
            max_upload_size: 5120 << 20,
            part_size: None,
            filter: Filter::default(),
            memory_budget: 4 * DEFAULT_PART_SIZE,
            throttle: None,
            seal: None,
            compress: false,
        }
    }
}

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Uploaded { bytes: u64 },
    /// Already in the store with the same size (and MD5 with `--md5-on-start`).
    Present,
    /// Gone before it could be read (compacted away): nothing to do.
    Vanished,
    /// Not a regular file, or filtered out.
    Ignored,
    /// A hard link of a file already stored under another key: copied in the store.
    Copied { bytes: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the path is not valid UTF-8 and cannot be named in a key")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    #[error(
        "{path} changed while it was being uploaded (size, mtime or inode); uploading it again"
    )]
    Changed { path: PathBuf },
    #[error("upload of {path} cancelled by shutdown")]
    Cancelled { path: PathBuf },
    #[error(
        "{path}: another file is already stored under {key} (another node with this host name wrote it, e.g. a replaced node restarting SSTable generations); refusing to overwrite it: give this node another -n/--name (or pass --overwrite-collisions)"
    )]
    Collision { path: PathBuf, key: String },
}

impl UploadError {
    /// A local problem (permissions, I/O): report and wait for the next rescan instead of
    /// hammering the disk with retries.
    pub fn is_local(&self) -> bool {
        matches!(self, UploadError::Read { .. } | UploadError::NotUtf8 { .. })
    }
    /// The file's name can never be a key (object_store would rewrite it, or a local
    /// destination refuses it as too long): report once, leave it out, never retry.
    pub fn is_unstorable(&self) -> bool {
        match self {
            UploadError::NotUtf8 { .. } => true,
            UploadError::Store { source, .. } => source.is_unstorable_name(),
            UploadError::Collision { .. } => true,
            _ => false,
        }
    }

    pub fn store_kind(&self) -> Option<ErrorKind> {
        match self {
            UploadError::Store { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// Counters for the summary line and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub files_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub files_vanished: AtomicU64,
    pub indexes_written: AtomicU64,
    pub multipart_aborted: AtomicU64,
    /// Data.db files that did not match their own Digest when read for upload.
    pub corrupt_sstables: AtomicU64,
    /// Hard links stored by a copy inside the store.
    pub files_copied: AtomicU64,
    /// Stored objects whose bytes were kept under a `tablesnap-was-` name before other
    /// bytes were stored under their name ([`Uploader::supersede`]).
    pub files_superseded: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    size: u64,
    /// MD5 compared (or written by us) during this run.
    verified: bool,
    /// (inode, mtime s, mtime ns) of the local file the object was checked against during
    /// this run: a file renamed over another with the same size is still noticed.
    file: Option<(u64, i64, i64)>,
    /// When it was recorded ([`Uploader::seq`]): a LIST that started earlier cannot tell
    /// that it is gone.
    seq: u64,
    /// The object's LastModified (unix seconds): a local file modified well after it
    /// cannot be what it holds.
    stored_at: i64,
}

/// Clock skew allowed between this node and the store before a local file newer than its
/// object is suspected of being another file (then MD5s decide). A file is uploaded after
/// it is written, so its object is never older than it but for skew; a name reused (a
/// TRUNCATE and a restart, a replaced node) is written well after the object it meets:
/// Cassandra's restart alone takes longer than this. It was 15 minutes (the skew S3
/// signing tolerates): a reused `Data.db` of the same size written within them was taken
/// as stored, and named with the old bytes. A clock further ahead of the store's than
/// this costs MD5 reads at a restart, never a wrong restore point.
pub const SKEW_SECS: i64 = 5;

/// Whether the local file was modified well after the object was stored.
fn newer_than(m: &std::fs::Metadata, stored_at: i64) -> bool {
    m.mtime() > stored_at + SKEW_SECS
}

fn fingerprint(m: &std::fs::Metadata) -> (u64, i64, i64) {
    (m.ino(), m.mtime(), m.mtime_nsec())
}

pub struct Uploader {
    store: Store,
    layout: Layout,
    cfg: UploadConfig,
    known: Mutex<known::KnownSet>,
    /// Orders records of [`Known`] against LISTs.
    seq: AtomicU64,
    /// Key prefixes (`DIRKEY/`) whose full content was LISTed: absence there means absent.
    listed: Mutex<Vec<String>>,
    locks: Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>,
    mem: Arc<Semaphore>,
    mem_units: u64,
    names: Mutex<HashMap<(bool, u32), Option<String>>>,
    /// Files removed by `--delete-on-backup` after a confirmed upload, per directory: later
    /// indexes of that directory still name them (they are durable, only no longer local).
    deleted: Mutex<HashMap<PathBuf, std::collections::BTreeSet<String>>>,
    /// Data.db files uploaded whose own index is not written yet (the uploads a sibling's
    /// index made as a side effect included).
    unindexed: Mutex<std::collections::HashSet<PathBuf>>,
    /// Keys whose stored object may be torn (the file changed while it was read): upload
    /// again without trusting a size match.
    force: Mutex<std::collections::HashSet<String>>,
    /// Keys of SSTable components deleted locally since they were stored (compacted away,
    /// a TRUNCATE): the objects stay, and an earlier restore point may name them. A new file
    /// under such a name (Cassandra reusing a generation) is compared with the object by
    /// MD5 before anything is taken as stored or overwritten. Bounded by [`MAX_GONE`].
    gone: Mutex<std::collections::HashSet<String>>,
    /// Keys of SSTable components stored under a directory whose newest stored restore
    /// point (found at startup) does not name them: the node's own earlier timeline (its
    /// SSTables compacted away, truncated, or left behind by a point-in-time restore). A new
    /// file with other bytes under such a name supersedes the object (its bytes are kept)
    /// instead of being refused as another node's. Bounded by [`MAX_GONE`].
    retired: Mutex<std::collections::HashSet<String>>,
    /// Keys of Data.db files whose name held another SSTable of this directory before (in
    /// [`Uploader::gone`] or [`Uploader::retired`] once): the index key of such a name may
    /// hold that SSTable's restore point, so a new index goes under a restore point name of
    /// its own. Bounded by [`MAX_GONE`].
    displaced: Mutex<std::collections::HashSet<String>>,
    /// Keys of Data.db objects superseded in this run: another component of that SSTable
    /// with other bytes than its object supersedes it too (the object is the component of
    /// the SSTable that had the name before). Bounded by [`MAX_GONE`].
    renewed: Mutex<std::collections::HashSet<String>>,
    /// What the compactions of each directory replaced: an output not stored yet whose
    /// inputs the last listing names does not hold back that directory's other indexes.
    lineage: Mutex<lineage::Lineages>,
    /// What each directory's stored [`layout::HOLDS_NAME`] says (absent: none stored).
    holds_stored: Mutex<HashMap<PathBuf, lineage::Holds>>,
    /// TOCs of stored SSTables rewritten so far (an index build): a listing made meanwhile
    /// takes its view again.
    toc_rewrites: Mutex<HashMap<PathBuf, u64>>,
    /// Reused file-data buffers, so peak memory stays at the budget (glibc otherwise keeps
    /// freed 16 MiB buffers in per-thread arenas: 200+ MiB measured for a 64 MiB budget).
    pool: Arc<BufPool>,
    /// Files whose names no key can hold, reported once each.
    unstorable: Mutex<std::collections::HashSet<PathBuf>>,
    /// When each directory's last index PUT finished: the next one starts a second later
    /// at the earliest, so no two listings of a directory share a LastModified second.
    last_index: Mutex<HashMap<PathBuf, tokio::time::Instant>>,
    /// Digest values of Data.db files read for upload, until their SSTable's Digest
    /// component can be compared (it is written after Data.db).
    digests: Mutex<HashMap<PathBuf, crate::digest::Value>>,
    /// With `copy_hardlinks`: (device, inode) -> (key, size, mtime s, mtime ns) of the files
    /// stored in this run, so other links of them are copied in the store.
    /// (with key -> inode, so that forgetting a file drops its entry).
    #[allow(clippy::type_complexity)]
    by_inode: Mutex<(
        HashMap<String, (u64, u64)>,
        HashMap<(u64, u64), (String, u64, i64, i64)>,
    )>,
    pub stats: Stats,
}

/// At most this many [`Uploader::gone`] keys are remembered (about 150 bytes each); past
/// it the oldest protection is dropped all at once (a reused name then falls back to the
/// size-and-age rule), so memory stays bounded over years of compactions.
pub const MAX_GONE: usize = 500_000;

/// Whether `path` names a component of an SSTable.
fn is_component(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(crate::cassandra::parse_name)
        .is_some()
}

fn key_of(layout: &Layout, path: &Path) -> Result<String, UploadError> {
    let s = path.to_str().ok_or_else(|| UploadError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    Ok(layout.data_key(s))
}

impl Uploader {
    pub fn new(store: Store, layout: Layout, cfg: UploadConfig) -> Self {
        let part = cfg.part_size.unwrap_or(DEFAULT_PART_SIZE).max(MIN_PART);
        let mem_units = (cfg.memory_budget.max(part) / MEM_UNIT).clamp(1, u32::MAX as u64 / 2);
        // A sealed part is its tags and (the first) its header larger: pooled buffers are
        // made to hold one, or none would ever be reused.
        let buf = match &cfg.seal {
            Some(r) => {
                let p = part.next_multiple_of(crate::seal::CHUNK) as usize;
                crate::seal::sealed_part_len(p)
                    + crate::seal::x25519_header_len(r.len() as u64) as usize
            }
            None => part as usize,
        };
        Self {
            store,
            layout,
            cfg,
            known: Mutex::new(Default::default()),
            seq: AtomicU64::new(0),
            listed: Mutex::new(Vec::new()),
            locks: Mutex::new(HashMap::new()),
            mem: Arc::new(Semaphore::new(mem_units as usize)),
            mem_units,
            names: Mutex::new(HashMap::new()),
            deleted: Mutex::new(HashMap::new()),
            lineage: Mutex::new(lineage::Lineages::default()),
            holds_stored: Mutex::new(HashMap::new()),
            toc_rewrites: Default::default(),
            unindexed: Mutex::new(Default::default()),
            force: Mutex::new(Default::default()),
            gone: Mutex::new(Default::default()),
            retired: Mutex::new(Default::default()),
            displaced: Mutex::new(Default::default()),
            renewed: Mutex::new(Default::default()),
            pool: Arc::new(BufPool::new(
                (mem_units * MEM_UNIT / part).max(1) as usize,
                buf,
            )),
            unstorable: Mutex::new(Default::default()),
            last_index: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
            by_inode: Mutex::new(Default::default()),
            stats: Stats::default(),
        }
    }

    /// Compares the Digest value computed when `data` (a Data.db) was read with its
    /// SSTable's Digest component, if that exists by now (else later, when it is stored).
    /// A mismatch means the file is corrupt on this disk: it is still stored (it is the
    /// node's real state), and reported.
    pub(super) fn check_digest(&self, data: &Path) {
        let Some(name) = data.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let Some((digest_name, alg)) = crate::digest::digest_for_data(name) else {
            return;
        };
        let Some(got) = self.digests.lock().unwrap().get(data).copied() else {
            return;
        };
        let digest_path = data.with_file_name(&digest_name);
        let Ok(mut f) = open_regular(&digest_path) else {
            return;
        };
        let mut body = Vec::new();
        if f.by_ref().take(4096).read_to_end(&mut body).is_err() {
            return;
        }
        self.digests.lock().unwrap().remove(data);
        match crate::digest::parse(alg, &body) {
            Ok(want) if want == got => {
                tracing::debug!(path = %data.display(), "Data.db matches its Digest")
            }
            Ok(want) => {
                self.stats.corrupt_sstables.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    path = %crate::layout::printable(&data.to_string_lossy()),
                    digest = %want, computed = %got,
                    "Data.db does not match its SSTable's Digest: it is corrupt on this disk (stored anyway, as the node's real state); check it with nodetool verify and repair it"
                );
            }
            Err(e) => tracing::warn!(path = %digest_path.display(), "unreadable Digest: {e}"),
        }
    }

    /// A Digest component was stored: compare it with its Data.db if that was read.
    pub(super) fn digest_component_stored(&self, path: &Path) {
        let Some(f) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::cassandra::parse_name)
        else {
            return;
        };
        if f.component.starts_with("Digest.") {
            self.check_digest(&path.with_file_name(format!("{}-Data.db", f.sstable)));
        }
    }

    /// Records that `path`'s name cannot be stored; true the first time (report it then).
    pub fn report_unstorable(&self, path: &Path) -> bool {
        self.unstorable.lock().unwrap().insert(path.to_path_buf())
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn filter(&self) -> &Filter {
        &self.cfg.filter
    }

    pub(super) fn lock_for(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap();
        if let Some(l) = locks.get(path).and_then(Weak::upgrade) {
            return l;
        }
        if locks.len() > 4096 {
            locks.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(path.to_path_buf(), Arc::downgrade(&l));
        l
    }

    /// Makes sure the file at `path` is durable in the store, uploading it if needed.
    /// Never writes an index (see [`Uploader::write_index`]).
    pub async fn ensure_durable(
        &self,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<Outcome, UploadError> {
        let r = self.ensure_durable_locked(path, cancel).await;
        if let Ok(Outcome::Uploaded { .. } | Outcome::Present | Outcome::Copied { .. }) = r {
            self.digest_component_stored(path);
            if self.cfg.copy_hardlinks {
                self.remember_inode(path);
            }
        }
        r
    }

    pub(super) async fn ensure_durable_locked(
        &self,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<Outcome, UploadError> {
        let lock = self.lock_for(path);
        let _guard = lock.lock().await;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.stats.files_vanished.fetch_add(1, Ordering::Relaxed);
                return Ok(Outcome::Vanished);
            }
            Err(source) => {
                return Err(UploadError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if !meta.is_file() {
            return Ok(Outcome::Ignored);
        }
        let key = key_of(&self.layout, path)?;
        let size = meta.len();
        let store_err = |source| UploadError::Store {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let known = self.known(&key);
        let fp = fingerprint(&meta);
        if self.force.lock().unwrap().remove(&key) {
            return self.upload_now(path, key, size, fp, cancel).await;
        }
        // The object holds another file that used to have this name (renamed over it).
        let replaced = known.is_some_and(|k| k.file.is_some_and(|f| f != fp));
        // A name Cassandra used before in this directory, for a file since deleted, or
        // renamed over: an SSTable's name reused with perhaps other bytes. Never taken as
        // stored by its size, never uploaded over the object: the MD5s decide, and other
        // bytes are a collision (`differs`), so no restore point restores bytes it never saw.
        let reused = is_component(path)
            && (replaced
                || self.gone.lock().unwrap().contains(&key)
                || self.retired.lock().unwrap().contains(&key));
        if reused {
            return self.reused_name(path, key, &meta, fp, cancel).await;
        }
        // Written or checked by this run: trusted. From a LIST: trusted unless the local
        // file is much newer than the object (then it may be another file: ask).
        let suspect = known.is_some_and(|k| k.file.is_none() && newer_than(&meta, k.stored_at));
        if let Some(k) = known {
            if self.same_size(k.size, size)
                && !replaced
                && !suspect
                && (k.verified || !self.cfg.md5_on_start)
            {
                return Ok(Outcome::Present);
            }
        }
        let must_ask = !replaced
            && (self.cfg.md5_on_start || suspect || !self.covered(&key) || known.is_some());
        if must_ask {
            if let Some(info) = self.store.head(&key).await.map_err(store_err)? {
                let suspect = newer_than(&meta, info.last_modified.timestamp());
                if info.file_size() == size
                    && ((!self.cfg.md5_on_start && !suspect) || self.same_md5(path, &info).await?)
                {
                    self.mark(&key, size, true, Some(fp));
                    return Ok(Outcome::Present);
                }
                return self
                    .differs(path, key, &info, &meta, suspect, fp, cancel)
                    .await;
            }
        }
        if let Some(o) = self.copy_link(path, &key, &meta, fp).await {
            return Ok(o);
        }
        self.upload_now(path, key, size, fp, cancel).await
    }

    /// See `reused` in [`Self::ensure_durable`]: the object under `key` is compared with the
    /// local file by MD5; the same bytes are stored, other bytes go to
    /// [`Self::differs`] as a suspect (for an SSTable's files: a collision, refused).
    async fn reused_name(
        &self,
        path: &Path,
        key: String,
        meta: &std::fs::Metadata,
        fp: (u64, i64, i64),
        cancel: &CancellationToken,
    ) -> Result<Outcome, UploadError> {
        let size = meta.len();
        let info = self
            .store
            .head(&key)
            .await
            .map_err(|source| UploadError::Store {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let outcome = match info {
            // Deleted from the store since (tablechop): nothing to protect.
            None => self.upload_now(path, key.clone(), size, fp, cancel).await?,
            Some(info) if info.file_size() == size && self.same_md5(path, &info).await? => {
                self.mark(&key, size, true, Some(fp));
                self.retired.lock().unwrap().remove(&key);
                Outcome::Present
            }
            // This run saw the file under this name deleted: Cassandra numbered a
            // generation again (a TRUNCATE, a DROP and re-CREATE with the same id). The
            // old bytes stay restorable for the restore points that name them.
            Some(info) if self.gone.lock().unwrap().contains(&key) => {
                self.supersede(path, key.clone(), &info, size, fp, cancel, "an SSTable name this directory used before, for a file deleted since, with other bytes (Cassandra numbered a generation again after a TRUNCATE or a re-CREATE)").await?
            }
            Some(info) => {
                return self.differs(path, key, &info, meta, true, fp, cancel).await;
            }
        };
        self.gone.lock().unwrap().remove(&key);
        Ok(outcome)
    }

    /// `--delete-on-backup`: removes a file whose upload is confirmed, remembering it for the
    /// indexes of its directory.
    pub fn delete_local(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "deleted after a confirmed upload (--delete-on-backup)");
                if let (Some(dir), Some(name)) =
                    (path.parent(), path.file_name().and_then(|n| n.to_str()))
                {
                    self.deleted
                        .lock()
                        .unwrap()
                        .entry(dir.to_path_buf())
                        .or_default()
                        .insert(name.to_string());
                }
            }
            Err(e) => tracing::warn!(path = %path.display(), "could not delete after upload: {e}"),
        }
    }
}

pub use crate::localfs::{SETTLE, open_regular, settled};
