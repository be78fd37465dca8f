//! The few S3 calls `object_store` cannot make, for Object Lock and versioned buckets
//! (issue #17): the bucket's lock configuration, an object version's retention (read and
//! set), the version listing, and deletes of given versions.
//!
//! Each is one request signed with object_store's own SigV4 ([`AwsAuthorizer`]) with the
//! credentials of the S3 client it sits beside (the same chain: keys, profiles, web
//! identity, instance role), sent on an HTTP client built from the same options. That is the
//! smallest well-kept way to add them: no second AWS stack, no signing code of our own.
//! Transient failures (connection errors, 5xx, throttling) are retried a few times.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use md5::{Digest, Md5};
use object_store::ClientOptions;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, ReqwestConnector};
use serde::Deserialize;

use super::StoreError;

/// GOVERNANCE (an account with `s3:BypassGovernanceRetention` may shorten or delete) or
/// COMPLIANCE (nobody may, not even the root account, until the date).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "GOVERNANCE" => Some(LockMode::Governance),
            "COMPLIANCE" => Some(LockMode::Compliance),
            _ => None,
        }
    }
}

/// One version (or delete marker) of a key, as ListObjectVersions gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    pub last_modified: DateTime<Utc>,
    pub size: u64,
    pub is_latest: bool,
    pub delete_marker: bool,
}

/// One page of ListObjectVersions.
#[derive(Debug, Default)]
pub struct VersionPage {
    pub versions: Vec<ObjectVersion>,
    pub prefixes: Vec<String>,
    /// Where the next page starts (key marker, version marker), if the listing goes on.
    pub next: Option<(String, String)>,
}

/// What a delete of one version came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionDeleted {
    Deleted,
    /// Refused by its retention or legal hold (AccessDenied on a locked bucket).
    Locked,
    Failed(String),
}

/// Signed S3 requests on one bucket.
pub struct S3Api {
    /// Built on the first request (a client parses the CA bundle): a run that makes none of
    /// these calls never pays for it.
    http: std::sync::OnceLock<HttpClient>,
    options: ClientOptions,
    credentials: AwsCredentialProvider,
    /// `http://host:port/bucket` (path style) or `https://bucket.s3.region.amazonaws.com`.
    base: String,
    region: String,
    sign_payload: bool,
    dest: String,
}

impl std::fmt::Debug for S3Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Api({})", self.base)
    }
}

