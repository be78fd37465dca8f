//! Downloads: each planned file streamed (or fetched as parallel ranges) into a temp file
//! beside its destination, verified, given its owner and mode on the open descriptor, made
//! durable by the group commit, then renamed into place. Every directory under TARGET is
//! reached without following symlinks ([`super::dirs`]).

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio::sync::{Semaphore, watch};

use super::commit::{GroupCommit, sync_batch};
use super::dirs::{self, Dir};
use super::verify::{Digests, Hashing, check_tocs, fetch_digests, next_chunk};
use super::{ExecOptions, Observer, Outcome, Ownership, Report, RestoreError, escape, sealed};
use crate::layout::{self, StatMeta};
use crate::restore::plan::{Plan, PlannedFile};
use crate::store::{ErrorKind, ObjectInfo, Store, StoreError};

/// The longest file name most Linux filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;

/// The temp name of `name` in the same directory: `.NAME.tableslurp-tmp`, or for names too
/// long for that, `.tableslurp-<md5 of NAME>.tmp` (always within NAME_MAX).
pub fn temp_name(name: &OsStr) -> OsString {
    const SUFFIX: &str = ".tableslurp-tmp";
    if name.len() + 1 + SUFFIX.len() <= NAME_MAX {
        let mut t = OsString::from(".");
        t.push(name);
        t.push(SUFFIX);
        t
    } else {
        OsString::from(format!(
            ".tableslurp-{}.tmp",
            hex::encode(Md5::digest(name.as_bytes()))
        ))
    }
}

/// Opens every destination directory of the plan (creating it), never through a symlink:
/// those under TARGET from TARGET down, any other (`--commitlog-target`) from itself.
fn open_dirs(plan: &Plan) -> HashMap<PathBuf, Result<Arc<Dir>, String>> {
    let root = Dir::open_root(&plan.target);
    let mut out = HashMap::new();
    let dirs = plan
        .tables
        .iter()
        .map(|t| t.target.clone())
        .chain(plan.commitlogs.iter().map(|c| c.target.clone()));
    for d in dirs {
        if out.contains_key(&d) {
            continue;
        }
        let r = match (&root, d.strip_prefix(&plan.target)) {
            (Ok(root), Ok(rel)) => root.open_beneath(rel, true),
            (Err(e), Ok(_)) => Err(dirs::DirError::Io {
                op: "open directory",
                path: plan.target.clone(),
                source: std::io::Error::other(e.to_string()),
            }),
            (_, Err(_)) => Dir::open_root(&d),
        };
        out.insert(d, r.map(Arc::new).map_err(|e| e.to_string()));
    }
    out
}

