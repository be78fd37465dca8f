//! What a Cassandra data directory is made of, as a pure function of names, contents and
//! stat: which files belong to which SSTable, which SSTables are complete, which are still
//! being written by a flush or compaction, and which directories hold hard links
//! (`snapshots/`, `backups/`) rather than live data.
//!
//! A backup that treats a table directory as a bag of files stores half-written compaction
//! outputs (3.0+ writes them under their final names for minutes or hours) and names them in
//! restore points. This module is the one place that knows better; the daemon asks it what
//! an index may name ([`DirView::nameable`]) and what a scan may upload
//! ([`crate::watch::scan_closed`]). Facts from `../shared/CASSANDRA.md` (checked against Cassandra's
//! `Descriptor`, `Component`, `LogFile` and `LogRecord`).
//!
//! An SSTable is **complete** when
//! * its name is final: files with a temporary name (`tmp-`/`tmplink-`/`-tmp-`/`-tmplink-`,
//!   which ≤ 2.2 renamed away, and a 3.0+ component rewrite `<component>.tmp`, renamed over
//!   the component) are never named and belong to no SSTable ([`is_temporary`]),
//! * its `TOC.txt` exists and every component the TOC lists exists,
//! * no transaction log without a final record (`COMMIT`/`ABORT`) `ADD`s it, and
//! * no committed transaction log `REMOVE`s it (it is obsolete, about to be deleted) and no
//!   aborted one `ADD`ed it (it is about to be deleted).
//!
//! Transaction logs themselves are never named by an index: only complete SSTables are, so a
//! restore never has to roll anything back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;

/// On-disk format of an SSTable (the token after the id in 2.2+ names; `big` before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Big,
    Bti,
}

/// One file of an SSTable, parsed from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SstableFile<'a> {
    /// The SSTable's name without its component: `nb-7-big`, `ks-t-ka-1`. Files sharing it
    /// are one SSTable; a transaction log record names it as the last path segment.
    pub sstable: &'a str,
    /// Format version, `ic` .. `da`.
    pub version: &'a str,
    /// Generation: decimal, or (4.1+) a time-UUID in base 36 with underscores.
    pub id: &'a str,
    pub format: Format,
    /// `Data.db`, `TOC.txt`, `Digest.crc32`, `SAI+aa+...db` ...
    pub component: &'a str,
    /// A temporary name, never final, renamed away when done: a `tmp-`/`tmplink-` prefix
    /// (2.2), `-tmp-`/`-tmplink-` after the table name (≤ 2.1), or a component ending in
    /// `.tmp` (3.0+: a component being rewritten, or received by streaming). Its `sstable`
    /// keeps the prefix (a tmp SSTable is another SSTable); a `.tmp` component names the
    /// SSTable it will replace a component of.
    pub temporary: bool,
}

// 2.2+: [tmp-|tmplink-]<version>-<id>-<big|bti>-<Component>
static NEW_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^((?:tmp|tmplink)-)?(([a-z]{2})-([0-9]+|[0-9a-z_]{16,})-(big|bti))-(.+)$").unwrap()
});
// ≤ 2.1: <ks>-<table>[-tmp|-tmplink]-<version>-<generation>-<Component>; a secondary index's
// table name carries a dot (`t.idx`).
static OLD_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(([A-Za-z0-9_]+-[A-Za-z0-9_.]+?)(-tmp|-tmplink)?-([a-z]{2})-([0-9]+))-(.+)$")
        .unwrap()
});
static TXN_LOG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z]{2}_txn_[a-z0-9_]+_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.log$")
        .unwrap()
});
static TABLE_DIR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_]+-[0-9a-f]{32}$").unwrap());

/// Parses an SSTable component's file name (every format from `ic` to `da`, integer or UUID
/// ids). `None` for anything else (transaction logs, `manifest.json`, ...).
pub fn parse_name(name: &str) -> Option<SstableFile<'_>> {
    if let Some(c) = NEW_NAME.captures(name) {
        let g = |i| c.get(i).map(|m| m.as_str()).unwrap_or("");
        return Some(SstableFile {
            sstable: c.get(2).map(|m| m.as_str()).unwrap_or(""),
            version: g(3),
            id: g(4),
            format: if g(5) == "bti" {
                Format::Bti
            } else {
                Format::Big
            },
            component: g(6),
            temporary: c.get(1).is_some() || g(6).ends_with(TMP_EXT),
        })
        .map(|mut f| {
            // Keep the tmp prefix in the SSTable name, so a temporary never groups with the
            // final SSTable of the same id.
            if c.get(1).is_some() {
                f.sstable = &name[..name.len() - f.component.len() - 1];
            }
            f
        });
    }
    let c = OLD_NAME.captures(name)?;
    let g = |i| c.get(i).map(|m| m.as_str()).unwrap_or("");
    Some(SstableFile {
        sstable: g(1),
        version: g(4),
        id: g(5),
        format: Format::Big,
        component: g(6),
        temporary: c.get(3).is_some() || g(6).ends_with(TMP_EXT),
    })
}

/// Whether a directory name is a 2.1+ table directory, `<table>-<32 hex id>`.
pub fn is_table_dir(name: &str) -> bool {
    TABLE_DIR.is_match(name)
}

