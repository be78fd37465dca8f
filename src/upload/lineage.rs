//! What the compactions of each table directory replaced, remembered past their transaction
//! logs (Cassandra deletes a log right after the inputs it removed). A compaction's output
//! holds its inputs' data, so while the output uploads (hours for 200 GB) the inputs, still
//! stored and named by the last listing, stand in for it and the directory's other indexes
//! need not wait (issue #15, item 13).
//!
//! Two sources, the exact one first:
//! - the log itself, read when a record is appended (the daemon) or when a listing sees it:
//!   `ADD` = outputs, `REMOVE` = inputs, once `COMMIT`ted;
//! - when the log is gone before its COMMIT could be read: the SSTables of its table
//!   deleted while it was open, on any data directory (JBOD). Cassandra deletes a
//!   compaction's inputs after its COMMIT and before its log, so they are all among them;
//!   others deleted meanwhile (another compaction's inputs) only make the set larger, and
//!   an output stands in only when the last listing names every SSTable of the set, so a
//!   larger set never lets an output be left out whose data is not named.
//!
//! Pure state: no I/O here.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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
    output_paths: BTreeSet<String>,
    gone: BTreeSet<String>,
    /// Its outputs deleted while it was open: it aborted.
    outputs_gone: BTreeSet<String>,
}

/// Whether two table directories are the same table (on two data directories, JBOD):
/// the same `keyspace/table-id` at their end. A compaction's inputs may be on any of them.
fn same_table(a: &Path, b: &Path) -> bool {
    a == b || table_of(a) == table_of(b)
}

/// `keyspace/table-id`: what names a table on every data directory.
fn table_of(p: &Path) -> (Option<&std::ffi::OsStr>, Option<&std::ffi::OsStr>) {
    (p.parent().and_then(Path::file_name), p.file_name())
}

/// An input held on (JBOD): its directory and SSTable name.
type Holder = (PathBuf, String);

/// A directory's inputs held on (JBOD), each with what it waits for: outputs in other
/// directories (`DIR/nb-3-big`) or the logs of compactions that took them again. Stored
/// beside the directory's restore points (`crate::layout::HOLDS_NAME`) so that a restart
/// does not forget them.
pub type Holds = BTreeMap<String, BTreeSet<PathBuf>>;

/// See the module doc.
#[derive(Debug, Default)]
pub struct Lineages {
    done: HashMap<PathBuf, VecDeque<Lineage>>,
    open: HashMap<PathBuf, Open>,
    /// JBOD: per directory, its inputs that stay named while what holds their data in
    /// another directory is not named there yet: the outputs (paths without the trailing
    /// `-`), or, for an output compacted again before any index named it, the logs of the
    /// table open then (their outputs, once known, take over).
    held: HashMap<PathBuf, HashMap<String, BTreeSet<PathBuf>>>,
    /// The other way round: for each output or log waited for, who waits.
    waiting: HashMap<PathBuf, BTreeSet<Holder>>,
    /// The directories of each table in `done` (JBOD: several).
    tables: HashMap<(std::ffi::OsString, std::ffi::OsString), BTreeSet<PathBuf>>,
}

impl Lineages {
    /// The log at `log` (a transaction log of a table directory) was read: `parsed`.
    /// Returns the directories whose held inputs were released (see [`Self::named`]).
    pub fn log_read(&mut self, log: &Path, parsed: &TxnLog) -> Vec<PathBuf> {
        let Some(dir) = log.parent() else {
            return vec![];
        };
        match parsed.state {
            TxnState::Committed => {
                self.open.remove(log);
                let l = parsed.lineage().expect("a committed log has a lineage");
                let outputs = l.output_paths.clone();
                self.record(dir, l);
                self.pass_on(log, &outputs)
            }
            TxnState::Aborted => {
                self.open.remove(log);
                self.pass_on(log, &BTreeSet::new())
            }
            TxnState::InProgress => {
                if !self.open.contains_key(log) && self.open.len() >= MAX_OPEN {
                    self.forget_open();
                }
                let o = self.open.entry(log.to_path_buf()).or_default();
                o.outputs.extend(parsed.added.iter().cloned());
                o.output_paths.extend(parsed.added_paths.iter().cloned());
                vec![]
            }
        }
    }

