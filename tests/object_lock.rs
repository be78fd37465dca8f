//! Immutable restore points (issue #17) through the three binaries, on a real Ceph RADOS
//! Gateway with Object Lock (`scripts/ceph-s3.sh`, started by `scripts/test.sh`). What the
//! bucket holds is read with the stock `aws` CLI, never through tablesnap.
//!
//! One node's life: a table backed up, compacted (its old generation no longer named), a
//! snapshot of it (links copied in the store), a multipart `Data.db`. Checked: every stored
//! version is locked GOVERNANCE until at least now + N days; a delete of a locked version
//! with the node's credentials is refused; a lock shortened (with the governance bypass,
//! standing in for time passing) is extended again by a `-B` restart while an index names
//! its object, and not when none does; tablechop deletes versions whose lock expired and
//! skips locked ones (its dry run says both); the ransomware drill: every object deleted
//! with the node's credentials, one index overwritten, then `tableslurp -r --bucket-as-of`
//! a time before restores the node byte-identical; a bucket without Object Lock is refused.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tablesnap::layout::Layout;

const SNAP: &str = env!("CARGO_BIN_EXE_tablesnap");
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const CHOP: &str = env!("CARGO_BIN_EXE_tablechop");
const BAR: &str = "hello/bar-fee8cdb0d7e311ebab539116fc548b6b";
const IOT: &str = "baselines/iot-5b608090e03d11ebb4c1d335f841c590";
const DAYS: i64 = 3;

struct Ceph {
    endpoint: String,
    access_key: String,
    secret_key: String,
    bucket: String,
    lock_bucket: String,
}

fn ceph() -> Option<Ceph> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let Some(endpoint) = var("TABLESNAP_TEST_CEPH_ENDPOINT") else {
        if common::backend::required() {
            panic!(
                "TABLESNAP_TEST_CEPH_ENDPOINT is not set and CI requires Ceph RGW: run the tests with `bash scripts/test.sh` (it starts scripts/ceph-s3.sh)"
            );
        }
        eprintln!("skipping the Object Lock tests: no Ceph RGW (run `bash scripts/test.sh`)");
        return None;
    };
    Some(Ceph {
        endpoint,
        access_key: var("TABLESNAP_TEST_CEPH_ACCESS_KEY").unwrap(),
        secret_key: var("TABLESNAP_TEST_CEPH_SECRET_KEY").unwrap(),
        bucket: var("TABLESNAP_TEST_CEPH_BUCKET").unwrap(),
        lock_bucket: var("TABLESNAP_TEST_CEPH_LOCK_BUCKET").unwrap(),
    })
}