/// `name` (an SSTable component with an integer generation) under generation `id`:
/// `nb-3-big-Data.db` → `nb-13-big-Data.db`, `ks-t-ka-3-Data.db` → `ks-t-ka-13-Data.db`.
/// `None` for a temporary name, a UUID generation or anything not an SSTable's.
pub fn with_generation(name: &str, id: u64) -> Option<String> {
    let f = parse_name(name)?;
    if f.temporary || f.id.parse::<u64>().is_err() {
        return None;
    }
    let sstable = match f.sstable.strip_suffix(f.id) {
        // ≤ 2.1: the generation ends the SSTable's name.
        Some(head) if head.ends_with('-') => format!("{head}{id}"),
        // 2.2+: `<version>-<id>-<format>`.
        _ => f.sstable.replacen(
            &format!("{}-{}-", f.version, f.id),
            &format!("{}-{id}-", f.version),
            1,
        ),
    };
    Some(format!("{sstable}-{}", f.component))
}

/// `Descriptor.TMP_EXT`: 3.0+ rewrites a component of a finished SSTable (Statistics.db on
/// incremental repair or an LCS level change) as `<component>.tmp`, then renames it over
/// the component; entire-SSTable streaming (4.0+) receives `<component>.<nanos>.tmp`.
const TMP_EXT: &str = ".tmp";

/// `<version>_txn_<operation>_<time uuid>.log`: a flush's or compaction's transaction log.
pub fn is_txn_log(name: &str) -> bool {
    TXN_LOG.is_match(name)
}

/// A name Cassandra uses for files in flight that are renamed into place, whatever their
/// component: `tmp-`/`tmplink-` prefixes (2.2), `-tmp-`/`-tmplink-` infixes (≤ 2.1), and a
/// component ending in `.tmp` (3.0+ metadata rewrites, streaming). Never uploaded, never
/// named by an index, and no part of the SSTable it belongs to.
pub fn is_temporary(name: &str) -> bool {
    parse_name(name).is_some_and(|f| f.temporary)
        || name.starts_with("tmp-")
        || name.starts_with("tmplink-")
}

/// Where a directory sits in a data tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// Live data (a table directory, a secondary index's `.idx/` below one, or anything
    /// else that is not one of the below).
    Live,
    /// `<table>/snapshots/<tag>/...`: hard links taken by `nodetool snapshot`, repair,
    /// `auto_snapshot` on drop/truncate.
    Snapshot,
    /// `<table>/backups/...`: incremental backups, hard links of flushed SSTables.
    Backup,
}

/// Classifies a directory from its path: a `snapshots` or `backups` component whose parent
/// is a table directory (`<name>-<32 hex id>`, 2.1+) makes everything below it a snapshot
/// or a backup. (Before 2.1 table directories carry no id; a keyspace named `backups` must
/// not turn a whole keyspace into hard links, so those are not recognised.)
pub fn dir_kind(dir: &std::path::Path) -> DirKind {
    let comps: Vec<&str> = dir
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    for w in comps.windows(2) {
        if TABLE_DIR.is_match(w[0]) {
            match w[1] {
                "snapshots" => return DirKind::Snapshot,
                "backups" => return DirKind::Backup,
                _ => {}
            }
        }
    }
    DirKind::Live
}

/// A transaction log record's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    Add,
    Remove,
    Commit,
    Abort,
}

impl RecordType {
    fn name(self) -> &'static str {
        match self {
            RecordType::Add => "ADD",
            RecordType::Remove => "REMOVE",
            RecordType::Commit => "COMMIT",
            RecordType::Abort => "ABORT",
        }
    }
}

/// One valid record of a transaction log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordType,
    /// Absolute path of the SSTable without its trailing `-` (empty for COMMIT/ABORT).
    pub path: String,
    pub update_time: i64,
    pub num_files: i32,
}

impl std::fmt::Display for Record {
    /// The line exactly as Cassandra writes it (`LogRecord.format`), without the newline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:[{},{},{}][{}]",
            self.kind.name(),
            self.path,
            self.update_time,
            self.num_files,
            record_checksum(self.kind, &self.path, self.update_time, self.num_files)
        )
    }
}

impl Record {
    /// A record of `kind` for the SSTable at `path` (absolute, without its trailing `-`;
    /// empty for COMMIT/ABORT), as a flush or compaction writes it: 8 files for an SSTable.
    pub fn new(kind: RecordType, path: &str) -> Self {
        Record {
            kind,
            path: path.to_string(),
            update_time: 0,
            num_files: if path.is_empty() { 0 } else { 8 },
        }
    }

    /// The SSTable name the record is about (last segment of its path).
    pub fn sstable(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

/// `LogRecord.computeChecksum`: CRC-32 over the path, the type name, `updateTime` as two
/// big-endian ints (low half first) and `numFiles`, masked to a non-negative long.
pub fn record_checksum(kind: RecordType, path: &str, update_time: i64, num_files: i32) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(path.as_bytes());
    h.update(kind.name().as_bytes());
    h.update(&(update_time as i32).to_be_bytes());
    h.update(&((update_time as u64 >> 32) as i32).to_be_bytes());
    h.update(&num_files.to_be_bytes());
    h.finalize() as u64
}

static RECORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(ADD|REMOVE|COMMIT|ABORT):\[(.*),(-?[0-9]+),(-?[0-9]+)\]\[([0-9]+)\]$").unwrap()
});

/// Parses one line; `None` if it is malformed or its checksum does not match.
pub fn parse_record(line: &str) -> Option<Record> {
    let c = RECORD.captures(line)?;
    let kind = match &c[1] {
        "ADD" => RecordType::Add,
        "REMOVE" => RecordType::Remove,
        "COMMIT" => RecordType::Commit,
        _ => RecordType::Abort,
    };
    let path = c[2].to_string();
    let update_time: i64 = c[3].parse().ok()?;
    let num_files: i32 = c[4].parse().ok()?;
    let sum: u64 = c[5].parse().ok()?;
    (record_checksum(kind, &path, update_time, num_files) == sum).then_some(Record {
        kind,
        path,
        update_time,
        num_files,
    })
}

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// No final record yet: its `ADD` SSTables are still being written.
    InProgress,
    Committed,
    Aborted,
}

