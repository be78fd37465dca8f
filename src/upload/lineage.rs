//! What the compactions of each table directory replaced, remembered past their transaction
//! logs (Cassandra deletes a log right after the inputs it removed). A compaction's output
//! holds its inputs' data, so while the output uploads (hours for 200 GB) the inputs, still
//! stored and named by the last listing, stand in for it and the directory's other indexes
//! need not wait (issue #15, item 13).
//!
//! Two sources, the exact one first:
//! - the log itself, read when a record is appended (the daemon) or when a listing sees it:
//!   `ADD` = outputs, `REMOVE` = inputs, once `COMMIT`ted;
//! - when the log is gone before its COMMIT could be read: the SSTables deleted in its
//!   directory while it was open. Cassandra deletes a compaction's inputs after its COMMIT
//!   and before its log, so they are all among them; others deleted meanwhile (another
//!   compaction's inputs) only make the set larger, and an output stands in only when the
//!   last listing names every SSTable of the set, so a larger set never lets an output be
//!   left out whose data is not named.
//!
//! Pure state: no I/O here.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::cassandra::{Lineage, TxnLog, TxnState};

/// At most this many finished transactions are remembered per directory (an output is
/// stored within hours; hundreds of compactions do not finish in one table meanwhile).
pub const MAX_LINEAGE: usize = 256;
/// At most this many logs are followed at once (more means deletions were missed: an
/// inotify overflow); past it all are forgotten, which only makes indexes wait again.
pub const MAX_OPEN: usize = 4096;

#[derive(Debug, Default)]
struct Open {
    outputs: BTreeSet<String>,
    gone: BTreeSet<String>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Lineages {
    done: HashMap<PathBuf, VecDeque<Lineage>>,
    open: HashMap<PathBuf, Open>,
}

impl Lineages {
    /// The log at `log` (a transaction log of a table directory) was read: `parsed`.
    pub fn log_read(&mut self, log: &Path, parsed: &TxnLog) {
        let Some(dir) = log.parent() else { return };
        match parsed.state {
            TxnState::Committed => {
                self.open.remove(log);
                if let Some(l) = parsed.lineage() {
                    self.record(dir, l);
                }
            }
            TxnState::Aborted => {
                self.open.remove(log);
            }
            TxnState::InProgress => {
                if !self.open.contains_key(log) && self.open.len() >= MAX_OPEN {
                    self.open.clear();
                }
                self.open
                    .entry(log.to_path_buf())
                    .or_default()
                    .outputs
                    .extend(parsed.added.iter().cloned());
            }
        }
    }

    /// A file of SSTable `sstable` in `dir` was deleted.
    pub fn file_gone(&mut self, dir: &Path, sstable: &str) {
        for (log, o) in self.open.iter_mut() {
            if log.parent() == Some(dir) && !o.outputs.contains(sstable) {
                o.gone.insert(sstable.to_string());
            }
        }
    }

    /// The log at `log` was deleted: if its end was not read, what it replaced is taken
    /// from the deletions seen while it was open (see the module doc): none for a flush.
    /// (An abort deletes its outputs, which are not inputs; what is recorded of them then
    /// does not matter, they are gone.)
    pub fn log_gone(&mut self, log: &Path) {
        let Some(o) = self.open.remove(log) else {
            return;
        };
        let Some(dir) = log.parent() else { return };
        if o.outputs.is_empty() {
            return;
        }
        self.record(
            dir,
            Lineage {
                outputs: o.outputs,
                inputs: o.gone,
            },
        );
    }

    /// Remembers that the `outputs` of a transaction of `dir` replaced its `inputs`.
    pub fn record(&mut self, dir: &Path, l: Lineage) {
        let v = self.done.entry(dir.to_path_buf()).or_default();
        if v.contains(&l) {
            return;
        }
        if v.len() >= MAX_LINEAGE {
            v.pop_front();
        }
        v.push_back(l);
    }

    /// The inputs of every finished transaction of `dir` that output `sstable`; None if it
    /// is the output of none known (a flush, a compaction before this run).
    pub fn inputs_of(&self, dir: &Path, sstable: &str) -> Option<BTreeSet<String>> {
        let mut found = None;
        for l in self
            .done
            .get(dir)?
            .iter()
            .filter(|l| l.outputs.contains(sstable))
        {
            found
                .get_or_insert_with(BTreeSet::new)
                .extend(l.inputs.iter().cloned());
        }
        found
    }

    /// Whether SSTable `sstable` of `dir` is the output of a finished compaction (with
    /// inputs: never a flush) whose every input is in `named`.
    pub fn stands_in(&self, dir: &Path, sstable: &str, named: &BTreeSet<&str>) -> bool {
        self.done.get(dir).is_some_and(|v| {
            v.iter().any(|l| {
                l.outputs.contains(sstable)
                    && !l.inputs.is_empty()
                    && l.inputs.iter().all(|i| named.contains(i.as_str()))
            })
        })
    }

