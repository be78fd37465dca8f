//! Checking bytes: [`Hashing`] runs over a download's bytes in order (MD5 today; a Cassandra
//! Digest for `Data.db`), [`next_chunk`] refuses streams that stop making progress, and
//! `--verify` ([`verify`]) reads every object of the plan from the bucket through the same
//! checks without writing anything.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::dirs::Dir;
use super::{ExecOptions, Observer, Outcome, Report, RestoreError, escape};
use crate::digest;
use crate::restore::plan::{DigestRef, Plan, PlannedFile};
use crate::store::{ErrorKind, ObjectInfo, Store, StoreError};

/// Empty reads in a row after which a stream counts as stalled. A store reading an object
/// that shrank under it returns empty chunks forever (issue #11, bad input 2).
pub(super) const MAX_EMPTY_CHUNKS: u32 = 64;

/// The next non-empty chunk, `None` at the end; an error if the stream delivers nothing
/// for `idle` or only empty chunks [`MAX_EMPTY_CHUNKS`] times in a row.
pub(super) async fn next_chunk(
    s: &mut BoxStream<'static, Result<Bytes, StoreError>>,
    key: &str,
    at: u64,
    idle: Duration,
) -> Result<Option<Bytes>, RestoreError> {
    let mut empty = 0;
    loop {
        let c = tokio::time::timeout(idle, s.try_next())
            .await
            .map_err(|_| RestoreError::Stalled {
                key: key.to_string(),
                at,
                why: format!("no data for {idle:?}"),
            })??;
        match c {
            Some(b) if b.is_empty() => {
                empty += 1;
                if empty >= MAX_EMPTY_CHUNKS {
                    return Err(RestoreError::Stalled {
                        key: key.to_string(),
                        at,
                        why: format!(
                            "{empty} empty reads in a row (the object changed while being read?)"
                        ),
                    });
                }
            }
            other => return Ok(other),
        }
    }
}

/// Digest values fetched for a plan, by the key of the Digest object.
pub(super) type Digests = HashMap<String, digest::Value>;

/// The checks of one object, fed its bytes in order: MD5 against the stored `md5sum` (or
/// single-part ETag), and for a `Data.db` with a usable Digest, Cassandra's own checksum.
pub(super) struct Hashing {
    md5: Option<Md5>,
    digest: Option<DigestCheck>,
}

struct DigestCheck {
    hasher: digest::Hasher,
    /// Set when the value was computed elsewhere (per range, combined): see
    /// [`Hashing::set_digest`].
    computed: Option<digest::Value>,
    want: digest::Value,
    of: DigestRef,
    host: String,
}

impl Hashing {
    /// MD5 only.
    pub(super) fn new() -> Self {
        Self {
            md5: Some(Md5::new()),
            digest: None,
        }
    }

    /// The checks for `f`: its Digest if one was fetched, plus MD5 when `with_md5` or when
    /// there is no Digest. A restore verifies a `Data.db` by its Digest alone (it proves the
    /// bytes equal what Cassandra wrote, and CRC-32 is far faster than MD5); `--verify`
    /// runs both.
    pub(super) fn for_file(f: &PlannedFile, host: &str, digests: &Digests, with_md5: bool) -> Self {
        let digest = f.digest().and_then(|d| {
            let want = *digests.get(&d.key)?;
            Some(DigestCheck {
                hasher: digest::Hasher::new(d.alg),
                computed: None,
                want,
                of: d,
                host: host.to_string(),
            })
        });
        Self {
            md5: (with_md5 || digest.is_none()).then(Md5::new),
            digest,
        }
    }

    /// Whether a CRC-32 Digest is the only check: then ranges can be hashed as they arrive
    /// and combined in order, with no read-back.
    pub(super) fn crc32_only(&self) -> bool {
        self.md5.is_none()
            && matches!(
                self.digest.as_ref().map(|d| d.want),
                Some(digest::Value::Crc32(_))
            )
    }

    /// The Digest value of the bytes, computed by the caller instead of [`Hashing::update`].
    pub(super) fn set_digest(&mut self, v: digest::Value) {
        if let Some(d) = &mut self.digest {
            d.computed = Some(v);
        }
    }

    /// Whether the Digest (not MD5) is what proves these bytes.
    pub(super) fn by_digest(&self) -> bool {
        self.digest.is_some()
    }

    pub(super) fn update(&mut self, b: &[u8]) {
        if let Some(h) = &mut self.md5 {
            h.update(b);
        }
        if let Some(d) = &mut self.digest {
            d.hasher.update(b);
        }
    }