/// A parsed transaction log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnLog {
    pub state: TxnState,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// The `ADD` records' paths (absolute, without the trailing `-`): on JBOD an output may
    /// be in another data directory than the log.
    pub added_paths: Vec<String>,
    /// A record before the last line was malformed or failed its checksum: the log is
    /// treated as unfinished (Cassandra would refuse it too), so nothing it adds is named.
    pub corrupt: bool,
}

/// Parses a transaction log's content. The last line may be torn (being appended): it is
/// ignored. A bad record elsewhere makes the log [`TxnLog::corrupt`] and in progress.
pub fn parse_txn_log(content: &[u8]) -> TxnLog {
    let text = String::from_utf8_lossy(content);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut log = TxnLog {
        state: TxnState::InProgress,
        added: vec![],
        removed: vec![],
        added_paths: vec![],
        corrupt: false,
    };
    let complete_last = content.ends_with(b"\n");
    for (i, l) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let Some(r) = parse_record(l.trim_end()) else {
            if !last || complete_last {
                log.corrupt = true;
            }
            continue;
        };
        match r.kind {
            RecordType::Add => {
                log.added.push(r.sstable().to_string());
                log.added_paths.push(r.path.clone());
            }
            RecordType::Remove => log.removed.push(r.sstable().to_string()),
            RecordType::Commit => log.state = TxnState::Committed,
            RecordType::Abort => log.state = TxnState::Aborted,
        }
    }
    if log.corrupt {
        log.state = TxnState::InProgress;
    }
    log
}

/// Why an SSTable may not be named by an index yet (or ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotComplete {
    /// Added by a transaction log with no final record.
    InTransaction { log: String },
    /// Added by an aborted transaction: about to be deleted.
    Aborted { log: String },
    /// Removed by a committed transaction: obsolete, about to be deleted.
    Obsolete { log: String },
    /// No `TOC.txt` yet.
    NoToc,
    /// The TOC lists components that do not exist (yet).
    Missing { components: Vec<String> },
}

impl std::fmt::Display for NotComplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotComplete::InTransaction { log } => {
                write!(
                    f,
                    "still being written (transaction log {log} has no COMMIT)"
                )
            }
            NotComplete::Aborted { log } => write!(f, "aborted by transaction log {log}"),
            NotComplete::Obsolete { log } => {
                write!(f, "obsolete: replaced by the committed transaction {log}")
            }
            NotComplete::NoToc => write!(f, "no TOC.txt yet"),
            NotComplete::Missing { components } => {
                write!(f, "missing components {}", components.join(", "))
            }
        }
    }
}

/// The state of one SSTable in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sstable {
    pub name: String,
    /// File names of this SSTable present in the directory.
    pub files: BTreeSet<String>,
    pub state: Result<(), NotComplete>,
}

/// A table directory, classified: what an index may name and what a scan may upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirView {
    pub sstables: BTreeMap<String, Sstable>,
    /// Regular files that are neither SSTable components nor transaction logs
    /// (`manifest.json`, `schema.cql`, commit log segments ...).
    pub others: BTreeSet<String>,
    pub txn_logs: BTreeSet<String>,
    /// Temporary names ([`is_temporary`]): never named, never part of an SSTable.
    pub temporary: BTreeSet<String>,
    /// What each committed transaction log still in the directory replaced: its outputs
    /// hold the data of its inputs (see [`Lineage`]).
    pub committed: Vec<Lineage>,
}

/// What a committed transaction replaced: its `ADD` SSTables hold the data of its `REMOVE`
/// ones (a compaction's outputs cover its inputs). The log is deleted soon after the
/// COMMIT, so whoever needs it remembers it when it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    pub outputs: BTreeSet<String>,
    pub inputs: BTreeSet<String>,
    /// The outputs' paths (absolute, without the trailing `-`).
    pub output_paths: BTreeSet<String>,
}

impl TxnLog {
    /// The lineage of a committed log (None for an abort or a log still open): a flush's
    /// has no inputs.
    pub fn lineage(&self) -> Option<Lineage> {
        (self.state == TxnState::Committed).then(|| Lineage {
            outputs: self.added.iter().cloned().collect(),
            inputs: self.removed.iter().cloned().collect(),
            output_paths: self.added_paths.iter().cloned().collect(),
        })
    }
}

