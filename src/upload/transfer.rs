//! Sending one file: a single PUT for small files, a streamed multipart upload for large
//! ones, memory bounded by a shared budget of pooled part buffers, the file checked not to
//! have changed while it was read, and the `stat`/`md5sum` metadata of the layout.

use super::*;

impl Uploader {
    /// Uploads the file now (the presence checks are done), and records the result.
    pub(super) async fn upload_now(
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

    pub(super) fn stat_meta(&self, m: &std::fs::Metadata) -> StatMeta {
        StatMeta {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
            user: self.name_of(false, m.uid()),
            group: self.name_of(true, m.gid()),
        }
    }

    pub(super) fn name_of(&self, group: bool, id: u32) -> Option<String> {
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
        let p = base.max(needed.div_ceil(1 << 20) << 20);
        // Sealed parts start on a chunk boundary.
        if self.cfg.seal.is_some() {
            p.next_multiple_of(crate::seal::CHUNK)
        } else {
            p
        }
    }

    pub(super) async fn acquire(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = bytes.div_ceil(MEM_UNIT).clamp(1, self.mem_units) as u32;
        self.mem
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("memory semaphore closed")
    }

    pub(super) async fn put_file(
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
        // What is sent: a sealed file is its header and tags larger.
        let sent = match &self.cfg.seal {
            Some(r) => {
                crate::seal::x25519_header_len(r.len() as u64)
                    + crate::seal::sealed_part_len(size as usize) as u64
            }
            None => size,
        };
        let single = sent <= self.cfg.max_upload_size && size <= part;
        // Cassandra's own checksum of a Data.db, computed in the same read as the MD5.
        let alg = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::digest::digest_for_data)
            .map(|(_, a)| a);
        tracing::debug!(path = %path.display(), size, single, "uploading");
        let digest_value = if single {
            self.put_single(path, key, &file, size, stat, alg).await?
        } else {
            self.put_hashed_multipart(path, key, &file, size, part, stat, alg, cancel)
                .await?
        };
        self.check_unchanged(path, &file, &before, digest_value)?;
        Ok(size)
    }

