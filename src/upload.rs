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

mod known;

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
/// object is suspected of being another file (then MD5s decide).
const SKEW_SECS: i64 = 15 * 60;

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
    /// Reused file-data buffers, so peak memory stays at the budget (glibc otherwise keeps
    /// freed 16 MiB buffers in per-thread arenas: 200+ MiB measured for a 64 MiB budget).
    pool: Arc<BufPool>,
    /// Files whose names no key can hold, reported once each.
    unstorable: Mutex<std::collections::HashSet<PathBuf>>,
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
            unindexed: Mutex::new(Default::default()),
            force: Mutex::new(Default::default()),
            pool: Arc::new(BufPool {
                bufs: Mutex::new(Vec::new()),
                keep: (mem_units * MEM_UNIT / part).max(1) as usize,
                part: part as usize,
            }),
            unstorable: Mutex::new(Default::default()),
            digests: Mutex::new(HashMap::new()),
            by_inode: Mutex::new(Default::default()),
            stats: Stats::default(),
        }
    }

    /// Compares the Digest value computed when `data` (a Data.db) was read with its
    /// SSTable's Digest component, if that exists by now (else later, when it is stored).
    /// A mismatch means the file is corrupt on this disk: it is still stored (it is the
    /// node's real state), and reported.
    fn check_digest(&self, data: &Path) {
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
    fn digest_component_stored(&self, path: &Path) {
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

    /// Records everything under `dir` (a local directory) with one LIST, so that files
    /// already stored are skipped without a request each (the original sent one HEAD per
    /// file). Returns the number of objects found.
    pub async fn reconcile(&self, dir: &Path) -> Result<usize, UploadError> {
        // Replaces what was known under `dir` (objects deleted since, e.g. by tablechop,
        // are forgotten), keeping MD5 verifications of unchanged objects.
        let dir_key = key_of(&self.layout, dir)?;
        // Uploads go on while the LIST runs: what they record meanwhile is newer than the
        // listing and must survive it.
        let started = self.seq.load(Ordering::Relaxed);
        // Streamed into the compact form: never the whole LIST as full keys at once.
        use futures::StreamExt;
        let mut listing = known::Listing::default();
        let mut stream = self.store.list_dir(&dir_key);
        while let Some(o) = stream.next().await {
            let o = o.map_err(|source| UploadError::Store {
                path: dir.to_path_buf(),
                source: Box::new(source),
            })?;
            listing.push(&o.key, o.size, o.last_modified.timestamp());
        }
        let n = listing.count();
        let under = format!("{}/", dir_key.trim_end_matches('/'));
        self.known
            .lock()
            .unwrap()
            .replace_under(&under, listing.finish(), started);
        let mut listed = self.listed.lock().unwrap();
        if !listed.contains(&under) {
            listed.push(under);
        }
        Ok(n)
    }

    fn covered(&self, key: &str) -> bool {
        self.listed
            .lock()
            .unwrap()
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    fn known(&self, key: &str) -> Option<Known> {
        self.known.lock().unwrap().get(key)
    }

    fn mark(&self, key: &str, size: u64, verified: bool, file: Option<(u64, i64, i64)>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.known.lock().unwrap().insert(
            key,
            Known {
                size,
                verified,
                file,
                seq,
                stored_at: chrono::Utc::now().timestamp(),
            },
        );
    }

    /// The local file is gone (compacted, moved away): drop what we remember about it, so
    /// memory stays bounded over years of compactions. Safe: the objects stay in the store.
    pub fn forget(&self, path: &Path) {
        if let Ok(k) = key_of(&self.layout, path) {
            {
                let mut map = self.by_inode.lock().unwrap();
                if let Some(ino) = map.0.remove(&k) {
                    if map.1.get(&ino).is_some_and(|(key, ..)| *key == k) {
                        map.1.remove(&ino);
                    }
                }
            }
            let mut known = self.known.lock().unwrap();
            known.remove(&layout::index_key(&k));
            known.remove(&k);
        }
    }

    /// Whether this Data.db was uploaded during this run and its index is not written yet.
    pub fn unindexed(&self, path: &Path) -> bool {
        self.unindexed.lock().unwrap().contains(path)
    }

    /// How many keys are remembered (for tests and metrics).
    pub fn known_len(&self) -> usize {
        self.known.lock().unwrap().len()
    }

    /// Whether the index of this data file is known to be missing (only answerable for
    /// directories covered by a LIST; otherwise `false`, to avoid a request per file).
    pub fn index_missing(&self, data_path: &Path) -> bool {
        let Ok(k) = key_of(&self.layout, data_path) else {
            return false;
        };
        let ik = layout::index_key(&k);
        self.covered(&ik) && self.known(&ik).is_none()
    }

    /// Whether [`Uploader::ensure_durable`] would find this file (`meta`: its
    /// `symlink_metadata`) already stored without asking the store: the same size, not
    /// renamed over, not much newer than its object, verified if `--md5-on-start`. A scan
    /// leaves such files out of the queue, so a restart does not queue every stored file
    /// only to find each one present.
    pub fn stored_as_is(&self, path: &Path, meta: &std::fs::Metadata) -> bool {
        let Ok(key) = key_of(&self.layout, path) else {
            return false;
        };
        let Some(k) = self.known(&key) else {
            return false;
        };
        let fp = fingerprint(meta);
        let fresh = match k.file {
            Some(f) => f == fp,
            None => !newer_than(meta, k.stored_at),
        };
        meta.is_file()
            && k.size == meta.len()
            && fresh
            && (k.verified || !self.cfg.md5_on_start)
            && !self.force.lock().unwrap().contains(&key)
            && !self.unindexed(path)
    }

    fn lock_for(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
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

    fn remember_inode(&self, path: &Path) {
        let (Ok(m), Ok(key)) = (std::fs::symlink_metadata(path), key_of(&self.layout, path)) else {
            return;
        };
        // Every stored file: a snapshot links it later (its nlink is 1 when it is written).
        let mut map = self.by_inode.lock().unwrap();
        map.0.insert(key.clone(), (m.dev(), m.ino()));
        map.1.insert(
            (m.dev(), m.ino()),
            (key, m.len(), m.mtime(), m.mtime_nsec()),
        );
    }

    /// Another link of this file's inode is stored (same size and mtime, so same bytes):
    /// copy that object in the store instead of sending the bytes again.
    async fn copy_link(
        &self,
        path: &Path,
        key: &str,
        meta: &std::fs::Metadata,
        fp: (u64, i64, i64),
    ) -> Option<Outcome> {
        if !self.cfg.copy_hardlinks || meta.nlink() < 2 {
            return None;
        }
        let src = {
            let map = self.by_inode.lock().unwrap();
            let (k, size, s, ns) = map.1.get(&(meta.dev(), meta.ino()))?;
            (*size == meta.len() && *s == meta.mtime() && *ns == meta.mtime_nsec() && k != key)
                .then(|| k.clone())?
        };
        match self.store.copy(&src, key).await {
            Ok(()) => {
                self.mark(key, meta.len(), true, Some(fp));
                self.stats.files_copied.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = %path.display(), from = src, "hard link copied in the store");
                Some(Outcome::Copied { bytes: meta.len() })
            }
            Err(e) => {
                // The source is gone (deleted by someone else) or the store cannot copy:
                // forget it and send the bytes.
                tracing::debug!(path = %path.display(), "copy from {src} failed ({e}); uploading instead");
                self.known.lock().unwrap().remove(&src);
                let mut map = self.by_inode.lock().unwrap();
                map.0.remove(&src);
                map.1.remove(&(meta.dev(), meta.ino()));
                None
            }
        }
    }

    async fn ensure_durable_locked(
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
        // Written or checked by this run: trusted. From a LIST: trusted unless the local
        // file is much newer than the object (then it may be another file: ask).
        let suspect = known.is_some_and(|k| k.file.is_none() && newer_than(&meta, k.stored_at));
        if let Some(k) = known {
            if k.size == size && !replaced && !suspect && (k.verified || !self.cfg.md5_on_start) {
                return Ok(Outcome::Present);
            }
        }
        let must_ask = !replaced
            && (self.cfg.md5_on_start || suspect || !self.covered(&key) || known.is_some());
        if must_ask {
            if let Some(info) = self.store.head(&key).await.map_err(store_err)? {
                let suspect = newer_than(&meta, info.last_modified.timestamp());
                if info.size == size
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

    /// The object under `key` is not the local file (another size, or another MD5). Whose
    /// is it? Never overwrite another node's SSTable that its indexes name (issue #10,
    /// defect 14): Integer generations restart at 1 on a replaced node with the same host
    /// name, so its files meet the old node's objects under the same keys.
    #[allow(clippy::too_many_arguments)]
    async fn differs(
        &self,
        path: &Path,
        key: String,
        info: &ObjectInfo,
        meta: &std::fs::Metadata,
        suspect: bool,
        fp: (u64, i64, i64),
        cancel: &CancellationToken,
    ) -> Result<Outcome, UploadError> {
        let size = meta.len();
        if self.cfg.overwrite_collisions {
            tracing::warn!(path = %path.display(), key, "the stored object holds other bytes; overwriting it (--overwrite-collisions)");
            return self.upload_now(path, key, size, fp, cancel).await;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let sstable = crate::cassandra::parse_name(name);
        if info.size == size && (!suspect || sstable.is_none()) {
            // Same size, different MD5, and the file is not newer than the object (or not
            // an SSTable's, where no other node is to be feared): bit rot on this disk is
            // likelier; keep the good copy (like the original; for a Data.db, Cassandra's
            // Digest tells which one is right).
            tracing::warn!(path = %path.display(), key, "the stored object has the same size but a different MD5: the local file may be corrupt; keeping the stored copy (check the local file)");
            self.mark(&key, size, true, Some(fp));
            return Ok(Outcome::Present);
        }
        let Some(f) = sstable else {
            // Not an SSTable component: another size is stored again, as before.
            tracing::warn!(path = %path.display(), key, local = size, stored = info.size, "the stored object has a different size; uploading the local file again");
            return self.upload_now(path, key, size, fp, cancel).await;
        };
        if f.component == "Data.db" {
            if info.size < size && self.torn_prefix(path, info).await? {
                tracing::warn!(path = %path.display(), key, "the stored object is a torn prefix of this file (written by an older tablesnap while the file grew); replacing it");
                return self.upload_now(path, key, size, fp, cancel).await;
            }
            return Err(UploadError::Collision {
                path: path.to_path_buf(),
                key,
            });
        }
        // Another component: a rewrite of this very SSTable (Summary.db resampled,
        // Statistics.db re-marked repaired) if its Data.db is the one stored.
        let data = path.with_file_name(format!("{}-Data.db", f.sstable));
        match self.same_as_stored(&data).await? {
            Some(true) => {
                tracing::info!(path = %path.display(), key, "component rewritten since it was stored; keeping the stored copy, which belongs to the same SSTable");
                self.mark(&key, info.size, true, Some(fp));
                Ok(Outcome::Present)
            }
            Some(false) => Err(UploadError::Collision {
                path: path.to_path_buf(),
                key,
            }),
            // No Data.db stored under this SSTable's name: nothing an index can name.
            None => self.upload_now(path, key, size, fp, cancel).await,
        }
    }

    /// Whether the stored object of local `data` holds the same bytes (None: no object, or
    /// no local file to compare).
    async fn same_as_stored(&self, data: &Path) -> Result<Option<bool>, UploadError> {
        let Ok(m) = std::fs::symlink_metadata(data) else {
            return Ok(None);
        };
        let key = key_of(&self.layout, data)?;
        if let Some(k) = self.known(&key) {
            if k.file == Some(fingerprint(&m)) {
                return Ok(Some(true));
            }
        }
        let info = self
            .store
            .head(&key)
            .await
            .map_err(|source| UploadError::Store {
                path: data.to_path_buf(),
                source: Box::new(source),
            })?;
        let Some(info) = info else { return Ok(None) };
        if info.size != m.len() {
            return Ok(Some(false));
        }
        if !newer_than(&m, info.last_modified.timestamp()) {
            return Ok(Some(true));
        }
        Ok(Some(self.same_md5(data, &info).await?))
    }

    /// Whether the stored object is exactly the first bytes of the local file.
    async fn torn_prefix(&self, path: &Path, info: &ObjectInfo) -> Result<bool, UploadError> {
        let Some(expected) = info.expected_md5() else {
            return Ok(false);
        };
        let (p, n) = (path.to_path_buf(), info.size);
        let got = tokio::task::spawn_blocking(move || {
            let f = open_regular(&p)?;
            md5_of_reader(&mut f.take(n))
        })
        .await
        .expect("hash task panicked")
        .map_err(|source| UploadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(got == expected)
    }

    /// Uploads the file now (the presence checks are done), and records the result.
    async fn upload_now(
        &self,
        path: &Path,
        key: String,
        _size: u64,
        fp: (u64, i64, i64),
        cancel: &CancellationToken,
    ) -> Result<Outcome, UploadError> {
        let bytes = match self.put_file(path, &key, cancel).await {
            Ok(b) => b,
            Err(e @ UploadError::Changed { .. }) => {
                // What was stored may be torn and would pass a size check: remove it and
                // make the retry upload again whatever it finds.
                self.known.lock().unwrap().remove(&key);
                self.force.lock().unwrap().insert(key.clone());
                if let Err(de) = self.store.delete(&key).await {
                    tracing::warn!(key, "could not delete a possibly torn object: {de}");
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if self.cfg.with_index
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(layout::wants_index)
        {
            self.unindexed.lock().unwrap().insert(path.to_path_buf());
        }
        self.mark(&key, bytes, true, Some(fp));
        self.stats.files_uploaded.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_uploaded
            .fetch_add(bytes, Ordering::Relaxed);
        Ok(Outcome::Uploaded { bytes })
    }

    async fn same_md5(&self, path: &Path, info: &ObjectInfo) -> Result<bool, UploadError> {
        let Some(expected) = info.expected_md5() else {
            return Ok(false);
        };
        let p = path.to_path_buf();
        let got = tokio::task::spawn_blocking(move || {
            let mut f = open_regular(&p)?;
            md5_of_reader(&mut f)
        })
        .await
        .expect("hash task panicked");
        match got {
            Ok(h) => Ok(h == expected),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(UploadError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn stat_meta(&self, m: &std::fs::Metadata) -> StatMeta {
        StatMeta {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
            user: self.name_of(false, m.uid()),
            group: self.name_of(true, m.gid()),
        }
    }

    fn name_of(&self, group: bool, id: u32) -> Option<String> {
        let mut cache = self.names.lock().unwrap();
        cache
            .entry((group, id))
            .or_insert_with(|| if group { group_name(id) } else { user_name(id) })
            .clone()
    }

    /// Part size for a file of `size` bytes: the configured one, grown to fit 10,000 parts.
    pub fn part_size_for(&self, size: u64) -> u64 {
        let base = self
            .cfg
            .part_size
            .unwrap_or(DEFAULT_PART_SIZE)
            .max(MIN_PART);
        let needed = size.div_ceil(MAX_PARTS);
        base.max(needed.div_ceil(1 << 20) << 20)
    }

    async fn acquire(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = bytes.div_ceil(MEM_UNIT).clamp(1, self.mem_units) as u32;
        self.mem
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("memory semaphore closed")
    }

    async fn put_file(
        &self,
        path: &Path,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<u64, UploadError> {
        let read_err = |source| UploadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = match open_regular(path) {
            Ok(f) => f,
            Err(e) => return Err(read_err(e)),
        };
        let before = file.metadata().map_err(read_err)?;
        let size = before.len();
        let stat = self.stat_meta(&before).to_json();
        let file = Arc::new(file);
        let part = self.part_size_for(size);
        let single = size <= self.cfg.max_upload_size && size <= part;
        // Cassandra's own checksum of a Data.db, computed in the same read as the MD5.
        let alg = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::digest::digest_for_data)
            .map(|(_, a)| a);
        let digest_value;
        tracing::debug!(path = %path.display(), size, single, "uploading");
        let uploaded = if single {
            let permit = self.acquire(self.pool.budget_for(size)).await;
            let f = file.clone();
            let pool = self.pool.clone();
            let (body, md5, dv) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let mut buf = pool.take(size as usize, permit);
                let n = read_full(&f, &mut buf.buf)?;
                buf.buf.truncate(n);
                let md5 = hex::encode(Md5::digest(&buf.buf));
                let dv = alg.map(|a| {
                    let mut h = crate::digest::Hasher::new(a);
                    h.update(&buf.buf);
                    h.finish()
                });
                Ok((buf.into_bytes(), md5, dv))
            })
            .await
            .expect("read task panicked")
            .map_err(read_err)?;
            digest_value = dv;
            if body.len() as u64 != size {
                return Err(UploadError::Changed {
                    path: path.to_path_buf(),
                });
            }
            let meta = self.data_meta(stat, md5);
            if let Some(t) = &self.cfg.throttle {
                t.take(size).await;
            }
            self.store
                .put(key, body, &meta)
                .await
                .map_err(|source| UploadError::Store {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })?;
            size
        } else {
            let f = file.clone();
            let (md5, dv) = tokio::task::spawn_blocking(move || {
                let mut h = alg.map(crate::digest::Hasher::new);
                let md5 = md5_and(&f, &mut |b| {
                    if let Some(h) = h.as_mut() {
                        h.update(b)
                    }
                })?;
                Ok::<_, std::io::Error>((md5, h.map(|h| h.finish())))
            })
            .await
            .expect("hash task panicked")
            .map_err(read_err)?;
            digest_value = dv;
            let meta = self.data_meta(stat, md5);
            self.put_multipart(path, key, &file, size, part, &meta, cancel)
                .await?;
            size
        };
        // Immutable files only: if the file moved under us, what we stored may be torn.
        match std::fs::symlink_metadata(path) {
            Ok(after)
                if after.len() == before.len()
                    && after.ino() == before.ino()
                    && after.mtime() == before.mtime()
                    && after.mtime_nsec() == before.mtime_nsec() =>
            {
                if let Some(v) = digest_value {
                    self.digests.lock().unwrap().insert(path.to_path_buf(), v);
                    self.check_digest(path);
                }
                Ok(uploaded)
            }
            // Deleted after we read it completely: what we stored is the whole file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = file.metadata().map_err(read_err)?;
                if now.len() == size && now.mtime_nsec() == before.mtime_nsec() {
                    Ok(uploaded)
                } else {
                    Err(UploadError::Changed {
                        path: path.to_path_buf(),
                    })
                }
            }
            _ => Err(UploadError::Changed {
                path: path.to_path_buf(),
            }),
        }
    }

    fn data_meta(&self, stat: String, md5: String) -> PutMeta {
        PutMeta {
            content_type: None,
            user: vec![(layout::META_STAT, stat), (layout::META_MD5, md5)],
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_multipart(
        &self,
        path: &Path,
        key: &str,
        file: &Arc<File>,
        size: u64,
        part: u64,
        meta: &PutMeta,
        cancel: &CancellationToken,
    ) -> Result<(), UploadError> {
        let store_err = |source| UploadError::Store {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let mut upload = self
            .store
            .start_multipart(key, meta)
            .await
            .map_err(store_err)?;
        let result: Result<(), UploadError> = async {
            let mut parts: JoinSet<object_store::Result<()>> = JoinSet::new();
            let mut offset = 0u64;
            while offset < size {
                if cancel.is_cancelled() {
                    return Err(UploadError::Cancelled {
                        path: path.to_path_buf(),
                    });
                }
                // Surface a failed part early instead of reading the rest of the file.
                while let Some(done) = parts.try_join_next() {
                    done.expect("part task panicked")
                        .map_err(|source| store_err(StoreError::Op {
                            op: "upload part of",
                            key: key.to_string(),
                            source,
                        }))?;
                }
                let len = part.min(size - offset);
                let permit = tokio::select! {
                    p = self.acquire(self.pool.budget_for(len)) => p,
                    _ = cancel.cancelled() => return Err(UploadError::Cancelled { path: path.to_path_buf() }),
                };
                let f = file.clone();
                let at = offset;
                let pool = self.pool.clone();
                let chunk = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
                    let mut buf = pool.take(len as usize, permit);
                    f.read_exact_at(&mut buf.buf, at)?;
                    Ok(buf.into_bytes())
                })
                .await
                .expect("read task panicked")
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        UploadError::Changed {
                            path: path.to_path_buf(),
                        }
                    } else {
                        UploadError::Read {
                            path: path.to_path_buf(),
                            source: e,
                        }
                    }
                })?;
                if let Some(t) = &self.cfg.throttle {
                    t.take(len).await;
                }
                parts.spawn(upload.put_part(PutPayload::from_bytes(chunk)));
                offset += len;
            }
            loop {
                let next = tokio::select! {
                    n = parts.join_next() => n,
                    _ = cancel.cancelled() => return Err(UploadError::Cancelled { path: path.to_path_buf() }),
                };
                let Some(done) = next else { break };
                done.expect("part task panicked").map_err(|source| {
                    store_err(StoreError::Op {
                        op: "upload part of",
                        key: key.to_string(),
                        source,
                    })
                })?;
            }
            upload.complete().await.map_err(|source| {
                store_err(StoreError::Op {
                    op: "complete multipart upload of",
                    key: key.to_string(),
                    source,
                })
            })?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // Never leave an orphaned multipart upload behind (parts cost money, forever).
            self.stats.multipart_aborted.fetch_add(1, Ordering::Relaxed);
            if let Err(ae) = upload.abort().await {
                tracing::warn!(key, error = %ae, "could not abort the multipart upload; a bucket lifecycle rule will clean it up");
            }
            return Err(e);
        }
        self.store.finish_multipart(key, meta).map_err(store_err)
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

    /// Writes the `-listdir.json` index of each of `data_files` (all in one directory):
    /// classifies the directory now ([`crate::cassandra::DirView`]), makes every file of
    /// every complete SSTable and every settled other file durable first (uploading what is
    /// missing; a file that vanished is left out), then PUTs the index under the keys of
    /// the Data.db files it names. Files of unfinished SSTables are neither read nor named.
    pub async fn write_index(
        &self,
        dir: &Path,
        data_files: &[PathBuf],
        cancel: &CancellationToken,
    ) -> Result<IndexWritten, UploadError> {
        let dir_str = dir.to_str().ok_or_else(|| UploadError::NotUtf8 {
            path: dir.to_path_buf(),
        })?;
        // Only what makes a restore point: complete SSTables (never a file of one still
        // being written: it is not even read here) and other regular files that are closed.
        let view = match crate::cassandra::view_dir(dir) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(IndexWritten::default());
            }
            Err(source) => {
                return Err(UploadError::Read {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        let nameable = view.nameable();
        let mut listed = Vec::with_capacity(nameable.len());
        for n in nameable {
            if !self.cfg.filter.accepts(&n) {
                continue;
            }
            let path = dir.join(&n);
            if view.others.contains(&n) && !settled(&path) {
                // Written within the last moments (and perhaps still open): named by a
                // later index, once its own event or upload made it durable.
                continue;
            }
            match self.ensure_durable(&path, cancel).await {
                Ok(Outcome::Uploaded { .. } | Outcome::Present | Outcome::Copied { .. }) => {
                    listed.push(n)
                }
                Ok(Outcome::Vanished | Outcome::Ignored) => {}
                // An unreadable sibling must not hold back the index of everything else:
                // leave it out (the index names only durable objects); its own retries
                // upload it, and the next index names it.
                Err(e) if e.is_local() => {
                    tracing::warn!("{e}; not named in the index of {}", dir.display())
                }
                // Changed: being rewritten now; it gets its own upload and a later index.
                Err(UploadError::Changed { .. }) => {}
                // A name no key can hold must not make the whole table unrestorable.
                Err(e) if e.is_unstorable() => {
                    if self.report_unstorable(&path) {
                        tracing::error!("{e}; left out of the index of {}", dir.display());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        // An SSTable is named whole or not at all: one component that is not durable (it
        // could not be read, or its key holds another node's file) leaves it out.
        let durable: std::collections::BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        let partial: std::collections::BTreeSet<String> = view
            .sstables
            .values()
            .filter(|s| {
                s.state.is_ok()
                    && s.files
                        .iter()
                        .any(|f| self.cfg.filter.accepts(f) && !durable.contains(f.as_str()))
            })
            .map(|s| s.name.clone())
            .collect();
        if !partial.is_empty() {
            tracing::warn!(dir = %dir.display(), sstables = ?partial, "SSTables with a component not stored are left out of this index");
            listed.retain(|n| {
                crate::cassandra::parse_name(n).is_none_or(|f| !partial.contains(f.sstable))
            });
        }
        let unfinished: Vec<String> = view
            .unfinished()
            .map(|(s, why)| format!("{s} ({why})"))
            .collect();
        if !unfinished.is_empty() {
            tracing::debug!(dir = %dir.display(), ?unfinished, "SSTables not named in this index");
        }
        if let Some(gone) = self.deleted.lock().unwrap().get(dir) {
            listed.extend(gone.iter().filter(|n| self.cfg.filter.accepts(n)).cloned());
            listed.sort();
            listed.dedup();
        }
        // An index goes under the key of each pending Data.db it names; a Data.db of an
        // SSTable that is not complete yet waits for a later index (never an index that
        // does not name it, and never an older restore point overwritten).
        let (named, deferred): (Vec<PathBuf>, Vec<PathBuf>) =
            data_files.iter().cloned().partition(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| listed.iter().any(|l| l == n))
            });
        let deferred: Vec<PathBuf> = deferred
            .into_iter()
            .filter(|d| {
                // Only an SSTable still being written is looked at again; one left out for a
                // lasting reason (a collision, a name no key holds) waits for its next event.
                d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| view.is_unfinished(n))
            })
            .collect();
        let body = Bytes::from(layout::listdir_json(dir_str, &listed));
        let meta = PutMeta {
            content_type: Some(layout::INDEX_CONTENT_TYPE.into()),
            user: vec![],
        };
        for data in &named {
            let key = layout::index_key(&key_of(&self.layout, data)?);
            tokio::select! {
                r = self.store.put(&key, body.clone(), &meta) => r.map_err(|source| UploadError::Store {
                    path: data.clone(),
                    source: Box::new(source),
                })?,
                _ = cancel.cancelled() => return Err(UploadError::Cancelled { path: data.clone() }),
            }
            self.mark(&key, body.len() as u64, true, None);
            self.unindexed.lock().unwrap().remove(data);
            self.stats.indexes_written.fetch_add(1, Ordering::Relaxed);
        }
        Ok(IndexWritten {
            names: listed,
            indexed: named,
            deferred,
        })
    }
}

/// How long a file that is not part of an SSTable must be left unmodified before a scan
/// takes it as closed. SSTable components need no such guess: the TOC and the transaction
/// logs say when an SSTable is complete.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// See [`SETTLE`].
pub fn settled(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= SETTLE))
}

/// Opens a file for reading the safe way for a directory others write to: never blocking
/// (a FIFO renamed over an SSTable would hang `open` until a writer came, wedging a
/// runtime thread and shutdown with it), never through a symlink, and only if what was
/// opened is a regular file (checked on the descriptor, so a rename in between cannot
/// swap it).
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or socket where a data file should be)",
        ));
    }
    Ok(f)
}

/// What [`Uploader::write_index`] did.
#[derive(Debug, Default)]
pub struct IndexWritten {
    /// The names the index holds.
    pub names: Vec<String>,
    /// The Data.db files whose index was written.
    pub indexed: Vec<PathBuf>,
    /// Data.db files of SSTables not complete yet: they need a later index.
    pub deferred: Vec<PathBuf>,
}

/// Buffers for file data; one goes back to the pool when the request that sent it drops it,
/// and only then is its share of the memory budget released: the budget bounds the buffers
/// alive, not just the requests in flight (a request's retry copies or a body still being
/// dropped would otherwise let one more buffer into existence). See [`BufPool::budget_for`].
struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    /// Capacity of a new buffer: the default part size.
    part: usize,
}

struct PooledBuf {
    buf: Vec<u8>,
    pool: Option<Arc<BufPool>>,
    /// Dropped after the buffer is back in the pool (fields drop after `Drop::drop`).
    _permit: OwnedSemaphorePermit,
}

/// Buffers smaller than this come from the allocator directly (small SSTable components).
const POOL_MIN: usize = 1 << 20;

impl BufPool {
    /// What a buffer for `len` bytes costs of the memory budget: its capacity. A pooled buffer
    /// is at least a whole part however little of it a file needs, and once recycled all of
    /// it is resident; counting `len` instead let a 64 MiB budget hold 80 MiB of buffers.
    /// With this, buffers alive (in use or idle in the pool) never exceed the budget: a new
    /// one is allocated only when none is idle, by a holder of its full share.
    fn budget_for(&self, len: u64) -> u64 {
        if len < POOL_MIN as u64 {
            len
        } else {
            len.max(self.part as u64)
        }
    }

    /// A buffer of exactly `len` initialized bytes (zeroed only where never used before).
    fn take(self: &Arc<Self>, len: usize, permit: OwnedSemaphorePermit) -> PooledBuf {
        if len < POOL_MIN {
            return PooledBuf {
                buf: vec![0u8; len],
                pool: None,
                _permit: permit,
            };
        }
        let mut buf = {
            let mut bufs = self.bufs.lock().unwrap();
            match bufs.iter().position(|b| b.capacity() >= len) {
                Some(i) => bufs.swap_remove(i),
                // Always a whole part, so the buffer can serve any later file or part.
                None => Vec::with_capacity(len.max(self.part)),
            }
        };
        buf.resize(len, 0);
        PooledBuf {
            buf,
            pool: Some(self.clone()),
            _permit: permit,
        }
    }
}

impl PooledBuf {
    fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let mut bufs = pool.bufs.lock().unwrap();
            if bufs.len() < pool.keep {
                bufs.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// Reads from offset 0 until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Lowercase hex MD5 of a whole file, for the pass a multipart upload needs before it may
/// start. A second thread keeps the page cache filled up to `READ_AHEAD` bytes ahead of
/// the hash, so reading (disk I/O, or the kernel zero-filling a sparse file) and hashing use
/// two cores instead of taking turns on one (bench/: one 4 GiB file, the pass took 12.5 s,
/// of which MD5 itself is about 6).
pub fn md5_of_file(file: &File) -> std::io::Result<String> {
    md5_and(file, &mut |_| {})
}

/// [`md5_of_file`], showing every chunk to `also` too (Cassandra's Digest of a Data.db is
/// computed in the same read).
pub fn md5_and(file: &File, also: &mut dyn FnMut(&[u8])) -> std::io::Result<String> {
    use std::os::unix::io::AsRawFd;
    let size = file.metadata()?.len();
    let hashed = AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut ahead = 0u64;
            while ahead < size && !stop.load(Ordering::Relaxed) {
                if ahead >= hashed.load(Ordering::Relaxed) + READ_AHEAD {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                let n = (8u64 << 20).min(size - ahead);
                // SAFETY: readahead only reads the descriptor, which `file` keeps open. A
                // failure (e.g. a filesystem without it) just leaves the work to read().
                if unsafe { libc::readahead(file.as_raw_fd(), ahead as i64, n as usize) } != 0 {
                    break;
                }
                ahead += n;
            }
        });
        let r = md5_counting(&mut &*file, |b| {
            also(b);
            hashed.fetch_add(b.len() as u64, Ordering::Relaxed);
        });
        stop.store(true, Ordering::Relaxed);
        r
    })
}

/// How far [`md5_of_file`] reads ahead of its hash.
const READ_AHEAD: u64 = 64 << 20;

/// Lowercase hex MD5 of everything `r` yields.
pub fn md5_of_reader(r: &mut impl Read) -> std::io::Result<String> {
    md5_counting(r, |_| {})
}

/// [`md5_of_reader`], telling `hashed` how many bytes each step hashed.
fn md5_counting(r: &mut impl Read, mut hashed: impl FnMut(&[u8])) -> std::io::Result<String> {
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        hashed(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: zeroed passwd is valid as an out parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the given lengths.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
    if r != 0 || res.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated.
    Some(
        unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: zeroed group is valid as an out parameter.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the given lengths.
    let r = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
    if r != 0 || res.is_null() {
        return None;
    }
    // SAFETY: gr_name points into buf, NUL-terminated.
    Some(
        unsafe { std::ffi::CStr::from_ptr(gr.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_fit_ten_thousand_parts() {
        let store = Store::open(&crate::store::StoreOptions {
            destination: "file:///tmp/tablesnap-unit-part-size".into(),
            ..Default::default()
        })
        .unwrap();
        let u = Uploader::new(store, Layout::new("", "h", ":"), UploadConfig::default());
        assert_eq!(u.part_size_for(1 << 30), DEFAULT_PART_SIZE);
        let huge = 400u64 << 30; // 400 GiB
        let p = u.part_size_for(huge);
        assert!(huge.div_ceil(p) <= MAX_PARTS && p % (1 << 20) == 0, "{p}");
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(crate::restore::uid_of("root"), Some(0));
    }

    #[test]
    fn md5_of_file_reading_ahead_equals_md5_of_the_bytes() {
        let d = tempfile::tempdir().unwrap();
        // Empty, smaller than one read-ahead step, and not a multiple of it.
        for size in [0usize, 1000, (8 << 20) * 3 + 12345] {
            let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let p = d.path().join(format!("f{size}"));
            std::fs::write(&p, &body).unwrap();
            let got = md5_of_file(&File::open(&p).unwrap()).unwrap();
            assert_eq!(got, hex::encode(Md5::digest(&body)), "size {size}");
        }
    }

    #[test]
    fn budget_is_released_only_when_a_buffer_is_dropped_and_buffers_are_reused() {
        let part = 2 << 20;
        let mem = Arc::new(Semaphore::new(2));
        let pool = Arc::new(BufPool {
            bufs: Mutex::new(Vec::new()),
            keep: 2,
            part,
        });
        let a = pool.take(part, mem.clone().try_acquire_owned().unwrap());
        let b = pool.take(3 << 20, mem.clone().try_acquire_owned().unwrap());
        assert_eq!((a.buf.len(), b.buf.len()), (part, 3 << 20));
        let ptr_a = a.buf.as_ptr();
        // A request body that outlives its request (a retry's clone) keeps its share.
        let body = a.into_bytes();
        let body2 = body.clone();
        drop(body);
        assert_eq!(mem.available_permits(), 0);
        drop(body2);
        assert_eq!(mem.available_permits(), 1);
        assert_eq!(
            pool.bufs.lock().unwrap().len(),
            1,
            "buffer back in the pool"
        );
        // The next take reuses that buffer instead of allocating one.
        let c = pool.take(part, mem.clone().try_acquire_owned().unwrap());
        assert_eq!(c.buf.as_ptr(), ptr_a);
        drop((b, c));
        assert_eq!(mem.available_permits(), 2);
        // Small buffers bypass the pool but still hold their share until dropped.
        let small = pool.take(1000, mem.clone().try_acquire_owned().unwrap());
        assert_eq!(mem.available_permits(), 1);
        drop(small);
        assert_eq!(mem.available_permits(), 2);
        assert_eq!(pool.bufs.lock().unwrap().len(), 2);
        // A pooled buffer costs its capacity, however little of it a file needs.
        assert_eq!(pool.budget_for(1000), 1000);
        assert_eq!(pool.budget_for(1 << 20), part as u64);
        assert_eq!(pool.budget_for(5 << 20), 5 << 20);
    }
}
