//! Hard links (snapshots, incremental backups) of a file already stored: copied inside the
//! store instead of sent again. A link of an inode stored in this run is found by its inode;
//! after a restart (or when the live file is already gone, as after TRUNCATE and DROP,
//! which snapshot and then delete), by its live twin: `<table>/snapshots/<tag>/NAME` and
//! `<table>/backups/NAME` are links of `<table>/NAME`.

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
        let by_inode = {
            let map = self.by_inode.lock().unwrap();
            map.1
                .get(&(meta.dev(), meta.ino()))
                .and_then(|(k, size, s, ns)| {
                    (*size == meta.len()
                        && *s == meta.mtime()
                        && *ns == meta.mtime_nsec()
                        && k != key)
                        .then(|| k.clone())
                })
        };
        let src = by_inode.or_else(|| self.stored_live_twin(path, meta))?;
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

    /// The key of this snapshot or backup link's live twin, when that object is stored
    /// and holds this file: the live file is this very inode, or (gone already) the stored
    /// object has this size and the link was not modified well after it was stored (the
    /// rule a restart trusts for the live files themselves).
    fn stored_live_twin(&self, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
        let live = live_twin(path)?;
        let live_key = key_of(&self.layout, &live).ok()?;
        let k = self.known(&live_key)?;
        if !self.same_size(k.size, meta.len()) {
            return None;
        }
        let same = match std::fs::symlink_metadata(&live) {
            Ok(m) => m.dev() == meta.dev() && m.ino() == meta.ino(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match k.file {
                Some((ino, s, ns)) => (ino, s, ns) == fingerprint(meta),
                None => !newer_than(meta, k.stored_at),
            },
            Err(_) => false,
        };
        same.then_some(live_key)
    }
}

/// `<table>/NAME` for `<table>/snapshots/<tag>/NAME` or `<table>/backups/NAME` (NAME may be
/// below a secondary index's `.<index>/` directory); `None` for live files.
fn live_twin(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let kind = crate::cassandra::dir_kind(dir);
    let marker = match kind {
        crate::cassandra::DirKind::Live => return None,
        crate::cassandra::DirKind::Snapshot => "snapshots",
        crate::cassandra::DirKind::Backup => "backups",
    };
    // The innermost `snapshots`/`backups` component right below a table directory.
    let anc = path.ancestors().find(|a| {
        a.file_name().is_some_and(|n| n == marker)
            && a.parent()
                .is_some_and(|t| crate::cassandra::dir_kind(t) == crate::cassandra::DirKind::Live)
    })?;
    let table = anc.parent()?;
    let mut rest = path.strip_prefix(anc).ok()?.components();
    if kind == crate::cassandra::DirKind::Snapshot {
        rest.next()?; // the tag
    }
    let rest = rest.as_path();
    (!rest.as_os_str().is_empty()).then(|| table.join(rest))
}

#[cfg(test)]
mod tests {
    use super::live_twin;
    use std::path::Path;

    #[test]
    fn the_live_twin_of_a_snapshot_or_backup_link() {
        let t = "/d/ks/t-0123456789abcdef0123456789abcdef";
        for (link, live) in [
            (
                format!("{t}/snapshots/s1/nb-1-big-Data.db"),
                Some(format!("{t}/nb-1-big-Data.db")),
            ),
            (
                format!("{t}/snapshots/s1/.t_idx/nb-1-big-Data.db"),
                Some(format!("{t}/.t_idx/nb-1-big-Data.db")),
            ),
            (
                format!("{t}/backups/nb-2-big-TOC.txt"),
                Some(format!("{t}/nb-2-big-TOC.txt")),
            ),
            (format!("{t}/nb-1-big-Data.db"), None),
            (
                format!("{t}/snapshots/s1/manifest.json"),
                Some(format!("{t}/manifest.json")),
            ),
            ("/d/backups/t/nb-1-big-Data.db".to_string(), None),
        ] {
            assert_eq!(
                live_twin(Path::new(&link)).map(|p| p.display().to_string()),
                live,
                "{link}"
            );
        }
    }
}
