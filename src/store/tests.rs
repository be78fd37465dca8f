use super::open::gcs_base_url;
use super::*;
use object_store::gcp::GoogleCloudStorageBuilder;

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
    assert!(!d.contains("AKIDSECRETVALUE") && !d.contains("s3cr3t") && !d.contains("tok-value"));
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
    let b = GoogleCloudStorageBuilder::new().with_config(K::ServiceAccount, f.to_str().unwrap());
    assert_eq!(gcs_base_url(&b).as_deref(), Some("http://127.0.0.1:4443"));
    let b = b.with_base_url("https://gcs.example");
    assert_eq!(gcs_base_url(&b).as_deref(), Some("https://gcs.example"));
    assert_eq!(gcs_base_url(&GoogleCloudStorageBuilder::new()), None);
}

/// A `file://` copy is stored now (its LastModified), not at the source's old mtime: a
/// copied snapshot link must not look days old to tablechop before an index names it.
#[tokio::test]
async fn a_local_copy_is_stored_now_not_at_the_sources_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreOptions {
        destination: format!("file://{}", dir.path().display()),
        ..Default::default()
    })
    .unwrap();
    store
        .put(
            "h:/d/a-Data.db",
            Bytes::from_static(b"abc"),
            &PutMeta::default(),
        )
        .await
        .unwrap();
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    std::fs::File::open(dir.path().join("h:/d/a-Data.db"))
        .unwrap()
        .set_modified(day_ago)
        .unwrap();
    store
        .copy("h:/d/a-Data.db", "h:/d/snapshots/t/a-Data.db")
        .await
        .unwrap();
    let info = store
        .head("h:/d/snapshots/t/a-Data.db")
        .await
        .unwrap()
        .unwrap();
    let age = Utc::now() - info.last_modified;
    assert!(
        age.num_seconds() < 60,
        "copy looks {}s old",
        age.num_seconds()
    );
    let body = store.get_bytes("h:/d/snapshots/t/a-Data.db").await.unwrap();
    assert_eq!(&body[..], b"abc");
}