impl DirView {
    /// Classifies the regular files `names` of one directory; `read` returns the content of
    /// a `TOC.txt` or transaction log (None if it vanished or cannot be read: a TOC that
    /// cannot be read makes its SSTable incomplete, a log that cannot be read makes nothing
    /// it might add nameable... since its ADDs are unknown, every SSTable without a TOC stays
    /// incomplete anyway, and one with a complete TOC is named).
    pub fn classify<'a>(
        names: impl IntoIterator<Item = &'a str>,
        mut read: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> DirView {
        let mut v = DirView::default();
        for n in names {
            if is_txn_log(n) {
                v.txn_logs.insert(n.to_string());
            } else if is_temporary(n) {
                // In flight, renamed into place when done: neither a file of its SSTable
                // (a Statistics.db.tmp beside a complete SSTable leaves it complete and
                // unchanged) nor a file to name.
                v.temporary.insert(n.to_string());
            } else if let Some(f) = parse_name(n) {
                v.sstables
                    .entry(f.sstable.to_string())
                    .or_insert_with(|| Sstable {
                        name: f.sstable.to_string(),
                        files: BTreeSet::new(),
                        state: Ok(()),
                    })
                    .files
                    .insert(n.to_string());
            } else {
                v.others.insert(n.to_string());
            }
        }
        // Transactions first: they decide over whatever the TOC says.
        let mut verdict: BTreeMap<String, NotComplete> = BTreeMap::new();
        for log_name in &v.txn_logs {
            let Some(content) = read(log_name) else {
                continue;
            };
            let log = parse_txn_log(&content);
            v.committed.extend(log.lineage());
            for a in &log.added {
                let why = match log.state {
                    TxnState::InProgress => NotComplete::InTransaction {
                        log: log_name.clone(),
                    },
                    TxnState::Aborted => NotComplete::Aborted {
                        log: log_name.clone(),
                    },
                    TxnState::Committed => continue,
                };
                verdict.insert(a.clone(), why);
            }
            if log.state == TxnState::Committed {
                for r in &log.removed {
                    verdict.entry(r.clone()).or_insert(NotComplete::Obsolete {
                        log: log_name.clone(),
                    });
                }
            }
        }
        for s in v.sstables.values_mut() {
            s.state = Self::judge(s, verdict.remove(&s.name), &mut read);
        }
        v
    }

    fn judge(
        s: &Sstable,
        txn: Option<NotComplete>,
        read: &mut impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Result<(), NotComplete> {
        if let Some(why) = txn {
            return Err(why);
        }
        let toc = format!("{}-TOC.txt", s.name);
        if !s.files.contains(&toc) {
            return Err(NotComplete::NoToc);
        }
        let Some(body) = read(&toc) else {
            return Err(NotComplete::NoToc);
        };
        let missing: Vec<String> = String::from_utf8_lossy(&body)
            .lines()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .filter(|c| !s.files.contains(&format!("{}-{c}", s.name)))
            .map(str::to_string)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(NotComplete::Missing {
                components: missing,
            })
        }
    }

    /// Files an index may name: every file of every complete SSTable, and the other regular
    /// files. Never a transaction log, never an unfinished SSTable's file.
    pub fn nameable(&self) -> BTreeSet<String> {
        let mut out = self.others.clone();
        for s in self.sstables.values() {
            if s.state.is_ok() {
                out.extend(s.files.iter().cloned());
            }
        }
        out
    }

    /// Whether `name` belongs to an SSTable that is not complete (a scan must not read it:
    /// it may still be growing).
    pub fn is_unfinished(&self, name: &str) -> bool {
        parse_name(name)
            .and_then(|f| self.sstables.get(f.sstable))
            .is_some_and(|s| s.state.is_err())
    }

    /// The SSTables that are not complete, with the reason.
    pub fn unfinished(&self) -> impl Iterator<Item = (&str, &NotComplete)> {
        self.sstables
            .values()
            .filter_map(|s| s.state.as_ref().err().map(|e| (s.name.as_str(), e)))
    }
}

/// Classifies a directory on disk (regular files only; symlinks and special files are not
/// data). A TOC or log larger than 1 MiB is not read (no real one comes close).
pub fn view_dir(dir: &std::path::Path) -> std::io::Result<DirView> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type().is_ok_and(|t| t.is_file()) {
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
    }
    Ok(DirView::classify(names.iter().map(String::as_str), |n| {
        read_small(&dir.join(n))
    }))
}

/// The time (unix seconds) of the newest TRUNCATE or DROP of the table in `dir`, from the
/// snapshot Cassandra takes first (`auto_snapshot`): `snapshots/truncated-<ms>-TABLE` or
/// `snapshots/dropped-<ms>-TABLE` (`Keyspace.getTimestampedSnapshotNameWithPrefix`). None:
/// no such snapshot (or `auto_snapshot: false`).
pub fn truncated_at(dir: &std::path::Path) -> Option<i64> {
    std::fs::read_dir(dir.join("snapshots"))
        .ok()?
        .flatten()
        .filter_map(|e| snapshot_cut(e.file_name().to_str()?))
        .max()
}

/// `truncated-<ms>-TABLE` / `dropped-<ms>-TABLE` → seconds.
fn snapshot_cut(tag: &str) -> Option<i64> {
    let rest = tag
        .strip_prefix("truncated-")
        .or_else(|| tag.strip_prefix("dropped-"))?;
    let (ms, table) = rest.split_once('-')?;
    if table.is_empty() || ms.len() < 10 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ms.parse::<i64>().ok()? / 1000)
}

/// Whether a transaction log of `dir` without a final record ADDs `sstable`: its files,
/// even those already closed, belong to a flush or compaction that may still be aborted.
/// Cheap enough for every event (a readdir and the logs, a few hundred bytes each).
pub fn in_open_transaction(dir: &std::path::Path, sstable: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let name = e.file_name();
        let Some(n) = name.to_str() else { return false };
        if !is_txn_log(n) {
            return false;
        }
        read_small(&e.path()).is_some_and(|c| {
            let log = parse_txn_log(&c);
            // Aborted: its outputs are about to be deleted (Cassandra logs ABORT, then
            // deletes them): never ready either.
            log.state != TxnState::Committed && log.added.iter().any(|a| a == sstable)
        })
    })
}

