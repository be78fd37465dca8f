//! The `tableslurp` command line: every flag of the original, plus `--prefix`,
//! `--keyname-separator`, `--endpoint-url`, URL destinations, `-r`, `--commitlogs`,
//! `--as-of`, `--dry-run`, `--list` and `--verify`. It only parses, sets up and reports; the
//! work is in [`crate::restore`].

use std::io::IsTerminal;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::layout::Layout;
use crate::restore::{
    self, ExecOptions, Observer, Outcome, Ownership, PlannedFile, PrepareError, RestoreOptions,
    Selection, escape,
};
use crate::store::{Store, StoreOptions};

const EXIT_CODES: &str = "\
Exit status:
  0  success (or nothing needed doing)
  1  some files could not be restored or verified, or a table's file set is incomplete
     or corrupt at the source (each is named in the log)
  2  bad usage
  3  configuration or destination error: bucket missing, access denied, endpoint
     unreachable, target not writable, nothing to restore found, not enough room;
     sealed objects and no --identity, or none that opens them (found before anything
     is written)";

/// Restore Cassandra SSTables backed up by tablesnap.
#[derive(Debug, Parser)]
#[command(
    name = "tableslurp",
    version,
    about = "Restore a Cassandra table (or a whole data root) backed up by tablesnap",
    long_about = "Restore a Cassandra table (or a whole data root) backed up by tablesnap.\n\n\
        ORIGIN is the directory as it was on the backed-up host; the newest complete file set \
        (-listdir.json index whose every object is in the bucket) found directly in it is \
        downloaded into TARGET, every Data.db verified against its SSTable's Digest and every \
        other file against its stored MD5 before it appears under its final name. Nothing is \
        written through a symlink under TARGET; modes are masked to 0777.",
    after_help = EXIT_CODES
)]
pub struct Args {
    /// Access key id (or TABLESNAP_AWS_KEY; default: AWS_ACCESS_KEY_ID, then the
    /// instance role)
    #[arg(
        short = 'k',
        long = "aws-key",
        value_name = "KEY",
        env = "TABLESLURP_AWS_KEY",
        hide_env_values = true
    )]
    pub aws_key: Option<String>,
    /// Secret key (or TABLESNAP_AWS_SECRET; default: AWS_SECRET_ACCESS_KEY); prefer
    /// the environment
    #[arg(
        short = 's',
        long = "aws-secret",
        value_name = "SECRET",
        env = "TABLESLURP_AWS_SECRET",
        hide_env_values = true
    )]
    pub aws_secret: Option<String>,
    #[command(flatten)]
    pub dest: super::ReadSide,
    /// Host name whose backup to restore (default: this host's FQDN); with --list, '*'
    /// lists every host
    #[arg(short = 'n', long, env = "TABLESLURP_NAME")]
    pub name: Option<String>,
    /// chown restored files to the user/group stored with them (overrides -o/-g)
    #[arg(short = 'p', long, env = "TABLESLURP_PRESERVE")]
    pub preserve: bool,
    /// chown restored files to this user (name or id)
    #[arg(short = 'o', long, env = "TABLESLURP_OWNER")]
    pub owner: Option<String>,
    /// chgrp restored files to this group (name or id)
    #[arg(short = 'g', long, env = "TABLESLURP_GROUP")]
    pub group: Option<String>,
    /// Requests in flight (small files and the ranges of large ones; the original's default
    /// was 4)
    #[arg(short = 't', long, default_value_t = restore::DEFAULT_THREADS as u16, value_parser = clap::value_parser!(u16).range(1..), env = "TABLESLURP_THREADS")]
    pub threads: u16,
    /// Download bandwidth shared by all downloads, e.g. 50M (bytes per second; K/M/G = 1024^n)
    #[arg(long = "max-bandwidth", env = "TABLESLURP_MAX_BANDWIDTH",
          value_parser = crate::throttle::parse_rate)]
    pub max_bandwidth: Option<u64>,
    /// An age identity file (AGE-SECRET-KEY-1... lines, from age-keygen) to open sealed
    /// objects with; repeatable (an old key beside the new after a rotation). Plain
    /// objects need none
    #[arg(
        short = 'i',
        long = "identity",
        value_name = "PATH",
        env = "TABLESLURP_IDENTITY",
        value_delimiter = ','
    )]
    pub identity: Vec<PathBuf>,
    /// Objects at least this many bytes are fetched as parallel ranges (tuning and tests)
    #[arg(long = "range-threshold", hide = true, default_value_t = ExecOptions::default().range_threshold)]
    pub range_threshold: u64,
    /// Bytes per range of a large object (tuning and tests)
    #[arg(long = "range-size", hide = true, default_value_t = ExecOptions::default().range_size,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub range_size: u64,
    /// Restore the file set of ORIGIN/FILE-listdir.json (FILE = a ...-Data.db name) instead
    /// of the newest
    #[arg(short = 'f', long, conflicts_with_all = ["recursive", "as_of"], env = "TABLESLURP_FILE")]
    pub file: Option<String>,
    /// ORIGIN is a data root: restore every KS/TABLE directory under it into TARGET/KS/TABLE
    #[arg(short = 'r', long, env = "TABLESLURP_RECURSIVE")]
    pub recursive: bool,
    /// With -r: restore backup table directory OLD (KS/TABLE-ID) into TARGET's KS/TABLE-ID
    /// NEW, e.g. after the table was re-created under another id; repeatable
    #[arg(long = "map-table", value_name = "OLD=NEW", value_parser = parse_map, requires = "recursive")]
    pub map_table: Vec<(String, String)>,
    /// With -r: do not restore a table into an existing directory of the same keyspace and
    /// table under another id (by default, a table re-created in TARGET receives its backup)
    #[arg(
        long = "no-id-mapping",
        requires = "recursive",
        env = "TABLESLURP_NO_ID_MAPPING"
    )]
    pub no_id_mapping: bool,
    /// Restore every SSTable under its own name, even when the bucket holds higher
    /// generations of the table (by default one is renamed above them, so the node never
    /// writes a name the bucket already holds with other bytes)
    #[arg(long = "keep-generations", env = "TABLESLURP_KEEP_GENERATIONS")]
    pub keep_generations: bool,
    /// Also restore the commit logs archived in PATH (on the backed-up host) that are newer
    /// than the oldest restored index
    #[arg(long, value_name = "PATH", env = "TABLESLURP_COMMITLOGS")]
    pub commitlogs: Option<String>,
    /// Where commit logs go (default: TARGET/commitlogs)
    #[arg(
        long,
        value_name = "DIR",
        requires = "commitlogs",
        env = "TABLESLURP_COMMITLOG_TARGET"
    )]
    pub commitlog_target: Option<PathBuf>,
    /// For each table, the newest file set at or before TIME (RFC 3339 or epoch seconds)
    #[arg(long, value_name = "TIME", value_parser = parse_time, env = "TABLESLURP_AS_OF")]
    pub as_of: Option<DateTime<Utc>>,
    /// Read the bucket as it was at TIME (RFC 3339 or epoch seconds), from its versions (S3
    /// with versioning or Object Lock): indexes and objects deleted or overwritten since are
    /// read from the versions current then. With --list and --verify too
    #[arg(long = "bucket-as-of", value_name = "TIME", value_parser = parse_time,
          env = "TABLESLURP_BUCKET_AS_OF")]
    pub bucket_as_of: Option<DateTime<Utc>>,
    /// Download even when the file exists (replacing it), and even without room for it
    #[arg(long, env = "TABLESLURP_FORCE")]
    pub force: bool,
    /// Do not fsync restored files: they are still verified before their rename, but left to
    /// the kernel's write-back (a crash soon after can leave them torn; a re-run then finds
    /// them by checksum). Faster when the disk, not the network, is the limit
    #[arg(long = "no-fsync", env = "TABLESLURP_NO_FSYNC")]
    pub no_fsync: bool,
    /// Print the plan (index per table, files, bytes, already present); download nothing
    #[arg(long, conflicts_with_all = ["list", "verify"], env = "TABLESLURP_DRY_RUN")]
    pub dry_run: bool,
    /// Inventory of the backups: tables, indexes, oldest/newest index, bytes
    #[arg(long, conflicts_with = "verify", env = "TABLESLURP_LIST")]
    pub list: bool,
    /// Check that every object of the selected file sets exists with the right size, MD5 and
    /// (Data.db) Digest, and which indexes are complete; write nothing
    #[arg(long, env = "TABLESLURP_VERIFY")]
    pub verify: bool,
    /// With --list, --dry-run or --verify: one JSON object per line on stdout (fields in
    /// README.md)
    #[arg(long, env = "TABLESLURP_JSON")]
    pub json: bool,
    /// Bucket name, or s3://BUCKET, gs://BUCKET, az://CONTAINER, file:///DIR
    pub bucket: String,
    /// Directory as it was on the backed-up host, e.g. /var/lib/cassandra/data/ks/tbl-ID
    #[arg(required_unless_present = "list")]
    pub origin: Option<String>,
    /// Local directory to restore into
    #[arg(required_unless_present_any = ["list", "verify"])]
    pub target: Option<PathBuf>,
}

