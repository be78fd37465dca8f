//! Typed errors of the store, each naming the key or destination, and how a long-running
//! process should treat each (gone, denied, transient, other), including the one line for
//! "no credentials anywhere in the chain".

use crate::credentials::MetadataFallback;

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
    #[error(
        "bucket missing: {dest} does not exist (check the path; for file://, create the directory or mount the volume it is on)"
    )]
    BucketMissing { dest: String },
    #[error(
        "{op} {}: a symlink in the file:// bucket, not followed (only plain files and directories are objects)",
        crate::layout::printable(.key)
    )]
    Symlink { op: &'static str, key: String },
    #[error("{key}: larger than {limit} bytes, not read")]
    TooLarge { key: String, limit: u64 },
    /// An S3 request of our own ([`super::s3api`]) answered an error.
    #[error("{op} {key}: {status} {code}{}", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    S3 {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    /// An S3 request of our own failed without an answer, or with one that does not parse.
    #[error("{op} {key}: {reason}")]
    Answer {
        op: &'static str,
        key: String,
        reason: String,
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

    /// The same error naming `key` (a listing names its prefix, not the bucket).
    pub fn with_key(self, key: &str) -> Self {
        match self {
            StoreError::S3 {
                op,
                status,
                code,
                message,
                ..
            } => StoreError::S3 {
                op,
                key: key.to_string(),
                status,
                code,
                message,
            },
            e => e,
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
            StoreError::S3 { status, .. } => match status {
                404 => ErrorKind::NotFound,
                401 | 403 => ErrorKind::Denied,
                429 | 500.. => ErrorKind::Transient,
                _ => ErrorKind::Other,
            },
            StoreError::Answer { .. } => ErrorKind::Transient,
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

/// The error for a failed operation: [`StoreError::NoCredentials`] when it failed because the
/// metadata service, the last link of the chain, gave no credentials; else the plain one.
pub(super) fn no_credentials(
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
