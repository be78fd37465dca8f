//! Where backups go: parses the destination (a bare S3 bucket name as the original took, or
//! an `s3://`, `gs://`, `az://`, `file://` URL), builds the `object_store` client for it and
//! wraps the few operations the tools need, with typed errors that name the key.
//!
//! The local file store of `object_store` cannot keep user metadata, so for `file://`
//! destinations the `stat`/`md5sum` metadata is kept in extended attributes
//! (`user.tablesnap.*`) of the stored file: the tree under the root is exactly the bucket
//! layout, and restores can still verify MD5s.
//!
//! Reading a `file://` bucket (listing, GET, HEAD, delete) is done here rather than by
//! `object_store`, which follows symlinks: a symlink in the bucket tree could make tablechop
//! delete, or tableslurp restore, files outside the bucket. Symlinks are reported once and
//! skipped; every path is resolved component by component with `O_NOFOLLOW`.
//!
//! One object with a key `object_store` cannot represent (a tab or newline in it, an empty
//! segment) used to fail the whole listing: such keys are reported once and skipped, and the
//! listing goes on (S3 is listed page by page to step over them; GCS and Azure still stop,
//! with an error naming the key, as object_store cannot list past it there).

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};

use crate::credentials::MetadataFallback;

/// Everything needed to reach a destination. Secrets are never printed: `Debug` hides them.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// `BUCKET`, `s3://BUCKET`, `gs://BUCKET`, `az://CONTAINER` or `file:///DIR`.
    pub destination: String,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub token: Option<String>,
    pub region: Option<String>,
    /// S3-compatible endpoint, e.g. `http://127.0.0.1:3900`.
    pub endpoint: Option<String>,
    /// SSE-S3 (`AES256`), the original's `--with-sse`.
    pub sse: bool,
    /// SSE-KMS with this key id.
    pub sse_kms_key_id: Option<String>,
    /// `STANDARD`, `REDUCED_REDUNDANCY`, `STANDARD_IA`, ... (the original's `-R`).
    pub storage_class: Option<String>,
    /// Total time a single request may spend retrying transient failures.
    pub retry_timeout: Option<Duration>,
    pub max_retries: Option<usize>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("destination", &self.destination)
            .field("access_key", &self.access_key.as_ref().map(|_| "<set>"))
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("sse", &self.sse)
            .field("sse_kms_key_id", &self.sse_kms_key_id)
            .field("storage_class", &self.storage_class)
            .finish()
    }
}

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    S3 { bucket: String },
    Gcs { bucket: String },
    Azure { container: String },
    Local { root: PathBuf },
}

impl Destination {
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Destination {
            dest: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some((scheme, rest)) = s.split_once("://") {
            if scheme == "file" {
                if !rest.starts_with('/') {
                    return Err(bad(
                        "a file:// destination needs an absolute path, e.g. file:///var/backups/tablesnap",
                    ));
                }
                return Ok(Destination::Local {
                    root: PathBuf::from(rest),
                });
            }
            let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
            if name.is_empty() {
                return Err(bad("the URL names no bucket"));
            }
            if !path.trim_matches('/').is_empty() {
                return Err(bad(
                    "a path after the bucket is not supported: put it in --prefix (e.g. --prefix 'backups/')",
                ));
            }
            let name = name.to_string();
            return match scheme {
                "s3" | "s3a" => Ok(Destination::S3 { bucket: name }),
                "gs" | "gcs" => Ok(Destination::Gcs { bucket: name }),
                "az" | "azure" | "abfs" => Ok(Destination::Azure { container: name }),
                _ => Err(bad(
                    "unknown scheme; use a bucket name, s3://, gs://, az:// or file://",
                )),
            };
        }
        if s.is_empty() || s.contains('/') {
            return Err(bad(
                "not a bucket name; use a bucket name, s3://BUCKET, gs://BUCKET, az://CONTAINER or file:///DIR",
            ));
        }
        Ok(Destination::S3 {
            bucket: s.to_string(),
        })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::S3 { bucket } => write!(f, "s3://{bucket}"),
            Destination::Gcs { bucket } => write!(f, "gs://{bucket}"),
            Destination::Azure { container } => write!(f, "az://{container}"),
            Destination::Local { root } => write!(f, "file://{}", root.display()),
        }
    }
}

/// Errors from the object store, each naming the key or destination involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid destination {dest:?}: {reason}")]
    Destination { dest: String, reason: String },
    #[error("cannot build the client for {dest}: {source}")]
    Build {
        dest: String,
        #[source]
        source: object_store::Error,
    },
    #[error("key {key:?} cannot be stored as is: {reason}")]
    BadKey { key: String, reason: String },
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialsError),
    #[error(
        "no credentials for {dest}: none in -k/-s, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, {files}, web identity or container variables, and the instance metadata service at {endpoint} gave none ({cause}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in ~/.aws/credentials, or run on a machine with an instance role"
    )]
    NoCredentials {
        dest: String,
        /// The credential files read, joined for the message.
        files: String,
        endpoint: String,
        /// The innermost error from the metadata service (no secret: nothing was found).
        cause: String,
    },
    #[error("{op} {key}: {source}")]
    Op {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{op} {key}: {source}")]
    Local {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bucket missing: {dest} does not exist (check the path, or create the directory)")]
    BucketMissing { dest: String },
    #[error(
        "{op} {}: a symlink in the file:// bucket, not followed (only plain files and directories are objects)",
        crate::layout::printable(.key)
    )]
    Symlink { op: &'static str, key: String },
    #[error("{key}: larger than {limit} bytes, not read")]
    TooLarge { key: String, limit: u64 },
}

/// How an error should be treated by a long-running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// Credentials or permissions: retrying will not help until someone fixes them.
    Denied,
    /// Network, 5xx, throttling, timeouts: retry later.
    Transient,
    /// Anything else (bad request, bad key).
    Other,
}

