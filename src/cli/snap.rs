//! `tablesnap BUCKET PATH...`: every flag of the original, same defaults, plus what
//! operators ask for today. Every flag can also come from a `TABLESNAP_*` variable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::daemon::{self, Config};
use crate::filter::Filter;
use crate::layout::Layout;
use crate::store::StoreOptions;
use crate::upload::{DEFAULT_PART_SIZE, UploadConfig};
use crate::watch::Events;

const AFTER_HELP: &str = "\
Destinations: a bare BUCKET (Amazon S3, as the original), s3://BUCKET, gs://BUCKET,
az://CONTAINER or file:///DIR. --endpoint-url (or AWS_ENDPOINT_URL) points S3 at any
S3-compatible server. Credentials: -k/-s, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
else the instance role / web identity chain.

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT, or --once finished); 1 --once could not
upload some files; 2 bad usage; 3 configuration error (destination, credentials, paths,
inotify limits).";

#[derive(Debug, Parser)]
#[command(
    name = "tablesnap",
    version,
    about = "Watch Cassandra data directories and upload every new SSTable to object storage, \
             with a JSON listing of its directory (drop-in for the original tablesnap)",
    after_help = AFTER_HELP
)]
pub struct SnapArgs {
    /// Destination: BUCKET, s3://BUCKET, gs://BUCKET, az://CONTAINER or file:///DIR
    #[arg(env = "TABLESNAP_BUCKET")]
    pub bucket: String,
    /// Directories to watch (TABLESNAP_PATHS: comma-separated, with TABLESNAP_BUCKET)
    #[arg(required = true, num_args = 1.., env = "TABLESNAP_PATHS", value_delimiter = ',')]
    pub paths: Vec<PathBuf>,
    /// AWS access key id (prefer AWS_ACCESS_KEY_ID: argv is visible to every user)
    #[arg(
        short = 'k',
        long = "aws-key",
        env = "TABLESNAP_AWS_KEY",
        hide_env_values = true
    )]
    pub aws_key: Option<String>,
    /// AWS secret access key (prefer AWS_SECRET_ACCESS_KEY)
    #[arg(
        short = 's',
        long = "aws-secret",
        env = "TABLESNAP_AWS_SECRET",
        hide_env_values = true
    )]
    pub aws_secret: Option<String>,
    /// AWS session token
    #[arg(long = "aws-token", env = "AWS_SECURITY_TOKEN", hide_env_values = true)]
    pub aws_token: Option<String>,
    /// AWS region [default: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1]
    #[arg(long = "aws-region", env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:3900
    #[arg(long = "endpoint-url", env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Watch the paths' subdirectories too
    #[arg(short = 'r', long, env = "TABLESNAP_RECURSIVE")]
    pub recursive: bool,
    /// Start watching (and scan) subdirectories created later
    #[arg(short = 'a', long = "auto-add", env = "TABLESNAP_AUTO_ADD")]
    pub auto_add: bool,
    /// At start, upload existing files not already in the bucket (one LIST, not one HEAD per file)
    #[arg(short = 'B', long, env = "TABLESNAP_BACKUP")]
    pub backup: bool,
    /// Store objects as REDUCED_REDUNDANCY
    #[arg(
        short = 'R',
        long = "reduced-redundancy",
        env = "TABLESNAP_REDUCED_REDUNDANCY"
    )]
    pub reduced_redundancy: bool,
    /// Storage class for every object (STANDARD_IA, INTELLIGENT_TIERING, ...); overrides -R
    #[arg(long = "storage-class", env = "TABLESNAP_STORAGE_CLASS")]
    pub storage_class: Option<String>,
    /// String put before every key
    #[arg(short = 'p', long, default_value = "", env = "TABLESNAP_PREFIX")]
    pub prefix: String,
    /// Do not write the -listdir.json indexes
    #[arg(long = "without-index", env = "TABLESNAP_WITHOUT_INDEX")]
    pub without_index: bool,
    /// Server-side encryption with S3-managed keys (AES256)
    #[arg(long = "with-sse", env = "TABLESNAP_WITH_SSE")]
    pub with_sse: bool,
    /// Server-side encryption with this KMS key id (SSE-KMS)
    #[arg(long = "sse-kms-key-id", env = "TABLESNAP_SSE_KMS_KEY_ID")]
    pub sse_kms_key_id: Option<String>,
    /// Separator between the host name and the path in keys
    #[arg(
        long = "keyname-separator",
        default_value = ":",
        env = "TABLESNAP_KEYNAME_SEPARATOR"
    )]
    pub keyname_separator: String,
    /// Concurrent uploads
    #[arg(short = 't', long, default_value_t = 4, env = "TABLESNAP_THREADS",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Host name in keys [default: this host's FQDN]
    #[arg(short = 'n', long, env = "TABLESNAP_NAME")]
    pub name: Option<String>,
    /// When a key already exists with the same size, also compare MD5s
    #[arg(long = "md5-on-start", env = "TABLESNAP_MD5_ON_START")]
    pub md5_on_start: bool,
    /// Overwrite an object stored under a file's key even when it holds another file (a
    /// replaced node reusing this host name and SSTable generations); without it such a
    /// collision is refused and reported
    #[arg(long = "overwrite-collisions", env = "TABLESNAP_OVERWRITE_COLLISIONS")]
    pub overwrite_collisions: bool,
    /// Events to act on (repeatable): IN_MOVED_TO, IN_CLOSE_WRITE, IN_CREATE [default: IN_MOVED_TO and IN_CLOSE_WRITE]
    #[arg(long = "listen-events", action = clap::ArgAction::Append, env = "TABLESNAP_LISTEN_EVENTS", value_delimiter = ',',
          value_parser = ["IN_MOVED_TO", "IN_CLOSE_WRITE", "IN_CREATE"])]
    pub listen_events: Vec<String>,
    /// Delete the local file after a confirmed upload
    #[arg(long = "delete-on-backup", env = "TABLESNAP_DELETE_ON_BACKUP")]
    pub delete_on_backup: bool,
    /// Skip paths where any of these regexes matches (search, not full match)
    #[arg(short = 'e', long, num_args = 1.., conflicts_with = "include", env = "TABLESNAP_EXCLUDE")]
    pub exclude: Vec<String>,
    /// Upload only paths where one of these regexes matches
    #[arg(short = 'i', long, num_args = 1.., env = "TABLESNAP_INCLUDE")]
    pub include: Vec<String>,
    /// Files above this size (MB) always use multipart uploads
    #[arg(long = "max-upload-size", default_value_t = 5120, env = "TABLESNAP_MAX_UPLOAD_SIZE",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upload_size: u64,
    /// Multipart part size in MB [default: 16, grown so a file needs at most 10,000 parts]
    #[arg(long = "multipart-chunk-size", env = "TABLESNAP_MULTIPART_CHUNK_SIZE",
          value_parser = clap::value_parser!(u64).range(5..=5120))]
    pub multipart_chunk_size: Option<u64>,
    /// Retries per failed upload at least (failures are retried with backoff until they succeed)
    #[arg(long, default_value_t = 0, env = "TABLESNAP_RETRIES")]
    pub retries: u32,
    /// Upload what exists (like -B), then exit instead of watching
    #[arg(long, env = "TABLESNAP_ONCE")]
    pub once: bool,
    /// Re-list the bucket and rescan the paths this often (seconds), to catch anything missed
    #[arg(long = "rescan-interval", env = "TABLESNAP_RESCAN_INTERVAL")]
    pub rescan_interval: Option<u64>,
    /// Quiet time (ms) after a Data.db upload before its index is written
    #[arg(
        long = "index-delay",
        default_value_t = 1000,
        env = "TABLESNAP_INDEX_DELAY"
    )]
    pub index_delay: u64,
    /// Seconds in-flight uploads may take to finish after SIGTERM before they are aborted
    #[arg(
        long = "shutdown-timeout",
        default_value_t = 30,
        env = "TABLESNAP_SHUTDOWN_TIMEOUT"
    )]
    pub shutdown_timeout: u64,
    /// File data held in memory at once across all uploads, in MB [default: 4 parts]
    #[arg(long = "max-memory", env = "TABLESNAP_MAX_MEMORY")]
    pub max_memory: Option<u64>,
    /// Upload bandwidth shared by all uploads, e.g. 50M (bytes per second; K/M/G = 1024^n)
    #[arg(long = "max-bandwidth", env = "TABLESNAP_MAX_BANDWIDTH",
          value_parser = crate::throttle::parse_rate)]
    pub max_bandwidth: Option<u64>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9108
    #[arg(long = "metrics-addr", env = "TABLESNAP_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// With --metrics-addr: GET /healthz answers 503 once uploads have failed at the
    /// destination for this many seconds with none succeeding (0: never for that reason)
    #[arg(
        long = "health-failing-after",
        value_name = "SECONDS",
        default_value_t = 900,
        env = "TABLESNAP_HEALTH_FAILING_AFTER"
    )]
    pub health_failing_after: u64,
    /// Seal every data object to this age X25519 public key (age1..., from age-keygen);
    /// repeatable: any one of the matching identities restores. Indexes stay in clear.
    /// The node needs no secret key. TABLESNAP_RECIPIENT: comma-separated
    #[arg(
        long = "recipient",
        value_name = "RECIPIENT",
        env = "TABLESNAP_RECIPIENT",
        value_delimiter = ','
    )]
    pub recipient: Vec<String>,
    /// Seal to the recipients in this file (one age1... key a line, # comments), as
    /// `age -R`; repeatable
    #[arg(
        long = "recipients-file",
        value_name = "PATH",
        env = "TABLESNAP_RECIPIENTS_FILE",
        value_delimiter = ','
    )]
    pub recipients_file: Vec<PathBuf>,
    /// Compress each data object with zstd (independent 1 MiB frames, restorable by
    /// range; `zstd -d` reads it), kept only when it saves a tenth; indexes never
    #[arg(long = "compress", value_name = "HOW", default_value = "none",
          value_parser = ["none", "zstd"], env = "TABLESNAP_COMPRESS")]
    pub compress: String,
    /// Lock every object stored (data and indexes) for at least N days with S3 Object Lock,
    /// and keep what a current index names locked (extended when less than N/2 days are
    /// left). The bucket must have Object Lock enabled
    #[arg(long = "object-lock-days", value_name = "N", env = "TABLESNAP_OBJECT_LOCK_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub object_lock_days: Option<u32>,
    /// GOVERNANCE (an account allowed to bypass it may still delete) or COMPLIANCE (nobody
    /// can, until the date)
    #[arg(long = "object-lock-mode", value_name = "MODE", default_value = "GOVERNANCE",
          value_parser = ["GOVERNANCE", "COMPLIANCE", "governance", "compliance"],
          env = "TABLESNAP_OBJECT_LOCK_MODE")]
    pub object_lock_mode: String,
}

