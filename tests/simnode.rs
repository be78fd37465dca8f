//! A simulated Cassandra 4.x/5.x node against the real S3 server (Garage), with the real
//! `tablesnap` binary (`-r -a`, `-B` on every restart) `kill -9`ed every 15-30 s, then a
//! restore of every table checked byte for byte (issue #10, "Done when"; issue #15).
//!
//! Why it exists: the unit and regression tests each pin one behaviour; only a node that
//! does everything at once (flushes landing during throttled compactions, aborts,
//! snapshots, incremental backups, drop/truncate, crashes of the daemon in between) shows
//! whether a restore point can ever name a torn or unfinished SSTable, or lose live data.
//!
//! The node (a generator thread, compactions in threads of their own) has two data
//! directories (JBOD: every table has a directory under each, same `ks/table-id` path) and
//! uses the real corpus SSTables (`nb`, `oa`, `da` of `legacy_tables`) renamed to new
//! generations, numbered per table from the highest one on disk as Cassandra does:
//! * flush: transaction log with `ADD` (real CRC), components written in place (Data.db
//!   first, Digest and TOC last), `COMMIT`, log removed; then `backups/` hard links;
//! * compaction: log with `ADD` of the output, Data.db written in 2-4 bursts 1-3 s apart
//!   (longer than the daemon's quiet period), the other components, `REMOVE` of the
//!   inputs, `COMMIT`, inputs deleted, log removed; one in four is aborted mid-Data.db
//!   (file closed, `ABORT`, outputs deleted, log removed), as Cassandra does. Inputs and
//!   output may be on different data directories: the log is then replicated, identical,
//!   in every directory involved (`LogReplicaSet`);
//! * snapshots (hard links + manifest.json in a staging directory, renamed into
//!   `snapshots/<tag>`), truncate (auto-snapshot, then every SSTable deleted), drop
//!   (auto-snapshot, then the directories removed), new tables;
//! * an SAI index built on a live SSTable: new `SAI+...` components, then `TOC.txt`
//!   rewritten (`TOC.txt.tmp` renamed over it) listing them (`SIMNODE_NO_SAI=1`: off).
//!
//! Beside the node, the test itself: `tablechop ... 0` every 40-70 s while the daemon runs
//! (`SIMNODE_NO_CHOP=1`: off), and point-in-time restores (`SIMNODE_NO_PIT=1`: off): the
//! daemon is stopped, one table's writes stop, its directories are emptied and restored
//! with the real `tableslurp --as-of` an earlier restore point, the node goes on there
//! (new generations from the highest one on disk + 1: names of the abandoned timeline are
//! reused) and the daemon restarts with `-B`.
//!
//! A poller LISTs the bucket every second and GETs every new object version, so torn
//! uploads that are overwritten later and indexes that are rewritten are still seen, and
//! notes what disappears (tablechop). The journal keeps lineage (a compaction output
//! covers its inputs, transitively) and every incarnation of every SSTable name, so each
//! index version seen is checked at the time it was written: it names only bytes the node
//! wrote for those names then (and that were stored by then), and it covers every SSTable
//! live and complete in its directory for longer than `VIEW` of daemon uptime, itself or
//! through a named compaction output descending from it. Liveness: every live SSTable is
//! covered by an index within `MAX_WAIT` of daemon uptime.
//!
//! Run: `bash scripts/test.sh --test simnode -- --nocapture` (60 s); longer with
//! `SIMNODE_SECS=300`; replay a node's choices with `SIMNODE_SEED=<seed>` (timing still
//! differs from run to run).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tablesnap::cassandra::{self, Record, RecordType};
use tablesnap::layout::{self, Layout};

const HOST: &str = "simnode.example.com";
const VERSIONS: [&str; 3] = ["nb", "oa", "da"];
/// The most a complete SSTable may wait for an index naming it (daemon downtime excluded).
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Clock granularity between the node's clock and the server's LastModified.
const SLACK: Duration = Duration::from_secs(1);
/// After a restart, the time the daemon gets to start and list the bucket (`-B`).
const RESTART_GRACE: Duration = Duration::from_secs(5);
/// How long before its LastModified an index's view of its directory may have been taken
/// (quiet period, uploads of what it names, the PUT itself), daemon downtime excluded: an
/// SSTable live and complete for longer than this must be covered, and the bytes a name
/// had at any time in this window are the ones it may name.
const VIEW: Duration = Duration::from_secs(15);

// ---- the corpus ---------------------------------------------------------------------------

/// One corpus SSTable: version, format token and its components in the order a writer
/// closes them (Data.db first, Digest then TOC last).
struct Template {
    version: &'static str,
    format: &'static str,
    components: Vec<(String, Vec<u8>)>,
}

fn corpus(root: &Path) -> Vec<Template> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("legacy_tables"))
        .expect("read legacy_tables")
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for d in dirs {
        let dn = d.file_name().unwrap().to_string_lossy().into_owned();
        let Some(version) = VERSIONS
            .iter()
            .find(|v| dn.starts_with(&format!("legacy_{v}_")))
        else {
            continue;
        };
        let mut components = Vec::new();
        let mut format = "big";
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(f) = cassandra::parse_name(&n) else {
                continue;
            };
            if f.format == cassandra::Format::Bti {
                format = "bti";
            }
            components.push((f.component.to_string(), std::fs::read(e.path()).unwrap()));
        }
        components.sort_by_key(|(c, _)| {
            let rank = match c.as_str() {
                "Data.db" => 0,
                c if c.starts_with("Digest.") => 2,
                "TOC.txt" => 3,
                _ => 1,
            };
            (rank, c.clone())
        });
        assert_eq!(components[0].0, "Data.db", "{}", d.display());
        out.push(Template {
            version,
            format,
            components,
        });
    }
    // The whole corpus has 4 of each; the in-repo sample one of each.
    for v in VERSIONS {
        assert!(
            out.iter().any(|t| t.version == v),
            "no {v} SSTable in {}",
            root.display()
        );
    }
    out
}

/// The whole corpus when it is there (CI requires it), else the in-repo sample: a fresh
/// clone runs the simulated node too, on one SSTable of each format.
fn templates_root() -> PathBuf {
    common::sstables().unwrap_or_else(|| {
        eprintln!("simnode: running on the in-repo sample (testdata/sstables)");
        common::sample_sstables()
    })
}

// ---- what the node did ----------------------------------------------------------------------

type Files = BTreeMap<String, (String, u64)>;

/// One incarnation of an SSTable name (a name reused after a point-in-time restore is
/// another incarnation, with other bytes).
struct Sst {
    /// Its path without component.
    base: PathBuf,
    /// When the node allocated it (began writing).
    born: SystemTime,
    /// Final bytes of every component: file name → (sha256, size).
    files: Files,
    /// Earlier `files` (before an SAI build rewrote TOC.txt, before a restore brought
    /// back an older state), each valid until the time given.
    history: Vec<(SystemTime, Files)>,
    /// When its transaction committed (None: never).
    complete_at: Option<SystemTime>,
    /// When it was last deleted (compacted away, truncated, dropped, aborted, wiped for a
    /// restore).
    gone_at: Option<SystemTime>,
    /// Intervals it was complete and live on disk (a restore can bring it back).
    lives: Vec<(SystemTime, Option<SystemTime>)>,
    /// Compaction inputs (ids), and the committed compaction outputs made of it.
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    aborted: bool,
    /// The name was used before by another incarnation (generation reuse).
    reused: bool,
}

impl Sst {
    fn new(base: PathBuf, files: Files, born: SystemTime) -> Sst {
        Sst {
            base,
            born,
            files,
            history: vec![],
            complete_at: None,
            gone_at: None,
            lives: vec![],
            inputs: vec![],
            outputs: vec![],
            aborted: false,
            reused: false,
        }
    }

    /// The component maps valid at some time in `[a, b]`.
    fn maps_in(&self, a: SystemTime, b: SystemTime) -> Vec<&Files> {
        let mut out = Vec::new();
        let mut from = self.born;
        for (until, m) in &self.history {
            if from <= b && *until >= a {
                out.push(m);
            }
            from = *until;
        }
        if from <= b {
            out.push(&self.files);
        }
        out
    }

    fn all_maps(&self) -> impl Iterator<Item = &Files> {
        self.history.iter().map(|(_, m)| m).chain([&self.files])
    }

    fn complete(&mut self, at: SystemTime) {
        self.complete_at.get_or_insert(at);
        self.lives.push((at, None));
        self.gone_at = None;
    }

    fn end(&mut self, at: SystemTime) {
        if let Some(l) = self.lives.last_mut().filter(|l| l.1.is_none()) {
            l.1 = Some(at);
        }
        self.gone_at = Some(at);
    }
}

#[derive(Default)]
struct Journal {
    ssts: Vec<Sst>,
    by_path: HashMap<PathBuf, Vec<usize>>,
    by_dir: HashMap<PathBuf, Vec<usize>>,
    flushes: u64,
    compactions: u64,
    cross_root_compactions: u64,
    aborts: u64,
    snapshots: u64,
    backup_links: u64,
    snapshot_links: u64,
    truncates: u64,
    drops: u64,
    tables: u64,
    sai_builds: u64,
    pit_restores: u64,
    pit_sstables_back: u64,
    reused_names: u64,
    /// What went wrong in a point-in-time restore (tableslurp's side).
    pit_problems: Vec<String>,
}

impl Journal {
    fn add(&mut self, mut s: Sst) -> usize {
        let id = self.ssts.len();
        let same = self.by_path.entry(s.base.clone()).or_default();
        if !same.is_empty() {
            s.reused = true;
            self.reused_names += 1;
        }
        same.push(id);
        self.by_dir
            .entry(s.base.parent().unwrap().to_path_buf())
            .or_default()
            .push(id);
        self.ssts.push(s);
        id
    }

    fn incs(&self, base: &Path) -> &[usize] {
        self.by_path.get(base).map_or(&[], |v| v.as_slice())
    }

