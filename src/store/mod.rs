//! Where backups go: parses the destination (a bare S3 bucket name as the original took, or
//! an `s3://`, `gs://`, `az://`, `file://` URL), builds the `object_store` client for it and
//! wraps the few operations the tools need, with typed errors that name the key.
//!
//! The local file store of `object_store` cannot keep user metadata, so for `file://`
//! destinations the `stat`/`md5sum` metadata is kept in extended attributes
//! (`user.tablesnap.*`) of the stored file: the tree under the root is exactly the bucket
//! layout, and restores can still verify MD5s.
//!
//! Reading a `file://` bucket (listing, GET, HEAD, delete) is done here rather than by
//! `object_store`, which follows symlinks: a symlink in the bucket tree could make tablechop
//! delete, or tableslurp restore, files outside the bucket. Symlinks are reported once and
//! skipped; every path is resolved component by component with `O_NOFOLLOW`.
//!
//! One object with a key `object_store` cannot represent (a tab or newline in it, an empty
//! segment) used to fail the whole listing: such keys are reported once and skipped, and the
//! listing goes on (S3 is listed page by page to step over them; GCS and Azure still stop,
//! with an error naming the key, as object_store cannot list past it there).
//!
//! The parts: `destination` parses what the operator wrote, `open` builds the client per
//! backend, `error` types every failure, `paged` is the S3 listing that steps over bad
//! keys, `local` reads `file://` buckets without following symlinks and `xattr` keeps their
//! metadata; this file holds [`Store`] and its operations.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::list::PaginatedListStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload,
};

use crate::credentials::MetadataFallback;

mod destination;
mod error;
mod local;
pub mod lock;
mod open;
mod paged;
pub mod s3api;
#[cfg(test)]
mod tests;
mod xattr;

pub use destination::{Destination, StoreOptions};
use error::no_credentials;
pub use error::{ErrorKind, StoreError};
use paged::{bad_key_of, paged_list, path_error_reason, report_bad_key};
/// What a listing or HEAD says about an object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    pub e_tag: Option<String>,
    /// User metadata (`x-amz-meta-*` without the prefix). Filled by `head`, empty in listings.
    pub metadata: HashMap<String, String>,
}

impl ObjectInfo {
    /// Whether the object is sealed ([`crate::seal`]), and its plaintext size; `Err` for a
    /// sealing this version cannot read.
    pub fn sealed(&self) -> Result<Option<crate::seal::Encoding>, String> {
        crate::seal::Encoding::of(&self.metadata)
    }

    /// The object as the file it holds: `plain_size` bytes, and no ETag (a sealed object's
    /// is of its ciphertext).
    pub fn as_plain(&self, plain_size: u64) -> ObjectInfo {
        ObjectInfo {
            size: plain_size,
            e_tag: None,
            ..self.clone()
        }
    }

    /// The size of the file this object holds: its plaintext size if sealed.
    pub fn file_size(&self) -> u64 {
        match self.sealed() {
            Ok(Some(s)) => s.plain_size,
            _ => self.size,
        }
    }

    /// The MD5 the object should have: the `md5sum` metadata, else a single-part ETag.
    pub fn expected_md5(&self) -> Option<String> {
        if let Some(m) = self.metadata.get(crate::layout::META_MD5) {
            return Some(m.to_ascii_lowercase());
        }
        // A sealed object's ETag is of its ciphertext, never the file's MD5.
        if self.metadata.contains_key(crate::seal::META_SEALED) {
            return None;
        }
        let etag = self.e_tag.as_deref()?.trim_matches('"');
        (etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| etag.to_ascii_lowercase())
    }
}

/// Metadata and headers to set on a new object.
#[derive(Debug, Clone, Default)]
pub struct PutMeta {
    pub content_type: Option<String>,
    pub user: Vec<(&'static str, String)>,
}

/// An object store destination and the operations the tools use.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    local: Option<Arc<LocalFileSystem>>,
    /// The canonical root of a `file://` bucket, read without following symlinks below it.
    local_root: Option<PathBuf>,
    /// S3: listed page by page so that an unusable key can be stepped over.
    paged: Option<Arc<dyn PaginatedListStore>>,
    dest: Destination,
    storage_class: Option<String>,
    /// Set when S3 credentials can only come from the instance metadata service.
    metadata_fallback: Option<Arc<MetadataFallback>>,
    /// S3: the signed requests object_store cannot make (Object Lock, versions).
    api: Option<Arc<s3api::S3Api>>,
    /// Every object written is locked (`tablesnap --object-lock-days`).
    locking: Option<Arc<lock::Locking>>,
    /// The bucket read as it was at a time (`tableslurp --bucket-as-of`).
    as_of: Option<Arc<lock::AsOf>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.dest)
    }
}