/// An S3 error answer.
#[derive(Debug, Deserialize, Default)]
#[serde(rename = "Error")]
struct ErrorBody {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

impl S3Api {
    pub(super) fn new(
        options: &ClientOptions,
        credentials: AwsCredentialProvider,
        endpoint: Option<&str>,
        bucket: &str,
        region: &str,
        dest: String,
    ) -> Self {
        let base = match endpoint {
            Some(e) => format!("{}/{}", e.trim_end_matches('/'), encode_key(bucket)),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        let sign_payload = base.starts_with("http://");
        S3Api {
            http: std::sync::OnceLock::new(),
            options: options.clone(),
            credentials,
            base,
            region: region.to_string(),
            sign_payload,
            dest,
        }
    }

    fn http(&self) -> Result<&HttpClient, StoreError> {
        if let Some(h) = self.http.get() {
            return Ok(h);
        }
        let h = ReqwestConnector::default()
            .connect(&self.options)
            .map_err(|source| StoreError::Build {
                dest: self.dest.clone(),
                source,
            })?;
        Ok(self.http.get_or_init(|| h))
    }

    /// Whether the bucket has Object Lock enabled (GetObjectLockConfiguration).
    pub async fn object_lock_enabled(&self) -> Result<bool, StoreError> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(rename = "ObjectLockEnabled", default)]
            enabled: String,
        }
        let r = self
            .send(
                "read the Object Lock configuration of",
                Method::GET,
                None,
                &[("object-lock", "")],
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        match r {
            Ok((_, body)) => {
                let c: Config = parse_xml(&body, "GetObjectLockConfiguration", &self.dest)?;
                Ok(c.enabled == "Enabled")
            }
            Err(StoreError::S3 {
                status: 404, code, ..
            }) if code == "ObjectLockConfigurationNotFoundError" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the bucket keeps versions (Enabled or Suspended: either way a DELETE without
    /// a version id only adds a marker). A server without the call (Garage) keeps none.
    pub async fn versioning(&self) -> Result<bool, StoreError> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(rename = "Status", default)]
            status: String,
        }
        let r = self
            .send(
                "read the versioning of",
                Method::GET,
                None,
                &[("versioning", "")],
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        match r {
            Ok((_, body)) => {
                let c: Config = parse_xml(&body, "GetBucketVersioning", &self.dest)?;
                Ok(c.status == "Enabled" || c.status == "Suspended")
            }
            Err(StoreError::S3 { status, .. })
                if status == 501 || status == 400 || status == 405 =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the retention of `key` (its version `version`, else the current one) to `mode`
    /// until `until`. A date earlier than the one it has is refused by the server.
    pub async fn put_retention(
        &self,
        key: &str,
        version: Option<&str>,
        mode: LockMode,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.as_str(),
            until.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        let mut q = vec![("retention", "")];
        if let Some(v) = version {
            q.push(("versionId", v));
        }
        let mut h = HeaderMap::new();
        h.insert("content-md5", content_md5(body.as_bytes()));
        h.insert("content-type", HeaderValue::from_static("application/xml"));
        self.send(
            "set the retention of",
            Method::PUT,
            Some(key),
            &q,
            h,
            Bytes::from(body),
        )
        .await
        .map(|_| ())
    }

    /// The retention of `key` (a version, else the current one): None if it has none.
    pub async fn get_retention(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<(LockMode, DateTime<Utc>)>, StoreError> {
        #[derive(Deserialize)]
        struct Retention {
            #[serde(rename = "Mode", default)]
            mode: String,
            #[serde(rename = "RetainUntilDate", default)]
            until: String,
        }
        let mut q = vec![("retention", "")];
        if let Some(v) = version {
            q.push(("versionId", v));
        }
        let r = self
            .send(
                "read the retention of",
                Method::GET,
                Some(key),
                &q,
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        let body = match r {
            Ok((_, b)) => b,
            Err(StoreError::S3 {
                status: 404, code, ..
            }) if code == "NoSuchObjectLockConfiguration" => {
                return Ok(None);
            }
            // Ceph answers a version without retention with an empty 400/404 of its own.
            Err(StoreError::S3 { status, code, .. })
                if (status == 400 || status == 404) && code == "InvalidRequest" =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let r: Retention = parse_xml(&body, key, &self.dest)?;
        let (Some(mode), Ok(until)) = (
            LockMode::parse(&r.mode),
            DateTime::parse_from_rfc3339(&r.until),
        ) else {
            return Ok(None);
        };
        Ok(Some((mode, until.with_timezone(&Utc))))
    }

    /// One page of the versions (and delete markers) of keys under `prefix`, from `from`
    /// (a previous page's `next`); with `delimiter`, the common prefixes too.
    pub async fn list_versions(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        from: Option<&(String, String)>,
    ) -> Result<VersionPage, StoreError> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Key")]
            key: String,
            #[serde(rename = "VersionId", default)]
            version_id: String,
            #[serde(rename = "IsLatest", default)]
            is_latest: bool,
            #[serde(rename = "LastModified")]
            last_modified: String,
            #[serde(rename = "Size", default)]
            size: u64,
        }
        #[derive(Deserialize)]
        struct Prefix {
            #[serde(rename = "Prefix")]
            prefix: String,
        }
        #[derive(Deserialize)]
        struct Result {
            #[serde(rename = "Version", default)]
            versions: Vec<Entry>,
            #[serde(rename = "DeleteMarker", default)]
            markers: Vec<Entry>,
            #[serde(rename = "CommonPrefixes", default)]
            prefixes: Vec<Prefix>,
            #[serde(rename = "IsTruncated", default)]
            truncated: bool,
            #[serde(rename = "NextKeyMarker", default)]
            next_key: Option<String>,
            #[serde(rename = "NextVersionIdMarker", default)]
            next_version: Option<String>,
        }
        let mut q = vec![("versions", ""), ("prefix", prefix)];
        if let Some(d) = delimiter {
            q.push(("delimiter", d));
        }
        if let Some((k, v)) = from {
            q.push(("key-marker", k.as_str()));
            if !v.is_empty() {
                q.push(("version-id-marker", v.as_str()));
            }
        }
        let (_, body) = self
            .send(
                "list the versions under",
                Method::GET,
                None,
                &q,
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
            .map_err(|e| e.with_key(prefix))?;
        let r: Result = parse_xml(&body, prefix, &self.dest)?;
        let time = |s: &str| -> std::result::Result<DateTime<Utc>, StoreError> {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| StoreError::Answer {
                    op: "list the versions under",
                    key: prefix.to_string(),
                    reason: format!("LastModified {s:?}: {e}"),
                })
        };
        let mut versions = Vec::with_capacity(r.versions.len() + r.markers.len());
        for (list, marker) in [(r.versions, false), (r.markers, true)] {
            for e in list {
                versions.push(ObjectVersion {
                    last_modified: time(&e.last_modified)?,
                    key: e.key,
                    version_id: e.version_id,
                    size: if marker { 0 } else { e.size },
                    is_latest: e.is_latest,
                    delete_marker: marker,
                });
            }
        }
        // Listed in key order, newest version first within a key.
        versions.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.last_modified.cmp(&a.last_modified))
        });
        let next = match (r.truncated, r.next_key) {
            (true, Some(k)) => Some((k, r.next_version.unwrap_or_default())),
            (true, None) => {
                return Err(StoreError::Answer {
                    op: "list the versions under",
                    key: prefix.to_string(),
                    reason: "a truncated page without NextKeyMarker".into(),
                });
            }
            _ => None,
        };
        Ok(VersionPage {
            versions,
            prefixes: r.prefixes.into_iter().map(|p| p.prefix).collect(),
            next,
        })
    }

    /// Every version under `prefix` (with a delimiter, only those not below it), page by page.
    pub async fn list_all_versions(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<Vec<ObjectVersion>, StoreError> {
        let mut out = Vec::new();
        let mut from = None;
        loop {
            let page = self.list_versions(prefix, delimiter, from.as_ref()).await?;
            out.extend(page.versions);
            match page.next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        out.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.last_modified.cmp(&a.last_modified))
        });
        Ok(out)
    }

