//! `--verify`: every object of the plan read from the bucket and checked (size, MD5) without
//! writing anything; [`check`] is shared with the download path.

use futures::stream::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::{ExecOptions, Observer, Outcome, Report, RestoreError};
use crate::restore::plan::{Plan, PlannedFile};
use crate::store::{ErrorKind, ObjectInfo, Store};

pub async fn verify(
    store: &Store,
    plan: &Plan,
    opts: &ExecOptions,
    observer: &dyn Observer,
) -> Report {
    let results = futures::stream::iter(plan.files().map(|f| async move {
        let outcome = match verify_one(store, f, observer).await {
            Ok(()) => Outcome::Verified,
            Err(e) => Outcome::Failed(e),
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
    let mut h = Md5::new();
    let mut n = 0u64;
    while let Some(chunk) = s.try_next().await? {
        h.update(&chunk);
        n += chunk.len() as u64;
        observer.bytes(chunk.len() as u64);
    }
    check(&f.key, &info, n, &hex::encode(h.finalize()))
}

pub(super) fn check(key: &str, info: &ObjectInfo, n: u64, md5: &str) -> Result<(), RestoreError> {
    if n != info.size {
        return Err(RestoreError::Size {
            key: key.to_string(),
            expected: info.size,
            actual: n,
        });
    }
    match info.expected_md5() {
        Some(want) if want != md5 => Err(RestoreError::Md5 {
            key: key.to_string(),
            expected: want,
            actual: md5.to_string(),
        }),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                key,
                "no md5sum metadata and no single-part ETag: verified the size only"
            );
            Ok(())
        }
    }
}