    /// The incarnations an index written at `l` may mean by `base`: the newest one born
    /// before the index's view could have been taken, those born while it could have
    /// been, and any live meanwhile (a restore brings an older one back).
    fn candidates(&self, base: &Path, l: SystemTime) -> Vec<usize> {
        let (a, b) = (l - VIEW, l + SLACK);
        let incs = self.incs(base);
        let mut out: Vec<usize> = Vec::new();
        if let Some(&i) = incs.iter().rev().find(|&&i| self.ssts[i].born <= a) {
            out.push(i);
        }
        for &i in incs {
            let s = &self.ssts[i];
            let born_in = s.born > a && s.born <= b;
            let live_in = s
                .lives
                .iter()
                .any(|&(c, g)| c <= b && g.is_none_or(|g| g >= a));
            if (born_in || live_in) && !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }
}

struct Table {
    /// One directory per data root, same `ks/table-id` path under each.
    dirs: Vec<PathBuf>,
    version: &'static str,
    /// Complete, live SSTables (journal ids).
    live: Vec<usize>,
    /// The highest generation allocated (Cassandra's per-table counter).
    next_gen: u64,
    compacting: bool,
    flushing: bool,
    /// A point-in-time restore is going on: the node leaves this table alone.
    frozen: bool,
    dropped: bool,
}

struct Node {
    roots: Vec<PathBuf>,
    tables: Vec<Table>,
    next_uuid: u64,
    templates: Vec<Template>,
    sai: bool,
}

type Shared<T> = Arc<Mutex<T>>;

fn now() -> SystemTime {
    SystemTime::now()
}

fn sha(b: &[u8]) -> String {
    common::sha256_bytes(b)
}

/// A transaction log record line as Cassandra writes it (real CRC).
fn record(kind: RecordType, path: &str, n: i32) -> String {
    let mut r = Record::new(kind, path);
    r.num_files = n;
    format!("{r}\n")
}

fn append(p: &Path, s: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap_or_else(|e| panic!("append to {}: {e}", p.display()));
    f.write_all(s.as_bytes()).unwrap();
}

fn log_name(version: &str, op: &str, n: u64) -> String {
    format!(
        "{version}_txn_{op}_{:08x}-0a7f-11ef-9a2b-{:012x}.log",
        n as u32, n
    )
}

fn log_path(dir: &Path, version: &str, op: &str, n: u64) -> PathBuf {
    dir.join(log_name(version, op, n))
}

/// A transaction log replicated, identical, in every directory its SSTables are in (one
/// directory: a plain log).
struct Logs(Vec<PathBuf>);

impl Logs {
    fn append(&self, s: &str) {
        for p in &self.0 {
            append(p, s);
        }
    }
    fn remove(&self) {
        for p in &self.0 {
            std::fs::remove_file(p).unwrap();
        }
    }
}

/// Allocates a generation (the table's, as Cassandra numbers integer ids) and a log id on
/// data root `root`, and records the SSTable's final bytes.
fn begin_sstable(
    node: &Shared<Node>,
    j: &Shared<Journal>,
    t: usize,
    tpl: usize,
    root: usize,
) -> Begun {
    let mut n = node.lock().unwrap();
    n.next_uuid += 1;
    let uuid = n.next_uuid;
    n.tables[t].next_gen += 1;
    let generation = n.tables[t].next_gen;
    let dir = n.tables[t].dirs[root].clone();
    let tp = &n.templates[tpl];
    let name = format!("{}-{generation}-{}", tp.version, tp.format);
    let files = tp
        .components
        .iter()
        .map(|(c, b)| (format!("{name}-{c}"), (sha(b), b.len() as u64)))
        .collect();
    let comps = tp.components.clone();
    let version = tp.version;
    let id = j
        .lock()
        .unwrap()
        .add(Sst::new(dir.join(&name), files, now()));
    Begun {
        uuid,
        version,
        dir,
        name,
        comps,
        id,
    }
}

struct Begun {
    dir: PathBuf,
    name: String,
    version: &'static str,
    uuid: u64,
    comps: Vec<(String, Vec<u8>)>,
    id: usize,
}

impl Begun {
    fn base(&self) -> String {
        self.dir.join(&self.name).to_str().unwrap().to_string()
    }
    fn path(&self, c: &str) -> PathBuf {
        self.dir.join(format!("{}-{c}", self.name))
    }
}

/// A memtable flush on data root `root`, then its incremental backup (hard links in
/// `backups/`).
fn flush(node: &Shared<Node>, j: &Shared<Journal>, t: usize, tpl: usize, root: usize) {
    {
        let mut n = node.lock().unwrap();
        if n.tables[t].frozen || n.tables[t].dropped {
            return;
        }
        n.tables[t].flushing = true;
    }
    let b = begin_sstable(node, j, t, tpl, root);
    let log = Logs(vec![log_path(&b.dir, b.version, "flush", b.uuid)]);
    log.append(&record(RecordType::Add, &b.base(), 0));
    for (c, bytes) in &b.comps {
        std::fs::write(b.path(c), bytes).unwrap();
    }
    log.append(&record(RecordType::Commit, "", 0));
    let mut jj = j.lock().unwrap();
    jj.ssts[b.id].complete(now());
    jj.flushes += 1;
    drop(jj);
    log.remove();
    let backups = b.dir.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    for (c, _) in &b.comps {
        let n = format!("{}-{c}", b.name);
        // A name reused after a point-in-time restore meets the old timeline's link.
        let _ = std::fs::remove_file(backups.join(&n));
        std::fs::hard_link(b.dir.join(&n), backups.join(&n)).unwrap();
    }
    j.lock().unwrap().backup_links += b.comps.len() as u64;
    let mut n = node.lock().unwrap();
    n.tables[t].live.push(b.id);
    n.tables[t].flushing = false;
}

/// A throttled compaction of `inputs` into one new SSTable under its final name on data
/// root `root`; with `abort`, aborted in one of the pauses between Data.db bursts.
#[allow(clippy::too_many_arguments)]
fn compact(
    node: Shared<Node>,
    j: Shared<Journal>,
    t: usize,
    tpl: usize,
    root: usize,
    inputs: Vec<usize>,
    abort: bool,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let b = begin_sstable(&node, &j, t, tpl, root);
    let input_bases: Vec<PathBuf> = {
        let mut jj = j.lock().unwrap();
        jj.ssts[b.id].inputs = inputs.clone();
        inputs.iter().map(|&i| jj.ssts[i].base.clone()).collect()
    };
    // LogReplicaSet: one replica in each directory involved, every record in each.
    let mut dirs: Vec<PathBuf> = vec![b.dir.clone()];
    for p in &input_bases {
        let d = p.parent().unwrap().to_path_buf();
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let cross = dirs.len() > 1;
    let name = log_name(b.version, "compaction", b.uuid);
    let log = Logs(dirs.iter().map(|d| d.join(&name)).collect());
    log.append(&record(RecordType::Add, &b.base(), 0));
    let data = &b.comps[0].1;
    let bursts = rng.random_range(2..=4usize);
    let abort_at = abort.then(|| rng.random_range(0..bursts - 1));
    let mut f = std::fs::File::create(b.path("Data.db")).unwrap();
    for i in 0..bursts {
        let (from, to) = (data.len() * i / bursts, data.len() * (i + 1) / bursts);
        f.write_all(&data[from..to]).unwrap();
        f.flush().unwrap();
        if i + 1 == bursts {
            break;
        }
        if abort_at == Some(i) {
            // As Cassandra aborts: the writer's files are closed, ABORT is logged, the
            // outputs are deleted, then the log.
            drop(f);
            log.append(&record(RecordType::Abort, "", 0));
            for (c, _) in &b.comps {
                let _ = std::fs::remove_file(b.path(c));
            }
            log.remove();
            let mut jj = j.lock().unwrap();
            let s = &mut jj.ssts[b.id];
            s.aborted = true;
            s.gone_at = Some(now());
            jj.aborts += 1;
            drop(jj);
            node.lock().unwrap().tables[t].compacting = false;
            return;
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(1000..3000)));
    }
    drop(f);
    for (c, bytes) in &b.comps[1..] {
        std::fs::write(b.path(c), bytes).unwrap();
    }
    for (&i, p) in inputs.iter().zip(&input_bases) {
        let n = j.lock().unwrap().ssts[i].files.len() as i32;
        log.append(&record(RecordType::Remove, p.to_str().unwrap(), n));
    }
    // Commit, swap in the tracker, delete the inputs, then the log (one lock: a snapshot
    // never links a file being deleted).
    let mut n = node.lock().unwrap();
    let mut jj = j.lock().unwrap();
    log.append(&record(RecordType::Commit, "", 0));
    jj.ssts[b.id].complete(now());
    for &i in &inputs {
        let s = &mut jj.ssts[i];
        let dir = s.base.parent().unwrap().to_path_buf();
        for f in s.files.keys() {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        s.end(now());
        s.outputs.push(b.id);
    }
    jj.compactions += 1;
    jj.cross_root_compactions += cross as u64;
    log.remove();
    let tb = &mut n.tables[t];
    tb.live.retain(|l| !inputs.contains(l));
    tb.live.push(b.id);
    tb.compacting = false;
}

/// `nodetool snapshot`-like: in each data directory of the table, hard links of its live
/// SSTables and a manifest.json, made in a staging directory and renamed into
/// `snapshots/<tag>`.
fn snapshot(n: &Node, j: &mut Journal, t: usize, tag: &str) {
    let tb = &n.tables[t];
    for dir in &tb.dirs {
        let snaps = dir.join("snapshots");
        let staging = snaps.join(format!(".{tag}.staging"));
        std::fs::create_dir_all(&staging).unwrap();
        let mut names = Vec::new();
        for &l in &tb.live {
            let s = &j.ssts[l];
            if s.base.parent() != Some(dir.as_path()) {
                continue;
            }
            for f in s.files.keys() {
                std::fs::hard_link(dir.join(f), staging.join(f)).unwrap();
                names.push(format!("\"{f}\""));
            }
        }
        j.snapshot_links += names.len() as u64;
        std::fs::write(
            staging.join("manifest.json"),
            format!("{{\"files\":[{}]}}\n", names.join(",")),
        )
        .unwrap();
        std::fs::write(
            staging.join("schema.cql"),
            "CREATE TABLE ks.t (k int PRIMARY KEY);\n",
        )
        .unwrap();
        std::fs::rename(&staging, snaps.join(tag)).unwrap();
        // clearsnapshot: keep the last two plain snapshots.
        let mut plain: Vec<PathBuf> = std::fs::read_dir(&snaps)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("snap-")
            })
            .collect();
        plain.sort();
        while plain.len() > 2 {
            std::fs::remove_dir_all(plain.remove(0)).unwrap();
        }
    }
    j.snapshots += 1;
}

/// An SAI index built on a live SSTable: its new components, then `TOC.txt` rewritten
/// (`TOC.txt.tmp` renamed over it) listing them. Called with the node locked.
fn build_sai(n: &mut Node, j: &mut Journal, t: usize, rng: &mut StdRng) {
    let tb = &n.tables[t];
    let cands: Vec<usize> = tb
        .live
        .iter()
        .copied()
        .filter(|&l| !j.ssts[l].files.keys().any(|f| f.contains("-SAI+")))
        .collect();
    let Some(&id) = cands.choose(rng) else {
        return;
    };
    let s = &j.ssts[id];
    let dir = s.base.parent().unwrap().to_path_buf();
    let name = s.base.file_name().unwrap().to_string_lossy().into_owned();
    let toc_name = format!("{name}-TOC.txt");
    let mut toc = std::fs::read(dir.join(&toc_name)).unwrap();
    let mut files = s.files.clone();
    for comp in ["SAI+aa+GroupComplete.db", "SAI+aa+v+ColumnComplete.db"] {
        let body = format!("SAI {comp} of {name}\n").repeat(rng.random_range(1..20));
        let f = format!("{name}-{comp}");
        std::fs::write(dir.join(&f), &body).unwrap();
        files.insert(f, (sha(body.as_bytes()), body.len() as u64));
        if !toc.ends_with(b"\n") {
            toc.push(b'\n');
        }
        toc.extend_from_slice(comp.as_bytes());
        toc.push(b'\n');
    }
    let tmp = dir.join(format!("{toc_name}.tmp"));
    std::fs::write(&tmp, &toc).unwrap();
    files.insert(toc_name.clone(), (sha(&toc), toc.len() as u64));
    std::fs::rename(&tmp, dir.join(&toc_name)).unwrap();
    let s = &mut j.ssts[id];
    let old = std::mem::replace(&mut s.files, files);
    s.history.push((now(), old));
    j.sai_builds += 1;
}

fn new_table(n: &mut Node, j: &mut Journal, rng: &mut StdRng) {
    let i = n.tables.len();
    let version = VERSIONS[(i + rng.random_range(0..3usize)) % 3];
    let rel = format!("ks{}/t{i}_{version}-{:032x}", i % 2, rng.random::<u128>());
    let dirs: Vec<PathBuf> = n.roots.iter().map(|r| r.join(&rel)).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    n.tables.push(Table {
        dirs,
        version,
        live: vec![],
        next_gen: 0,
        compacting: false,
        flushing: false,
        frozen: false,
        dropped: false,
    });
    j.tables += 1;
}