    /// Checks `n` bytes against the size and checksums the store gave in `info`.
    /// `strict`: an object with no checksum at all is an error (`--verify`), else a warning.
    pub(super) fn finish(
        self,
        key: &str,
        info: &ObjectInfo,
        n: u64,
        strict: bool,
    ) -> Result<(), RestoreError> {
        if n != info.size {
            return Err(RestoreError::Size {
                key: key.to_string(),
                expected: info.size,
                actual: n,
            });
        }
        let md5 = self.md5.map(|h| hex::encode(h.finalize()));
        // MD5 first: a mismatch there is a transfer (or bucket) problem, retried.
        match (md5, info.expected_md5()) {
            (Some(got), Some(want)) if got != want => {
                return Err(RestoreError::Md5 {
                    key: key.to_string(),
                    expected: want,
                    actual: got,
                });
            }
            (Some(_), None) if self.digest.is_none() => {
                if strict {
                    return Err(RestoreError::NoChecksum {
                        key: key.to_string(),
                    });
                }
                tracing::warn!(
                    key = %escape(key),
                    "no md5sum metadata and no single-part ETag: verified the size only"
                );
            }
            _ => {}
        }
        if let Some(d) = self.digest {
            let got = d.computed.unwrap_or_else(|| d.hasher.finish());
            if got != d.want {
                return Err(RestoreError::Digest(Box::new(super::DigestMismatch {
                    host: d.host,
                    dir: d.of.dir,
                    sstable: d.of.sstable,
                    index: d.of.index,
                    key: key.to_string(),
                    digest_key: d.of.key,
                    expected: d.want.to_string(),
                    actual: got.to_string(),
                })));
            }
        }
        Ok(())
    }
}

/// The most a Digest object may weigh (a real one is under 100 bytes).
const MAX_DIGEST_BYTES: u64 = 4096;

/// Fetches and parses every Digest the plan's `Data.db` files refer to, each checked by
/// MD5 first. One that cannot be used leaves its `Data.db` to MD5, with a warning.
pub(super) async fn fetch_digests(store: &Store, plan: &Plan, opts: &ExecOptions) -> Digests {
    let threads = opts.threads;
    let ids = &opts.identities;
    let wanted: BTreeMap<String, digest::Algorithm> =
        plan.files().filter_map(PlannedFile::digest_key).collect();
    let got: Vec<(String, Result<digest::Value, String>)> =
        futures::stream::iter(wanted.into_iter().map(|(key, alg)| async move {
            let k = key.as_str();
            let r = async {
                let (info, mut s) = store.get_with_info(k).await.map_err(|e| e.to_string())?;
                if info.size > MAX_DIGEST_BYTES {
                    return Err(format!("{} bytes, too large for a Digest", info.size));
                }
                let mut body = Vec::new();
                let mut got = 0u64;
                let mut h = Hashing::new();
                // A sealed Digest (every data object of a sealed node is) is opened first.
                let enc = super::sealed::sealing(&info).map_err(|e| e.to_string())?;
                let mut decoder = match &enc {
                    Some(e) => Some(
                        super::sealed::Decoder::new(k, e, info.size, ids)
                            .map_err(|e| e.to_string())?,
                    ),
                    None => None,
                };
                let here = std::path::Path::new(k);
                while let Some(c) = next_chunk(&mut s, k, got, Duration::from_secs(60))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    got += c.len() as u64;
                    if got > MAX_DIGEST_BYTES + 4096 {
                        return Err("too large for a Digest".to_string());
                    }
                    match &mut decoder {
                        Some(d) => d
                            .feed(&c, here, &mut |p| {
                                body.extend_from_slice(p);
                                Ok(())
                            })
                            .map_err(|e| e.to_string())?,
                        None => body.extend_from_slice(&c),
                    }
                }
                if body.len() as u64 > MAX_DIGEST_BYTES {
                    return Err("too large for a Digest".to_string());
                }
                h.update(&body);
                let info = match (&enc, &decoder) {
                    (Some(e), Some(d)) if d.finished() => info.as_plain(e.plain_size),
                    (Some(_), _) => return Err("its stored bytes end early".to_string()),
                    _ => info,
                };
                h.finish(k, &info, body.len() as u64, false)
                    .map_err(|e| e.to_string())?;
                digest::parse(alg, &body).map_err(|e| e.to_string())
            }
            .await;
            (key, r)
        }))
        .buffer_unordered(threads.max(1))
        .collect()
        .await;
    let mut out = Digests::new();
    for (k, r) in got {
        match r {
            Ok(v) => {
                out.insert(k, v);
            }
            Err(e) => tracing::warn!(
                "{}: not a usable Digest ({}); its Data.db is verified by MD5 instead",
                escape(&k),
                escape(&e)
            ),
        }
    }
    out
}

/// Checks every file of the plan (exists, size, streaming MD5, and each `Data.db` against its
/// Digest) without writing anything.
pub async fn verify(
    store: &Store,
    plan: &Plan,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Report {
    let digests = &fetch_digests(store, plan, opts).await;
    let host = plan.host.as_str();
    futures::stream::iter(plan.files().map(|f| async move {
        let mut sealed_only = false;
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match verify_one(
                store,
                f,
                opts,
                observer,
                Hashing::for_file(f, host, digests, true),
            )
            .await
            {
                Ok(unopened) => {
                    sealed_only = unopened;
                    break Outcome::Verified;
                }
                Err(e @ RestoreError::Stalled { .. }) if attempt < opts.attempts => {
                    tracing::warn!("{}; retrying", escape(&e.to_string()));
                    tokio::time::sleep(opts.retry_pause * attempt).await;
                }
                Err(e) => break Outcome::Failed(e),
            }
        };
        observer.file_done(f, &outcome);
        (f, outcome, sealed_only)
    }))
    .buffer_unordered(opts.threads.max(1))
    // Folded as they finish: a node's million outcomes are counted, not held.
    .fold(
        Report::default(),
        |mut report, (f, o, sealed_only)| async move {
            match o {
                Outcome::Failed(e) => report.failures.push((f.key(), e)),
                _ => {
                    report.verified += 1;
                    report.verified_sealed_only += sealed_only as usize;
                }
            }
            report
        },
    )
    .await
}

