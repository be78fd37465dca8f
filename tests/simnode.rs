//! A simulated Cassandra 4.x/5.x node against the real S3 server (Garage), with the real
//! `tablesnap` binary (`-r -a`, `-B` on every restart) `kill -9`ed every 15-30 s, then a
//! restore of every table checked byte for byte (issue #10, "Done when").
//!
//! Why it exists: the unit and regression tests each pin one behaviour; only a node that
//! does everything at once (flushes landing during throttled compactions, aborts,
//! snapshots, incremental backups, drop/truncate, crashes of the daemon in between) shows
//! whether a restore point can ever name a torn or unfinished SSTable.
//!
//! The node (a generator thread, compactions in threads of their own) uses the real corpus
//! SSTables (`nb`, `oa`, `da` of `legacy_tables`) renamed to new generations:
//! * flush: transaction log with `ADD` (real CRC), components written in place (Data.db
//!   first, Digest and TOC last), `COMMIT`, log removed; then `backups/` hard links;
//! * compaction: log with `ADD` of the output, Data.db written in 2-4 bursts 1-3 s apart
//!   (longer than the daemon's quiet period), the other components, `REMOVE` of the
//!   inputs, `COMMIT`, inputs deleted, log removed; one in four is aborted mid-Data.db
//!   (file closed, `ABORT`, outputs deleted, log removed), as Cassandra does;
//! * snapshots (hard links + manifest.json in a staging directory, renamed into
//!   `snapshots/<tag>`), truncate (auto-snapshot, then every SSTable deleted), drop
//!   (auto-snapshot, then the directory removed), new tables.
//!
//! A poller LISTs the bucket every second and GETs every new object version, so torn
//! uploads that are overwritten later and indexes that are rewritten are still seen.
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

/// One SSTable the node started writing (key: its path without component).
#[derive(Default)]
struct Sst {
    /// Final bytes of every component: file name → (sha256, size).
    files: BTreeMap<String, (String, u64)>,
    /// When its transaction committed (None: never).
    complete_at: Option<SystemTime>,
    /// When it was deleted (compacted away, truncated, dropped, aborted).
    gone_at: Option<SystemTime>,
    aborted: bool,
}

#[derive(Default)]
struct Journal {
    sst: HashMap<PathBuf, Sst>,
    flushes: u64,
    compactions: u64,
    aborts: u64,
    snapshots: u64,
    backup_links: u64,
    snapshot_links: u64,
    truncates: u64,
    drops: u64,
    tables: u64,
}

struct Table {
    dir: PathBuf,
    version: &'static str,
    /// Complete, live SSTables (names without component).
    live: Vec<String>,
    compacting: bool,
    dropped: bool,
}

