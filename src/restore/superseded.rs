//! Restore points older than a reused name: which object holds the bytes they saw.
//!
//! When Cassandra numbers a generation again (after a TRUNCATE, a DROP and re-CREATE with
//! the same table id, a point-in-time restore) or rewrites an SSTable's TOC (an index built
//! on it), tablesnap keeps the bytes the name held under `DIR/tablesnap-was-<ms>-NAME`
//! before storing the new ones ([`crate::layout::superseded_name`]). A restore point made
//! before that copy is restored from it, so it brings back exactly the bytes it saw; a
//! newer one from the name itself. The rule is [`crate::layout::superseded_source`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::listing::Listing;
use crate::layout::{self, Layout};

/// The superseded copies of a listing, by the key of the name they kept.
#[derive(Debug, Default)]
pub struct Superseded {
    copies: HashMap<String, Vec<(DateTime<Utc>, String)>>,
}

impl Superseded {
    /// Collects the copies among `listing` (keys of `layout`'s host only).
    pub fn new(listing: &Listing, layout: &Layout) -> Self {
        let mut copies: HashMap<String, Vec<(DateTime<Utc>, String)>> = HashMap::new();
        for d in listing.dirs() {
            for i in d.slots() {
                if !d.name(i).starts_with(layout::SUPERSEDED_PREFIX) {
                    continue;
                }
                let key = d.key_of(i);
                let Some(path) = layout.path_of(&key) else {
                    continue;
                };
                let (dir, name) = layout::split_dir(path);
                let Some((_, original)) = layout::parse_superseded(name) else {
                    continue;
                };
                let dir = dir.trim_end_matches('/');
                copies
                    .entry(layout.data_key(&format!("{dir}/{original}")))
                    .or_default()
                    .push((d.get(i).last_modified, key));
            }
        }
        Self { copies }
    }

    /// The key holding what a restore point made at `index_time` names under `key`.
    pub fn source<'k>(&'k self, key: &'k str, index_time: DateTime<Utc>) -> &'k str {
        self.copies
            .get(key)
            .and_then(|c| {
                layout::superseded_source(c.iter().map(|(t, k)| (*t, k.as_str())), index_time)
            })
            .unwrap_or(key)
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectInfo;

    fn obj(key: &str, t: i64) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: 1,
            last_modified: DateTime::from_timestamp(t, 0).unwrap(),
            e_tag: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn each_restore_point_reads_the_bytes_its_name_held_then() {
        let l = Layout::new("", "h", ":");
        let listing = vec![
            obj("h:/d/t/nb-1-big-Data.db", 300),
            obj("h:/d/t/tablesnap-was-100000-nb-1-big-Data.db", 100),
            obj("h:/d/t/tablesnap-was-200000-nb-1-big-Data.db", 200),
            // Another directory's copy of the same name, and another host's: not this key's.
            obj("h:/d/u/tablesnap-was-150000-nb-1-big-Data.db", 150),
            obj("g:/d/t/tablesnap-was-150000-nb-1-big-Data.db", 150),
            obj("h:/d/t/nb-2-big-Data.db", 50),
        ];
        let s = Superseded::new(&Listing::of(&listing), &l);
        let at = |t| DateTime::from_timestamp(t, 0).unwrap();
        let k = "h:/d/t/nb-1-big-Data.db";
        assert_eq!(
            s.source(k, at(40)),
            "h:/d/t/tablesnap-was-100000-nb-1-big-Data.db"
        );
        assert_eq!(
            s.source(k, at(100)),
            "h:/d/t/tablesnap-was-100000-nb-1-big-Data.db"
        );
        assert_eq!(
            s.source(k, at(101)),
            "h:/d/t/tablesnap-was-200000-nb-1-big-Data.db"
        );
        assert_eq!(s.source(k, at(201)), k);
        assert_eq!(
            s.source("h:/d/t/nb-2-big-Data.db", at(1)),
            "h:/d/t/nb-2-big-Data.db"
        );
        assert_eq!(
            s.source("h:/d/u/nb-1-big-Data.db", at(1)),
            "h:/d/u/tablesnap-was-150000-nb-1-big-Data.db"
        );
    }
}