fn stamp() -> u128 {
    now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The node: one operation every 150-600 ms until `stop`, then waits for its compactions.
fn run_node(node: Shared<Node>, j: Shared<Journal>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let roots = {
        let mut n = node.lock().unwrap();
        let mut jj = j.lock().unwrap();
        for _ in 0..3 {
            new_table(&mut n, &mut jj, &mut rng);
        }
        n.roots.len()
    };
    let mut compactions: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
        compactions.retain(|h| !h.is_finished());
        let (alive, tpl_of): (Vec<usize>, Vec<Vec<usize>>) = {
            let n = node.lock().unwrap();
            let alive: Vec<usize> = (0..n.tables.len())
                .filter(|&t| !n.tables[t].dropped && !n.tables[t].frozen)
                .collect();
            let tpl_of = n
                .tables
                .iter()
                .map(|tb| {
                    (0..n.templates.len())
                        .filter(|&k| n.templates[k].version == tb.version)
                        .collect()
                })
                .collect();
            (alive, tpl_of)
        };
        let Some(&t) = alive.choose(&mut rng) else {
            continue;
        };
        let tpl = *tpl_of[t].choose(&mut rng).unwrap();
        let root = rng.random_range(0..roots);
        let op = rng.random_range(0..100);
        match op {
            0..50 => flush(&node, &j, t, tpl, root),
            50..65 if compactions.len() < 2 => {
                let mut n = node.lock().unwrap();
                let tb = &mut n.tables[t];
                if tb.compacting || tb.frozen || tb.live.len() < 2 {
                    continue;
                }
                let mut inputs = tb.live.clone();
                inputs.shuffle(&mut rng);
                inputs.truncate(rng.random_range(2..=inputs.len().min(4)));
                tb.compacting = true;
                let abort = rng.random_ratio(1, 4);
                let (nd, jd, s) = (node.clone(), j.clone(), rng.random::<u64>());
                drop(n);
                compactions.push(std::thread::spawn(move || {
                    compact(nd, jd, t, tpl, root, inputs, abort, s)
                }));
            }
            65..73 => {
                let n = node.lock().unwrap();
                if n.tables[t].frozen {
                    continue;
                }
                snapshot(&n, &mut j.lock().unwrap(), t, &format!("snap-{}", stamp()));
            }
            73..77 => {
                let mut n = node.lock().unwrap();
                if n.tables[t].compacting || n.tables[t].frozen || (op >= 76 && alive.len() <= 2) {
                    continue;
                }
                let mut jj = j.lock().unwrap();
                let drop_it = op >= 76;
                let tag = format!(
                    "{}-{}-t{t}",
                    if drop_it { "dropped" } else { "truncated" },
                    stamp()
                );
                snapshot(&n, &mut jj, t, &tag);
                let tb = &mut n.tables[t];
                let at = now();
                for l in tb.live.drain(..) {
                    let s = &mut jj.ssts[l];
                    if !drop_it {
                        let dir = s.base.parent().unwrap();
                        for f in s.files.keys() {
                            std::fs::remove_file(dir.join(f)).unwrap();
                        }
                    }
                    s.end(at);
                }
                if drop_it {
                    for d in &tb.dirs {
                        std::fs::remove_dir_all(d).unwrap();
                    }
                    tb.dropped = true;
                    jj.drops += 1;
                } else {
                    jj.truncates += 1;
                }
            }
            77..82 if alive.len() < 6 => {
                let mut n = node.lock().unwrap();
                new_table(&mut n, &mut j.lock().unwrap(), &mut rng);
            }
            82..86 => {
                let mut n = node.lock().unwrap();
                if !n.sai || n.tables[t].compacting || n.tables[t].frozen {
                    continue;
                }
                build_sai(&mut n, &mut j.lock().unwrap(), t, &mut rng);
            }
            _ => {}
        }
    }
    for h in compactions {
        h.join().expect("a compaction thread panicked");
    }
}

// ---- a point-in-time restore in the middle of the run ------------------------------------

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// With the daemon stopped: one table's writes stop, its directories are emptied and
/// restored with the real tableslurp `--as-of` one of its earlier restore points still in
/// the bucket, the journal takes back what came back, and the table's generations go on
/// from the highest one on disk. None if no table had a restore point to go back to.
fn pit_restore(
    node: &Shared<Node>,
    j: &Shared<Journal>,
    seen: &Shared<Seen>,
    s3: &common::S3,
    prefix: &str,
    rng: &mut StdRng,
) -> Option<String> {
    let t = {
        let mut n = node.lock().unwrap();
        let cands: Vec<usize> = (0..n.tables.len())
            .filter(|&t| !n.tables[t].dropped && !n.tables[t].frozen)
            .collect();
        let t = *cands.choose(rng)?;
        n.tables[t].frozen = true;
        t
    };
    let unfreeze = |why: Option<String>| {
        node.lock().unwrap().tables[t].frozen = false;
        why
    };
    // The node's writes to it stop: wait for a running flush or compaction.
    let wait_until = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let n = node.lock().unwrap();
            let tb = &n.tables[t];
            if tb.dropped {
                drop(n);
                return unfreeze(None);
            }
            if !tb.compacting && !tb.flushing {
                break;
            }
        }
        if Instant::now() > wait_until {
            return unfreeze(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dirs = node.lock().unwrap().tables[t].dirs.clone();
    // Restore points still in the bucket (tablechop deletes old ones), 4 s old at least.
    let points: Vec<(String, SystemTime)> = {
        let s = seen.lock().unwrap();
        let mut v: Vec<(String, SystemTime)> = s
            .indexes
            .iter()
            .filter(|ix| {
                dirs.iter().any(|d| Path::new(&ix.dir) == d)
                    && s.present.get(&ix.key) == Some(&ix.last_modified)
                    && ix.last_modified + Duration::from_secs(4) < now()
            })
            .map(|ix| (ix.dir.clone(), ix.last_modified))
            .collect();
        v.sort_by_key(|p| p.1);
        v
    };
    if points.len() < 2 {
        return unfreeze(None);
    }
    // Not the newest: something to go back from.
    let as_of = points[rng.random_range(0..points.len() - 1)].1;
    let as_of_s = rfc3339(as_of);
    // Empty its directories (snapshots/ and backups/ stay).
    {
        // Node, then journal, as everywhere (the node thread takes them in this order: the
        // reverse deadlocked once the node snapshotted meanwhile).
        let mut n = node.lock().unwrap();
        let mut jj = j.lock().unwrap();
        let at = now();
        for &l in &n.tables[t].live {
            jj.ssts[l].end(at);
        }
        for d in &dirs {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                if e.file_type().unwrap().is_file() {
                    std::fs::remove_file(e.path()).unwrap();
                }
            }
        }
        n.tables[t].live.clear();
    }
    let mut back = Vec::new();
    let mut problems = Vec::new();
    for d in &dirs {
        let ds = d.to_str().unwrap();
        if !points.iter().any(|(pd, lm)| pd == ds && *lm <= as_of) {
            continue; // nothing of this directory was indexed by then: it stays empty
        }
        let (code, out) = common::run_bin(
            env!("CARGO_BIN_EXE_tableslurp"),
            &[
                "-n",
                HOST,
                "--prefix",
                prefix,
                "--endpoint-url",
                &s3.endpoint,
                "--as-of",
                &as_of_s,
                &s3.dest(),
                ds,
                ds,
            ],
            &s3.cli_env(),
        );
        if code != 0 {
            problems.push(format!(
                "tableslurp --as-of {as_of_s} {ds} exited {code}: {}",
                out.trim()
            ));
        }
        // tableslurp may restore one SSTable under the generation above the bucket's
        // highest (the node then goes on above the abandoned timeline): its log says
        // `DIR: FROM restored as TO: ...`. TO → FROM.
        let renamed: BTreeMap<String, String> = out
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once(&format!("{ds}: "))?;
                let (from, rest) = rest.split_once(" restored as ")?;
                let (to, _) = rest.split_once(':')?;
                Some((to.trim().to_string(), from.trim().to_string()))
            })
            .collect();
        let unrename = |f: &str| -> String {
            for (to, from) in &renamed {
                if let Some(c) = f.strip_prefix(&format!("{to}-")) {
                    return format!("{from}-{c}");
                }
            }
            f.to_string()
        };
        // What came back: whole SSTables, each the bytes of one incarnation of its name.
        let mut got: BTreeMap<PathBuf, Files> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if !e.file_type().unwrap().is_file() {
                continue;
            }
            let f = e.file_name().to_string_lossy().into_owned();
            names.insert(unrename(&f));
            let body = std::fs::read(e.path()).unwrap();
            match sst_of(e.path().to_str().unwrap()) {
                Some((base, _)) => {
                    got.entry(base)
                        .or_default()
                        .insert(f, (sha(&body), body.len() as u64));
                }
                None => {
                    problems.push(format!("restore of {ds} brought back {f}, no SSTable"));
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let matched = {
            let s = seen.lock().unwrap();
            s.indexes.iter().any(|ix| {
                ix.dir == ds
                    && ix.last_modified <= as_of + SLACK
                    && ix.names.iter().cloned().collect::<BTreeSet<_>>() == names
            })
        };
        if !matched {
            problems.push(format!(
                "restore of {ds} --as-of {as_of_s} brought back {names:?}: the names of no restore point of it at or before that time"
            ));
        }
        let mut jj = j.lock().unwrap();
        for (base, files) in got {
            // A renamed one: the bytes of an incarnation of the name it had, under its new
            // name a new SSTable of the node's (no component holds its generation).
            let bn = base.file_name().unwrap().to_string_lossy().into_owned();
            let (look, lfiles) = match renamed.get(&bn) {
                Some(from) => (
                    base.with_file_name(from),
                    files
                        .iter()
                        .map(|(f, v)| (unrename(f), v.clone()))
                        .collect(),
                ),
                None => (base.clone(), files.clone()),
            };
            let inc = jj.incs(&look).iter().rev().copied().find(|&i| {
                let s = &jj.ssts[i];
                s.complete_at.is_some()
                    && lfiles.iter().all(|(f, v): (&String, &(String, u64))| {
                        s.all_maps().any(|m| m.get(f) == Some(v))
                    })
            });
            if let (Some(_), true) = (inc, look != base) {
                let at = now();
                let mut s = Sst::new(base.clone(), files, at);
                s.complete(at);
                back.push(jj.add(s));
                continue;
            }
            let Some(i) = inc else {
                problems.push(format!(
                    "restore of {ds} brought back {} with bytes the node never wrote for it: {:?}",
                    base.display(),
                    files.keys().collect::<Vec<_>>()
                ));
                // Counted above; off the disk again so that the journal (which cannot own
                // bytes the node never wrote) still matches what the node holds.
                for f in files.keys() {
                    let _ = std::fs::remove_file(d.join(f));
                }
                continue;
            };
            let s = &mut jj.ssts[i];
            let at = now();
            if s.files != files {
                let old = std::mem::replace(&mut s.files, files);
                s.history.push((at, old));
            }
            s.complete(at);
            back.push(i);
        }
    }
    let mut n = node.lock().unwrap();
    let mut jj = j.lock().unwrap();
    let mut high = 0;
    for &i in &back {
        let f = jj.ssts[i]
            .base
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let id = cassandra::parse_name(&format!("{f}-Data.db"))
            .and_then(|p| p.id.parse::<u64>().ok())
            .unwrap_or(0);
        high = high.max(id);
    }
    let tb = &mut n.tables[t];
    let was = tb.next_gen;
    tb.live = back.clone();
    tb.next_gen = high;
    tb.frozen = false;
    jj.pit_restores += 1;
    jj.pit_sstables_back += back.len() as u64;
    for p in &problems {
        jj.pit_problems.push(p.clone());
    }
    Some(format!(
        "{} --as-of {as_of_s}: {} SSTables back, generations go on from {high} (were at {was})",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        back.len()
    ))
}

// ---- what the bucket held ----------------------------------------------------------------

struct DataObs {
    path: String,
    size: u64,
    sha: String,
    last_modified: SystemTime,
}

struct IndexObs {
    key: String,
    last_modified: SystemTime,
    dir: String,
    names: Vec<String>,
}

