//! The one LIST a restore is planned from, held compactly so that a restore's memory grows
//! with what it restores, not with the bucket (issue #18: a `Vec<ObjectInfo>` of a million
//! objects, full keys and a metadata map each, plus the maps built over it, took 939 MiB
//! for `tableslurp -r --dry-run`).
//!
//! The LIST is folded as it streams: per directory (the key up to its last `/`, held once)
//! the names in one string arena, sorted, with size and LastModified: 24 bytes + the name
//! per object. Lookups are binary searches (directory, then name). The plan's files point
//! into these directories ([`ListedDir`] is shared, `Arc`), so a planned file costs a slot
//! number, not copies of its key, name and destination.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt};

use crate::store::{ObjectInfo, StoreError};

/// One listed object: its name is `arena[off..off + len]`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    size: u64,
    /// LastModified, nanoseconds since the epoch.
    modified: i64,
    off: u32,
    len: u32,
}

/// The listed objects of one directory.
#[derive(Debug, Default)]
pub struct ListedDir {
    /// The key prefix, without its trailing `/`.
    key: Box<str>,
    arena: String,
    /// Sorted by name.
    slots: Vec<Slot>,
}

/// One object of a [`ListedDir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed<'a> {
    pub name: &'a str,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

impl ListedDir {
    /// The directory's key prefix (without the trailing `/`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The full key of slot `i`.
    pub fn key_of(&self, i: u32) -> String {
        format!("{}/{}", self.key, self.name(i))
    }

    pub fn name(&self, i: u32) -> &str {
        let s = &self.slots[i as usize];
        &self.arena[s.off as usize..(s.off + s.len) as usize]
    }

    pub fn get(&self, i: u32) -> Listed<'_> {
        let s = self.slots[i as usize];
        Listed {
            name: self.name(i),
            size: s.size,
            last_modified: DateTime::from_timestamp_nanos(s.modified),
        }
    }

    /// The slot of `name`.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.slots
            .binary_search_by(|s| self.arena[s.off as usize..(s.off + s.len) as usize].cmp(name))
            .ok()
            .map(|i| i as u32)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every slot, in name order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        0..self.slots.len() as u32
    }

    /// Slot `i` as an [`ObjectInfo`] (for the few objects that leave the listing: index
    /// candidates).
    pub fn object(&self, i: u32) -> ObjectInfo {
        let l = self.get(i);
        ObjectInfo {
            key: self.key_of(i),
            size: l.size,
            last_modified: l.last_modified,
            e_tag: None,
            metadata: HashMap::new(),
        }
    }

    /// A directory of one object (plans built by hand in tests).
    pub fn single(key: &str, size: u64) -> Arc<ListedDir> {
        let mut b = Builder::default();
        b.add(key, size, Utc::now());
        b.finish().dirs.pop().expect("one object, one directory")
    }
}

/// Why a listing cannot be held.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{dir}/: more than 4 GiB of object names in one directory; not supported")]
    TooLarge { dir: String },
}

/// A whole listing, per directory.
#[derive(Debug, Default)]
pub struct Listing {
    /// Sorted by key.
    dirs: Vec<Arc<ListedDir>>,
    objects: usize,
}

impl Listing {
    /// Folds a LIST as it streams.
    pub async fn collect(
        stream: impl Stream<Item = Result<ObjectInfo, StoreError>>,
    ) -> Result<Listing, ListingError> {
        let mut b = Builder::default();
        let mut stream = std::pin::pin!(stream);
        while let Some(o) = stream.try_next().await? {
            if !b.add(&o.key, o.size, o.last_modified) {
                return Err(ListingError::TooLarge {
                    dir: crate::restore::escape(split(&o.key).0),
                });
            }
        }
        Ok(b.finish())
    }

    /// A listing of these objects (tests, and callers that already hold them).
    pub fn of<'a>(objects: impl IntoIterator<Item = &'a ObjectInfo>) -> Listing {
        let mut b = Builder::default();
        for o in objects {
            let added = b.add(&o.key, o.size, o.last_modified);
            assert!(added, "over 4 GiB of names in one directory");
        }
        b.finish()
    }

    /// How many objects were listed.
    pub fn len(&self) -> usize {
        self.objects
    }

    pub fn is_empty(&self) -> bool {
        self.objects == 0
    }

    /// Every directory, in key order.
    pub fn dirs(&self) -> impl Iterator<Item = &Arc<ListedDir>> {
        self.dirs.iter()
    }

    /// The directory whose key prefix (without the trailing `/`) is `dir_key`.
    pub fn dir(&self, dir_key: &str) -> Option<&Arc<ListedDir>> {
        self.dirs
            .binary_search_by(|d| d.key().cmp(dir_key))
            .ok()
            .map(|i| &self.dirs[i])
    }

    /// The directory and slot of `key`.
    pub fn find(&self, key: &str) -> Option<(&Arc<ListedDir>, u32)> {
        let (d, n) = split(key);
        let dir = self.dir(d)?;
        Some((dir, dir.find(n)?))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Size and LastModified of `key`.
    pub fn get(&self, key: &str) -> Option<Listed<'_>> {
        self.find(key).map(|(d, i)| d.get(i))
    }
}

