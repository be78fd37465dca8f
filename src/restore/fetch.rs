//! Downloads: each planned file streamed (or fetched as parallel ranges) into a temp file
//! beside its destination, verified, made durable by the group commit, then renamed.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio::sync::{Semaphore, watch};

use super::commit::{GroupCommit, sync_batch};
use super::verify::check;
use super::{ExecOptions, Observer, Outcome, Ownership, Report, RestoreError};
use crate::layout::{self, StatMeta};
use crate::restore::plan::{Plan, PlannedFile};
use crate::store::{ErrorKind, Store, StoreError};

/// Downloads every file of the plan. Never returns early: each file's failure is in the report.
pub async fn execute(
    store: &Store,
    plan: &Plan,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Report {
    let mut report = Report::default();
    // Create every target directory first; a table whose directory cannot be made fails whole.
    let mut bad_dirs: HashMap<PathBuf, String> = HashMap::new();
    let dirs = plan
        .tables
        .iter()
        .map(|t| t.target.clone())
        .chain(plan.commitlogs.iter().map(|c| c.target.clone()));
    for d in dirs {
        if let Err(e) = std::fs::create_dir_all(&d) {
            bad_dirs.insert(d.clone(), e.to_string());
        }
    }
    let bad_dirs = &bad_dirs;
    let uid_gid = match &opts.ownership {
        Ownership::Ids { uid, gid } => Some((*uid, *gid)),
        _ => None,
    };
    let gate = &Semaphore::new(opts.threads.max(1));
    let (commit, committer) = GroupCommit::new();
    let downloads = async move {
        let commit = &commit;
        futures::stream::iter(plan.files().map(|f| async move {
            let parent = f.dest.parent().map(Path::to_path_buf).unwrap_or_default();
            let outcome = if let Some(e) = bad_dirs.get(&parent) {
                Outcome::Failed(RestoreError::Io {
                    op: "create directory",
                    path: parent,
                    source: std::io::Error::other(e.clone()),
                })
            } else {
                let ctx = Ctx {
                    store,
                    opts,
                    ids: uid_gid,
                    observer,
                    gate,
                    commit,
                };
                restore_one(&ctx, f).await
            };
            observer.file_done(f, &outcome);
            (f, outcome)
        }))
        .buffer_unordered(opts.threads.max(1))
        .collect::<Vec<_>>()
        .await
        // `commit` is dropped here, which ends the committer.
    };
    let (results, ()) = tokio::join!(downloads, committer);
    // The renames: one more syncfs per filesystem, then each directory's fsync (cheap now,
    // and the one that reports an error of that directory).
    let dirs: std::collections::BTreeSet<PathBuf> = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Restored { .. }))
        .filter_map(|(f, _)| f.dest.parent().map(Path::to_path_buf))
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        let mut opened = Vec::new();
        for d in dirs {
            match File::open(&d) {
                Ok(f) => opened.push((d, Arc::new(f))),
                Err(e) => tracing::warn!("fsync directory {}: {e}", d.display()),
            }
        }
        let files: Vec<Arc<File>> = opened.iter().map(|(_, f)| f.clone()).collect();
        for ((d, _), r) in opened.iter().zip(sync_batch(&files)) {
            if let Err(e) = r {
                tracing::warn!("fsync directory {}: {e}", d.display());
            }
        }
    })
    .await;
    for (f, o) in results {
        match o {
            Outcome::Restored { .. } => {
                report.restored += 1;
                report.restored_bytes += f.size;
            }
            Outcome::AlreadyPresent => report.present += 1,
            Outcome::Verified => report.verified += 1,
            Outcome::Failed(e) => report.failures.push((f.key.clone(), e)),
        }
    }
    report
}

fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tableslurp-tmp"))
}

/// What every download of one [`execute`] shares.
struct Ctx<'a> {
    store: &'a Store,
    opts: &'a ExecOptions,
    ids: Option<(Option<u32>, Option<u32>)>,
    observer: &'a dyn Observer,
    /// `-t`: one permit per request in flight.
    gate: &'a Semaphore,
    commit: &'a GroupCommit,
}

async fn restore_one(ctx: &Ctx<'_>, f: &PlannedFile) -> Outcome {
    let opts = ctx.opts;
    match std::fs::symlink_metadata(&f.dest) {
        Ok(m) if !opts.force => {
            return if m.is_file() && m.len() == f.size {
                Outcome::AlreadyPresent
            } else {
                Outcome::Failed(RestoreError::Exists {
                    path: f.dest.clone(),
                    key: f.key.clone(),
                    local: m.len(),
                    remote: f.size,
                })
            };
        }
        _ => {}
    }
    let tmp = temp_path(&f.dest);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = fetch_once(ctx, f, &tmp, attempt).await;
        match r {
            Ok(()) => return Outcome::Restored { attempts: attempt },
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if !e.retriable() {
                    return Outcome::Failed(e);
                }
                if attempt >= opts.attempts {
                    return Outcome::Failed(RestoreError::GaveUp {
                        key: f.key.clone(),
                        attempts: attempt,
                        last: Box::new(e),
                    });
                }
                tracing::warn!(key = %f.key, attempt, "{e}; retrying");
                tokio::time::sleep(opts.retry_pause * attempt).await;
            }
        }
    }
}