impl Store {
    pub fn destination(&self) -> &Destination {
        &self.dest
    }

    /// The object_store path for a key, refusing keys it would silently rewrite (empty
    /// segments such as `//`, a leading `/`, `.` or `..` segments, control characters).
    pub fn path(key: &str) -> Result<Path, StoreError> {
        let p = Path::parse(key).map_err(|e| StoreError::BadKey {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        if p.as_ref() != key {
            return Err(StoreError::BadKey {
                key: key.to_string(),
                reason: "keys may not start or end with '/'".into(),
            });
        }
        Ok(p)
    }

    fn op_err(
        &self,
        op: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> StoreError + 'static {
        let key = key.to_string();
        let fallback = self.metadata_fallback.clone();
        let dest = self.dest.to_string();
        move |source| match fallback {
            Some(m) => no_credentials(&m, dest, op, key, source),
            None => StoreError::Op { op, key, source },
        }
    }

    /// Every object whose key starts with `dir + "/"`. Keys that cannot be used (control
    /// characters, empty segments) and, in a `file://` bucket, symlinks are reported once each
    /// (a warning) and skipped; the listing goes on (S3 and `file://`; on GCS and Azure such a
    /// key is an error naming it, since their listing cannot continue past it).
    pub fn list_dir(&self, dir: &str) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let s = self.list_dir_raw(dir);
        // A listing that failed for want of credentials says so (like every other op).
        let Some(fb) = self.metadata_fallback.clone() else {
            return s;
        };
        let dest = self.dest.to_string();
        s.map_err(move |e| match e {
            StoreError::Op { op, key, source } => {
                no_credentials(&fb, dest.clone(), op, key, source)
            }
            e => e,
        })
        .boxed()
    }

    fn list_dir_raw(&self, dir: &str) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let dir = dir.trim_end_matches('/');
        if let Err(e) = Self::path(dir) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        if let Some(root) = &self.local_root {
            return local::list(root.clone(), dir.to_string());
        }
        if self.as_of.is_some() {
            return self.list_dir_as_of(dir);
        }
        if let Some(paged) = &self.paged {
            return paged_list(paged.clone(), dir.to_string());
        }
        let path = Self::path(dir).expect("checked above");
        let dir_s = dir.to_string();
        self.inner
            .list(Some(&path))
            .filter_map(move |r| {
                let out = match r {
                    Ok(m) => Some(Ok(ObjectInfo {
                        key: m.location.to_string(),
                        size: m.size,
                        last_modified: m.last_modified,
                        e_tag: m.e_tag,
                        metadata: HashMap::new(),
                    })),
                    // GCS and Azure: object_store ends the listing at a page it cannot
                    // convert, so skipping would silently truncate it (and tablechop would
                    // decide on half a listing). Fail, naming the key (escaped).
                    Err(object_store::Error::InvalidPath { source }) => {
                        Some(Err(StoreError::BadKey {
                            key: bad_key_of(&source).unwrap_or_default(),
                            reason: format!(
                                "{}; this backend cannot list past it: rename or delete that object",
                                crate::layout::printable(&path_error_reason(&source))
                            ),
                        }))
                    }
                    Err(source) => Some(Err(StoreError::Op {
                        op: "list",
                        key: format!("{dir_s}/"),
                        source,
                    })),
                };
                futures::future::ready(out)
            })
            .boxed()
    }