impl StoreError {
    /// The key itself cannot be stored (object_store would rewrite it, or a local
    /// destination refuses the name as too long): retrying will never help.
    pub fn is_unstorable_name(&self) -> bool {
        match self {
            StoreError::BadKey { .. } => true,
            StoreError::Local { source, .. } => source.raw_os_error() == Some(libc::ENAMETOOLONG),
            StoreError::Op { source, .. } => {
                let mut e: Option<&(dyn std::error::Error + 'static)> = Some(source);
                while let Some(x) = e {
                    if let Some(io) = x.downcast_ref::<std::io::Error>() {
                        if io.raw_os_error() == Some(libc::ENAMETOOLONG) {
                            return true;
                        }
                    }
                    if x.to_string().contains("File name too long") {
                        return true;
                    }
                    e = x.source();
                }
                false
            }
            _ => false,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Op { source, .. } => match source {
                object_store::Error::NotFound { .. } => ErrorKind::NotFound,
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => ErrorKind::Denied,
                object_store::Error::Generic { .. } => classify_generic(source),
                object_store::Error::JoinError { .. } => ErrorKind::Transient,
                _ => ErrorKind::Other,
            },
            StoreError::NoCredentials { .. } => ErrorKind::Denied,
            StoreError::Local { source, .. } => match source.kind() {
                // A file where a directory of the key should be: no such object either.
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => {
                    ErrorKind::NotFound
                }
                std::io::ErrorKind::PermissionDenied => ErrorKind::Denied,
                _ => ErrorKind::Transient,
            },
            StoreError::BucketMissing { .. } => ErrorKind::NotFound,
            _ => ErrorKind::Other,
        }
    }
}

/// Some object_store paths (listing) report HTTP failures as `Generic` errors: read the
/// status and the S3 error code from the error chain.
fn classify_generic(e: &object_store::Error) -> ErrorKind {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(&s.to_string());
        src = s.source();
    }
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["NoSuchBucket", "404 Not Found", "NoSuchKey"]) {
        ErrorKind::NotFound
    } else if has(&[
        "403 Forbidden",
        "401 Unauthorized",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
    ]) {
        ErrorKind::Denied
    } else if has(&[
        "400 Bad Request",
        "405 Method Not Allowed",
        "501 Not Implemented",
    ]) {
        ErrorKind::Other
    } else {
        ErrorKind::Transient
    }
}

/// The custom GCS base URL, as object_store will pick it: `GOOGLE_BASE_URL`, else
/// `gcs_base_url` in the service-account JSON (`GOOGLE_SERVICE_ACCOUNT` file or
/// `GOOGLE_SERVICE_ACCOUNT_KEY`). `None` for the real service.
fn gcs_base_url(b: &GoogleCloudStorageBuilder) -> Option<String> {
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

/// The error for a failed operation: [`StoreError::NoCredentials`] when it failed because the
/// metadata service, the last link of the chain, gave no credentials; else the plain one.
fn no_credentials(
    m: &MetadataFallback,
    dest: String,
    op: &'static str,
    key: String,
    source: object_store::Error,
) -> StoreError {
    let mut chain = vec![source.to_string()];
    let mut src = std::error::Error::source(&source);
    while let Some(e) = src {
        chain.push(e.to_string());
        src = e.source();
    }
    if !m.caused(&chain.join(": ")) {
        return StoreError::Op { op, key, source };
    }
    let cause = chain.last().map(String::as_str).unwrap_or_default();
    StoreError::NoCredentials {
        dest,
        files: m.files.join(", "),
        endpoint: m.endpoint.clone(),
        cause: cause.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// What a listing or HEAD says about an object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    pub e_tag: Option<String>,
    /// User metadata (`x-amz-meta-*` without the prefix). Filled by `head`, empty in listings.
    pub metadata: HashMap<String, String>,
}

impl ObjectInfo {
    /// The MD5 the object should have: the `md5sum` metadata, else a single-part ETag.
    pub fn expected_md5(&self) -> Option<String> {
        if let Some(m) = self.metadata.get(crate::layout::META_MD5) {
            return Some(m.to_ascii_lowercase());
        }
        let etag = self.e_tag.as_deref()?.trim_matches('"');
        (etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| etag.to_ascii_lowercase())
    }
}

/// Metadata and headers to set on a new object.
#[derive(Debug, Clone, Default)]
pub struct PutMeta {
    pub content_type: Option<String>,
    pub user: Vec<(&'static str, String)>,
}

/// An object store destination and the operations the tools use.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    local: Option<Arc<LocalFileSystem>>,
    /// The canonical root of a `file://` bucket, read without following symlinks below it.
    local_root: Option<PathBuf>,
    /// S3: listed page by page so that an unusable key can be stepped over.
    paged: Option<Arc<dyn PaginatedListStore>>,
    dest: Destination,
    storage_class: Option<String>,
    /// Set when S3 credentials can only come from the instance metadata service.
    metadata_fallback: Option<Arc<MetadataFallback>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.dest)
    }
}