/// A key that one LIST had and the next did not: deleted between `after` (the start of
/// the LIST that still had it) and `before` (the end of the one that did not).
struct Deletion {
    key: String,
    /// The local path of a data object (None: an index).
    path: Option<String>,
    after: SystemTime,
    before: SystemTime,
}

#[derive(Default)]
struct Seen {
    versions: HashSet<(String, Option<String>, u64, i64)>,
    data: Vec<DataObs>,
    indexes: Vec<IndexObs>,
    bad_index_bodies: Vec<(String, String)>,
    /// Every key of the last LIST, with its LastModified, and when that LIST began.
    present: HashMap<String, SystemTime>,
    listed_at: Option<SystemTime>,
    deletions: Vec<Deletion>,
    lists: u64,
    gets: u64,
}

/// One LIST of the host prefix; every object version not seen before is fetched.
async fn poll(s3: &common::S3, prefix: &str, seen: &Mutex<Seen>) {
    let store = s3.raw();
    let lp = object_store::path::Path::parse(prefix.trim_end_matches('/')).unwrap();
    let began = now();
    let Ok(metas) = store.list(Some(&lp)).try_collect::<Vec<_>>().await else {
        return; // the next poll sees it
    };
    let ended = now();
    let lay = Layout::new(prefix, HOST, ":");
    {
        let mut s = seen.lock().unwrap();
        s.lists += 1;
        let present: HashMap<String, SystemTime> = metas
            .iter()
            .map(|m| (m.location.to_string(), m.last_modified.into()))
            .collect();
        if let Some(after) = s.listed_at {
            let gone: Vec<String> = s
                .present
                .keys()
                .filter(|k| !present.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                let path = if layout::data_key_of_index(&key).is_some() {
                    None
                } else {
                    lay.path_of(&key).map(|p| p.to_string())
                };
                s.deletions.push(Deletion {
                    key,
                    path,
                    after,
                    before: ended,
                });
            }
        }
        s.present = present;
        s.listed_at = Some(began);
    }
    for m in metas {
        let key = m.location.to_string();
        let v = (
            key.clone(),
            m.e_tag.clone(),
            m.size,
            m.last_modified.timestamp_millis(),
        );
        if seen.lock().unwrap().versions.contains(&v) {
            continue;
        }
        let Ok(r) = store
            .get_opts(&m.location, object_store::GetOptions::default())
            .await
        else {
            continue;
        };
        let Ok(body) = r.bytes().await else { continue };
        let mut s = seen.lock().unwrap();
        s.gets += 1;
        s.versions.insert(v);
        let Some(path) = lay.path_of(&key) else {
            continue;
        };
        if layout::data_key_of_index(&key).is_some() {
            match layout::parse_listing(&body) {
                Ok(l) => s.indexes.push(IndexObs {
                    key: key.clone(),
                    last_modified: m.last_modified.into(),
                    dir: l.dir,
                    names: l.names,
                }),
                Err(e) => s.bad_index_bodies.push((key.clone(), e.to_string())),
            }
        } else {
            s.data.push(DataObs {
                path: path.to_string(),
                size: body.len() as u64,
                sha: sha(&body),
                last_modified: m.last_modified.into(),
            });
        }
    }
}

// ---- the daemon --------------------------------------------------------------------------

struct Bin {
    prefix: String,
    data: Vec<PathBuf>,
    log: PathBuf,
}

impl Bin {
    fn command(&self, extra: &[&str]) -> tokio::process::Command {
        let s3 = common::s3();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_tablesnap"));
        // SIMNODE_TABLESNAP_ARGS: extra daemon arguments, to see the checks fire (e.g.
        // `--listen-events IN_CREATE` makes snapshot and backup bytes count).
        let more = std::env::var("SIMNODE_TABLESNAP_ARGS").unwrap_or_default();
        c.args([
            "-n",
            HOST,
            "-p",
            &self.prefix,
            "--endpoint-url",
            &s3.endpoint,
        ])
        .args(extra)
        .args(more.split_whitespace())
        .arg(s3.dest())
        .args(&self.data)
        .envs(s3.cli_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
        c
    }

    fn log_tail(&self, n: usize) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Log lines mentioning `what` (at most `n`, the first ones).
    fn log_grep(&self, what: &str, n: usize) -> Vec<String> {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        t.lines()
            .filter(|l| l.contains(what))
            .take(n)
            .map(str::to_string)
            .collect()
    }
}

/// tablechop with AGE_DAYS 0 on each data root, beside the running daemon.
fn chop(s3: &common::S3, prefix: &str, roots: &[PathBuf]) -> Result<String, String> {
    let mut out = Vec::new();
    for r in roots {
        let (code, text) = common::run_bin(
            env!("CARGO_BIN_EXE_tablechop"),
            &[
                "-n",
                HOST,
                "--prefix",
                prefix,
                "--endpoint-url",
                &s3.endpoint,
                &s3.dest(),
                r.to_str().unwrap(),
                "0",
            ],
            &s3.cli_env(),
        );
        if code != 0 {
            return Err(format!("tablechop {} exited {code}: {}", r.display(), text));
        }
        out.push(text.lines().last().unwrap_or("").to_string());
    }
    Ok(out.join(" | "))
}

// ---- the checks --------------------------------------------------------------------------

#[derive(Default)]
struct Verdict {
    torn_bytes: u64,
    torn: Vec<String>,
    never_completed_bytes: u64,
    never_completed: Vec<String>,
    txn_log_objects: Vec<String>,
    unknown_objects: Vec<String>,
    /// `tablesnap-was-` objects seen (each checked as the bytes of its name).
    superseded_copies: usize,
    /// Versions of `tablesnap-held.json` (JBOD inputs held for another disk) seen.
    hold_records: usize,
    snapshot_bytes: u64,
    snapshot_objects: u64,
    /// What is wrong with each bad index (one line per SSTable named wrongly).
    bad_indexes: Vec<String>,
    /// Index versions with at least one line in `bad_indexes`.
    bad_index_versions: usize,
    /// Index versions of live directories checked.
    index_versions_checked: usize,
    /// Names whose bytes, as stored when the index was written, were not the node's.
    unseen_bytes: Vec<String>,
    unseen_bytes_indexes: usize,
    /// Live, complete SSTables an index covered neither itself nor through a descendant.
    lost_live: Vec<String>,
    lost_live_indexes: usize,
    /// Names of SSTables no longer live that nothing justifies naming.
    dead_names: Vec<String>,
    dead_indexes: usize,
    /// Objects deleted while the newest restore point of their directory named them.
    deleted_named: Vec<String>,
    /// Indexes of `snapshots/` or `backups/` directories (none with default events).
    hardlink_indexes: Vec<String>,
    stale_names: u64,
    max_wait: Duration,
    max_wait_sst: String,
    waited_too_long: Vec<String>,
    indexed: u64,
    gone_before_indexed: u64,
}

fn overlap(a: SystemTime, b: SystemTime, windows: &[(SystemTime, SystemTime)]) -> Duration {
    windows
        .iter()
        .map(|&(s, e)| {
            let (s, e) = (s.max(a), e.min(b));
            e.duration_since(s).unwrap_or_default()
        })
        .sum()
}

/// Daemon uptime between `a` and `b`.
fn uptime(a: SystemTime, b: SystemTime, down: &[(SystemTime, SystemTime)]) -> Duration {
    b.duration_since(a)
        .unwrap_or_default()
        .saturating_sub(overlap(a, b, down))
}

fn sst_of(path: &str) -> Option<(PathBuf, String)> {
    let p = Path::new(path);
    let n = p.file_name()?.to_str()?;
    let f = cassandra::parse_name(n)?;
    Some((p.parent()?.join(f.sstable), n.to_string()))
}

fn in_hardlink_dir(path: &str) -> bool {
    path.contains("/snapshots/") || path.contains("/backups/")
}

fn short(sh: &str) -> &str {
    &sh[..sh.len().min(12)]
}

fn at(t: SystemTime) -> String {
    rfc3339(t)
}

/// Every object version seen: torn or unfinished bytes, logs, snapshot/backup bytes.
fn check_objects(j: &Journal, seen: &Seen, v: &mut Verdict) {
    for d in &seen.data {
        if in_hardlink_dir(&d.path) {
            v.snapshot_bytes += d.size;
            v.snapshot_objects += 1;
            continue;
        }
        let name = Path::new(&d.path).file_name().unwrap().to_string_lossy();
        if cassandra::is_txn_log(&name) {
            v.txn_log_objects.push(d.path.clone());
            continue;
        }
        if name == tablesnap::layout::HOLDS_NAME {
            v.hold_records += 1;
            continue;
        }
        // A superseded copy (`tablesnap-was-<ms>-NAME`): the bytes some incarnation of NAME
        // had, checked as NAME's.
        let (path, name) = match tablesnap::layout::parse_superseded(&name) {
            Some((_, orig)) => (
                Path::new(&d.path)
                    .with_file_name(orig)
                    .to_string_lossy()
                    .into_owned(),
                std::borrow::Cow::Owned(orig.to_string()),
            ),
            None => (d.path.clone(), name),
        };
        v.superseded_copies += usize::from(path != d.path);
        let incs: Vec<&Sst> = sst_of(&path)
            .map(|(b, _)| j.incs(&b).iter().map(|&i| &j.ssts[i]).collect())
            .unwrap_or_default();
        if incs.is_empty() {
            v.unknown_objects.push(d.path.clone());
            continue;
        }
        let done: Vec<&&Sst> = incs.iter().filter(|s| s.complete_at.is_some()).collect();
        if done.is_empty() {
            v.never_completed_bytes += d.size;
            v.never_completed.push(format!(
                "{} ({} bytes{})",
                d.path,
                d.size,
                if incs.iter().any(|s| s.aborted) {
                    ", aborted compaction"
                } else {
                    ""
                }
            ));
            continue;
        }
        let want = (d.sha.clone(), d.size);
        if done
            .iter()
            .any(|s| s.all_maps().any(|m| m.get(name.as_ref()) == Some(&want)))
        {
            continue;
        }
        match done.iter().rev().find_map(|s| s.files.get(name.as_ref())) {
            Some((_, len)) => {
                v.torn_bytes += d.size;
                v.torn.push(format!(
                    "{}: {} bytes stored, the complete file has {len}",
                    d.path, d.size
                ));
            }
            None => v.unknown_objects.push(d.path.clone()),
        }
    }
}

/// What the bucket held under a path's key at time `t`, as the poller saw it.
enum Stored<'a> {
    Never,
    Deleted(&'a Deletion),
    Held(&'a DataObs),
}

fn stored_at<'a>(
    versions: &HashMap<&str, Vec<&'a DataObs>>,
    copies: &HashMap<String, Vec<&'a DataObs>>,
    dels: &HashMap<&str, Vec<&'a Deletion>>,
    path: &str,
    t: SystemTime,
) -> Stored<'a> {
    // A superseded copy made at or after `t` holds what the name held then (tableslurp
    // restores an index written at `t` from the first such copy).
    if let Some(c) = copies
        .get(path)
        .and_then(|cs| cs.iter().find(|d| d.last_modified >= t))
    {
        return Stored::Held(c);
    }
    let Some(v) = versions
        .get(path)
        .and_then(|vs| vs.iter().rfind(|d| d.last_modified <= t + SLACK))
    else {
        return Stored::Never;
    };
    // Deleted (tablechop) after this version was stored and for sure before `t`.
    if let Some(d) = dels.get(path).and_then(|ds| {
        ds.iter()
            .find(|d| d.after >= v.last_modified && d.before + SLACK < t)
    }) {
        return Stored::Deleted(d);
    }
    Stored::Held(v)
}

