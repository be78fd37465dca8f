//! The destination as the operator names it (a bare bucket as the original took, or an
//! `s3://`, `gs://`, `az://`, `file://` URL) and the options to reach it, secrets hidden.

use std::path::PathBuf;
use std::time::Duration;

use super::StoreError;

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
    /// Send a SHA-256 checksum (`x-amz-checksum-sha256`) with every PUT and part: S3 requires
    /// one on a bucket with a default Object Lock retention (set with --object-lock-days).
    pub checksum_sha256: bool,
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
            .field("checksum_sha256", &self.checksum_sha256)
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
