//! [`restore_point`] and [`stand_ins`] against a reference model of one table on two data
//! directories (JBOD): each SSTable holds a set of data tokens (a flush: a new one; a
//! compaction's output: the union of its inputs', wherever they are), and each restore
//! point is judged by what the node's newest restore points restore together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::cassandra::{Record, RecordType, parse_txn_log};

const DIRS: [&str; 2] = [
    "/var/lib/cassandra/data/ks/t-1",
    "/mnt/disk2/cassandra/data/ks/t-1",
];
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

fn dir(d: usize) -> &'static Path {
    Path::new(DIRS[d])
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
    /// The directories its log is replicated in (every one it touches).
    replicas: BTreeSet<usize>,
}

#[derive(Default)]
struct Table {
    /// Where each SSTable on disk is, and how it stands.
    disk: BTreeMap<u32, (usize, On)>,
    /// The data each SSTable holds (kept after it is deleted).
    tokens: BTreeMap<u32, BTreeSet<u32>>,
    txns: Vec<Txn>,
    next: u32,
    /// Objects in the store (none is ever overwritten or deleted here).
    durable: BTreeSet<(usize, String)>,
    /// Outputs whose keys hold another node's files: never durable.
    refused: BTreeSet<u32>,
    /// Each directory's last listing.
    previous: [Option<BTreeSet<String>>; 2],
    lineage: Lineages,
    points: usize,
    /// What each directory's `tablesnap-held.json` says (stored by each listing).
    stored_holds: [crate::upload::lineage::Holds; 2],
    restarts: usize,
    /// Directories whose last listing predates a TRUNCATE (its auto-snapshot is newer).
    truncated: [bool; 2],
}

#[derive(Debug, Clone)]
enum Op {
    Flush(bool),
    /// Compact the complete SSTables picked by the mask (not already compacting) into an
    /// output on the directory picked.
    Start(u8, bool),
    /// Commit the open compaction picked; its COMMIT read by the daemon or not; its output
    /// refused (another node's objects under its keys) or not.
    Commit(u8, bool, bool),
    /// Delete a committed compaction's inputs, then its log.
    Cleanup(u8),
    Abort(u8),
    Truncate,
    /// An upload of the picked complete SSTable finishes (its own Data.db's task).
    Upload(u8),
    /// An index of the directory picked for the picked complete SSTable's Data.db, or
    /// (None) a restore point.
    Index(bool, Option<u8>),
    /// The daemon is killed and starts again: what it learnt of lineage is gone; the logs
    /// still on disk are read again, each directory's last listing and holds are read
    /// back from the store (`Uploader::restore_holds`).
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(Op::Flush),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(m, d)| Op::Start(m, d)),
        2 => (any::<u8>(), any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(i, seen, refused)| Op::Commit(i, seen, refused)),
        2 => any::<u8>().prop_map(Op::Cleanup),
        1 => any::<u8>().prop_map(Op::Abort),
        1 => prop::bool::weighted(0.3).prop_map(|t| if t { Op::Truncate } else { Op::Flush(false) }),
        2 => any::<u8>().prop_map(Op::Upload),
        4 => (any::<bool>(), prop::option::of(any::<u8>())).prop_map(|(d, o)| Op::Index(d, o)),
        1 => Just(Op::Restart),
    ]
}

fn pick<T: Clone>(v: &[T], i: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[i as usize % v.len()].clone())
}

impl Table {
    fn new_sstable(&mut self, d: usize, on: On, tokens: BTreeSet<u32>) -> u32 {
        self.next += 1;
        self.disk.insert(self.next, (d, on));
        self.tokens.insert(self.next, tokens);
        self.next
    }

    fn complete(&self) -> Vec<u32> {
        self.disk
            .iter()
            .filter(|(_, (_, o))| *o == On::Complete)
            .map(|(g, _)| *g)
            .collect()
    }

    fn complete_in(&self, d: usize) -> Vec<u32> {
        self.complete()
            .into_iter()
            .filter(|g| self.disk[g].0 == d)
            .collect()
    }

    fn compacting(&self, g: u32) -> bool {
        self.txns
            .iter()
            .any(|t| t.inputs.contains(&g) || t.output == g)
    }

    fn path(&self, g: u32) -> String {
        format!("{}/{}", DIRS[self.disk[&g].0], sst(g))
    }

    fn gone(&mut self, g: u32) {
        let (d, _) = self.disk.remove(&g).unwrap();
        // The daemon indexes the directories released by it when their turn comes.
        let _ = self.lineage.file_gone(dir(d), &sst(g));
    }

    fn log_name(t: &Txn) -> String {
        format!(
            "nb_txn_compaction_{:08x}-0a7f-11ef-9a2b-5b2d6c9d3a11.log",
            t.id
        )
    }