struct Node {
    root: PathBuf,
    tables: Vec<Table>,
    next_gen: u64,
    next_uuid: u64,
    templates: Vec<Template>,
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

fn log_path(dir: &Path, version: &str, op: &str, n: u64) -> PathBuf {
    dir.join(format!(
        "{version}_txn_{op}_{:08x}-0a7f-11ef-9a2b-{:012x}.log",
        n as u32, n
    ))
}

/// Allocates a generation and a log id, and records the SSTable's final bytes.
fn begin_sstable(node: &Shared<Node>, j: &Shared<Journal>, t: usize, tpl: usize) -> Begun {
    let mut n = node.lock().unwrap();
    n.next_gen += 1;
    n.next_uuid += 1;
    let tp = &n.templates[tpl];
    let name = format!("{}-{}-{}", tp.version, n.next_gen, tp.format);
    let dir = n.tables[t].dir.clone();
    let files = tp
        .components
        .iter()
        .map(|(c, b)| (format!("{name}-{c}"), (sha(b), b.len() as u64)))
        .collect();
    let comps = tp.components.clone();
    j.lock().unwrap().sst.insert(
        dir.join(&name),
        Sst {
            files,
            ..Default::default()
        },
    );
    Begun {
        log: log_path(&dir, tp.version, "x", n.next_uuid),
        uuid: n.next_uuid,
        version: tp.version,
        dir,
        name,
        comps,
    }
}

struct Begun {
    dir: PathBuf,
    name: String,
    version: &'static str,
    uuid: u64,
    log: PathBuf,
    comps: Vec<(String, Vec<u8>)>,
}

impl Begun {
    fn base(&self) -> String {
        self.dir.join(&self.name).to_str().unwrap().to_string()
    }
    fn path(&self, c: &str) -> PathBuf {
        self.dir.join(format!("{}-{c}", self.name))
    }
}

/// A memtable flush, then its incremental backup (hard links in `backups/`).
fn flush(node: &Shared<Node>, j: &Shared<Journal>, t: usize, tpl: usize) {
    let mut b = begin_sstable(node, j, t, tpl);
    b.log = log_path(&b.dir, b.version, "flush", b.uuid);
    append(&b.log, &record(RecordType::Add, &b.base(), 0));
    for (c, bytes) in &b.comps {
        std::fs::write(b.path(c), bytes).unwrap();
    }
    append(&b.log, &record(RecordType::Commit, "", 0));
    let mut jj = j.lock().unwrap();
    jj.sst.get_mut(&b.dir.join(&b.name)).unwrap().complete_at = Some(now());
    jj.flushes += 1;
    drop(jj);
    std::fs::remove_file(&b.log).unwrap();
    let backups = b.dir.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    for (c, _) in &b.comps {
        let n = format!("{}-{c}", b.name);
        std::fs::hard_link(b.dir.join(&n), backups.join(&n)).unwrap();
    }
    j.lock().unwrap().backup_links += b.comps.len() as u64;
    node.lock().unwrap().tables[t].live.push(b.name);
}

/// A throttled compaction of `inputs` into one new SSTable under its final name; with
/// `abort`, aborted in one of the pauses between Data.db bursts.
fn compact(
    node: Shared<Node>,
    j: Shared<Journal>,
    t: usize,
    tpl: usize,
    inputs: Vec<String>,
    abort: bool,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = begin_sstable(&node, &j, t, tpl);
    b.log = log_path(&b.dir, b.version, "compaction", b.uuid);
    append(&b.log, &record(RecordType::Add, &b.base(), 0));
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
            append(&b.log, &record(RecordType::Abort, "", 0));
            for (c, _) in &b.comps {
                let _ = std::fs::remove_file(b.path(c));
            }
            std::fs::remove_file(&b.log).unwrap();
            let mut jj = j.lock().unwrap();
            let s = jj.sst.get_mut(&b.dir.join(&b.name)).unwrap();
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
    for i in &inputs {
        let p = b.dir.join(i);
        append(&b.log, &record(RecordType::Remove, p.to_str().unwrap(), 8));
    }
    // Commit, swap in the tracker, delete the inputs, then the log (one lock: a snapshot
    // never links a file being deleted).
    let mut n = node.lock().unwrap();
    let mut jj = j.lock().unwrap();
    append(&b.log, &record(RecordType::Commit, "", 0));
    let at = now();
    jj.sst.get_mut(&b.dir.join(&b.name)).unwrap().complete_at = Some(at);
    for i in &inputs {
        let s = jj.sst.get_mut(&b.dir.join(i)).unwrap();
        for f in s.files.keys() {
            std::fs::remove_file(b.dir.join(f)).unwrap();
        }
        s.gone_at = Some(now());
    }
    jj.compactions += 1;
    std::fs::remove_file(&b.log).unwrap();
    let tb = &mut n.tables[t];
    tb.live.retain(|l| !inputs.contains(l));
    tb.live.push(b.name.clone());
    tb.compacting = false;
}

/// `nodetool snapshot`-like: hard links of every live SSTable and a manifest.json, made in
/// a staging directory and renamed into `snapshots/<tag>`.
fn snapshot(n: &Node, j: &mut Journal, t: usize, tag: &str) {
    let tb = &n.tables[t];
    let snaps = tb.dir.join("snapshots");
    let staging = snaps.join(format!(".{tag}.staging"));
    std::fs::create_dir_all(&staging).unwrap();
    let mut names = Vec::new();
    for l in &tb.live {
        for f in j.sst[&tb.dir.join(l)].files.keys() {
            std::fs::hard_link(tb.dir.join(f), staging.join(f)).unwrap();
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
    j.snapshots += 1;
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

fn new_table(n: &mut Node, j: &mut Journal, rng: &mut StdRng) {
    let i = n.tables.len();
    let version = VERSIONS[(i + rng.random_range(0..3usize)) % 3];
    let dir = n.root.join(format!(
        "ks{}/t{i}_{version}-{:032x}",
        i % 2,
        rng.random::<u128>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    n.tables.push(Table {
        dir,
        version,
        live: vec![],
        compacting: false,
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
    {
        let mut n = node.lock().unwrap();
        let mut jj = j.lock().unwrap();
        for _ in 0..3 {
            new_table(&mut n, &mut jj, &mut rng);
        }
    }
    let mut compactions: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
        compactions.retain(|h| !h.is_finished());
        let (alive, tpl_of): (Vec<usize>, Vec<Vec<usize>>) = {
            let n = node.lock().unwrap();
            let alive: Vec<usize> = (0..n.tables.len())
                .filter(|&t| !n.tables[t].dropped)
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
        let t = *alive.choose(&mut rng).unwrap();
        let tpl = *tpl_of[t].choose(&mut rng).unwrap();
        let op = rng.random_range(0..100);
        match op {
            0..50 => flush(&node, &j, t, tpl),
            50..65 if compactions.len() < 2 => {
                let mut n = node.lock().unwrap();
                let tb = &mut n.tables[t];
                if tb.compacting || tb.live.len() < 2 {
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
                    compact(nd, jd, t, tpl, inputs, abort, s)
                }));
            }
            65..73 => {
                let n = node.lock().unwrap();
                snapshot(&n, &mut j.lock().unwrap(), t, &format!("snap-{}", stamp()));
            }
            73..77 => {
                let mut n = node.lock().unwrap();
                if n.tables[t].compacting || (op >= 75 && alive.len() <= 2) {
                    continue;
                }
                let mut jj = j.lock().unwrap();
                let drop_it = op >= 75;
                let tag = format!(
                    "{}-{}-t{t}",
                    if drop_it { "dropped" } else { "truncated" },
                    stamp()
                );
                snapshot(&n, &mut jj, t, &tag);
                let tb = &mut n.tables[t];
                let at = now();
                for l in tb.live.drain(..) {
                    let s = jj.sst.get_mut(&tb.dir.join(&l)).unwrap();
                    if !drop_it {
                        for f in s.files.keys() {
                            std::fs::remove_file(tb.dir.join(f)).unwrap();
                        }
                    }
                    s.gone_at = Some(at);
                }
                if drop_it {
                    std::fs::remove_dir_all(&tb.dir).unwrap();
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
            _ => {}
        }
    }
    for h in compactions {
        h.join().expect("a compaction thread panicked");
    }
}

// ---- what the bucket held ----------------------------------------------------------------

struct DataObs {
    path: String,
    size: u64,
    sha: String,
}

struct IndexObs {
    key: String,
    last_modified: SystemTime,
    dir: String,
    names: Vec<String>,
}

#[derive(Default)]
struct Seen {
    versions: HashSet<(String, Option<String>, u64, i64)>,
    data: Vec<DataObs>,
    indexes: Vec<IndexObs>,
    bad_index_bodies: Vec<(String, String)>,
    lists: u64,
    gets: u64,
}

/// One LIST of the host prefix; every object version not seen before is fetched.
async fn poll(s3: &common::S3, prefix: &str, seen: &Mutex<Seen>) {
    let store = s3.raw();
    let lp = object_store::path::Path::parse(prefix.trim_end_matches('/')).unwrap();
    let Ok(metas) = store.list(Some(&lp)).try_collect::<Vec<_>>().await else {
        return; // the next poll sees it
    };
    let lay = Layout::new(prefix, HOST, ":");
    seen.lock().unwrap().lists += 1;
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
            });
        }
    }
}

// ---- the daemon --------------------------------------------------------------------------

struct Bin {
    prefix: String,
    data: PathBuf,
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
        .arg(&self.data)
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
    snapshot_bytes: u64,
    snapshot_objects: u64,
    /// What is wrong with each bad index (one line per SSTable named wrongly).
    bad_indexes: Vec<String>,
    /// Index versions with at least one line in `bad_indexes`.
    bad_index_versions: usize,
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

fn sst_of(path: &str) -> Option<(PathBuf, String)> {
    let p = Path::new(path);
    let n = p.file_name()?.to_str()?;
    let f = cassandra::parse_name(n)?;
    Some((p.parent()?.join(f.sstable), n.to_string()))
}

fn in_hardlink_dir(path: &str) -> bool {
    path.contains("/snapshots/") || path.contains("/backups/")
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
        let Some(s) = sst_of(&d.path).and_then(|(b, _)| j.sst.get(&b)) else {
            v.unknown_objects.push(d.path.clone());
            continue;
        };
        if s.complete_at.is_none() {
            v.never_completed_bytes += d.size;
            v.never_completed.push(format!(
                "{} ({} bytes{})",
                d.path,
                d.size,
                if s.aborted {
                    ", aborted compaction"
                } else {
                    ""
                }
            ));
            continue;
        }
        match s.files.get(name.as_ref()) {
            Some((sh, len)) if *sh == d.sha && *len == d.size => {}
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

/// Every index version seen names complete SSTables only, every component of each, only
/// after they were complete, and only objects stored with the complete file's bytes.
fn check_indexes(j: &Journal, seen: &Seen, v: &mut Verdict) {
    let mut stored: HashMap<&str, HashSet<&str>> = HashMap::new();
    for d in &seen.data {
        stored.entry(&d.path).or_default().insert(&d.sha);
    }
    for ix in &seen.indexes {
        if in_hardlink_dir(&format!("{}/", ix.dir)) {
            v.hardlink_indexes.push(ix.key.clone());
            continue;
        }
        let bad_before = v.bad_indexes.len();
        let mut by_sst: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        for n in &ix.names {
            let p = format!("{}/{n}", ix.dir);
            // Durable: the bucket held the complete file's bytes under its key.
            let want =
                sst_of(&p).and_then(|(b, f)| j.sst.get(&b).and_then(|s| s.files.get(&f)).cloned());
            let stored = want.is_some_and(|(sh, _)| {
                stored
                    .get(p.as_str())
                    .is_some_and(|set| set.contains(sh.as_str()))
            });
            if !stored {
                v.bad_indexes.push(format!(
                    "{} names {n}, whose complete bytes were never seen in the bucket",
                    ix.key
                ));
            }
            let Some((base, file)) = sst_of(&p) else {
                v.bad_indexes
                    .push(format!("{} names {n}, not an SSTable component", ix.key));
                continue;
            };
            by_sst.entry(base).or_default().insert(file);
        }
        for (base, files) in by_sst {
            let why = match j.sst.get(&base) {
                None => Some("an SSTable the node never wrote".to_string()),
                Some(s) if s.complete_at.is_none() => Some(format!(
                    "an SSTable that never completed{}",
                    if s.aborted { " (aborted)" } else { "" }
                )),
                Some(s) if s.complete_at.unwrap() > ix.last_modified + SLACK => {
                    Some("an SSTable before its transaction committed".to_string())
                }
                Some(s) if s.files.keys().cloned().collect::<BTreeSet<_>>() != files => Some(
                    format!("{} of the {} components", files.len(), s.files.len()),
                ),
                Some(s) => {
                    if s.gone_at
                        .is_some_and(|g| g + Duration::from_secs(10) < ix.last_modified)
                    {
                        v.stale_names += 1;
                    }
                    None
                }
            };
            if let Some(why) = why {
                v.bad_indexes
                    .push(format!("{} names {}: {why}", ix.key, base.display()));
            }
        }
        v.bad_index_versions += (v.bad_indexes.len() > bad_before) as usize;
    }
}

/// How long each complete SSTable waited for the first index naming it, daemon downtime
/// excluded.
fn check_latency(j: &Journal, seen: &Seen, down: &[(SystemTime, SystemTime)], v: &mut Verdict) {
    let mut first: HashMap<PathBuf, SystemTime> = HashMap::new();
    for ix in &seen.indexes {
        for n in &ix.names {
            if let Some((base, _)) = sst_of(&format!("{}/{n}", ix.dir)) {
                let e = first.entry(base).or_insert(ix.last_modified);
                *e = (*e).min(ix.last_modified);
            }
        }
    }
    for (base, s) in &j.sst {
        let Some(c) = s.complete_at else { continue };
        let until = match first.get(base) {
            Some(&l) => {
                v.indexed += 1;
                l
            }
            None => match s.gone_at {
                Some(g) => {
                    v.gone_before_indexed += 1;
                    g
                }
                None => {
                    v.waited_too_long
                        .push(format!("{} never named by an index", base.display()));
                    continue;
                }
            },
        };
        let w = until
            .duration_since(c)
            .unwrap_or_default()
            .saturating_sub(overlap(c, until, down));
        if w > v.max_wait && first.contains_key(base) {
            v.max_wait = w;
            v.max_wait_sst = base.display().to_string();
        }
        if w > MAX_WAIT {
            v.waited_too_long.push(format!(
                "{} waited {w:?} (downtime excluded)",
                base.display()
            ));
        }
    }
}

/// The real tableslurp restores the newest index of every live table: exactly the complete
/// SSTables on disk, byte-identical.
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
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        for l in &tb.live {
            for (f, (sh, _)) in &j.sst[&tb.dir.join(l)].files {
                want.insert(f.clone(), sh.clone());
            }
        }
        // The simulator's own bookkeeping matches the disk (else the check proves nothing).
        let on_disk: BTreeSet<String> = std::fs::read_dir(&tb.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            on_disk,
            want.keys().cloned().collect::<BTreeSet<_>>(),
            "simulator bug: {} on disk differs from its journal",
            tb.dir.display()
        );
        let target = work.join(format!("restore{i}"));
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
                tb.dir.to_str().unwrap(),
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
                tb.dir.display(),
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
                .strip_prefix(tb.dir.to_str().unwrap().trim_start_matches('/'))
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
            bad.push(format!(
                "restore of {}: missing {missing:?}, not on the node {extra:?}, different bytes {differ:?}",
                tb.dir.display()
            ));
        }
    }
    (n, bad)
}

// ---- the run ------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_node_under_kill_9_restores_exactly_complete_sstables() {
    let root = templates_root();
    let secs = env_u64("SIMNODE_SECS").unwrap_or(60);
    let seed = env_u64("SIMNODE_SEED").unwrap_or_else(rand::random);
    let repro = format!(
        "SIMNODE_SEED={seed} SIMNODE_SECS={secs} bash scripts/test.sh --test simnode -- --nocapture"
    );
    eprintln!("simnode: {secs} s, seed {seed} (replay: {repro})");
    let s3 = common::s3();
    let prefix = s3.unique_prefix("simnode");
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().canonicalize().unwrap();
    let data = work_dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bin = Bin {
        prefix: prefix.clone(),
        data: data.clone(),
        log: work_dir.join("tablesnap.log"),
    };
    let node = Arc::new(Mutex::new(Node {
        root: data.clone(),
        tables: vec![],
        next_gen: 0,
        next_uuid: 0,
        templates: corpus(&root),
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

    // ---- kill -9 every 15-30 s, restart with -B ----------------------------------------
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let deadline = started + Duration::from_secs(secs);
    let mut kills = 0u32;
    loop {
        let at = Instant::now() + Duration::from_millis(rng.random_range(15_000..30_000));
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
        let k = now();
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        kills += 1;
        child = bin.command(&["-r", "-a", "-B"]).spawn().unwrap();
        down.push((k, now() + RESTART_GRACE));
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
    check_indexes(&j, &s, &mut v);
    check_latency(&j, &s, &down, &mut v);
    let (restored, bad_restores) = check_restores(&s3, &prefix, &n, &j, &work_dir);
    let completed = j.sst.values().filter(|x| x.complete_at.is_some()).count();
    let live_tables = n.tables.iter().filter(|t| !t.dropped).count();

    eprintln!(
        "==== simulated node ({:?}, seed {seed}) ====",
        started.elapsed()
    );
    eprintln!(
        "node:        {} flushes, {} compactions committed, {} aborted, {} snapshots ({} links), {} backup links, {} truncates, {} drops, {} tables ({live_tables} live)",
        j.flushes,
        j.compactions,
        j.aborts,
        j.snapshots,
        j.snapshot_links,
        j.backup_links,
        j.truncates,
        j.drops,
        j.tables
    );
    eprintln!("daemon:      {kills} kill -9 + restart -B; SIGTERM: {st}; --once: {once}");
    eprintln!(
        "bucket:      {} LISTs, {} object versions fetched ({} data, {} indexes)",
        s.lists,
        s.gets,
        s.data.len(),
        s.indexes.len()
    );
    eprintln!(
        "bytes of unfinished files uploaded:      {} ({} torn: prefix of or different from the complete file; {} of SSTables never completed)",
        v.torn_bytes + v.never_completed_bytes,
        v.torn_bytes,
        v.never_completed_bytes
    );
    eprintln!(
        "indexes naming an unfinished or incomplete SSTable: {} (of {} index versions seen)",
        v.bad_index_versions,
        s.indexes.len()
    );
    eprintln!(
        "snapshot/backup bytes sent (default events):    {} ({} objects, {} indexes)",
        v.snapshot_bytes,
        v.snapshot_objects,
        v.hardlink_indexes.len()
    );
    eprintln!(
        "longest wait for an index (downtime excluded):  {:?} ({}); {} of {completed} complete SSTables indexed, {} deleted before any index named them",
        v.max_wait, v.max_wait_sst, v.indexed, v.gone_before_indexed
    );
    eprintln!(
        "restores:    {restored} tables restored with tableslurp, {} wrong",
        bad_restores.len()
    );
    eprintln!(
        "other:       {} transaction logs stored, {} unknown objects, {} unparsable indexes, {} names of SSTables deleted > 10 s before their index",
        v.txn_log_objects.len(),
        v.unknown_objects.len(),
        s.bad_index_bodies.len(),
        v.stale_names
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
    fail("transaction logs stored", &v.txn_log_objects);
    fail("indexes of snapshots/ or backups/", &v.hardlink_indexes);
    fail("objects the node never wrote", &v.unknown_objects);
    fail(
        "SSTables that waited too long for an index",
        &v.waited_too_long,
    );
    fail("wrong restores", &bad_restores);
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
        eprintln!("---- tablesnap log tail ----\n{}", bin.log_tail(30));
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
        data: data.clone(),
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
    let sst = |done: Option<SystemTime>, aborted| Sst {
        files: [
            ("nb-1-big-Data.db", "aa", 10),
            ("nb-1-big-TOC.txt", "bb", 3),
        ]
        .iter()
        .map(|(n, s, l)| (n.replace("nb-1", "X"), (s.to_string(), *l)))
        .collect(),
        complete_at: done,
        gone_at: None,
        aborted,
    };
    let mut j = Journal::default();
    let mut good = sst(Some(t0), false);
    good.files = good
        .files
        .into_iter()
        .map(|(k, v)| (k.replace('X', "nb-1"), v))
        .collect();
    j.sst.insert(dir.join("nb-1-big"), good);
    let mut aborted = sst(None, true);
    aborted.files = aborted
        .files
        .into_iter()
        .map(|(k, v)| (k.replace('X', "nb-2"), v))
        .collect();
    j.sst.insert(dir.join("nb-2-big"), aborted);
    let p = |n: &str| format!("{}/{n}", dir.display());
    let obs = |n: &str, size, sha: &str| DataObs {
        path: p(n),
        size,
        sha: sha.into(),
    };
    let seen = Seen {
        data: vec![
            obs("nb-1-big-Data.db", 10, "aa"),
            obs("nb-1-big-TOC.txt", 3, "bb"),
            obs("nb-1-big-Data.db", 4, "prefix"),
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
    check_indexes(&j, &seen, &mut v);
    // The second index: part of nb-1, the aborted nb-2, whose bytes were never stored whole.
    assert_eq!(v.bad_indexes.len(), 3, "{:?}", v.bad_indexes);
    assert_eq!(v.bad_index_versions, 1);
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
