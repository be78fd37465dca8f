//! Why a restore may rename one SSTable: so that the node, going on after the restore,
//! never writes a name the bucket already holds with other bytes.
//!
//! Cassandra numbers integer SSTable generations from the highest one on disk in a table's
//! data directories. After a restore of an older restore point (`--as-of`, `-f`), the bucket
//! still holds the higher generations of the abandoned timeline (`nb-12-big-*` stored
//! yesterday, compacted away since): the node's next flush would be `nb-12-big-*` again,
//! with other bytes. tablesnap never overwrites an object an earlier restore point names, so
//! that SSTable could not be backed up under its name.
//!
//! The least change that rules it out: when a table's restored integer generations are all
//! below the highest integer generation the bucket holds for that table, **one** restored
//! SSTable (the smallest: the next backup uploads it again under its new name) is restored
//! under the generation just above the bucket's highest. Cassandra then numbers from there,
//! above everything the bucket holds. Every other file keeps its name, so the next backup
//! finds it stored (same key, same bytes) and sends nothing. `nodetool import` renames
//! SSTables the same way; no component holds its own generation (`TOC.txt` lists
//! component names without it), so the bytes are restored unchanged.
//!
//! A table is identified by its directory's last two path components (`ks/table-id`, the
//! same under every JBOD data root), a secondary index by three (`ks/table-id/.idx`: its own
//! generations). Snapshot and incremental-backup directories are hard links of live
//! generations and do not count. UUID generations (Cassandra 4.1+) never repeat: ignored.

use std::collections::{BTreeMap, HashMap};

use super::listing::Listing;
use super::plan::{Plan, TablePlan};
use crate::cassandra::{self, is_table_dir};
use crate::layout::{self, Layout};

/// One restored SSTable renamed: in `dir` (on the backed-up host), `from` became `to`
/// (SSTable names without their component, e.g. `nb-3-big` → `nb-13-big`), because the
/// bucket holds generations up to `above` for this table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renumbered {
    pub from: String,
    pub to: String,
    pub above: u64,
}

/// `ks/table-id` (or `ks/table-id/.idx`) of a live table directory; `None` for anything
/// else (a data root, `snapshots/`, `backups/`).
pub fn table_of(dir: &str) -> Option<String> {
    let parts: Vec<&str> = dir.trim_end_matches('/').rsplit('/').take(3).collect();
    match parts.as_slice() {
        [t, ks, ..] if is_table_dir(t) && !ks.is_empty() => Some(format!("{ks}/{t}")),
        [idx, t, ks] if idx.starts_with('.') && is_table_dir(t) => Some(format!("{ks}/{t}/{idx}")),
        _ => None,
    }
}

/// The highest integer generation of each table in the listing (every live directory of it
/// under ORIGIN, data objects and indexes alike).
pub fn bucket_max(listing: &Listing, layout: &Layout) -> HashMap<String, u64> {
    let mut max: HashMap<String, u64> = HashMap::new();
    for d in listing.dirs() {
        let probe = format!("{}/x", d.key());
        let Some(path) = layout.path_of(&probe) else {
            continue;
        };
        let Some(t) = table_of(layout::split_dir(path).0) else {
            continue;
        };
        let Some(g) = d
            .slots()
            .filter_map(|i| integer_generation(d.name(i)))
            .max()
        else {
            continue;
        };
        let e = max.entry(t).or_default();
        *e = (*e).max(g);
    }
    max
}

fn integer_generation(name: &str) -> Option<u64> {
    let f = cassandra::parse_name(name)?;
    if f.temporary {
        return None;
    }
    f.id.parse().ok()
}

/// Renames, per table, the smallest restored SSTable above the bucket's highest generation
/// when every restored one is below it (see the module doc). Tables are grouped by where
/// they are restored to (a table mapped into a re-created one takes that one's generations).
/// Returns what it renamed, per table plan index.
pub fn avoid_reuse(plan: &mut Plan, max: &HashMap<String, u64>) -> Vec<(usize, Renumbered)> {
    // Per target table: the restored SSTables (plan index, name) and their sizes.
    let mut groups: BTreeMap<String, Restored> = BTreeMap::new();
    for (i, t) in plan.tables.iter().enumerate() {
        let Some(group) = target_table(t) else {
            continue;
        };
        let g = groups.entry(group).or_default();
        for f in &t.files {
            let Some(p) = cassandra::parse_name(f.name()) else {
                continue;
            };
            let Ok(generation) = p.id.parse::<u64>() else {
                continue;
            };
            if p.temporary {
                continue;
            }
            let e = g
                .entry((i, p.sstable.to_string()))
                .or_insert((generation, 0));
            e.1 += f.size;
        }
    }
    let mut out = Vec::new();
    for (group, sstables) in groups {
        let Some(&above) = max.get(&group) else {
            continue;
        };
        let restored_max = sstables.values().map(|(g, _)| *g).max().unwrap_or(0);
        if sstables.is_empty() || restored_max >= above {
            continue;
        }
        // The smallest (then the lowest generation, for a plan that is the same each run).
        let Some(((i, sstable), _)) = sstables
            .iter()
            .min_by_key(|((_, s), (g, size))| (*size, *g, s.clone()))
        else {
            continue;
        };
        let (i, sstable) = (*i, sstable.clone());
        let new_gen = above + 1;
        let t = &mut plan.tables[i];
        let mut to = None;
        for f in t.files.iter_mut() {
            let same = cassandra::parse_name(f.name()).is_some_and(|p| p.sstable == sstable);
            if !same {
                continue;
            }
            if let Some(n) = cassandra::with_generation(f.name(), new_gen) {
                to = cassandra::parse_name(&n).map(|p| p.sstable.to_string());
                f.rename(n);
            }
        }
        if let Some(to) = to {
            out.push((
                i,
                Renumbered {
                    from: sstable,
                    to,
                    above,
                },
            ));
        }
    }
    out
}

/// The restored SSTables of one table: (plan index, SSTable name) -> (generation, bytes).
type Restored = BTreeMap<(usize, String), (u64, u64)>;

/// The table a plan restores into: its target directory's `ks/table-id[/.idx]`.
fn target_table(t: &TablePlan) -> Option<String> {
    table_of(t.target.to_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_their_last_components_under_any_root() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            table_of(&format!("/data1/ks/t-{id}")),
            Some(format!("ks/t-{id}"))
        );
        assert_eq!(
            table_of(&format!("/d2/ks/t-{id}")),
            table_of(&format!("/d1/ks/t-{id}"))
        );
        assert_eq!(
            table_of(&format!("/d/ks/t-{id}/.t_idx")),
            Some(format!("ks/t-{id}/.t_idx"))
        );
        assert_eq!(table_of(&format!("/d/ks/t-{id}/snapshots/x")), None);
        assert_eq!(table_of(&format!("/d/ks/t-{id}/backups")), None);
        assert_eq!(table_of("/d/ks"), None);
    }
}
