//! Linux inotify, with exactly the requested event masks: turns kernel events into "this
//! file may need a backup", "this directory appeared" and "events were lost, rescan".
//!
//! Fixes over the original: `IN_Q_OVERFLOW` is reported (the daemon rescans everything),
//! a directory that appears under `-a` is scanned right after its watch is in place (files
//! written before the watch existed are not missed), and running out of watches is a clear
//! error naming the sysctl to raise.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};

/// The file events a user can ask for (`--listen-events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    pub moved_to: bool,
    pub close_write: bool,
    pub create: bool,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            moved_to: true,
            close_write: true,
            create: false,
        }
    }
}

impl Events {
    /// From `--listen-events` values; none given means the default pair.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(Self::default());
        }
        let mut e = Events {
            moved_to: false,
            close_write: false,
            create: false,
        };
        for n in names {
            match n.as_str() {
                "IN_MOVED_TO" => e.moved_to = true,
                "IN_CLOSE_WRITE" => e.close_write = true,
                "IN_CREATE" => e.create = true,
                other => {
                    return Err(format!(
                        "unknown event {other:?}: use IN_MOVED_TO, IN_CLOSE_WRITE or IN_CREATE"
                    ));
                }
            }
        }
        Ok(e)
    }

    fn mask(&self, auto_add: bool) -> WatchMask {
        // DELETE and MOVED_FROM only keep the daemon's bookkeeping bounded (it forgets files
        // that are gone); they never cause an upload.
        let mut m = WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::DONT_FOLLOW
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM;
        if self.moved_to || auto_add {
            m |= WatchMask::MOVED_TO;
        }
        if self.close_write {
            m |= WatchMask::CLOSE_WRITE;
        }
        if self.create || auto_add {
            m |= WatchMask::CREATE;
        }
        m
    }
}