    /// A file of SSTable `sstable` in `dir` was deleted. Returns the directories whose
    /// held inputs were released: it was an output they waited for, deleted before any
    /// index named it, and nothing holds its data now (a TRUNCATE, an abort). When a
    /// compaction took it as an input, its outputs are waited for instead.
    pub fn file_gone(&mut self, dir: &Path, sstable: &str) -> Vec<PathBuf> {
        // An open log's own output deleted is its abort: no other compaction's input.
        let aborted = self.open.iter().any(|(log, o)| {
            log.parent().is_some_and(|d| same_table(d, dir)) && o.outputs.contains(sstable)
        });
        for (log, o) in self.open.iter_mut() {
            if !log.parent().is_some_and(|d| same_table(d, dir)) {
                continue;
            }
            if o.outputs.contains(sstable) {
                o.outputs_gone.insert(sstable.to_string());
            } else if !aborted {
                o.gone.insert(sstable.to_string());
            }
        }
        let key = dir.join(sstable);
        let Some(holders) = self.unwait(&key) else {
            return vec![];
        };
        // Its successor: a finished compaction of the table that took it as an input, else
        // every log of the table open now (one of them committed it, its COMMIT not read).
        let mut next: BTreeSet<PathBuf> = self
            .of_table(dir)
            .filter(|l| l.inputs.contains(sstable))
            .flat_map(|l| l.output_paths.iter().map(PathBuf::from))
            .collect();
        if next.is_empty() {
            next = self
                .open
                .keys()
                .filter(|log| log.parent().is_some_and(|d| same_table(d, dir)))
                .cloned()
                .collect();
        }
        self.hold(&holders, &next);
        self.released(holders)
    }