impl Store {
    /// Opens the destination; a missing `file://` root is created (tablesnap writing its
    /// first backup).
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
        let mut paged: Option<Arc<dyn PaginatedListStore>> = None;
        let mut local_root = None;
        let mut metadata_fallback = None;
        let (inner, local): (Arc<dyn ObjectStore>, _) = match &dest {
            Destination::S3 { bucket } => {
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
                if uses_instance_metadata(&b) {
                    metadata_fallback = Some(Arc::new(MetadataFallback {
                        files: crate::credentials::searched_files(&env),
                        endpoint: b
                            .get_config_value(&AmazonS3ConfigKey::MetadataEndpoint)
                            .unwrap_or_else(|| "http://169.254.169.254".into()),
                    }));
                }
                let mut client = client;
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
                let allow_http_env = std::env::var("AWS_ALLOW_HTTP")
                    .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
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
                if let Some(kms) = &opts.sse_kms_key_id {
                    b = b.with_sse_kms_encryption(kms);
                } else if opts.sse {
                    let sse_key: AmazonS3ConfigKey =
                        "aws_server_side_encryption".parse().map_err(build_err)?;
                    b = b.with_config(sse_key, "AES256");
                }
                let s3 = Arc::new(b.with_client_options(client).build().map_err(build_err)?);
                paged = Some(s3.clone());
                (s3, None)
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
                (Arc::new(g), None)
            }
            Destination::Azure { container } => {
                let a = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry)
                    .with_client_options(client)
                    .build()
                    .map_err(build_err)?;
                (Arc::new(a), None)
            }
            Destination::Local { root } => {
                if must_exist {
                    if !root.is_dir() {
                        return Err(StoreError::BucketMissing {
                            dest: dest.to_string(),
                        });
                    }
                } else {
                    std::fs::create_dir_all(root).map_err(|source| StoreError::Local {
                        op: "create destination directory",
                        key: root.display().to_string(),
                        source,
                    })?;
                }
                let canonical =
                    std::fs::canonicalize(root).map_err(|source| StoreError::Local {
                        op: "resolve destination directory",
                        key: root.display().to_string(),
                        source,
                    })?;
                local_root = Some(canonical);
                let l = Arc::new(LocalFileSystem::new_with_prefix(root).map_err(build_err)?);
                (l.clone() as Arc<dyn ObjectStore>, Some(l))
            }
        };
        Ok(Self {
            inner,
            local,
            local_root,
            paged,
            dest,
            storage_class: opts.storage_class.clone(),
            metadata_fallback,
        })
    }

    pub fn destination(&self) -> &Destination {
        &self.dest
    }

    /// The object_store path for a key, refusing keys it would silently rewrite (empty
    /// segments such as `//`, a leading `/`, `.` or `..` segments, control characters).
    pub fn path(key: &str) -> Result<Path, StoreError> {
        let p = Path::parse(key).map_err(|e| StoreError::BadKey {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        if p.as_ref() != key {
            return Err(StoreError::BadKey {
                key: key.to_string(),
                reason: "keys may not start or end with '/'".into(),
            });
        }
        Ok(p)
    }

    fn op_err(
        &self,
        op: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> StoreError + 'static {
        let key = key.to_string();
        let fallback = self.metadata_fallback.clone();
        let dest = self.dest.to_string();
        move |source| match fallback {
            Some(m) => no_credentials(&m, dest, op, key, source),
            None => StoreError::Op { op, key, source },
        }
    }

    /// Every object whose key starts with `dir + "/"`. Keys that cannot be used (control
    /// characters, empty segments) and, in a `file://` bucket, symlinks are reported once each
    /// (a warning) and skipped; the listing goes on (S3 and `file://`; on GCS and Azure such a
    /// key is an error naming it, since their listing cannot continue past it).
    pub fn list_dir(&self, dir: &str) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let s = self.list_dir_raw(dir);
        // A listing that failed for want of credentials says so (like every other op).
        let Some(fb) = self.metadata_fallback.clone() else {
            return s;
        };
        let dest = self.dest.to_string();
        s.map_err(move |e| match e {
            StoreError::Op { op, key, source } => {
                no_credentials(&fb, dest.clone(), op, key, source)
            }
            e => e,
        })
        .boxed()
    }

    fn list_dir_raw(&self, dir: &str) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let dir = dir.trim_end_matches('/');
        if let Err(e) = Self::path(dir) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        if let Some(root) = &self.local_root {
            return local::list(root.clone(), dir.to_string());
        }
        if let Some(paged) = &self.paged {
            return paged_list(paged.clone(), dir.to_string());
        }
        let path = Self::path(dir).expect("checked above");
        let dir_s = dir.to_string();
        self.inner
            .list(Some(&path))
            .filter_map(move |r| {
                let out = match r {
                    Ok(m) => Some(Ok(ObjectInfo {
                        key: m.location.to_string(),
                        size: m.size,
                        last_modified: m.last_modified,
                        e_tag: m.e_tag,
                        metadata: HashMap::new(),
                    })),
                    // GCS and Azure: object_store ends the listing at a page it cannot
                    // convert, so skipping would silently truncate it (and tablechop would
                    // decide on half a listing). Fail, naming the key (escaped).
                    Err(object_store::Error::InvalidPath { source }) => {
                        Some(Err(StoreError::BadKey {
                            key: bad_key_of(&source).unwrap_or_default(),
                            reason: format!(
                                "{}; this backend cannot list past it: rename or delete that object",
                                crate::layout::printable(&path_error_reason(&source))
                            ),
                        }))
                    }
                    Err(source) => Some(Err(StoreError::Op {
                        op: "list",
                        key: format!("{dir_s}/"),
                        source,
                    })),
                };
                futures::future::ready(out)
            })
            .boxed()
    }

    /// Collects `list_dir` into a vector.
    pub async fn list_all(&self, dir: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.list_dir(dir).try_collect().await
    }

    /// Whether the bucket (or `file://` root) exists and can be listed: `BucketMissing` if it
    /// does not. For tools that must not act on a mistyped destination.
    pub async fn check_exists(&self) -> Result<(), StoreError> {
        if let Some(root) = &self.local_root {
            return if root.is_dir() {
                Ok(())
            } else {
                Err(StoreError::BucketMissing {
                    dest: self.dest.to_string(),
                })
            };
        }
        match self.inner.list_with_delimiter(None).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.op_err("list", "/")(e);
                Err(if e.kind() == ErrorKind::NotFound {
                    StoreError::BucketMissing {
                        dest: self.dest.to_string(),
                    }
                } else {
                    e
                })
            }
        }
    }

    /// A cheap request that proves the destination exists and the credentials work.
    pub async fn probe(&self, dir: &str) -> Result<(), StoreError> {
        let dir = dir.trim_end_matches('/');
        let path = Self::path(dir)?;
        self.inner
            .list_with_delimiter(Some(&path))
            .await
            .map(|_| ())
            .map_err(self.op_err("list", dir))
    }

    /// Size, dates and user metadata of one object; `Ok(None)` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let path = Self::path(key)?;
        if let Some(root) = &self.local_root {
            return match local::open(root, key, "head").await {
                Ok((_, info)) => Ok(Some(info)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            };
        }
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let r = match self.inner.get_opts(&path, opts).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.op_err("head", key)(e)),
        };
        self.info_of(key, &r).map(Some)
    }

    /// What a GET or HEAD response says about `key`: size, dates, ETag and user metadata
    /// (from the response's attributes, or from the xattrs of a local file).
    fn info_of(&self, key: &str, r: &object_store::GetResult) -> Result<ObjectInfo, StoreError> {
        let mut metadata = HashMap::new();
        for (k, v) in r.attributes.iter() {
            if let Attribute::Metadata(name) = k {
                metadata.insert(name.to_string(), v.to_string());
            }
        }
        if self.local.is_some() {
            metadata.extend(self.local_meta(key)?);
        }
        Ok(ObjectInfo {
            key: key.to_string(),
            size: r.meta.size,
            last_modified: r.meta.last_modified,
            e_tag: r.meta.e_tag.clone(),
            metadata,
        })
    }

    fn attributes(&self, meta: &PutMeta) -> Attributes {
        let mut a = Attributes::new();
        if self.local.is_some() {
            return a;
        }
        if let Some(ct) = &meta.content_type {
            a.insert(Attribute::ContentType, ct.clone().into());
        }
        if let Some(sc) = &self.storage_class {
            a.insert(Attribute::StorageClass, sc.clone().into());
        }
        for (k, v) in &meta.user {
            a.insert(Attribute::Metadata((*k).into()), v.clone().into());
        }
        a
    }

    /// Stores a small object in one request.
    pub async fn put(&self, key: &str, body: Bytes, meta: &PutMeta) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        let opts = PutOptions {
            attributes: self.attributes(meta),
            ..Default::default()
        };
        self.inner
            .put_opts(&path, PutPayload::from_bytes(body), opts)
            .await
            .map_err(self.op_err("put", key))?;
        self.set_local_meta(key, meta)?;
        self.sync_local(key)
    }

    /// Copies an object inside the store (S3 CopyObject keeps its metadata; file:// links
    /// it, sharing the extended attributes). Used for hard links of a file already stored.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (f, t) = (Self::path(from)?, Self::path(to)?);
        self.inner
            .copy(&f, &t)
            .await
            .map_err(self.op_err("copy", from))?;
        self.sync_local(to)
    }

    /// Starts a multipart upload; the caller uploads parts, then `complete` or `abort`s, then
    /// calls `finish_multipart`.
    pub async fn start_multipart(
        &self,
        key: &str,
        meta: &PutMeta,
    ) -> Result<Box<dyn MultipartUpload>, StoreError> {
        let path = Self::path(key)?;
        let opts = PutMultipartOptions {
            attributes: self.attributes(meta),
            ..Default::default()
        };
        self.inner
            .put_multipart_opts(&path, opts)
            .await
            .map_err(self.op_err("start multipart upload", key))
    }

    /// After a completed multipart upload: stores the metadata where the backend could not
    /// take it at initiation (local destinations).
    pub fn finish_multipart(&self, key: &str, meta: &PutMeta) -> Result<(), StoreError> {
        self.set_local_meta(key, meta)?;
        self.sync_local(key)
    }

    /// Local destinations: "durable" means on disk. The file (data and xattrs), then every
    /// directory from its own up to the destination root (new ones were just created), are
    /// fsynced before the upload counts as done.
    fn sync_local(&self, key: &str) -> Result<(), StoreError> {
        let (Some(file), Some(l)) = (self.local_file(key), self.local.as_ref()) else {
            return Ok(());
        };
        let root = l
            .path_to_filesystem(&Path::from("x"))
            .ok()
            .and_then(|p| p.parent().map(|p| p.to_path_buf()));
        let err = |source| StoreError::Local {
            op: "fsync",
            key: key.to_string(),
            source,
        };
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(err)?;
        LOCAL_SYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut dir = file.parent();
        while let Some(d) = dir {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(err)?;
            if root.as_deref().is_none_or(|r| d == r || !d.starts_with(r)) {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// A streaming read of an object (or a byte range of it).
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let path = Self::path(key)?;
        if let Some(root) = &self.local_root {
            let (file, _) = local::open(root, key, "get").await?;
            return local::read_stream(file, key, range).await;
        }
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let r = self
            .inner
            .get_opts(&path, opts)
            .await
            .map_err(self.op_err("get", key))?;
        let k = key.to_string();
        Ok(r.into_stream()
            .map_err(move |source| StoreError::Op {
                op: "read",
                key: k.clone(),
                source,
            })
            .boxed())
    }

    /// A streaming read of a whole object together with what a HEAD would say about it
    /// (size, ETag, user metadata), from the same response: one request instead of two.
    pub async fn get_with_info(
        &self,
        key: &str,
    ) -> Result<(ObjectInfo, BoxStream<'static, Result<Bytes, StoreError>>), StoreError> {
        let path = Self::path(key)?;
        if let Some(root) = &self.local_root {
            let (file, info) = local::open(root, key, "get").await?;
            return Ok((info, local::read_stream(file, key, None).await?));
        }
        let r = self
            .inner
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(self.op_err("get", key))?;
        let info = self.info_of(key, &r)?;
        let k = key.to_string();
        let stream = r
            .into_stream()
            .map_err(move |source| StoreError::Op {
                op: "read",
                key: k.clone(),
                source,
            })
            .boxed();
        Ok((info, stream))
    }

    /// Reads a whole (small) object.
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = Self::path(key)?;
        if self.local_root.is_some() {
            return self.get_bytes_capped(key, u64::MAX).await;
        }
        let r = self
            .inner
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(self.op_err("get", key))?;
        r.bytes().await.map_err(self.op_err("read", key))
    }

    /// Reads a whole object of at most `limit` bytes; a bigger one is
    /// [`StoreError::TooLarge`] after reading no more than `limit` bytes of it (index bodies:
    /// [`crate::layout::MAX_INDEX_BYTES`]).
    pub async fn get_bytes_capped(&self, key: &str, limit: u64) -> Result<Bytes, StoreError> {
        let too_large = || StoreError::TooLarge {
            key: key.to_string(),
            limit,
        };
        let (info, mut stream) = self.get_with_info(key).await?;
        if info.size > limit {
            return Err(too_large());
        }
        let mut buf = bytes::BytesMut::with_capacity(info.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        if let Some(root) = &self.local_root {
            return local::delete(root, key).await;
        }
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.op_err("delete", key)(e)),
        }
    }

    /// Deletes many keys with the backend's bulk delete (S3 DeleteObjects, 1000 a request).
    /// Returns the keys deleted; stops at the first error.
    pub async fn delete_many(&self, keys: Vec<String>) -> Result<usize, StoreError> {
        if self.local_root.is_some() {
            let mut n = 0;
            for k in &keys {
                self.delete(k).await?;
                n += 1;
            }
            return Ok(n);
        }
        let mut paths = Vec::with_capacity(keys.len());
        for k in &keys {
            paths.push(Ok(Self::path(k)?));
        }
        let mut n = 0;
        let mut s = self
            .inner
            .delete_stream(futures::stream::iter(paths).boxed());
        while let Some(r) = s.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => n += 1,
                Err(e) => return Err(self.op_err("delete", "(batch)")(e)),
            }
        }
        Ok(n)
    }

    // ---- local destinations: user metadata in extended attributes ----

    fn local_file(&self, key: &str) -> Option<PathBuf> {
        let l = self.local.as_ref()?;
        l.path_to_filesystem(&Path::parse(key).ok()?).ok()
    }

    fn set_local_meta(&self, key: &str, meta: &PutMeta) -> Result<(), StoreError> {
        let Some(file) = self.local_file(key) else {
            return Ok(());
        };
        for (name, value) in &meta.user {
            if let Err(source) = xattr::set(&file, name, value.as_bytes()) {
                // Filesystems without user xattrs (some tmpfs) still get the data; only
                // restore-time MD5 verification is lost.
                if source.raw_os_error() == Some(libc::ENOTSUP) {
                    tracing::debug!(key, "destination filesystem has no user xattrs");
                    return Ok(());
                }
                return Err(StoreError::Local {
                    op: "set metadata on",
                    key: key.to_string(),
                    source,
                });
            }
        }
        Ok(())
    }

    fn local_meta(&self, key: &str) -> Result<HashMap<String, String>, StoreError> {
        let mut out = HashMap::new();
        let Some(file) = self.local_file(key) else {
            return Ok(out);
        };
        for name in [crate::layout::META_MD5, crate::layout::META_STAT] {
            if let Some(v) = xattr::get(&file, name) {
                out.insert(name.to_string(), String::from_utf8_lossy(&v).into_owned());
            }
        }
        Ok(out)
    }
}