/// The content of a small file (a TOC, a transaction log): at most 1 MiB, None if it cannot
/// be opened as a regular file or read.
pub fn read_small(p: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    crate::localfs::open_regular(p)
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_truncate_or_drop_snapshot_tells_when_and_nothing_else_does() {
        use super::snapshot_cut;
        assert_eq!(
            snapshot_cut("truncated-1733300000123-users"),
            Some(1733300000)
        );
        assert_eq!(
            snapshot_cut("dropped-1733300009999-users"),
            Some(1733300009)
        );
        for other in [
            "1733300000123-users",
            "truncated-users",
            "truncated-1733300000123-",
            "truncated-17333x0000123-users",
            "pre-upgrade",
            "dropped-12-users",
        ] {
            assert_eq!(snapshot_cut(other), None, "{other}");
        }
        let d = tempfile::tempdir().unwrap();
        assert_eq!(super::truncated_at(d.path()), None);
        for t in [
            "truncated-1733300000123-t",
            "dropped-1733400000000-t",
            "daily",
        ] {
            std::fs::create_dir_all(d.path().join("snapshots").join(t)).unwrap();
        }
        assert_eq!(super::truncated_at(d.path()), Some(1733400000));
    }

    #[test]
    fn with_generation_renames_every_format_and_refuses_the_rest() {
        assert_eq!(
            with_generation("nb-3-big-Data.db", 13).as_deref(),
            Some("nb-13-big-Data.db")
        );
        assert_eq!(
            with_generation("da-3-bti-SAI+aa+GroupComplete.db", 40).as_deref(),
            Some("da-40-bti-SAI+aa+GroupComplete.db")
        );
        assert_eq!(
            with_generation("ks-t-ka-3-Data.db", 13).as_deref(),
            Some("ks-t-ka-13-Data.db")
        );
        assert_eq!(
            with_generation("ks-t.t_idx-jb-113-TOC.txt", 9).as_deref(),
            Some("ks-t.t_idx-jb-9-TOC.txt")
        );
        assert_eq!(
            with_generation("oa-3gaw_0k6p_3k5l22dr0nxs0lbvxw-big-Data.db", 1),
            None
        );
        assert_eq!(with_generation("tmp-nb-3-big-Data.db", 1), None);
        assert_eq!(with_generation("nb-3-big-Statistics.db.tmp", 1), None);
        assert_eq!(with_generation("manifest.json", 1), None);
    }

    use super::*;
    use std::path::Path;

    #[test]
    fn names_of_every_format() {
        let f = parse_name("nb-7-big-Data.db").unwrap();
        assert_eq!(
            (
                f.sstable,
                f.version,
                f.id,
                f.format,
                f.component,
                f.temporary
            ),
            ("nb-7-big", "nb", "7", Format::Big, "Data.db", false)
        );
        let f = parse_name("da-1-bti-Partitions.db").unwrap();
        assert_eq!((f.sstable, f.format), ("da-1-bti", Format::Bti));
        let f = parse_name("nb-3fw2_0tj4_46w3k2cpidnirvjy7k-big-Digest.crc32").unwrap();
        assert_eq!(f.id, "3fw2_0tj4_46w3k2cpidnirvjy7k");
        assert_eq!(f.component, "Digest.crc32");
        let f = parse_name("legacy_tables-legacy_ka_clust-ka-1-Data.db").unwrap();
        assert_eq!(
            (f.sstable, f.version, f.id, f.component),
            ("legacy_tables-legacy_ka_clust-ka-1", "ka", "1", "Data.db")
        );
        let f = parse_name("Keyspace1-legacyleveled-ic-0-TOC.txt").unwrap();
        assert_eq!(
            (f.sstable, f.version),
            ("Keyspace1-legacyleveled-ic-0", "ic")
        );
        let f = parse_name("ks-t.t_idx-jb-3-Index.db").unwrap();
        assert_eq!(f.sstable, "ks-t.t_idx-jb-3");
        let f = parse_name("ks-t-tmp-ka-2-Data.db").unwrap();
        assert!(f.temporary);
        assert_eq!(f.version, "ka");
        let f = parse_name("tmp-la-4-big-Data.db").unwrap();
        assert!(f.temporary);
        assert_eq!(f.sstable, "tmp-la-4-big");
        assert!(parse_name("tmplink-la-4-big-Index.db").unwrap().temporary);
        let f = parse_name("nb-1-big-SAI+aa+t+idx+PostingLists.db").unwrap();
        assert_eq!(f.component, "SAI+aa+t+idx+PostingLists.db");
        for n in [
            "manifest.json",
            "schema.cql",
            "nb_txn_flush_6e3b8a70-0a7f-11ef-9a2b-5b2d6c9d3a11.log",
            "CommitLog-7-1700000000000.log",
        ] {
            assert_eq!(parse_name(n), None, "{n}");
        }
        assert!(is_txn_log(
            "nb_txn_compaction_6e3b8a70-0a7f-11ef-9a2b-5b2d6c9d3a11.log"
        ));
        assert!(!is_txn_log("nb-1-big-Data.db"));
    }

    /// Issue #15: Cassandra rewrites an SSTable's metadata (incremental repair, an LCS level
    /// change) by writing `<component>.tmp` and renaming it over the component; 4.0's
    /// entire-SSTable streaming writes `<component>.<nanos>.tmp`. Such a file is temporary,
    /// never nameable, and its SSTable stays complete (and unchanged) beside it.
    #[test]
    fn a_component_rewrite_in_progress_is_temporary_and_leaves_its_sstable_complete() {
        for n in [
            "nb-5-big-Statistics.db.tmp",
            "nb-5-big-Data.db.1733040000123456.tmp",
            "da-3fw2_0tj4_46w3k2cpidnirvjy7k-bti-Statistics.db.tmp",
            "ks-t-ka-2-Statistics.db.tmp",
            "tmp-la-4-big-Data.db",
            "tmplink-la-4-big-Index.db",
            "ks-t-tmp-ka-2-Data.db",
            "ks-t-tmplink-ka-2-Data.db",
        ] {
            assert!(is_temporary(n), "{n}");
        }
        for n in [
            "nb-5-big-Statistics.db",
            "manifest.json",
            "nb-5-big-TOC.txt",
        ] {
            assert!(!is_temporary(n), "{n}");
        }
        let toc = BIG.join("\n") + "\n";
        let mut names = files("nb-5-big", BIG);
        names.push("nb-5-big-Statistics.db.tmp".into());
        names.push("nb-5-big-Data.db.1733040000123456.tmp".into());
        names.push("tmp-la-4-big-Data.db".into());
        let v = view(&names, &[("nb-5-big-TOC.txt", toc)]);
        let want: BTreeSet<String> = files("nb-5-big", BIG).into_iter().collect();
        assert_eq!(v.nameable(), want);
        assert_eq!(v.sstables["nb-5-big"].state, Ok(()));
        assert_eq!(
            v.sstables["nb-5-big"].files, want,
            "a temporary is no file of its SSTable"
        );
        assert!(v.unfinished().next().is_none());
        assert!(!v.others.contains("nb-5-big-Statistics.db.tmp"));
    }

    #[test]
    fn directory_kinds() {
        let t = "/d/ks/events-5b608090e03d11ebb4c1d335f841c590";
        assert_eq!(dir_kind(Path::new(t)), DirKind::Live);
        assert_eq!(
            dir_kind(&Path::new(t).join("snapshots/1700000000")),
            DirKind::Snapshot
        );
        assert_eq!(dir_kind(&Path::new(t).join("backups")), DirKind::Backup);
        assert_eq!(dir_kind(&Path::new(t).join(".events_idx")), DirKind::Live);
        // A keyspace (or pre-2.1 table) called backups/snapshots is live data.
        assert_eq!(dir_kind(Path::new("/d/backups/t-x")), DirKind::Live);
        assert_eq!(dir_kind(Path::new("/d/ks/snapshots")), DirKind::Live);
    }

    fn rec(kind: RecordType, path: &str, t: i64, n: i32) -> String {
        let r = Record {
            kind,
            path: path.into(),
            update_time: t,
            num_files: n,
        };
        format!("{r}\n")
    }

    #[test]
    fn record_checksum_matches_cassandra() {
        // A COMMIT record as Cassandra 4.x writes it (from CASSANDRA.md, checked against
        // LogRecord.computeChecksum): CRC-32 of "COMMIT" and twelve zero bytes.
        assert_eq!(
            parse_record("COMMIT:[,0,0][2613697770]").map(|r| r.kind),
            Some(RecordType::Commit)
        );
        assert_eq!(parse_record("COMMIT:[,0,0][2613697771]"), None);
        let l = rec(RecordType::Remove, "/d/ks/t-1/nb-3-big", 1733040000123, 8);
        let r = parse_record(l.trim_end()).unwrap();
        assert_eq!((r.sstable(), r.update_time), ("nb-3-big", 1733040000123));
    }

    #[test]
    fn transaction_logs() {
        let add = rec(RecordType::Add, "/d/ks/t-1/nb-7-big", 0, 8);
        let rm = rec(RecordType::Remove, "/d/ks/t-1/nb-3-big", 1733040000123, 8);
        let open = parse_txn_log(format!("{add}{rm}").as_bytes());
        assert_eq!(open.state, TxnState::InProgress);
        assert_eq!(open.added, ["nb-7-big"]);
        let done =
            parse_txn_log(format!("{add}{rm}{}", rec(RecordType::Commit, "", 0, 0)).as_bytes());
        assert_eq!(done.state, TxnState::Committed);
        let ab = parse_txn_log(format!("{add}{}", rec(RecordType::Abort, "", 0, 0)).as_bytes());
        assert_eq!(ab.state, TxnState::Aborted);
        // A torn last line is a record being appended; a bad line before it is corruption.
        let torn = parse_txn_log(format!("{add}COMMIT:[,0,0][26136").as_bytes());
        assert_eq!((torn.state, torn.corrupt), (TxnState::InProgress, false));
        let bad = parse_txn_log(
            format!("ADD:[/x,0,8][1]\n{}", rec(RecordType::Commit, "", 0, 0)).as_bytes(),
        );
        assert_eq!((bad.state, bad.corrupt), (TxnState::InProgress, true));
    }

    fn files(s: &str, comps: &[&str]) -> Vec<String> {
        comps.iter().map(|c| format!("{s}-{c}")).collect()
    }

    pub(super) const BIG: &[&str] = &[
        "Data.db",
        "Index.db",
        "Filter.db",
        "Summary.db",
        "Statistics.db",
        "Digest.crc32",
        "TOC.txt",
    ];

    fn view(names: &[String], contents: &[(&str, String)]) -> DirView {
        DirView::classify(names.iter().map(String::as_str), |n| {
            contents
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone().into_bytes())
        })
    }

    #[test]
    fn an_index_names_complete_sstables_only() {
        let toc = BIG.join("\n") + "\n";
        let mut names = files("nb-5-big", BIG);
        // A compaction output still being written: its TOC is already there, but its log
        // has no COMMIT.
        names.extend(files("nb-7-big", BIG));
        // A flush whose TOC is not written yet.
        names.extend(files("nb-8-big", &["Data.db", "Index.db"]));
        // An SSTable whose TOC names a component that is missing.
        names.extend(files("nb-9-big", &["Data.db", "TOC.txt"]));
        let log = "nb_txn_compaction_6e3b8a70-0a7f-11ef-9a2b-5b2d6c9d3a11.log";
        names.push(log.into());
        names.push("manifest.json".into());
        let v = view(
            &names,
            &[
                ("nb-5-big-TOC.txt", toc.clone()),
                ("nb-7-big-TOC.txt", toc.clone()),
                ("nb-9-big-TOC.txt", "Data.db\nTOC.txt\nIndex.db\n".into()),
                (
                    log,
                    rec(RecordType::Add, "/d/ks/t-1/nb-7-big", 0, 8)
                        + &rec(RecordType::Remove, "/d/ks/t-1/nb-5-big", 5, 8),
                ),
            ],
        );
        let named = v.nameable();
        let mut want: BTreeSet<String> = files("nb-5-big", BIG).into_iter().collect();
        want.insert("manifest.json".into());
        assert_eq!(named, want);
        assert!(v.is_unfinished("nb-7-big-Data.db"));
        assert!(v.is_unfinished("nb-8-big-Data.db"));
        assert!(!v.is_unfinished("manifest.json"));
        assert_eq!(
            v.sstables["nb-9-big"].state,
            Err(NotComplete::Missing {
                components: vec!["Index.db".into()]
            })
        );
        // Once committed: the output is named and the input it replaced is not.
        let v = view(
            &names,
            &[
                ("nb-5-big-TOC.txt", toc.clone()),
                ("nb-7-big-TOC.txt", toc.clone()),
                (
                    log,
                    rec(RecordType::Add, "/d/ks/t-1/nb-7-big", 0, 8)
                        + &rec(RecordType::Remove, "/d/ks/t-1/nb-5-big", 5, 8)
                        + &rec(RecordType::Commit, "", 0, 0),
                ),
            ],
        );
        assert!(v.nameable().contains("nb-7-big-Data.db"));
        assert!(!v.nameable().contains("nb-5-big-Data.db"));
        assert!(!v.nameable().contains(log));
    }

    /// Every SSTable of the real corpus is complete, and its files are all named.
    #[test]
    fn the_whole_corpus_is_complete() {
        let Some(root) = crate::test_corpus() else {
            return;
        };
        let mut dirs = 0;
        let mut sstables = 0;
        for ks in std::fs::read_dir(&root).unwrap().flatten() {
            if !ks.path().is_dir() {
                continue;
            }
            for t in std::fs::read_dir(ks.path()).unwrap().flatten() {
                let v = view_dir(&t.path()).unwrap();
                dirs += 1;
                sstables += v.sstables.len();
                let bad: Vec<_> = v.unfinished().collect();
                assert!(bad.is_empty(), "{}: {bad:?}", t.path().display());
                assert!(v.others.is_empty(), "{:?}", v.others);
                for s in v.sstables.values() {
                    assert!(s.files.len() >= 7, "{}: {:?}", s.name, s.files);
                }
            }
        }
        assert!(
            dirs > 40 && sstables > 100,
            "{dirs} dirs, {sstables} sstables"
        );
    }
}