    /// The names of the "directories" directly below `dir` (`""`: the bucket's top level),
    /// from one delimiter listing, not a listing of everything below: for a hint such as
    /// which hosts a bucket holds. Sorted; at most `limit`.
    pub async fn list_prefixes(&self, dir: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let dir = dir.trim_end_matches('/');
        if self.as_of.is_some() {
            return self.list_prefixes_as_of(dir, limit).await;
        }
        let mut out: Vec<String> = if let Some(root) = &self.local_root {
            let d = if dir.is_empty() {
                root.clone()
            } else {
                root.join(dir)
            };
            match std::fs::read_dir(&d) {
                Ok(rd) => rd
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(StoreError::Local {
                        op: "list",
                        key: format!("{dir}/"),
                        source,
                    });
                }
            }
        } else {
            let p = if dir.is_empty() {
                None
            } else {
                Some(Self::path(dir)?)
            };
            let r = self
                .inner
                .list_with_delimiter(p.as_ref())
                .await
                .map_err(self.op_err("list", dir))?;
            r.common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_owned))
                .collect()
        };
        out.sort();
        out.truncate(limit);
        Ok(out)
    }

    /// Collects `list_dir` into a vector.
    pub async fn list_all(&self, dir: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.list_dir(dir).try_collect().await
    }

    /// Whether the bucket (or `file://` root) exists and can be listed: `BucketMissing` if it
    /// does not. For tools that must not act on a mistyped destination.
    pub async fn check_exists(&self) -> Result<(), StoreError> {
        if let Some(root) = &self.local_root {
            return if root.is_dir() {
                Ok(())
            } else {
                Err(StoreError::BucketMissing {
                    dest: self.dest.to_string(),
                })
            };
        }
        match self.inner.list_with_delimiter(None).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.op_err("list", "/")(e);
                Err(if e.kind() == ErrorKind::NotFound {
                    StoreError::BucketMissing {
                        dest: self.dest.to_string(),
                    }
                } else {
                    e
                })
            }
        }
    }

    /// A cheap request that proves the destination exists and the credentials work.
    pub async fn probe(&self, dir: &str) -> Result<(), StoreError> {
        let dir = dir.trim_end_matches('/');
        let path = Self::path(dir)?;
        self.inner
            .list_with_delimiter(Some(&path))
            .await
            .map(|_| ())
            .map_err(self.op_err("list", dir))
    }

    /// Size, dates and user metadata of one object; `Ok(None)` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let path = Self::path(key)?;
        if let Some(root) = &self.local_root {
            return match local::open(root, key, "head").await {
                Ok((_, info)) => Ok(Some(info)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            };
        }
        let version = match self.version_for(key).await? {
            Some(None) => return Ok(None),
            Some(v) => v,
            None => None,
        };
        let opts = GetOptions {
            head: true,
            version,
            ..Default::default()
        };
        let r = match self.inner.get_opts(&path, opts).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.op_err("head", key)(e)),
        };
        self.info_of(key, &r).map(Some)
    }

    /// The version of `key` to read: with `--bucket-as-of`, the one current then (a key
    /// that was not there then is not found); otherwise the current one.
    async fn version_to_read(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self.version_for(key).await? {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => Err(StoreError::Op {
                op: "get",
                key: key.to_string(),
                source: object_store::Error::NotFound {
                    path: key.to_string(),
                    source: "no version of it at the --bucket-as-of time".into(),
                },
            }),
        }
    }

    /// What a GET or HEAD response says about `key`: size, dates, ETag and user metadata
    /// (from the response's attributes, or from the xattrs of a local file).
    fn info_of(&self, key: &str, r: &object_store::GetResult) -> Result<ObjectInfo, StoreError> {
        let mut metadata = HashMap::new();
        for (k, v) in r.attributes.iter() {
            if let Attribute::Metadata(name) = k {
                metadata.insert(name.to_string(), v.to_string());
            }
        }
        if self.local.is_some() {
            metadata.extend(self.local_meta(key)?);
        }
        Ok(ObjectInfo {
            key: key.to_string(),
            size: r.meta.size,
            last_modified: r.meta.last_modified,
            e_tag: r.meta.e_tag.clone(),
            metadata,
        })
    }

    fn attributes(&self, meta: &PutMeta) -> Attributes {
        let mut a = Attributes::new();
        if self.local.is_some() {
            return a;
        }
        if let Some(ct) = &meta.content_type {
            a.insert(Attribute::ContentType, ct.clone().into());
        }
        if let Some(sc) = &self.storage_class {
            a.insert(Attribute::StorageClass, sc.clone().into());
        }
        for (k, v) in &meta.user {
            a.insert(Attribute::Metadata((*k).into()), v.clone().into());
        }
        a
    }

    /// Stores a small object in one request.
    pub async fn put(&self, key: &str, body: Bytes, meta: &PutMeta) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        let opts = PutOptions {
            attributes: self.attributes(meta),
            ..Default::default()
        };
        let r = self
            .inner
            .put_opts(&path, PutPayload::from_bytes(body), opts)
            .await
            .map_err(self.op_err("put", key))?;
        self.lock_written(key, r.version.as_deref()).await?;
        self.set_local_meta(key, meta)?;
        self.sync_local(key)
    }

    /// Copies an object inside the store (S3 CopyObject keeps its metadata; file:// links
    /// it, sharing the extended attributes). Used for hard links of a file already stored.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (f, t) = (Self::path(from)?, Self::path(to)?);
        self.inner
            .copy(&f, &t)
            .await
            .map_err(self.op_err("copy", from))?;
        self.lock_written(to, None).await?;
        self.touch_local(to)?;
        self.sync_local(to)
    }

    /// `file://`: object_store copies by a hard link, so the copy kept the source's mtime,
    /// its LastModified. A copy is stored now, as on S3: a days-old LastModified would make
    /// a just-copied snapshot file look old to retention before any index names it. (Both
    /// links share the inode, so the source looks stored now too: only ever younger.)
    fn touch_local(&self, key: &str) -> Result<(), StoreError> {
        let Some(file) = self.local_file(key) else {
            return Ok(());
        };
        std::fs::File::open(&file)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(|source| StoreError::Local {
                op: "set the time of",
                key: key.to_string(),
                source,
            })
    }

    /// Starts a multipart upload; the caller uploads parts, then `complete` or `abort`s, then
    /// calls `finish_multipart`.
    pub async fn start_multipart(
        &self,
        key: &str,
        meta: &PutMeta,
    ) -> Result<Box<dyn MultipartUpload>, StoreError> {
        let path = Self::path(key)?;
        let opts = PutMultipartOptions {
            attributes: self.attributes(meta),
            ..Default::default()
        };
        self.inner
            .put_multipart_opts(&path, opts)
            .await
            .map_err(self.op_err("start multipart upload", key))
    }

    /// After a completed multipart upload: stores the metadata where the backend could not
    /// take it at initiation (local destinations).
    pub async fn finish_multipart(&self, key: &str, meta: &PutMeta) -> Result<(), StoreError> {
        self.lock_written(key, None).await?;
        self.set_local_meta(key, meta)?;
        self.sync_local(key)
    }

    /// Local destinations: "durable" means on disk. The file (data and xattrs), then every
    /// directory from its own up to the destination root (new ones were just created), are
    /// fsynced before the upload counts as done.
    fn sync_local(&self, key: &str) -> Result<(), StoreError> {
        let (Some(file), Some(l)) = (self.local_file(key), self.local.as_ref()) else {
            return Ok(());
        };
        let root = l
            .path_to_filesystem(&Path::from("x"))
            .ok()
            .and_then(|p| p.parent().map(|p| p.to_path_buf()));
        let err = |source| StoreError::Local {
            op: "fsync",
            key: key.to_string(),
            source,
        };
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(err)?;
        LOCAL_SYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut dir = file.parent();
        while let Some(d) = dir {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(err)?;
            if root.as_deref().is_none_or(|r| d == r || !d.starts_with(r)) {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// A streaming read of an object (or a byte range of it).
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let path = Self::path(key)?;
        if let Some(root) = &self.local_root {
            let (file, _) = local::open(root, key, "get").await?;
            return local::read_stream(file, key, range).await;
        }
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            version: self.version_to_read(key).await?,
            ..Default::default()
        };
        let r = self
            .inner
            .get_opts(&path, opts)
            .await
            .map_err(self.op_err("get", key))?;
        let k = key.to_string();
        Ok(r.into_stream()
            .map_err(move |source| StoreError::Op {
                op: "read",
                key: k.clone(),
                source,
            })
            .boxed())
    }

    /// A streaming read of a whole object together with what a HEAD would say about it
    /// (size, ETag, user metadata), from the same response: one request instead of two.
    pub async fn get_with_info(
        &self,
        key: &str,
    ) -> Result<(ObjectInfo, BoxStream<'static, Result<Bytes, StoreError>>), StoreError> {
        let path = Self::path(key)?;
        if let Some(root) = &self.local_root {
            let (file, info) = local::open(root, key, "get").await?;
            return Ok((info, local::read_stream(file, key, None).await?));
        }
        let opts = GetOptions {
            version: self.version_to_read(key).await?,
            ..Default::default()
        };
        let r = self
            .inner
            .get_opts(&path, opts)
            .await
            .map_err(self.op_err("get", key))?;
        let info = self.info_of(key, &r)?;
        let k = key.to_string();
        let stream = r
            .into_stream()
            .map_err(move |source| StoreError::Op {
                op: "read",
                key: k.clone(),
                source,
            })
            .boxed();
        Ok((info, stream))
    }

    /// Reads a whole (small) object.
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = Self::path(key)?;
        if self.local_root.is_some() {
            return self.get_bytes_capped(key, u64::MAX).await;
        }
        let opts = GetOptions {
            version: self.version_to_read(key).await?,
            ..Default::default()
        };
        let r = self
            .inner
            .get_opts(&path, opts)
            .await
            .map_err(self.op_err("get", key))?;
        r.bytes().await.map_err(self.op_err("read", key))
    }

    /// Reads a whole object of at most `limit` bytes; a bigger one is
    /// [`StoreError::TooLarge`] after reading no more than `limit` bytes of it (index bodies:
    /// [`crate::layout::MAX_INDEX_BYTES`]).
    pub async fn get_bytes_capped(&self, key: &str, limit: u64) -> Result<Bytes, StoreError> {
        let too_large = || StoreError::TooLarge {
            key: key.to_string(),
            limit,
        };
        let (info, mut stream) = self.get_with_info(key).await?;
        if info.size > limit {
            return Err(too_large());
        }
        let mut buf = bytes::BytesMut::with_capacity(info.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        if let Some(root) = &self.local_root {
            return local::delete(root, key).await;
        }
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.op_err("delete", key)(e)),
        }
    }

    /// Deletes many keys with the backend's bulk delete (S3 DeleteObjects, 1000 a request).
    /// Returns the keys deleted; stops at the first error.
    pub async fn delete_many(&self, keys: Vec<String>) -> Result<usize, StoreError> {
        if self.local_root.is_some() {
            let mut n = 0;
            for k in &keys {
                self.delete(k).await?;
                n += 1;
            }
            return Ok(n);
        }
        let mut paths = Vec::with_capacity(keys.len());
        for k in &keys {
            paths.push(Ok(Self::path(k)?));
        }
        let mut n = 0;
        let mut s = self
            .inner
            .delete_stream(futures::stream::iter(paths).boxed());
        while let Some(r) = s.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => n += 1,
                Err(e) => return Err(self.op_err("delete", "(batch)")(e)),
            }
        }
        Ok(n)
    }

    // ---- local destinations: user metadata in extended attributes ----

    fn local_file(&self, key: &str) -> Option<PathBuf> {
        let l = self.local.as_ref()?;
        l.path_to_filesystem(&Path::parse(key).ok()?).ok()
    }

    fn set_local_meta(&self, key: &str, meta: &PutMeta) -> Result<(), StoreError> {
        let Some(file) = self.local_file(key) else {
            return Ok(());
        };
        for (name, value) in &meta.user {
            if let Err(source) = xattr::set(&file, name, value.as_bytes()) {
                // Filesystems without user xattrs (some tmpfs) still get the data; only
                // restore-time MD5 verification is lost. Not for a sealed or compressed
                // object: without its marks it would be restored as its stored bytes.
                let sealed = meta
                    .user
                    .iter()
                    .any(|(n, _)| *n == crate::seal::META_SEALED);
                if source.raw_os_error() == Some(libc::ENOTSUP) && !sealed {
                    tracing::debug!(key, "destination filesystem has no user xattrs");
                    return Ok(());
                }
                return Err(StoreError::Local {
                    op: "set metadata on",
                    key: key.to_string(),
                    source,
                });
            }
        }
        Ok(())
    }

    fn local_meta(&self, key: &str) -> Result<HashMap<String, String>, StoreError> {
        let mut out = HashMap::new();
        let Some(file) = self.local_file(key) else {
            return Ok(out);
        };
        for name in crate::layout::META_NAMES {
            if let Some(v) = xattr::get(&file, name) {
                out.insert(name.to_string(), String::from_utf8_lossy(&v).into_owned());
            }
        }
        Ok(out)
    }
}

/// Files fsynced by local destinations (tests check that durability is real).
pub static LOCAL_SYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