/// One attempt: download to `tmp`, verify, set mode/owner, make durable, rename.
async fn fetch_once(
    ctx: &Ctx<'_>,
    f: &PlannedFile,
    tmp: &Path,
    attempt: u32,
) -> Result<(), RestoreError> {
    let (store, opts, observer) = (ctx.store, ctx.opts, ctx.observer);
    // A fresh file, never through a symlink planted at the temp name.
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RestoreError::io("remove stale", tmp)(e));
        }
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(RestoreError::io("create", tmp))?;
    let file = Arc::new(file);
    let limit = opts.fault.as_ref().and_then(|h| h(&f.key, attempt));
    let missing = |e: StoreError| match e.kind() {
        ErrorKind::NotFound => RestoreError::Missing { key: f.key.clone() },
        _ => RestoreError::Store(e),
    };
    let ids = ctx.ids;
    let (info, md5) = if f.size >= opts.range_threshold && opts.range_size > 0 && limit.is_none() {
        // Large: HEAD for size and metadata, then parallel ranges, hashed in order behind them.
        let info = {
            let _permit = ctx.gate.acquire().await.expect("gate closed");
            store
                .head(&f.key)
                .await?
                .ok_or_else(|| RestoreError::Missing { key: f.key.clone() })?
        };
        let md5 = fetch_ranges(ctx, &f.key, info.size, &file, tmp).await?;
        (info, md5)
    } else {
        // Small: one GET gives the metadata and the bytes, hashed as they stream in.
        let _permit = ctx.gate.acquire().await.expect("gate closed");
        let (info, stream) = store.get_with_info(&f.key).await.map_err(missing)?;
        let md5 = fetch_stream(stream, &file, tmp, limit, opts, observer).await?;
        (info, md5)
    };
    let n = file
        .metadata()
        .map_err(RestoreError::io("stat", tmp))?
        .len();
    check(&f.key, &info, n, &md5.1)?;
    let stat = info
        .metadata
        .get(layout::META_STAT)
        .and_then(|s| StatMeta::parse(s));
    if let Some(st) = &stat {
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(st.mode & 0o7777))
            .map_err(RestoreError::io("chmod", tmp))?;
    }
    let owner = match (&opts.ownership, ids) {
        (Ownership::Preserve, _) => stat.as_ref().map(|st| {
            (
                Some(st.user.as_deref().and_then(uid_of).unwrap_or(st.uid)),
                Some(st.group.as_deref().and_then(gid_of).unwrap_or(st.gid)),
            )
        }),
        (_, Some(ids)) => Some(ids),
        _ => None,
    };
    if let Some((uid, gid)) = owner {
        chown(tmp, uid, gid)?;
    }
    ctx.commit
        .durable(file)
        .await
        .map_err(RestoreError::io("fsync", tmp))?;
    // The directory entry is made durable once per directory, at the end of execute().
    std::fs::rename(tmp, &f.dest).map_err(RestoreError::io("rename into place", &f.dest))?;
    Ok(())
}