/// The kind of an `unseen_bytes` line, rarest first: the failure list shows those first.
fn unseen_kind(line: &str) -> (usize, &'static str) {
    if line.contains("item 6") {
        (4, "an SAI build's old TOC (item 6)")
    } else if line.contains("deleted from the bucket") {
        (1, "deleted from the bucket (tablechop)")
    } else if line.contains("items 3/4") {
        (3, "generation reuse (items 3/4)")
    } else if line.contains("was seen stored") {
        (2, "never stored")
    } else {
        (0, "other bytes")
    }
}

/// Whose bytes a stored object under `base`'s component `f` holds, when they are not the
/// ones an index written at `l` should name: an earlier state of the same SSTable (a TOC
/// an SAI build rewrote), or an earlier incarnation of the name (generation reuse).
fn bytes_hint(
    j: &Journal,
    base: &Path,
    f: &str,
    got: &(String, u64),
    cands: &[usize],
    l: SystemTime,
) -> String {
    for &c in cands {
        let s = &j.ssts[c];
        if let Some((until, _)) = s.history.iter().find(|(_, hm)| hm.get(f) == Some(got)) {
            let sai = f.ends_with("TOC.txt") && s.files.keys().any(|k| k.contains("-SAI+"));
            return format!(
                "; those are the node's bytes of {f} until {} (rewritten then{})",
                at(*until),
                if sai {
                    ": the TOC an SAI build replaced, the stored TOC kept, issue #15 item 6"
                } else {
                    ""
                }
            );
        }
    }
    for &c in j.incs(base) {
        let s = &j.ssts[c];
        if !cands.contains(&c) && s.born < l && s.all_maps().any(|m| m.get(f) == Some(got)) {
            return format!(
                "; those are the bytes of an earlier {} (born {}), of the timeline a point-in-time restore abandoned: generation reuse, issue #15 items 3/4",
                s.base.display(),
                at(s.born)
            );
        }
    }
    String::new()
}

/// `a` is one of the SSTables `y` was compacted from (transitively).
fn ancestor(j: &Journal, a: usize, y: usize) -> bool {
    j.ssts[y]
        .inputs
        .iter()
        .any(|&i| i == a || ancestor(j, a, i))
}

/// `id`'s data is in what `named` names: itself, a committed compaction output descending
/// from it, or (a replacement that could not be stored) all its inputs.
fn covered(j: &Journal, id: usize, named: &HashSet<PathBuf>) -> bool {
    fn down(j: &Journal, id: usize, named: &HashSet<PathBuf>) -> bool {
        let s = &j.ssts[id];
        named.contains(&s.base) || s.outputs.iter().any(|&o| down(j, o, named))
    }
    fn up(j: &Journal, id: usize, named: &HashSet<PathBuf>) -> bool {
        let s = &j.ssts[id];
        named.contains(&s.base)
            || (!s.inputs.is_empty() && s.inputs.iter().all(|&i| up(j, i, named)))
    }
    down(j, id, named) || up(j, id, named)
}

/// Every index version seen, at the time it was written: it names complete SSTables only,
/// every component of each, only after they were complete, and only bytes the node had
/// written for those names then, stored by then (SAFETY a); it covers every SSTable live
/// and complete in its directory for longer than `VIEW` of daemon uptime (SAFETY b).
fn check_indexes(j: &Journal, seen: &Seen, down: &[(SystemTime, SystemTime)], v: &mut Verdict) {
    let mut versions: HashMap<&str, Vec<&DataObs>> = HashMap::new();
    for d in &seen.data {
        versions.entry(&d.path).or_default().push(d);
    }
    for vs in versions.values_mut() {
        vs.sort_by_key(|d| d.last_modified);
    }
    let mut copies: HashMap<String, Vec<&DataObs>> = HashMap::new();
    for d in &seen.data {
        let name = Path::new(&d.path).file_name().unwrap().to_string_lossy();
        if let Some((_, orig)) = tablesnap::layout::parse_superseded(&name) {
            let p = Path::new(&d.path).with_file_name(orig);
            copies
                .entry(p.to_string_lossy().into_owned())
                .or_default()
                .push(d);
        }
    }
    for cs in copies.values_mut() {
        cs.sort_by_key(|d| d.last_modified);
    }
    let mut dels: HashMap<&str, Vec<&Deletion>> = HashMap::new();
    for d in &seen.deletions {
        if let Some(p) = &d.path {
            dels.entry(p).or_default().push(d);
        }
    }
    for ix in &seen.indexes {
        if in_hardlink_dir(&format!("{}/", ix.dir)) {
            v.hardlink_indexes.push(ix.key.clone());
            continue;
        }
        v.index_versions_checked += 1;
        let l = ix.last_modified;
        let (wa, wb) = (l - VIEW, l + SLACK);
        let (bad_before, unseen_before, lost_before) =
            (v.bad_indexes.len(), v.unseen_bytes.len(), v.lost_live.len());
        let mut by_sst: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        for n in &ix.names {
            let p = format!("{}/{n}", ix.dir);
            let Some((base, file)) = sst_of(&p) else {
                v.bad_indexes
                    .push(format!("{} names {n}, not an SSTable component", ix.key));
                continue;
            };
            by_sst.entry(base).or_default().insert(file);
        }
        for (base, files) in &by_sst {
            let cands = j.candidates(base, l);
            if cands.is_empty() {
                v.bad_indexes.push(format!(
                    "{} names {}: an SSTable the node never wrote (by then)",
                    ix.key,
                    base.display()
                ));
                continue;
            }
            // The structure: complete, committed by then, all components of one moment.
            let mut why = None;
            let mut ok_maps: Vec<&Files> = Vec::new();
            for &c in &cands {
                let s = &j.ssts[c];
                let w = if let Some(done) = s.complete_at.filter(|&d| d > wb) {
                    Some(format!(
                        "an SSTable before its transaction committed (at {})",
                        at(done)
                    ))
                } else if s.complete_at.is_none() {
                    Some(format!(
                        "an SSTable that never completed{}",
                        if s.aborted { " (aborted)" } else { "" }
                    ))
                } else {
                    let maps: Vec<&Files> = s
                        .maps_in(wa, wb)
                        .into_iter()
                        .filter(|m| m.keys().eq(files.iter()))
                        .collect();
                    if maps.is_empty() {
                        Some(format!(
                            "{} of the {} components",
                            files.len(),
                            s.files.len()
                        ))
                    } else {
                        ok_maps.extend(maps);
                        None
                    }
                };
                if w.is_none()
                    && s.gone_at.is_some_and(|g| {
                        g + Duration::from_secs(10) < l
                            && s.lives.last().is_some_and(|x| x.1.is_some())
                    })
                {
                    v.stale_names += 1;
                }
                why = why.or(w.filter(|_| c == *cands.last().unwrap()));
            }
            if ok_maps.is_empty() {
                v.bad_indexes.push(format!(
                    "{} names {}: {}",
                    ix.key,
                    base.display(),
                    why.unwrap_or_else(|| "no incarnation fits".into())
                ));
                continue;
            }
            // SAFETY (a): every name's bytes, as stored by then, are the node's bytes of
            // one moment of the window.
            let stored: Vec<(&String, Stored)> = files
                .iter()
                .map(|f| {
                    let p = format!("{}/{f}", ix.dir);
                    (f, stored_at(&versions, &copies, &dels, &p, l))
                })
                .collect();
            let fits = ok_maps.iter().any(|m| {
                stored.iter().all(|(f, st)| match st {
                    Stored::Held(d) => m.get(*f) == Some(&(d.sha.clone(), d.size)),
                    _ => false,
                })
            });
            if fits {
                continue;
            }
            let m = ok_maps.last().unwrap();
            for (f, st) in &stored {
                let (wsha, wlen) = &m[*f];
                let line = match st {
                    Stored::Never => Some(format!(
                        "{} (written {}) names {}/{f}: no object of it was seen stored by then (the node's file has {wlen} bytes, sha256 {})",
                        ix.key,
                        at(l),
                        ix.dir,
                        short(wsha)
                    )),
                    Stored::Deleted(d) => Some(format!(
                        "{} (written {}) names {}/{f}: its object was deleted from the bucket between {} and {}, before the index was written{}",
                        ix.key,
                        at(l),
                        ix.dir,
                        at(d.after),
                        at(d.before),
                        match stored_at(
                            &versions,
                            &copies,
                            &HashMap::new(),
                            &format!("{}/{f}", ix.dir),
                            l
                        ) {
                            Stored::Held(o) => {
                                let reused = cands
                                    .iter()
                                    .any(|&c| j.ssts[c].reused && j.ssts[c].born > o.last_modified);
                                let same = m.get(*f) == Some(&(o.sha.clone(), o.size));
                                format!(
                                    " (the object was stored at {}{})",
                                    at(o.last_modified),
                                    if reused {
                                        format!(
                                            ", by the timeline a point-in-time restore abandoned, {} the node's file under this reused name: the daemon named an object of the abandoned timeline (taken as stored, or kept from the restore point before the restore) while tablechop, seeing no kept index name it, deleted it; generation reuse, issue #15 items 3/4",
                                            if same {
                                                "the same bytes as"
                                            } else {
                                                "other bytes than"
                                            }
                                        )
                                    } else {
                                        String::new()
                                    }
                                )
                            }
                            _ => String::new(),
                        }
                    )),
                    Stored::Held(d) if &d.sha == wsha && d.size == *wlen => None,
                    Stored::Held(d) => {
                        let got = (d.sha.clone(), d.size);
                        let hint = bytes_hint(j, base, f, &got, &cands, l);
                        Some(format!(
                            "{} (written {}) names {}/{f}: the object stored at {} holds {} bytes sha256 {}, the node's {f} then had {wlen} bytes sha256 {}{hint}",
                            ix.key,
                            at(l),
                            ix.dir,
                            at(d.last_modified),
                            d.size,
                            short(&d.sha),
                            short(wsha)
                        ))
                    }
                };
                v.unseen_bytes.extend(line);
            }
        }
        // SAFETY (b): nothing live and complete for longer than VIEW is left out.
        let named: HashSet<PathBuf> = by_sst.keys().cloned().collect();
        let dir = PathBuf::from(&ix.dir);
        for &id in j.by_dir.get(&dir).map_or(&[][..], |v| v.as_slice()) {
            let s = &j.ssts[id];
            let Some(&(c, g)) = s
                .lives
                .iter()
                .find(|&&(c, g)| uptime(c, l, down) > VIEW && g.is_none_or(|g| g > l + SLACK))
            else {
                continue;
            };
            if covered(j, id, &named) {
                continue;
            }
            v.lost_live.push(format!(
                "{} (written {}) lost live data: {} (complete and live since {}{}) is named neither itself nor through a compaction output descending from it{}",
                ix.key,
                at(l),
                s.base.display(),
                at(c),
                g.map_or(", still live at the end".to_string(), |g| format!(" until {}", at(g))),
                if s.reused {
                    "; its name was used before, by the timeline a point-in-time restore abandoned: generation reuse, issue #15 items 3/4 (a collision?)"
                } else {
                    ""
                }
            ));
        }
        // Nor data that is no longer live (deleted longer than VIEW before), unless it is
        // what a live SSTable left out was made of (a replacement that cannot be stored).
        let live_unnamed: Vec<usize> = j
            .by_dir
            .get(&dir)
            .map_or(&[][..], |v| v.as_slice())
            .iter()
            .copied()
            .filter(|&id| {
                let s = &j.ssts[id];
                !named.contains(&s.base)
                    && s.lives
                        .iter()
                        .any(|&(c, g)| c <= l && g.is_none_or(|g| g > l))
            })
            .collect();
        let dead_before = v.dead_names.len();
        for base in &named {
            let cands = j.candidates(base, l);
            let live_then = cands.iter().any(|&c| {
                j.ssts[c]
                    .lives
                    .iter()
                    .any(|&(a, g)| a <= l + SLACK && g.is_none_or(|g| g + VIEW >= l))
            });
            if live_then || cands.iter().all(|&c| j.ssts[c].lives.is_empty()) {
                continue;
            }
            if live_unnamed
                .iter()
                .any(|&y| cands.iter().any(|&c| ancestor(j, c, y)))
            {
                continue;
            }
            let s = &j.ssts[*cands.last().unwrap()];
            v.dead_names.push(format!(
                "{} (written {}) names {}, deleted from the node at {} and not what a live SSTable left out was made of{}",
                ix.key,
                at(l),
                base.display(),
                s.gone_at.map_or("?".into(), at),
                match live_unnamed.iter().find(|&&y| j.ssts[y].reused) {
                    Some(&y) => format!(
                        "; meanwhile {} (a reused name: generation reuse after a point-in-time restore, issue #15 items 3/4) is live and not named: the daemon keeps naming what is gone while a complete SSTable cannot be stored, here the abandoned timeline",
                        j.ssts[y].base.display()
                    ),
                    None => String::new(),
                }
            ));
        }
        v.dead_indexes += (v.dead_names.len() > dead_before) as usize;
        v.bad_index_versions += (v.bad_indexes.len() > bad_before) as usize;
        v.unseen_bytes_indexes += (v.unseen_bytes.len() > unseen_before) as usize;
        v.lost_live_indexes += (v.lost_live.len() > lost_before) as usize;
    }
}