/// `KS/TABLE-ID=KS/TABLE-ID`.
pub fn parse_map(s: &str) -> Result<(String, String), String> {
    let ok = |side: &str| {
        let mut it = side.split('/');
        matches!((it.next(), it.next(), it.next()), (Some(a), Some(b), None)
            if crate::layout::is_plain_name(a) && crate::layout::is_plain_name(b))
    };
    match s.split_once('=') {
        Some((a, b)) if ok(a) && ok(b) => Ok((a.to_string(), b.to_string())),
        _ => Err(format!(
            "{s}: expected OLD=NEW, each KEYSPACE/TABLE-ID, e.g. ks/events-1a2b...=ks/events-9f8e..."
        )),
    }
}

/// RFC 3339 or epoch seconds.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Utc
            .timestamp_opt(n, 0)
            .single()
            .ok_or_else(|| format!("{s}: epoch seconds out of range"));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s}: {e}; expected RFC 3339 (2024-05-01T12:00:00Z) or epoch seconds"))
}

/// Entry point of the `tableslurp` binary.
pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = Args::parse();
    super::logging::init("tableslurp");
    super::warn_secrets_on_argv(&argv, &["-s", "--aws-secret", "--token", "--aws-token"]);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{}", escape(&format!("{e:#}")));
            ExitCode::from(3)
        }
    }
}