    fn body(&self, t: &Txn, paths: &BTreeMap<u32, String>) -> String {
        let rec = |k, g: u32| format!("{}\n", Record::new(k, &paths[&g]));
        let mut b = rec(RecordType::Add, t.output);
        if t.committed {
            for i in &t.inputs {
                b += &rec(RecordType::Remove, *i);
            }
            b += &format!("{}\n", Record::new(RecordType::Commit, ""));
        }
        b
    }

    /// Every replica of `t`'s log read now.
    fn read_logs(&mut self, t: &Txn, paths: &BTreeMap<u32, String>) {
        let body = self.body(t, paths);
        for d in &t.replicas {
            self.lineage.log_read(
                &dir(*d).join(Self::log_name(t)),
                &parse_txn_log(body.as_bytes()),
            );
        }
    }

    fn logs_gone(&mut self, t: &Txn) {
        for d in &t.replicas {
            self.lineage.log_gone(&dir(*d).join(Self::log_name(t)));
        }
        // A log's removal hurries its directory's listing, which stores what is held first
        // (`Uploader::store_holds`): a restart comes after that (a kill within those
        // milliseconds is the window the README states).
        for d in &t.replicas {
            self.stored_holds[*d] = self.lineage.holds(dir(*d));
        }
    }

    fn txn_paths(&self, t: &Txn) -> BTreeMap<u32, String> {
        std::iter::once(t.output)
            .chain(t.inputs.iter().copied())
            .filter(|g| self.disk.contains_key(g))
            .map(|g| (g, self.path(g)))
            .collect()
    }

    fn view(&self, d: usize) -> DirView {
        let mut names: Vec<String> = self
            .disk
            .iter()
            .filter(|(_, (dd, _))| *dd == d)
            .flat_map(|(g, _)| files(*g))
            .collect();
        let here: Vec<&Txn> = self
            .txns
            .iter()
            .filter(|t| t.replicas.contains(&d))
            .collect();
        names.extend(here.iter().map(|t| Self::log_name(t)));
        DirView::classify(names.iter().map(String::as_str), |n| {
            if n.ends_with("TOC.txt") {
                return Some(TOC.as_bytes().to_vec());
            }
            here.iter()
                .find(|t| Self::log_name(t) == n)
                .map(|t| self.body(t, &self.txn_paths(t)).into_bytes())
        })
    }