/// Files fsynced by local destinations (tests check that durability is real).
pub static LOCAL_SYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The key an `object_store` path error is about, if it names one.
fn bad_key_of(e: &object_store::path::Error) -> Option<String> {
    match e {
        object_store::path::Error::EmptySegment { path }
        | object_store::path::Error::BadSegment { path, .. } => Some(path.clone()),
        _ => None,
    }
}

/// Why object_store refuses a key, without repeating the key.
fn path_error_reason(e: &object_store::path::Error) -> String {
    match e {
        object_store::path::Error::EmptySegment { .. } => "empty path segment".into(),
        object_store::path::Error::BadSegment { source, .. } => source.to_string(),
        e => e.to_string(),
    }
}

fn report_bad_key(key: &str, why: &str) {
    tracing::warn!(
        key = %crate::layout::printable(key),
        "skipping an object whose key cannot be used ({}); the rest of the listing goes on",
        crate::layout::printable(why)
    );
}

/// Largest page S3 returns.
const PAGE: usize = 1000;

/// Lists `dir/` page by page. `object_store` refuses a whole page when one key in it cannot
/// be a `Path`; then the same range is listed again with smaller and smaller pages until that
/// key is alone in its page: it is reported, skipped (`start-after` takes the raw key) and the
/// listing goes on with full pages. About 20 extra requests per unusable key.
fn paged_list(
    store: Arc<dyn PaginatedListStore>,
    dir: String,
) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
    struct St {
        store: Arc<dyn PaginatedListStore>,
        prefix: String,
        /// The last key handed out (or skipped): the next page starts after it.
        after: Option<String>,
        token: Option<String>,
        max: usize,
        done: bool,
    }
    let st = St {
        store,
        prefix: if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        },
        after: None,
        token: None,
        max: PAGE,
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let opts = PaginatedListOptions {
            offset: if st.token.is_none() {
                st.after.clone()
            } else {
                None
            },
            page_token: st.token.clone(),
            max_keys: (st.max < PAGE).then_some(st.max),
            ..Default::default()
        };
        let batch: Vec<Result<ObjectInfo, StoreError>> = match st
            .store
            .list_paginated(
                Some(&st.prefix)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.as_str()),
                opts,
            )
            .await
        {
            Ok(page) => {
                let objs = page.result.objects;
                if let Some(last) = objs.last() {
                    st.after = Some(last.location.to_string());
                }
                if page.page_token.is_none() {
                    st.done = true;
                }
                // Full pages continue with the server's token; after a split, start-after.
                st.token = if st.max == PAGE {
                    page.page_token
                } else {
                    None
                };
                st.max = (st.max * 2).min(PAGE);
                objs.into_iter()
                    .map(|m| {
                        Ok(ObjectInfo {
                            key: m.location.to_string(),
                            size: m.size,
                            last_modified: m.last_modified,
                            e_tag: m.e_tag,
                            metadata: HashMap::new(),
                        })
                    })
                    .collect()
            }
            Err(object_store::Error::InvalidPath { source }) => {
                st.token = None;
                match bad_key_of(&source) {
                    // Already stepped over it: the server ignores start-after. Stop rather
                    // than loop.
                    Some(bad) if st.after.as_deref() == Some(bad.as_str()) => {
                        st.done = true;
                        return Some((
                            vec![Err(StoreError::BadKey {
                                key: bad,
                                reason: "the server lists it again after start-after; cannot list past it: rename or delete that object".into(),
                            })],
                            st,
                        ));
                    }
                    Some(bad) if st.max == 1 => {
                        report_bad_key(&bad, &path_error_reason(&source));
                        st.after = Some(bad);
                        st.max = PAGE;
                    }
                    Some(_) => st.max /= 2,
                    None => {
                        st.done = true;
                        return Some((
                            vec![Err(StoreError::Op {
                                op: "list",
                                key: st.prefix.clone(),
                                source: source.into(),
                            })],
                            st,
                        ));
                    }
                }
                Vec::new()
            }
            Err(source) => {
                st.done = true;
                vec![Err(StoreError::Op {
                    op: "list",
                    key: st.prefix.clone(),
                    source,
                })]
            }
        };
        Some((batch, st))
    })
    .flat_map(futures::stream::iter)
    .boxed()
}

