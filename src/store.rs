//! Where backups go: parses the destination (a bare S3 bucket name as the original took, or
//! an `s3://`, `gs://`, `az://`, `file://` URL), builds the `object_store` client for it and
//! wraps the few operations the tools need, with typed errors that name the key.
//!
//! The local file store of `object_store` cannot keep user metadata, so for `file://`
//! destinations the `stat`/`md5sum` metadata is kept in extended attributes
//! (`user.tablesnap.*`) of the stored file: the tree under the root is exactly the bucket
//! layout, and restores can still verify MD5s.

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
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorKind::Denied,
                _ => ErrorKind::Transient,
            },
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
    pub fn open(opts: &StoreOptions) -> Result<Self, StoreError> {
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
                let s3 = b.with_client_options(client).build().map_err(build_err)?;
                (Arc::new(s3), None)
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
                std::fs::create_dir_all(root).map_err(|source| StoreError::Local {
                    op: "create destination directory",
                    key: root.display().to_string(),
                    source,
                })?;
                let l = Arc::new(LocalFileSystem::new_with_prefix(root).map_err(build_err)?);
                (l.clone() as Arc<dyn ObjectStore>, Some(l))
            }
        };
        Ok(Self {
            inner,
            local,
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

    /// Every object whose key starts with `dir + "/"`.
    pub fn list_dir(&self, dir: &str) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let dir = dir.trim_end_matches('/');
        let path = match Self::path(dir) {
            Ok(p) => p,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let on_err = self.op_err("list", &format!("{dir}/"));
        let mut on_err = Some(on_err);
        self.inner
            .list(Some(&path))
            .map_ok(|m| ObjectInfo {
                key: m.location.to_string(),
                size: m.size,
                last_modified: m.last_modified,
                e_tag: m.e_tag,
                metadata: HashMap::new(),
            })
            .map_err(move |source| match on_err.take() {
                Some(f) => f(source),
                // A listing ends at its first error; keep a plain one for any later.
                None => StoreError::Op {
                    op: "list",
                    key: String::new(),
                    source,
                },
            })
            .boxed()
    }

    /// Collects `list_dir` into a vector.
    pub async fn list_all(&self, dir: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.list_dir(dir).try_collect().await
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
        self.set_local_meta(key, meta)
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
        self.set_local_meta(key, meta)
    }

    /// A streaming read of an object (or a byte range of it).
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let path = Self::path(key)?;
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
        let r = self
            .inner
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(self.op_err("get", key))?;
        r.bytes().await.map_err(self.op_err("read", key))
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.op_err("delete", key)(e)),
        }
    }

    /// Deletes many keys with the backend's bulk delete (S3 DeleteObjects, 1000 a request).
    /// Returns the keys deleted; stops at the first error.
    pub async fn delete_many(&self, keys: Vec<String>) -> Result<usize, StoreError> {
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
