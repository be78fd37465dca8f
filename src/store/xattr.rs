//! Minimal `user.tablesnap.*` extended attributes through libc.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstrings(path: &Path, name: &str) -> std::io::Result<(CString, CString)> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let n = CString::new(format!("user.tablesnap.{name}"))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    Ok((p, n))
}

pub fn set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (p, n) = cstrings(path, name)?;
    // SAFETY: valid NUL-terminated strings and a valid buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads an attribute of an open file (no path lookup, so no symlink to follow).
pub fn fget(file: &std::fs::File, name: &str) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let n = CString::new(format!("user.tablesnap.{name}")).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid fd, NUL-terminated name and a writable buffer of the given length.
    let r = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

pub fn get(path: &Path, name: &str) -> Option<Vec<u8>> {
    let (p, n) = cstrings(path, name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}
