//! Restore into a re-created schema (`tableslurp -r`): which backup table directory goes
//! into which existing directory of TARGET when a table was re-created under another id.

use std::collections::BTreeMap;
use std::path::Path;

/// Restore into a re-created schema (`-r` only). A re-created table gets a new id, so its
/// directory is `KS/TABLE-<new id>` while the backup has `KS/TABLE-<old id>`; Cassandra
/// ignores a directory with the old id. With `auto`, a backup table directory whose exact
/// name is not in TARGET but whose keyspace and table name match exactly one directory
/// there is restored into that one. `explicit` pairs (`--map-table OLD=NEW`) win over it.
/// A TARGET directory whose exact name is in the backup is never a destination of
/// another: it gets its own data only. (A dropped table `users-<old>` beside its re-created
/// successor `users-<new>` in the same backup used to be mapped into `users-<new>` too: the
/// dropped rows came back, or both file sets raced for the same names.)
#[derive(Debug, Clone, Default)]
pub struct TableMapping {
    pub auto: bool,
    /// `KS/TABLE-ID` in the backup → `KS/TABLE-ID` in TARGET.
    pub explicit: Vec<(String, String)>,
    /// `KS/DIR` directories that exist in TARGET (see [`existing_table_dirs`]).
    pub existing: Vec<String>,
}

/// `KS/DIR` for every real (not symlinked) directory two levels under `target`.
pub fn existing_table_dirs(target: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let real_dirs = |p: &Path| -> Vec<String> {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect()
    };
    for ks in real_dirs(target) {
        for t in real_dirs(&target.join(&ks)) {
            out.push(format!("{ks}/{t}"));
        }
    }
    out.sort();
    out
}

/// `TABLE-<32 hex id>` → (`TABLE`, `id`).
fn table_and_id(dir_name: &str) -> Option<(&str, &str)> {
    let (t, id) = dir_name.rsplit_once('-')?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !t.is_empty())
        .then_some((t, id))
}

/// The `KS/DIR` prefix (first two components) of a relative directory.
pub(super) fn table_prefix(rel: &str) -> Option<&str> {
    let mut it = rel.splitn(3, '/');
    let ks = it.next()?;
    let t = it.next()?;
    Some(&rel[..ks.len() + 1 + t.len()])
}

/// Which backup table directories (`KS/DIR`) go into which existing ones.
pub(super) fn table_map<'a>(
    rels: impl Iterator<Item = &'a str>,
    m: &'a TableMapping,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = m.explicit.iter().cloned().collect();
    if !m.auto {
        return out;
    }
    let existing: std::collections::HashSet<&str> = m.existing.iter().map(String::as_str).collect();
    let rels: Vec<&'a str> = rels.filter_map(table_prefix).collect();
    let in_backup: std::collections::HashSet<&str> = rels.iter().copied().collect();
    let key = |d: &'a str| -> Option<(&'a str, &'a str)> {
        let (ks, name) = d.split_once('/')?;
        Some((ks, table_and_id(name)?.0))
    };
    let mut there: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for d in &m.existing {
        if in_backup.contains(d.as_str()) {
            continue;
        }
        if let Some(k) = key(d.as_str()) {
            there.entry(k).or_default().push(d.as_str());
        }
    }
    let mut wanted: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for rel in rels {
        if out.contains_key(rel) || existing.contains(rel) {
            continue;
        }
        if let Some(k) = key(rel) {
            let v = wanted.entry(k).or_default();
            if !v.contains(&rel) {
                v.push(rel);
            }
        }
    }
    for (k, from) in wanted {
        let Some(to) = there.get(&k) else {
            if m.existing.iter().any(|d| key(d) == Some(k)) {
                tracing::info!(
                    "{}: not mapped into TARGET's {}/{} directory, which has a backup of its own (a dropped table?); restored under its own name, which Cassandra ignores",
                    crate::restore::escape(&from.join(", ")),
                    crate::restore::escape(k.0),
                    crate::restore::escape(k.1),
                );
            }
            continue;
        };
        match (&from[..], &to[..]) {
            ([from], [to]) => {
                out.insert(from.to_string(), to.to_string());
            }
            _ => tracing::warn!(
                "{}/{}: backup directories {:?} and TARGET directories {:?}: ambiguous, not mapped (use --map-table OLD=NEW)",
                crate::restore::escape(k.0),
                crate::restore::escape(k.1),
                from,
                to
            ),
        }
    }
    out
}