    fn apply(&mut self, o: Op) -> Result<(), TestCaseError> {
        match o {
            Op::Flush(second) => {
                let d = second as usize;
                let token = self.next + 1000;
                let g = self.new_sstable(d, On::Complete, [token].into());
                // Its log: ADD, then COMMIT, then deleted (read or not).
                let log = dir(d).join(format!("nb_txn_flush_{g:08x}.log"));
                let add = format!("{}\n", Record::new(RecordType::Add, &self.path(g)));
                self.lineage.log_read(&log, &parse_txn_log(add.as_bytes()));
                self.lineage.log_gone(&log);
            }
            Op::Start(mask, second) => {
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
                let out_dir = second as usize;
                let output = self.new_sstable(out_dir, On::Writing, tokens);
                let mut replicas: BTreeSet<usize> = inputs.iter().map(|g| self.disk[g].0).collect();
                replicas.insert(out_dir);
                let t = Txn {
                    id: output,
                    output,
                    inputs,
                    committed: false,
                    replicas,
                };
                // The daemon reads each replica when its first record is appended.
                let paths = self.txn_paths(&t);
                self.read_logs(&t, &paths);
                self.txns.push(t);
            }
            Op::Commit(i, seen, refused) => {
                let open: Vec<usize> = (0..self.txns.len())
                    .filter(|k| !self.txns[*k].committed)
                    .collect();
                let Some(k) = pick(&open, i) else {
                    return Ok(());
                };
                self.txns[k].committed = true;
                let t = self.txns[k].clone();
                self.disk.get_mut(&t.output).unwrap().1 = On::Complete;
                for g in &t.inputs {
                    self.disk.get_mut(g).unwrap().1 = On::Obsolete;
                }
                if refused {
                    self.refused.insert(t.output);
                }
                if seen {
                    let paths = self.txn_paths(&t);
                    self.read_logs(&t, &paths);
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
                self.logs_gone(&t);
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
                self.logs_gone(&t);
            }
            Op::Truncate => {
                // Cassandra stops the table's compactions first.
                for t in std::mem::take(&mut self.txns) {
                    if !t.committed {
                        self.gone(t.output);
                    }
                    self.logs_gone(&t);
                }
                for g in self.disk.keys().copied().collect::<Vec<_>>() {
                    self.gone(g);
                }
                self.truncated = [true; 2];
            }
            Op::Upload(i) => {
                if let Some(g) = pick(&self.complete(), i) {
                    let d = self.disk[&g].0;
                    if !self.refused.contains(&g) {
                        self.durable.extend(files(g).into_iter().map(|f| (d, f)));
                    }
                    self.index(d, Some(g))?;
                }
            }
            Op::Restart => self.restart(),
            Op::Index(second, own) => {
                let d = second as usize;
                let own = match own {
                    Some(i) => match pick(&self.complete_in(d), i) {
                        Some(g) => Some(g),
                        None => return Ok(()),
                    },
                    None => None,
                };
                self.index(d, own)?;
            }
        }
        Ok(())
    }

    /// A kill and a restart (see [`Op::Restart`]), as the daemon's startup does it.
    fn restart(&mut self) {
        self.restarts += 1;
        self.lineage = Lineages::default();
        for t in self.txns.clone() {
            let paths = self.txn_paths(&t);
            self.read_logs(&t, &paths);
        }
        for d in 0..2 {
            let holds = self.stored_holds[d].clone();
            let here = |p: &Path| p.parent() == Some(dir(0)) || p.parent() == Some(dir(1));
            let gen_of = |p: &Path| -> Option<u32> {
                let n = p.file_name()?.to_str()?;
                parse_name(&format!("{n}-Data.db"))?.id.parse().ok()
            };
            let disk = &self.disk;
            let previous = &self.previous;
            let complete = |p: &Path| here(p) && gen_of(p).is_some_and(|g| disk.contains_key(&g));
            let named = |p: &Path| {
                let o = usize::from(p.parent() == Some(dir(1)));
                gen_of(p).is_some_and(|g| {
                    previous[o]
                        .as_ref()
                        .is_some_and(|n| n.contains(&files(g)[0]))
                })
            };
            let gone = |input: &str| {
                let g: Option<u32> =
                    parse_name(&format!("{input}-Data.db")).and_then(|f| f.id.parse().ok());
                g.is_none_or(|g| disk.get(&g).is_none_or(|(dd, _)| *dd != d))
            };
            let mut lineage = std::mem::take(&mut self.lineage);
            lineage.restore_holds(dir(d), &holds, complete, named, gone);
            self.lineage = lineage;
        }
    }

    /// What [`super::super::Uploader`]'s index write of directory `d` does, with the
    /// model's I/O.
    fn index(&mut self, d: usize, own: Option<u32>) -> Result<(), TestCaseError> {
        let view = self.view(d);
        for l in &view.committed {
            self.lineage.record(dir(d), l.clone());
        }
        // Stored first (`Uploader::store_holds`).
        self.stored_holds[d] = self.lineage.holds(dir(d));
        let own_set: BTreeSet<String> = own.map(sst).into_iter().collect();
        // What the daemon holds of the last listing.
        let previous: Option<crate::layout::Names> =
            self.previous[d].as_ref().map(|p| p.iter().collect());
        let later = stand_ins(dir(d), &view, &own_set, previous.as_ref(), &self.lineage);
        // Every nameable file not standing in is made durable (uploaded) first; a refused
        // output's files cannot be.
        let mut durable = vec![];
        for n in view.nameable() {
            let g = generation(&n);
            if later.contains(&sst(g)) {
                continue;
            }
            if !self.refused.contains(&g) {
                self.durable.insert((d, n.clone()));
                durable.push(n);
            }
        }
        let on_disk = |n: &str| {
            self.disk
                .get(&generation(n))
                .is_some_and(|(dd, _)| *dd == d)
        };
        let held = self.lineage.held_elsewhere(dir(d));
        let point = restore_point(&Facts {
            view: &view,
            durable: &durable,
            previous: previous.as_ref(),
            later: &later,
            kept: None,
            accepts: &|_| true,
            on_disk: &on_disk,
            dir: dir(d),
            lineage: &self.lineage,
            held: &held,
            after_truncate: self.truncated[d],
        });
        // Written (and then the daemon's last listing) when it goes under its own Data.db's
        // key, or as a restore point of its own when it names something else.
        let names: BTreeSet<String> = point.names.iter().cloned().collect();
        let written = match own {
            Some(g) => names.contains(&files(g)[0]),
            None => match &self.previous[d] {
                Some(p) => *p != names,
                None => !view.sstables.is_empty(),
            },
        };
        self.check(d, &point, &held, written)?;
        if written {
            let sstables: BTreeSet<String> = names.iter().map(|n| sst(generation(n))).collect();
            let _ = self
                .lineage
                .named(dir(d), sstables.iter().map(String::as_str));
            self.previous[d] = Some(names);
            self.truncated[d] = false;
            self.points += 1;
        }
        Ok(())
    }

    fn tokens_of<'a>(&self, gens: impl IntoIterator<Item = &'a u32>) -> BTreeSet<u32> {
        gens.into_iter()
            .flat_map(|g| self.tokens[g].iter().copied())
            .collect()
    }

