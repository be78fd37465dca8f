//! Retention (`tablechop`): which objects under `PREFIX+NAME+SEP+PATH/` may be deleted.
//!
//! The original kept only the newest index across the whole PATH (upstream #79): a table that
//! had not flushed for AGE_DAYS lost the files its only index named, so its backup could no
//! longer be restored. Here the rules are applied **per table directory**, and the decision is
//! the pure function [`decide`] so that every rule is unit-tested:
//!
//! 1. in every directory, the newest index is kept, whatever its age;
//! 2. every index younger than AGE is kept;
//! 3. every object a kept index names is kept;
//! 4. no object younger than AGE is deleted (it may belong to an index not yet written);
//! 5. nothing outside `PREFIX+NAME+SEP+PATH/` is ever touched;
//! 6. a kept index that cannot be read keeps everything under its directory.
//!
//! Everything else under the prefix, old indexes included, is deleted.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};

use crate::layout::{self, INDEX_SUFFIX, Layout, Listing};
use crate::restore::newness;
use crate::store::ObjectInfo;

/// What to keep and what to delete, keys sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    pub keep: Vec<String>,
    pub delete: Vec<String>,
    pub kept_bytes: u64,
    pub deleted_bytes: u64,
    /// Kept indexes whose body was missing or unreadable (their whole directory is kept).
    pub unreadable: Vec<String>,
}

/// Where retention applies: `PREFIX+NAME+SEP+PATH/`.
#[derive(Debug, Clone)]
pub struct Scope {
    pub layout: Layout,
    /// An absolute path on the backed-up host, without a trailing `/`.
    pub path: String,
}

impl Scope {
    pub fn new(layout: Layout, path: &str) -> Self {
        let p = path.trim_end_matches('/');
        Self {
            layout,
            path: if p.is_empty() { "/".into() } else { p.into() },
        }
    }

    /// The key "directory" listed (no trailing `/`).
    pub fn dir_key(&self) -> String {
        self.layout
            .data_key(if self.path == "/" { "" } else { &self.path })
    }

    /// Whether a key lies strictly under the scope.
    pub fn contains(&self, key: &str) -> bool {
        key.strip_prefix(&self.dir_key())
            .is_some_and(|r| r.starts_with('/'))
    }
}

fn young(o: &ObjectInfo, now: DateTime<Utc>, age: Duration) -> bool {
    now.signed_duration_since(o.last_modified) < age
}

/// The indexes to keep (rules 1 and 2): the bodies of these are needed by [`decide`].
pub fn kept_indexes(
    objects: &[ObjectInfo],
    scope: &Scope,
    now: DateTime<Utc>,
    age: Duration,
) -> Vec<String> {
    let mut by_dir: BTreeMap<&str, Vec<&ObjectInfo>> = BTreeMap::new();
    for o in objects {
        if !o.key.ends_with(INDEX_SUFFIX) || !scope.contains(&o.key) {
            continue;
        }
        let Some(path) = scope.layout.path_of(&o.key) else {
            continue;
        };
        by_dir.entry(layout::split_dir(path).0).or_default().push(o);
    }
    let mut keep = Vec::new();
    for idx in by_dir.values() {
        let newest = idx.iter().max_by(|a, b| newness(a).cmp(&newness(b)));
        for o in idx {
            let is_newest = newest.is_some_and(|n| n.key == o.key);
            if is_newest || young(o, now, age) {
                keep.push(o.key.clone());
            }
        }
    }
    keep.sort();
    keep
}