/// `key` split at its last `/` (a key without one is in the directory `""`).
fn split(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

#[derive(Default)]
struct Builder {
    dirs: HashMap<Box<str>, ListedDir>,
    objects: usize,
}

impl Builder {
    /// `false` when the directory's names outgrow the arena's `u32` offsets.
    fn add(&mut self, key: &str, size: u64, modified: DateTime<Utc>) -> bool {
        let (d, n) = split(key);
        let dir = match self.dirs.get_mut(d) {
            Some(dir) => dir,
            None => self.dirs.entry(d.into()).or_insert_with(|| ListedDir {
                key: d.into(),
                ..ListedDir::default()
            }),
        };
        let (Ok(off), Ok(len)) = (u32::try_from(dir.arena.len()), u32::try_from(n.len())) else {
            return false;
        };
        if off.checked_add(len).is_none() {
            return false;
        }
        dir.arena.push_str(n);
        dir.slots.push(Slot {
            size,
            modified: modified
                .timestamp_nanos_opt()
                .unwrap_or(modified.timestamp_millis().saturating_mul(1_000_000)),
            off,
            len,
        });
        self.objects += 1;
        true
    }

    fn finish(self) -> Listing {
        let mut dirs: Vec<Arc<ListedDir>> = self
            .dirs
            .into_values()
            .map(|mut d| {
                let arena = std::mem::take(&mut d.arena);
                let name = |s: &Slot| &arena[s.off as usize..(s.off + s.len) as usize];
                d.slots.sort_by(|a, b| name(a).cmp(name(b)));
                // A key listed twice (a LIST that repeated a page) is one object.
                d.slots.dedup_by(|a, b| name(a) == name(b));
                d.slots.shrink_to_fit();
                d.arena = arena;
                d.arena.shrink_to_fit();
                Arc::new(d)
            })
            .collect();
        dirs.sort_by(|a, b| a.key.cmp(&b.key));
        let objects = dirs.iter().map(|d| d.len()).sum();
        Listing { dirs, objects }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64, t: i64) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            last_modified: DateTime::from_timestamp(t, 123_456_789).unwrap(),
            e_tag: Some("\"etag\"".into()),
            metadata: HashMap::new(),
        }
    }

    #[test]
    fn finds_every_listed_object_with_its_size_and_time() {
        // Not grouped by directory in LIST order: `d-x/` sorts between `d/a` and `d/z`.
        let objs = [
            obj("h:/d/a", 1, 10),
            obj("h:/d-x/b", 2, 20),
            obj("h:/d/sub/c", 3, 30),
            obj("h:/d/z", 4, 40),
            obj("nodir", 5, 50),
            obj("h:/d/a", 1, 10),
        ];
        let l = Listing::of(&objs);
        assert_eq!(l.len(), 5, "the repeated key is one object");
        for o in &objs {
            let got = l.get(&o.key).unwrap();
            assert_eq!(got.size, o.size, "{}", o.key);
            assert_eq!(
                got.last_modified, o.last_modified,
                "{} to the nanosecond",
                o.key
            );
        }
        assert!(l.get("h:/d/b").is_none());
        assert!(l.get("h:/d").is_none());
        assert!(l.get("h:/d/sub").is_none());
        let keys: Vec<&str> = l.dirs().map(|d| d.key()).collect();
        assert_eq!(keys, ["", "h:/d", "h:/d-x", "h:/d/sub"]);
        let d = l.dir("h:/d").unwrap();
        let names: Vec<&str> = d.slots().map(|i| d.name(i)).collect();
        assert_eq!(names, ["a", "z"]);
        assert_eq!(d.key_of(1), "h:/d/z");
        assert_eq!(d.object(0).key, "h:/d/a");
    }

    /// What keeps the restore plan small (issue #18): a listed object costs 24 bytes and
    /// its name, whatever its key's length or metadata.
    #[test]
    fn a_listed_object_costs_24_bytes_and_its_name() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        let objs: Vec<ObjectInfo> = (0..1000)
            .map(|i| {
                obj(
                    &format!("h:/data/ks/t-0123456789abcdef/nb-{i}-big-Data.db"),
                    i,
                    0,
                )
            })
            .collect();
        let l = Listing::of(&objs);
        let d = l.dir("h:/data/ks/t-0123456789abcdef").unwrap();
        let names: usize = objs
            .iter()
            .map(|o| o.key.rsplit_once('/').unwrap().1.len())
            .sum();
        assert_eq!(d.arena.capacity(), names);
        assert_eq!(d.slots.capacity(), 1000);
    }
}