/// `file://` buckets read without following symlinks.
mod local {
    use std::ffi::CString;
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::ops::Range;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    use bytes::Bytes;
    use chrono::{DateTime, Utc};
    use futures::stream::{BoxStream, StreamExt};
    use std::collections::HashMap;

    use super::{ObjectInfo, StoreError, report_bad_key};
    use crate::layout::printable;

    fn cstr(s: &[u8]) -> std::io::Result<CString> {
        CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    }

    fn openat(dir: Option<&OwnedFd>, name: &[u8], flags: libc::c_int) -> std::io::Result<OwnedFd> {
        let c = cstr(name)?;
        let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
        // SAFETY: a valid NUL-terminated name and a valid (or AT_FDCWD) directory fd.
        let fd = unsafe { libc::openat(dfd, c.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by openat and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

    /// A local I/O error on `key`: ELOOP (O_NOFOLLOW met a symlink) is its own error.
    fn io_err(op: &'static str, key: &str, source: std::io::Error) -> StoreError {
        match source.raw_os_error() {
            Some(libc::ELOOP) => StoreError::Symlink {
                op,
                key: key.to_string(),
            },
            _ => StoreError::Local {
                op,
                key: key.to_string(),
                source,
            },
        }
    }

    /// Opens the directory holding `key` under `root`, refusing symlinks on the way; returns
    /// it with the key's last segment.
    fn parent_of<'k>(
        root: &Path,
        key: &'k str,
        op: &'static str,
    ) -> Result<(OwnedFd, &'k str), StoreError> {
        let err = |source| io_err(op, key, source);
        let mut dir = openat(
            None,
            root.as_os_str().as_bytes(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
        .map_err(err)?;
        let (parents, last) = key.rsplit_once('/').unwrap_or(("", key));
        for seg in parents.split('/').filter(|s| !s.is_empty()) {
            dir = match openat(Some(&dir), seg.as_bytes(), DIR_FLAGS) {
                Ok(d) => d,
                // O_DIRECTORY|O_NOFOLLOW on a symlink is ENOTDIR on Linux: say which it is.
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) && is_symlink_at(&dir, seg) => {
                    return Err(StoreError::Symlink {
                        op,
                        key: key.to_string(),
                    });
                }
                Err(e) => return Err(err(e)),
            };
        }
        Ok((dir, last))
    }

    fn is_symlink_at(dir: &OwnedFd, name: &str) -> bool {
        let Ok(c) = cstr(name.as_bytes()) else {
            return false;
        };
        // SAFETY: zeroed stat is a valid out buffer; valid fd and NUL-terminated name.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }

    fn mtime(m: &std::fs::Metadata) -> DateTime<Utc> {
        DateTime::from_timestamp(m.mtime(), m.mtime_nsec() as u32).unwrap_or_default()
    }

    /// The ETag object_store's local store gives (inode, mtime in µs, size), for parity.
    fn etag(m: &std::fs::Metadata) -> String {
        let micros = (m.mtime() as i128 * 1_000_000 + m.mtime_nsec() as i128 / 1000).max(0);
        format!("\"{:x}-{:x}-{:x}\"", m.ino(), micros, m.size())
    }

    fn info(key: &str, m: &std::fs::Metadata) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: m.size(),
            last_modified: mtime(m),
            e_tag: Some(etag(m)),
            metadata: HashMap::new(),
        }
    }

    /// Opens `key` for reading, never through a symlink; with what a HEAD says about it
    /// (including the `user.tablesnap.*` metadata, read from the open file).
    pub(super) async fn open(
        root: &Path,
        key: &str,
        op: &'static str,
    ) -> Result<(File, ObjectInfo), StoreError> {
        let (root, key_s) = (root.to_path_buf(), key.to_string());
        tokio::task::spawn_blocking(move || open_blocking(&root, &key_s, op))
            .await
            .map_err(|e| StoreError::Local {
                op,
                key: key.to_string(),
                source: std::io::Error::other(e),
            })?
    }

    fn open_blocking(
        root: &Path,
        key: &str,
        op: &'static str,
    ) -> Result<(File, ObjectInfo), StoreError> {
        let (dir, last) = parent_of(root, key, op)?;
        let local_err = |source| io_err(op, key, source);
        // O_NONBLOCK: a FIFO planted in the bucket must not block the open.
        let fd = openat(
            Some(&dir),
            last.as_bytes(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        )
        .map_err(local_err)?;
        let file = File::from(fd);
        let m = file.metadata().map_err(local_err)?;
        if !m.is_file() {
            return Err(local_err(std::io::Error::new(
                if m.is_dir() {
                    std::io::ErrorKind::NotFound
                } else {
                    std::io::ErrorKind::InvalidInput
                },
                "not a regular file",
            )));
        }
        let mut i = info(key, &m);
        for name in [crate::layout::META_MD5, crate::layout::META_STAT] {
            if let Some(v) = super::xattr::fget(&file, name) {
                i.metadata
                    .insert(name.to_string(), String::from_utf8_lossy(&v).into_owned());
            }
        }
        Ok((file, i))
    }

    const CHUNK: usize = 256 * 1024;

    /// The bytes of an open file (or a range of them) as a stream of chunks.
    pub(super) async fn read_stream(
        mut file: File,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let key = key.to_string();
        let (start, left) = match &range {
            Some(r) => (r.start, r.end.saturating_sub(r.start)),
            None => (0, u64::MAX),
        };
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .map_err(|source| StoreError::Local {
                    op: "get",
                    key: key.clone(),
                    source,
                })?;
        }
        let state = Some((file, left));
        Ok(futures::stream::unfold(state, move |state| {
            let key = key.clone();
            async move {
                let (mut file, left) = state?;
                if left == 0 {
                    return None;
                }
                let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
                let r = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; want];
                    let n = loop {
                        match file.read(&mut buf) {
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            r => break r,
                        }
                    };
                    n.map(|n| {
                        buf.truncate(n);
                        (buf, file)
                    })
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match r {
                    Ok((buf, _)) if buf.is_empty() => None,
                    Ok((buf, file)) => {
                        let left = left.saturating_sub(buf.len() as u64);
                        Some((Ok(Bytes::from(buf)), Some((file, left))))
                    }
                    Err(source) => Some((
                        Err(StoreError::Local {
                            op: "read",
                            key,
                            source,
                        }),
                        None,
                    )),
                }
            }
        })
        .boxed())
    }

    /// Deletes `key`, never through a symlinked directory; a symlink at `key` itself is
    /// refused too (listings never name one). A missing key is not an error.
    pub(super) async fn delete(root: &Path, key: &str) -> Result<(), StoreError> {
        let (root, key_s) = (root.to_path_buf(), key.to_string());
        tokio::task::spawn_blocking(move || delete_blocking(&root, &key_s))
            .await
            .map_err(|e| StoreError::Local {
                op: "delete",
                key: key.to_string(),
                source: std::io::Error::other(e),
            })?
    }

    fn delete_blocking(root: &Path, key: &str) -> Result<(), StoreError> {
        let (dir, last) = match parent_of(root, key, "delete") {
            Err(e @ StoreError::Local { .. }) if e.kind() == super::ErrorKind::NotFound => {
                return Ok(());
            }
            r => r?,
        };
        let c = cstr(last.as_bytes()).map_err(|source| StoreError::Local {
            op: "delete",
            key: key.to_string(),
            source,
        })?;
        // SAFETY: zeroed stat is a valid out buffer; valid fd and NUL-terminated name.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::NotFound {
                return Ok(());
            }
            return Err(StoreError::Local {
                op: "delete",
                key: key.to_string(),
                source,
            });
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(StoreError::Symlink {
                op: "delete",
                key: key.to_string(),
            });
        }
        // SAFETY: valid fd and NUL-terminated name.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() != std::io::ErrorKind::NotFound {
                return Err(StoreError::Local {
                    op: "delete",
                    key: key.to_string(),
                    source,
                });
            }
        }
        Ok(())
    }

    /// object_store's local store stages uploads as `NAME#<digits>`: not objects.
    fn is_staged_upload(name: &str) -> bool {
        name.split_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    type Tx = tokio::sync::mpsc::Sender<Result<Vec<ObjectInfo>, StoreError>>;
    const BATCH: usize = 1000;

    /// Lists every object under `dir/` of the bucket at `root`, streamed in batches (a
    /// million objects are never held here), sorted by name within each directory.
    pub(super) fn list(
        root: PathBuf,
        dir: String,
    ) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The walk starts when the stream is first polled (inside the caller's runtime).
        let walk = move || {
            let mut w = Walker {
                tx,
                batch: Vec::with_capacity(BATCH),
            };
            let r = w.start(&root, &dir);
            match r {
                Ok(()) => {
                    let b = std::mem::take(&mut w.batch);
                    if !b.is_empty() {
                        let _ = w.tx.blocking_send(Ok(b));
                    }
                }
                Err(e) => {
                    let _ = w.tx.blocking_send(Err(e));
                }
            }
        };
        futures::stream::unfold((Some(walk), rx), |(walk, mut rx)| async move {
            if let Some(walk) = walk {
                tokio::task::spawn_blocking(walk);
            }
            let b = rx.recv().await?;
            Some((b, (None, rx)))
        })
        .flat_map(|b| match b {
            Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .boxed()
    }

    struct Walker {
        tx: Tx,
        batch: Vec<ObjectInfo>,
    }

    /// The receiver went away: stop walking.
    struct Closed;

    impl Walker {
        fn start(&mut self, root: &Path, dir: &str) -> Result<(), StoreError> {
            // The directories of the prefix itself: none may be a symlink.
            let mut path = root.to_path_buf();
            for seg in dir.split('/').filter(|s| !s.is_empty()) {
                path.push(seg);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_symlink() => {
                        report_symlink(&path_key(root, &path));
                        return Ok(());
                    }
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(source) => {
                        return Err(StoreError::Local {
                            op: "list",
                            key: format!("{dir}/"),
                            source,
                        });
                    }
                }
            }
            let _ = self.walk(&path, dir);
            Ok(())
        }

        fn push(&mut self, o: ObjectInfo) -> Result<(), Closed> {
            self.batch.push(o);
            if self.batch.len() >= BATCH {
                let b = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
                self.tx.blocking_send(Ok(b)).map_err(|_| Closed)?;
            }
            Ok(())
        }

        fn fail(&mut self, e: StoreError) -> Closed {
            let b = std::mem::take(&mut self.batch);
            let _ = self.tx.blocking_send(Ok(b));
            let _ = self.tx.blocking_send(Err(e));
            Closed
        }

        fn walk(&mut self, path: &Path, key_dir: &str) -> Result<(), Closed> {
            let err = |source| StoreError::Local {
                op: "list",
                key: format!("{key_dir}/"),
                source,
            };
            let rd = match std::fs::read_dir(path) {
                Ok(rd) => rd,
                Err(e) => return Err(self.fail(err(e))),
            };
            let mut entries = Vec::new();
            for e in rd {
                match e {
                    Ok(e) => entries.push(e),
                    Err(e) => return Err(self.fail(err(e))),
                }
            }
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name();
                let Some(name) = name.to_str() else {
                    let shown = format!("{key_dir}/{}", name.to_string_lossy())
                        .trim_start_matches('/')
                        .to_string();
                    report_bad_key(&shown, "not UTF-8");
                    continue;
                };
                let key = if key_dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{key_dir}/{name}")
                };
                let ft = match e.file_type() {
                    Ok(ft) => ft,
                    Err(source) => return Err(self.fail(err(source))),
                };
                if ft.is_symlink() {
                    report_symlink(&key);
                } else if ft.is_dir() {
                    if let Err(why) = object_store::path::Path::parse(&key) {
                        report_bad_key(&format!("{key}/"), &super::path_error_reason(&why));
                        continue;
                    }
                    self.walk(&e.path(), &key)?;
                } else if ft.is_file() {
                    if is_staged_upload(name) {
                        continue;
                    }
                    if let Err(why) = object_store::path::Path::parse(&key) {
                        report_bad_key(&key, &super::path_error_reason(&why));
                        continue;
                    }
                    match e.metadata() {
                        Ok(m) => self.push(info(&key, &m))?,
                        // Deleted since read_dir: not an object any more.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => return Err(self.fail(err(source))),
                    }
                } else {
                    tracing::warn!(
                        key = %printable(&key),
                        "skipping a special file (not a regular file) in the file:// bucket"
                    );
                }
            }
            Ok(())
        }
    }

    fn path_key(root: &Path, p: &Path) -> String {
        p.strip_prefix(root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }

    fn report_symlink(key: &str) {
        tracing::warn!(
            key = %printable(key),
            "skipping a symlink in the file:// bucket: symlinks are never followed"
        );
    }
}

