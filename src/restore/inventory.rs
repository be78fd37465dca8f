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
    let mut map: BTreeMap<(String, String), DirSummary> = BTreeMap::new();
    let marker = format!("{separator}/");
    for o in listing {
        let Some(rest) = o.key.strip_prefix(prefix) else {
            continue;
        };
        let Some(i) = rest.find(&marker) else {
            continue;
        };
        let host = &rest[..i];
        let path = &rest[i + separator.len()..];
        let (dir, _) = layout::split_dir(path);
        let e = map
            .entry((host.to_string(), dir.to_string()))
            .or_insert_with(|| DirSummary {
                host: host.to_string(),
                dir: dir.to_string(),
                indexes: 0,
                oldest: None,
                newest: None,
                objects: 0,
                bytes: 0,
            });
        e.objects += 1;
        e.bytes += o.size;
        if o.key.ends_with(INDEX_SUFFIX) {
            e.indexes += 1;
            e.oldest = Some(e.oldest.map_or(o.last_modified, |t| t.min(o.last_modified)));
            e.newest = Some(e.newest.map_or(o.last_modified, |t| t.max(o.last_modified)));
        }
    }
    map.into_values().collect()
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
}