    fn generations<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeSet<u32> {
        names.into_iter().map(|n| generation(n)).collect()
    }

    /// What the node's newest restore points restore together, with directory `d`'s
    /// replaced by `names`.
    fn node_restores(&self, d: usize, names: Option<&[String]>) -> BTreeSet<u32> {
        let mut gens = BTreeSet::new();
        for (k, p) in self.previous.iter().enumerate() {
            if k == d {
                if let Some(n) = names {
                    gens.extend(Self::generations(n));
                    continue;
                }
            }
            gens.extend(Self::generations(p.iter().flatten()));
        }
        self.tokens_of(&gens)
    }

    fn check(
        &self,
        d: usize,
        point: &Point,
        held: &BTreeSet<String>,
        written: bool,
    ) -> Result<(), TestCaseError> {
        let named = Self::generations(&point.names);
        // Only objects stored (in this directory), SSTables whole, never one being written.
        for n in &point.names {
            prop_assert!(
                self.durable.contains(&(d, n.clone())),
                "names {n} on disk {d}, never stored there"
            );
        }
        for g in &named {
            for f in files(*g) {
                prop_assert!(point.names.contains(&f), "names nb-{g} without {f}");
            }
            prop_assert!(
                self.disk.get(g).is_none_or(|(_, o)| *o != On::Writing),
                "names nb-{g}, still being written"
            );
        }
        let live = self.tokens_of(&self.complete());
        // Safety: what the node's newest restore points held that is still live, they
        // still hold with this one; and every complete SSTable of this directory that can
        // be stored is covered.
        let before = self.node_restores(d, None);
        let after = self.node_restores(d, Some(if written { &point.names } else { &[] }));
        if written {
            let lost: Vec<&u32> = before
                .intersection(&live)
                .filter(|t| !after.contains(t))
                .collect();
            prop_assert!(
                lost.is_empty(),
                "disk {d} lost live data {lost:?}: {point:?}"
            );
        }
        let storable: Vec<u32> = self
            .complete_in(d)
            .into_iter()
            .filter(|g| !self.refused.contains(g))
            .collect();
        let restored = self.tokens_of(&named);
        let missing: Vec<u32> = self
            .tokens_of(&storable)
            .into_iter()
            .filter(|t| !restored.contains(t))
            .collect();
        prop_assert!(missing.is_empty(), "disk {d} misses {missing:?}: {point:?}");
        // Nothing comes back that is no longer live (a truncate, a zombie).
        let dead: Vec<&u32> = restored.difference(&live).collect();
        prop_assert!(
            dead.is_empty(),
            "disk {d} restores dead data {dead:?}: {point:?}"
        );
        // With nothing left out or held, exactly this directory's complete SSTables.
        if point.partial.is_empty() && held.is_empty() {
            let complete: BTreeSet<u32> = self.complete_in(d).into_iter().collect();
            prop_assert_eq!(&named, &complete, "disk {}", d);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Safety at every restore point, and liveness: once every output is stored and
    /// indexed, each directory's newest restore point names exactly its complete SSTables
    /// (refused outputs aside, whose inputs stand in for them).
    #[test]
    fn restore_points_keep_live_data_and_only_it(ops in proptest::collection::vec(op(), 1..60)) {
        let mut t = Table::default();
        for o in ops {
            t.apply(o)?;
        }
        // Cassandra finishes its compactions; every upload finishes and indexes; then each
        // directory gets restore points (one directory's index releases the other's held
        // inputs).
        for _ in 0..t.txns.len() {
            t.apply(Op::Commit(0, false, false))?;
            t.apply(Op::Cleanup(0))?;
        }
        for g in t.complete() {
            if !t.refused.contains(&g) {
                let d = t.disk[&g].0;
                t.durable.extend(files(g).into_iter().map(|f| (d, f)));
                t.index(d, Some(g))?;
            }
        }
        for _ in 0..4 {
            t.index(0, None)?;
            t.index(1, None)?;
        }
        if t.refused.iter().all(|g| !t.disk.contains_key(g)) {
            for d in 0..2 {
                let named = Table::generations(t.previous[d].iter().flatten());
                let complete: BTreeSet<u32> = t.complete_in(d).into_iter().collect();
                prop_assert_eq!(named, complete, "disk {} after {} restore points", d, t.points);
            }
        }
    }
}
