//! The `-listdir.json` index of a directory, written only after every file it names is
//! durable and naming only complete SSTables.

use super::*;

/// The least time between two index writes of one directory (see
/// [`Uploader::space_from_last_index`]): a little over a second.
pub const INDEX_SPACING: std::time::Duration = std::time::Duration::from_millis(1050);

/// What a listing of a directory found: the directory as UTF-8, its view, and the names.
type Listed<'d> = (&'d str, crate::cassandra::DirView, Vec<String>);

impl Uploader {
    /// Writes the `-listdir.json` index of each of `data_files` (all in one directory):
    /// classifies the directory now ([`crate::cassandra::DirView`]), makes every file of
    /// every complete SSTable and every settled other file durable first (uploading what is
    /// missing; a file that vanished is left out), then PUTs the index under the keys of
    /// the Data.db files it names. Files of unfinished SSTables are neither read nor named.
    /// `previous` is what the directory's last index named: SSTables it named that are gone
    /// from disk stay named while a complete SSTable (their replacement, perhaps) is not
    /// durable.
    pub async fn write_index(
        &self,
        dir: &Path,
        data_files: &[PathBuf],
        previous: Option<&layout::Names>,
        cancel: &CancellationToken,
    ) -> Result<IndexWritten, UploadError> {
        let own: std::collections::BTreeSet<String> = data_files
            .iter()
            .filter_map(|d| d.file_name().and_then(|n| n.to_str()))
            .filter_map(crate::cassandra::parse_name)
            .map(|f| f.sstable.to_string())
            .collect();
        let Some((dir_str, view, listed)) = self.fresh_listing(dir, previous, &own, cancel).await?
        else {
            return Ok(IndexWritten::default());
        };
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
        // One listing under every key: PUT once, then copied inside the store (no bytes
        // sent again: a backfill of N SSTables is not N times the listing; see put_index).
        // A Data.db whose name held another SSTable before (a generation numbered again):
        // its index key holds that SSTable's restore point, which stays; this listing goes
        // under a restore point name of its own instead (once).
        let mut stored: Option<String> = None;
        let mut displaced_written = false;
        for data in &named {
            let at = if self.displaced(data) {
                if displaced_written {
                    continue;
                }
                displaced_written = true;
                dir.join(layout::restore_point_name(chrono::Utc::now()))
            } else {
                data.clone()
            };
            stored = Some(
                self.put_index(dir, &at, body.clone(), stored.as_deref(), cancel)
                    .await?,
            );
        }
        let touch = if stored.is_some() {
            self.named_in(dir, &listed)
        } else {
            vec![]
        };
        Ok(IndexWritten {
            names: listed,
            indexed: named,
            deferred,
            touch,
        })
    }

    /// Writes a restore point of `dir` that no new Data.db calls for: what the directory's
    /// index would name changed otherwise (files deleted by a compaction that wrote no
    /// SSTable, a TRUNCATE or DROP, a component stored late). It names exactly what
    /// [`Self::write_index`] would, and goes under a key of its own,
    /// `DIR/tablesnap-<unix ms>-listdir.json` (see [`layout::restore_point_name`]), so no
    /// earlier restore point is overwritten; readers, the original's included, take the
    /// newest index by LastModified whatever its key. Nothing is written when the listing
    /// is the same as `previous` (the last one written or found stored), when the directory
    /// is gone (an unmounted disk must never look like a table emptied), or when no
    /// restore point of it is known and it holds no SSTable.
    pub async fn write_restore_point(
        &self,
        dir: &Path,
        previous: Option<&layout::Names>,
        cancel: &CancellationToken,
    ) -> Result<IndexWritten, UploadError> {
        let own = std::collections::BTreeSet::new();
        let Some((dir_str, view, listed)) = self.fresh_listing(dir, previous, &own, cancel).await?
        else {
            return Ok(IndexWritten::default());
        };
        // A directory that never had a restore point and holds no SSTable (a data root, a
        // keyspace directory, a watched commit log directory) gets none: indexes are for
        // tables, as the original wrote them only for a Data.db. Nor one whose listing is
        // the one it already has.
        let nothing_to_write = match previous {
            None => view.sstables.is_empty(),
            Some(p) => p.len() == listed.len() && listed.iter().all(|n| p.contains(n)),
        };
        if nothing_to_write {
            return Ok(IndexWritten {
                names: listed,
                ..Default::default()
            });
        }
        let name = layout::restore_point_name(chrono::Utc::now());
        let body = Bytes::from(layout::listdir_json(dir_str, &listed));
        let at = dir.join(name);
        self.put_index(dir, &at, body, None, cancel).await?;
        let touch = self.named_in(dir, &listed);
        Ok(IndexWritten {
            names: listed,
            indexed: vec![at],
            deferred: vec![],
            touch,
        })
    }

