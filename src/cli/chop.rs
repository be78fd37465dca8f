//! The `tablechop` command line: the original's flags (`-d`, `-l`, `-j`, `-k/--key`,
//! `-s/--secret`, `--token`, `-n`) plus `--dry-run`, `--prefix`, `--keyname-separator`,
//! `--endpoint-url` and URL destinations, and `--json`. One listing folded per table
//! ([`crate::retention::Tables`]), the kept indexes fetched in parallel and their names folded
//! into one set per table, then table by table: decide, print, delete in batches.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::anyhow;
use chrono::Utc;
use clap::Parser;
use futures::StreamExt;

use crate::layout::{self, printable};
use crate::retention::{Kept, Scope, Tables};
use crate::store::Store;

const EXIT_CODES: &str = "\
Exit status:
  0  success (also when nothing needed deleting)
  1  some deletes failed
  2  bad usage
  3  configuration or destination error: bucket missing, access denied, endpoint unreachable";

/// Delete old backups, keeping every file set younger than AGE_DAYS and the newest of each
/// table.
#[derive(Debug, Parser)]
#[command(
    name = "tablechop",
    version,
    about = "Delete tablesnap backups older than AGE_DAYS, keeping what restores need",
    long_about = "Delete tablesnap backups older than AGE_DAYS under NAME:PATH.\n\n\
        Per table directory, the newest index is always kept, as is every index younger than \
        AGE_DAYS and every object a kept index names. No object younger than AGE_DAYS is \
        deleted, and nothing outside NAME:PATH/ is touched.",
    after_help = EXIT_CODES
)]
pub struct Args {
    /// Dry run: delete nothing (the original's name for it)
    #[arg(short = 'd', long = "debug", env = "TABLECHOP_DEBUG")]
    pub debug: bool,
    /// Dry run: delete nothing
    #[arg(long, env = "TABLECHOP_DRY_RUN")]
    pub dry_run: bool,
    /// Log every key deleted
    #[arg(short = 'l', long = "list-deletes", env = "TABLECHOP_LIST_DELETES")]
    pub list_deletes: bool,
    /// Print one JSON object per line on stdout for every object decided: key, size,
    /// last_modified (RFC 3339), action (keep, delete, or in a dry run would_delete) and reason
    #[arg(long, env = "TABLECHOP_JSON")]
    pub json: bool,
    /// Parallel index fetches
    #[arg(short = 'j', long = "parallel", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..), env = "TABLECHOP_PARALLEL")]
    pub parallel: u16,
    /// Access key id (or TABLECHOP_KEY, older, or TABLESNAP_AWS_KEY; default:
    /// AWS_ACCESS_KEY_ID, then the instance role)
    #[arg(
        short = 'k',
        long = "key",
        visible_alias = "aws-key",
        env = "TABLECHOP_AWS_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
    /// Secret key (or TABLECHOP_SECRET, older, or TABLESNAP_AWS_SECRET; default:
    /// AWS_SECRET_ACCESS_KEY); prefer the environment
    #[arg(
        short = 's',
        long = "secret",
        visible_alias = "aws-secret",
        env = "TABLECHOP_AWS_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    #[command(flatten)]
    pub dest: super::ReadSide,
    /// Host name whose backups to clean (default: this host's FQDN)
    #[arg(short = 'n', long, env = "TABLECHOP_NAME")]
    pub name: Option<String>,
    /// Bucket name, or s3://BUCKET, gs://BUCKET, az://CONTAINER, file:///DIR
    pub bucket: String,
    /// Path on the backed-up host whose backups to clean, e.g. /var/lib/cassandra/data
    pub path: String,
    /// Keep file sets younger than this many days
    pub age_days: u32,
}

/// Entry point of the `tablechop` binary.
pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = Args::parse();
    super::logging::init("tablechop");
    super::warn_secrets_on_argv(
        &argv,
        &["-s", "--secret", "--aws-secret", "--token", "--aws-token"],
    );
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
            tracing::error!("{e:#}");
            ExitCode::from(3)
        }
    }
}

/// One line of `tablechop --json`: the decision about one object.
#[derive(serde::Serialize)]
struct JsonVerdict<'a> {
    key: &'a str,
    size: u64,
    last_modified: String,
    /// `keep` or `delete` (in a dry run: `would_delete`).
    action: &'static str,
    reason: &'static str,
}