/// What the watcher tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A file was written, renamed into place or linked: back it up.
    File(PathBuf),
    /// A directory appeared and is now watched: scan it (its files may predate the watch).
    NewDir(PathBuf),
    /// The kernel queue overflowed: events were lost, rescan everything.
    Overflow,
    /// A file was deleted or moved away (compaction): forget what we know about it.
    Gone(PathBuf),
    /// A new directory that could not be watched (watch limit): scan its whole subtree.
    Unwatched(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start inotify: {0}")]
    Init(#[source] std::io::Error),
    #[error(
        "cannot watch {path}: the inotify watch limit is reached; raise the sysctl fs.inotify.max_user_watches (now {limit})"
    )]
    Limit { path: PathBuf, limit: String },
    #[error("cannot watch {path}: {source}")]
    Add {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading inotify events: {0}")]
    Read(#[source] std::io::Error),
}

pub struct Watcher {
    stream: EventStream<Vec<u8>>,
    watches: Watches,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Inode of each watched directory: tells a renamed directory (watch renewed under its
    /// new name) from one moved away.
    inodes: HashMap<WatchDescriptor, u64>,
    /// The roots as given: a symlink there is followed (a data directory on a mounted
    /// volume), below them never.
    roots: std::collections::HashSet<PathBuf>,
    events: Events,
    mask: WatchMask,
    recursive: bool,
    auto_add: bool,
    /// New directories that could not be watched (watch limit): retried, and polled by
    /// scanning until then.
    unwatched: Vec<PathBuf>,
}

impl Watcher {
    pub fn new(events: Events, recursive: bool, auto_add: bool) -> Result<Self, WatchError> {
        let ino = Inotify::init().map_err(WatchError::Init)?;
        let watches = ino.watches();
        let stream = ino
            .into_event_stream(vec![0u8; 64 * 1024])
            .map_err(WatchError::Init)?;
        Ok(Self {
            stream,
            watches,
            dirs: HashMap::new(),
            inodes: HashMap::new(),
            roots: Default::default(),
            events,
            mask: events.mask(auto_add),
            recursive,
            auto_add,
            unwatched: Vec::new(),
        })
    }

    /// Whether some new directory could not be watched yet.
    pub fn has_unwatched(&self) -> bool {
        !self.unwatched.is_empty()
    }

    /// Tries again to watch the directories that hit the watch limit: a directory watched
    /// now is scanned (`NewDir`), one still unwatchable is scanned again (`Unwatched`) so
    /// its new files are polled until the limit is raised.
    pub fn retry_unwatched(&mut self) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        for dir in std::mem::take(&mut self.unwatched) {
            if !dir.is_dir() {
                continue;
            }
            match self.add_tree(&dir, true) {
                Ok(added) => {
                    tracing::info!(dir = %dir.display(), "watching a directory that hit the watch limit before");
                    out.extend(added.into_iter().map(WatchEvent::NewDir));
                }
                Err(_) => {
                    out.push(WatchEvent::Unwatched(dir.clone()));
                    self.unwatched.push(dir);
                }
            }
        }
        out
    }

    /// After events were lost (overflow): watch every directory under the roots that should
    /// be watched and is not (its creation event may have been lost). Returns the new ones.
    pub fn rewatch(&mut self, roots: &[PathBuf]) -> Vec<PathBuf> {
        if !(self.recursive || self.auto_add) {
            return vec![];
        }
        let before: std::collections::HashSet<PathBuf> = self.dirs.values().cloned().collect();
        for r in roots {
            if let Err(e) = self.add_tree(r, true) {
                tracing::error!("{e}");
            }
        }
        self.dirs
            .values()
            .filter(|d| !before.contains(*d))
            .cloned()
            .collect()
    }

    /// Watches `root` (and, with `-r`, every directory below it). Returns the directories
    /// now watched.
    pub fn add_root(&mut self, root: &Path) -> Result<Vec<PathBuf>, WatchError> {
        self.roots.insert(root.to_path_buf());
        self.add_tree(root, self.recursive)
    }

    fn add_tree(&mut self, root: &Path, recursive: bool) -> Result<Vec<PathBuf>, WatchError> {
        let mut added = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            // snapshots/ and backups/ hold hard links that are only backed up with
            // IN_CREATE: without it nothing there is acted on, so they cost no watch (a node
            // with many tables and snapshots would otherwise run out of them).
            if !self.events.create
                && dir != root
                && crate::cassandra::dir_kind(&dir) != crate::cassandra::DirKind::Live
            {
                continue;
            }
            match self.add_one(&dir) {
                Ok(()) => added.push(dir.clone()),
                // A subdirectory removed while we walk is not an error.
                Err(WatchError::Add { source, .. })
                    if dir != root && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
            if !recursive {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
        Ok(added)
    }

    fn add_one(&mut self, dir: &Path) -> Result<(), WatchError> {
        let mut mask = self.mask | WatchMask::ONLYDIR;
        if self.roots.contains(dir) {
            mask.remove(WatchMask::DONT_FOLLOW);
        }
        match self.watches.add(dir, mask) {
            Ok(wd) => {
                use std::os::unix::fs::MetadataExt;
                if let Ok(m) = std::fs::metadata(dir) {
                    self.inodes.insert(wd.clone(), m.ino());
                }
                self.dirs.insert(wd, dir.to_path_buf());
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Err(WatchError::Limit {
                path: dir.to_path_buf(),
                limit: std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".into()),
            }),
            Err(source) => Err(WatchError::Add {
                path: dir.to_path_buf(),
                source,
            }),
        }
    }

    /// Whether the path recorded for `wd` is still that directory (same inode).
    fn renewed(&self, wd: &WatchDescriptor) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Some(p), Some(ino)) = (self.dirs.get(wd), self.inodes.get(wd)) else {
            return false;
        };
        std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.ino() == *ino)
    }

    pub fn watched_dirs(&self) -> usize {
        self.dirs.len()
    }

    /// The next batch of events. Cancel-safe: it can be used inside `select!`.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, WatchError> {
        let first = match self.stream.next().await {
            Some(r) => r.map_err(WatchError::Read)?,
            None => return Ok(vec![]),
        };
        let mut out = Vec::new();
        self.translate(first, &mut out)?;
        Ok(out)
    }

    fn translate(
        &mut self,
        ev: inotify::Event<OsString>,
        out: &mut Vec<WatchEvent>,
    ) -> Result<(), WatchError> {
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            out.push(WatchEvent::Overflow);
            return Ok(());
        }
        if ev.mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&ev.wd);
            return Ok(());
        }
        let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
            return Ok(());
        };
        if ev
            .mask
            .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
        {
            // The kernel drops the watch on delete (IN_IGNORED follows). A moved directory's
            // path is stale, unless its new name is watched already: a rename inside the
            // tree reaches us as IN_MOVED_TO first, which renewed this very watch under the
            // new path (same descriptor), and dropping it would lose the directory.
            if ev.mask.contains(EventMask::MOVE_SELF) && !self.renewed(&ev.wd) {
                let _ = self.watches.remove(ev.wd.clone());
                self.dirs.remove(&ev.wd);
                self.inodes.remove(&ev.wd);
            }
            return Ok(());
        }
        let Some(name) = ev.name else {
            return Ok(());
        };
        if name.as_bytes().is_empty() {
            return Ok(());
        }
        let path = dir.join(&name);
        if ev.mask.contains(EventMask::ISDIR) {
            if self.auto_add && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                // Watch the new directory (and, with -r, its subtree) before scanning it.
                match self.add_tree(&path, true) {
                    Ok(added) => out.extend(added.into_iter().map(WatchEvent::NewDir)),
                    Err(e) => {
                        // Out of watches (or a race): the directory cannot be watched, but
                        // what is in it now must still be backed up.
                        tracing::error!(
                            "{e}; its current files are uploaded, later ones only by a rescan (--rescan-interval)"
                        );
                        if !self.unwatched.contains(&path) {
                            self.unwatched.push(path.clone());
                        }
                        out.push(WatchEvent::Unwatched(path));
                    }
                }
            }
            return Ok(());
        }
        if ev
            .mask
            .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
        {
            out.push(WatchEvent::Gone(path));
            return Ok(());
        }
        let wanted = (self.events.moved_to && ev.mask.contains(EventMask::MOVED_TO))
            || (self.events.close_write && ev.mask.contains(EventMask::CLOSE_WRITE))
            || (self.events.create && ev.mask.contains(EventMask::CREATE));
        if wanted {
            if ev.mask.contains(EventMask::CREATE)
                && self.events.close_write
                && being_written(&path)
            {
                // IN_CREATE is for hard links (snapshots, incremental backups), which arrive
                // whole. A new file with a single link is being written (Cassandra 3+ writes
                // SSTables under their final names): uploading it now would store a partial
                // object and read it again and again while it grows; its IN_CLOSE_WRITE
                // comes when it is complete.
                tracing::debug!(path = %path.display(), "created, waiting for IN_CLOSE_WRITE");
                return Ok(());
            }
            out.push(WatchEvent::File(path));
        }
        Ok(())
    }
}

