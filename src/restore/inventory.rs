//! `--list`: the inventory of a bucket per host and table directory.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::layout::{self, INDEX_SUFFIX};
use crate::store::ObjectInfo;

/// One directory of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSummary {
    pub host: String,
    pub dir: String,
    pub indexes: usize,
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    pub objects: usize,
    pub bytes: u64,
}

/// Summarises a listing per (host, directory). Keys are `PREFIX + HOST + SEP + /path`; the
/// host is what lies between the prefix and the first `SEP/`.
pub fn inventory(listing: &[ObjectInfo], prefix: &str, separator: &str) -> Vec<DirSummary> {
    let mut inv = Inventory::new(prefix, separator);
    for o in listing {
        inv.add(o);
    }
    inv.finish()
}

/// [`inventory`] folded one object at a time, so `--list` holds a summary per table
/// directory, never the listing (issue #18: 288 MiB for a million objects before).
pub struct Inventory {
    /// Host, then directory: looked up by `&str`, so only a new directory allocates.
    map: BTreeMap<String, BTreeMap<String, DirSummary>>,
    prefix: String,
    separator: String,
    marker: String,
}

impl Inventory {
    pub fn new(prefix: &str, separator: &str) -> Self {
        Inventory {
            map: BTreeMap::new(),
            prefix: prefix.to_string(),
            separator: separator.to_string(),
            marker: format!("{separator}/"),
        }
    }

    /// Counts one listed object (keys outside the prefix, or with no host, are skipped).
    pub fn add(&mut self, o: &ObjectInfo) {
        let Some(rest) = o.key.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        let Some(i) = rest.find(&self.marker) else {
            return;
        };
        let host = &rest[..i];
        let path = &rest[i + self.separator.len()..];
        let (dir, _) = layout::split_dir(path);
        if !self.map.contains_key(host) {
            self.map.insert(host.to_string(), BTreeMap::new());
        }
        let dirs = self.map.get_mut(host).expect("inserted above");
        if !dirs.contains_key(dir) {
            dirs.insert(
                dir.to_string(),
                DirSummary {
                    host: host.to_string(),
                    dir: dir.to_string(),
                    indexes: 0,
                    oldest: None,
                    newest: None,
                    objects: 0,
                    bytes: 0,
                },
            );
        }
        let e = dirs.get_mut(dir).expect("inserted above");
        e.objects += 1;
        e.bytes += o.size;
        if o.key.ends_with(INDEX_SUFFIX) {
            e.indexes += 1;
            e.oldest = Some(e.oldest.map_or(o.last_modified, |t| t.min(o.last_modified)));
            e.newest = Some(e.newest.map_or(o.last_modified, |t| t.max(o.last_modified)));
        }
    }

    /// The summaries, by host then directory.
    pub fn finish(self) -> Vec<DirSummary> {
        self.map
            .into_values()
            .flat_map(BTreeMap::into_values)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::HashMap;

    fn obj(key: &str, size: u64, t: i64) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size,
            last_modified: Utc.timestamp_opt(t, 0).unwrap(),
            e_tag: None,
            metadata: HashMap::new(),
        }
    }

    #[test]
    fn inventory_groups_by_host_and_dir() {
        let l = vec![
            obj("p/h1:/d/t/a-Data.db", 10, 5),
            obj("p/h1:/d/t/a-Data.db-listdir.json", 1, 5),
            obj("p/h1:/d/t/b-Data.db-listdir.json", 1, 9),
            obj("p/h2:/d/t/a-Data.db", 7, 1),
        ];
        let inv = inventory(&l, "p/", ":");
        assert_eq!(inv.len(), 2);
        assert_eq!(inv[0].host, "h1");
        assert_eq!(inv[0].indexes, 2);
        assert_eq!(inv[0].bytes, 12);
        assert_eq!(inv[0].oldest.unwrap().timestamp(), 5);
        assert_eq!(inv[0].newest.unwrap().timestamp(), 9);
        assert_eq!(inv[1].host, "h2");
        assert_eq!(inv[1].indexes, 0);
    }

    #[test]
    fn the_fold_keeps_a_summary_per_directory_not_the_objects() {
        let mut inv = Inventory::new("p/", ":");
        for i in 0..10_000u64 {
            let d = if i % 2 == 0 { "t" } else { "u" };
            inv.add(&obj(
                &format!("p/h1:/d/{d}/nb-{i}-big-Data.db"),
                i,
                i as i64,
            ));
        }
        inv.add(&obj("elsewhere/h1:/d/t/x", 1, 1));
        assert_eq!(inv.map.values().map(BTreeMap::len).sum::<usize>(), 2);
        let v = inv.finish();
        assert_eq!((v[0].objects, v[1].objects), (5_000, 5_000));
        assert_eq!(v[0].bytes, (0..10_000u64).step_by(2).sum::<u64>());
    }
}
