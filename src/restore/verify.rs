//! Checking bytes: [`Hashing`] runs over a download's bytes in order (MD5 today; a Cassandra
//! Digest for `Data.db`), [`next_chunk`] refuses streams that stop making progress, and
//! `--verify` ([`verify`]) reads every object of the plan from the bucket through the same
//! checks without writing anything.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::{ExecOptions, Observer, Outcome, Report, RestoreError, escape};
use crate::restore::plan::{Plan, PlannedFile};
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

/// The checks of one object, fed its bytes in order.
pub(super) struct Hashing {
    md5: Md5,
}

impl Hashing {
    pub(super) fn new() -> Self {
        Self { md5: Md5::new() }
    }

    pub(super) fn update(&mut self, b: &[u8]) {
        self.md5.update(b);
    }

    /// Checks `n` bytes against the size and checksum the store gave in `info`.
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
        let md5 = hex::encode(self.md5.finalize());
        match info.expected_md5() {
            Some(want) if want != md5 => Err(RestoreError::Md5 {
                key: key.to_string(),
                expected: want,
                actual: md5,
            }),
            Some(_) => Ok(()),
            None if strict => Err(RestoreError::NoChecksum {
                key: key.to_string(),
            }),
            None => {
                tracing::warn!(
                    key = %escape(key),
                    "no md5sum metadata and no single-part ETag: verified the size only"
                );
                Ok(())
            }
        }
    }
}

/// Checks every file of the plan (exists, size, streaming MD5) without writing anything.
pub async fn verify(
    store: &Store,
    plan: &Plan,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Report {
    let results = futures::stream::iter(plan.files().map(|f| async move {
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match verify_one(store, f, opts, observer).await {
                Ok(()) => break Outcome::Verified,
                Err(e @ RestoreError::Stalled { .. }) if attempt < opts.attempts => {
                    tracing::warn!("{}; retrying", escape(&e.to_string()));
                    tokio::time::sleep(opts.retry_pause * attempt).await;
                }
                Err(e) => break Outcome::Failed(e),
            }
        };
        observer.file_done(f, &outcome);
        (f, outcome)
    }))
    .buffer_unordered(opts.threads.max(1))
    .collect::<Vec<_>>()
    .await;
    let mut report = Report::default();
    for (f, o) in results {
        match o {
            Outcome::Failed(e) => report.failures.push((f.key.clone(), e)),
            _ => report.verified += 1,
        }
    }
    report
}

async fn verify_one(
    store: &Store,
    f: &PlannedFile,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Result<(), RestoreError> {
    // One GET: the metadata comes with the bytes.
    let (info, mut s) = store
        .get_with_info(&f.key)
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => RestoreError::Missing { key: f.key.clone() },
            _ => RestoreError::Store(e),
        })?;
    if info.size != f.size {
        return Err(RestoreError::Size {
            key: f.key.clone(),
            expected: f.size,
            actual: info.size,
        });
    }
    let mut h = Hashing::new();
    let mut n = 0u64;
    while let Some(chunk) = next_chunk(&mut s, &f.key, n, opts.idle_timeout).await? {
        h.update(&chunk);
        n += chunk.len() as u64;
        if n > info.size {
            break;
        }
        observer.bytes(chunk.len() as u64);
    }
    h.finish(&f.key, &info, n, true)
}