/// Checks one object; `Ok(true)` when it is sealed and no identity was given, so only its
/// stored bytes were checked (by their CRC-32).
async fn verify_one(
    store: &Store,
    f: &PlannedFile,
    opts: &ExecOptions,
    observer: &dyn Observer,
    mut h: Hashing,
) -> Result<bool, RestoreError> {
    // One GET: the metadata comes with the bytes.
    let (info, mut s) = store
        .get_with_info(&f.key())
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => RestoreError::Missing { key: f.key() },
            _ => RestoreError::Store(e),
        })?;
    if info.size != f.size {
        return Err(RestoreError::Size {
            key: f.key(),
            expected: f.size,
            actual: info.size,
        });
    }
    let key = f.key();
    let meta = super::sealed::sealing(&info)?;
    let has_ids = opts.identities.as_deref().is_some_and(|i| !i.is_empty());
    // A sealed object without an identity: its stored bytes by their CRC-32 only.
    let mut crc = meta.filter(|m| m.sealed).map(|_| crc32fast::Hasher::new());
    let mut decoder = match meta {
        Some(m) if !m.sealed || has_ids => Some(super::sealed::Decoder::new(
            &key,
            &m,
            info.size,
            &opts.identities,
        )?),
        _ => None,
    };
    let mut n = 0u64;
    let mut plain = 0u64;
    let dest = f.dest();
    while let Some(chunk) = next_chunk(&mut s, &key, n, opts.idle_timeout).await? {
        if let Some(c) = &mut crc {
            c.update(&chunk);
        }
        match (&mut decoder, meta) {
            (Some(d), _) => d.feed(&chunk, &dest, &mut |p| {
                h.update(p);
                plain += p.len() as u64;
                Ok(())
            })?,
            (None, None) => h.update(&chunk),
            (None, Some(_)) => {}
        }
        n += chunk.len() as u64;
        if n > info.size {
            break;
        }
        observer.bytes(chunk.len() as u64);
    }
    let Some(meta) = meta else {
        h.finish(&key, &info, n, true)?;
        return Ok(false);
    };
    if n != info.size {
        return Err(RestoreError::Size {
            key,
            expected: info.size,
            actual: n,
        });
    }
    if let Some(c) = crc {
        let got = c.finalize();
        match meta.sealed_crc32 {
            Some(want) if want != got => {
                return Err(RestoreError::Tampered {
                    key,
                    why: format!(
                        "the stored bytes' CRC-32 is {got:08x}, its metadata says {want:08x}"
                    ),
                });
            }
            None if decoder.is_none() => return Err(RestoreError::NoChecksum { key }),
            _ => {}
        }
    }
    match decoder {
        Some(d) if d.finished() => {
            h.finish(&key, &info.as_plain(meta.plain_size), plain, true)?;
            Ok(false)
        }
        Some(_) => Err(RestoreError::Tampered {
            key,
            why: "its stored bytes end early".into(),
        }),
        None => Ok(true),
    }
}

/// After a restore: every SSTable of the plan whose `TOC.txt` is in TARGET must have each
/// component the TOC lists; one line per SSTable that does not.
pub(super) fn check_tocs(
    plan: &Plan,
    dirs: &HashMap<PathBuf, Result<Arc<Dir>, String>>,
) -> Vec<String> {
    const TOC: &str = "TOC.txt";
    let mut out = Vec::new();
    for t in &plan.tables {
        let Some(Ok(dir)) = dirs.get(&t.target) else {
            continue;
        };
        for f in t.files.iter().filter(|f| f.name().ends_with(TOC)) {
            let stem = &f.name()[..f.name().len() - TOC.len()];
            let Ok(file) = dir.open_read(OsStr::new(&f.name())) else {
                continue; // Not restored: already reported.
            };
            let mut body = vec![0u8; 64 << 10];
            let n = file.read_at(&mut body, 0).unwrap_or(0);
            let text = String::from_utf8_lossy(&body[..n]);
            let missing: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| format!("{stem}{c}"))
                .filter(|name| !matches!(dir.stat(OsStr::new(name)), Ok(Some(e)) if e.is_file()))
                .collect();
            if !missing.is_empty() {
                out.push(format!(
                    "SSTable {} in {} is incomplete: its TOC.txt lists {}, not in TARGET",
                    escape(stem),
                    t.target.display(),
                    escape(&missing.join(", "))
                ));
            }
        }
    }
    out
}
