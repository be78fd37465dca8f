//! Reading files in a directory that Cassandra writes to, the safe way: never blocking on a
//! FIFO, never through a symlink, only regular files; and when a file that no SSTable rule
//! covers may be taken as closed. Below both the Cassandra model and the uploader, so the
//! model imports nothing above it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

/// How long a file that is not part of an SSTable must be left unmodified before a scan
/// takes it as closed. SSTable components need no such guess: the TOC and the transaction
/// logs say when an SSTable is complete.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// See [`SETTLE`].
///
/// A file whose mtime is in the future (a clock stepped back, `rsync -a` from a skewed
/// host) has no age to compare: it is settled once this process has seen it unchanged
/// (size, mtime, inode) for `SETTLE`.
pub fn settled(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    type Seen = HashMap<PathBuf, ((u64, i64, i64, u64), Instant)>;
    static SEEN: LazyLock<Mutex<Seen>> = LazyLock::new(Default::default);
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    match m.modified().map(|t| t.elapsed()) {
        Ok(Ok(age)) => age >= SETTLE,
        Ok(Err(_)) => {
            let now = Instant::now();
            let fp = (m.len(), m.mtime(), m.mtime_nsec(), m.ino());
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= 100_000 {
                seen.clear(); // bounded: such files are rare; worst case one more wait
            }
            let first = seen.entry(path.to_path_buf()).or_insert((fp, now));
            if first.0 != fp {
                *first = (fp, now);
            }
            now.duration_since(first.1) >= SETTLE
        }
        Err(_) => false,
    }
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