impl Ceph {
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("NO_PROXY", "127.0.0.1"),
            ("RUST_LOG", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The stock aws CLI on the lock bucket: its JSON answer, or Err with its stderr.
    fn aws(&self, args: &[&str]) -> Result<Value, String> {
        let out = std::process::Command::new("aws")
            .arg("--endpoint-url")
            .arg(&self.endpoint)
            .args(["--output", "json"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .envs(self.env())
            .output()
            .expect("the aws CLI (pip install awscli; .ci/run installs it)");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        })
    }

    /// Every version and delete marker under `prefix`: (key, version id, is a marker).
    fn versions(&self, prefix: &str) -> Vec<(String, String, bool)> {
        let v = self
            .aws(&[
                "s3api",
                "list-object-versions",
                "--bucket",
                &self.lock_bucket,
                "--prefix",
                prefix,
            ])
            .unwrap();
        let mut out = Vec::new();
        for (field, marker) in [("Versions", false), ("DeleteMarkers", true)] {
            for e in v[field].as_array().into_iter().flatten() {
                out.push((
                    e["Key"].as_str().unwrap().to_string(),
                    e["VersionId"].as_str().unwrap().to_string(),
                    marker,
                ));
            }
        }
        out.sort();
        out
    }

    /// The retention of one version: (mode, retain-until).
    fn retention(&self, key: &str, version: &str) -> Option<(String, DateTime<Utc>)> {
        // `--version-id=V`: a Ceph version id may begin with '-', which the CLI would take
        // for an option.
        let v = self
            .aws(&[
                "s3api",
                "get-object-retention",
                "--bucket",
                &self.lock_bucket,
                "--key",
                key,
                &format!("--version-id={version}"),
            ])
            .inspect_err(|e| eprintln!("get-object-retention {key} ({version}): {e}"))
            .ok()?;
        let r = &v["Retention"];
        Some((
            r["Mode"].as_str()?.to_string(),
            DateTime::parse_from_rfc3339(r["RetainUntilDate"].as_str()?)
                .ok()?
                .with_timezone(&Utc),
        ))
    }

    /// Shortens a version's lock with the governance bypass (time passing, in a test).
    fn shorten(&self, key: &str, version: &str, until: DateTime<Utc>) {
        let body = format!(
            "{{\"Mode\":\"GOVERNANCE\",\"RetainUntilDate\":\"{}\"}}",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        self.aws(&[
            "s3api",
            "put-object-retention",
            "--bucket",
            &self.lock_bucket,
            "--key",
            key,
            &format!("--version-id={version}"),
            "--bypass-governance-retention",
            "--retention",
            &body,
        ])
        .unwrap_or_else(|e| panic!("shorten the lock of {key}: {e}"));
    }
}

fn run(bin: &str, args: &[&str], c: &Ceph) -> (i32, String) {
    common::run_bin(bin, args, &c.env())
}

fn copy_gen(rel: &str, generation: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(common::sample_sstables().join(rel)).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().into_string().unwrap();
        if n.starts_with(&format!("md-{generation}-")) {
            std::fs::copy(e.path(), to.join(&n)).unwrap();
        }
    }
}

use common::files_with_bytes as tree;

fn unique_host(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

#[test]
fn a_node_life_on_a_locked_bucket() {
    let Some(c) = ceph() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let bar = data.join(BAR);
    copy_gen(BAR, "1", &bar);
    copy_gen(IOT, "2", &data.join(IOT));
    let host = unique_host("lock");
    let layout = Layout::new(String::new(), host.clone(), ":");
    let dest = format!("s3://{}", c.lock_bucket);
    let dpath = data.to_str().unwrap().to_string();
    let days = DAYS.to_string();
    let snap_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--once",
            "-B",
            "-r",
            "-n",
            &host,
            "--object-lock-days",
            &days,
            "--listen-events",
            "IN_MOVED_TO,IN_CLOSE_WRITE,IN_CREATE",
            "--max-upload-size",
            "1",
            "--multipart-chunk-size",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(dest.clone());
        v.push(dpath.clone());
        v
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    // 1. A backfill, then a compaction (generation 2 replaces 1) and a snapshot of it.
    let a1 = snap_args(&[]);
    let (code, out) = run(SNAP, &args(&a1), &c);
    assert_eq!(code, 0, "first backfill: {out}");
    copy_gen(BAR, "2", &bar);
    for e in std::fs::read_dir(&bar).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("md-1-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let snapdir = bar.join("snapshots/s1");
    std::fs::create_dir_all(&snapdir).unwrap();
    for e in std::fs::read_dir(&bar).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::hard_link(&p, snapdir.join(p.file_name().unwrap())).unwrap();
        }
    }
    let (code, out) = run(SNAP, &args(&a1), &c);
    assert_eq!(code, 0, "after the compaction: {out}");
    assert!(out.contains("hard links copied"), "{out}");

    // 2. Every version stored is locked GOVERNANCE until at least now + N days (a minute
    // of slack for the runs above), indexes, the multipart Data.db and the copies included.
    let prefix = format!("{host}:");
    let versions = c.versions(&prefix);
    let floor = Utc::now() + chrono::Duration::days(DAYS) - chrono::Duration::minutes(2);
    let gen1_data = layout.data_key(bar.join("md-1-big-Data.db").to_str().unwrap());
    let gen2_data = layout.data_key(bar.join("md-2-big-Data.db").to_str().unwrap());
    let iot_data = layout.data_key(data.join(IOT).join("md-2-big-Data.db").to_str().unwrap());
    let snap_data = layout.data_key(snapdir.join("md-2-big-Data.db").to_str().unwrap());
    let keys: std::collections::BTreeSet<&str> =
        versions.iter().map(|(k, _, _)| k.as_str()).collect();
    for k in [&gen1_data, &gen2_data, &iot_data, &snap_data] {
        assert!(keys.contains(k.as_str()), "{k} not stored: {keys:?}");
    }
    assert!(
        keys.iter().any(|k| k.ends_with("-listdir.json")),
        "{keys:?}"
    );
    // (Eight aws processes at a time: each takes about a second to start.)
    std::thread::scope(|sc| {
        for chunk in versions.chunks(versions.len().div_ceil(8)) {
            let c = &c;
            sc.spawn(move || {
                for (k, v, marker) in chunk {
                    assert!(!marker, "{k}: a delete marker after a backup");
                    let (mode, until) = c
                        .retention(k, v)
                        .unwrap_or_else(|| panic!("{k} ({v}) has no retention"));
                    assert_eq!(mode, "GOVERNANCE", "{k}");
                    assert!(until >= floor, "{k}: locked only until {until}");
                }
            });
        }
    });
    let version_of = |key: &str| -> String {
        versions
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.clone())
            .unwrap()
    };

