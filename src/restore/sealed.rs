//! Restoring sealed and compressed objects ([`crate::seal`], [`crate::compress`]): telling
//! them from plain ones by their metadata, reading a header or a seek table with ranged
//! GETs, one [`Decoder`] for whole objects (restore, `--verify`, Digests), the errors that
//! name the object and what to pass, and the check before a restore writes anything that
//! its identities open what it is about to restore.

use std::sync::Arc;

use futures::stream::StreamExt;

use super::verify::next_chunk;
use super::{RestoreError, escape};
use crate::restore::plan::{Plan, PlannedFile};
use crate::seal::{Encoding, Identities, Opener, SealError};
use crate::store::{ObjectInfo, Store};

/// Bytes fetched first for a header (a header for 40 recipients fits).
const HEADER_PROBE: u64 = 4096;

/// The object's sealing, or the error for a sealing this version cannot read.
pub(super) fn sealing(info: &ObjectInfo) -> Result<Option<Encoding>, RestoreError> {
    info.sealed().map_err(|why| RestoreError::Sealed {
        key: info.key.clone(),
        why,
    })
}

/// Turns a whole stored object, as it streams in, back into its file: opened if sealed,
/// decompressed if compressed.
pub(super) struct Decoder<'a> {
    key: &'a str,
    ids: Option<&'a Identities>,
    opener: Option<crate::seal::StreamOpener>,
    zstd: Option<crate::compress::StreamDecoder>,
}

impl<'a> Decoder<'a> {
    /// For an object of `stored` bytes; a sealed one needs `ids`.
    pub(super) fn new(
        key: &'a str,
        enc: &Encoding,
        stored: u64,
        ids: &'a Option<Arc<Identities>>,
    ) -> Result<Self, RestoreError> {
        let ids = if enc.sealed {
            Some(identities(ids, key)?)
        } else {
            None
        };
        let zstd = if enc.compressed {
            Some(
                crate::compress::StreamDecoder::new().map_err(|e| RestoreError::Sealed {
                    key: key.to_string(),
                    why: format!("zstd: {e}"),
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            key,
            ids,
            opener: enc.sealed.then(|| crate::seal::StreamOpener::new(stored)),
            zstd,
        })
    }

    /// Feeds stored bytes; `out` gets the file's bytes in order. An error of `out` is
    /// returned as [`RestoreError::Io`] on `path`.
    pub(super) fn feed(
        &mut self,
        data: &[u8],
        path: &std::path::Path,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), RestoreError> {
        let key = self.key;
        // A zstd failure is told from a failure of `out` by this marker.
        let mut bad_stream: Option<String> = None;
        let mut through =
            |stream: &[u8], zstd: &mut Option<crate::compress::StreamDecoder>| match zstd {
                Some(z) => z.feed(stream, &mut |p| {
                    out(p).map_err(|e| std::io::Error::other(WriteFailed(e)))
                }),
                None => out(stream).map_err(|e| std::io::Error::other(WriteFailed(e))),
            };
        let Self {
            opener, zstd, ids, ..
        } = self;
        let r = match (opener.as_mut(), ids) {
            (Some(o), Some(ids)) => {
                o.feed(ids, data, &mut |s| through(s, zstd))
                    .map_err(|e| match e {
                        crate::seal::FeedError::Seal(e) => open_err(key, e),
                        crate::seal::FeedError::Out(e) => io_or_stream(e, path, &mut bad_stream),
                    })
            }
            _ => through(data, zstd).map_err(|e| io_or_stream(e, path, &mut bad_stream)),
        };
        match (r, bad_stream) {
            (Err(_), Some(why)) => Err(RestoreError::Tampered {
                key: key.to_string(),
                why: format!("its compressed stream does not decode ({why})"),
            }),
            (r, _) => r,
        }
    }

    /// Whether the whole object was decoded (not cut short).
    pub(super) fn finished(&self) -> bool {
        self.opener.as_ref().is_none_or(|o| o.finished())
            && self.zstd.as_ref().is_none_or(|z| z.finished())
    }
}

/// An error of the sink, carried through zstd's and the opener's `io::Error`s.
#[derive(Debug)]
struct WriteFailed(std::io::Error);
impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for WriteFailed {}

fn io_or_stream(
    e: std::io::Error,
    path: &std::path::Path,
    bad: &mut Option<String>,
) -> RestoreError {
    if e.get_ref().is_some_and(|i| i.is::<WriteFailed>()) {
        let inner = e
            .into_inner()
            .and_then(|b| b.downcast::<WriteFailed>().ok())
            .map(|w| w.0)
            .unwrap_or_else(|| std::io::Error::other("write failed"));
        return RestoreError::io("write", path)(inner);
    }
    *bad = Some(e.to_string());
    RestoreError::io("decode", path)(e)
}

/// The identities to open `key` with, or the error that says to pass them.
pub(super) fn identities<'a>(
    ids: &'a Option<Arc<Identities>>,
    key: &str,
) -> Result<&'a Identities, RestoreError> {
    ids.as_deref()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| RestoreError::NeedIdentity {
            key: key.to_string(),
        })
}