/// A regular file with one link: created by open(), not by link().
fn being_written(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.nlink() == 1)
}

/// What a scan found that may be uploaded now, and what must wait.
#[derive(Debug, Default)]
pub struct Scan {
    /// Closed files: of complete SSTables, or others not modified for [`crate::upload::SETTLE`].
    pub ready: Vec<PathBuf>,
    /// Other files modified moments ago (perhaps still open), and files of SSTables not
    /// complete yet: look again later (their closing events may predate the watch).
    pub unsettled: Vec<PathBuf>,
    /// Directories that could not be read (each named once, with the reason).
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
    /// Names that are not UTF-8 (they cannot be named in a key).
    pub not_utf8: Vec<PathBuf>,
    /// Closed files left out of `ready` because they are already stored as they are.
    pub stored: u64,
}

/// The files a scan (startup `-B`, a new directory, an overflow, a rescan) may upload.
/// Unlike an event, a scan cannot tell whether a file is still being written, so it asks
/// the data directory: files of complete SSTables only (never one still growing under a
/// transaction log), transaction logs and temporary names never, other files once settled.
/// `snapshots/` and `backups/` (hard links of live SSTables) are skipped unless `hardlinks`
/// (IN_CREATE listened to, the way the original was told to follow them).
pub fn scan_closed(dir: &Path, recursive: bool, hardlinks: bool) -> Scan {
    scan_closed_except(dir, recursive, hardlinks, &mut |_, _| false)
}