/// `Err` is a configuration/destination error (exit 3); `Ok` carries 0 or 1.
async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let opts = a.dest.store_options(
        &a.bucket,
        super::credential(a.key.clone(), &["TABLECHOP_KEY", super::ENV_KEY]),
        super::credential(a.secret.clone(), &["TABLECHOP_SECRET", super::ENV_SECRET]),
    );
    // A mistyped file:// path must not look like an empty backup (exit 3, as on S3).
    let store = Store::open_existing(&opts).map_err(|e| anyhow!("{e}"))?;
    if !a.path.starts_with('/') {
        anyhow::bail!(
            "PATH must be an absolute path as on the backed-up host, got {:?}",
            a.path
        );
    }
    // On a versioned bucket (Object Lock implies it) a DELETE only adds a marker: the
    // versions themselves are deleted, and a locked one is skipped and counted.
    let versioned = match store.versioned().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(
                "cannot tell whether the bucket keeps versions ({e}); deleting as on a bucket without versions (a versioned one would only get delete markers)"
            );
            false
        }
    };
    let mut versions = VersionTally::default();
    let name = a.name.clone().unwrap_or_else(super::fqdn);
    let scope = Scope::new(a.dest.layout(name), &a.path);
    let dry_run = a.debug || a.dry_run;
    let now = Utc::now();
    let age = chrono::Duration::days(i64::from(a.age_days));

    // One listing, folded per table as it arrives (never a list of full ObjectInfos).
    let mut tables = Tables::new(scope.clone());
    let mut listing = store.list_dir(&scope.dir_key());
    while let Some(o) = listing.next().await {
        tables.add(&o.map_err(|e| anyhow!("{e}"))?);
    }
    drop(listing);
    tracing::info!(
        "{} objects under {}/",
        tables.len(),
        printable(&scope.dir_key())
    );

    // The kept indexes' names, folded into one set per table as each body is read.
    let wanted = tables.kept_indexes(now, age);
    let mut kept = Kept::default();
    let mut unreadable = 0usize;
    let mut fetched = futures::stream::iter(wanted.iter().map(|k| {
        let store = &store;
        async move {
            let r = store
                .get_bytes_capped(&k.key, layout::MAX_INDEX_BYTES)
                .await;
            (k, r)
        }
    }))
    .buffer_unordered(usize::from(a.parallel));
    while let Some((k, r)) = fetched.next().await {
        let parsed = r.map_err(|e| e.to_string()).and_then(|body| {
            layout::parse_index(&body, |body_dir, n| kept.add(&k.dir, body_dir, n))
                .map_err(|e| e.to_string())
        });
        let problem = match parsed {
            Ok(summary) => summary.bad_names_error().map(|e| e.to_string()),
            Err(e) => Some(e),
        };
        if let Some(e) = problem {
            // One line per index, however many bad names it holds.
            tracing::warn!(
                index = %printable(&k.key),
                "cannot read index ({}); keeping it and everything in its directory",
                printable(&e)
            );
            kept.keep_whole(&k.dir);
            unreadable += 1;
        }
    }
    drop(fetched);

    // Decide table by table; deletes go out in batches of 1000 between tables, so the keys to
    // delete are never all in memory.
    let mut json_out = a.json.then(|| std::io::BufWriter::new(std::io::stdout()));
    let (mut keep_n, mut keep_b, mut del_n, mut del_b) = (0u64, 0u64, 0u64, 0u64);
    let mut batch: Vec<String> = Vec::new();
    let (mut deleted, mut failed) = (0usize, false);
    let mut outside = None;
    let mut json_err = None;
    let dirs: Vec<&str> = tables.dirs().collect();
    for (i, dir) in dirs.iter().enumerate() {
        tables.decide_dir(dir, &kept, now, age, |v| {
            if let Some(out) = json_out.as_mut() {
                let line = JsonVerdict {
                    key: v.key,
                    size: v.size,
                    last_modified: v.last_modified.to_rfc3339(),
                    action: match (v.delete, dry_run) {
                        (false, _) => "keep",
                        (true, false) => "delete",
                        (true, true) => "would_delete",
                    },
                    reason: v.reason.as_str(),
                };
                let r = serde_json::to_writer(&mut *out, &line)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"));
                if let Err(e) = r {
                    json_err.get_or_insert(e);
                }
            }
            if !v.delete {
                keep_n += 1;
                keep_b += v.size;
                return;
            }
            // Defence in depth: decide() never leaves the scope; refuse to act if it ever did.
            if !scope.contains(v.key) {
                outside.get_or_insert_with(|| v.key.to_string());
                return;
            }
            del_n += 1;
            del_b += v.size;
            if a.list_deletes {
                tracing::info!(
                    "{} {}",
                    if dry_run { "would delete" } else { "delete" },
                    printable(v.key)
                );
            }
            if !dry_run || versioned {
                batch.push(v.key.to_string());
            }
        });
        if let Some(e) = json_err.take() {
            anyhow::bail!("cannot write the --json output: {e}");
        }
        if let Some(k) = outside.take() {
            anyhow::bail!(
                "internal error: refusing to delete {}, outside {}/",
                printable(&k),
                printable(&scope.dir_key())
            );
        }
        let last = i + 1 == dirs.len();
        while batch.len() >= 1000 || (last && !batch.is_empty()) {
            let rest = batch.split_off(batch.len().min(1000));
            let now_batch = std::mem::replace(&mut batch, rest);
            if versioned {
                match versions.delete(&store, &now_batch, dry_run, now).await {
                    Ok(n) => deleted += n,
                    Err(e) => {
                        tracing::error!("{e}");
                        failed = true;
                    }
                }
                continue;
            }
            match store.delete_many(now_batch).await {
                Ok(n) => deleted += n,
                Err(e) => {
                    tracing::error!("{e}");
                    failed = true;
                }
            }
        }
    }
    if let Some(mut out) = json_out.take() {
        if let Err(e) = out.flush() {
            anyhow::bail!("cannot write the --json output: {e}");
        }
    }
    tracing::info!(
        "{} indexes kept ({unreadable} unreadable); keep {keep_n} objects ({keep_b} bytes), delete {del_n} objects ({del_b} bytes)",
        wanted.len(),
    );
    if versioned {
        tracing::info!(
            "versioned bucket: {} {} versions and delete markers of those objects; {} versions still locked, {} (kept until their lock expires)",
            if dry_run { "would delete" } else { "deleted" },
            versions.deleted,
            versions.locked,
            if dry_run {
                "would be skipped"
            } else {
                "skipped"
            },
        );
    }
    if dry_run {
        tracing::info!("dry run: nothing deleted");
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!("deleted {deleted} of {del_n} objects");
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Versions deleted and skipped on a versioned bucket.
#[derive(Default)]
struct VersionTally {
    deleted: u64,
    locked: u64,
}

impl VersionTally {
    /// Deletes every version and delete marker of `keys` (in a dry run, tells which are
    /// locked); answers how many of the keys have no version left.
    async fn delete(
        &mut self,
        store: &Store,
        keys: &[String],
        dry_run: bool,
        now: chrono::DateTime<Utc>,
    ) -> Result<usize, crate::store::StoreError> {
        use std::collections::{BTreeMap, HashSet};
        let mut by_dir: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for k in keys {
            let dir = k.rsplit_once('/').map_or("", |(d, _)| d);
            by_dir.entry(dir).or_default().push(k);
        }
        let mut gone = 0usize;
        for (dir, ks) in by_dir {
            let wanted: HashSet<&str> = ks.iter().copied().collect();
            let all: Vec<(String, String)> = store
                .versions_in(dir)
                .await?
                .into_iter()
                .filter(|v| wanted.contains(v.key.as_str()))
                .map(|v| (v.key, v.version_id))
                .collect();
            let mut kept: HashSet<&str> = HashSet::new();
            if dry_run {
                for (k, v) in &all {
                    match store.version_retention(k, v).await? {
                        Some(t) if t > now => {
                            self.locked += 1;
                            kept.insert(k);
                        }
                        _ => self.deleted += 1,
                    }
                }
            } else {
                let results = store.delete_versions_of(&all).await?;
                for ((k, v), r) in all.iter().zip(results) {
                    match r {
                        crate::store::s3api::VersionDeleted::Deleted => self.deleted += 1,
                        crate::store::s3api::VersionDeleted::Locked => {
                            tracing::debug!(key = %printable(k), version = %v, "locked: kept");
                            self.locked += 1;
                            kept.insert(k);
                        }
                        crate::store::s3api::VersionDeleted::Failed(e) => {
                            return Err(crate::store::StoreError::Answer {
                                op: "delete a version of",
                                key: printable(k).to_string(),
                                reason: e,
                            });
                        }
                    }
                }
            }
            gone += ks.iter().filter(|k| !kept.contains(**k)).count();
        }
        Ok(gone)
    }
}