fn store_options(a: &Args) -> StoreOptions {
    a.dest.store_options(
        &a.bucket,
        super::credential(a.aws_key.clone(), &[super::ENV_KEY]),
        super::credential(a.aws_secret.clone(), &[super::ENV_SECRET]),
    )
}

/// `Err` is a configuration/destination error (exit 3); `Ok` carries 0 or 1.
async fn run(a: Args) -> anyhow::Result<ExitCode> {
    // A mistyped or unmounted file:// bucket is "bucket missing" (exit 3), not an empty
    // bucket created on the spot and then "nothing to restore".
    let mut store = Store::open_existing(&store_options(&a)).map_err(|e| anyhow!("{e}"))?;
    if let Some(t) = a.bucket_as_of {
        store = store
            .with_as_of(t)
            .map_err(|e| anyhow!("--bucket-as-of: {e}"))?;
        tracing::info!(at = %t.to_rfc3339(), "reading the bucket as it was then, from its versions");
    }
    // Read first: a bad key file is told before a long LIST, not after.
    let identities = if a.identity.is_empty() {
        None
    } else {
        Some(std::sync::Arc::new(
            crate::seal::Identities::read(&a.identity).map_err(|e| anyhow!("{e}"))?,
        ))
    };
    let name = a.name.clone().unwrap_or_else(super::fqdn);
    let layout = a.dest.layout(name.clone());
    if a.list {
        return list(&store, &a, &layout).await;
    }
    let origin = a
        .origin
        .clone()
        .context("ORIGIN is required")?
        .trim_end_matches('/')
        .to_string();
    let origin = if origin.is_empty() {
        "/".into()
    } else {
        origin
    };
    let target = match &a.target {
        Some(t) => std::path::absolute(t).with_context(|| format!("target {}", t.display()))?,
        None => PathBuf::from("/nonexistent-verify-only"),
    };
    let opts = RestoreOptions {
        layout,
        origin,
        target: target.clone(),
        selection: match (&a.file, a.recursive) {
            (Some(f), _) => Selection::File(f.clone()),
            (None, true) => Selection::Recursive,
            (None, false) => Selection::Newest,
        },
        as_of: a.as_of,
        commitlogs: a.commitlogs.clone(),
        commitlog_target: a.commitlog_target.clone(),
        mapping: restore::TableMapping {
            auto: a.recursive && !a.no_id_mapping,
            explicit: a.map_table.clone(),
            existing: if a.recursive && !a.no_id_mapping {
                restore::existing_table_dirs(&target)
            } else {
                Vec::new()
            },
        },
        keep_generations: a.keep_generations,
    };
    let threads = usize::from(a.threads);
    let plan = match restore::prepare(&store, &opts, threads).await {
        Ok(p) => p,
        Err(PrepareError::List(e)) => bail!("{e}"),
        Err(e @ PrepareError::Plan(restore::PlanError::NothingToRestore { .. })) => {
            bail!("{e}{}", hosts_hint(&store, &opts.layout).await)
        }
        Err(e) => bail!("{e}"),
    };
    for p in &plan.problems {
        tracing::error!("{}", escape(&p.to_string()));
    }
    for t in &plan.tables {
        if let Some(to) = &t.mapped_to {
            tracing::info!(
                "{} -> {}: restored into the existing directory of the re-created table",
                escape(&t.dir),
                escape(to)
            );
        }
        if let (Some(r), false) = (&t.renumbered, a.verify) {
            tracing::info!(
                "{}: {} restored as {}: the bucket holds generations of this table up to {} \
                 (a later timeline), so the node goes on above them and never writes a name \
                 stored with other bytes (--keep-generations: keep every name)",
                escape(&t.dir),
                escape(&r.from),
                escape(&r.to),
                r.above
            );
        }
    }
    let problems = !plan.problems.is_empty();
    let rooms = if a.verify {
        Vec::new()
    } else {
        restore::space::room(&plan, a.force)
    };
    if a.dry_run && a.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        plan_json(&plan, &rooms, &mut |v| json_line(&mut out, &v));
        out.flush().context("stdout")?;
        return Ok(code(!problems));
    }
    if a.dry_run {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        plan.write_to(&mut out).context("stdout")?;
        out.flush().context("stdout")?;
        drop(out);
        for r in &rooms {
            println!(
                "room: {r}{}",
                if r.fits() { "" } else { "  NOT ENOUGH ROOM" }
            );
        }
        return Ok(code(!problems));
    }
    let ownership = if a.preserve {
        Ownership::Preserve
    } else if a.owner.is_some() || a.group.is_some() {
        let uid = match &a.owner {
            Some(o) => Some(restore::uid_of(o).with_context(|| format!("no such user {o:?}"))?),
            None => None,
        };
        let gid = match &a.group {
            Some(g) => Some(restore::gid_of(g).with_context(|| format!("no such group {g:?}"))?),
            None => None,
        };
        Ownership::Ids { uid, gid }
    } else {
        Ownership::Current
    };
    // Sealed objects and the keys to open them, asked before anything is written.
    if !a.verify || identities.is_some() {
        restore::sealed::preflight(&store, &plan, &identities, threads)
            .await
            .map_err(|e| anyhow!("{}", escape(&e.to_string())))?;
    }
    let exec = ExecOptions {
        identities,
        range_threshold: a.range_threshold,
        range_size: a.range_size,
        threads,
        force: a.force,
        durable: !a.no_fsync,
        ownership: ownership.clone(),
        throttle: a
            .max_bandwidth
            .map(|r| std::sync::Arc::new(crate::throttle::Throttle::new(r))),
        ..Default::default()
    };
    let to_fetch: Vec<&PlannedFile> = plan
        .files()
        .filter(|f| a.verify || a.force || !f.already_present())
        .collect();
    let bytes: u64 = to_fetch.iter().map(|f| f.size).sum();
    let observer = Display::new(to_fetch.len() as u64, bytes, a.verify);
    let started = Instant::now();
    if a.verify {
        tracing::info!(
            "verifying {} tables: {} files, {} bytes",
            plan.tables.len(),
            to_fetch.len(),
            bytes
        );
        for t in &plan.tables {
            tracing::info!(
                "{}: index {} ({})",
                escape(&t.dir),
                escape(&t.index_key),
                if t.complete { "complete" } else { "INCOMPLETE" }
            );
            for ch in t.checks.iter().filter(|ch| ch.key != t.index_key) {
                tracing::warn!(
                    "{}: newer index {} skipped: {}",
                    escape(&t.dir),
                    escape(&ch.key),
                    ch.describe()
                );
            }
        }
        let r = restore::verify(&store, &plan, &exec, &observer).await;
        observer.finish();
        if a.json {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            verify_json(&plan, &r, &mut |v| json_line(&mut out, &v));
            out.flush().context("stdout")?;
        }
        for (_, e) in &r.failures {
            tracing::error!("{}", escape(&e.to_string()));
        }
        tracing::info!(
            "verified {} files, {} problems, in {:.1?}",
            r.verified,
            r.failures.len(),
            started.elapsed()
        );
        if r.verified_sealed_only > 0 {
            tracing::info!(
                "{} of them are sealed and were checked by the CRC-32 of their stored bytes \
                 only (no --identity): pass --identity to check their content (MD5, Digest) too",
                r.verified_sealed_only
            );
        } else if exec.identities.is_some() {
            tracing::info!("sealed files were opened and checked by content (MD5, Digest)");
        }
        return Ok(code(r.ok() && !problems));
    }
    for r in &rooms {
        if r.fits() {
            tracing::info!("room: {r}");
        } else if a.force {
            tracing::warn!("not enough room: {r}; going on (--force)");
        } else {
            bail!("not enough room: {r}; free some space or use --force to try anyway");
        }
    }
    check_writable(&target)?;
    for t in plan.tables.iter().filter(|t| t.files.is_empty()) {
        tracing::info!(
            "{}: the restore point of {} names no file (the table was truncated or dropped, or \
             emptied by compactions, by then): nothing to restore; --as-of an earlier time \
             restores what it held before",
            escape(&t.dir),
            t.index_time
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    tracing::info!(
        "restoring {} tables into {}: {} files, {} bytes to fetch, {} already present",
        plan.tables.len(),
        target.display(),
        to_fetch.len(),
        bytes,
        plan.files().count() - to_fetch.len(),
    );
    let r = restore::execute(&store, &plan, &exec, &observer).await;
    observer.finish();
    if let Ownership::Ids { uid, gid } = ownership {
        for t in &plan.tables {
            if let Err(e) = std::os::unix::fs::lchown(&t.target, uid, gid) {
                tracing::warn!("chown {}: {e}", t.target.display());
            }
        }
    }
    for (_, e) in &r.failures {
        tracing::error!("{}", escape(&e.to_string()));
    }
    for m in &r.incomplete_sstables {
        tracing::error!("{m}");
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "restored {} files ({}, {}), {} already present, {} failed, in {:.1}s",
        r.restored,
        restore::space::human_bytes(r.restored_bytes),
        human_rate(r.restored_bytes, secs),
        r.present,
        r.failures.len() + r.incomplete_sstables.len(),
        secs
    );
    Ok(code(r.ok() && !problems))
}

fn code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Like the original's `_test_permissions`: fail before downloading if TARGET cannot be
/// written.
fn check_writable(target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create target directory {}", target.display()))?;
    let probe = target.join(format!(".tableslurp-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("cannot write to target directory {}", target.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// When nothing is found for this host: which hosts the bucket does hold (one delimiter
/// listing of the prefix), so `-n` can be corrected, e.g. after the README's demo (`-n demo`)
/// or on a replacement node whose host name differs from the old one's.
async fn hosts_hint(store: &Store, layout: &Layout) -> String {
    if layout.name == "*" {
        return String::new();
    }
    let (dir, start) = match layout.prefix.rfind('/') {
        Some(i) => (&layout.prefix[..i], &layout.prefix[i + 1..]),
        None => ("", layout.prefix.as_str()),
    };
    const SHOWN: usize = 20;
    let hosts: Vec<String> = match store.list_prefixes(dir, 10_000).await {
        Ok(p) => p
            .into_iter()
            .filter_map(|p| {
                p.strip_prefix(start)?
                    .strip_suffix(layout.separator.as_str())
                    .map(str::to_owned)
            })
            .filter(|h| !h.is_empty() && *h != layout.name)
            .collect(),
        Err(_) => return String::new(),
    };
    if hosts.is_empty() {
        return "; the bucket holds no backup of any host there".to_string();
    }
    let more = hosts.len().saturating_sub(SHOWN);
    let mut shown = hosts
        .iter()
        .take(SHOWN)
        .map(|h| escape(h))
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        shown.push_str(&format!(" and {more} more"));
    }
    format!(
        "; the bucket has backups of other hosts: {shown} (pass -n HOST, or -n '*' to list them all)"
    )
}

async fn list(store: &Store, a: &Args, layout: &Layout) -> anyhow::Result<ExitCode> {
    let (dir, filter) = if layout.name == "*" {
        // Every host: list the prefix's directory and keep the keys that start with it.
        let d = match layout.prefix.rfind('/') {
            Some(i) => layout.prefix[..i].to_string(),
            None => String::new(),
        };
        (d, layout.prefix.clone())
    } else {
        let o = a.origin.as_deref().unwrap_or("").trim_end_matches('/');
        let d = layout.data_key(o);
        (d.clone(), format!("{d}/"))
    };
    // Folded as it is listed: memory per table directory, not per object.
    let mut inv = restore::Inventory::new(&layout.prefix, &layout.separator);
    let mut listing = store.list_dir(&dir);
    while let Some(o) = listing.try_next().await.map_err(|e| anyhow!("{e}"))? {
        if o.key.starts_with(&filter) {
            inv.add(&o);
        }
    }
    let inv = inv.finish();
    if inv.is_empty() {
        bail!(
            "nothing found under {filter}{}",
            hosts_hint(store, layout).await
        );
    }
    let fmt = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let now = Utc::now();
    // The recovery point of each table: how old its newest index is.
    let age = |d: &restore::DirSummary| d.newest.map(|t| (now - t).num_seconds().max(0));
    if a.json {
        for d in &inv {
            println!(
                "{}",
                serde_json::json!({
                    "type": "dir",
                    "host": d.host,
                    "dir": d.dir,
                    "indexes": d.indexes,
                    "oldest": d.oldest.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    "newest": d.newest.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    "newest_age_seconds": age(d),
                    "objects": d.objects,
                    "bytes": d.bytes,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("HOST\tDIRECTORY\tINDEXES\tOLDEST\tNEWEST\tOBJECTS\tBYTES\tNEWEST_AGE");
    for d in &inv {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            escape(&d.host),
            escape(&d.dir),
            d.indexes,
            fmt(d.oldest),
            fmt(d.newest),
            d.objects,
            d.bytes,
            age(d).map_or("-".into(), human_age)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `93784` → `1d2h3m`.
fn human_age(secs: i64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h{m}m"),
    }
}

/// Bytes per second in a unit that shows something: B/s, KiB/s, MiB/s or GiB/s.
fn human_rate(bytes: u64, secs: f64) -> String {
    let r = bytes as f64 / secs.max(1e-3);
    let (v, u) = if r >= (1u64 << 30) as f64 {
        (r / (1u64 << 30) as f64, "GiB/s")
    } else if r >= (1 << 20) as f64 {
        (r / (1 << 20) as f64, "MiB/s")
    } else if r >= 1024.0 {
        (r / 1024.0, "KiB/s")
    } else {
        (r, "B/s")
    };
    format!("{v:.1} {u}")
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Prints one JSON value on a line of its own. A closed stdout (`| head`) is not an error
/// worth more than the exit that follows.
fn json_line(out: &mut impl std::io::Write, v: &serde_json::Value) {
    let _ = writeln!(out, "{v}");
}

/// One JSON object per table, file, problem, room and total of a plan (`--dry-run --json`),
/// each given to `emit` as it is made: a plan of a million files is printed, not held.
fn plan_json(
    plan: &restore::Plan,
    rooms: &[restore::space::Room],
    emit: &mut dyn FnMut(serde_json::Value),
) {
    use serde_json::json;
    for t in &plan.tables {
        emit(json!({
            "type": "table",
            "dir": t.dir,
            "target": t.target,
            "index": t.index_key,
            "index_time": time(t.index_time),
            "complete": t.complete,
            "indexes_total": t.indexes_total,
            "skipped_indexes": t.checks.iter().filter(|c| c.key != t.index_key).map(|c| json!({
                "index": c.key,
                "time": time(c.time),
                "missing": c.missing,
                "unusable": c.unusable,
            })).collect::<Vec<_>>(),
            "mapped_to": t.mapped_to,
            "renumbered": t.renumbered.as_ref().map(|r| json!({
                "from": r.from,
                "to": r.to,
                "above": r.above,
            })),
            "files": t.files.len(),
            "bytes": t.bytes(),
            "present": t.files.iter().filter(|f| f.already_present()).count(),
        }));
        for f in &t.files {
            emit(json!({
                "type": "file",
                "dir": t.dir,
                "name": f.name(),
                "key": f.key(),
                "dest": f.dest(),
                "size": f.size,
                "state": match f.local_size {
                    Some(s) if s == f.size => "present",
                    Some(_) => "present_different_size",
                    None => "fetch",
                },
                "verified_by": if f.digest().is_some() { "digest" } else { "md5" },
            }));
        }
    }
    if let Some(c) = &plan.commitlogs {
        for f in &c.files {
            emit(json!({
                "type": "commitlog",
                "name": f.name(),
                "key": f.key(),
                "dest": f.dest(),
                "size": f.size,
            }));
        }
    }
    for d in &plan.skipped_dirs {
        emit(json!({"type": "skipped_dir", "dir": d}));
    }
    for p in &plan.problems {
        emit(json!({"type": "problem", "message": p.to_string()}));
    }
    for r in rooms {
        emit(json!({
            "type": "room",
            "path": r.path,
            "need_bytes": r.need,
            "free_bytes": r.free,
            "fits": r.fits(),
        }));
    }
    emit(json!({
        "type": "total",
        "tables": plan.tables.len(),
        "files": plan.files().count(),
        "bytes": plan.total_bytes(),
        "ok": plan.problems.is_empty() && rooms.iter().all(|r| r.fits()),
    }));
}

/// The tables (with index completeness), one object per file checked, then a summary
/// (`--verify --json`).
fn verify_json(plan: &restore::Plan, r: &restore::Report, emit: &mut dyn FnMut(serde_json::Value)) {
    use serde_json::json;
    let failed: std::collections::HashMap<&str, String> = r
        .failures
        .iter()
        .map(|(k, e)| (k.as_str(), e.to_string()))
        .collect();
    plan_json(plan, &[], &mut |v| {
        if v["type"] == "table" || v["type"] == "problem" {
            emit(v)
        }
    });
    for f in plan.files() {
        let key = f.key();
        let err = failed.get(key.as_str());
        emit(json!({
            "type": "verified",
            "key": key,
            "size": f.size,
            "ok": err.is_none(),
            "error": err,
            "verified_by": if f.digest().is_some() { "digest+md5" } else { "md5" },
        }));
    }
    emit(json!({
        "type": "summary",
        "verified": r.verified,
        "failed": r.failures.len(),
        "problems": plan.problems.len(),
        "ok": r.ok() && plan.problems.is_empty(),
    }));
}

/// A progress bar on a terminal, plain log lines otherwise.
struct Display {
    bar: Option<ProgressBar>,
    verify: bool,
    files: u64,
    done: AtomicU64,
}

impl Display {
    fn new(files: u64, bytes: u64, verify: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_message(format!("0/{files} files"));
            pb.set_length(bytes);
            pb.enable_steady_tick(std::time::Duration::from_millis(200));
            pb
        });
        Self {
            bar,
            verify,
            files,
            done: AtomicU64::new(0),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Display {
    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn file_done(&self, f: &PlannedFile, outcome: &Outcome) {
        let what = if self.verify { "verified" } else { "restored" };
        match &self.bar {
            Some(b) => {
                if !matches!(outcome, Outcome::AlreadyPresent) {
                    let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
                    b.set_message(format!("{done}/{} files", self.files));
                }
                tracing::debug!(key = %escape(&f.key()), "{outcome:?}");
            }
            None => match outcome {
                Outcome::Restored { attempts } => tracing::info!(
                    "{what} {} ({} bytes{})",
                    escape(&f.dest().display().to_string()),
                    f.size,
                    if *attempts > 1 {
                        format!(", after {attempts} attempts")
                    } else {
                        String::new()
                    }
                ),
                Outcome::Verified => {
                    tracing::info!("{what} {} ({} bytes)", escape(&f.key()), f.size)
                }
                Outcome::AlreadyPresent => tracing::info!(
                    "{} already present (checksum matches), skipped",
                    escape(&f.dest().display().to_string())
                ),
                Outcome::Failed(_) => {}
            },
        }
    }
}
