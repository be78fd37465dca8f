//! [`restore_point`] and [`stand_ins`] against a reference model of one table directory:
//! each SSTable holds a set of data tokens (a flush: a new one; a compaction's output: the
//! union of its inputs'), and each restore point is judged by the tokens it restores.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::cassandra::{Record, RecordType, parse_txn_log};

const DIR: &str = "/var/lib/cassandra/data/ks/t-1";
const COMPONENTS: [&str; 3] = ["Data.db", "Index.db", "TOC.txt"];
const TOC: &str = "Data.db\nIndex.db\nTOC.txt\n";

fn sst(g: u32) -> String {
    format!("nb-{g}-big")
}

fn files(g: u32) -> Vec<String> {
    COMPONENTS
        .iter()
        .map(|c| format!("{}-{c}", sst(g)))
        .collect()
}

fn generation(name: &str) -> u32 {
    parse_name(name).unwrap().id.parse().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// Added by an open compaction.
    Writing,
    Complete,
    /// Removed by a committed compaction whose log is still there.
    Obsolete,
}

#[derive(Debug, Clone)]
struct Txn {
    id: u32,
    output: u32,
    inputs: Vec<u32>,
    committed: bool,
}

impl Txn {
    fn log_name(&self) -> String {
        format!(
            "nb_txn_compaction_{:08x}-0a7f-11ef-9a2b-5b2d6c9d3a11.log",
            self.id
        )
    }
    fn body(&self) -> String {
        let rec = |k, g: u32| format!("{}\n", Record::new(k, &format!("{DIR}/{}", sst(g))));
        let mut b = rec(RecordType::Add, self.output);
        if self.committed {
            for i in &self.inputs {
                b += &rec(RecordType::Remove, *i);
            }
            b += &format!("{}\n", Record::new(RecordType::Commit, ""));
        }
        b
    }
}

#[derive(Default)]
struct Table {
    disk: BTreeMap<u32, On>,
    /// The data each SSTable holds (kept after it is deleted).
    tokens: BTreeMap<u32, BTreeSet<u32>>,
    txns: Vec<Txn>,
    next: u32,
    /// Objects in the store (none is ever overwritten or deleted here).
    durable: BTreeSet<String>,
    /// Outputs whose keys hold another node's files: never durable.
    refused: BTreeSet<u32>,
    previous: Option<BTreeSet<String>>,
    lineage: Lineages,
    points: usize,
}

#[derive(Debug, Clone)]
enum Op {
    Flush,
    /// Compact the complete SSTables picked by the mask (not already compacting).
    Start(u8),
    /// Commit the open compaction picked; its COMMIT read by the daemon or not; its output
    /// refused (another node's objects under its keys) or not.
    Commit(u8, bool, bool),
    /// Delete a committed compaction's inputs, then its log.
    Cleanup(u8),
    Abort(u8),
    Truncate,
    /// An upload of the picked complete SSTable finishes (its own Data.db's task).
    Upload(u8),
    /// An index for the picked complete SSTable's Data.db, or (None) a restore point.
    Index(Option<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Flush),
        2 => any::<u8>().prop_map(Op::Start),
        2 => (any::<u8>(), any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(i, seen, refused)| Op::Commit(i, seen, refused)),
        2 => any::<u8>().prop_map(Op::Cleanup),
        1 => any::<u8>().prop_map(Op::Abort),
        1 => prop::bool::weighted(0.3).prop_map(|t| if t { Op::Truncate } else { Op::Flush }),
        2 => any::<u8>().prop_map(Op::Upload),
        4 => prop::option::of(any::<u8>()).prop_map(Op::Index),
    ]
}

fn pick<T: Clone>(v: &[T], i: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[i as usize % v.len()].clone())
}