/// The error for a sealed object's bytes that do not open.
pub(super) fn open_err(key: &str, e: SealError) -> RestoreError {
    match e {
        SealError::WrongIdentity => RestoreError::WrongIdentity {
            key: key.to_string(),
        },
        SealError::Tampered { index } => RestoreError::Tampered {
            key: key.to_string(),
            why: format!("sealed chunk {index} does not authenticate"),
        },
        SealError::Header { why } => RestoreError::Tampered {
            key: key.to_string(),
            why,
        },
        other => RestoreError::Tampered {
            key: key.to_string(),
            why: other.to_string(),
        },
    }
}

/// The object's header, read with ranged GETs, opened with `ids`; checks that the sealed
/// size holds the plaintext size the metadata records.
pub(super) async fn open_header(
    store: &Store,
    info: &ObjectInfo,
    meta: &Encoding,
    ids: &Identities,
    idle: std::time::Duration,
) -> Result<Opener, RestoreError> {
    let key = info.key.as_str();
    let mut head = Vec::new();
    let mut want = HEADER_PROBE.min(info.size);
    loop {
        let mut s = store.get_stream(key, Some(head.len() as u64..want)).await?;
        while let Some(c) = next_chunk(&mut s, key, head.len() as u64, idle).await? {
            head.extend_from_slice(&c);
        }
        match Opener::open(&head, ids) {
            Ok(Some(o)) => {
                let plain = o.plain_len(info.size).map_err(|e| open_err(key, e))?;
                // A compressed payload is checked against its seek table instead.
                if plain != meta.plain_size && !meta.compressed {
                    return Err(RestoreError::Tampered {
                        key: key.to_string(),
                        why: format!(
                            "its sealed size holds {plain} bytes, its metadata says {}",
                            meta.plain_size
                        ),
                    });
                }
                return Ok(o);
            }
            Ok(None)
                if want < info.size && (head.len() as u64) < crate::seal::MAX_HEADER as u64 =>
            {
                want = (want * 4).min(info.size);
            }
            Ok(None) => {
                return Err(RestoreError::Tampered {
                    key: key.to_string(),
                    why: "its age header does not end".into(),
                });
            }
            Err(e) => return Err(open_err(key, e)),
        }
    }
}

/// Before a restore writes anything: one object of each table is asked whether it is
/// sealed, and a sealed one opened with the identities given. No identity, or none that
/// opens it, stops the restore here, naming the object (a bucket sealed by one node's
/// recipients is sealed for every file of it). Tables with plain objects pass; a mixed
/// table's other sealed files are still checked one by one as they are restored.
pub async fn preflight(
    store: &Store,
    plan: &Plan,
    ids: &Option<Arc<Identities>>,
    threads: usize,
) -> Result<(), RestoreError> {
    let firsts: Vec<&PlannedFile> = plan
        .tables
        .iter()
        .filter_map(|t| t.files.iter().max_by_key(|f| f.size))
        .collect();
    let results: Vec<Result<(), RestoreError>> =
        futures::stream::iter(firsts.into_iter().map(|f| async move {
            let key = f.key();
            let Some(info) = store.head(&key).await? else {
                // Missing: reported by the restore itself.
                return Ok(());
            };
            let Some(meta) = sealing(&info)?.filter(|m| m.sealed) else {
                return Ok(());
            };
            let ids = identities(ids, &key)?;
            open_header(store, &info, &meta, ids, std::time::Duration::from_secs(60))
                .await
                .map(|_| ())
        }))
        .buffer_unordered(threads.max(1))
        .collect()
        .await;
    for r in results {
        match r {
            Err(
                e @ (RestoreError::NeedIdentity { .. }
                | RestoreError::WrongIdentity { .. }
                | RestoreError::Sealed { .. }),
            ) => return Err(e),
            Err(e) => tracing::debug!("sealing check: {}", escape(&e.to_string())),
            Ok(()) => {}
        }
    }
    Ok(())
}