/// Downloads every file of the plan. Never returns early: each file's failure is in the report.
pub async fn execute(
    store: &Store,
    plan: &Plan,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Report {
    // Open every target directory first; a table whose directory cannot be used fails whole.
    let dirs = open_dirs(plan);
    let dirs = &dirs;
    // Files stored without `stat` metadata take TARGET's owner and group.
    let target_owner = Dir::open_root(&plan.target)
        .and_then(|d| {
            d.owner().map_err(|source| dirs::DirError::Io {
                op: "stat",
                path: plan.target.clone(),
                source,
            })
        })
        .ok();
    // Each Data.db with a Digest in its file set is verified by that Digest as it streams.
    let digests = &fetch_digests(store, plan, opts).await;
    let host = plan.host.as_str();
    let gate = &Semaphore::new(opts.threads.max(1));
    let (commit, committer) = GroupCommit::new();
    let downloads = async move {
        let commit = &commit;
        futures::stream::iter(plan.files().map(|f| async move {
            let parent = f.dest_dir();
            let outcome = match dirs.get(parent) {
                Some(Ok(dir)) => {
                    let ctx = Ctx {
                        store,
                        opts,
                        digests,
                        host,
                        target_owner,
                        observer,
                        gate,
                        commit,
                    };
                    restore_one(&ctx, f, dir).await
                }
                Some(Err(e)) => Outcome::Failed(RestoreError::Io {
                    op: "open directory",
                    path: parent.to_path_buf(),
                    source: std::io::Error::other(e.clone()),
                }),
                None => Outcome::Failed(RestoreError::Io {
                    op: "open directory",
                    path: parent.to_path_buf(),
                    source: std::io::Error::other("not a planned directory"),
                }),
            };
            observer.file_done(f, &outcome);
            (f, outcome)
        }))
        .buffer_unordered(opts.threads.max(1))
        // Folded as they finish: a node's million outcomes are counted, not held (issue
        // #18: 890k of them held 200 MiB). Directories a file was renamed into are kept.
        .fold(
            (
                Report::default(),
                std::collections::BTreeSet::<PathBuf>::new(),
            ),
            |(mut report, mut used), (f, o)| async move {
                match o {
                    Outcome::Restored { .. } => {
                        report.restored += 1;
                        report.restored_bytes += f.size;
                        if !used.contains(f.dest_dir()) {
                            used.insert(f.dest_dir().to_path_buf());
                        }
                    }
                    Outcome::AlreadyPresent => report.present += 1,
                    Outcome::Verified => report.verified += 1,
                    Outcome::Failed(e) => report.failures.push((f.key(), e)),
                }
                (report, used)
            },
        )
        .await
        // `commit` is dropped here, which ends the committer.
    };
    let ((mut report, used), ()) = tokio::join!(downloads, committer);
    // The renames: one more syncfs per filesystem, then each directory's fsync (cheap now,
    // and the one that reports an error of that directory).
    let mut opened = Vec::new();
    for d in used.into_iter().filter(|_| opts.durable) {
        if let Some(Ok(dir)) = dirs.get(&d) {
            match dir.to_file() {
                Ok(f) => opened.push((d, Arc::new(f))),
                Err(e) => tracing::warn!("fsync directory {}: {e}", d.display()),
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        let files: Vec<Arc<File>> = opened.iter().map(|(_, f)| f.clone()).collect();
        for ((d, _), r) in opened.iter().zip(sync_batch(&files)) {
            if let Err(e) = r {
                tracing::warn!("fsync directory {}: {e}", d.display());
            }
        }
    })
    .await;
    report.incomplete_sstables = check_tocs(plan, dirs);
    report
}

/// What every download of one [`execute`] shares.
struct Ctx<'a> {
    store: &'a Store,
    opts: &'a ExecOptions,
    digests: &'a Digests,
    host: &'a str,
    /// Owner and group of TARGET, for files stored without `stat` metadata.
    target_owner: Option<(u32, u32)>,
    observer: &'a dyn Observer,
    /// `-t`: one permit per request in flight.
    gate: &'a Semaphore,
    commit: &'a GroupCommit,
}

fn file_name(f: &PlannedFile) -> &OsStr {
    OsStr::new(f.name())
}

async fn restore_one(ctx: &Ctx<'_>, f: &PlannedFile, dir: &Dir) -> Outcome {
    let opts = ctx.opts;
    let name = file_name(f);
    match dir.stat(name) {
        Ok(Some(en)) if !opts.force => {
            // A sealed or compressed object's listed size is not its file's: a local file
            // of another size is asked about too (HEAD: the file's size, then its MD5).
            let why = if en.is_file() {
                match present_matches(ctx, f, dir, en.size).await {
                    Ok(None) => return Outcome::AlreadyPresent,
                    Ok(Some(why)) => why,
                    Err(e) => return Outcome::Failed(e),
                }
            } else {
                "exists and is not a regular file".to_string()
            };
            return Outcome::Failed(RestoreError::Exists {
                path: f.dest(),
                key: f.key(),
                why,
            });
        }
        Err(e) => return Outcome::Failed(RestoreError::io("stat", &f.dest())(e)),
        _ => {}
    }
    let tmp = temp_name(name);
    let mut attempt = 0;
    // A Digest mismatch is confirmed once with MD5 as well: if the MD5 of the stored bytes
    // matches too, the bytes are what was uploaded and the source was bad; if not, it was
    // the transfer, retried like any MD5 mismatch.
    let mut confirm = false;
    // A sealed chunk that does not authenticate is fetched once more (a bit flipped in
    // transit), then reported: the stored bytes are not what was sealed.
    let mut tamper_retried = false;
    loop {
        attempt += 1;
        let r = fetch_once(ctx, f, dir, &tmp, attempt, confirm).await;
        match r {
            Ok(()) => return Outcome::Restored { attempts: attempt },
            Err(e) => {
                let _ = dir.remove(&tmp);
                if matches!(e, RestoreError::Tampered { .. }) && !tamper_retried {
                    tamper_retried = true;
                    tracing::warn!("{}; fetching it once more", escape(&e.to_string()));
                    continue;
                }
                if matches!(e, RestoreError::Digest(_)) && !confirm {
                    confirm = true;
                    tracing::warn!(
                        "{}; checking again with MD5 as well",
                        escape(&e.to_string())
                    );
                    continue;
                }
                if !e.retriable() {
                    return Outcome::Failed(e);
                }
                if attempt >= opts.attempts {
                    return Outcome::Failed(RestoreError::GaveUp {
                        key: f.key(),
                        attempts: attempt,
                        last: Box::new(e),
                    });
                }
                tracing::warn!(attempt, "{}; retrying", escape(&e.to_string()));
                tokio::time::sleep(opts.retry_pause * attempt).await;
            }
        }
    }
}

/// Whether the local file of the right size at `f.dest()` has the stored checksum: `None`
/// if it does, else why it cannot be kept.
async fn present_matches(
    ctx: &Ctx<'_>,
    f: &PlannedFile,
    dir: &Dir,
    local_size: u64,
) -> Result<Option<String>, RestoreError> {
    let info = {
        let _permit = ctx.gate.acquire().await.expect("gate closed");
        ctx.store
            .head(&f.key())
            .await?
            .ok_or_else(|| RestoreError::Missing { key: f.key() })?
    };
    let info = match sealed::sealing(&info)? {
        Some(meta) if meta.plain_size != local_size => {
            return Ok(Some(format!(
                "exists with {local_size} bytes but {} holds {}",
                escape(&f.key()),
                meta.plain_size
            )));
        }
        Some(meta) => info.as_plain(meta.plain_size),
        None if info.size != local_size => {
            return Ok(Some(format!(
                "exists with {local_size} bytes but {} has {}",
                escape(&f.key()),
                info.size
            )));
        }
        None => info,
    };
    let mut h = Hashing::for_file(f, ctx.host, ctx.digests, false);
    if !h.by_digest() && info.expected_md5().is_none() {
        return Ok(Some(format!(
            "exists with the right size, but {} has no checksum to compare it with",
            escape(&f.key())
        )));
    }
    let file = dir
        .open_read(file_name(f))
        .map_err(RestoreError::io("open", &f.dest()))?;
    let path = f.dest();
    let (h, n) = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let n = file
                .read_at(&mut buf, at)
                .map_err(RestoreError::io("read", &path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok::<_, RestoreError>((h, at))
    })
    .await
    .map_err(|e| RestoreError::io("read", &f.dest())(std::io::Error::other(e)))??;
    Ok(h.finish(&f.key(), &info, n, true).err().map(|e| {
        format!(
            "exists with the right size but different content ({})",
            escape(&e.to_string())
        )
    }))
}

/// One attempt: download to `tmp`, verify, set owner/mode, make durable, rename.
async fn fetch_once(
    ctx: &Ctx<'_>,
    f: &PlannedFile,
    dir: &Dir,
    tmp: &OsStr,
    attempt: u32,
    with_md5: bool,
) -> Result<(), RestoreError> {
    let (store, opts, observer) = (ctx.store, ctx.opts, ctx.observer);
    let tmp_path = dir.path.join(tmp);
    // A fresh file, never through a symlink planted at the temp name.
    dir.remove(tmp)
        .map_err(RestoreError::io("remove stale", &tmp_path))?;
    let file = dir
        .create_new(tmp)
        .map_err(RestoreError::io("create", &tmp_path))?;
    let file = Arc::new(file);
    let limit = opts.fault.as_ref().and_then(|h| h(&f.key(), attempt));
    let missing = |e: StoreError| match e.kind() {
        ErrorKind::NotFound => RestoreError::Missing { key: f.key() },
        _ => RestoreError::Store(e),
    };
    let (info, (n, hashing)) =
        if f.size >= opts.range_threshold && opts.range_size > 0 && limit.is_none() {
            // Large: HEAD for size and metadata, then parallel ranges, hashed in order.
            let info = {
                let _permit = ctx.gate.acquire().await.expect("gate closed");
                store
                    .head(&f.key())
                    .await?
                    .ok_or_else(|| RestoreError::Missing { key: f.key() })?
            };
            let h = Hashing::for_file(f, ctx.host, ctx.digests, with_md5);
            match sealed::sealing(&info)? {
                None => {
                    let h =
                        fetch_ranges(ctx, &f.key(), info.size, &file, &tmp_path, h, None).await?;
                    (info, h)
                }
                Some(meta) if meta.compressed => {
                    let opener = match meta.sealed {
                        true => {
                            let ids = sealed::identities(&opts.identities, &f.key())?;
                            let _permit = ctx.gate.acquire().await.expect("gate closed");
                            Some(
                                sealed::open_header(store, &info, &meta, ids, opts.idle_timeout)
                                    .await?,
                            )
                        }
                        false => None,
                    };
                    let h = fetch_compressed_ranges(
                        ctx,
                        &info,
                        &meta,
                        opener.as_ref(),
                        &file,
                        &tmp_path,
                        h,
                    )
                    .await?;
                    (info.as_plain(meta.plain_size), h)
                }
                Some(meta) => {
                    let ids = sealed::identities(&opts.identities, &f.key())?;
                    let opener = {
                        let _permit = ctx.gate.acquire().await.expect("gate closed");
                        sealed::open_header(store, &info, &meta, ids, opts.idle_timeout).await?
                    };
                    let h = fetch_ranges(
                        ctx,
                        &f.key(),
                        meta.plain_size,
                        &file,
                        &tmp_path,
                        h,
                        Some((&opener, info.size)),
                    )
                    .await?;
                    (info.as_plain(meta.plain_size), h)
                }
            }
        } else {
            // Small: one GET gives the metadata and the bytes, hashed as they stream in.
            let _permit = ctx.gate.acquire().await.expect("gate closed");
            let (info, stream) = store.get_with_info(&f.key()).await.map_err(missing)?;
            let h = Hashing::for_file(f, ctx.host, ctx.digests, with_md5);
            let key = f.key();
            let enc = sealed::sealing(&info)?;
            let decoder = match &enc {
                Some(e) => Some(sealed::Decoder::new(&key, e, info.size, &opts.identities)?),
                None => None,
            };
            let h = fetch_stream(
                stream,
                &f.key(),
                info.size,
                &file,
                &tmp_path,
                limit,
                opts,
                observer,
                h,
                decoder,
            )
            .await?;
            match enc {
                Some(e) => (info.as_plain(e.plain_size), h),
                None => (info, h),
            }
        };
    hashing.finish(&f.key(), &info, n, false)?;
    let len = file
        .metadata()
        .map_err(RestoreError::io("stat", &tmp_path))?
        .len();
    if len != n {
        return Err(RestoreError::Size {
            key: f.key(),
            expected: n,
            actual: len,
        });
    }
    set_owner_and_mode(ctx, &file, &info)
        .map_err(RestoreError::io("chown/chmod/utime", &tmp_path))?;
    if opts.durable {
        ctx.commit
            .durable(file)
            .await
            .map_err(RestoreError::io("fsync", &tmp_path))?;
    }
    // The directory entry is made durable once per directory, at the end of execute().
    dir.rename(tmp, file_name(f))
        .map_err(RestoreError::io("rename into place", &f.dest()))?;
    Ok(())
}

/// Owner, mode and mtime on the open file. Modes are masked to 0777: a bucket must not be
/// able to plant setuid/setgid/sticky files. Without `stat` metadata: TARGET's owner and
/// group, mode 0644. The mtime is the object's LastModified.
fn set_owner_and_mode(ctx: &Ctx<'_>, file: &File, info: &ObjectInfo) -> std::io::Result<()> {
    let stat = info
        .metadata
        .get(layout::META_STAT)
        .and_then(|s| StatMeta::parse(s));
    let owner = match (&ctx.opts.ownership, &stat) {
        (Ownership::Ids { uid, gid }, _) => Some((*uid, *gid)),
        (Ownership::Preserve, Some(st)) => Some((
            Some(st.user.as_deref().and_then(uid_of).unwrap_or(st.uid)),
            Some(st.group.as_deref().and_then(gid_of).unwrap_or(st.gid)),
        )),
        (_, None) => ctx.target_owner.map(|(u, g)| (Some(u), Some(g))),
        (Ownership::Current, Some(_)) => None,
    };
    if let Some((uid, gid)) = owner {
        dirs::fchown(file, uid, gid)?;
    }
    let mode = stat.as_ref().map_or(0o644, |st| st.mode & 0o777);
    dirs::fchmod(file, mode)?;
    // The object's LastModified as the file's mtime: a restored file is then not "modified
    // long after it was stored", so tablesnap's restart over the restored node does not
    // read every file again to compare MD5s (the replaced-node rule).
    file.set_modified(info.last_modified.into())
}

/// Streams the whole object (`size` bytes expected) into `file`, hashing as it goes.
/// Returns (bytes, checks).
#[allow(clippy::too_many_arguments)]
async fn fetch_stream(
    mut s: futures::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>,
    key: &str,
    size: u64,
    file: &File,
    path: &Path,
    limit: Option<u64>,
    opts: &ExecOptions,
    observer: &dyn Observer,
    mut h: Hashing,
    mut decoder: Option<sealed::Decoder<'_>>,
) -> Result<(u64, Hashing), RestoreError> {
    let mut off = 0u64;
    // Sealed or compressed: the file's bytes are what is written and hashed, as they are
    // decoded.
    let mut plain_off = 0u64;
    while let Some(mut chunk) = next_chunk(&mut s, key, off, opts.idle_timeout).await? {
        if let Some(l) = limit {
            if off + chunk.len() as u64 > l {
                chunk.truncate((l - off.min(l)) as usize);
            }
        }
        if off + chunk.len() as u64 > size {
            return Err(RestoreError::Size {
                key: key.to_string(),
                expected: size,
                actual: off + chunk.len() as u64,
            });
        }
        if let Some(t) = &opts.throttle {
            t.take(chunk.len() as u64).await;
        }
        if let Some(d) = decoder.as_mut() {
            d.feed(&chunk, path, &mut |plain| {
                h.update(plain);
                file.write_all_at(plain, plain_off)?;
                plain_off += plain.len() as u64;
                Ok(())
            })?;
        } else {
            h.update(&chunk);
            file.write_all_at(&chunk, off)
                .map_err(RestoreError::io("write", path))?;
        }
        off += chunk.len() as u64;
        observer.bytes(chunk.len() as u64);
        if let Some(hook) = &opts.chunk_hook {
            hook(key, off);
        }
        if limit.is_some_and(|l| off >= l) {
            break;
        }
    }
    if let Some(d) = decoder {
        if !d.finished() {
            // Short: the size check names it (and it is retried).
            return Err(RestoreError::Size {
                key: key.to_string(),
                expected: size,
                actual: off,
            });
        }
        return Ok((plain_off, h));
    }
    Ok((off, h))
}

/// Fetches `size` bytes as parallel ranges, each written at its offset as it streams in, so
/// memory stays at a few chunks per range in flight. Behind them, the file is read back
/// (from the page cache) and hashed in order as far as the ranges are complete, so little
/// is left to hash when the last range lands. Returns (bytes, checks).
async fn fetch_ranges(
    ctx: &Ctx<'_>,
    key: &str,
    size: u64,
    file: &Arc<File>,
    path: &Path,
    mut h: Hashing,
    sealed: Option<(&crate::seal::Opener, u64)>,
) -> Result<(u64, Hashing), RestoreError> {
    let (store, opts, observer) = (ctx.store, ctx.opts, ctx.observer);
    file.set_len(size)
        .map_err(RestoreError::io("allocate", path))?;
    // Ranges of the file (the plaintext); a sealed object's start on chunk boundaries, each
    // fetched as the sealed bytes of its chunks and opened as they stream in.
    let step = match sealed {
        Some(_) => opts.range_size.next_multiple_of(crate::seal::CHUNK),
        None => opts.range_size,
    };
    let ranges: Vec<Range<u64>> = (0..size)
        .step_by(step as usize)
        .map(|s| s..(s + step).min(size))
        .collect();
    // How far from the start every byte is written: the hasher may read up to here.
    let (written_tx, mut written) = watch::channel(0u64);
    let complete = Mutex::new(InOrder::new(ranges.len()));
    // A Data.db checked by CRC-32 alone: each range is hashed as it streams in, and the
    // range CRCs are combined in order at the end (no read-back).
    let per_range = h.crc32_only();
    let crcs: Mutex<Vec<Option<crc32fast::Hasher>>> = Mutex::new(vec![None; ranges.len()]);
    let (ranges, complete, crcs_ref) = (&ranges, &complete, &crcs);
    // Owns the sender, so the hasher learns when the download has ended.
    let download = async move {
        let written_tx = &written_tx;
        futures::stream::iter(ranges.iter().enumerate().map(|(i, r)| async move {
            let want = r.end - r.start;
            let _permit = ctx.gate.acquire().await.expect("gate closed");
            let mut crc = per_range.then(crc32fast::Hasher::new);
            if let Some((o, stored)) = sealed {
                // The sealed bytes of the range's chunks, opened as they arrive.
                stream_range(
                    ctx,
                    key,
                    stored,
                    Some(o),
                    size,
                    r.clone(),
                    path,
                    &mut |at, plain| {
                        file.write_all_at(plain, at)
                            .map_err(RestoreError::io("write", path))?;
                        if let Some(c) = &mut crc {
                            c.update(plain);
                        }
                        Ok(())
                    },
                )
                .await?;
                if let Some(c) = crc {
                    crcs_ref.lock().expect("poisoned")[i] = Some(c);
                }
                let prefix = complete.lock().expect("poisoned").done(i);
                let upto = ranges.get(prefix).map_or(size, |r| r.start);
                written_tx.send_if_modified(|w| std::mem::replace(w, upto) != upto);
                return Ok::<_, RestoreError>(());
            }
            let mut s = store.get_stream(key, Some(r.clone())).await?;
            let mut off = r.start;
            while let Some(chunk) = next_chunk(&mut s, key, off, opts.idle_timeout).await? {
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
                if let Some(c) = &mut crc {
                    c.update(&chunk);
                }
                off += chunk.len() as u64;
                observer.bytes(chunk.len() as u64);
                if let Some(hook) = &opts.chunk_hook {
                    hook(key, off);
                }
            }
            if off != r.end {
                return Err(RestoreError::Size {
                    key: key.to_string(),
                    expected: want,
                    actual: off - r.start,
                });
            }
            if let Some(c) = crc {
                crcs_ref.lock().expect("poisoned")[i] = Some(c);
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
        if per_range {
            return Ok::<_, RestoreError>((size, h));
        }
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
        Ok::<_, RestoreError>((at, h))
    };
    let (_, (at, mut h)) = tokio::try_join!(download, hash)?;
    if per_range {
        let mut total = crc32fast::Hasher::new();
        for c in crcs.into_inner().expect("poisoned") {
            // Every range completed: the download returned Ok.
            total.combine(&c.unwrap_or_default());
        }
        h.set_digest(crate::digest::Value::Crc32(total.finalize()));
    }
    Ok((at, h))
}

/// Where stream bytes go: `(offset in the stream, bytes)`.
type StreamSink<'s> = dyn FnMut(u64, &[u8]) -> Result<(), RestoreError> + Send + 's;

/// Bytes `r` of a stored stream (the payload of a sealed object, opened; else the object),
/// fed to `out(offset in the stream, bytes)` in order as they arrive.
#[allow(clippy::too_many_arguments)]
async fn stream_range(
    ctx: &Ctx<'_>,
    key: &str,
    stored: u64,
    opener: Option<&crate::seal::Opener>,
    stream_len: u64,
    r: Range<u64>,
    path: &Path,
    out: &mut StreamSink<'_>,
) -> Result<(), RestoreError> {
    let (store, opts, observer) = (ctx.store, ctx.opts, ctx.observer);
    let (bytes, chunks) = match opener {
        Some(o) => {
            let (chunks, bytes) =
                crate::seal::sealed_range(o.payload_start(), r.clone(), stream_len);
            (bytes, Some(chunks))
        }
        None => (r.clone(), None),
    };
    if bytes.end > stored {
        return Err(RestoreError::Size {
            key: key.to_string(),
            expected: bytes.end,
            actual: stored,
        });
    }
    let mut s = store.get_stream(key, Some(bytes.clone())).await?;
    let mut ro = match (opener, chunks) {
        (Some(o), Some(c)) => Some(crate::seal::RangeOpener::new(o, c, stream_len)),
        _ => None,
    };
    let mut got = 0u64;
    let mut failed: Option<RestoreError> = None;
    while let Some(chunk) = next_chunk(&mut s, key, bytes.start + got, opts.idle_timeout).await? {
        if got + chunk.len() as u64 > bytes.end - bytes.start {
            return Err(RestoreError::Size {
                key: key.to_string(),
                expected: bytes.end - bytes.start,
                actual: got + chunk.len() as u64,
            });
        }
        if let Some(t) = &opts.throttle {
            t.take(chunk.len() as u64).await;
        }
        match ro.as_mut() {
            Some(ro) => ro
                .feed(&chunk, &mut |at, plain| {
                    // Only the part of each chunk inside `r`.
                    let from = r.start.max(at);
                    let to = r.end.min(at + plain.len() as u64);
                    if from < to {
                        if let Err(e) = out(from, &plain[(from - at) as usize..(to - at) as usize])
                        {
                            failed = Some(e);
                            return Err(std::io::Error::other("stopped"));
                        }
                    }
                    Ok(())
                })
                .map_err(|e| match (failed.take(), e) {
                    (Some(f), _) => f,
                    (None, crate::seal::FeedError::Seal(e)) => sealed::open_err(key, e),
                    (None, crate::seal::FeedError::Out(e)) => RestoreError::io("write", path)(e),
                })?,
            None => out(bytes.start + got, &chunk)?,
        }
        got += chunk.len() as u64;
        observer.bytes(chunk.len() as u64);
    }
    if got != bytes.end - bytes.start || ro.is_some_and(|r| !r.finished()) {
        return Err(RestoreError::Size {
            key: key.to_string(),
            expected: bytes.end - bytes.start,
            actual: got,
        });
    }
    Ok(())
}

/// A compressed object ([`crate::compress`]) fetched as parallel groups of its frames: the
/// seek table first (from the end of the stream), then each group's stream bytes, each
/// frame decompressed as soon as it is whole and written at its offset. The file is then
/// read back and hashed.
async fn fetch_compressed_ranges(
    ctx: &Ctx<'_>,
    info: &ObjectInfo,
    enc: &crate::seal::Encoding,
    opener: Option<&crate::seal::Opener>,
    file: &Arc<File>,
    path: &Path,
    h: Hashing,
) -> Result<(u64, Hashing), RestoreError> {
    use crate::compress::Frames;
    let key = info.key.as_str();
    let opts = ctx.opts;
    let bad = |why: String| RestoreError::Tampered {
        key: key.to_string(),
        why,
    };
    let stream_len = match opener {
        Some(o) => o
            .plain_len(info.size)
            .map_err(|e| sealed::open_err(key, e))?,
        None => info.size,
    };
    // The table: its footer says how long it is.
    let read_tail = |n: u64| async move {
        let mut tail = Vec::new();
        let start = stream_len - n.min(stream_len);
        let _permit = ctx.gate.acquire().await.expect("gate closed");
        stream_range(
            ctx,
            key,
            info.size,
            opener,
            stream_len,
            start..stream_len,
            path,
            &mut |_, b| {
                tail.extend_from_slice(b);
                Ok(())
            },
        )
        .await?;
        Ok::<_, RestoreError>(tail)
    };
    let mut tail = read_tail(4096).await?;
    let frames_n = Frames::count_in_footer(&tail).map_err(|e| bad(e.to_string()))?;
    let need = Frames::table_len(frames_n);
    if need > stream_len {
        return Err(bad("its seek table is longer than the object".into()));
    }
    if need > tail.len() as u64 {
        tail = read_tail(need).await?;
    }
    let frames =
        Frames::parse(&tail, stream_len, enc.plain_size).map_err(|e| bad(e.to_string()))?;
    drop(tail);
    file.set_len(enc.plain_size)
        .map_err(RestoreError::io("allocate", path))?;
    let frames = &frames;
    futures::stream::iter(frames.groups(opts.range_size.max(1)).into_iter().map(
        |(fr, p, c)| async move {
            let _permit = ctx.gate.acquire().await.expect("gate closed");
            let (mut i, mut at) = (fr.start, p.start);
            let mut buf: Vec<u8> = Vec::new();
            let mut sink = |_: u64, mut b: &[u8]| -> Result<(), RestoreError> {
                while !b.is_empty() {
                    if i >= fr.end {
                        return Err(bad("more stream bytes than its frames".into()));
                    }
                    let (cl, pl) = frames.frame(i);
                    let take = (cl as usize - buf.len()).min(b.len());
                    buf.extend_from_slice(&b[..take]);
                    b = &b[take..];
                    if buf.len() as u64 == cl {
                        let plain = crate::compress::decompress_frame(&buf, pl)
                            .map_err(|e| bad(format!("a frame does not decode ({e})")))?;
                        file.write_all_at(&plain, at)
                            .map_err(RestoreError::io("write", path))?;
                        at += pl;
                        i += 1;
                        buf.clear();
                    }
                }
                Ok(())
            };
            stream_range(ctx, key, info.size, opener, stream_len, c, path, &mut sink).await?;
            if i != fr.end || at != p.end {
                return Err(bad("a group of frames ended early".into()));
            }
            Ok::<_, RestoreError>(())
        },
    ))
    .buffer_unordered(opts.threads.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    let f = file.clone();
    let p = path.to_path_buf();
    let size = enc.plain_size;
    let h = tokio::task::spawn_blocking(move || hash_range(&f, &p, 0..size, h))
        .await
        .map_err(|e| RestoreError::io("hash", path)(std::io::Error::other(e)))??;
    Ok((size, h))
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
fn hash_range(
    file: &File,
    path: &Path,
    r: Range<u64>,
    mut h: Hashing,
) -> Result<Hashing, RestoreError> {
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
