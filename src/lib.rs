//! # tablesnap
//!
//! Continuous backup of Cassandra SSTables to object storage, a drop-in successor of the
//! Python `tablesnap`/`tableslurp`/`tablechop` with the same command lines and bucket layout.
//!
//! ```text
//!   data dirs ──inotify──▶ watch ──events──▶ daemon::state ──▶ upload (N permits) ──▶ store
//!      │   IN_MOVED_TO, IN_CLOSE_WRITE,       daemon::waiting      stat + md5 (+ the    (S3, GCS,
//!      │   IN_CREATE, IN_Q_OVERFLOW           (until its COMMIT,   SSTable's Digest),   Azure,
//!      │                                       one look per dir)   PUT, multipart or    file://)
//!      │                                      daemon::files        (sealed to age keys:
//!      │                                       (queued, running,    seal)
//!      │                                       retrying; queue fair
//!      │                                       across directories)
//!      └── scan (-B, new dirs, overflow, rescan), beside the loop ─┘  copy of a hard link
//!                       │                                                   │
//!         cassandra::DirView: complete SSTables (TOC, txn logs),            │
//!         snapshots/backups, what may be read ──▶ daemon::index ──▶ -listdir.json, one
//!                                                 (one write per dir,    write in flight per
//!                                                  interleaved)          directory, last
//!
//!   store ──one LIST──▶ restore::listing ──▶ restore::plan ──▶ restore::execute  (tableslurp)
//!   store ──one LIST──▶ retention::decide(listing, indexes, now) ──▶ delete  (tablechop)
//! ```
//!
//! * [`layout`]: keys, index bodies and metadata, byte-compatible with the original.
//! * [`cassandra`]: what a data directory is made of: SSTable names of every format,
//!   components and `TOC.txt`, transaction logs, snapshots and backups; which SSTables are
//!   complete (the only ones an index names).
//! * [`localfs`]: opening files in a directory Cassandra writes to (never a FIFO, never
//!   through a symlink) and when a file no SSTable rule covers counts as closed.
//! * [`store`]: destinations and the object-store operations, with typed errors: parsing,
//!   one client builder per backend, the paged S3 listing, the `file://` backend.
//! * [`credentials`]: the credential files the original's boto read (`~/.aws/credentials`,
//!   `~/.boto`), for hosts that keep their keys there.
//! * [`digest`]: Cassandra's own checksum of each `Data.db` (its `Digest` component), named
//!   from the file name and checked while streaming.
//! * [`filter`]: the original's include/exclude rules.
//! * [`watch`]: inotify watches, new directories, overflow rescans.
//! * [`upload`]: one file to the store (streamed, hashed, verified), then its index:
//!   transfer, presence (the known set), collisions, hard-link copies, index. What a
//!   restore point names is one pure function ([`upload::point`]) of the directory's view,
//!   what is durable, the last listing and what compactions replaced ([`upload::lineage`]).
//! * [`daemon`]: `run(config, shutdown)` ties watch → state → upload together. Its state
//!   is explicit models, each pure and held by a property test against a plain reference:
//!   what is owed per file (queued, running, retrying; busy directories and the
//!   recovery-point gauge derived), what waits before it may be queued (one look per
//!   directory beside the loop), the upload queue, the index scheduler; `state` applies
//!   events to them and the run loop does the I/O.
//! * [`seal`]: sealed backups: each data object an age file sealed on the node to public
//!   keys (`--recipient`), opened by range on restore (`--identity`); indexes stay in clear.
//! * [`restore`] and [`retention`]: plan-then-execute for `tableslurp` and `tablechop`.
//! * [`progress`]: files, bytes, rate and ETA of the first backfill (bar or log lines).
//! * [`metrics`]: Prometheus counters and the recovery-point gauge (`--metrics-addr`).
//! * [`throttle`]: the shared bandwidth limit (`--max-bandwidth`).
//! * [`cli`]: the three command lines (clap), shared by binaries and man pages.

pub mod cassandra;
pub mod cli;
pub mod compress;
pub mod credentials;
pub mod daemon;
pub mod digest;
pub mod filter;
pub mod layout;
pub mod localfs;
pub mod metrics;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod seal;
pub mod store;
pub mod throttle;
pub mod upload;
pub mod watch;

/// The real SSTables for unit tests: `$TABLESNAP_SSTABLES`, else `../shared/sstables`.
/// `None` (saying so) when missing, a panic when `TABLESNAP_REQUIRE_SSTABLES` is set (CI).
#[cfg(test)]
pub(crate) fn test_corpus() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TABLESNAP_SSTABLES")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/sstables")
        });
    if dir.join("MANIFEST.tsv").is_file() {
        return Some(dir);
    }
    if std::env::var_os("TABLESNAP_REQUIRE_SSTABLES").is_some_and(|v| !v.is_empty()) {
        panic!(
            "TABLESNAP_REQUIRE_SSTABLES is set but {} has no MANIFEST.tsv",
            dir.display()
        );
    }
    eprintln!(
        "skipping: {} not found (set TABLESNAP_SSTABLES)",
        dir.display()
    );
    None
}