/// LIVENESS: how long each life of each complete SSTable waited for the first index of
/// its directory covering it (itself or a descendant), daemon downtime excluded; one still
/// live at the end must be covered.
fn check_latency(j: &Journal, seen: &Seen, down: &[(SystemTime, SystemTime)], v: &mut Verdict) {
    let mut by_dir: HashMap<PathBuf, Vec<(SystemTime, HashSet<PathBuf>)>> = HashMap::new();
    for ix in &seen.indexes {
        if in_hardlink_dir(&format!("{}/", ix.dir)) {
            continue;
        }
        let named = ix
            .names
            .iter()
            .filter_map(|n| sst_of(&format!("{}/{n}", ix.dir)).map(|(b, _)| b))
            .collect();
        by_dir
            .entry(PathBuf::from(&ix.dir))
            .or_default()
            .push((ix.last_modified, named));
    }
    for ixs in by_dir.values_mut() {
        ixs.sort_by_key(|x| x.0);
    }
    for (id, s) in j.ssts.iter().enumerate() {
        let dir = s.base.parent().unwrap();
        let ixs = by_dir.get(dir).map_or(&[][..], |v| v.as_slice());
        for &(c, g) in &s.lives {
            // A life that begins covered already: a point-in-time restore that brings a
            // directory back to its newest restore point (the other directory of the table
            // went back further) gives its SSTables new lives that the newest index names
            // themselves; nothing is due, and the daemon rightly writes none. Only for the
            // SSTable itself named (an output whose inputs were named still waits for its
            // own index), and not for a name the abandoned timeline used (the newest index
            // names other bytes then).
            let newest_before = ixs.iter().rev().find(|(l, _)| *l + SLACK < c);
            let covered_at_start =
                !s.reused && newest_before.is_some_and(|(_, named)| named.contains(&s.base));
            let first = if covered_at_start {
                Some(c)
            } else {
                ixs.iter()
                    .find(|(l, named)| *l + SLACK >= c && covered(j, id, named))
                    .map(|x| x.0)
            };
            let until = match (first, g) {
                (Some(l), g) if g.is_none_or(|g| l <= g) => {
                    v.indexed += 1;
                    l
                }
                (_, Some(g)) => {
                    v.gone_before_indexed += 1;
                    g
                }
                (_, None) => {
                    v.waited_too_long.push(format!(
                        "{} (complete and live since {}, still live at the end) never covered by an index of its directory{}",
                        s.base.display(),
                        at(c),
                        if s.reused {
                            "; its name was used before, by the timeline a point-in-time restore abandoned: generation reuse, issue #15 items 3/4"
                        } else {
                            ""
                        }
                    ));
                    continue;
                }
            };
            let w = uptime(c, until, down);
            if w > v.max_wait && first == Some(until) {
                v.max_wait = w;
                v.max_wait_sst = s.base.display().to_string();
            }
            if w > MAX_WAIT {
                v.waited_too_long.push(format!(
                    "{} waited {w:?} (downtime excluded) from {}",
                    s.base.display(),
                    at(c)
                ));
            }
        }
    }
}

/// No object is deleted (tablechop) while the newest restore point of its directory names
/// it, whichever index was the newest while it went.
fn check_deletions(seen: &Seen, v: &mut Verdict) {
    let mut by_dir: HashMap<&str, Vec<&IndexObs>> = HashMap::new();
    for ix in &seen.indexes {
        by_dir.entry(&ix.dir).or_default().push(ix);
    }
    for ixs in by_dir.values_mut() {
        ixs.sort_by_key(|x| x.last_modified);
    }
    let deleted_index = |key: &str, by: SystemTime| {
        seen.deletions
            .iter()
            .any(|d| d.key == key && d.after <= by + Duration::from_secs(5))
    };
    for d in &seen.deletions {
        let Some(path) = &d.path else { continue };
        if in_hardlink_dir(path) {
            continue;
        }
        let p = Path::new(path);
        let (Some(dir), Some(name)) = (p.parent().and_then(|x| x.to_str()), p.file_name()) else {
            continue;
        };
        let name = name.to_string_lossy();
        let Some(ixs) = by_dir.get(dir) else { continue };
        // The newest when it was still there, and any written until it was seen gone.
        let mut newest: Vec<&&IndexObs> = ixs
            .iter()
            .rfind(|x| x.last_modified <= d.after)
            .into_iter()
            .collect();
        newest.extend(
            ixs.iter()
                .filter(|x| x.last_modified > d.after && x.last_modified <= d.before),
        );
        if newest.is_empty()
            || newest.iter().any(|x| deleted_index(&x.key, d.before))
            || !newest.iter().all(|x| x.names.iter().any(|n| *n == name))
        {
            continue;
        }
        v.deleted_named.push(format!(
            "{path} deleted between {} and {} while the newest restore point of its directory named it ({})",
            at(d.after),
            at(d.before),
            newest.last().unwrap().key
        ));
    }
}

/// The real tableslurp restores the newest index of every live table directory: exactly
/// the complete SSTables on disk, byte-identical.
fn check_restores(
    s3: &common::S3,
    prefix: &str,
    node: &Node,
    j: &Journal,
    work: &Path,
) -> (usize, Vec<String>) {
    let mut bad = Vec::new();
    let mut n = 0;
    for (i, tb) in node.tables.iter().enumerate().filter(|(_, t)| !t.dropped) {
        for (r, dir) in tb.dirs.iter().enumerate() {
            let mut want: BTreeMap<String, String> = BTreeMap::new();
            for &l in &tb.live {
                let s = &j.ssts[l];
                if s.base.parent() != Some(dir.as_path()) {
                    continue;
                }
                for (f, (sh, _)) in &s.files {
                    want.insert(f.clone(), sh.clone());
                }
            }
            // The simulator's own bookkeeping matches the disk (else the check proves
            // nothing).
            let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                on_disk,
                want.keys().cloned().collect::<BTreeSet<_>>(),
                "simulator bug: {} on disk differs from its journal",
                dir.display()
            );
            let target = work.join(format!("restore{i}_{r}"));
            let (code, out) = common::run_bin(
                env!("CARGO_BIN_EXE_tableslurp"),
                &[
                    "-n",
                    HOST,
                    "--prefix",
                    prefix,
                    "--endpoint-url",
                    &s3.endpoint,
                    &s3.dest(),
                    dir.to_str().unwrap(),
                    target.to_str().unwrap(),
                ],
                &s3.cli_env(),
            );
            if want.is_empty() {
                // A truncated (or never flushed) table: nothing complete to restore.
                continue;
            }
            n += 1;
            if code != 0 {
                bad.push(format!(
                    "tableslurp {} exited {code}: {}",
                    dir.display(),
                    out.trim()
                ));
                continue;
            }
            let mut got: BTreeMap<String, String> = BTreeMap::new();
            for f in tablesnap::watch::scan(&target, true) {
                let rel = f
                    .strip_prefix(&target)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let rel = rel
                    .strip_prefix(dir.to_str().unwrap().trim_start_matches('/'))
                    .map(|r| r.trim_start_matches('/').to_string())
                    .unwrap_or(rel);
                got.insert(rel, common::sha256_file(&f));
            }
            if got != want {
                let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
                let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
                let differ: Vec<&String> = want
                    .iter()
                    .filter(|(k, s)| got.get(*k).is_some_and(|g| g != *s))
                    .map(|(k, _)| k)
                    .collect();
                // Whose bytes came back instead (an SAI build's old TOC, item 6).
                let mut why = Vec::new();
                for k in &differ {
                    let g = &got[*k];
                    for &l in &tb.live {
                        let s = &j.ssts[l];
                        if let Some((until, _)) = s
                            .history
                            .iter()
                            .find(|(_, m)| m.get(*k).is_some_and(|(sh, _)| sh == g))
                        {
                            why.push(format!(
                                "{k} came back with the node's bytes from before {}{}",
                                at(*until),
                                if k.ends_with("TOC.txt")
                                    && s.files.keys().any(|f| f.contains("-SAI+"))
                                {
                                    " (the TOC before an SAI build: issue #15 item 6)"
                                } else {
                                    ""
                                }
                            ));
                        }
                    }
                }
                bad.push(format!(
                    "restore of {}: missing {missing:?}, not on the node {extra:?}, different bytes {differ:?}{}",
                    dir.display(),
                    if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
                ));
            }
        }
    }
    (n, bad)
}

