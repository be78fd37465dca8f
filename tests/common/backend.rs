//! One destination under test for the suites that run on every backend (`backends.rs`,
//! `sealed.rs`): what to give the binaries, and a client of its own (never tablesnap's) to
//! check what they stored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjPath;
use object_store::{Attribute, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt};

use super::WAIT_BACKEND as WAIT;

/// A destination under test: what to give the binaries, and a client of its own to check
/// what they did.
pub struct Backend {
    pub name: &'static str,
    pub dest: String,
    pub env: Vec<(String, String)>,
    pub raw: Arc<dyn ObjectStore>,
    /// Whether the server takes object_store's multipart upload (fake-gcs-server does not).
    pub multipart: bool,
    /// `file://`: the bucket's directory (its metadata is in extended attributes, which
    /// object_store's local client does not read).
    pub root: Option<std::path::PathBuf>,
}

/// In CI a backend that is not there is a failure, not a skip.
pub fn required() -> bool {
    std::env::var_os("TABLESNAP_REQUIRE_BACKENDS").is_some_and(|v| !v.is_empty())
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

fn var(name: &str, backend: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if required() => panic!(
            "{name} is not set and TABLESNAP_REQUIRE_BACKENDS/CI requires the {backend} test server: run the tests with `bash scripts/test.sh` (it starts it with scripts/emulators.sh)"
        ),
        _ => {
            eprintln!(
                "skipping the {backend} run: {name} is not set (run `bash scripts/test.sh`, which starts it)"
            );
            None
        }
    }
}

pub fn s3() -> Backend {
    let s3 = super::s3();
    Backend {
        name: "s3",
        dest: s3.dest(),
        env: s3.cli_env(),
        raw: s3.raw(),
        multipart: true,
        root: None,
    }
}

/// The third real S3: Ceph RADOS Gateway (`scripts/ceph-s3.sh`), its plain bucket.
pub fn ceph() -> Option<Backend> {
    let what = "S3 (Ceph RGW)";
    let endpoint = var("TABLESNAP_TEST_CEPH_ENDPOINT", what)?;
    let access_key = var("TABLESNAP_TEST_CEPH_ACCESS_KEY", what)?;
    let secret_key = var("TABLESNAP_TEST_CEPH_SECRET_KEY", what)?;
    let bucket = var("TABLESNAP_TEST_CEPH_BUCKET", what)?;
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(&endpoint)
        .with_access_key_id(&access_key)
        .with_secret_access_key(&secret_key)
        .with_region("us-east-1")
        .with_virtual_hosted_style_request(false)
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .build()
        .expect("raw Ceph client");
    Some(Backend {
        name: "ceph",
        dest: format!("s3://{bucket}"),
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), access_key),
            ("AWS_SECRET_ACCESS_KEY".into(), secret_key),
            ("AWS_ENDPOINT_URL".into(), endpoint),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ],
        raw: Arc::new(raw),
        multipart: true,
        root: None,
    })
}

pub fn azure() -> Option<Backend> {
    let url = var("TABLESNAP_TEST_AZURE_URL", "Azure (Azurite)")?;
    let container = var("TABLESNAP_TEST_AZURE_CONTAINER", "Azure (Azurite)")?;
    // object_store finds the emulator through AZURITE_BLOB_STORAGE_URL, here too.
    assert_eq!(
        std::env::var("AZURITE_BLOB_STORAGE_URL").ok().as_deref(),
        Some(url.as_str()),
        "AZURITE_BLOB_STORAGE_URL must name the Azurite of TABLESNAP_TEST_AZURE_URL"
    );
    let raw = MicrosoftAzureBuilder::new()
        .with_use_emulator(true)
        .with_container_name(&container)
        .build()
        .expect("raw Azure client");
    Some(Backend {
        name: "azure",
        dest: format!("az://{container}"),
        env: vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), url),
        ],
        raw: Arc::new(raw),
        multipart: true,
        root: None,
    })
}

pub fn gcs() -> Option<Backend> {
    let sa = var(
        "TABLESNAP_TEST_GCS_SERVICE_ACCOUNT",
        "GCS (fake-gcs-server)",
    )?;
    let bucket = var("TABLESNAP_TEST_GCS_BUCKET", "GCS (fake-gcs-server)")?;
    let raw = GoogleCloudStorageBuilder::new()
        .with_service_account_path(&sa)
        .with_bucket_name(&bucket)
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .build()
        .expect("raw GCS client");
    Some(Backend {
        name: "gcs",
        dest: format!("gs://{bucket}"),
        env: vec![("GOOGLE_SERVICE_ACCOUNT".into(), sa)],
        raw: Arc::new(raw),
        multipart: false,
        root: None,
    })
}

/// A `file://` bucket in `dir`, read back through object_store's own local client.
pub fn local(dir: &std::path::Path) -> Backend {
    std::fs::create_dir_all(dir).unwrap();
    Backend {
        name: "file",
        dest: format!("file://{}", dir.display()),
        env: vec![],
        raw: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap()),
        multipart: true,
        root: Some(dir.to_path_buf()),
    }
}

// ---- the bucket, through the backend's own client ------------------------------------------

pub fn opath(key: &str) -> ObjPath {
    ObjPath::parse(key).unwrap_or_else(|e| panic!("{key:?}: {e}"))
}

impl Backend {
    pub async fn keys(&self, prefix: &str) -> BTreeMap<String, u64> {
        use futures::TryStreamExt;
        let p = opath(prefix.trim_end_matches('/'));
        self.raw
            .list(Some(&p))
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{}: list {prefix}: {e}", self.name))
    }

    pub async fn get(&self, key: &str) -> Vec<u8> {
        let r = self
            .raw
            .get(&opath(key))
            .await
            .unwrap_or_else(|e| panic!("{}: get {key}: {e}", self.name));
        r.bytes().await.unwrap().to_vec()
    }

    /// User metadata and content type of an object (a HEAD), after checking its size.
    pub async fn head(&self, key: &str) -> (BTreeMap<String, String>, Option<String>) {
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let r = self
            .raw
            .get_opts(&opath(key), opts)
            .await
            .unwrap_or_else(|e| panic!("{}: head {key}: {e}", self.name));
        let dir = key.rsplit_once('/').expect("a key under a prefix").0;
        let listed = self.keys(dir).await;
        assert_eq!(
            Some(&r.meta.size),
            listed.get(key),
            "{}: HEAD and LIST sizes of {key}",
            self.name
        );
        let mut meta = BTreeMap::new();
        let mut ct = None;
        if let Some(root) = &self.root {
            for name in tablesnap::layout::META_NAMES {
                if let Some(v) = xattr(&root.join(key), name) {
                    meta.insert(name.to_string(), v);
                }
            }
        }
        for (k, v) in r.attributes.iter() {
            match k {
                Attribute::Metadata(n) => {
                    meta.insert(n.to_string(), v.to_string());
                }
                Attribute::ContentType => ct = Some(v.to_string()),
                _ => {}
            }
        }
        (meta, ct)
    }

    pub async fn wait_for(&self, prefix: &str, want: &BTreeSet<String>) {
        super::wait_until_async(
            WAIT,
            &format!("{} keys on {}", want.len(), self.name),
            || async move {
                let have: BTreeSet<String> = self.keys(prefix).await.into_keys().collect();
                want.is_subset(&have)
            },
        )
        .await;
    }
}

/// A `user.tablesnap.NAME` extended attribute of a `file://` object.
fn xattr(path: &std::path::Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(format!("user.tablesnap.{name}")).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| String::from_utf8_lossy(&buf[..r as usize]).into_owned())
}
