//! Keeps locked what a current index names (`--object-lock-days N`, issue #17).
//!
//! An SSTable lives for months, its lock for N days from when it was stored. The keeper
//! makes sure an object the newest index of its directory names never has less than N/2
//! days of lock left, in bounded requests:
//!
//! - **At start** (after the startup backfill with `--once`): one LIST of the watched
//!   paths, each directory's newest index read, and the retention of every object it names
//!   (and of the index itself) read once; what has less than N/2 days left is extended to
//!   now + N days. Every directory then has a *horizon*: the earliest retain-until of what
//!   it names.
//! - **Then, at every `--rescan-interval`** (hourly without one): only a directory whose
//!   horizon is less than N/2 days away is looked at again (a LIST of it, its newest index),
//!   and all it names is extended to now + N days in one batch, without reading anything.
//!   What the daemon stores meanwhile is locked as it is stored ([`crate::store::lock`]) and
//!   only lowers a new directory's horizon.
//!
//! So each named object costs one PutObjectRetention every N/2 days, plus one read at each
//! start: for a million objects and N = 30, about 67,000 requests a day. Objects no index
//! names any more are left to expire.

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::layout::{self, Layout};
use crate::retention::{Scope, Tables};
use crate::store::lock::LockPolicy;
use crate::store::{Store, StoreError};

/// How many lock requests are in flight at once.
const PARALLEL: usize = 8;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Kept {
    pub dirs: usize,
    /// Objects whose retention was read.
    pub checked: usize,
    /// Objects whose lock was extended.
    pub extended: usize,
    pub failed: usize,
}

/// The keeper of one daemon: the directories it knows and their horizons.
pub struct Keeper {
    store: Store,
    layout: Layout,
    roots: Vec<PathBuf>,
    policy: LockPolicy,
    /// Directory key → the earliest retain-until of what its newest index names.
    horizons: HashMap<String, DateTime<Utc>>,
}

impl Keeper {
    pub fn new(store: Store, layout: Layout, roots: Vec<PathBuf>, policy: LockPolicy) -> Self {
        Keeper {
            store,
            layout,
            roots,
            policy,
            horizons: HashMap::new(),
        }
    }

