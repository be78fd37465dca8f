//! Hard links (snapshots, incremental backups) of a file already stored in this run: copied
//! inside the store instead of sent again.

use super::*;

impl Uploader {
    pub(super) fn remember_inode(&self, path: &Path) {
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
    pub(super) async fn copy_link(
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
}
