//! Building the `object_store` client for a destination: S3 (flags, environment, the boto
//! files, the instance role), GCS, Azure and `file://`, with our retry and timeout policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::list::PaginatedListStore;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::{Destination, Store, StoreError, StoreOptions};
use crate::credentials::MetadataFallback;

/// The custom GCS base URL, as object_store will pick it: `GOOGLE_BASE_URL`, else
/// `gcs_base_url` in the service-account JSON (`GOOGLE_SERVICE_ACCOUNT` file or
/// `GOOGLE_SERVICE_ACCOUNT_KEY`). `None` for the real service.
pub(super) fn gcs_base_url(b: &GoogleCloudStorageBuilder) -> Option<String> {
    use object_store::gcp::GoogleConfigKey as K;
    if let Some(u) = b.get_config_value(&K::BaseUrl) {
        return Some(u);
    }
    let json = match b.get_config_value(&K::ServiceAccountKey) {
        Some(key) => key,
        None => std::fs::read_to_string(b.get_config_value(&K::ServiceAccount)?).ok()?,
    };
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    v.get("gcs_base_url")?.as_str().map(str::to_owned)
}

/// Whether object_store will take S3 credentials from the instance metadata service: no
/// static key, no web identity, no container credentials (the order of its chain).
fn uses_instance_metadata(b: &AmazonS3Builder) -> bool {
    use AmazonS3ConfigKey as K;
    let set = |k: K| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
    !(set(K::AccessKeyId)
        || set(K::SecretAccessKey)
        || (set(K::WebIdentityTokenFile) && set(K::RoleArn))
        || set(K::ContainerCredentialsRelativeUri)
        || (set(K::ContainerCredentialsFullUri) && set(K::ContainerAuthorizationTokenFile))
        || b.get_config_value(&K::SkipSignature)
            .is_some_and(|v| v == "true"))
}

/// The S3 client and, when its credentials can only come from the instance metadata
/// service, what to say if that gives none.
fn build_s3(
    opts: &StoreOptions,
    bucket: &str,
    retry: RetryConfig,
    client: ClientOptions,
) -> Result<
    (
        AmazonS3Builder,
        ClientOptions,
        Option<Arc<MetadataFallback>>,
    ),
    StoreError,
> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        // The original's default region; AWS_DEFAULT_REGION as the AWS CLI reads it.
        .with_region(opts.region.clone().unwrap_or_else(|| {
            std::env::var("AWS_DEFAULT_REGION")
                .ok()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "us-east-1".into())
        }));
    if let Some(k) = &opts.access_key {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &opts.secret_key {
        b = b.with_secret_access_key(s);
    }
    if let Some(t) = &opts.token {
        b = b.with_token(t);
    }
    // Neither flags nor environment: the files boto 2 read, before the role.
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if opts.access_key.is_none() && env("AWS_ACCESS_KEY_ID").is_none() {
        if let Some(c) = crate::credentials::from_files(&env)? {
            tracing::info!("credentials from {}", c.source);
            b = b
                .with_access_key_id(c.access_key)
                .with_secret_access_key(c.secret_key);
            if let (None, Some(t)) = (&opts.token, c.token) {
                b = b.with_token(t);
            }
        }
    }
    // Nothing in flags, environment or files: object_store asks the instance
    // metadata service (AWS_METADATA_ENDPOINT, or the AWS SDKs'
    // AWS_EC2_METADATA_SERVICE_ENDPOINT). Remember it for the error message.
    if let (None, Some(e)) = (
        b.get_config_value(&AmazonS3ConfigKey::MetadataEndpoint),
        env("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
    ) {
        b = b.with_metadata_endpoint(e);
    }
    let fallback = uses_instance_metadata(&b).then(|| {
        Arc::new(MetadataFallback {
            files: crate::credentials::searched_files(&env),
            endpoint: b
                .get_config_value(&AmazonS3ConfigKey::MetadataEndpoint)
                .unwrap_or_else(|| "http://169.254.169.254".into()),
        })
    });
    if let Some(m) = &fallback {
        if let Err(cause) = metadata_answers(&m.endpoint) {
            return Err(StoreError::NoCredentials {
                dest: Destination::S3 {
                    bucket: bucket.to_string(),
                }
                .to_string(),
                files: m.files.join(", "),
                endpoint: m.endpoint.clone(),
                cause,
            });
        }
    }
    let (b, client) = s3_endpoint(opts, b, client)?;
    Ok((b, client, fallback))
}

/// How long the instance metadata service may take to answer at all. The AWS SDKs give it
/// about a second before they move on; object_store's own client would wait for its request
/// timeout and retries, about two minutes of silence on every host outside EC2.
const METADATA_PROBE: Duration = Duration::from_secs(1);

/// Whether the instance metadata service is there to ask: `Err(cause)` when it is switched
/// off (`AWS_EC2_METADATA_DISABLED=true`, the AWS SDKs' and CLI's switch) or gives no HTTP
/// answer within [`METADATA_PROBE`] (the IMDSv2 token request, which it answers whatever
/// the role). Any answer at all is enough: object_store then asks it for real.
fn metadata_answers(endpoint: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err("AWS_EC2_METADATA_DISABLED is set".into());
    }
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let host = rest.split('/').next().unwrap_or(rest);
    let has_port = match host.rfind(']') {
        Some(i) => host[i..].contains(':'),
        None => host.contains(':'),
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let addr = if has_port {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    };
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .collect();
    let first = addrs.first().ok_or_else(|| format!("{addr}: no address"))?;
    let mut conn =
        std::net::TcpStream::connect_timeout(first, METADATA_PROBE).map_err(|e| e.to_string())?;
    if scheme == "https" {
        return Ok(());
    }
    let _ = conn.set_read_timeout(Some(METADATA_PROBE));
    let _ = conn.set_write_timeout(Some(METADATA_PROBE));
    let req = format!(
        "PUT /latest/api/token HTTP/1.1\r\nHost: {host}\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("the connection was closed without an answer".into()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!("no answer within {} s", METADATA_PROBE.as_secs()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The endpoint, plain http where it is one, signed payloads only over plain http, and SSE.
fn s3_endpoint(
    opts: &StoreOptions,
    mut b: AmazonS3Builder,
    mut client: ClientOptions,
) -> Result<(AmazonS3Builder, ClientOptions), StoreError> {
    // The endpoint: ours, else the standard variables object_store reads itself
    // (our ClientOptions replace the ones it built from AWS_ALLOW_HTTP, so plain
    // http must be allowed here for those too).
    let endpoint = opts.endpoint.clone().or_else(|| {
        ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    });
    if let Some(e) = &endpoint {
        b = b
            .with_endpoint(e.trim_end_matches('/'))
            .with_virtual_hosted_style_request(false);
    }
    let allow_http_env =
        std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if allow_http_env
        || endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    {
        client = client.with_allow_http(true);
    }
    // Over HTTPS, TLS already protects the body and the whole-file MD5 is stored and
    // verified on restore: skip SigV4's SHA-256 of every payload byte (15 % of
    // the uploader's CPU, measured). Plain-http endpoints keep signed payloads.
    let https = endpoint
        .as_deref()
        .is_none_or(|e| e.starts_with("https://"));
    b = b.with_unsigned_payload(https);
    if opts.checksum_sha256 {
        b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
    }
    if let Some(kms) = &opts.sse_kms_key_id {
        b = b.with_sse_kms_encryption(kms);
    } else if opts.sse {
        let sse_key: AmazonS3ConfigKey =
            "aws_server_side_encryption"
                .parse()
                .map_err(|source| StoreError::Build {
                    dest: opts.destination.clone(),
                    source,
                })?;
        b = b.with_config(sse_key, "AES256");
    }
    Ok((b, client))
}

/// The canonical root of a `file://` bucket. A missing root is created only when it must
/// not already exist and its parent directory does: never its parents, so an unmounted
/// backup volume (`/mnt/backups` gone, `/mnt/backups/tablesnap` asked for) is an error
/// instead of a backup that silently fills the node's own disk.
fn local_root(
    dest: &Destination,
    root: &std::path::Path,
    must_exist: bool,
) -> Result<PathBuf, StoreError> {
    if must_exist {
        if !root.is_dir() {
            return Err(StoreError::BucketMissing {
                dest: dest.to_string(),
            });
        }
    } else if !root.is_dir() {
        if !root.parent().is_some_and(|p| p.is_dir()) {
            return Err(StoreError::BucketMissing {
                dest: dest.to_string(),
            });
        }
        match std::fs::create_dir(root) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Local {
                    op: "create destination directory",
                    key: root.display().to_string(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    std::fs::canonicalize(root).map_err(|source| StoreError::Local {
        op: "resolve destination directory",
        key: root.display().to_string(),
        source,
    })
}

impl Store {
    /// Opens the destination; a missing `file://` root whose parent exists is created
    /// (tablesnap writing its first backup), never its parents.
    pub fn open(opts: &StoreOptions) -> Result<Self, StoreError> {
        Self::open_with(opts, false)
    }

    /// Opens a destination that must already exist: a missing `file://` root is
    /// [`StoreError::BucketMissing`] (exit 3, like a missing S3 bucket) instead of being
    /// created, for the tools that only read or delete (tableslurp, tablechop), where a
    /// mistyped path must not look like an empty backup. Remote buckets are not probed here:
    /// their first request says whether they exist (or call [`Store::check_exists`]).
    pub fn open_existing(opts: &StoreOptions) -> Result<Self, StoreError> {
        Self::open_with(opts, true)
    }

    fn open_with(opts: &StoreOptions, must_exist: bool) -> Result<Self, StoreError> {
        let dest = Destination::parse(&opts.destination)?;
        let retry = RetryConfig {
            max_retries: opts.max_retries.unwrap_or(10),
            retry_timeout: opts.retry_timeout.unwrap_or(Duration::from_secs(180)),
            ..Default::default()
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(120))
            .with_pool_max_idle_per_host(64);
        let build_err = |source| StoreError::Build {
            dest: dest.to_string(),
            source,
        };
        let (mut paged, mut local, mut root_dir, mut metadata_fallback) = (None, None, None, None);
        let mut api = None;
        let inner: Arc<dyn ObjectStore> = match &dest {
            Destination::S3 { bucket } => {
                let (b, client, fallback) = build_s3(opts, bucket, retry, client)?;
                let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
                let region = b
                    .get_config_value(&AmazonS3ConfigKey::Region)
                    .unwrap_or_else(|| "us-east-1".into());
                let s3 = Arc::new(
                    b.with_client_options(client.clone())
                        .build()
                        .map_err(build_err)?,
                );
                api = Some(Arc::new(super::s3api::S3Api::new(
                    &client,
                    s3.credentials().clone(),
                    endpoint.as_deref(),
                    bucket,
                    &region,
                    dest.to_string(),
                )));
                paged = Some(s3.clone() as Arc<dyn PaginatedListStore>);
                metadata_fallback = fallback;
                s3
            }
            Destination::Gcs { bucket } => {
                let g = GoogleCloudStorageBuilder::from_env();
                // Our ClientOptions replace the builder's: allow plain http only when the
                // operator pointed GCS at an http:// base URL (an emulator, a proxy).
                let client = match gcs_base_url(&g) {
                    Some(u) if u.starts_with("http://") => client.with_allow_http(true),
                    _ => client,
                };
                let g = g
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client)
                    .build()
                    .map_err(build_err)?;
                Arc::new(g)
            }
            Destination::Azure { container } => {
                let a = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry)
                    .with_client_options(client)
                    .build()
                    .map_err(build_err)?;
                Arc::new(a)
            }
            Destination::Local { root } => {
                root_dir = Some(local_root(&dest, root, must_exist)?);
                let l = Arc::new(LocalFileSystem::new_with_prefix(root).map_err(build_err)?);
                local = Some(l.clone());
                l
            }
        };
        Ok(Self {
            inner,
            local,
            local_root: root_dir,
            paged,
            dest,
            storage_class: opts.storage_class.clone(),
            metadata_fallback,
            api,
            locking: None,
            as_of: None,
        })
    }
}