/// Minimal `user.tablesnap.*` extended attributes through libc.
mod xattr {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn cstrings(path: &Path, name: &str) -> std::io::Result<(CString, CString)> {
        let p = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let n = CString::new(format!("user.tablesnap.{name}"))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok((p, n))
    }

    pub fn set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
        let (p, n) = cstrings(path, name)?;
        // SAFETY: valid NUL-terminated strings and a valid buffer of the given length.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Reads an attribute of an open file (no path lookup, so no symlink to follow).
    pub fn fget(file: &std::fs::File, name: &str) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let n = CString::new(format!("user.tablesnap.{name}")).ok()?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid fd, NUL-terminated name and a writable buffer of the given length.
        let r = unsafe {
            libc::fgetxattr(
                file.as_raw_fd(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if r < 0 {
            return None;
        }
        buf.truncate(r as usize);
        Some(buf)
    }

    pub fn get(path: &Path, name: &str) -> Option<Vec<u8>> {
        let (p, n) = cstrings(path, name).ok()?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid NUL-terminated strings and a writable buffer of the given length.
        let r =
            unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            return None;
        }
        buf.truncate(r as usize);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_like_the_original_and_as_urls() {
        assert_eq!(
            Destination::parse("my-bucket").unwrap(),
            Destination::S3 {
                bucket: "my-bucket".into()
            }
        );
        assert_eq!(
            Destination::parse("s3://b").unwrap(),
            Destination::S3 { bucket: "b".into() }
        );
        assert_eq!(
            Destination::parse("gs://b/").unwrap(),
            Destination::Gcs { bucket: "b".into() }
        );
        assert_eq!(
            Destination::parse("az://c").unwrap(),
            Destination::Azure {
                container: "c".into()
            }
        );
        assert_eq!(
            Destination::parse("file:///tmp/x").unwrap(),
            Destination::Local {
                root: "/tmp/x".into()
            }
        );
        for bad in [
            "",
            "ftp://x",
            "s3://",
            "s3://b/some/prefix",
            "file://rel",
            "a/b",
        ] {
            let e = Destination::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid destination"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_that_object_store_would_rewrite_are_refused() {
        assert!(Store::path("host:/var/lib/cassandra/data/ks/t-1/nb-1-big-Data.db").is_ok());
        assert!(Store::path("/leading").is_err());
        assert!(Store::path("a//b").is_err());
        assert!(Store::path("a/../b").is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let o = StoreOptions {
            destination: "b".into(),
            access_key: Some("AKIDSECRETVALUE".into()),
            secret_key: Some("s3cr3t-value".into()),
            token: Some("tok-value".into()),
            ..Default::default()
        };
        let d = format!("{o:?}");
        assert!(
            !d.contains("AKIDSECRETVALUE") && !d.contains("s3cr3t") && !d.contains("tok-value")
        );
    }

    #[test]
    fn gcs_base_url_comes_from_the_config_or_the_service_account() {
        use object_store::gcp::GoogleConfigKey as K;
        let sa = r#"{"gcs_base_url": "http://127.0.0.1:4443", "disable_oauth": true,
            "client_email": "", "private_key": "", "private_key_id": ""}"#;
        let b = GoogleCloudStorageBuilder::new().with_config(K::ServiceAccountKey, sa);
        assert_eq!(gcs_base_url(&b).as_deref(), Some("http://127.0.0.1:4443"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sa.json");
        std::fs::write(&f, sa).unwrap();
        let b =
            GoogleCloudStorageBuilder::new().with_config(K::ServiceAccount, f.to_str().unwrap());
        assert_eq!(gcs_base_url(&b).as_deref(), Some("http://127.0.0.1:4443"));
        let b = b.with_base_url("https://gcs.example");
        assert_eq!(gcs_base_url(&b).as_deref(), Some("https://gcs.example"));
        assert_eq!(gcs_base_url(&GoogleCloudStorageBuilder::new()), None);
    }
}