    // 3. A delete of a locked version with the node's own credentials is refused.
    let refused = c.aws(&[
        "s3api",
        "delete-object",
        "--bucket",
        &c.lock_bucket,
        "--key",
        &gen2_data,
        &format!("--version-id={}", version_of(&gen2_data)),
    ]);
    let e = refused.expect_err("a locked version was deleted");
    assert!(e.contains("AccessDenied"), "{e}");

    // 4. Time passes (the locks shortened with the bypass): a -B restart extends what the
    // newest index names, and not generation 1, which no index names any more.
    let soon = Utc::now() + chrono::Duration::hours(1);
    c.shorten(&gen2_data, &version_of(&gen2_data), soon);
    c.shorten(&gen1_data, &version_of(&gen1_data), soon);
    let (code, out) = run(SNAP, &args(&a1), &c);
    assert_eq!(code, 0, "restart: {out}");
    // Only what needed it: one object had less than N/2 days left.
    assert!(out.contains("extended=1 "), "{out}");
    let (_, g2) = c.retention(&gen2_data, &version_of(&gen2_data)).unwrap();
    assert!(
        g2 >= Utc::now() + chrono::Duration::days(DAYS) - chrono::Duration::minutes(2),
        "named by the newest index, locked only until {g2}: {out}"
    );
    let (_, g1) = c.retention(&gen1_data, &version_of(&gen1_data)).unwrap();
    assert!(
        g1 < Utc::now() + chrono::Duration::hours(2),
        "named by no current index, but extended to {g1}"
    );

    // 5. tablechop: generation 1 is unnamed; its Data.db lock runs out, its other
    // components stay locked. The dry run says so, the run deletes the expired version and
    // skips the locked ones.
    let gen1_index = layout.data_key(bar.join("md-1-big-Index.db").to_str().unwrap());
    c.shorten(
        &gen1_data,
        &version_of(&gen1_data),
        Utc::now() + chrono::Duration::seconds(3),
    );
    std::thread::sleep(Duration::from_secs(4));
    let bar_path = bar.to_str().unwrap();
    let (code, out) = run(CHOP, &["--dry-run", "-n", &host, &dest, bar_path, "0"], &c);
    assert_eq!(code, 0, "dry run: {out}");
    assert!(out.contains("versions still locked"), "{out}");
    assert!(
        c.versions(&gen1_data)
            .iter()
            .any(|(k, _, _)| *k == gen1_data),
        "the dry run deleted"
    );
    let (code, out) = run(CHOP, &["-n", &host, &dest, bar_path, "0"], &c);
    assert_eq!(code, 0, "tablechop: {out}");
    assert!(
        !c.versions(&gen1_data)
            .iter()
            .any(|(k, _, _)| *k == gen1_data),
        "the expired version (and any marker) is gone: {out}"
    );
    assert!(
        c.versions(&gen1_index)
            .iter()
            .any(|(k, _, m)| *k == gen1_index && !m),
        "a locked version was deleted: {out}"
    );
    assert!(out.contains("versions still locked"), "{out}");
    // The newest restore point is untouched.
    assert!(
        c.versions(&gen2_data)
            .iter()
            .any(|(k, _, m)| *k == gen2_data && !m)
    );

