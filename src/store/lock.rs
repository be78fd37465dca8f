//! Object Lock and versions on S3 (issue #17), beside the plain operations of [`Store`]:
//!
//! - **Locking what is stored.** With a [`LockPolicy`], every object the store writes (PUT,
//!   multipart, server-side copy: the lock headers are ignored by some servers on the last
//!   two, so the retention is always set after, with PutObjectRetention on the version just
//!   written) is retained until at least now + N days. The first retention set in a run is
//!   read back: a server that answers 200 and keeps nothing is an error, not a silent
//!   unlocked backup.
//! - **Extending it** ([`Store::extend_lock`]) for the objects a current index still names.
//! - **Reading the bucket as it was** ([`AsOf`], `tableslurp --bucket-as-of`): listings come
//!   from ListObjectVersions, each key resolved to its newest version written at or before
//!   the time (a delete marker there means "not there"), and every read asks for that version.
//! - **Deleting versions** ([`Store::delete_versions_of`]): on a versioned bucket a DELETE
//!   only adds a marker; tablechop deletes the versions themselves, and a locked one is
//!   skipped and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, DurationRound, Utc};
use futures::stream::{BoxStream, StreamExt};

use super::s3api::{LockMode, ObjectVersion, S3Api, VersionDeleted};
use super::{ObjectInfo, Store, StoreError};

/// How long what is stored stays locked, and in which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    pub mode: LockMode,
    pub days: u32,
}

impl LockPolicy {
    /// The retain-until date for an object stored or extended at `now`: now + N days,
    /// rounded up to the hour (a batch extended together shares one date).
    pub fn until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let t = now + Duration::days(i64::from(self.days));
        let h = t.duration_trunc(Duration::hours(1)).unwrap_or(t);
        if h < t { h + Duration::hours(1) } else { h }
    }

    /// Whether a lock that runs until `until` must be extended at `now`: less than N/2
    /// days are left.
    pub fn needs_extension(&self, until: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        until - now < Duration::hours(i64::from(self.days) * 12)
    }
}

/// The state of a lock-enabled store: the policy and whether a retention was read back yet.
#[derive(Debug)]
pub(super) struct Locking {
    pub(super) policy: LockPolicy,
    pub(super) verified: AtomicBool,
    /// Per directory key, the earliest retain-until set since the keeper last asked.
    pub(super) written: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// A bucket read as it was at a time: which version of each key that is.
#[derive(Debug)]
pub struct AsOf {
    pub at: DateTime<Utc>,
    /// Key → the version to read; `None`: the key did not exist then (or was deleted).
    versions: Mutex<HashMap<String, Option<String>>>,
}

impl AsOf {
    pub fn new(at: DateTime<Utc>) -> Self {
        AsOf {
            at,
            versions: Mutex::new(HashMap::new()),
        }
    }
}

/// Of the versions of one key (newest first), the one current at `at`: `None` if there was
/// none yet or a delete marker was current.
pub fn version_at(versions: &[ObjectVersion], at: DateTime<Utc>) -> Option<&ObjectVersion> {
    let v = versions.iter().find(|v| v.last_modified <= at)?;
    (!v.delete_marker).then_some(v)
}

impl Store {
    pub(super) fn api(&self) -> Result<&Arc<S3Api>, StoreError> {
        self.api.as_ref().ok_or_else(|| StoreError::Destination {
            dest: self.dest.to_string(),
            reason: "Object Lock and bucket versions are only supported on S3 destinations".into(),
        })
    }

    /// The lock policy objects are stored under, if any.
    pub fn lock_policy(&self) -> Option<LockPolicy> {
        self.locking.as_ref().map(|l| l.policy)
    }

    /// The store, with every object it writes from now on locked by `policy`.
    pub fn with_lock(mut self, policy: LockPolicy) -> Result<Self, StoreError> {
        self.api()?;
        self.locking = Some(Arc::new(Locking {
            policy,
            verified: AtomicBool::new(false),
            written: Mutex::new(HashMap::new()),
        }));
        Ok(self)
    }

    /// The store, read as it was at `at` (listings and reads from the bucket's versions).
    pub fn with_as_of(mut self, at: DateTime<Utc>) -> Result<Self, StoreError> {
        self.api()?;
        self.as_of = Some(Arc::new(AsOf::new(at)));
        Ok(self)
    }

    pub fn as_of(&self) -> Option<DateTime<Utc>> {
        self.as_of.as_ref().map(|a| a.at)
    }

