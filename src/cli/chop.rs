//! The `tablechop` command line: the original's flags (`-d`, `-l`, `-j`, `-k/--key`,
//! `-s/--secret`, `--token`, `-n`) plus `--dry-run`, `--prefix`, `--keyname-separator`,
//! `--endpoint-url` and URL destinations. One listing, the kept indexes fetched in parallel,
//! then [`crate::retention::decide`], then batched deletes.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::anyhow;
use chrono::Utc;
use clap::Parser;
use futures::StreamExt;

use crate::layout;
use crate::retention::{self, Scope};
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
    /// Parallel index fetches
    #[arg(short = 'j', long = "parallel", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..), env = "TABLECHOP_PARALLEL")]
    pub parallel: u16,
    /// Access key id (default: AWS_ACCESS_KEY_ID, then the instance role)
    #[arg(
        short = 'k',
        long = "key",
        visible_alias = "aws-key",
        env = "TABLECHOP_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
    /// Secret key (default: AWS_SECRET_ACCESS_KEY); prefer the environment
    #[arg(
        short = 's',
        long = "secret",
        visible_alias = "aws-secret",
        env = "TABLECHOP_SECRET",
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

/// `Err` is a configuration/destination error (exit 3); `Ok` carries 0 or 1.
async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let opts = a
        .dest
        .store_options(&a.bucket, a.key.clone(), a.secret.clone());
    let store = Store::open(&opts).map_err(|e| anyhow!("{e}"))?;
    if !a.path.starts_with('/') {
        anyhow::bail!(
            "PATH must be an absolute path as on the backed-up host, got {:?}",
            a.path
        );
    }
    let name = a.name.clone().unwrap_or_else(super::fqdn);
    let scope = Scope::new(a.dest.layout(name), &a.path);
    let dry_run = a.debug || a.dry_run;
    let now = Utc::now();
    let age = chrono::Duration::days(i64::from(a.age_days));

    let objects = store
        .list_all(&scope.dir_key())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    tracing::info!("{} objects under {}/", objects.len(), scope.dir_key());
    let wanted = retention::kept_indexes(&objects, &scope, now, age);
    let fetched: Vec<_> = futures::stream::iter(wanted.iter().map(|k| {
        let store = &store;
        async move { (k.clone(), store.get_bytes(k).await) }
    }))
    .buffer_unordered(usize::from(a.parallel))
    .collect()
    .await;
    let mut indexes = HashMap::new();
    for (k, r) in fetched {
        match r
            .map_err(|e| e.to_string())
            .and_then(|b| layout::parse_listing(&b).map_err(|e| format!("{k}: {e}")))
        {
            Ok(l) => {
                indexes.insert(k, l);
            }
            Err(e) => tracing::warn!(
                "cannot read index ({e}); keeping it and everything in its directory"
            ),
        }
    }
    let d = retention::decide(&objects, &indexes, &scope, now, age);
    // Defence in depth: decide() never leaves the scope; refuse to act if it ever did.
    if let Some(k) = d.delete.iter().find(|k| !scope.contains(k)) {
        anyhow::bail!(
            "internal error: refusing to delete {k}, outside {}/",
            scope.dir_key()
        );
    }
    if a.list_deletes {
        for k in &d.delete {
            tracing::info!("{} {k}", if dry_run { "would delete" } else { "delete" });
        }
    }
    tracing::info!(
        "{} indexes kept ({} unreadable); keep {} objects ({} bytes), delete {} objects ({} bytes)",
        wanted.len(),
        d.unreadable.len(),
        d.keep.len(),
        d.kept_bytes,
        d.delete.len(),
        d.deleted_bytes
    );
    if dry_run {
        tracing::info!("dry run: nothing deleted");
        return Ok(ExitCode::SUCCESS);
    }
    let mut deleted = 0usize;
    let mut failed = false;
    for batch in d.delete.chunks(1000) {
        match store.delete_many(batch.to_vec()).await {
            Ok(n) => deleted += n,
            Err(e) => {
                tracing::error!("{e}");
                failed = true;
            }
        }
    }
    tracing::info!("deleted {deleted} of {} objects", d.delete.len());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