/// [`scan_closed`], leaving out of `ready` the closed files for which `stored` (given the
/// file's `symlink_metadata`) says they are already stored as they are: only counted, so
/// that a restart over a million stored files does not list them all.
pub fn scan_closed_except(
    dir: &Path,
    recursive: bool,
    hardlinks: bool,
    stored: &mut dyn FnMut(&Path, &std::fs::Metadata) -> bool,
) -> Scan {
    use crate::cassandra::{self, DirKind};
    let mut out = Scan::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if !hardlinks && cassandra::dir_kind(&d) != DirKind::Live {
            continue;
        }
        let view = match cassandra::view_dir(&d) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.unreadable.push((d, e));
                continue;
            }
        };
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                if recursive {
                    stack.push(e.path());
                }
                continue;
            }
            if !t.is_file() {
                continue;
            }
            let name = e.file_name();
            let Some(n) = name.to_str() else {
                out.not_utf8.push(e.path());
                continue;
            };
            if cassandra::is_txn_log(n) || cassandra::is_temporary(n) {
                continue;
            }
            if view.is_unfinished(n)
                || (view.others.contains(n) && !crate::upload::settled(&e.path()))
            {
                out.unsettled.push(e.path());
                continue;
            }
            let path = e.path();
            if e.metadata().is_ok_and(|m| stored(&path, &m)) {
                out.stored += 1;
                continue;
            }
            out.ready.push(path);
        }
    }
    out
}

thread_local! {
    static DIR_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many directory reads the checks of waiting files ([`ready_now`]) made on this
/// thread: tests use it to see that the daemon's main loop makes none.
pub fn dir_reads() -> u64 {
    DIR_READS.with(|c| c.get())
}

fn count_dir_read() {
    DIR_READS.with(|c| c.set(c.get() + 1));
}

/// Whether a file a scan left waiting may be uploaded now: it still exists, and it is not
/// part of an unfinished SSTable and (if not an SSTable's) settled. `None`: gone.
pub fn ready_now(path: &Path) -> Option<bool> {
    let n = path.file_name().and_then(|n| n.to_str())?;
    if !path.exists() {
        return None;
    }
    if let Some(f) = crate::cassandra::parse_name(n) {
        let dir = path.parent().unwrap_or(Path::new("/"));
        // While a compaction runs (hours), this is asked every few seconds: the logs
        // alone answer, without reading every TOC of the directory.
        count_dir_read();
        if crate::cassandra::in_open_transaction(dir, f.sstable) {
            return Some(false);
        }
        count_dir_read();
        let v = crate::cassandra::view_dir(dir).ok()?;
        Some(!v.is_unfinished(n))
    } else {
        Some(crate::upload::settled(path))
    }
}

/// A file waiting to be uploaded, as [`check_waiting`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub path: PathBuf,
    /// An event brought it (it is closed): only an open transaction holds it back.
    pub event: bool,
    /// `Some(true)`: upload it now; `Some(false)`: wait; `None`: gone.
    pub ready: Option<bool>,
}