    // 6. The ransomware drill: at `before`, the node is backed up; then every object is
    // deleted with the node's credentials (delete markers) and an index overwritten.
    std::thread::sleep(Duration::from_millis(1100));
    let before = Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    let index_key = keys
        .iter()
        .find(|k| k.ends_with("md-2-big-Data.db-listdir.json") && k.contains("bar-"))
        .unwrap()
        .to_string();
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, b"{\"/\": []}").unwrap();
    c.aws(&[
        "s3api",
        "put-object",
        "--bucket",
        &c.lock_bucket,
        "--key",
        &index_key,
        "--body",
        junk.to_str().unwrap(),
    ])
    .unwrap();
    let listed = c.versions(&prefix);
    for (k, _, marker) in &listed {
        if !marker {
            c.aws(&[
                "s3api",
                "delete-object",
                "--bucket",
                &c.lock_bucket,
                "--key",
                k,
            ])
            .unwrap();
        }
    }
    // Nothing is left to a plain restore.
    let target = tmp.path().join("restored-plain");
    let (code, out) = run(
        SLURP,
        &["-r", "-n", &host, &dest, &dpath, target.to_str().unwrap()],
        &c,
    );
    assert!(
        tree(&target).is_empty(),
        "after the attack, a plain restore found: {out} ({code})"
    );

    // Read as it was before: the whole node, byte for byte (tableslurp checks every MD5 and
    // each Data.db against its Digest).
    let when = before.to_rfc3339();
    let (code, out) = run(
        SLURP,
        &["--list", "--bucket-as-of", &when, "-n", &host, &dest],
        &c,
    );
    assert_eq!(code, 0, "--list --bucket-as-of: {out}");
    assert!(out.contains("bar-"), "{out}");
    let target = tmp.path().join("restored");
    let (code, out) = run(
        SLURP,
        &[
            "-r",
            "--bucket-as-of",
            &when,
            "-n",
            &host,
            &dest,
            &dpath,
            target.to_str().unwrap(),
        ],
        &c,
    );
    assert_eq!(code, 0, "restore --bucket-as-of: {out}");
    let want: BTreeMap<PathBuf, Vec<u8>> = tree(&data)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(Path::new(BAR).join("snapshots")))
        .collect();
    let got = tree(&target);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{out}"
    );
    for (p, bytes) in &want {
        assert!(
            got[p] == *bytes,
            "{} differs after the restore",
            p.display()
        );
    }
    let (code, out) = run(
        SLURP,
        &[
            "--verify",
            "-r",
            "--bucket-as-of",
            &when,
            "-n",
            &host,
            &dest,
            &dpath,
        ],
        &c,
    );
    assert_eq!(code, 0, "--verify --bucket-as-of: {out}");
}

#[test]
fn a_bucket_without_object_lock_is_refused_at_start() {
    let Some(c) = ceph() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().to_str().unwrap();
    let plain = format!("s3://{}", c.bucket);
    let (code, out) = run(SNAP, &["--once", "--object-lock-days", "1", &plain, p], &c);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("does not have Object Lock enabled"), "{out}");
    assert_eq!(
        out.trim().lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{out}"
    );
    let local = format!("file://{p}");
    let (code, out) = run(SNAP, &["--once", "--object-lock-days", "1", &local, p], &c);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("needs an S3 destination"), "{out}");
    let (code, out) = run(
        SNAP,
        &[
            "--once",
            "--object-lock-days",
            "1",
            "--object-lock-mode",
            "forever",
            &plain,
            p,
        ],
        &c,
    );
    assert_eq!(code, 2, "{out}");
}