/// Decides what to delete. `objects` is the listing of the scope (anything outside it is
/// ignored), `indexes` the parsed bodies of (at least) the [`kept_indexes`]; a kept index
/// without a body keeps its whole directory.
pub fn decide(
    objects: &[ObjectInfo],
    indexes: &HashMap<String, Listing>,
    scope: &Scope,
    now: DateTime<Utc>,
    age: Duration,
) -> Decision {
    let mut keep: HashSet<String> = HashSet::new();
    let mut keep_dirs: Vec<String> = Vec::new();
    let mut unreadable = Vec::new();
    for ik in kept_indexes(objects, scope, now, age) {
        let Some(path) = scope.layout.path_of(&ik) else {
            continue;
        };
        let (dir, _) = layout::split_dir(path);
        match indexes.get(&ik) {
            Some(l) => {
                for n in &l.names {
                    // The original keeps NAME:DIR/FILE with DIR from the body; the body's DIR
                    // and the index's own directory are the same in every sane bucket, and
                    // keeping both is the safe side when they differ.
                    for d in [l.dir.trim_end_matches('/'), dir] {
                        keep.insert(scope.layout.data_key(&format!("{d}/{n}")));
                    }
                }
            }
            None => {
                unreadable.push(ik.clone());
                keep_dirs.push(format!("{}/", scope.layout.data_key(dir)));
            }
        }
        keep.insert(ik);
    }
    let mut d = Decision {
        unreadable,
        ..Default::default()
    };
    for o in objects {
        if !scope.contains(&o.key) {
            continue;
        }
        let kept = keep.contains(&o.key)
            || young(o, now, age)
            || keep_dirs.iter().any(|p| o.key.starts_with(p.as_str()));
        if kept {
            d.keep.push(o.key.clone());
            d.kept_bytes += o.size;
        } else {
            d.delete.push(o.key.clone());
            d.deleted_bytes += o.size;
        }
    }
    d.keep.sort();
    d.keep.dedup();
    d.delete.sort();
    d.delete.dedup();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const DAY: i64 = 86_400;
    const NOW: i64 = 100 * DAY;

    fn obj(key: &str, days_old: f64) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: 10,
            last_modified: Utc
                .timestamp_opt(NOW - (days_old * DAY as f64) as i64, 0)
                .unwrap(),
            e_tag: None,
            metadata: HashMap::new(),
        }
    }

    struct Case {
        name: &'static str,
        /// (key, age in days)
        objects: Vec<(&'static str, f64)>,
        /// index key → names (unlisted indexes are unreadable)
        bodies: Vec<(&'static str, &'static str, Vec<&'static str>)>,
        age_days: i64,
        delete: Vec<&'static str>,
    }

    fn run(c: &Case) -> Decision {
        let objects: Vec<ObjectInfo> = c.objects.iter().map(|(k, a)| obj(k, *a)).collect();
        let indexes = c
            .bodies
            .iter()
            .map(|(k, dir, names)| {
                (
                    k.to_string(),
                    Listing {
                        dir: dir.to_string(),
                        names: names.iter().map(|s| s.to_string()).collect(),
                    },
                )
            })
            .collect();
        let scope = Scope::new(Layout::new("", "h", ":"), "/d");
        decide(
            &objects,
            &indexes,
            &scope,
            Utc.timestamp_opt(NOW, 0).unwrap(),
            Duration::days(c.age_days),
        )
    }

    #[test]
    fn decide_table_of_cases() {
        let cases = vec![
            Case {
                name: "old index superseded by a young one is deleted with its files",
                objects: vec![
                    ("h:/d/t/a-1-Data.db", 20.0),
                    ("h:/d/t/a-1-Data.db-listdir.json", 20.0),
                    ("h:/d/t/a-2-Data.db", 1.0),
                    ("h:/d/t/a-2-Data.db-listdir.json", 1.0),
                ],
                bodies: vec![(
                    "h:/d/t/a-2-Data.db-listdir.json",
                    "/d/t",
                    vec!["a-2-Data.db"],
                )],
                age_days: 7,
                delete: vec!["h:/d/t/a-1-Data.db", "h:/d/t/a-1-Data.db-listdir.json"],
            },
            Case {
                name: "upstream #79: a table idle for AGE keeps its newest index and files",
                objects: vec![
                    ("h:/d/busy/b-9-Data.db", 0.5),
                    ("h:/d/busy/b-9-Data.db-listdir.json", 0.5),
                    ("h:/d/idle/i-1-Data.db", 30.0),
                    ("h:/d/idle/i-1-TOC.txt", 30.0),
                    ("h:/d/idle/i-1-Data.db-listdir.json", 30.0),
                    ("h:/d/idle/i-0-Data.db", 40.0),
                    ("h:/d/idle/i-0-Data.db-listdir.json", 40.0),
                ],
                bodies: vec![
                    (
                        "h:/d/busy/b-9-Data.db-listdir.json",
                        "/d/busy",
                        vec!["b-9-Data.db"],
                    ),
                    (
                        "h:/d/idle/i-1-Data.db-listdir.json",
                        "/d/idle",
                        vec!["i-1-Data.db", "i-1-TOC.txt"],
                    ),
                ],
                age_days: 7,
                delete: vec![
                    "h:/d/idle/i-0-Data.db",
                    "h:/d/idle/i-0-Data.db-listdir.json",
                ],
            },
            Case {
                name: "old files named by a kept index survive; young unnamed objects survive",
                objects: vec![
                    ("h:/d/t/old-shared.db", 50.0),
                    ("h:/d/t/old-gone.db", 50.0),
                    ("h:/d/t/young-unindexed.db", 0.1),
                    ("h:/d/t/x-3-Data.db-listdir.json", 2.0),
                ],
                bodies: vec![(
                    "h:/d/t/x-3-Data.db-listdir.json",
                    "/d/t",
                    vec!["old-shared.db"],
                )],
                age_days: 7,
                delete: vec!["h:/d/t/old-gone.db"],
            },
            Case {
                name: "every young index keeps its files, old non-newest ones go",
                objects: vec![
                    ("h:/d/t/f1", 10.0),
                    ("h:/d/t/f2", 10.0),
                    ("h:/d/t/f3", 10.0),
                    ("h:/d/t/n-1-Data.db-listdir.json", 10.0),
                    ("h:/d/t/n-2-Data.db-listdir.json", 3.0),
                    ("h:/d/t/n-3-Data.db-listdir.json", 1.0),
                ],
                bodies: vec![
                    ("h:/d/t/n-2-Data.db-listdir.json", "/d/t", vec!["f2"]),
                    ("h:/d/t/n-3-Data.db-listdir.json", "/d/t", vec!["f3"]),
                ],
                age_days: 5,
                delete: vec!["h:/d/t/f1", "h:/d/t/n-1-Data.db-listdir.json"],
            },
            Case {
                name: "nothing outside NAME:PATH/ is touched (other host, sibling path)",
                objects: vec![
                    ("h:/d/t/old", 50.0),
                    ("h:/dx/t/old", 50.0),
                    ("h2:/d/t/old", 50.0),
                    ("h:/e/old", 50.0),
                ],
                bodies: vec![],
                age_days: 1,
                delete: vec!["h:/d/t/old"],
            },
            Case {
                name: "an unreadable kept index keeps its whole directory",
                objects: vec![
                    ("h:/d/t/a", 50.0),
                    ("h:/d/t/sub/b", 50.0),
                    ("h:/d/t/z-1-Data.db-listdir.json", 50.0),
                    ("h:/d/u/c", 50.0),
                ],
                bodies: vec![],
                age_days: 1,
                delete: vec!["h:/d/u/c"],
            },
            Case {
                name: "equal LastModified: the higher generation is the newest index",
                objects: vec![
                    ("h:/d/t/nb-9-big-Data.db", 30.0),
                    ("h:/d/t/nb-10-big-Data.db", 30.0),
                    ("h:/d/t/nb-9-big-Data.db-listdir.json", 30.0),
                    ("h:/d/t/nb-10-big-Data.db-listdir.json", 30.0),
                ],
                bodies: vec![(
                    "h:/d/t/nb-10-big-Data.db-listdir.json",
                    "/d/t",
                    vec!["nb-10-big-Data.db"],
                )],
                age_days: 7,
                delete: vec![
                    "h:/d/t/nb-9-big-Data.db",
                    "h:/d/t/nb-9-big-Data.db-listdir.json",
                ],
            },
            Case {
                name: "a directory with no index at all: only old objects go",
                objects: vec![("h:/d/t/old", 8.0), ("h:/d/t/new", 6.0)],
                bodies: vec![],
                age_days: 7,
                delete: vec!["h:/d/t/old"],
            },
        ];
        for c in &cases {
            let d = run(c);
            assert_eq!(d.delete, c.delete, "{}", c.name);
            let in_scope = c
                .objects
                .iter()
                .filter(|(k, _)| k.starts_with("h:/d/"))
                .count();
            assert_eq!(d.keep.len() + d.delete.len(), in_scope, "{}", c.name);
            assert_eq!(d.deleted_bytes, 10 * d.delete.len() as u64, "{}", c.name);
        }
    }

    #[test]
    fn unreadable_index_is_reported() {
        let c = Case {
            name: "",
            objects: vec![("h:/d/t/z-1-Data.db-listdir.json", 50.0)],
            bodies: vec![],
            age_days: 1,
            delete: vec![],
        };
        assert_eq!(run(&c).unreadable, ["h:/d/t/z-1-Data.db-listdir.json"]);
    }

    #[test]
    fn scope_is_a_directory_not_a_string_prefix() {
        let s = Scope::new(Layout::new("p/", "h", ":"), "/var/lib/");
        assert_eq!(s.dir_key(), "p/h:/var/lib");
        assert!(s.contains("p/h:/var/lib/x"));
        assert!(!s.contains("p/h:/var/library/x"));
        assert!(!s.contains("p/h:/var/lib"));
    }
}