/// [`ready_now`] for many files of one directory (`event`: an event brought the file, it is
/// closed, and only an open transaction of its SSTable holds it back), with one read of the
/// directory and of its transaction logs whatever their number, and the TOCs read only if
/// some file needs them. Blocking: run it beside the daemon's main loop.
pub fn check_waiting(dir: &Path, files: &[(PathBuf, bool)]) -> Vec<Waiting> {
    use crate::cassandra::{self, TxnState};
    count_dir_read();
    let mut names = std::collections::BTreeSet::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    if let Ok(n) = e.file_name().into_string() {
                        names.insert(n);
                    }
                }
            }
        }
        // Unreadable now (out of file descriptors?): a closed file is uploaded as an event
        // would have it (the upload reports what is wrong), a waiting one is dropped as
        // `ready_now` drops it (the next rescan finds it).
        Err(_) => {
            return files
                .iter()
                .map(|(path, event)| Waiting {
                    path: path.clone(),
                    event: *event,
                    ready: (*event && path.exists()).then_some(true),
                })
                .collect();
        }
    }
    let read = |n: &str| -> Option<Vec<u8>> {
        use std::io::Read;
        let mut buf = Vec::new();
        crate::localfs::open_regular(&dir.join(n))
            .ok()?
            .take(1 << 20)
            .read_to_end(&mut buf)
            .ok()?;
        Some(buf)
    };
    let mut open = std::collections::HashSet::new();
    for log in names.iter().filter(|n| cassandra::is_txn_log(n)) {
        if let Some(c) = read(log) {
            let l = cassandra::parse_txn_log(&c);
            // An aborted one's outputs are being deleted (ABORT is logged first): the
            // close event of its half-written Data.db must not upload it meanwhile.
            if l.state != TxnState::Committed {
                open.extend(l.added);
            }
        }
    }
    let mut view: Option<cassandra::DirView> = None;
    files
        .iter()
        .map(|(path, event)| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ready = if !names.contains(name) {
                None
            } else if let Some(f) = cassandra::parse_name(name) {
                if open.contains(f.sstable) {
                    Some(false)
                } else if *event {
                    Some(true)
                } else {
                    let v = view.get_or_insert_with(|| {
                        cassandra::DirView::classify(names.iter().map(String::as_str), read)
                    });
                    Some(!v.is_unfinished(name))
                }
            } else {
                Some(*event || crate::upload::settled(path))
            };
            Waiting {
                path: path.clone(),
                event: *event,
                ready,
            }
        })
        .collect()
}

/// Whether an event for this file should upload it: never a transaction log (bookkeeping
/// that is rewritten record by record and that no restore may contain) nor a temporary
/// name; in `snapshots/` and `backups/` only when hard links are followed.
pub fn event_wanted(path: &Path, hardlinks: bool) -> bool {
    use crate::cassandra::{self, DirKind};
    let Some(n) = path.file_name().and_then(|n| n.to_str()) else {
        return true; // reported as not UTF-8 by the daemon
    };
    if cassandra::is_txn_log(n) || cassandra::is_temporary(n) {
        return false;
    }
    hardlinks
        || path
            .parent()
            .is_none_or(|d| cassandra::dir_kind(d) == DirKind::Live)
}