    /// The first pass: every directory's newest index and what it names, read and extended
    /// where needed.
    pub async fn start(&mut self, now: DateTime<Utc>) -> Result<Kept, StoreError> {
        let mut out = Kept::default();
        for root in self.roots.clone() {
            let scope = Scope::new(self.layout.clone(), &root.to_string_lossy());
            let tables = self.fold(&scope.dir_key()).await?;
            for idx in tables.newest_indexes() {
                let keys = match self.named(&idx.key, &idx.dir).await {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::warn!(
                            "object lock: {e}; its objects are looked at again at the next pass"
                        );
                        out.failed += 1;
                        continue;
                    }
                };
                out.dirs += 1;
                let horizon = self.check(&keys, now, &mut out).await;
                let dir_key = self.layout.data_key(&idx.dir);
                self.horizons.insert(dir_key, horizon);
            }
        }
        self.merge_written();
        tracing::info!(
            dirs = out.dirs,
            checked = out.checked,
            extended = out.extended,
            failed = out.failed,
            "object lock: what the newest indexes name is locked for at least {} more days",
            self.policy.days / 2
        );
        Ok(out)
    }

    /// A later pass: directories whose horizon is near are extended as a batch.
    pub async fn pass(&mut self, now: DateTime<Utc>) -> Result<Kept, StoreError> {
        self.merge_written();
        let due: Vec<String> = self
            .horizons
            .iter()
            .filter(|(_, h)| self.policy.needs_extension(**h, now))
            .map(|(d, _)| d.clone())
            .collect();
        let mut out = Kept::default();
        for dir_key in due {
            let Some(dir) = self.layout.path_of(&dir_key).map(str::to_owned) else {
                continue;
            };
            let tables = self.fold(&dir_key).await?;
            let Some(idx) = tables.newest_indexes().into_iter().find(|i| i.dir == dir) else {
                // Nothing names anything there any more: left to expire.
                self.horizons.remove(&dir_key);
                continue;
            };
            let keys = match self.named(&idx.key, &idx.dir).await {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!("object lock: {e}; tried again at the next pass");
                    out.failed += 1;
                    continue;
                }
            };
            out.dirs += 1;
            let until = self.policy.until(now);
            let failed = self.extend(&keys, now).await;
            out.extended += keys.len() - failed;
            out.failed += failed;
            if failed == 0 {
                self.horizons.insert(dir_key, until);
            }
        }
        if out.dirs > 0 || out.failed > 0 {
            tracing::info!(
                dirs = out.dirs,
                extended = out.extended,
                failed = out.failed,
                "object lock: extended what the newest indexes name"
            );
        }
        Ok(out)
    }

    /// Directories the daemon stored into since the last pass get a horizon if they had
    /// none (what it stored is locked from when it was stored).
    fn merge_written(&mut self) {
        for (dir, until) in self.store.take_written_locks() {
            let h = self.horizons.entry(dir).or_insert(until);
            *h = (*h).min(until);
        }
    }

    /// One listing of `dir_key/`, folded per directory.
    async fn fold(&self, dir_key: &str) -> Result<Tables, StoreError> {
        let path = self.layout.path_of(dir_key).unwrap_or("/");
        let mut tables = Tables::new(Scope::new(self.layout.clone(), path));
        let mut listing = self.store.list_dir(dir_key);
        while let Some(o) = listing.next().await {
            tables.add(&o?);
        }
        Ok(tables)
    }

    /// The keys an index names, and the index itself.
    async fn named(&self, index_key: &str, dir: &str) -> Result<Vec<String>, StoreError> {
        let body = self
            .store
            .get_bytes_capped(index_key, layout::MAX_INDEX_BYTES)
            .await?;
        let mut keys = vec![index_key.to_string()];
        let d = if dir == "/" { "" } else { dir };
        let parsed = layout::parse_index(&body, |_body_dir, name| {
            keys.push(self.layout.data_key(&format!("{d}/{name}")));
        });
        if let Err(e) = parsed {
            return Err(StoreError::Answer {
                op: "read the index",
                key: index_key.to_string(),
                reason: e.to_string(),
            });
        }
        Ok(keys)
    }

    /// Reads each key's retention, extends what has less than N/2 days left; answers the
    /// earliest retain-until left (now, where something failed: looked at again next pass).
    async fn check(&self, keys: &[String], now: DateTime<Utc>, out: &mut Kept) -> DateTime<Utc> {
        let policy = self.policy;
        let jobs: Vec<_> = keys
            .iter()
            .map(|k| {
                let (store, k) = (self.store.clone(), k.clone());
                async move {
                    let r: Result<(DateTime<Utc>, bool), StoreError> =
                        match store.retention(&k).await {
                            Ok(Some(t)) if !policy.needs_extension(t, now) => Ok((t, false)),
                            Ok(_) => store
                                .extend_lock(&k, now)
                                .await
                                .map(|()| (policy.until(now), true)),
                            Err(e) => Err(e),
                        };
                    (k, r)
                }
            })
            .collect();
        let mut results = futures::stream::iter(jobs).buffer_unordered(PARALLEL);
        let mut horizon = policy.until(now);
        while let Some((k, r)) = results.next().await {
            out.checked += 1;
            match r {
                Ok((t, extended)) => {
                    horizon = horizon.min(t);
                    out.extended += usize::from(extended);
                }
                Err(e) if e.kind() == crate::store::ErrorKind::NotFound => {
                    tracing::warn!(key = %layout::printable(&k), "object lock: named by the newest index but not in the bucket");
                    out.failed += 1;
                }
                Err(e) => {
                    tracing::warn!("object lock: {e}");
                    out.failed += 1;
                    horizon = now;
                }
            }
        }
        horizon
    }

    /// Extends every key to now + N days; answers how many failed.
    async fn extend(&self, keys: &[String], now: DateTime<Utc>) -> usize {
        let jobs: Vec<_> = keys
            .iter()
            .map(|k| {
                let (store, k) = (self.store.clone(), k.clone());
                async move { store.extend_lock(&k, now).await }
            })
            .collect();
        let mut results = futures::stream::iter(jobs).buffer_unordered(PARALLEL);
        let mut failed = 0;
        while let Some(r) = results.next().await {
            if let Err(e) = r {
                tracing::warn!("object lock: {e}");
                failed += 1;
            }
        }
        failed
    }
}