    /// An index of `dir` naming the SSTables `named` was stored. Returns the directories
    /// whose inputs held on for one of them and can now be left out.
    pub fn named<'a>(
        &mut self,
        dir: &Path,
        named: impl IntoIterator<Item = &'a str>,
    ) -> Vec<PathBuf> {
        if self.waiting.is_empty() {
            return vec![];
        }
        let mut out = BTreeSet::new();
        for s in named {
            let key = dir.join(s);
            if let Some(holders) = self.unwait(&key) {
                out.extend(self.released(holders));
            }
        }
        out.into_iter().collect()
    }

    /// The SSTables of `dir` that stay named while what holds their data in another
    /// directory is not named there yet.
    pub fn held_elsewhere(&self, dir: &Path) -> BTreeSet<String> {
        self.held
            .get(dir)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// What `dir`'s held inputs wait for (see [`Holds`]).
    pub fn holds(&self, dir: &Path) -> Holds {
        self.held
            .get(dir)
            .map(|m| {
                m.iter()
                    .filter(|(_, w)| !w.is_empty())
                    .map(|(i, w)| (i.clone(), w.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// After a restart: `dir`'s inputs wait again for what `holds` (stored by the run
    /// before) says they waited for, as far as it still holds: only outputs (a log's
    /// outputs are not known now), complete on disk (`complete`: one deleted since holds no
    /// data, and nothing would ever release the input), and not yet named by their
    /// directory's newest restore point (`named`); only inputs gone from disk
    /// (`gone`). Returns what it holds now.
    pub fn restore_holds(
        &mut self,
        dir: &Path,
        holds: &Holds,
        complete: impl Fn(&Path) -> bool,
        named: impl Fn(&Path) -> bool,
        gone: impl Fn(&str) -> bool,
    ) -> Holds {
        let mut now = Holds::new();
        for (input, keys) in holds {
            if !gone(input) {
                continue;
            }
            let keys: BTreeSet<PathBuf> = keys
                .iter()
                .filter(|k| {
                    k.extension().is_none_or(|e| e != "log")
                        && k.parent().is_some_and(|d| d != dir)
                        && complete(k)
                        && !named(k)
                })
                .cloned()
                .collect();
            if keys.is_empty() {
                continue;
            }
            if let (Some(k), Some(t)) = table_of(dir) {
                self.tables
                    .entry((k.to_os_string(), t.to_os_string()))
                    .or_default()
                    .insert(dir.to_path_buf());
            }
            self.hold(&[(dir.to_path_buf(), input.clone())], &keys);
            now.insert(input.clone(), keys);
        }
        now
    }

    /// The log at `log` was deleted: if its end was not read, what it replaced is taken
    /// from the deletions seen while it was open (see the module doc): none for a flush.
    /// (An abort deletes its outputs, which are not inputs; what is recorded of them then
    /// does not matter, they are gone.) Returns the directories whose held inputs were
    /// released.
    pub fn log_gone(&mut self, log: &Path) -> Vec<PathBuf> {
        let Some(mut o) = self.open.remove(log) else {
            return self.pass_on(log, &BTreeSet::new());
        };
        let Some(dir) = log.parent() else {
            return vec![];
        };
        // Outputs deleted before their log: an abort (Cassandra deletes outputs only
        // then); they replaced nothing.
        o.outputs.retain(|s| !o.outputs_gone.contains(s));
        o.output_paths.retain(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| !o.outputs_gone.contains(n))
        });
        if o.outputs.is_empty() {
            return self.pass_on(log, &BTreeSet::new());
        }
        let outputs = o.output_paths.clone();
        self.record(
            dir,
            Lineage {
                outputs: o.outputs,
                inputs: o.gone,
                output_paths: o.output_paths,
            },
        );
        self.pass_on(log, &outputs)
    }

    /// Remembers that the `outputs` of a transaction of `dir` replaced its `inputs`; on
    /// JBOD the inputs hold on until the outputs in other directories are named there.
    pub fn record(&mut self, dir: &Path, l: Lineage) {
        if let (Some(k), Some(t)) = table_of(dir) {
            self.tables
                .entry((k.to_os_string(), t.to_os_string()))
                .or_default()
                .insert(dir.to_path_buf());
        }
        let v = self.done.entry(dir.to_path_buf()).or_default();
        if v.contains(&l) {
            return;
        }
        if v.len() >= MAX_LINEAGE {
            v.pop_front();
        }
        v.push_back(l.clone());
        if l.inputs.is_empty() {
            return;
        }
        let elsewhere: BTreeSet<PathBuf> = l
            .output_paths
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.parent() != Some(dir))
            .collect();
        if !elsewhere.is_empty() {
            let holders: Vec<Holder> = l
                .inputs
                .iter()
                .map(|i| (dir.to_path_buf(), i.clone()))
                .collect();
            self.hold(&holders, &elsewhere);
        }
    }

    /// `holders` wait for each of `keys` too.
    fn hold(&mut self, holders: &[Holder], keys: &BTreeSet<PathBuf>) {
        if keys.is_empty() || holders.is_empty() {
            return;
        }
        if self.waiting.len() >= MAX_OPEN {
            // Bounded: past it, inputs are no longer held on (as before a restart).
            self.waiting.clear();
            self.held.clear();
        }
        for (d, i) in holders {
            self.held
                .entry(d.clone())
                .or_default()
                .entry(i.clone())
                .or_default()
                .extend(keys.iter().cloned());
        }
        for k in keys {
            self.waiting
                .entry(k.clone())
                .or_default()
                .extend(holders.iter().cloned());
        }
    }

    /// No one waits for `key` any more: who did.
    fn unwait(&mut self, key: &Path) -> Option<Vec<Holder>> {
        let holders: Vec<Holder> = self.waiting.remove(key)?.into_iter().collect();
        for (d, i) in &holders {
            if let Some(m) = self.held.get_mut(d) {
                if let Some(w) = m.get_mut(i) {
                    w.remove(key);
                }
            }
        }
        Some(holders)
    }

    /// The directories of `holders` with an input that waits for nothing now: it is
    /// released.
    fn released(&mut self, holders: Vec<Holder>) -> Vec<PathBuf> {
        let mut out = BTreeSet::new();
        for (d, i) in holders {
            let Some(m) = self.held.get_mut(&d) else {
                continue;
            };
            if m.get(&i).is_some_and(BTreeSet::is_empty) {
                m.remove(&i);
                out.insert(d.clone());
            }
            if m.is_empty() {
                self.held.remove(&d);
            }
        }
        out.into_iter().collect()
    }

    /// The log `log` is finished: who waited for it (an output it compacted again) waits
    /// for its `outputs` instead (none: released).
    fn pass_on(&mut self, log: &Path, outputs: &BTreeSet<String>) -> Vec<PathBuf> {
        let Some(holders) = self.unwait(log) else {
            return vec![];
        };
        let next: BTreeSet<PathBuf> = outputs.iter().map(PathBuf::from).collect();
        self.hold(&holders, &next);
        self.released(holders)
    }

    /// Events were lost (an inotify overflow): what was deleted while a log was open is no
    /// longer known, so no open log's lineage is inferred, and whoever waited for one is
    /// released.
    pub fn forget_open(&mut self) -> Vec<PathBuf> {
        let logs: Vec<PathBuf> = self.open.drain().map(|(k, _)| k).collect();
        let mut out = BTreeSet::new();
        for l in logs {
            out.extend(self.pass_on(&l, &BTreeSet::new()));
        }
        out.into_iter().collect()
    }

    /// What the finished transactions of `dir`'s table replaced, on every data directory.
    fn of_table<'a>(&'a self, dir: &Path) -> impl Iterator<Item = &'a Lineage> + 'a {
        let dirs: Vec<&PathBuf> = match table_of(dir) {
            (Some(k), Some(t)) => self
                .tables
                .get(&(k.to_os_string(), t.to_os_string()))
                .into_iter()
                .flatten()
                .collect(),
            _ => vec![],
        };
        dirs.into_iter()
            .filter_map(|d| self.done.get(d))
            .flat_map(|v| v.iter())
    }

    /// The inputs of every finished transaction of `dir`'s table that output `sstable`;
    /// None if it is the output of none known (a compaction before this run).
    pub fn inputs_of(&self, dir: &Path, sstable: &str) -> Option<BTreeSet<String>> {
        // A table's SSTable names are unique across its data directories (JBOD): its
        // transaction may have been seen in another one.
        let mut found = None;
        for l in self.of_table(dir).filter(|l| l.outputs.contains(sstable)) {
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
        // Without every input named, the output is waited for; and a deletion after the
        // log is gone is no input of it.
        l.file_gone(dir, "nb-7-big");
        assert!(!l.stands_in(dir, "nb-3-big", &named(&["nb-1-big"])));
        assert!(l.stands_in(dir, "nb-3-big", &named(&["nb-1-big", "nb-2-big"])));
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

    /// What a run held on survives a restart through [`Lineages::holds`] (stored) and
    /// [`Lineages::restore_holds`], as far as it still holds.
    #[test]
    fn holds_are_restored_after_a_restart_while_they_still_hold() {
        let (d1, d2) = (Path::new("/d1/ks/t-1"), Path::new("/d2/ks/t-1"));
        let committed = log(&[
            (RecordType::Add, "/d1/ks/t-1/nb-3-big"),
            (RecordType::Remove, "/d2/ks/t-1/nb-1-big"),
            (RecordType::Commit, ""),
        ]);
        let mut before = Lineages::default();
        before.log_read(&d2.join("nb_txn_compaction_1.log"), &committed);
        let stored = before.holds(d2);
        let out3 = PathBuf::from("/d1/ks/t-1/nb-3-big");
        assert_eq!(
            stored,
            Holds::from([("nb-1-big".to_string(), BTreeSet::from([out3.clone()]))])
        );
        assert!(before.holds(d1).is_empty());

        let mut l = Lineages::default();
        let now = l.restore_holds(d2, &stored, |_| true, |_| false, |_| true);
        assert_eq!(now, stored);
        assert_eq!(l.held_elsewhere(d2), ["nb-1-big".to_string()].into());
        assert_eq!(l.holds(d2), stored);
        // Released as in the run before: disk 1's index names the output.
        assert_eq!(l.named(d1, ["nb-3-big"]), vec![d2.to_path_buf()]);
        assert!(l.held_elsewhere(d2).is_empty() && l.holds(d2).is_empty());

        // Nothing is held when the output is named already, gone from disk (nothing would
        // release the input), or the input is on disk; nor for a log.
        for (complete, named, gone) in [
            (true, true, true),
            (false, false, true),
            (true, false, false),
        ] {
            let mut l = Lineages::default();
            let now = l.restore_holds(d2, &stored, |_| complete, |_| named, |_| gone);
            assert!(now.is_empty() && l.held_elsewhere(d2).is_empty());
        }
        let by_log = Holds::from([(
            "nb-1-big".to_string(),
            BTreeSet::from([PathBuf::from("/d1/ks/t-1/nb_txn_compaction_2.log")]),
        )]);
        let mut l = Lineages::default();
        assert!(
            l.restore_holds(d2, &by_log, |_| true, |_| false, |_| true)
                .is_empty()
        );
    }

    #[test]
    fn a_jbod_input_is_held_until_its_output_is_named_or_gone_on_the_other_disk() {
        let (d1, d2) = (Path::new("/d1/ks/t-1"), Path::new("/d2/ks/t-1"));
        let committed = log(&[
            (RecordType::Add, "/d1/ks/t-1/nb-3-big"),
            (RecordType::Remove, "/d2/ks/t-1/nb-1-big"),
            (RecordType::Remove, "/d1/ks/t-1/nb-2-big"),
            (RecordType::Commit, ""),
        ]);
        let mut l = Lineages::default();
        l.log_read(&d1.join("nb_txn_compaction_1.log"), &committed);
        l.log_read(&d2.join("nb_txn_compaction_1.log"), &committed);
        // Disk 1's own inputs are the partial rule's business; disk 2 holds its input.
        assert_eq!(l.held_elsewhere(d1), BTreeSet::new());
        assert_eq!(
            l.held_elsewhere(d2),
            ["nb-1-big".to_string(), "nb-2-big".to_string()].into()
        );
        // An index of disk 1 naming something else releases nothing.
        assert!(l.named(d1, ["nb-4-big"]).is_empty());
        assert_eq!(
            l.named(d1, ["nb-3-big", "nb-4-big"]),
            vec![d2.to_path_buf()]
        );
        assert_eq!(l.held_elsewhere(d2), BTreeSet::new());

        // Inferred (the COMMIT not read): the same, and an output deleted before any index
        // named it (aborted, compacted again) releases its inputs too.
        let mut l = Lineages::default();
        let open = log(&[(RecordType::Add, "/d1/ks/t-1/nb-3-big")]);
        l.log_read(&d2.join("nb_txn_compaction_1.log"), &open);
        l.file_gone(d2, "nb-1-big");
        l.log_gone(&d2.join("nb_txn_compaction_1.log"));
        assert_eq!(l.held_elsewhere(d2), ["nb-1-big".to_string()].into());
        assert_eq!(l.file_gone(d1, "nb-3-big"), vec![d2.to_path_buf()]);
        assert_eq!(l.held_elsewhere(d2), BTreeSet::new());
    }
}
