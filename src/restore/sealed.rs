//! Restoring sealed objects ([`crate::seal`]): telling a sealed object from a plain one by
//! its metadata, reading its header with a ranged GET, the errors that name the object and
//! what to pass, and the check before a restore writes anything that its identities open
//! what it is about to restore.

use std::sync::Arc;

use futures::stream::StreamExt;

use super::verify::next_chunk;
use super::{RestoreError, escape};
use crate::restore::plan::{Plan, PlannedFile};
use crate::seal::{Identities, Opener, SealError, SealedMeta};
use crate::store::{ObjectInfo, Store};

/// Bytes fetched first for a header (a header for 40 recipients fits).
const HEADER_PROBE: u64 = 4096;

/// The object's sealing, or the error for a sealing this version cannot read.
pub(super) fn sealing(info: &ObjectInfo) -> Result<Option<SealedMeta>, RestoreError> {
    info.sealed().map_err(|why| RestoreError::Sealed {
        key: info.key.clone(),
        why,
    })
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
    meta: &SealedMeta,
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
                if plain != meta.plain_size {
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
            let Some(meta) = sealing(&info)? else {
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
