//! What a directory's restore point names, as a pure function of what is known when it is
//! written: the directory's view ([`DirView`]), which of its files were just made durable,
//! what the last restore point named, and what the directory's compactions replaced
//! ([`Lineages`]). [`super::Uploader`] does the I/O (reads the directory, uploads, PUTs the
//! listing); the rules live here, where a property test holds them against a reference
//! model of a table's data over time on two data directories (flushes, compactions
//! committed, aborted and cleaned up in any interleaving, with or without their COMMIT
//! seen, across the directories, truncates, uploads finishing in any order, refused
//! outputs, kills and restarts of the daemon).
//!
//! The rules:
//! - complete SSTables, each named whole or not at all, and only with every file durable;
//!   never a file of an SSTable still being written or aborted;
//! - a compaction output not stored yet whose inputs the last listing names does not hold
//!   the listing back ([`stand_ins`]);
//! - while a complete SSTable is not named (standing in, refused, unreadable), the SSTables
//!   the last listing named that are gone or obsolete stay named, whole: they may hold its
//!   data, and their objects are stored;
//! - on JBOD, an input whose output is in another data directory and not named there yet
//!   stays named too;
//! - but nothing the last listing named is kept once the table was truncated or dropped
//!   after it (its `truncated-`/`dropped-` snapshot is newer): all of it is dead, whatever
//!   a restart forgot of lineage;
//! - otherwise what is gone is no longer named (no zombie, no truncated data back).

use std::collections::BTreeSet;
use std::path::Path;

use crate::cassandra::{DirView, NotComplete, parse_name};
use crate::layout::Names;

use super::lineage::Lineages;

/// The complete SSTables of `view` that an index written for `own` (the SSTables whose
/// Data.db it is written for) does not wait for: outputs of a finished compaction of `dir`
/// that `previous` (the last listing) does not name yet, while it names every input. Their
/// data is in that listing; their own Data.db brings the index that names them once they
/// are stored (issue #15, item 13).
pub fn stand_ins(
    dir: &Path,
    view: &DirView,
    own: &BTreeSet<String>,
    previous: Option<&Names>,
    lineage: &Lineages,
) -> BTreeSet<String> {
    let Some(previous) = previous else {
        return BTreeSet::new();
    };
    let named: BTreeSet<&str> = previous
        .iter()
        .filter_map(parse_name)
        .map(|f| f.sstable)
        .collect();
    view.sstables
        .values()
        .filter(|s| s.state.is_ok() && !own.contains(&s.name))
        .filter(|s| !named.contains(s.name.as_str()))
        .filter(|s| lineage.stands_in(dir, &s.name, &named))
        .map(|s| s.name.clone())
        .collect()
}

/// What a restore point is written from.
pub struct Facts<'a> {
    pub view: &'a DirView,
    /// The nameable files of `view` that are durable now (uploaded, or stored with these
    /// bytes), the filter's and settledness already applied.
    pub durable: &'a [String],
    /// What the last listing of the directory named.
    pub previous: Option<&'a Names>,
    /// The SSTables standing in ([`stand_ins`]): not named, not waited for.
    pub later: &'a BTreeSet<String>,
    /// Files removed after their upload (`--delete-on-backup`): named on.
    pub kept: Option<&'a BTreeSet<String>>,
    /// The include/exclude filter.
    pub accepts: &'a dyn Fn(&str) -> bool,
    /// Whether a file of the directory exists now.
    pub on_disk: &'a dyn Fn(&str) -> bool,
    /// The directory, and what its compactions replaced.
    pub dir: &'a Path,
    pub lineage: &'a Lineages,
    /// SSTables of the directory whose outputs are in another data directory and not
    /// named there yet (JBOD, [`Lineages::held_elsewhere`]): named on while gone.
    pub held: &'a BTreeSet<String>,
    /// The table was truncated or dropped after `previous` was written: nothing it named
    /// that is gone is kept.
    pub after_truncate: bool,
}

/// A restore point's names, and the complete SSTables it leaves out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Point {
    /// Sorted, no duplicates.
    pub names: Vec<String>,
    /// Complete SSTables with a file not durable (or standing in): not named.
    pub partial: BTreeSet<String>,
}

/// See the module doc.
pub fn restore_point(f: &Facts) -> Point {
    let durable: BTreeSet<&str> = f.durable.iter().map(String::as_str).collect();
    let in_later = |n: &str| parse_name(n).is_some_and(|p| f.later.contains(p.sstable));
    let mut names: Vec<String> = f.durable.iter().filter(|n| !in_later(n)).cloned().collect();
    let partial: BTreeSet<String> = f
        .view
        .sstables
        .values()
        .filter(|s| {
            s.state.is_ok()
                && (f.later.contains(&s.name)
                    || s.files
                        .iter()
                        .any(|n| (f.accepts)(n) && !durable.contains(n.as_str())))
        })
        .map(|s| s.name.clone())
        .collect();
    names.retain(|n| parse_name(n).is_none_or(|p| !partial.contains(p.sstable)));
    if (!partial.is_empty() || !f.held.is_empty()) && !f.after_truncate {
        let previous: Vec<&str> = f.previous.into_iter().flat_map(Names::iter).collect();
        let obsolete = |n: &str| {
            parse_name(n)
                .and_then(|p| f.view.sstables.get(p.sstable))
                .is_some_and(|s| matches!(s.state, Err(NotComplete::Obsolete { .. })))
        };
        let gone: BTreeSet<&str> = previous
            .iter()
            .copied()
            .filter(|n| obsolete(n) || !(f.on_disk)(n))
            .collect();
        let gone_sstables: BTreeSet<&str> = gone
            .iter()
            .filter_map(|n| parse_name(n))
            .map(|p| p.sstable)
            .collect();
        let left_out: BTreeSet<String> = partial.union(f.held).cloned().collect();
        let sources = sources(f, &left_out);
        for n in previous {
            let back = match parse_name(n) {
                Some(p) => {
                    gone_sstables.contains(p.sstable)
                        && sources.as_ref().is_none_or(|s| s.contains(p.sstable))
                }
                None => !partial.is_empty() && gone.contains(n),
            };
            if back && (f.accepts)(n) {
                names.push(n.to_string());
            }
        }
    }
    if let Some(kept) = f.kept {
        names.extend(kept.iter().filter(|n| (f.accepts)(n)).cloned());
    }
    names.sort();
    names.dedup();
    Point { names, partial }
}

/// The SSTables the last listing named that hold the data of `left_out` (SSTables not
/// named now: partial, or held for another directory): each itself if named, else its
/// inputs by lineage (through outputs never named, a compaction of a compaction); None
/// when the lineage of one of them is not known (a compaction before this run): then every
/// SSTable it named that is gone may hold it. So a truncated SSTable does not come back
/// while an unrelated output cannot be stored.
fn sources(f: &Facts, left_out: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let named: BTreeSet<&str> = f
        .previous
        .into_iter()
        .flat_map(Names::iter)
        .filter_map(parse_name)
        .map(|p| p.sstable)
        .collect();
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = left_out.iter().cloned().collect();
    while let Some(s) = stack.pop() {
        if !seen.insert(s.clone()) {
            continue;
        }
        if named.contains(s.as_str()) {
            out.insert(s);
            continue;
        }
        stack.extend(f.lineage.inputs_of(f.dir, &s)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests;
