//! # tablesnap
//!
//! Continuous backup of Cassandra SSTables to object storage, a drop-in successor of the
//! Python `tablesnap`/`tableslurp`/`tablechop` with the same command lines and bucket layout.
//!
//! ```text
//!   data dirs ──inotify──▶ watch ──paths──▶ queue ──▶ upload (N permits) ──▶ store
//!      │        IN_MOVED_TO, IN_CLOSE_WRITE,  (dedup,     stat + md5, single PUT   (S3, GCS,
//!      │        IN_CREATE, IN_Q_OVERFLOW     backoff)    or streamed multipart,   Azure,
//!      └──── scan (-B, new dirs, overflow, rescan) ─┘    then the -listdir.json   file://)
//!                                                          index, last
//!
//!   store ──one LIST──▶ restore::plan ──▶ restore::execute  (tableslurp: verified, parallel)
//!   store ──one LIST──▶ retention::decide(listing, indexes, now) ──▶ delete  (tablechop)
//! ```
//!
//! * [`layout`]: keys, index bodies and metadata, byte-compatible with the original.
//! * [`store`]: destinations and the object-store operations, with typed errors.
//! * [`credentials`]: the credential files the original's boto read (`~/.aws/credentials`,
//!   `~/.boto`), for hosts that keep their keys there.
//! * [`digest`]: Cassandra's own checksum of each `Data.db` (its `Digest` component), named
//!   from the file name and checked while streaming.
//! * [`filter`]: the original's include/exclude rules.
//! * [`watch`]: inotify watches, new directories, overflow rescans.
//! * [`upload`]: one file to the store (streamed, hashed, verified), then its index.
//! * [`daemon`]: `run(config, shutdown)` ties watch → queue → upload together.
//! * [`restore`] and [`retention`]: plan-then-execute for `tableslurp` and `tablechop`.
//! * [`metrics`]: Prometheus counters and the recovery-point gauge (`--metrics-addr`).
//! * [`throttle`]: the shared bandwidth limit (`--max-bandwidth`).
//! * [`cli`]: the three command lines (clap), shared by binaries and man pages.

pub mod cli;
pub mod credentials;
pub mod daemon;
pub mod digest;
pub mod filter;
pub mod layout;
pub mod metrics;
pub mod restore;
pub mod retention;
pub mod store;
pub mod throttle;
pub mod upload;
pub mod watch;