    /// Deletes the given versions (DeleteObjects, up to 1000 a request), without bypassing
    /// any retention: a locked version is refused, and said so.
    pub async fn delete_versions(
        &self,
        versions: &[(String, String)],
    ) -> Result<Vec<VersionDeleted>, StoreError> {
        #[derive(Deserialize)]
        struct Failed {
            #[serde(rename = "Key", default)]
            key: String,
            #[serde(rename = "VersionId", default)]
            version_id: String,
            #[serde(rename = "Code", default)]
            code: String,
            #[serde(rename = "Message", default)]
            message: String,
        }
        #[derive(Deserialize)]
        struct Result {
            #[serde(rename = "Error", default)]
            errors: Vec<Failed>,
        }
        let mut out = Vec::with_capacity(versions.len());
        for batch in versions.chunks(1000) {
            let mut body = String::from("<Delete><Quiet>true</Quiet>");
            for (k, v) in batch {
                body.push_str("<Object><Key>");
                body.push_str(&quick_xml::escape::escape(k.as_str()));
                body.push_str("</Key><VersionId>");
                body.push_str(&quick_xml::escape::escape(v.as_str()));
                body.push_str("</VersionId></Object>");
            }
            body.push_str("</Delete>");
            let mut h = HeaderMap::new();
            h.insert("content-md5", content_md5(body.as_bytes()));
            h.insert("content-type", HeaderValue::from_static("application/xml"));
            let (_, answer) = self
                .send(
                    "delete versions in",
                    Method::POST,
                    None,
                    &[("delete", "")],
                    h,
                    Bytes::from(body),
                )
                .await?;
            let r: Result = parse_xml(&answer, "DeleteObjects", &self.dest)?;
            let mut failed = std::collections::HashMap::new();
            for e in r.errors {
                let what = if e.code == "AccessDenied" {
                    VersionDeleted::Locked
                } else if e.code == "NoSuchVersion" || e.code == "NoSuchKey" {
                    VersionDeleted::Deleted
                } else {
                    VersionDeleted::Failed(format!("{}: {}", e.code, e.message))
                };
                failed.insert((e.key, e.version_id), what);
            }
            for kv in batch {
                out.push(failed.remove(kv).unwrap_or(VersionDeleted::Deleted));
            }
        }
        Ok(out)
    }