    /// One PUT of a file read whole into a pooled buffer (MD5 and Digest from that read).
    async fn put_single(
        &self,
        path: &Path,
        key: &str,
        file: &Arc<File>,
        size: u64,
        stat: String,
        alg: Option<crate::digest::Algorithm>,
    ) -> Result<Option<crate::digest::Value>, UploadError> {
        let read_err = |source| UploadError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Sealed: one buffer of the sealed size, the plaintext read in after the header
        // and sealed in place.
        let sealer = self.cfg.seal.as_deref().map(crate::seal::Sealer::new);
        let (head, stored) = match &sealer {
            Some(s) => (s.header().len(), s.sealed_len(size)),
            None => (0, size),
        };
        let permit = self.acquire(self.pool.budget_for(stored)).await;
        let f = file.clone();
        let pool = self.pool.clone();
        let compress = self.cfg.compress && size >= crate::compress::MIN_SIZE;
        let (body, n, md5, dv, crc, sealer, compressed) =
            tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let mut buf = pool.take(stored as usize, permit);
                if let Some(s) = &sealer {
                    buf.buf[..head].copy_from_slice(s.header());
                }
                let n = read_full(&f, &mut buf.buf[head..head + size as usize])?;
                let plain = &buf.buf[head..head + n];
                let md5 = hex::encode(Md5::digest(plain));
                let dv = alg.map(|a| {
                    let mut h = crate::digest::Hasher::new(a);
                    h.update(plain);
                    h.finish()
                });
                // Compressed in place of the file's bytes, if that saves a tenth.
                let mut len = n;
                let mut compressed = false;
                if compress && n as u64 == size {
                    let (z, _) = crate::compress::compress_all(plain)?;
                    if crate::compress::worth_it(size, z.len() as u64) {
                        buf.buf[head..head + z.len()].copy_from_slice(&z);
                        len = z.len();
                        compressed = true;
                    }
                }
                let crc = match &sealer {
                    Some(s) if n as u64 == size => {
                        let end = head + crate::seal::sealed_part_len(len);
                        s.seal_in_place(0, len, len as u64, &mut buf.buf[head..end]);
                        buf.buf.truncate(end);
                        Some(crc32fast::hash(&buf.buf))
                    }
                    _ => {
                        buf.buf.truncate(head + len);
                        None
                    }
                };
                Ok((buf.into_bytes(), n, md5, dv, crc, sealer, compressed))
            })
            .await
            .expect("read task panicked")
            .map_err(read_err)?;
        if n as u64 != size {
            return Err(UploadError::Changed {
                path: path.to_path_buf(),
            });
        }
        let meta = self.data_meta(stat, md5, size, sealer.is_some(), crc, compressed);
        if let Some(t) = &self.cfg.throttle {
            t.take(body.len() as u64).await;
        }
        self.store
            .put(key, body, &meta)
            .await
            .map_err(|source| UploadError::Store {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        Ok(dv)
    }

    /// A multipart upload, after the whole-file MD5 (and Digest) the layout's metadata needs
    /// when the upload starts.
    #[allow(clippy::too_many_arguments)]
    async fn put_hashed_multipart(
        &self,
        path: &Path,
        key: &str,
        file: &Arc<File>,
        size: u64,
        part: u64,
        stat: String,
        alg: Option<crate::digest::Algorithm>,
        cancel: &CancellationToken,
    ) -> Result<Option<crate::digest::Value>, UploadError> {
        let f = file.clone();
        // Sealed: the first pass seals too, for the CRC of the stored bytes the metadata
        // names before the first part; the second seals the same bytes again (the same
        // key and nonce), part by part in parallel.
        let sealer = self
            .cfg
            .seal
            .as_deref()
            .map(|r| Arc::new(crate::seal::Sealer::new(r)));
        let s2 = sealer.clone();
        let compress = self.cfg.compress;
        // With --compress: the frames it would be stored as, and the CRC of that stream
        // sealed, in the same pass (which of the two is stored is known only at its end).
        let (md5, dv, crc, squeezed) = tokio::task::spawn_blocking(move || {
            let mut h = alg.map(crate::digest::Hasher::new);
            let mut c = s2
                .as_deref()
                .map(|s| crate::seal::SealedCrc::new(s, Some(size)));
            let mut z = compress.then(crate::compress::Squeeze::new).transpose()?;
            let mut zc = z
                .as_ref()
                .and(s2.as_deref())
                .map(|s| crate::seal::SealedCrc::new(s, None));
            let md5 = md5_and(&f, &mut |b| {
                if let Some(h) = h.as_mut() {
                    h.update(b)
                }
                if let Some(c) = c.as_mut() {
                    c.update(b)
                }
                if let Some(z) = z.as_mut() {
                    z.update(b, &mut |s| {
                        if let Some(zc) = zc.as_mut() {
                            zc.update(s)
                        }
                    });
                }
            })?;
            let squeezed = match z {
                Some(z) => {
                    let frames = z.finish(&mut |s| {
                        if let Some(zc) = zc.as_mut() {
                            zc.update(s)
                        }
                    })?;
                    Some((frames, zc.map(|c| c.finish())))
                }
                None => None,
            };
            Ok::<_, std::io::Error>((md5, h.map(|h| h.finish()), c.map(|c| c.finish()), squeezed))
        })
        .await
        .expect("hash task panicked")
        .map_err(|source| UploadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        match squeezed {
            Some((frames, zcrc)) if crate::compress::worth_it(size, frames.stream_len()) => {
                let total = frames.stream_len();
                let meta = self.data_meta(stat, md5, size, sealer.is_some(), zcrc, true);
                let stream = crate::compress::FileStream::new(file.clone(), size, frames).map_err(
                    |source| UploadError::Read {
                        path: path.to_path_buf(),
                        source,
                    },
                )?;
                let stream = Arc::new(std::sync::Mutex::new(stream));
                self.put_multipart(
                    path,
                    key,
                    file,
                    total,
                    part,
                    &meta,
                    sealer.as_ref(),
                    Some(stream),
                    cancel,
                )
                .await?;
            }
            _ => {
                let meta = self.data_meta(stat, md5, size, sealer.is_some(), crc, false);
                self.put_multipart(
                    path,
                    key,
                    file,
                    size,
                    part,
                    &meta,
                    sealer.as_ref(),
                    None,
                    cancel,
                )
                .await?;
            }
        }
        Ok(dv)
    }

    /// Immutable files only: if the file moved under us while it was read, what we stored
    /// may be torn. A file deleted after it was read completely was stored whole.
    fn check_unchanged(
        &self,
        path: &Path,
        file: &File,
        before: &std::fs::Metadata,
        digest_value: Option<crate::digest::Value>,
    ) -> Result<(), UploadError> {
        let changed = || UploadError::Changed {
            path: path.to_path_buf(),
        };
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
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = file.metadata().map_err(|source| UploadError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                if now.len() == before.len() && now.mtime_nsec() == before.mtime_nsec() {
                    Ok(())
                } else {
                    Err(changed())
                }
            }
            _ => Err(changed()),
        }
    }

    /// The layout's metadata, and the marks of a sealed or compressed object: the file's
    /// size, the CRC-32 of the stored bytes (sealed), how it is held.
    pub(super) fn data_meta(
        &self,
        stat: String,
        md5: String,
        size: u64,
        sealed: bool,
        crc: Option<u32>,
        compressed: bool,
    ) -> PutMeta {
        let mut user = vec![(layout::META_STAT, stat), (layout::META_MD5, md5)];
        if sealed {
            user.push((crate::seal::META_SEALED, crate::seal::SEALED_AGE.into()));
            if let Some(c) = crc {
                user.push((crate::seal::META_SEALED_CRC, format!("{c:08x}")));
            }
        }
        if compressed {
            user.push((
                crate::compress::META_COMPRESSED,
                crate::compress::COMPRESSED_ZSTD.into(),
            ));
        }
        if sealed || compressed {
            user.push((crate::seal::META_PLAIN_SIZE, size.to_string()));
        }
        PutMeta {
            content_type: None,
            user,
        }
    }

    /// One part of a file, read into a pooled buffer that holds `permit` of the budget; a
    /// file shorter than it was is one that changed.
    #[allow(clippy::too_many_arguments)]
    async fn read_part(
        &self,
        path: &Path,
        file: &Arc<File>,
        at: u64,
        len: u64,
        permit: OwnedSemaphorePermit,
        seal: Option<(Arc<crate::seal::Sealer>, u64)>,
        stream: Option<Arc<std::sync::Mutex<crate::compress::FileStream>>>,
    ) -> Result<Bytes, UploadError> {
        let f = file.clone();
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
            // The bytes at `at` of what is stored: the file's, or its compressed stream's.
            let read = |out: &mut [u8]| match &stream {
                Some(z) => z.lock().unwrap().fill(at, out),
                None => f.read_exact_at(out, at),
            };
            let Some((s, total)) = seal else {
                let mut buf = pool.take(len as usize, permit);
                read(&mut buf.buf)?;
                return Ok(buf.into_bytes());
            };
            // The first part carries the header; parts start on chunk boundaries.
            let head = if at == 0 { s.header().len() } else { 0 };
            let sealed = crate::seal::sealed_part_len(len as usize);
            let mut buf = pool.take(head + sealed, permit);
            buf.buf[..head].copy_from_slice(&s.header()[..head]);
            read(&mut buf.buf[head..head + len as usize])?;
            s.seal_in_place(
                at / crate::seal::CHUNK,
                len as usize,
                total,
                &mut buf.buf[head..],
            );
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
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn put_multipart(
        &self,
        path: &Path,
        key: &str,
        file: &Arc<File>,
        size: u64,
        part: u64,
        meta: &PutMeta,
        seal: Option<&Arc<crate::seal::Sealer>>,
        stream: Option<Arc<std::sync::Mutex<crate::compress::FileStream>>>,
        cancel: &CancellationToken,
    ) -> Result<(), UploadError> {
        debug_assert!(seal.is_none() || part % crate::seal::CHUNK == 0);
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
                let stored = match seal {
                    Some(s) if offset == 0 => s.header().len() as u64 + crate::seal::sealed_part_len(len as usize) as u64,
                    Some(_) => crate::seal::sealed_part_len(len as usize) as u64,
                    None => len,
                };
                let permit = tokio::select! {
                    p = self.acquire(self.pool.budget_for(stored)) => p,
                    _ = cancel.cancelled() => return Err(UploadError::Cancelled { path: path.to_path_buf() }),
                };
                let chunk = self
                    .read_part(
                        path,
                        file,
                        offset,
                        len,
                        permit,
                        seal.map(|s| (s.clone(), size)),
                        stream.clone(),
                    )
                    .await?;
                if let Some(t) = &self.cfg.throttle {
                    t.take(stored).await;
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
        self.store
            .finish_multipart(key, meta)
            .await
            .map_err(store_err)
    }
}

/// Buffers for file data; one goes back to the pool when the request that sent it drops it,
/// and only then is its share of the memory budget released: the budget bounds the buffers
/// alive, not just the requests in flight (a request's retry copies or a body still being
/// dropped would otherwise let one more buffer into existence). See [`BufPool::budget_for`].
pub(super) struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    /// Capacity of a new buffer: the default part size.
    part: usize,
}

pub(super) struct PooledBuf {
    buf: Vec<u8>,
    pool: Option<Arc<BufPool>>,
    /// Dropped after the buffer is back in the pool (fields drop after `Drop::drop`).
    _permit: OwnedSemaphorePermit,
}

/// Buffers smaller than this come from the allocator directly (small SSTable components).
const POOL_MIN: usize = 1 << 20;

impl BufPool {
    /// A pool that keeps at most `keep` idle buffers of `part` bytes.
    pub(super) fn new(keep: usize, part: usize) -> Self {
        Self {
            bufs: Mutex::new(Vec::new()),
            keep,
            part,
        }
    }

    /// What a buffer for `len` bytes costs of the memory budget: its capacity. A pooled buffer
    /// is at least a whole part however little of it a file needs, and once recycled all of
    /// it is resident; counting `len` instead let a 64 MiB budget hold 80 MiB of buffers.
    /// With this, buffers alive (in use or idle in the pool) never exceed the budget: a new
    /// one is allocated only when none is idle, by a holder of its full share.
    pub(super) fn budget_for(&self, len: u64) -> u64 {
        if len < POOL_MIN as u64 {
            len
        } else {
            len.max(self.part as u64)
        }
    }

    /// A buffer of exactly `len` initialized bytes (zeroed only where never used before).
    pub(super) fn take(self: &Arc<Self>, len: usize, permit: OwnedSemaphorePermit) -> PooledBuf {
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
    pub(super) fn into_bytes(self) -> Bytes {
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
pub(super) fn read_full(f: &File, buf: &mut [u8]) -> std::io::Result<usize> {
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
pub(super) fn md5_counting(
    r: &mut impl Read,
    mut hashed: impl FnMut(&[u8]),
) -> std::io::Result<String> {
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

pub(super) fn user_name(uid: u32) -> Option<String> {
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

pub(super) fn group_name(gid: u32) -> Option<String> {
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