    /// Stores one index body under the index key of `data` (a file of `dir`) and returns
    /// that key: a copy inside the store of `copy_of` (the key just PUT with this very
    /// body) when given, else (or if the copy fails) a PUT.
    async fn put_index(
        &self,
        dir: &Path,
        data: &Path,
        body: Bytes,
        copy_of: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<String, UploadError> {
        let meta = PutMeta {
            content_type: Some(layout::INDEX_CONTENT_TYPE.into()),
            user: vec![],
        };
        let key = layout::index_key(&key_of(&self.layout, data)?);
        // Not on file://: a copy there is a hard link, and the keys would share one
        // LastModified (touching one touches all) where retention and --as-of read each
        // key's own; a local PUT sends nothing over a network anyway.
        let local = matches!(
            self.store.destination(),
            crate::store::Destination::Local { .. }
        );
        let copied = match copy_of.filter(|_| !local) {
            Some(from) => tokio::select! {
                r = self.store.copy(from, &key) => r.inspect_err(|e| tracing::debug!("{e}; PUT instead")).is_ok(),
                _ = cancel.cancelled() => return Err(UploadError::Cancelled { path: data.to_path_buf() }),
            },
            None => false,
        };
        if !copied {
            tokio::select! {
            r = self.store.put(&key, body.clone(), &meta) => r.map_err(|source| UploadError::Store {
                path: data.to_path_buf(),
                source: Box::new(source),
            })?,
            _ = cancel.cancelled() => return Err(UploadError::Cancelled { path: data.to_path_buf() }),
            }
        }
        self.mark(&key, body.len() as u64, true, None);
        self.unindexed.lock().unwrap().remove(data);
        self.stats.indexes_written.fetch_add(1, Ordering::Relaxed);
        self.last_index
            .lock()
            .unwrap()
            .insert(dir.to_path_buf(), tokio::time::Instant::now());
        Ok(key)
    }

    /// What an index of `dir` names now, every file of it durable: the directory (as UTF-8),
    /// its view, and the names. `None` when the directory is gone. `previous` is what the
    /// last listing named (see the partial case below); `own` the SSTables the index is
    /// written for (always waited for).
    async fn listing<'d>(
        &self,
        dir: &'d Path,
        previous: Option<&layout::Names>,
        own: &std::collections::BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> Result<Option<Listed<'d>>, UploadError> {
        let dir_str = dir.to_str().ok_or_else(|| UploadError::NotUtf8 {
            path: dir.to_path_buf(),
        })?;
        // Only what makes a restore point: complete SSTables (never a file of one still
        // being written: it is not even read here) and other regular files that are closed.
        let Some(view) = Self::view(dir)? else {
            return Ok(None);
        };
        let later = {
            let mut lineage = self.lineage.lock().unwrap();
            for l in &view.committed {
                lineage.record(dir, l.clone());
            }
            super::point::stand_ins(dir, &view, own, previous, &lineage)
        };
        // What is held for another data directory is stored before anything else of this
        // listing (uploads may take long): a restart reads it back.
        self.store_holds(dir, dir_str, cancel).await?;
        let durable = self
            .make_nameable_durable(dir, &view, &later, cancel)
            .await?;
        let kept = self.deleted.lock().unwrap().get(dir).cloned();
        let accepts = |n: &str| self.cfg.filter.accepts(n);
        let on_disk = |n: &str| {
            !std::fs::symlink_metadata(dir.join(n))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        };
        let after_truncate = self.after_truncate(dir);
        let point = {
            let lineage = self.lineage.lock().unwrap();
            let held = lineage.held_elsewhere(dir);
            super::point::restore_point(&super::point::Facts {
                view: &view,
                durable: &durable,
                previous,
                later: &later,
                kept: kept.as_ref(),
                accepts: &accepts,
                on_disk: &on_disk,
                dir,
                lineage: &lineage,
                held: &held,
                after_truncate,
            })
        };
        let not_stored: Vec<&String> = point.partial.difference(&later).collect();
        if !not_stored.is_empty() {
            tracing::warn!(dir = %dir.display(), sstables = ?not_stored, "SSTables with a component not stored are left out of this index");
        }
        if !later.is_empty() {
            tracing::debug!(dir = %dir.display(), sstables = ?later, "compaction outputs not stored yet: their inputs stay named meanwhile");
        }
        let unfinished: Vec<String> = view
            .unfinished()
            .map(|(s, why)| format!("{s} ({why})"))
            .collect();
        if !unfinished.is_empty() {
            tracing::debug!(dir = %dir.display(), ?unfinished, "SSTables not named in this index");
        }
        Ok(Some((dir_str, view, point.names)))
    }

