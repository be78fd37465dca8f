//! Telling the node's own object from another file under the same key (a replaced node
//! reusing generations, a torn prefix left by an older tablesnap) before anything is
//! overwritten or taken as stored.

use super::*;

const HELD_BEFORE: &str = "an SSTable name whose local bytes are the ones this node stored under it before (a point-in-time restore brought them back), with the bytes of a later timeline stored under it";
const RETIRED: &str = "an SSTable name of this directory that its newest restore point did not name or that was not on disk at startup, with other bytes (Cassandra numbered a generation again after a TRUNCATE, a re-CREATE or a point-in-time restore)";

impl Uploader {
    /// The object under `key` is not the local file (another size, or another MD5). Whose
    /// is it? Never overwrite another node's SSTable that its indexes name (issue #10,
    /// defect 14): Integer generations restart at 1 on a replaced node with the same host
    /// name, so its files meet the old node's objects under the same keys.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn differs(
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
            return self
                .supersede(
                    path,
                    key,
                    info,
                    size,
                    fp,
                    cancel,
                    "the stored object holds other bytes (--overwrite-collisions)",
                )
                .await;
        }
        let retired = self.retired.lock().unwrap().contains(&key);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let sstable = crate::cassandra::parse_name(name);
        let renewed = sstable.as_ref().is_some_and(|f| {
            let data = path.with_file_name(format!("{}-Data.db", f.sstable));
            key_of(&self.layout, &data).is_ok_and(|k| self.renewed.lock().unwrap().contains(&k))
        });
        if info.file_size() == size
            && sstable.is_some()
            && !suspect
            && (retired || renewed || self.held_before(path, &key, size).await?)
        {
            // Not bit rot: a name of the node's earlier timeline (see below).
            return self
                .supersede(path, key, info, size, fp, cancel, HELD_BEFORE)
                .await;
        }
        if info.file_size() == size && (!suspect || sstable.is_none()) {
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
            if info.file_size() < size && self.torn_prefix(path, info).await? {
                tracing::warn!(path = %path.display(), key, "the stored object is a torn prefix of this file (written by an older tablesnap while the file grew); replacing it");
                return self.upload_now(path, key, size, fp, cancel).await;
            }
            if retired {
                return self
                    .supersede(path, key, info, size, fp, cancel, RETIRED)
                    .await;
            }
            if self.held_before(path, &key, size).await? {
                return self
                    .supersede(path, key, info, size, fp, cancel, HELD_BEFORE)
                    .await;
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
            // An index built on this SSTable (SAI, `SSTable.registerComponents`) lists its
            // new components in a rewritten TOC: the restore points from now on need it,
            // the earlier ones keep theirs.
            Some(true) if f.component == "TOC.txt" => {
                // A listing of this directory under way re-reads it.
                if let Some(d) = path.parent() {
                    *self.toc_rewrites.lock().unwrap().entry(d.to_path_buf()).or_default() += 1;
                }
                self.supersede(path, key, info, size, fp, cancel, "the TOC of a stored SSTable was rewritten (an index built on it added components)")
                    .await
            }
            // A name of the node's earlier timeline: whatever its Data.db holds now (this
            // run may have just superseded it), the stored component is the old SSTable's.
            Some(_) if retired => {
                self.supersede(path, key, info, size, fp, cancel, RETIRED)
                    .await
            }
            // Its Data.db took other bytes under this name in this run: the stored
            // component is the SSTable that had the name before.
            Some(true) if renewed => {
                self.supersede(path, key, info, size, fp, cancel, "a component of an SSTable whose Data.db superseded the one stored under its name")
                    .await
            }
            Some(false) if self.held_before(path, &key, size).await? => {
                self.supersede(path, key, info, size, fp, cancel, HELD_BEFORE)
                    .await
            }
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

    /// Stores the local file under `key`, which holds other bytes (`info`) that restore
    /// points may name: those bytes are first copied inside the store to
    /// [`layout::superseded_name`] in the same directory (keeping their metadata), where
    /// tableslurp finds them for every restore point older than the copy and tablechop
    /// keeps them while such a restore point is kept. The directory's next index waits a
    /// second after the copy, so no restore point naming the new bytes shares its second.
    /// If the copy fails, nothing is overwritten (the error is retried like any other).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn supersede(
        &self,
        path: &Path,
        key: String,
        info: &ObjectInfo,
        size: u64,
        fp: (u64, i64, i64),
        cancel: &CancellationToken,
        why: &str,
    ) -> Result<Outcome, UploadError> {
        let store_err = |source| UploadError::Store {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir_key = key.strip_suffix(name).unwrap_or(&key).trim_end_matches('/');
        let kept = format!(
            "{dir_key}/{}",
            layout::superseded_name(chrono::Utc::now(), name)
        );
        self.store.copy(&key, &kept).await.map_err(store_err)?;
        if let Some(dir) = path.parent() {
            self.last_index
                .lock()
                .unwrap()
                .insert(dir.to_path_buf(), tokio::time::Instant::now());
        }
        self.stats.files_superseded.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %path.display(), key, kept, stored = info.size, local = size, "{why}: the stored bytes are kept under the superseded name for the restore points that name them; storing the new file");
        self.retired.lock().unwrap().remove(&key);
        self.gone.lock().unwrap().remove(&key);
        if layout::wants_index(&key) {
            let mut r = self.renewed.lock().unwrap();
            if r.len() >= MAX_GONE {
                r.clear();
            }
            r.insert(key.clone());
        }
        self.upload_now(path, key, size, fp, cancel).await
    }

    /// Records what the newest stored restore point of `dir` names and what `dir` holds
    /// (found at startup): every stored SSTable component of `dir` that the restore point
    /// does not name, or that is not on disk now, is of the node's own earlier timeline
    /// ([`Uploader::retired`]): compacted away, truncated, or abandoned by a point-in-time
    /// restore (the restored directory holds an older point's SSTables, the bucket the
    /// newer ones under the names Cassandra will number again).
    pub fn retire_unnamed(&self, dir: &Path, names: &layout::Names) {
        let Ok(dir_key) = key_of(&self.layout, dir) else {
            return;
        };
        // Unreadable: only what the restore point does not name.
        let local: Option<std::collections::HashSet<String>> =
            std::fs::read_dir(dir).ok().map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            });
        // A TRUNCATE or DROP since (Cassandra's `truncated-<ms>-TABLE` / `dropped-<ms>-TABLE`
        // snapshot, auto_snapshot): every object stored before it is of the old timeline,
        // even under a name on disk again (flushed after the TRUNCATE while tablesnap was
        // down).
        let cut = crate::cassandra::truncated_at(dir);
        let known = self.known.lock().unwrap();
        let unnamed: Vec<String> = known
            .names_in(&dir_key)
            .into_iter()
            .filter(|n| {
                let stored_before_cut = || {
                    cut.is_some_and(|c| {
                        known
                            .get(&format!("{dir_key}/{n}"))
                            .is_some_and(|k| k.stored_at < c)
                    })
                };
                crate::cassandra::parse_name(n).is_some()
                    && (!names.contains(n)
                        || local.as_ref().is_some_and(|l| !l.contains(n))
                        || stored_before_cut())
            })
            .map(|n| format!("{dir_key}/{n}"))
            .collect();
        drop(known);
        for k in unnamed.iter().filter(|k| layout::wants_index(k)) {
            self.displace(k);
        }
        let mut retired = self.retired.lock().unwrap();
        for k in unnamed {
            if retired.len() >= MAX_GONE {
                retired.clear();
            }
            retired.insert(k);
        }
    }

    /// Whether a superseded copy of `key` (known stored at startup or since) holds the local
    /// file's bytes: the node stored them under this name before, and a point-in-time
    /// restore brought them back. HEADs only the copies of this very name (none: no I/O).
    async fn held_before(&self, path: &Path, key: &str, size: u64) -> Result<bool, UploadError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir_key = key.strip_suffix(name).unwrap_or(key).trim_end_matches('/');
        let copies: Vec<String> = self
            .known
            .lock()
            .unwrap()
            .names_in(dir_key)
            .into_iter()
            .filter(|n| layout::parse_superseded(n).is_some_and(|(_, orig)| orig == name))
            .collect();
        for c in copies {
            let k = format!("{dir_key}/{c}");
            let info = self
                .store
                .head(&k)
                .await
                .map_err(|source| UploadError::Store {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })?;
            if let Some(info) = info {
                if info.file_size() == size && self.same_md5(path, &info).await? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether the stored object of local `data` holds the same bytes (None: no object, or
    /// no local file to compare).
    pub(super) async fn same_as_stored(&self, data: &Path) -> Result<Option<bool>, UploadError> {
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
        if info.file_size() != m.len() {
            return Ok(Some(false));
        }
        if !newer_than(&m, info.last_modified.timestamp()) {
            return Ok(Some(true));
        }
        Ok(Some(self.same_md5(data, &info).await?))
    }

    /// Whether the stored object is exactly the first bytes of the local file.
    pub(super) async fn torn_prefix(
        &self,
        path: &Path,
        info: &ObjectInfo,
    ) -> Result<bool, UploadError> {
        let Some(expected) = info.expected_md5() else {
            return Ok(false);
        };
        let (p, n) = (path.to_path_buf(), info.file_size());
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

    pub(super) async fn same_md5(
        &self,
        path: &Path,
        info: &ObjectInfo,
    ) -> Result<bool, UploadError> {
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
}