impl Table {
    fn dir() -> &'static Path {
        Path::new(DIR)
    }

    fn new_sstable(&mut self, on: On, tokens: BTreeSet<u32>) -> u32 {
        self.next += 1;
        self.disk.insert(self.next, on);
        self.tokens.insert(self.next, tokens);
        self.next
    }

    fn complete(&self) -> Vec<u32> {
        self.disk
            .iter()
            .filter(|(_, o)| **o == On::Complete)
            .map(|(g, _)| *g)
            .collect()
    }

    fn compacting(&self, g: u32) -> bool {
        self.txns
            .iter()
            .any(|t| t.inputs.contains(&g) || t.output == g)
    }

    fn gone(&mut self, g: u32) {
        self.disk.remove(&g);
        self.lineage.file_gone(Self::dir(), &sst(g));
    }

    fn log_path(t: &Txn) -> std::path::PathBuf {
        Self::dir().join(t.log_name())
    }

    fn view(&self) -> DirView {
        let mut names: Vec<String> = self.disk.keys().flat_map(|g| files(*g)).collect();
        names.extend(self.txns.iter().map(Txn::log_name));
        DirView::classify(names.iter().map(String::as_str), |n| {
            if n.ends_with("TOC.txt") {
                return Some(TOC.as_bytes().to_vec());
            }
            self.txns
                .iter()
                .find(|t| t.log_name() == n)
                .map(|t| t.body().into_bytes())
        })
    }

    fn apply(&mut self, o: Op) -> Result<(), TestCaseError> {
        match o {
            Op::Flush => {
                let token = self.next + 1000;
                let g = self.new_sstable(On::Complete, [token].into());
                // Its log: ADD, then COMMIT, then deleted (read or not).
                let log = Self::dir().join(format!("nb_txn_flush_{g:08x}.log"));
                let add = format!(
                    "{}\n",
                    Record::new(RecordType::Add, &format!("{DIR}/{}", sst(g)))
                );
                self.lineage.log_read(&log, &parse_txn_log(add.as_bytes()));
                self.lineage.log_gone(&log);
            }
            Op::Start(mask) => {
                let inputs: Vec<u32> = self
                    .complete()
                    .into_iter()
                    .filter(|g| !self.compacting(*g))
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
                    .map(|(_, g)| g)
                    .collect();
                if inputs.is_empty() {
                    return Ok(());
                }
                let tokens = inputs.iter().flat_map(|g| self.tokens[g].clone()).collect();
                let output = self.new_sstable(On::Writing, tokens);
                let t = Txn {
                    id: output,
                    output,
                    inputs,
                    committed: false,
                };
                // The daemon reads the log when its first record is appended.
                self.lineage
                    .log_read(&Self::log_path(&t), &parse_txn_log(t.body().as_bytes()));
                self.txns.push(t);
            }
            Op::Commit(i, seen, refused) => {
                let open: Vec<usize> = (0..self.txns.len())
                    .filter(|k| !self.txns[*k].committed)
                    .collect();
                let Some(k) = pick(&open, i) else {
                    return Ok(());
                };
                let t = &mut self.txns[k];
                t.committed = true;
                let t = t.clone();
                self.disk.insert(t.output, On::Complete);
                for g in &t.inputs {
                    self.disk.insert(*g, On::Obsolete);
                }
                if refused {
                    self.refused.insert(t.output);
                }
                if seen {
                    self.lineage
                        .log_read(&Self::log_path(&t), &parse_txn_log(t.body().as_bytes()));
                }
            }
            Op::Cleanup(i) => {
                let done: Vec<usize> = (0..self.txns.len())
                    .filter(|k| self.txns[*k].committed)
                    .collect();
                let Some(k) = pick(&done, i) else {
                    return Ok(());
                };
                let t = self.txns.remove(k);
                for g in &t.inputs {
                    self.gone(*g);
                }
                self.lineage.log_gone(&Self::log_path(&t));
            }
            Op::Abort(i) => {
                let open: Vec<usize> = (0..self.txns.len())
                    .filter(|k| !self.txns[*k].committed)
                    .collect();
                let Some(k) = pick(&open, i) else {
                    return Ok(());
                };
                let t = self.txns.remove(k);
                self.gone(t.output);
                self.lineage.log_gone(&Self::log_path(&t));
            }
            Op::Truncate => {
                // Cassandra stops the table's compactions first.
                for t in std::mem::take(&mut self.txns) {
                    if !t.committed {
                        self.gone(t.output);
                    }
                    self.lineage.log_gone(&Self::log_path(&t));
                }
                for g in self.disk.keys().copied().collect::<Vec<_>>() {
                    self.gone(g);
                }
            }
            Op::Upload(i) => {
                if let Some(g) = pick(&self.complete(), i) {
                    if !self.refused.contains(&g) {
                        self.durable.extend(files(g));
                    }
                    self.index(Some(g))?;
                }
            }
            Op::Index(own) => {
                let own = match own {
                    Some(i) => match pick(&self.complete(), i) {
                        Some(g) => Some(g),
                        None => return Ok(()),
                    },
                    None => None,
                };
                self.index(own)?;
            }
        }
        Ok(())
    }

    /// What [`super::super::Uploader`]'s index write does, with the model's I/O.
    fn index(&mut self, own: Option<u32>) -> Result<(), TestCaseError> {
        let view = self.view();
        for l in &view.committed {
            self.lineage.record(Self::dir(), l.clone());
        }
        let own_set: BTreeSet<String> = own.map(sst).into_iter().collect();
        let later = stand_ins(
            Self::dir(),
            &view,
            &own_set,
            self.previous.as_ref(),
            &self.lineage,
        );
        // Every nameable file not standing in is made durable (uploaded) first; a refused
        // output's files cannot be.
        let mut durable = vec![];
        for n in view.nameable() {
            let g = generation(&n);
            if later.contains(&sst(g)) {
                continue;
            }
            if !self.refused.contains(&g) {
                self.durable.insert(n.clone());
                durable.push(n);
            }
        }
        let on_disk = |n: &str| self.disk.contains_key(&generation(n));
        let point = restore_point(&Facts {
            view: &view,
            durable: &durable,
            previous: self.previous.as_ref(),
            later: &later,
            kept: None,
            accepts: &|_| true,
            on_disk: &on_disk,
            dir: Self::dir(),
            lineage: &self.lineage,
        });
        self.check(&view, &point)?;
        // Written (and then the daemon's last listing) when it goes under its own Data.db's
        // key, or as a restore point of its own when it names something else.
        let names: BTreeSet<String> = point.names.iter().cloned().collect();
        let written = match own {
            Some(g) => names.contains(&files(g)[0]),
            None => match &self.previous {
                Some(p) => *p != names,
                None => !view.sstables.is_empty(),
            },
        };
        if written {
            self.previous = Some(names);
            self.points += 1;
        }
        Ok(())
    }

    fn tokens_of<'a>(&self, gens: impl IntoIterator<Item = &'a u32>) -> BTreeSet<u32> {
        gens.into_iter()
            .flat_map(|g| self.tokens[g].iter().copied())
            .collect()
    }

    fn named_generations(names: &[String]) -> BTreeSet<u32> {
        names.iter().map(|n| generation(n)).collect()
    }

    fn check(&self, view: &DirView, point: &Point) -> Result<(), TestCaseError> {
        let named = Self::named_generations(&point.names);
        // Only objects stored, SSTables whole, never one being written.
        for n in &point.names {
            prop_assert!(self.durable.contains(n), "names {n}, never stored");
        }
        for g in &named {
            for f in files(*g) {
                prop_assert!(point.names.contains(&f), "names nb-{g} without {f}");
            }
            prop_assert!(
                self.disk.get(g) != Some(&On::Writing),
                "names nb-{g}, still being written"
            );
        }
        let complete = self.complete();
        let live = self.tokens_of(&complete);
        let restored = self.tokens_of(&named);
        // Safety: every complete SSTable that can be stored is covered, and so is whatever
        // the last restore point held that is still live.
        let storable: Vec<u32> = complete
            .iter()
            .copied()
            .filter(|g| !self.refused.contains(g))
            .collect();
        let mut required = self.tokens_of(&storable);
        if let Some(p) = &self.previous {
            let before = self.tokens_of(&Self::named_generations(
                &p.iter().cloned().collect::<Vec<_>>(),
            ));
            required.extend(before.intersection(&live).copied());
        }
        let lost: Vec<&u32> = required.difference(&restored).collect();
        prop_assert!(lost.is_empty(), "lost live data {lost:?}: {point:?}");
        // Nothing comes back that is no longer live (a truncate, a zombie).
        let dead: Vec<&u32> = restored.difference(&live).collect();
        prop_assert!(dead.is_empty(), "restores dead data {dead:?}: {point:?}");
        // With nothing left out, exactly the complete SSTables.
        if point.partial.is_empty() {
            prop_assert_eq!(&named, &complete.iter().copied().collect(), "{:?}", view);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Safety at every restore point, and liveness: once every output is stored and
    /// indexed, the newest restore point names exactly the complete SSTables (refused
    /// outputs aside, whose inputs stand in for them).
    #[test]
    fn restore_points_keep_live_data_and_only_it(ops in proptest::collection::vec(op(), 1..60)) {
        let mut t = Table::default();
        for o in ops {
            t.apply(o)?;
        }
        // Cassandra finishes its compactions; every upload finishes and indexes.
        for _ in 0..t.txns.len() {
            t.apply(Op::Commit(0, false, false))?;
            t.apply(Op::Cleanup(0))?;
        }
        for g in t.complete() {
            if !t.refused.contains(&g) {
                t.durable.extend(files(g));
                t.index(Some(g))?;
            }
        }
        t.index(None)?;
        if t.refused.iter().all(|g| !t.disk.contains_key(g)) {
            let named: BTreeSet<u32> = t
                .previous
                .iter()
                .flatten()
                .map(|n| generation(n))
                .collect();
            let complete: BTreeSet<u32> = t.complete().into_iter().collect();
            prop_assert_eq!(named, complete, "the newest restore point after {} written", t.points);
        }
    }
}