impl SnapArgs {
    pub fn into_config(self) -> anyhow::Result<Config> {
        let events = Events::parse(&self.listen_events).map_err(anyhow::Error::msg)?;
        let filter = Filter::new(&self.exclude, &self.include)
            .context("invalid --exclude/--include regular expression")?;
        let storage_class = self.storage_class.or_else(|| {
            self.reduced_redundancy
                .then(|| "REDUCED_REDUNDANCY".to_string())
        });
        let object_lock = match self.object_lock_days {
            Some(days) => {
                let dest = crate::store::Destination::parse(&self.bucket)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if !matches!(dest, crate::store::Destination::S3 { .. }) {
                    anyhow::bail!(
                        "--object-lock-days needs an S3 destination (s3://BUCKET with Object Lock enabled), not {dest}"
                    );
                }
                let mode = crate::store::s3api::LockMode::parse(&self.object_lock_mode)
                    .context("--object-lock-mode must be GOVERNANCE or COMPLIANCE")?;
                Some(crate::store::lock::LockPolicy { mode, days })
            }
            None => None,
        };
        let store = StoreOptions {
            destination: self.bucket,
            access_key: self.aws_key,
            secret_key: self.aws_secret,
            token: self.aws_token,
            region: self.aws_region,
            endpoint: self.endpoint_url,
            sse: self.with_sse,
            sse_kms_key_id: self.sse_kms_key_id,
            storage_class,
            retry_timeout: None,
            max_retries: None,
            checksum_sha256: object_lock.is_some(),
        };
        let name = self.name.unwrap_or_else(super::fqdn);
        let layout = Layout::new(self.prefix, name, self.keyname_separator);
        let part = self.multipart_chunk_size.map(|mb| mb << 20);
        for p in &self.recipients_file {
            if crate::seal::looks_like_identity_file(p) {
                anyhow::bail!(
                    "--recipients-file {} holds a secret key (AGE-SECRET-KEY-1...): give the node \
                     only the public key (age-keygen -y {} prints it), keep the identity off the node",
                    p.display(),
                    p.display()
                );
            }
        }
        let recipients = crate::seal::Recipients::parse(&self.recipient, &self.recipients_file)?;
        let upload = UploadConfig {
            with_index: !self.without_index,
            md5_on_start: self.md5_on_start,
            overwrite_collisions: self.overwrite_collisions,
            // Set by the daemon from the events (IN_CREATE).
            copy_hardlinks: false,
            max_upload_size: self.max_upload_size << 20,
            part_size: part,
            filter,
            memory_budget: self
                .max_memory
                .map(|mb| mb << 20)
                .unwrap_or(4 * part.unwrap_or(DEFAULT_PART_SIZE)),
            throttle: self
                .max_bandwidth
                .map(|r| std::sync::Arc::new(crate::throttle::Throttle::new(r))),
            seal: (!recipients.is_empty()).then(|| std::sync::Arc::new(recipients)),
            compress: self.compress == "zstd",
        };
        let mut cfg = Config::new(store, layout, self.paths);
        cfg.recursive = self.recursive;
        cfg.auto_add = self.auto_add;
        cfg.backup = self.backup;
        cfg.once = self.once;
        cfg.events = events;
        cfg.threads = self.threads as usize;
        cfg.upload = upload;
        cfg.delete_on_backup = self.delete_on_backup;
        cfg.retries = self.retries;
        cfg.rescan_interval = self.rescan_interval.map(Duration::from_secs);
        cfg.index_delay = Duration::from_millis(self.index_delay);
        cfg.shutdown_timeout = Duration::from_secs(self.shutdown_timeout);
        cfg.metrics_addr = self.metrics_addr;
        cfg.health_failing_after = Duration::from_secs(self.health_failing_after);
        cfg.object_lock = object_lock;
        Ok(cfg)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The `tablesnap` binary.
pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = SnapArgs::parse();
    super::logging::init("tablesnap");
    super::warn_secrets_on_argv(&argv, &["-s", "--aws-secret", "--aws-token"]);
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tablesnap: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut cfg = cfg;
    let ready = std::sync::Arc::new(tokio::sync::Notify::new());
    cfg.ready = Some(ready.clone());
    if let Some(interval) = super::systemd::watchdog_interval() {
        cfg.watchdog = Some(daemon::Watchdog {
            interval,
            ping: std::sync::Arc::new(|| super::systemd::notify("WATCHDOG=1")),
        });
    }
    rt.spawn(async move {
        ready.notified().await;
        super::systemd::notify("READY=1\nSTATUS=watching and uploading");
    });
    let result = rt.block_on(daemon::run(cfg, async {
        shutdown_signal().await;
        super::systemd::notify("STOPPING=1");
    }));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            if std::env::var_os("TABLESNAP_SYSLOG").is_some() {
                eprintln!("tablesnap: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