    /// One signed request, retried on transient failures. Answers the status and body of a
    /// 2xx; anything else is [`StoreError::S3`] with the S3 error code.
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), StoreError> {
        let mut url = self.base.clone();
        if let Some(k) = key {
            url.push('/');
            url.push_str(&encode_key(k));
        } else {
            url.push('/');
        }
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&encode_query(k));
            url.push('=');
            url.push_str(&encode_query(v));
        }
        let what = key.unwrap_or(&self.dest).to_string();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let credential =
                self.credentials
                    .get_credential()
                    .await
                    .map_err(|source| StoreError::Op {
                        op,
                        key: what.clone(),
                        source,
                    })?;
            let mut req: HttpRequest = http::Request::builder()
                .method(method.clone())
                .uri(&url)
                .body(body.clone().into())
                .map_err(|e| StoreError::Answer {
                    op,
                    key: what.clone(),
                    reason: format!("cannot build the request: {e}"),
                })?;
            req.headers_mut().extend(headers.clone());
            AwsAuthorizer::new(&credential, "s3", &self.region)
                .with_sign_payload(self.sign_payload)
                .try_authorize(&mut req, None)
                .map_err(|source| StoreError::Op {
                    op,
                    key: what.clone(),
                    source,
                })?;
            let transient = match self.http()?.execute(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.into_body().bytes().await;
                    match bytes {
                        Ok(b) if status.is_success() => return Ok((status, b)),
                        Ok(b) => {
                            let e: ErrorBody =
                                quick_xml::de::from_reader(&b[..]).unwrap_or_default();
                            let err = StoreError::S3 {
                                op,
                                key: what.clone(),
                                status: status.as_u16(),
                                code: if e.code.is_empty() {
                                    status.canonical_reason().unwrap_or("").replace(' ', "")
                                } else {
                                    e.code
                                },
                                message: e.message,
                            };
                            if !(status.is_server_error() || status.as_u16() == 429) {
                                return Err(err);
                            }
                            err
                        }
                        Err(e) => StoreError::Answer {
                            op,
                            key: what.clone(),
                            reason: format!("reading the answer: {e}"),
                        },
                    }
                }
                Err(e) => StoreError::Answer {
                    op,
                    key: what.clone(),
                    reason: format!("request failed: {e}"),
                },
            };
            if attempt >= 5 {
                return Err(transient);
            }
            tracing::debug!("{transient}; retrying");
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }
}

fn content_md5(body: &[u8]) -> HeaderValue {
    use base64::Engine;
    let s = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body));
    HeaderValue::from_str(&s).expect("base64 is a valid header value")
}

fn parse_xml<T: serde::de::DeserializeOwned>(
    body: &[u8],
    key: &str,
    dest: &str,
) -> Result<T, StoreError> {
    quick_xml::de::from_reader(body).map_err(|e| StoreError::Answer {
        op: "parse the answer for",
        key: format!("{key} ({dest})"),
        reason: e.to_string(),
    })
}

/// A key as SigV4 wants it in the path: every byte but the unreserved ones and `/`
/// percent-encoded.
fn encode_key(k: &str) -> String {
    encode(k, true)
}

fn encode_query(k: &str) -> String {
    encode(k, false)
}

fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_sigv4_canonicalizes_them() {
        assert_eq!(
            encode_key("h:/var/lib/a b+c=d"),
            "h%3A/var/lib/a%20b%2Bc%3Dd"
        );
        assert_eq!(encode_query("h:/x"), "h%3A%2Fx");
        assert_eq!(
            encode_key("ks/t-1/nb-1-big-Data.db"),
            "ks/t-1/nb-1-big-Data.db"
        );
    }

    #[test]
    fn lock_modes_parse_either_case() {
        assert_eq!(LockMode::parse("governance"), Some(LockMode::Governance));
        assert_eq!(LockMode::parse("COMPLIANCE"), Some(LockMode::Compliance));
        assert_eq!(LockMode::parse("legal"), None);
    }
}
