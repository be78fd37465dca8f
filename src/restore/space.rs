//! Room before bytes: before a restore downloads anything, each target filesystem's free
//! space (`statvfs`) is compared with the bytes the plan still has to fetch there, so a
//! restore that cannot fit fails at once with one line instead of hours later with ENOSPC.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::plan::Plan;

/// Free space and need on one filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// The first planned directory on that filesystem (or its nearest existing ancestor).
    pub path: PathBuf,
    /// Bytes still to fetch there.
    pub need: u64,
    /// Bytes available to this user (`f_bavail * f_frsize`); `None` if unknown.
    pub free: Option<u64>,
}

impl Room {
    pub fn fits(&self) -> bool {
        self.free.is_none_or(|f| self.need <= f)
    }
}

impl std::fmt::Display for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} to fetch, {} free",
            self.path.display(),
            human_bytes(self.need),
            self.free.map_or("unknown".into(), human_bytes)
        )
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = "B";
    for x in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        u = x;
    }
    format!("{v:.1} {u} ({n} bytes)")
}

/// The nearest existing ancestor of `p` (`p` itself if it exists).
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.exists())
}

fn statvfs_free(p: &Path) -> Option<u64> {
    let c = CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and buffer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Need and free space per target filesystem. Files already present (by size) are not
/// counted unless `force` (they will be fetched again).
pub fn room(plan: &Plan, force: bool) -> Vec<Room> {
    room_with(plan, force, statvfs_free)
}

/// [`room`] with the free-space probe given (tests).
pub fn room_with(plan: &Plan, force: bool, free: impl Fn(&Path) -> Option<u64>) -> Vec<Room> {
    let mut by_dev: BTreeMap<u64, Room> = BTreeMap::new();
    for f in plan.files() {
        if !force && f.already_present() {
            continue;
        }
        let dir = f.dest_dir();
        let Some(anc) = existing_ancestor(dir) else {
            continue;
        };
        let Ok(dev) = std::fs::metadata(anc).map(|m| m.dev()) else {
            continue;
        };
        let e = by_dev.entry(dev).or_insert_with(|| Room {
            path: anc.to_path_buf(),
            need: 0,
            free: free(anc),
        });
        e.need += f.size;
    }
    by_dev.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::plan::{PlannedFile, TablePlan};

    #[test]
    fn need_is_summed_per_filesystem_and_present_files_only_with_force() {
        let t = tempfile::tempdir().unwrap();
        let file = |name: &str, size: u64, local: Option<u64>| {
            let mut f = PlannedFile::standalone(
                &format!("h:/d/ks/tbl/{name}"),
                &t.path().join("ks/tbl").join(name),
                size,
            );
            f.local_size = local;
            f
        };
        let plan = Plan {
            target: t.path().to_path_buf(),
            tables: vec![TablePlan {
                dir: "/d/ks/tbl".into(),
                target: t.path().join("ks/tbl"),
                index_key: "i".into(),
                index_time: chrono::Utc::now(),
                indexes_total: 1,
                complete: true,
                checks: vec![],
                mapped_to: None,
                files: vec![file("a", 700, None), file("b", 300, Some(300))],
                renumbered: None,
            }],
            ..Plan::default()
        };
        let r = room_with(&plan, false, |_| Some(699));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, t.path());
        assert_eq!(r[0].need, 700);
        assert!(!r[0].fits());
        assert!(r[0].to_string().contains("700 B to fetch"), "{}", r[0]);
        let r = room_with(&plan, true, |_| Some(1000));
        assert_eq!(r[0].need, 1000);
        assert!(r[0].fits());
        assert!(room_with(&plan, false, |_| None)[0].fits());
        assert_eq!(human_bytes(1536), "1.5 KiB (1536 bytes)");
        assert_eq!(human_bytes(10), "10 B");
    }
}