    /// [`Self::listing`], spaced from the directory's last index first, and taken again
    /// (at most twice) when a TOC of the directory was rewritten meanwhile (an index
    /// build): a listing made before the rewrite and stored after it would name the old
    /// components with the new TOC's bytes, and no superseded copy made before a restore
    /// point is read for it. Stored right after, so the listing is what is stored.
    async fn fresh_listing<'d>(
        &self,
        dir: &'d Path,
        previous: Option<&layout::Names>,
        own: &std::collections::BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> Result<Option<Listed<'d>>, UploadError> {
        let rewrites = |u: &Self| u.toc_rewrites.lock().unwrap().get(dir).copied();
        let mut tries = 0;
        loop {
            tries += 1;
            self.space_from_last_index(dir, cancel).await?;
            let before = rewrites(self);
            let l = self.listing(dir, previous, own, cancel).await?;
            if tries >= 3 || rewrites(self) == before {
                return Ok(l);
            }
            tracing::debug!(dir = %dir.display(), "a TOC was rewritten while the listing was made: taken again");
        }
    }

    /// The directory's view; `None` when it is gone.
    fn view(dir: &Path) -> Result<Option<crate::cassandra::DirView>, UploadError> {
        match crate::cassandra::view_dir(dir) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(UploadError::Read {
                path: dir.to_path_buf(),
                source,
            }),
        }
    }

    /// Whether the table of `dir` was truncated or dropped (Cassandra's `truncated-<ms>-` or
    /// `dropped-<ms>-` snapshot in it) after its newest index known stored was written.
    fn after_truncate(&self, dir: &Path) -> bool {
        let Some(cut) = crate::cassandra::truncated_at(dir) else {
            return false;
        };
        let Ok(k) = key_of(&self.layout, &dir.join("-")) else {
            return false;
        };
        let newest = self
            .known
            .lock()
            .unwrap()
            .newest_index_at(layout::split_dir(&k).0);
        newest.is_some_and(|at| cut > at)
    }

    /// Stores what `dir`'s held inputs wait for ([`layout::HOLDS_NAME`]) when it changed,
    /// before the restore point that relies on it: a restart reads it back
    /// ([`Self::restore_holds`]). Deleted when nothing is held.
    async fn store_holds(
        &self,
        dir: &Path,
        dir_str: &str,
        cancel: &CancellationToken,
    ) -> Result<(), UploadError> {
        // One listing of a directory at a time (the index scheduler): one writer.
        let Some(now) = self.holds_unstored(dir) else {
            return Ok(());
        };
        let path = dir.join(layout::HOLDS_NAME);
        let key = key_of(&self.layout, &path)?;
        let meta = PutMeta {
            content_type: Some("application/json".into()),
            user: vec![],
        };
        let body = Bytes::from(layout::holds_json(dir_str, &now));
        let r = tokio::select! {
            r = async {
                if now.is_empty() {
                    self.store.delete(&key).await
                } else {
                    self.store.put(&key, body, &meta).await
                }
            } => r,
            _ = cancel.cancelled() => return Err(UploadError::Cancelled { path }),
        };
        r.map_err(|source| UploadError::Store {
            path,
            source: Box::new(source),
        })?;
        tracing::debug!(dir = %dir.display(), held = now.len(), "stored the inputs held for other data directories");
        let mut stored = self.holds_stored.lock().unwrap();
        if now.is_empty() {
            stored.remove(dir);
        } else {
            stored.insert(dir.to_path_buf(), now);
        }
        Ok(())
    }

    /// After a restart: `dir`'s inputs held by the run before (`holds`, read from the
    /// store) hold again as far as they still do ([`lineage::Lineages::restore_holds`]):
    /// `named` says whether an output (`DIR/nb-3-big`) is named by its directory's newest
    /// restore point.
    pub fn restore_holds(&self, dir: &Path, holds: &lineage::Holds, named: impl Fn(&Path) -> bool) {
        self.holds_stored
            .lock()
            .unwrap()
            .insert(dir.to_path_buf(), holds.clone());
        let data_of = |sstable: &Path| {
            sstable
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| sstable.with_file_name(format!("{n}-Data.db")))
        };
        let now = self.lineage.lock().unwrap().restore_holds(
            dir,
            holds,
            |out| data_of(out).is_some_and(|d| d.exists()),
            named,
            |input| !dir.join(format!("{input}-Data.db")).exists(),
        );
        if !now.is_empty() {
            tracing::info!(dir = %dir.display(), held = ?now.keys().collect::<Vec<_>>(), "inputs still held for outputs not named on another data directory");
        }
    }

    /// Readers take a directory's newest index by LastModified, which listings give to the
    /// second; within one second they can only guess (by generation, which is wrong for a
    /// compaction: its output's id is taken when it starts). So a new listing of a directory
    /// is stored at least [`INDEX_SPACING`] after the previous one finished: its
    /// LastModified is then a later second on any server, and every reader, the
    /// original's included, picks it.
    async fn space_from_last_index(
        &self,
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<(), UploadError> {
        let last = self.last_index.lock().unwrap().get(dir).copied();
        if let Some(t) = last {
            tokio::select! {
                _ = tokio::time::sleep_until(t + INDEX_SPACING) => {}
                _ = cancel.cancelled() => return Err(UploadError::Cancelled { path: dir.to_path_buf() }),
            }
        }
        Ok(())
    }

    /// The transaction log `log` was read: `parsed` (see [`lineage`]). Returns the
    /// directories whose next restore point no longer names inputs held on for JBOD.
    pub fn txn_log_read(&self, log: &Path, parsed: &crate::cassandra::TxnLog) -> Vec<PathBuf> {
        self.lineage.lock().unwrap().log_read(log, parsed)
    }

    /// What `dir` holds for other data directories, if it differs from what is stored of
    /// it ([`layout::HOLDS_NAME`]).
    fn holds_unstored(&self, dir: &Path) -> Option<lineage::Holds> {
        let now = self.lineage.lock().unwrap().holds(dir);
        let changed = match self.holds_stored.lock().unwrap().get(dir) {
            Some(was) => *was != now,
            None => !now.is_empty(),
        };
        changed.then_some(now)
    }

    /// The transaction log `log` was deleted (see [`lineage::Lineages::log_gone`]).
    pub fn txn_log_gone(&self, log: &Path) -> Vec<PathBuf> {
        self.lineage.lock().unwrap().log_gone(log)
    }

    /// Events were lost (see [`lineage::Lineages::forget_open`]).
    pub fn txn_events_lost(&self) -> Vec<PathBuf> {
        self.lineage.lock().unwrap().forget_open()
    }

    /// A file of SSTable `sstable` of `dir` was deleted (see [`lineage`]). Returns the
    /// directories whose next restore point no longer names inputs that waited for it.
    pub fn sstable_file_gone(&self, dir: &Path, sstable: &str) -> Vec<PathBuf> {
        self.lineage.lock().unwrap().file_gone(dir, sstable)
    }

    /// A listing of `dir` naming `listed` was stored: the directories (JBOD) whose inputs
    /// stood for an output it names, and whose next restore point leaves them out.
    fn named_in(&self, dir: &Path, listed: &[String]) -> Vec<PathBuf> {
        let sstables: std::collections::BTreeSet<&str> = listed
            .iter()
            .filter_map(|n| crate::cassandra::parse_name(n))
            .map(|f| f.sstable)
            .collect();
        self.lineage.lock().unwrap().named(dir, sstables)
    }

    /// Makes durable every nameable file of the view that the filter accepts (other files
    /// only once settled), except those of the SSTables in `later`, and returns the names
    /// that are: the candidates of the index.
    async fn make_nameable_durable(
        &self,
        dir: &Path,
        view: &crate::cassandra::DirView,
        later: &std::collections::BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, UploadError> {
        let nameable = view.nameable();
        let mut listed = Vec::with_capacity(nameable.len());
        for n in nameable {
            if !self.cfg.filter.accepts(&n) {
                continue;
            }
            if crate::cassandra::parse_name(&n).is_some_and(|f| later.contains(f.sstable)) {
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
        Ok(listed)
    }
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
    /// Other directories whose restore point is due: their inputs stood for an output this
    /// index names (JBOD).
    pub touch: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TRUNCATE (Cassandra's `truncated-<ms>-TABLE` snapshot) after the directory's newest
    /// stored index makes everything that index named dead ([`super::super::point`]); one
    /// before it, or none, does not.
    #[test]
    fn a_truncate_snapshot_newer_than_the_newest_index_is_seen() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::store::StoreOptions {
            destination: format!("file://{}", root.path().join("b").display()),
            ..Default::default()
        })
        .unwrap();
        let u = Uploader::new(store, Layout::new("", "h", ":"), UploadConfig::default());
        let dir = root.path().join("ks/t-1");
        std::fs::create_dir_all(dir.join("snapshots")).unwrap();
        assert!(!u.after_truncate(&dir), "no snapshot, no index");
        let index = layout::index_key(&key_of(&u.layout, &dir.join("nb-1-big-Data.db")).unwrap());
        u.mark(&index, 10, true, None);
        assert!(!u.after_truncate(&dir), "no truncate snapshot");
        let now_ms = chrono::Utc::now().timestamp_millis();
        let snap = |ms: i64| dir.join(format!("snapshots/truncated-{ms}-t"));
        std::fs::create_dir(snap(now_ms - 3_600_000)).unwrap();
        assert!(!u.after_truncate(&dir), "truncated before the index");
        std::fs::create_dir(snap(now_ms + 5_000)).unwrap();
        assert!(u.after_truncate(&dir), "truncated after the index");
    }
}