    /// Whether the bucket has Object Lock enabled (S3 only).
    pub async fn object_lock_enabled(&self) -> Result<bool, StoreError> {
        self.api()?.object_lock_enabled().await
    }

    /// Whether the bucket keeps versions (enabled or suspended); `false` off S3.
    pub async fn versioned(&self) -> Result<bool, StoreError> {
        match &self.api {
            Some(a) => a.versioning().await,
            None => Ok(false),
        }
    }

    /// After an object was written: its retention (the version written, else the current
    /// one), read back once a run.
    pub(super) async fn lock_written(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(l) = &self.locking else {
            return Ok(());
        };
        let api = self.api()?;
        let until = l.policy.until(Utc::now());
        api.put_retention(key, version, l.policy.mode, until)
            .await?;
        if let Some((dir, _)) = key.rsplit_once('/') {
            let mut w = l.written.lock().unwrap();
            let t = w.entry(dir.to_string()).or_insert(until);
            *t = (*t).min(until);
        }
        if !l.verified.load(Ordering::Relaxed) {
            match api.get_retention(key, version).await? {
                Some((mode, t)) if mode == l.policy.mode && t >= until => {
                    l.verified.store(true, Ordering::Relaxed);
                }
                got => {
                    return Err(StoreError::Answer {
                        op: "check the retention of",
                        key: key.to_string(),
                        reason: format!(
                            "set {} until {until}, read back {got:?}: the server does not keep Object Lock retention",
                            l.policy.mode.as_str()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The earliest retain-until set in each directory (by key) since the last call.
    pub fn take_written_locks(&self) -> HashMap<String, DateTime<Utc>> {
        match &self.locking {
            Some(l) => std::mem::take(&mut *l.written.lock().unwrap()),
            None => HashMap::new(),
        }
    }

    /// Extends the lock of `key` (its current version) to the policy's date from `now`.
    /// A lock already longer (a shorter one cannot be set) is left as it is.
    pub async fn extend_lock(&self, key: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(l) = &self.locking else {
            return Ok(());
        };
        let api = self.api()?;
        let until = l.policy.until(now);
        match api.put_retention(key, None, l.policy.mode, until).await {
            Ok(()) => Ok(()),
            Err(e @ StoreError::S3 { status: 403, .. }) => {
                match api.get_retention(key, None).await? {
                    Some((_, t)) if t >= until => Ok(()),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The retain-until date of `key`'s current version, if it has one.
    pub async fn retention(&self, key: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.api()?.get_retention(key, None).await?.map(|(_, t)| t))
    }

    /// The versions and delete markers of the objects directly in `dir/` (not below).
    pub async fn versions_in(&self, dir: &str) -> Result<Vec<ObjectVersion>, StoreError> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.api()?.list_all_versions(&prefix, Some("/")).await
    }

    /// The retain-until of one version (tablechop's dry run says what is locked).
    pub async fn version_retention(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .api()?
            .get_retention(key, Some(version))
            .await?
            .map(|(_, t)| t))
    }

    /// Deletes the given versions without bypassing any lock: what each came to.
    pub async fn delete_versions_of(
        &self,
        versions: &[(String, String)],
    ) -> Result<Vec<VersionDeleted>, StoreError> {
        self.api()?.delete_versions(versions).await
    }

    /// As of a time: the version of `key` to read (`Ok(None)`: none, the key was not there).
    pub(super) async fn version_for(
        &self,
        key: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let Some(a) = &self.as_of else {
            return Ok(None);
        };
        if let Some(v) = a.versions.lock().unwrap().get(key) {
            return Ok(Some(v.clone()));
        }
        let all = self.api()?.list_all_versions(key, None).await?;
        let mine: Vec<ObjectVersion> = all.into_iter().filter(|v| v.key == key).collect();
        let v = version_at(&mine, a.at).map(|v| v.version_id.clone());
        a.versions
            .lock()
            .unwrap()
            .insert(key.to_string(), v.clone());
        Ok(Some(v))
    }

    /// As of a time: the objects under `dir/` then, from the bucket's versions (each key's
    /// version remembered for its reads).
    pub(super) fn list_dir_as_of(
        &self,
        dir: &str,
    ) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let (Some(a), Ok(api)) = (self.as_of.clone(), self.api().cloned()) else {
            return futures::stream::empty().boxed();
        };
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        struct St {
            api: Arc<S3Api>,
            a: Arc<AsOf>,
            prefix: String,
            from: Option<(String, String)>,
            /// The versions of the key the last page ended in (it may go on in the next).
            carry: Vec<ObjectVersion>,
            done: bool,
        }
        let st = St {
            api,
            a,
            prefix,
            from: None,
            carry: Vec::new(),
            done: false,
        };
        futures::stream::try_unfold(st, |mut st| async move {
            if st.done {
                return Ok::<_, StoreError>(None);
            }
            let page = st
                .api
                .list_versions(&st.prefix, None, st.from.as_ref())
                .await?;
            let mut vs = std::mem::take(&mut st.carry);
            vs.extend(page.versions);
            vs.sort_by(|x, y| {
                x.key
                    .cmp(&y.key)
                    .then(y.last_modified.cmp(&x.last_modified))
            });
            st.from = page.next;
            if st.from.is_some() {
                // The last key may have more versions on the next page.
                if let Some(last) = vs.last().map(|v| v.key.clone()) {
                    let cut = vs.iter().position(|v| v.key == last).unwrap_or(vs.len());
                    st.carry = vs.split_off(cut);
                }
            } else {
                st.done = true;
            }
            let mut out = Vec::new();
            let mut i = 0;
            while i < vs.len() {
                let j = vs[i..]
                    .iter()
                    .position(|v| v.key != vs[i].key)
                    .map_or(vs.len(), |n| i + n);
                let group = &vs[i..j];
                let v = version_at(group, st.a.at);
                st.a.versions
                    .lock()
                    .unwrap()
                    .insert(group[0].key.clone(), v.map(|v| v.version_id.clone()));
                if let Some(v) = v {
                    out.push(Ok(ObjectInfo {
                        key: v.key.clone(),
                        size: v.size,
                        last_modified: v.last_modified,
                        e_tag: None,
                        metadata: HashMap::new(),
                    }));
                }
                i = j;
            }
            Ok(Some((futures::stream::iter(out), st)))
        })
        .map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }

    /// As of a time: the "subdirectories" of `dir/` (from the version listing's common
    /// prefixes: a prefix whose every object was deleted before the time may still appear).
    pub(super) async fn list_prefixes_as_of(
        &self,
        dir: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let api = self.api()?;
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out = Vec::new();
        let mut from = None;
        loop {
            let page = api.list_versions(&prefix, Some("/"), from.as_ref()).await?;
            out.extend(page.prefixes.iter().filter_map(|p| {
                p.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .map(str::to_owned)
            }));
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
            match page.next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn until_is_n_days_on_rounded_up_to_the_hour() {
        let p = LockPolicy {
            mode: LockMode::Governance,
            days: 30,
        };
        assert_eq!(
            p.until(t("2026-12-01T10:20:00Z")),
            t("2026-12-31T11:00:00Z")
        );
        assert_eq!(
            p.until(t("2026-12-01T10:00:00Z")),
            t("2026-12-31T10:00:00Z")
        );
        assert!(!p.needs_extension(t("2026-12-31T11:00:00Z"), t("2026-12-01T10:20:00Z")));
        assert!(!p.needs_extension(t("2026-12-31T11:00:00Z"), t("2026-12-16T10:59:00Z")));
        assert!(p.needs_extension(t("2026-12-31T11:00:00Z"), t("2026-12-16T11:01:00Z")));
    }

    fn v(key: &str, id: &str, at: &str, marker: bool) -> ObjectVersion {
        ObjectVersion {
            key: key.into(),
            version_id: id.into(),
            last_modified: t(at),
            size: 1,
            is_latest: false,
            delete_marker: marker,
        }
    }

    #[test]
    fn the_version_current_at_a_time_looks_through_later_markers() {
        // Newest first: deleted at 12:00 (a marker), rewritten at 11:00, written at 10:00.
        let vs = [
            v("k", "m", "2026-12-01T12:00:00Z", true),
            v("k", "b", "2026-12-01T11:00:00Z", false),
            v("k", "a", "2026-12-01T10:00:00Z", false),
        ];
        let at = |s| version_at(&vs, t(s)).map(|v| v.version_id.as_str());
        assert_eq!(at("2026-12-01T09:59:59Z"), None);
        assert_eq!(at("2026-12-01T10:30:00Z"), Some("a"));
        assert_eq!(at("2026-12-01T11:00:00Z"), Some("b"));
        assert_eq!(at("2026-12-01T12:00:01Z"), None);
    }
}
