//! What is already stored: the compact set of known keys (from uploads and the startup
//! LIST), whether a local file is the object stored under its key, and forgetting files
//! that are gone.

use super::*;

impl Uploader {
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

    /// What the newest stored index of each directory at or below `root` names (as the
    /// last LIST of `root` found them): (directory, names). A restart compares them with
    /// the directory as it is now: what was deleted while the daemon was down (a TRUNCATE,
    /// an expired SSTable) or stored since without an index makes a new restore point due.
    /// An index that cannot be read is left out, with a warning (the next change of its
    /// directory writes a new one anyway).
    pub async fn stored_restore_points(
        &self,
        root: &Path,
    ) -> Vec<(PathBuf, layout::Names, super::lineage::Holds)> {
        use futures::StreamExt;
        let Ok(root_key) = key_of(&self.layout, root) else {
            return vec![];
        };
        let under = format!("{}/", root_key.trim_end_matches('/'));
        let newest = self.known.lock().unwrap().newest_indexes_under(&under);
        futures::stream::iter(newest)
            .map(|(dir_key, name)| async move {
                let dir = PathBuf::from(self.layout.path_of(&dir_key)?);
                let key = format!("{dir_key}/{name}");
                let body = match self.store.get_bytes_capped(&key, layout::MAX_INDEX_BYTES).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(key = %key, "cannot read the newest index to compare with the directory: {e}");
                        return None;
                    }
                };
                let names = match layout::parse_listing_names(&body) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(key = %key, "the newest index is not a listing ({e}): a new one is written at the next change");
                        return None;
                    }
                };
                Some((dir, names, self.stored_holds(&dir_key).await))
            })
            .buffer_unordered(8)
            .filter_map(|x| async move { x })
            .collect()
            .await
    }

    /// What the directory `dir_key`'s [`layout::HOLDS_NAME`] says, if the LIST saw one
    /// (unreadable: nothing held, said).
    async fn stored_holds(&self, dir_key: &str) -> super::lineage::Holds {
        let key = format!("{dir_key}/{}", layout::HOLDS_NAME);
        if self.known(&key).is_none() {
            return Default::default();
        }
        match self
            .store
            .get_bytes_capped(&key, layout::MAX_INDEX_BYTES)
            .await
        {
            Ok(b) => layout::parse_holds(&b).unwrap_or_else(|| {
                tracing::warn!(key = %key, "not a record of held inputs: ignored");
                Default::default()
            }),
            Err(e) => {
                tracing::warn!(key = %key, "cannot read the inputs held for other data directories ({e}): they are not held");
                Default::default()
            }
        }
    }

    pub(super) fn covered(&self, key: &str) -> bool {
        self.listed
            .lock()
            .unwrap()
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    /// Whether a stored object of `stored` bytes (a LIST's size) is the size a file of
    /// `local` bytes is stored at: the same, or, when this node seals, sealed to some
    /// number of recipients (the HEAD behind a "no" compares the plaintext size).
    pub(super) fn same_size(&self, stored: u64, local: u64) -> bool {
        stored == local || (self.cfg.seal.is_some() && crate::seal::could_be_sealed(stored, local))
    }

    pub(super) fn known(&self, key: &str) -> Option<Known> {
        self.known.lock().unwrap().get(key)
    }

    pub(super) fn mark(&self, key: &str, size: u64, verified: bool, file: Option<(u64, i64, i64)>) {
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
            let was_stored = known.get(&k).is_some();
            known.remove(&k);
            drop(known);
            if was_stored && is_component(path) {
                if layout::wants_index(&k) {
                    self.displace(&k);
                }
                let mut gone = self.gone.lock().unwrap();
                if gone.len() >= MAX_GONE {
                    gone.clear();
                }
                gone.insert(k);
            }
        }
    }

    /// See [`Uploader::displaced`].
    pub(super) fn displace(&self, data_key: &str) {
        let mut d = self.displaced.lock().unwrap();
        if d.len() >= MAX_GONE {
            d.clear();
        }
        d.insert(data_key.to_string());
    }

    /// Whether the index key of local `data` may hold the restore point of another SSTable
    /// that had its name ([`Uploader::displaced`]).
    pub fn displaced(&self, data: &Path) -> bool {
        key_of(&self.layout, data).is_ok_and(|k| self.displaced.lock().unwrap().contains(&k))
    }

    /// Whether this Data.db was uploaded during this run and its index is not written yet.
    pub fn unindexed(&self, path: &Path) -> bool {
        self.unindexed.lock().unwrap().contains(path)
    }

    /// How many keys are remembered (for tests and metrics).
    pub fn known_len(&self) -> usize {
        self.known.lock().unwrap().len()
    }

    /// Whether this stored data file still needs an index of its own: its index is known to
    /// be missing, and it was stored within the last day or no index of its directory was
    /// stored in or after the second its object was. Only answerable for directories
    /// covered by a LIST (otherwise `false`, to avoid a request per file). An older index
    /// missing because tablechop deleted it (superseded by a kept newer one) is not missing:
    /// a restart after tablechop must not write one listing per SSTable again.
    pub fn index_missing(&self, data_path: &Path) -> bool {
        let Ok(k) = key_of(&self.layout, data_path) else {
            return false;
        };
        let ik = layout::index_key(&k);
        if !self.covered(&ik) || self.known(&ik).is_some() {
            return false;
        }
        let known = self.known.lock().unwrap();
        let newest = known.newest_index_at(layout::split_dir(&k).0);
        // A Data.db stored within the last day keeps its own index whatever came after (a
        // kill between its upload and its index: every Data.db gets one, as the original
        // wrote them); an older one only needs it if no index of its directory is as new.
        let young = chrono::Utc::now().timestamp() - crate::retention::INDEX_GRACE.num_seconds();
        match (newest, known.get(&k)) {
            (Some(idx), Some(data)) => data.stored_at >= idx || data.stored_at > young,
            _ => true,
        }
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
            && self.same_size(k.size, meta.len())
            && fresh
            && (k.verified || !self.cfg.md5_on_start)
            && !self.force.lock().unwrap().contains(&key)
            && !self.unindexed(path)
    }
}
