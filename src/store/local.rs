//! `file://` buckets read without following symlinks.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use std::collections::HashMap;

use super::{ObjectInfo, StoreError, report_bad_key};
use crate::layout::printable;

fn cstr(s: &[u8]) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn openat(dir: Option<&OwnedFd>, name: &[u8], flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let c = cstr(name)?;
    let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid NUL-terminated name and a valid (or AT_FDCWD) directory fd.
    let fd = unsafe { libc::openat(dfd, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// A local I/O error on `key`: ELOOP (O_NOFOLLOW met a symlink) is its own error.
fn io_err(op: &'static str, key: &str, source: std::io::Error) -> StoreError {
    match source.raw_os_error() {
        Some(libc::ELOOP) => StoreError::Symlink {
            op,
            key: key.to_string(),
        },
        _ => StoreError::Local {
            op,
            key: key.to_string(),
            source,
        },
    }
}

/// Opens the directory holding `key` under `root`, refusing symlinks on the way; returns
/// it with the key's last segment.
fn parent_of<'k>(
    root: &Path,
    key: &'k str,
    op: &'static str,
) -> Result<(OwnedFd, &'k str), StoreError> {
    let err = |source| io_err(op, key, source);
    let mut dir = openat(
        None,
        root.as_os_str().as_bytes(),
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .map_err(err)?;
    let (parents, last) = key.rsplit_once('/').unwrap_or(("", key));
    for seg in parents.split('/').filter(|s| !s.is_empty()) {
        dir = match openat(Some(&dir), seg.as_bytes(), DIR_FLAGS) {
            Ok(d) => d,
            // O_DIRECTORY|O_NOFOLLOW on a symlink is ENOTDIR on Linux: say which it is.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) && is_symlink_at(&dir, seg) => {
                return Err(StoreError::Symlink {
                    op,
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(err(e)),
        };
    }
    Ok((dir, last))
}

fn is_symlink_at(dir: &OwnedFd, name: &str) -> bool {
    let Ok(c) = cstr(name.as_bytes()) else {
        return false;
    };
    // SAFETY: zeroed stat is a valid out buffer; valid fd and NUL-terminated name.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

fn mtime(m: &std::fs::Metadata) -> DateTime<Utc> {
    DateTime::from_timestamp(m.mtime(), m.mtime_nsec() as u32).unwrap_or_default()
}

/// The ETag object_store's local store gives (inode, mtime in µs, size), for parity.
fn etag(m: &std::fs::Metadata) -> String {
    let micros = (m.mtime() as i128 * 1_000_000 + m.mtime_nsec() as i128 / 1000).max(0);
    format!("\"{:x}-{:x}-{:x}\"", m.ino(), micros, m.size())
}

fn info(key: &str, m: &std::fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: m.size(),
        last_modified: mtime(m),
        e_tag: Some(etag(m)),
        metadata: HashMap::new(),
    }
}

/// Opens `key` for reading, never through a symlink; with what a HEAD says about it
/// (including the `user.tablesnap.*` metadata, read from the open file).
pub(super) async fn open(
    root: &Path,
    key: &str,
    op: &'static str,
) -> Result<(File, ObjectInfo), StoreError> {
    let (root, key_s) = (root.to_path_buf(), key.to_string());
    tokio::task::spawn_blocking(move || open_blocking(&root, &key_s, op))
        .await
        .map_err(|e| StoreError::Local {
            op,
            key: key.to_string(),
            source: std::io::Error::other(e),
        })?
}

fn open_blocking(
    root: &Path,
    key: &str,
    op: &'static str,
) -> Result<(File, ObjectInfo), StoreError> {
    let (dir, last) = parent_of(root, key, op)?;
    let local_err = |source| io_err(op, key, source);
    // O_NONBLOCK: a FIFO planted in the bucket must not block the open.
    let fd = openat(
        Some(&dir),
        last.as_bytes(),
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
    )
    .map_err(local_err)?;
    let file = File::from(fd);
    let m = file.metadata().map_err(local_err)?;
    if !m.is_file() {
        return Err(local_err(std::io::Error::new(
            if m.is_dir() {
                std::io::ErrorKind::NotFound
            } else {
                std::io::ErrorKind::InvalidInput
            },
            "not a regular file",
        )));
    }
    let mut i = info(key, &m);
    for name in crate::layout::META_NAMES {
        if let Some(v) = super::xattr::fget(&file, name) {
            i.metadata
                .insert(name.to_string(), String::from_utf8_lossy(&v).into_owned());
        }
    }
    Ok((file, i))
}

const CHUNK: usize = 256 * 1024;

/// The bytes of an open file (or a range of them) as a stream of chunks.
pub(super) async fn read_stream(
    mut file: File,
    key: &str,
    range: Option<Range<u64>>,
) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
    let key = key.to_string();
    let (start, left) = match &range {
        Some(r) => (r.start, r.end.saturating_sub(r.start)),
        None => (0, u64::MAX),
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .map_err(|source| StoreError::Local {
                op: "get",
                key: key.clone(),
                source,
            })?;
    }
    let state = Some((file, left));
    Ok(futures::stream::unfold(state, move |state| {
        let key = key.clone();
        async move {
            let (mut file, left) = state?;
            if left == 0 {
                return None;
            }
            let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
            let r = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let n = loop {
                    match file.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        r => break r,
                    }
                };
                n.map(|n| {
                    buf.truncate(n);
                    (buf, file)
                })
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match r {
                Ok((buf, _)) if buf.is_empty() => None,
                Ok((buf, file)) => {
                    let left = left.saturating_sub(buf.len() as u64);
                    Some((Ok(Bytes::from(buf)), Some((file, left))))
                }
                Err(source) => Some((
                    Err(StoreError::Local {
                        op: "read",
                        key,
                        source,
                    }),
                    None,
                )),
            }
        }
    })
    .boxed())
}

/// Deletes `key`, never through a symlinked directory; a symlink at `key` itself is
/// refused too (listings never name one). A missing key is not an error.
pub(super) async fn delete(root: &Path, key: &str) -> Result<(), StoreError> {
    let (root, key_s) = (root.to_path_buf(), key.to_string());
    tokio::task::spawn_blocking(move || delete_blocking(&root, &key_s))
        .await
        .map_err(|e| StoreError::Local {
            op: "delete",
            key: key.to_string(),
            source: std::io::Error::other(e),
        })?
}

fn delete_blocking(root: &Path, key: &str) -> Result<(), StoreError> {
    let (dir, last) = match parent_of(root, key, "delete") {
        Err(e @ StoreError::Local { .. }) if e.kind() == super::ErrorKind::NotFound => {
            return Ok(());
        }
        r => r?,
    };
    let c = cstr(last.as_bytes()).map_err(|source| StoreError::Local {
        op: "delete",
        key: key.to_string(),
        source,
    })?;
    // SAFETY: zeroed stat is a valid out buffer; valid fd and NUL-terminated name.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        let source = std::io::Error::last_os_error();
        if source.kind() == std::io::ErrorKind::NotFound {
            return Ok(());
        }
        return Err(StoreError::Local {
            op: "delete",
            key: key.to_string(),
            source,
        });
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(StoreError::Symlink {
            op: "delete",
            key: key.to_string(),
        });
    }
    // SAFETY: valid fd and NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        let source = std::io::Error::last_os_error();
        if source.kind() != std::io::ErrorKind::NotFound {
            return Err(StoreError::Local {
                op: "delete",
                key: key.to_string(),
                source,
            });
        }
    }
    Ok(())
}

/// object_store's local store stages uploads as `NAME#<digits>`: not objects.
fn is_staged_upload(name: &str) -> bool {
    name.split_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

type Tx = tokio::sync::mpsc::Sender<Result<Vec<ObjectInfo>, StoreError>>;
const BATCH: usize = 1000;

/// Lists every object under `dir/` of the bucket at `root`, streamed in batches (a
/// million objects are never held here), sorted by name within each directory.
pub(super) fn list(
    root: PathBuf,
    dir: String,
) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // The walk starts when the stream is first polled (inside the caller's runtime).
    let walk = move || {
        let mut w = Walker {
            tx,
            batch: Vec::with_capacity(BATCH),
        };
        let r = w.start(&root, &dir);
        match r {
            Ok(()) => {
                let b = std::mem::take(&mut w.batch);
                if !b.is_empty() {
                    let _ = w.tx.blocking_send(Ok(b));
                }
            }
            Err(e) => {
                let _ = w.tx.blocking_send(Err(e));
            }
        }
    };
    futures::stream::unfold((Some(walk), rx), |(walk, mut rx)| async move {
        if let Some(walk) = walk {
            tokio::task::spawn_blocking(walk);
        }
        let b = rx.recv().await?;
        Some((b, (None, rx)))
    })
    .flat_map(|b| match b {
        Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
    })
    .boxed()
}

struct Walker {
    tx: Tx,
    batch: Vec<ObjectInfo>,
}

/// The receiver went away: stop walking.
struct Closed;

impl Walker {
    fn start(&mut self, root: &Path, dir: &str) -> Result<(), StoreError> {
        // The directories of the prefix itself: none may be a symlink.
        let mut path = root.to_path_buf();
        for seg in dir.split('/').filter(|s| !s.is_empty()) {
            path.push(seg);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    report_symlink(&path_key(root, &path));
                    return Ok(());
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(StoreError::Local {
                        op: "list",
                        key: format!("{dir}/"),
                        source,
                    });
                }
            }
        }
        let _ = self.walk(&path, dir);
        Ok(())
    }

    fn push(&mut self, o: ObjectInfo) -> Result<(), Closed> {
        self.batch.push(o);
        if self.batch.len() >= BATCH {
            let b = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
            self.tx.blocking_send(Ok(b)).map_err(|_| Closed)?;
        }
        Ok(())
    }

    fn fail(&mut self, e: StoreError) -> Closed {
        let b = std::mem::take(&mut self.batch);
        let _ = self.tx.blocking_send(Ok(b));
        let _ = self.tx.blocking_send(Err(e));
        Closed
    }

    fn walk(&mut self, path: &Path, key_dir: &str) -> Result<(), Closed> {
        let err = |source| StoreError::Local {
            op: "list",
            key: format!("{key_dir}/"),
            source,
        };
        let rd = match std::fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => return Err(self.fail(err(e))),
        };
        let mut entries = Vec::new();
        for e in rd {
            match e {
                Ok(e) => entries.push(e),
                Err(e) => return Err(self.fail(err(e))),
            }
        }
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                let shown = format!("{key_dir}/{}", name.to_string_lossy())
                    .trim_start_matches('/')
                    .to_string();
                report_bad_key(&shown, "not UTF-8");
                continue;
            };
            let key = if key_dir.is_empty() {
                name.to_string()
            } else {
                format!("{key_dir}/{name}")
            };
            let ft = match e.file_type() {
                Ok(ft) => ft,
                Err(source) => return Err(self.fail(err(source))),
            };
            if ft.is_symlink() {
                report_symlink(&key);
            } else if ft.is_dir() {
                if let Err(why) = object_store::path::Path::parse(&key) {
                    report_bad_key(&format!("{key}/"), &super::path_error_reason(&why));
                    continue;
                }
                self.walk(&e.path(), &key)?;
            } else if ft.is_file() {
                if is_staged_upload(name) {
                    continue;
                }
                if let Err(why) = object_store::path::Path::parse(&key) {
                    report_bad_key(&key, &super::path_error_reason(&why));
                    continue;
                }
                match e.metadata() {
                    Ok(m) => self.push(info(&key, &m))?,
                    // Deleted since read_dir: not an object any more.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(self.fail(err(source))),
                }
            } else {
                tracing::warn!(
                    key = %printable(&key),
                    "skipping a special file (not a regular file) in the file:// bucket"
                );
            }
        }
        Ok(())
    }
}

fn path_key(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

fn report_symlink(key: &str) {
    tracing::warn!(
        key = %printable(key),
        "skipping a symlink in the file:// bucket: symlinks are never followed"
    );
}