/// A property test of the model against an oracle: random sequences of what Cassandra does
/// to a table directory (flushes, throttled compactions, commits, aborts, in the order
/// Cassandra performs their steps, with torn log appends and snapshots in between). After
/// every step, what an index may name is exactly the set of SSTables the oracle knows to be
/// complete: never an unfinished, aborted or obsolete one (safety), always every complete
/// one (liveness).
#[cfg(test)]
mod model_tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    use super::tests::BIG as COMPONENTS;

    #[derive(Debug, Clone)]
    enum Op {
        StartFlush,
        /// Start a compaction of up to 3 complete SSTables (picked by these seeds).
        StartCompaction(u8, u8),
        /// Write the next component of the output of the transaction picked by the seed.
        Write(u8),
        /// Append COMMIT (all components written) or ABORT.
        Finish(u8, bool),
        /// Cleanup after the final record: delete inputs (commit) or outputs (abort),
        /// then the log.
        Cleanup(u8),
        /// A record being appended, torn (not a full line yet).
        TornAppend(u8),
        /// nodetool snapshot: hard links elsewhere, nothing changes here.
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => Just(Op::StartFlush),
            3 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::StartCompaction(a, b)),
            6 => any::<u8>().prop_map(Op::Write),
            2 => (any::<u8>(), prop::bool::weighted(0.8)).prop_map(|(t, c)| Op::Finish(t, c)),
            2 => any::<u8>().prop_map(Op::Cleanup),
            1 => any::<u8>().prop_map(Op::TornAppend),
            1 => Just(Op::Snapshot),
        ]
    }

    #[derive(Debug)]
    struct Txn {
        log: String,
        out: u32,
        inputs: Vec<u32>,
        written: usize,
        fin: Option<bool>,
    }

    /// The directory (name -> content) and the oracle's truth beside it.
    #[derive(Default)]
    struct World {
        files: BTreeMap<String, Vec<u8>>,
        txns: Vec<Txn>,
        /// SSTables whose transaction committed and that no committed compaction removed.
        complete: BTreeSet<u32>,
        next: u32,
        /// The next check sees this transaction's log with half a COMMIT appended.
        torn: Option<usize>,
    }

    fn rec(kind: RecordType, path: &str) -> String {
        format!("{}\n", Record::new(kind, path))
    }

    impl World {
        fn sst(g: u32) -> String {
            format!("nb-{g}-big")
        }
        fn append(&mut self, log: &str, s: &str) {
            self.files
                .entry(log.to_string())
                .or_default()
                .extend_from_slice(s.as_bytes());
        }
        fn start(&mut self, inputs: Vec<u32>) {
            self.next += 1;
            let out = self.next;
            let log = format!("nb_txn_flush_{out:08x}-0a7f-11ef-9a2b-5b2d6c9d3a11.log");
            self.append(
                &log,
                &rec(RecordType::Add, &format!("/d/ks/t-1/{}", Self::sst(out))),
            );
            for i in &inputs {
                self.append(
                    &log,
                    &rec(RecordType::Remove, &format!("/d/ks/t-1/{}", Self::sst(*i))),
                );
            }
            self.txns.push(Txn {
                log,
                out,
                inputs,
                written: 0,
                fin: None,
            });
        }
        fn apply(&mut self, o: Op) {
            let n = self.txns.len();
            let pick = |s: u8| (n > 0).then(|| s as usize % n);
            match o {
                Op::StartFlush => self.start(vec![]),
                Op::StartCompaction(a, b) => {
                    let busy: BTreeSet<u32> =
                        self.txns.iter().flat_map(|t| t.inputs.clone()).collect();
                    let cand: Vec<u32> = self
                        .complete
                        .iter()
                        .copied()
                        .filter(|g| !busy.contains(g))
                        .collect();
                    if cand.is_empty() {
                        return;
                    }
                    let mut inputs =
                        vec![cand[a as usize % cand.len()], cand[b as usize % cand.len()]];
                    inputs.dedup();
                    self.start(inputs);
                }
                Op::Write(s) => {
                    let Some(i) = pick(s) else { return };
                    let t = &mut self.txns[i];
                    if t.fin.is_some() || t.written == COMPONENTS.len() {
                        return;
                    }
                    let c = COMPONENTS[t.written];
                    t.written += 1;
                    let body = if c == "TOC.txt" {
                        (COMPONENTS.join("\n") + "\n").into_bytes()
                    } else {
                        vec![t.out as u8; 10]
                    };
                    let name = format!("{}-{c}", Self::sst(t.out));
                    self.files.insert(name, body);
                }
                Op::Finish(s, commit) => {
                    let Some(i) = pick(s) else { return };
                    let t = &self.txns[i];
                    if t.fin.is_some() || (commit && t.written < COMPONENTS.len()) {
                        return;
                    }
                    let log = t.log.clone();
                    let kind = if commit {
                        RecordType::Commit
                    } else {
                        RecordType::Abort
                    };
                    self.append(&log, &rec(kind, ""));
                    let t = &mut self.txns[i];
                    t.fin = Some(commit);
                    if commit {
                        let (out, inputs) = (t.out, t.inputs.clone());
                        self.complete.insert(out);
                        for g in inputs {
                            self.complete.remove(&g);
                        }
                    }
                }
                Op::Cleanup(s) => {
                    let Some(i) = pick(s) else { return };
                    let Some(commit) = self.txns[i].fin else {
                        return;
                    };
                    let t = self.txns.remove(i);
                    let gone: Vec<u32> = if commit { t.inputs } else { vec![t.out] };
                    for g in gone {
                        let p = format!("{}-", Self::sst(g));
                        self.files.retain(|k, _| !k.starts_with(&p));
                    }
                    self.files.remove(&t.log);
                }
                Op::TornAppend(s) => {
                    // Seen by the next check only: a reader catches a record half-appended.
                    self.torn = pick(s).filter(|i| self.txns[*i].fin.is_none());
                }
                Op::Snapshot => {}
            }
        }
        fn check(&mut self) -> Result<(), TestCaseError> {
            let torn = self.torn.take().map(|i| self.txns[i].log.clone());
            let v = DirView::classify(self.files.keys().map(String::as_str), |n| {
                let mut c = self.files.get(n).cloned()?;
                if torn.as_deref() == Some(n) {
                    c.extend_from_slice(b"COMMIT:[,0,0][26136");
                }
                Some(c)
            });
            let named: BTreeSet<String> = v.nameable();
            let want: BTreeSet<String> = self
                .complete
                .iter()
                .flat_map(|g| {
                    COMPONENTS
                        .iter()
                        .map(move |c| format!("{}-{c}", Self::sst(*g)))
                })
                .filter(|n| self.files.contains_key(n))
                .collect();
            prop_assert_eq!(named, want);
            Ok(())
        }
    }

    /// The window the property test must reach: a compaction committed, its inputs not yet
    /// deleted (they are obsolete, not nameable).
    #[test]
    fn a_committed_compaction_makes_its_inputs_obsolete_at_once() {
        let mut w = World::default();
        let mut ops = vec![Op::StartFlush];
        ops.extend((0..7).map(|_| Op::Write(0)));
        ops.extend([
            Op::Finish(0, true),
            Op::Cleanup(0),
            Op::StartCompaction(0, 0),
        ]);
        ops.extend((0..7).map(|_| Op::Write(0)));
        ops.push(Op::Finish(0, true));
        for o in ops {
            w.apply(o);
            w.check().unwrap();
        }
        assert_eq!(w.complete, BTreeSet::from([2]));
        assert!(
            w.files.contains_key("nb-1-big-Data.db"),
            "input still there"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn an_index_names_exactly_the_complete_sstables(ops in prop::collection::vec(op(), 1..120)) {
            let mut w = World::default();
            for o in ops {
                w.apply(o);
                w.check()?;
            }
        }
    }
}