/// Streams the whole object into `file`, hashing as it goes. Returns (bytes, md5 hex).
async fn fetch_stream(
    mut s: futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
    file: &File,
    path: &Path,
    limit: Option<u64>,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Result<(u64, String), RestoreError> {
    let mut h = Md5::new();
    let mut off = 0u64;
    while let Some(mut chunk) = s.try_next().await? {
        if let Some(l) = limit {
            if off + chunk.len() as u64 > l {
                chunk.truncate((l - off.min(l)) as usize);
            }
        }
        if let Some(t) = &opts.throttle {
            t.take(chunk.len() as u64).await;
        }
        h.update(&chunk);
        file.write_all_at(&chunk, off)
            .map_err(RestoreError::io("write", path))?;
        off += chunk.len() as u64;
        observer.bytes(chunk.len() as u64);
        if limit.is_some_and(|l| off >= l) {
            break;
        }
    }
    Ok((off, hex::encode(h.finalize())))
}

/// Fetches `size` bytes as parallel ranges, each written at its offset as it streams in, so
/// memory stays at a few chunks per range in flight. Behind them, the file is read back
/// (from the page cache) and hashed in order as far as the ranges are complete, so little
/// is left to hash when the last range lands. Returns (bytes, md5 hex).
async fn fetch_ranges(
    ctx: &Ctx<'_>,
    key: &str,
    size: u64,
    file: &Arc<File>,
    path: &Path,
) -> Result<(u64, String), RestoreError> {
    let (store, opts, observer) = (ctx.store, ctx.opts, ctx.observer);
    file.set_len(size)
        .map_err(RestoreError::io("allocate", path))?;
    let ranges: Vec<Range<u64>> = (0..size)
        .step_by(opts.range_size as usize)
        .map(|s| s..(s + opts.range_size).min(size))
        .collect();
    // How far from the start every byte is written: the hasher may read up to here.
    let (written_tx, mut written) = watch::channel(0u64);
    let complete = Mutex::new(InOrder::new(ranges.len()));
    let (ranges, complete) = (&ranges, &complete);
    // Owns the sender, so the hasher learns when the download has ended.
    let download = async move {
        let written_tx = &written_tx;
        futures::stream::iter(ranges.iter().enumerate().map(|(i, r)| async move {
            let want = r.end - r.start;
            let _permit = ctx.gate.acquire().await.expect("gate closed");
            let mut s = store.get_stream(key, Some(r.clone())).await?;
            let mut off = r.start;
            while let Some(chunk) = s.try_next().await? {
                if off + chunk.len() as u64 > r.end {
                    return Err(RestoreError::Size {
                        key: key.to_string(),
                        expected: want,
                        actual: off + chunk.len() as u64 - r.start,
                    });
                }
                if let Some(t) = &opts.throttle {
                    t.take(chunk.len() as u64).await;
                }
                file.write_all_at(&chunk, off)
                    .map_err(RestoreError::io("write", path))?;
                off += chunk.len() as u64;
                observer.bytes(chunk.len() as u64);
            }
            if off != r.end {
                return Err(RestoreError::Size {
                    key: key.to_string(),
                    expected: want,
                    actual: off - r.start,
                });
            }
            let prefix = complete.lock().expect("poisoned").done(i);
            let upto = ranges.get(prefix).map_or(size, |r| r.start);
            written_tx.send_if_modified(|w| std::mem::replace(w, upto) != upto);
            Ok::<_, RestoreError>(())
        }))
        .buffer_unordered(opts.threads.max(1))
        .try_collect::<Vec<()>>()
        .await
    };
    let hash = async {
        let mut h = Md5::new();
        let mut at = 0u64;
        while at < size {
            if written.changed().await.is_err() && *written.borrow() <= at {
                // The download ended without writing further: its error is reported.
                std::future::pending::<()>().await;
            }
            let upto = *written.borrow_and_update();
            if upto > at {
                let f = file.clone();
                let p = path.to_path_buf();
                h = tokio::task::spawn_blocking(move || hash_range(&f, &p, at..upto, h))
                    .await
                    .map_err(|e| RestoreError::io("hash", path)(std::io::Error::other(e)))??;
                at = upto;
            }
        }
        Ok::<_, RestoreError>((at, hex::encode(h.finalize())))
    };
    let (_, md5) = tokio::try_join!(download, hash)?;
    Ok(md5)
}

/// Which of `n` ranges are complete, and how many from the first are, without a gap.
struct InOrder {
    done: Vec<bool>,
    prefix: usize,
}

impl InOrder {
    fn new(n: usize) -> Self {
        Self {
            done: vec![false; n],
            prefix: 0,
        }
    }

    /// Marks range `i` complete; returns the length of the complete prefix.
    fn done(&mut self, i: usize) -> usize {
        self.done[i] = true;
        while self.prefix < self.done.len() && self.done[self.prefix] {
            self.prefix += 1;
        }
        self.prefix
    }
}

/// Feeds bytes `r` of `file` to `h`.
fn hash_range(file: &File, path: &Path, r: Range<u64>, mut h: Md5) -> Result<Md5, RestoreError> {
    let mut buf = vec![0u8; (1 << 20).min((r.end - r.start) as usize)];
    let mut at = r.start;
    while at < r.end {
        let k = buf.len().min((r.end - at) as usize);
        file.read_exact_at(&mut buf[..k], at)
            .map_err(RestoreError::io("read back", path))?;
        h.update(&buf[..k]);
        at += k as u64;
    }
    Ok(h)
}

/// Group commit of finished files. Each file waits for one `syncfs` that started after it
/// was complete: one journal commit covers every file finished meanwhile, instead of one
/// per file. Then `fsync` of the file itself, which now has nothing left to write, still
/// The uid of a local user name (or a numeric string).
pub fn uid_of(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string; getpwnam returns NULL or a pointer to static storage, read at once.
    let p = unsafe { libc::getpwnam(c.as_ptr()) };
    // SAFETY: p checked non-null.
    (!p.is_null()).then(|| unsafe { (*p).pw_uid })
}

/// The gid of a local group name (or a numeric string).
pub fn gid_of(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = CString::new(name).ok()?;
    // SAFETY: as in uid_of.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: g checked non-null.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), RestoreError> {
    std::os::unix::fs::chown(path, uid, gid).map_err(RestoreError::io("chown", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_prefix_advances_only_over_complete_ranges() {
        // (range completed, complete prefix after it)
        let cases: &[(&[usize], &[usize])] = &[
            (&[0, 1, 2], &[1, 2, 3]),
            (&[2, 1, 0], &[0, 0, 3]),
            (&[1, 0, 3, 2], &[0, 2, 2, 4]),
            (&[0], &[1]),
        ];
        for (order, want) in cases {
            let mut io = InOrder::new(order.len());
            let got: Vec<usize> = order.iter().map(|&i| io.done(i)).collect();
            assert_eq!(&got, want, "completion order {order:?}");
        }
    }
}