/// Every regular file in `dir` (and below, with `recursive`). Symlinks and special files
/// are never returned. A directory that vanished yields nothing.
pub fn scan(dir: &Path, recursive: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_file() {
                out.push(e.path());
            } else if t.is_dir() && recursive {
                stack.push(e.path());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// With default events, snapshots/ and backups/ (and what is below them) take no
    /// inotify watch; with IN_CREATE they are watched.
    #[tokio::test]
    async fn snapshot_and_backup_directories_cost_no_watch_unless_links_are_followed() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("ks/t-5b608090e03d11ebb4c1d335f841c590");
        for sub in ["snapshots/a", "snapshots/b", "backups", ".t_idx"] {
            std::fs::create_dir_all(t.join(sub)).unwrap();
        }
        let mut w = super::Watcher::new(super::Events::default(), true, true).unwrap();
        w.add_root(d.path()).unwrap();
        // root, ks, the table and its index directory.
        assert_eq!(w.watched_dirs(), 4);
        let links = super::Events::parse(&["IN_CLOSE_WRITE".into(), "IN_CREATE".into()]).unwrap();
        let mut w = super::Watcher::new(links, true, true).unwrap();
        w.add_root(d.path()).unwrap();
        assert_eq!(w.watched_dirs(), 8);
    }

    use super::*;

    #[test]
    fn a_scan_counts_stored_files_instead_of_listing_them() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("ks/t1");
        std::fs::create_dir_all(&t).unwrap();
        for g in 1..=3 {
            std::fs::write(t.join(format!("nb-{g}-big-Data.db")), b"x").unwrap();
            std::fs::write(t.join(format!("nb-{g}-big-TOC.txt")), b"Data.db\nTOC.txt\n").unwrap();
        }
        let all = scan_closed(d.path(), true, false);
        assert_eq!((all.ready.len(), all.stored), (6, 0));
        let mut asked = vec![];
        let s = scan_closed_except(d.path(), true, false, &mut |p, m| {
            asked.push(p.to_path_buf());
            assert!(m.is_file());
            !p.ends_with("nb-2-big-Data.db")
        });
        assert_eq!(s.ready, vec![t.join("nb-2-big-Data.db")]);
        assert_eq!(s.stored, 5);
        assert_eq!(asked.len(), 6, "asked once per closed file");
    }

    /// One look answers for every file waiting in a directory, as `ready_now` and the
    /// event rule did one by one: an open transaction holds back both; an event's closed
    /// file needs nothing else, a scan's needs its SSTable complete; a file gone is None.
    #[test]
    fn one_look_answers_for_every_waiting_file_of_a_directory() {
        use crate::cassandra::{Record, RecordType};
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        let log = Record::new(RecordType::Add, &format!("{}/nb-1-big", t.display()));
        std::fs::write(
            t.join("nb_txn_flush_00000000-0000-0000-0000-000000000001.log"),
            format!("{log}\n"),
        )
        .unwrap();
        for f in [
            "nb-1-big-Data.db",
            "nb-2-big-Data.db",
            "nb-3-big-Data.db",
            "manifest.json",
        ] {
            std::fs::write(t.join(f), b"x").unwrap();
        }
        std::fs::write(t.join("nb-3-big-TOC.txt"), b"Data.db\nTOC.txt\n").unwrap();
        // An aborted compaction whose output is not deleted yet.
        let add = Record::new(RecordType::Add, &format!("{}/nb-5-big", t.display()));
        let abort = Record::new(RecordType::Abort, "");
        std::fs::write(
            t.join("nb_txn_compaction_00000000-0000-0000-0000-000000000005.log"),
            format!("{add}\n{abort}\n"),
        )
        .unwrap();
        std::fs::write(t.join("nb-5-big-Data.db"), b"half").unwrap();
        let q = |n: &str, event: bool| (t.join(n), event);
        let before = dir_reads();
        let got: Vec<Option<bool>> = check_waiting(
            t,
            &[
                q("nb-1-big-Data.db", true),  // in the open flush
                q("nb-1-big-Data.db", false), // the same, looked at again
                q("nb-2-big-Data.db", true),  // closed, no transaction: upload
                q("nb-2-big-Data.db", false), // no TOC yet: wait
                q("nb-3-big-Data.db", false), // complete
                q("nb-4-big-Data.db", true),  // gone
                q("manifest.json", true),
                q("nb-5-big-Data.db", true), // closed by the abort: never uploaded
            ],
        )
        .into_iter()
        .map(|w| w.ready)
        .collect();
        assert_eq!(
            got,
            [
                Some(false),
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                None,
                Some(true),
                Some(false)
            ]
        );
        assert_eq!(dir_reads() - before, 1);
    }
}
