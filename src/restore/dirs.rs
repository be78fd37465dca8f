//! Directories under TARGET, opened without following symlinks.
//!
//! `create_dir_all` and path-based opens follow symlinks, so a table directory in TARGET
//! that is a symlink to `/etc` would receive every restored file (issue #11, bad input 3).
//! Here TARGET is opened once (as the operator named it), and every directory below it is
//! created with `mkdirat` and opened with `openat(O_DIRECTORY | O_NOFOLLOW)`, one component
//! at a time; every file operation is then relative to that descriptor (`openat`,
//! `renameat`, `unlinkat`, `fstatat(AT_SYMLINK_NOFOLLOW)`). A symlink where a directory is
//! expected is refused, naming it.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a directory under TARGET cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{} is a symlink where a directory is expected; refused (remove it or restore elsewhere)", path.display())]
    Symlink { path: PathBuf },
    #[error("{} exists and is not a directory; refused", path.display())]
    NotDir { path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open directory and the path it was reached by (for messages).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    pub path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// What is at `name` in `dir`, without following a symlink.
pub struct Entry {
    pub mode: u32,
    pub size: u64,
}

impl Entry {
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

impl Dir {
    /// Opens (creating it and its parents if needed) the directory `root` itself, following
    /// symlinks in it as any path the operator types.
    pub fn open_root(root: &Path) -> Result<Dir, DirError> {
        let io_err = |op, source| DirError::Io {
            op,
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(|e| io_err("create directory", e))?;
        let c = cstr(root.as_os_str()).map_err(|e| io_err("open directory", e))?;
        // SAFETY: valid C string; the result is checked.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| io_err("open directory", e))?;
        Ok(Dir {
            // SAFETY: fd was just opened and is owned here alone.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: root.to_path_buf(),
        })
    }

    /// Opens `rel` (plain components only) below this directory, creating what is missing
    /// when `create`, never following a symlink.
    pub fn open_beneath(&self, rel: &Path, create: bool) -> Result<Dir, DirError> {
        let mut cur: Option<Dir> = None;
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(DirError::Io {
                    op: "open directory",
                    path: self.path.join(rel),
                    source: io::Error::from(io::ErrorKind::InvalidInput),
                });
            };
            let parent = cur.as_ref().unwrap_or(self);
            let next = parent.child(name, create)?;
            cur = Some(next);
        }
        match cur {
            Some(d) => Ok(d),
            None => self.dup(),
        }
    }

    fn dup(&self) -> Result<Dir, DirError> {
        let fd = self.fd.try_clone().map_err(|source| DirError::Io {
            op: "dup",
            path: self.path.clone(),
            source,
        })?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    fn child(&self, name: &OsStr, create: bool) -> Result<Dir, DirError> {
        let path = self.path.join(name);
        let io_err = |op, source| DirError::Io {
            op,
            path: path.clone(),
            source,
        };
        let c = cstr(name).map_err(|e| io_err("open directory", e))?;
        if create {
            // SAFETY: valid descriptor and C string.
            let r = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o755) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(io_err("create directory", e));
                }
            }
        }
        // SAFETY: valid descriptor and C string; the result is checked.
        let r = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match self.stat(name) {
                Ok(Some(en)) if en.is_symlink() => DirError::Symlink { path },
                Ok(Some(en)) if !en.is_dir() => DirError::NotDir { path },
                _ => io_err("open directory", e),
            });
        }
        Ok(Dir {
            // SAFETY: r is a fresh descriptor owned here alone.
            fd: unsafe { OwnedFd::from_raw_fd(r) },
            path,
        })
    }

    /// `fstatat(AT_SYMLINK_NOFOLLOW)`: `None` if nothing is there.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Entry>> {
        let c = cstr(name)?;
        // SAFETY: zeroed stat is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, C string and buffer.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(Entry {
            mode: st.st_mode,
            size: st.st_size as u64,
        }))
    }

    /// Owner and group of this directory.
    pub fn owner(&self) -> io::Result<(u32, u32)> {
        // SAFETY: zeroed stat is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and buffer.
        cvt(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })?;
        Ok((st.st_uid, st.st_gid))
    }

    /// Creates `name` (which must not exist) for reading and writing, mode 0600, never
    /// through a symlink.
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: valid descriptor and C string; the result is checked.
        let fd = cvt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })?;
        // SAFETY: fresh descriptor owned by the File alone.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Opens an existing regular file `name` for reading, never through a symlink.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: valid descriptor and C string; the result is checked.
        let fd = cvt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fresh descriptor owned by the File alone.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Removes `name` (a file or symlink); nothing there is fine.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid descriptor and C string.
        let r = unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Renames `from` to `to`, both in this directory (replacing `to`, even a symlink
    /// itself, never what it points to).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid descriptors and C strings.
        cvt(unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) })?;
        Ok(())
    }

    /// The directory as a `File`, for fsync.
    pub fn to_file(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }
}

/// `fchmod` of an open file.
pub fn fchmod(f: &File, mode: u32) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(())
}

/// `fchown` of an open file; `None` leaves that id unchanged.
pub fn fchown(f: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let u = uid.unwrap_or(u32::MAX) as libc::uid_t;
    let g = gid.unwrap_or(u32::MAX) as libc::gid_t;
    // SAFETY: valid descriptor; -1 means "unchanged".
    cvt(unsafe { libc::fchown(f.as_raw_fd(), u, g) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinked_directories_are_refused_by_name_and_nothing_is_written_through_them() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = t.path().join("target");
        std::fs::create_dir_all(root.join("ks")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("ks/tbl-1")).unwrap();
        let d = Dir::open_root(&root).unwrap();
        let e = d.open_beneath(Path::new("ks/tbl-1"), true).unwrap_err();
        assert!(matches!(&e, DirError::Symlink { path } if path == &root.join("ks/tbl-1")));
        assert!(e.to_string().contains("ks/tbl-1"), "{e}");
        // A symlink higher up is refused too.
        std::os::unix::fs::symlink(&outside, root.join("ks2")).unwrap();
        assert!(matches!(
            d.open_beneath(Path::new("ks2/t"), true),
            Err(DirError::Symlink { .. })
        ));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Plain directories are created and usable.
        let ok = d.open_beneath(Path::new("ks/tbl-2/.idx"), true).unwrap();
        ok.create_new(OsStr::new("f")).unwrap();
        assert!(root.join("ks/tbl-2/.idx/f").is_file());
        // A symlink file is not opened through.
        std::os::unix::fs::symlink(outside.join("x"), root.join("ks/tbl-2/l")).unwrap();
        let tbl = d.open_beneath(Path::new("ks/tbl-2"), false).unwrap();
        assert!(tbl.open_read(OsStr::new("l")).is_err());
        assert!(tbl.create_new(OsStr::new("l")).is_err());
        assert!(tbl.stat(OsStr::new("l")).unwrap().unwrap().is_symlink());
    }
}