// ---- the run ------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_node_under_kill_9_restores_exactly_complete_sstables() {
    let root = templates_root();
    let secs = env_u64("SIMNODE_SECS").unwrap_or(60);
    let seed = env_u64("SIMNODE_SEED").unwrap_or_else(rand::random);
    let (pit_on, sai_on, chop_on) = (
        !env_on("SIMNODE_NO_PIT"),
        !env_on("SIMNODE_NO_SAI"),
        !env_on("SIMNODE_NO_CHOP"),
    );
    let repro = format!(
        "SIMNODE_SEED={seed} SIMNODE_SECS={secs}{}{}{} bash scripts/test.sh --test simnode -- --nocapture",
        if pit_on { "" } else { " SIMNODE_NO_PIT=1" },
        if sai_on { "" } else { " SIMNODE_NO_SAI=1" },
        if chop_on { "" } else { " SIMNODE_NO_CHOP=1" },
    );
    eprintln!("simnode: {secs} s, seed {seed} (replay: {repro})");
    let s3 = common::s3();
    let prefix = s3.unique_prefix("simnode");
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().canonicalize().unwrap();
    let roots = vec![work_dir.join("data"), work_dir.join("data2")];
    for r in &roots {
        std::fs::create_dir_all(r).unwrap();
    }
    let bin = Bin {
        prefix: prefix.clone(),
        data: roots.clone(),
        log: work_dir.join("tablesnap.log"),
    };
    let node = Arc::new(Mutex::new(Node {
        roots: roots.clone(),
        tables: vec![],
        next_uuid: 0,
        templates: corpus(&root),
        sai: sai_on,
    }));
    let journal = Arc::new(Mutex::new(Journal::default()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop_node = Arc::new(AtomicBool::new(false));
    let stop_poll = Arc::new(AtomicBool::new(false));

    let mut child = bin.command(&["-r", "-a", "-B"]).spawn().unwrap();
    let started = Instant::now();
    let mut down: Vec<(SystemTime, SystemTime)> = vec![(now(), now() + RESTART_GRACE)];
    let node_thread = {
        let (n, j, s) = (node.clone(), journal.clone(), stop_node.clone());
        std::thread::spawn(move || run_node(n, j, s, seed))
    };
    let poller = {
        let (s3, prefix, seen, stop) =
            (s3.clone(), prefix.clone(), seen.clone(), stop_poll.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                poll(&s3, &prefix, &seen).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // ---- kill -9 every 15-30 s (restart with -B), tablechop every 40-70 s, and
    // point-in-time restores every 15-30 s (each one a stop and a restart too) ------------
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let deadline = started + Duration::from_secs(secs);
    let far = deadline + Duration::from_secs(3600);
    let ms = |rng: &mut StdRng, a: u64, b: u64| Duration::from_millis(rng.random_range(a..b));
    let mut next_kill = Instant::now() + ms(&mut rng, 15_000, 30_000);
    let mut next_chop = if chop_on {
        started + ms(&mut rng, 20_000, 40_000)
    } else {
        far
    };
    let mut next_pit = if pit_on {
        started + ms(&mut rng, 10_000, 20_000)
    } else {
        far
    };
    let (mut kills, mut chops, mut pits_skipped) = (0u32, 0u32, 0u32);
    let mut chop_failures: Vec<String> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    loop {
        let at = next_kill.min(next_chop).min(next_pit);
        if at >= deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        if let Some(st) = child.try_wait().unwrap() {
            stop_node.store(true, Ordering::Relaxed);
            panic!(
                "tablesnap exited by itself ({st}); {repro}\n{}",
                bin.log_tail(40)
            );
        }
        let t = started.elapsed().as_secs_f32();
        if at == next_chop {
            let (s3c, p, r) = (s3.clone(), prefix.clone(), roots.clone());
            let res = tokio::task::spawn_blocking(move || chop(&s3c, &p, &r))
                .await
                .unwrap();
            chops += 1;
            match res {
                Ok(out) => events.push(format!("{t:.1} s: tablechop 0: {out}")),
                Err(e) => chop_failures.push(e),
            }
            next_chop = Instant::now() + ms(&mut rng, 40_000, 70_000);
            continue;
        }
        let k = now();
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        kills += 1;
        if at == next_pit {
            let (n, j, s, s3c, p, sd) = (
                node.clone(),
                journal.clone(),
                seen.clone(),
                s3.clone(),
                prefix.clone(),
                rng.random::<u64>(),
            );
            let res = tokio::task::spawn_blocking(move || {
                pit_restore(&n, &j, &s, &s3c, &p, &mut StdRng::seed_from_u64(sd))
            })
            .await
            .unwrap();
            match res {
                Some(what) => events.push(format!("{t:.1} s: point-in-time restore of {what}")),
                None => pits_skipped += 1,
            }
            next_pit = Instant::now() + ms(&mut rng, 15_000, 30_000);
        } else {
            events.push(format!("{t:.1} s: kill -9"));
        }
        child = bin.command(&["-r", "-a", "-B"]).spawn().unwrap();
        down.push((k, now() + RESTART_GRACE));
        next_kill = Instant::now() + ms(&mut rng, 15_000, 30_000);
    }
    tokio::time::sleep_until(deadline.into()).await;

    // ---- the end: node quiet, SIGTERM, a --once pass to catch up --------------------------
    stop_node.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || node_thread.join())
        .await
        .unwrap()
        .expect("the node thread panicked");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let term_at = now();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let st = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("tablesnap did not stop within 60 s of SIGTERM")
        .unwrap();
    assert!(st.success(), "SIGTERM exit: {st}\n{}", bin.log_tail(40));
    let once = tokio::time::timeout(
        Duration::from_secs(180),
        bin.command(&["--once", "-B", "-r"]).status(),
    )
    .await
    .expect("--once did not finish in 180 s")
    .unwrap();
    down.push((term_at, now()));
    stop_poll.store(true, Ordering::Relaxed);
    poller.await.unwrap();
    poll(&s3, &prefix, &seen).await;

    // ---- the checks -------------------------------------------------------------------------
    let n = node.lock().unwrap();
    let j = journal.lock().unwrap();
    let s = seen.lock().unwrap();
    let mut v = Verdict::default();
    check_objects(&j, &s, &mut v);
    check_indexes(&j, &s, &down, &mut v);
    check_latency(&j, &s, &down, &mut v);
    check_deletions(&s, &mut v);
    let (restored, bad_restores) = check_restores(&s3, &prefix, &n, &j, &work_dir);
    v.unseen_bytes.sort_by_key(|l| unseen_kind(l).0);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &v.unseen_bytes {
        *kinds.entry(unseen_kind(l).1).or_default() += 1;
    }
    let completed = j.ssts.iter().filter(|x| x.complete_at.is_some()).count();
    let live_tables = n.tables.iter().filter(|t| !t.dropped).count();

    eprintln!(
        "==== simulated node ({:?}, seed {seed}) ====",
        started.elapsed()
    );
    for e in &events {
        eprintln!("event:       {e}");
    }
    eprintln!(
        "node:        {} flushes, {} compactions committed ({} across data directories), {} aborted, {} snapshots ({} links), {} backup links, {} truncates, {} drops, {} tables ({live_tables} live) on {} data directories",
        j.flushes,
        j.compactions,
        j.cross_root_compactions,
        j.aborts,
        j.snapshots,
        j.snapshot_links,
        j.backup_links,
        j.truncates,
        j.drops,
        j.tables,
        n.roots.len()
    );
    eprintln!(
        "events:      {} SAI builds (TOC rewritten), {} point-in-time restores ({} SSTables back, {} skipped: nothing to go back to), {} SSTable names reused afterwards, {chops} tablechop runs",
        j.sai_builds, j.pit_restores, j.pit_sstables_back, pits_skipped, j.reused_names
    );
    eprintln!("daemon:      {kills} kill -9 + restart -B; SIGTERM: {st}; --once: {once}");
    eprintln!(
        "bucket:      {} LISTs, {} object versions fetched ({} data, {} indexes), {} keys seen deleted",
        s.lists,
        s.gets,
        s.data.len(),
        s.indexes.len(),
        s.deletions.len()
    );
    eprintln!(
        "bytes of unfinished files uploaded:      {} ({} torn: prefix of or different from the complete file; {} of SSTables never completed)",
        v.torn_bytes + v.never_completed_bytes,
        v.torn_bytes,
        v.never_completed_bytes
    );
    eprintln!(
        "index versions checked at their time:   {}; naming an unfinished or incomplete SSTable: {}; that lost live data: {}; that named unseen bytes: {} (names: {kinds:?}); that named deleted SSTables: {}",
        v.index_versions_checked,
        v.bad_index_versions,
        v.lost_live_indexes,
        v.unseen_bytes_indexes,
        v.dead_indexes
    );
    eprintln!(
        "snapshot/backup bytes sent (default events):    {} ({} objects, {} indexes)",
        v.snapshot_bytes,
        v.snapshot_objects,
        v.hardlink_indexes.len()
    );
    eprintln!(
        "longest wait of live data for an index covering it (downtime excluded): {:?} ({}); {} lives of {completed} complete SSTables covered, {} gone before any index covered them",
        v.max_wait, v.max_wait_sst, v.indexed, v.gone_before_indexed
    );
    eprintln!(
        "restores:    {restored} table directories restored with tableslurp, {} wrong",
        bad_restores.len()
    );
    eprintln!(
        "other:       {} transaction logs stored, {} superseded copies, {} records of held JBOD inputs, {} unknown objects, {} unparsable indexes, {} names of SSTables deleted > 10 s before their index, {} objects deleted while the newest index named them",
        v.txn_log_objects.len(),
        v.superseded_copies,
        v.hold_records,
        v.unknown_objects.len(),
        s.bad_index_bodies.len(),
        v.stale_names,
        v.deleted_named.len()
    );
    let mut failures = Vec::new();
    let mut fail = |what: &str, list: &[String]| {
        if !list.is_empty() {
            let shown: Vec<&String> = list.iter().take(10).collect();
            failures.push(format!(
                "{what} ({}):\n  {}",
                list.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
    };
    fail("torn objects", &v.torn);
    fail("objects of SSTables never completed", &v.never_completed);
    fail(
        "indexes naming an unfinished or incomplete SSTable",
        &v.bad_indexes,
    );
    fail(
        "indexes naming bytes that were not the node's (or not stored) when written",
        &v.unseen_bytes,
    );
    fail("indexes that lost live data", &v.lost_live);
    fail(
        "indexes naming SSTables deleted from the node (not live data)",
        &v.dead_names,
    );
    fail(
        "objects deleted while the newest restore point named them",
        &v.deleted_named,
    );
    fail("transaction logs stored", &v.txn_log_objects);
    fail("indexes of snapshots/ or backups/", &v.hardlink_indexes);
    fail("objects the node never wrote", &v.unknown_objects);
    fail(
        "live SSTables that waited too long for an index covering them",
        &v.waited_too_long,
    );
    fail("wrong restores", &bad_restores);
    fail("point-in-time restores", &j.pit_problems);
    fail("tablechop runs", &chop_failures);
    let bad_bodies: Vec<String> = s
        .bad_index_bodies
        .iter()
        .map(|(k, e)| format!("{k}: {e}"))
        .collect();
    fail("unparsable indexes", &bad_bodies);
    if v.snapshot_bytes > 0 {
        failures.push(format!(
            "snapshot/backup bytes sent with default events: {}",
            v.snapshot_bytes
        ));
    }
    if !once.success() {
        failures.push(format!("--once exited {once}"));
    }
    if !failures.is_empty() {
        eprintln!("==== INVARIANT VIOLATED (reproduce: {repro}) ====");
        for f in &failures {
            eprintln!("{f}");
        }
        let collisions = bin.log_grep("ollision", 10);
        if !collisions.is_empty() {
            eprintln!(
                "---- tablesnap log: collisions ----\n{}",
                collisions.join("\n")
            );
        }
        eprintln!("---- tablesnap log tail ----\n{}", bin.log_tail(30));
        let keep = std::env::temp_dir().join(format!("simnode-{seed}-tablesnap.log"));
        if std::fs::copy(&bin.log, &keep).is_ok() {
            eprintln!("---- the whole tablesnap log: {} ----", keep.display());
        }
    }
    assert!(
        kills as u64 >= secs.saturating_sub(30) / 30,
        "too few kills: {kills}"
    );
    assert!(j.flushes > 0 && completed > 0, "the node did nothing");
    assert!(restored > 0, "no table had anything to restore");
    assert!(
        failures.is_empty(),
        "{} invariant(s) violated; reproduce with {repro}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Found by the simulated node (seed 6464607465706294270, 300 s: 3 of 30 aborted
/// compactions): a compaction output's Data.db that is closed half-written and then
/// aborted (Cassandra closes the writer's files, logs ABORT, deletes the outputs) is
/// uploaded on its IN_CLOSE_WRITE although its transaction log has no final record. Never
/// named by an index, but bytes of a file that never became part of a complete SSTable.
/// Here the abort comes 3 s after the close, so the race is always lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_then_aborted_compaction_output_is_not_uploaded() {
    let root = templates_root();
    let tpl = corpus(&root).swap_remove(0);
    let s3 = common::s3();
    let prefix = s3.unique_prefix("simnode-abort");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().canonicalize().unwrap().join("data");
    let dir = data.join("ks/t-0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = Bin {
        prefix: prefix.clone(),
        data: vec![data.clone()],
        log: work.path().join("tablesnap.log"),
    };
    let mut child = bin.command(&["-r", "-a"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let name = format!("{}-9-{}", tpl.version, tpl.format);
    let log = log_path(&dir, tpl.version, "compaction", 9);
    append(
        &log,
        &record(RecordType::Add, dir.join(&name).to_str().unwrap(), 0),
    );
    let data_db = dir.join(format!("{name}-Data.db"));
    let body = &tpl.components[0].1;
    std::fs::write(&data_db, &body[..body.len() / 2]).unwrap(); // closed half-written
    tokio::time::sleep(Duration::from_secs(3)).await;
    append(&log, &record(RecordType::Abort, "", 0));
    std::fs::remove_file(&data_db).unwrap();
    std::fs::remove_file(&log).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let key = Layout::new(prefix.as_str(), HOST, ":").data_key(data_db.to_str().unwrap());
    let stored = s3.raw_get(&key).await;
    assert!(
        stored.is_none(),
        "{} bytes of an aborted compaction's half-written Data.db were uploaded ({key})\n{}",
        stored.map_or(0, |b| b.len()),
        bin.log_tail(20)
    );
}

/// The checks themselves can fail: a torn object, an object of an aborted compaction, a
/// snapshot object, an index naming an unfinished SSTable, one naming part of an SSTable,
/// and a long wait are each reported.
#[test]
fn checks_catch_torn_unfinished_and_partial() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let dir = PathBuf::from("/d/ks/t-0123456789abcdef0123456789abcdef");
    let files = |g: &str| -> Files {
        [("Data.db", "aa", 10), ("TOC.txt", "bb", 3)]
            .iter()
            .map(|(c, s, l)| (format!("nb-{g}-big-{c}"), (s.to_string(), *l)))
            .collect()
    };
    let mut j = Journal::default();
    let mut good = Sst::new(dir.join("nb-1-big"), files("1"), t0 - SLACK);
    good.complete(t0);
    j.add(good);
    let mut aborted = Sst::new(dir.join("nb-2-big"), files("2"), t0 - SLACK);
    aborted.aborted = true;
    j.add(aborted);
    let p = |n: &str| format!("{}/{n}", dir.display());
    let obs = |n: &str, size, sha: &str| DataObs {
        path: p(n),
        size,
        sha: sha.into(),
        last_modified: t0 + SLACK,
    };
    let seen = Seen {
        data: vec![
            obs("nb-1-big-Data.db", 10, "aa"),
            obs("nb-1-big-TOC.txt", 3, "bb"),
            DataObs {
                last_modified: t0,
                ..obs("nb-1-big-Data.db", 4, "prefix")
            },
            obs("nb-2-big-Data.db", 5, "cc"),
            obs("snapshots/s/nb-1-big-Data.db", 10, "aa"),
            obs(
                "nb_txn_flush_00000001-0a7f-11ef-9a2b-000000000001.log",
                9,
                "dd",
            ),
        ],
        indexes: vec![
            IndexObs {
                key: "ok".into(),
                last_modified: t0 + Duration::from_secs(2),
                dir: dir.display().to_string(),
                names: vec!["nb-1-big-Data.db".into(), "nb-1-big-TOC.txt".into()],
            },
            IndexObs {
                key: "partial+aborted".into(),
                last_modified: t0 + Duration::from_secs(90),
                dir: dir.display().to_string(),
                names: vec!["nb-1-big-Data.db".into(), "nb-2-big-Data.db".into()],
            },
        ],
        ..Default::default()
    };
    let mut v = Verdict::default();
    check_objects(&j, &seen, &mut v);
    assert_eq!((v.torn_bytes, v.never_completed_bytes), (4, 5));
    assert_eq!((v.snapshot_bytes, v.txn_log_objects.len()), (10, 1));
    check_indexes(&j, &seen, &[], &mut v);
    // The second index: part of nb-1, and the aborted nb-2.
    assert_eq!(v.bad_indexes.len(), 2, "{:?}", v.bad_indexes);
    assert_eq!(v.bad_index_versions, 1);
    assert_eq!(v.index_versions_checked, 2);
    assert!(v.unseen_bytes.is_empty() && v.lost_live.is_empty());
    check_latency(&j, &seen, &[], &mut v);
    assert_eq!(v.max_wait, Duration::from_secs(2));
    // With only the late index, the wait is too long unless the daemon was down meanwhile.
    let late = Seen {
        indexes: seen.indexes[1..]
            .iter()
            .map(|i| IndexObs {
                key: i.key.clone(),
                last_modified: i.last_modified,
                dir: i.dir.clone(),
                names: i.names.clone(),
            })
            .collect(),
        ..Default::default()
    };
    let mut v = Verdict::default();
    check_latency(&j, &late, &[], &mut v);
    assert_eq!(v.waited_too_long.len(), 1);
    let mut v = Verdict::default();
    check_latency(&j, &late, &[(t0, t0 + Duration::from_secs(60))], &mut v);
    assert!(v.waited_too_long.is_empty());
    assert_eq!(v.max_wait, Duration::from_secs(30));
}

/// The lineage checks can fail: an index leaving out a live SSTable (while one naming a
/// compaction output instead of its gone input is fine), an index naming a TOC.txt whose
/// stored bytes are those from before an SAI build rewrote it, a restore point naming an
/// object that disappears from the bucket, and a name reused for other bytes.
#[test]
fn lineage_checks_catch_lost_data_unseen_bytes_and_deletions() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let s = Duration::from_secs;
    let dir = PathBuf::from("/d/ks/t-0123456789abcdef0123456789abcdef");
    let files = |g: &str, toc: &str| -> Files {
        [("Data.db", format!("d{g}"), 10), ("TOC.txt", toc.into(), 3)]
            .into_iter()
            .map(|(c, sh, l)| (format!("nb-{g}-big-{c}"), (sh, l)))
            .collect()
    };
    let mut j = Journal::default();
    // nb-1: live; an SAI build at t0+20 adds a component and rewrites its TOC.
    let mut one = Sst::new(dir.join("nb-1-big"), files("1", "toc1"), t0 - SLACK);
    one.complete(t0);
    let mut sai = files("1", "toc1-sai");
    sai.insert("nb-1-big-SAI+aa+GroupComplete.db".into(), ("sai".into(), 4));
    let old = std::mem::replace(&mut one.files, sai);
    one.history.push((t0 + s(20), old));
    j.add(one);
    // nb-4 compacted into nb-5 at t0+30.
    let mut four = Sst::new(dir.join("nb-4-big"), files("4", "toc4"), t0 - SLACK);
    four.complete(t0);
    four.end(t0 + s(30));
    four.outputs = vec![2];
    j.add(four);
    let mut five = Sst::new(dir.join("nb-5-big"), files("5", "toc5"), t0 + s(25));
    five.complete(t0 + s(30));
    five.inputs = vec![1];
    j.add(five);
    let p = |n: &str| format!("{}/{n}", dir.display());
    let obs = |n: &str, size, sha: &str, lm| DataObs {
        path: p(n),
        size,
        sha: sha.into(),
        last_modified: lm,
    };
    let names = |ns: &[&str]| ns.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let ix = |key: &str, lm, ns: &[&str]| IndexObs {
        key: key.into(),
        last_modified: lm,
        dir: dir.display().to_string(),
        names: names(ns),
    };
    let one_pre = ["nb-1-big-Data.db", "nb-1-big-TOC.txt"];
    let one_sai = [
        "nb-1-big-Data.db",
        "nb-1-big-SAI+aa+GroupComplete.db",
        "nb-1-big-TOC.txt",
    ];
    let five_all = ["nb-5-big-Data.db", "nb-5-big-TOC.txt"];
    let with = |a: &[&'static str], b: &[&'static str]| -> Vec<&'static str> {
        a.iter().chain(b).copied().collect()
    };
    let seen = Seen {
        data: vec![
            obs("nb-1-big-Data.db", 10, "d1", t0 + SLACK),
            obs("nb-1-big-TOC.txt", 3, "toc1", t0 + SLACK),
            obs("nb-1-big-SAI+aa+GroupComplete.db", 4, "sai", t0 + s(25)),
            obs("nb-4-big-Data.db", 10, "d4", t0 + SLACK),
            obs("nb-4-big-TOC.txt", 3, "toc4", t0 + SLACK),
            obs("nb-5-big-Data.db", 10, "d5", t0 + s(31)),
            obs("nb-5-big-TOC.txt", 3, "toc5", t0 + s(31)),
        ],
        indexes: vec![
            // Before the SAI build: nb-1 and nb-4 whole, right.
            ix(
                "pre",
                t0 + s(10),
                &with(&one_pre, &["nb-4-big-Data.db", "nb-4-big-TOC.txt"]),
            ),
            // nb-5 instead of its input nb-4: right; but nb-1's stored TOC is the old one.
            ix("sai", t0 + s(60), &with(&one_sai, &five_all)),
            // nb-1, live since t0, left out.
            ix("lost", t0 + s(61), &five_all),
        ],
        deletions: vec![Deletion {
            key: "k".into(),
            path: Some(p("nb-5-big-Data.db")),
            after: t0 + s(62),
            before: t0 + s(63),
        }],
        ..Default::default()
    };
    let mut v = Verdict::default();
    check_objects(&j, &seen, &mut v);
    assert!(
        v.torn.is_empty() && v.unknown_objects.is_empty(),
        "{:?} {:?}",
        v.torn,
        v.unknown_objects
    );
    check_indexes(&j, &seen, &[], &mut v);
    assert!(v.bad_indexes.is_empty(), "{:?}", v.bad_indexes);
    assert_eq!(v.unseen_bytes_indexes, 1, "{:?}", v.unseen_bytes);
    assert!(
        v.unseen_bytes[0].starts_with("sai ") && v.unseen_bytes[0].contains("issue #15 item 6"),
        "{}",
        v.unseen_bytes[0]
    );
    assert_eq!(v.lost_live_indexes, 1, "{:?}", v.lost_live);
    assert!(
        v.lost_live[0].starts_with("lost ") && v.lost_live[0].contains("nb-1-big"),
        "{}",
        v.lost_live[0]
    );
    check_deletions(&seen, &mut v);
    assert_eq!(v.deleted_named.len(), 1, "{:?}", v.deleted_named);
    // Liveness: nb-4 was gone before an index covered it through nb-5; nb-5 waited 30 s.
    check_latency(&j, &seen, &[], &mut v);
    assert_eq!(v.max_wait, s(30), "{}", v.max_wait_sst);
    assert!(v.waited_too_long.is_empty(), "{:?}", v.waited_too_long);
    // Naming the gone nb-4 is right while its replacement nb-5 is left out (not stored),
    // wrong beside it.
    let four = ["nb-4-big-Data.db", "nb-4-big-TOC.txt"];
    let seen2 = Seen {
        indexes: vec![
            ix("justified", t0 + s(100), &with(&one_sai, &four)),
            ix(
                "dead",
                t0 + s(100),
                &with(&with(&one_sai, &five_all), &four),
            ),
        ],
        ..Default::default()
    };
    let mut v = Verdict::default();
    check_indexes(&j, &seen2, &[], &mut v);
    assert_eq!(v.dead_indexes, 1, "{:?}", v.dead_names);
    assert!(v.dead_names[0].starts_with("dead "), "{}", v.dead_names[0]);
    assert!(v.lost_live.is_empty(), "{:?}", v.lost_live);
    // A name reused for other bytes: an index naming the old object under it is caught.
    let mut again = Sst::new(dir.join("nb-4-big"), files("4", "toc4b"), t0 + s(70));
    again.complete(t0 + s(71));
    j.add(again);
    let seen = Seen {
        data: vec![
            obs("nb-4-big-Data.db", 10, "d4", t0 + SLACK),
            obs("nb-4-big-TOC.txt", 3, "toc4", t0 + SLACK),
        ],
        indexes: vec![ix(
            "reused",
            t0 + s(100),
            &["nb-4-big-Data.db", "nb-4-big-TOC.txt"],
        )],
        ..Default::default()
    };
    let mut v = Verdict::default();
    check_indexes(&j, &seen, &[], &mut v);
    assert_eq!(v.unseen_bytes.len(), 1, "{:?}", v.unseen_bytes);
    assert!(
        v.unseen_bytes[0].contains("generation reuse"),
        "{}",
        v.unseen_bytes[0]
    );
}