    /// Events were lost (an inotify overflow): what was deleted while a log was open is no
    /// longer known, so no open log's lineage is inferred.
    pub fn forget_open(&mut self) {
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::parse_txn_log;
    use crate::cassandra::{Record, RecordType};

    fn log(records: &[(RecordType, &str)]) -> TxnLog {
        let body: String = records
            .iter()
            .map(|(k, p)| format!("{}\n", Record::new(*k, p)))
            .collect();
        parse_txn_log(body.as_bytes())
    }

    fn named<'a>(v: &[&'a str]) -> BTreeSet<&'a str> {
        v.iter().copied().collect()
    }

    const LOG: &str = "/d/ks/t-1/nb_txn_compaction_1.log";

    #[test]
    fn a_committed_log_read_names_exactly_its_inputs() {
        let mut l = Lineages::default();
        let dir = Path::new("/d/ks/t-1");
        l.log_read(
            Path::new(LOG),
            &log(&[
                (RecordType::Add, "/d/ks/t-1/nb-3-big"),
                (RecordType::Remove, "/d/ks/t-1/nb-1-big"),
                (RecordType::Remove, "/d/ks/t-1/nb-2-big"),
                (RecordType::Commit, ""),
            ]),
        );
        assert!(l.stands_in(dir, "nb-3-big", &named(&["nb-1-big", "nb-2-big"])));
        // An input the last listing does not name: the output's data is nowhere else.
        assert!(!l.stands_in(dir, "nb-3-big", &named(&["nb-1-big"])));
        assert!(!l.stands_in(dir, "nb-4-big", &named(&["nb-1-big", "nb-2-big"])));
        assert!(!l.stands_in(
            Path::new("/d/ks/t-2"),
            "nb-3-big",
            &named(&["nb-1-big", "nb-2-big"])
        ));
    }

    #[test]
    fn a_log_gone_before_its_commit_was_read_takes_the_deletions_seen_meanwhile() {
        let mut l = Lineages::default();
        let dir = Path::new("/d/ks/t-1");
        l.log_read(
            Path::new(LOG),
            &log(&[(RecordType::Add, "/d/ks/t-1/nb-3-big")]),
        );
        l.file_gone(dir, "nb-1-big");
        l.file_gone(Path::new("/d/ks/t-2"), "nb-9-big");
        l.file_gone(dir, "nb-2-big");
        // Not yet: the log is open, the inputs may not all be deleted.
        assert!(!l.stands_in(dir, "nb-3-big", &named(&["nb-1-big", "nb-2-big"])));
        l.log_gone(Path::new(LOG));
        assert!(l.stands_in(dir, "nb-3-big", &named(&["nb-1-big", "nb-2-big"])));
        // Every deletion seen counts: one the listing does not name keeps the output waited for.
        l.file_gone(dir, "nb-7-big");
        assert!(!l.stands_in(dir, "nb-3-big", &named(&["nb-1-big"])));
    }

    #[test]
    fn an_abort_or_a_flush_replaces_nothing() {
        let mut l = Lineages::default();
        let dir = Path::new("/d/ks/t-1");
        l.log_read(
            Path::new(LOG),
            &log(&[(RecordType::Add, "/d/ks/t-1/nb-3-big")]),
        );
        l.file_gone(dir, "nb-3-big");
        l.log_read(
            Path::new(LOG),
            &log(&[
                (RecordType::Add, "/d/ks/t-1/nb-3-big"),
                (RecordType::Abort, ""),
            ]),
        );
        l.log_gone(Path::new(LOG));
        assert!(!l.stands_in(dir, "nb-3-big", &named(&[])));
        // A log gone with nothing deleted meanwhile (a flush): new data, standing in for
        // nothing, known to come from no stored SSTable.
        l.log_read(
            Path::new(LOG),
            &log(&[(RecordType::Add, "/d/ks/t-1/nb-4-big")]),
        );
        l.log_gone(Path::new(LOG));
        assert!(!l.stands_in(dir, "nb-4-big", &named(&[])));
        assert_eq!(l.inputs_of(dir, "nb-4-big"), Some(BTreeSet::new()));
        assert_eq!(l.inputs_of(dir, "nb-5-big"), None);
        // After lost events, an open log's inputs are not guessed.
        l.log_read(
            Path::new(LOG),
            &log(&[(RecordType::Add, "/d/ks/t-1/nb-6-big")]),
        );
        l.forget_open();
        l.file_gone(dir, "nb-4-big");
        l.log_gone(Path::new(LOG));
        assert_eq!(l.inputs_of(dir, "nb-6-big"), None);
    }
}
