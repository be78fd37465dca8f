//! Reading files in a directory that Cassandra writes to, the safe way: never blocking on a
//! FIFO, never through a symlink, only regular files; and when a file that no SSTable rule
//! covers may be taken as closed. Below both the Cassandra model and the uploader, so the
//! model imports nothing above it.

use std::fs::File;
use std::path::Path;

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
