//! Shared by the `faults_*` tests (`mod faults_harness;`): run the daemon in-process, write
//! SSTable-like files the way Cassandra does, and check the invariant of the issue on the
//! bucket itself:
//!
//! > every file that exists locally is in the bucket byte-identical (sha256, and the
//! > `md5sum` metadata matches the bytes), and every `-listdir.json` index names only
//! > objects that exist, with the right size.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use tablesnap::daemon::Config;
use tablesnap::layout::{self, Layout};
use tablesnap::store::StoreOptions;

use crate::common::{self, S3};

pub const HOST: &str = "node1.example.com";
pub const WAIT: Duration = Duration::from_secs(60);

/// Store options pointing at `endpoint` (a proxy), with few client-level retries so faults
/// reach the daemon's own retry logic quickly.
pub fn store_via(s3: &S3, endpoint: &str) -> StoreOptions {
    StoreOptions {
        endpoint: Some(endpoint.to_string()),
        max_retries: Some(2),
        retry_timeout: Some(Duration::from_secs(15)),
        ..s3.store_options()
    }
}

pub fn config(store: StoreOptions, prefix: &str, paths: Vec<PathBuf>) -> Config {
    let mut c = Config::new(store, Layout::new(prefix, HOST, ":"), paths);
    c.index_delay = Duration::from_millis(300);
    c
}

pub fn key(prefix: &str, path: &Path) -> String {
    Layout::new(prefix, HOST, ":").data_key(path.to_str().unwrap())
}

pub fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// Deterministic pseudo-random bytes (different for each seed).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write_file(path: &Path, data: &[u8]) {
    let mut f =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// The components of one SSTable generation, Cassandra 3.0+ style.
pub const COMPONENTS: &[&str] = &[
    "Data.db",
    "Index.db",
    "Filter.db",
    "Summary.db",
    "Statistics.db",
    "CompressionInfo.db",
    "Digest.crc32",
    "TOC.txt",
];

/// A flush (or the output of a compaction): every component of generation `generation` written
/// in place under its final name next to a transaction log that is removed at commit.
/// `data_len` is the size of `Data.db`. Returns the component paths.
pub fn flush(dir: &Path, generation: u32, data_len: usize) -> Vec<PathBuf> {
    let txn = dir.join(format!(
        "nb_txn_flush_{generation:08x}-0000-0000-0000-000000000000.log"
    ));
    write_file(&txn, b"ADD:[...]\n");
    let mut out = Vec::new();
    for (i, c) in COMPONENTS.iter().enumerate() {
        let p = dir.join(format!("nb-{generation}-big-{c}"));
        if *c == "TOC.txt" {
            // As Cassandra writes it: the list of this SSTable's components.
            write_file(&p, (COMPONENTS.join("\n") + "\n").as_bytes());
            out.push(p);
            continue;
        }
        let len = if *c == "Data.db" {
            data_len
        } else {
            100 + (generation as usize * 37 + i * 101) % 3000
        };
        write_file(&p, &bytes(generation as u64 * 100 + i as u64, len));
        out.push(p);
    }
    let _ = std::fs::remove_file(&txn);
    out
}

/// Every regular file under `dir`, recursively, except Cassandra temporary files (`-tmp`,
/// skipped by tablesnap's default rule) and transaction logs (short-lived by design).
pub fn local_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = tablesnap::watch::scan(dir, true)
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            !s.contains("-tmp") && !s.contains("_txn_")
        })
        .collect();
    out.sort();
    out
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Local files compared with their object.
    pub files: usize,
    /// Local files with no object, or a different one: `(path, why)`.
    pub lost: Vec<(PathBuf, String)>,
    pub indexes: usize,
    /// Indexes that name a missing object or one of the wrong size: `(index key, why)`.
    pub bad_indexes: Vec<(String, String)>,
    /// Data.db files on disk whose index is missing.
    pub missing_indexes: Vec<PathBuf>,
    /// Indexes whose listing does not name their own Data.db: written after a compaction
    /// deleted it, they list the directory as it was then (what readers restore from the
    /// newest index). Not a violation of the invariant; counted for the report.
    pub without_own_data: Vec<String>,
}

impl Checked {
    pub fn ok(&self) -> bool {
        self.lost.is_empty() && self.bad_indexes.is_empty() && self.missing_indexes.is_empty()
    }

    pub fn assert_ok(&self) {
        assert!(
            self.ok(),
            "invariant violated: {} lost {:#?}, {} bad indexes {:#?}, {} missing indexes {:#?}",
            self.lost.len(),
            self.lost,
            self.bad_indexes.len(),
            self.bad_indexes,
            self.missing_indexes.len(),
            self.missing_indexes
        );
    }
}

/// Checks the invariant for the local `files` that still exist (all under `prefix`), and every
/// index stored under `prefix`. `sizes` gives the size of files that no longer exist locally
/// (e.g. compacted away), when known, to check the index entries that name them.
pub async fn check(
    s3: &S3,
    prefix: &str,
    files: &[PathBuf],
    sizes: &HashMap<PathBuf, u64>,
    want_indexes: bool,
) -> Checked {
    use futures::StreamExt;
    let keys: HashMap<String, u64> = s3.raw_keys(prefix).await.into_iter().collect();
    let mut out = Checked::default();
    let existing: Vec<PathBuf> = files.iter().filter(|p| p.is_file()).cloned().collect();
    let results: Vec<Option<(PathBuf, String)>> = futures::stream::iter(existing.iter())
        .map(|p| {
            let k = key(prefix, p);
            let known = keys.contains_key(&k);
            async move {
                if !known {
                    return Some((p.clone(), "no object".to_string()));
                }
                let local = std::fs::read(p).ok()?; // deleted meanwhile: nothing to compare
                let Some(body) = s3.raw_get(&k).await else {
                    return Some((p.clone(), "no object".into()));
                };
                if common::sha256_bytes(&body) != common::sha256_bytes(&local) {
                    return Some((
                        p.clone(),
                        format!(
                            "object differs from the file ({} vs {} bytes)",
                            body.len(),
                            local.len()
                        ),
                    ));
                }
                let (_, meta, _) = s3.raw_head(&k).await?;
                if meta.get(layout::META_MD5) != Some(&md5_hex(&body)) {
                    return Some((
                        p.clone(),
                        format!(
                            "md5sum metadata {:?} does not match the bytes",
                            meta.get(layout::META_MD5)
                        ),
                    ));
                }
                None
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    out.files = existing.len();
    out.lost = results.into_iter().flatten().collect();
    if want_indexes {
        for p in &existing {
            let name = p.file_name().unwrap().to_string_lossy();
            if layout::wants_index(&name) && !keys.contains_key(&layout::index_key(&key(prefix, p)))
            {
                out.missing_indexes.push(p.clone());
            }
        }
    }
    for k in keys.keys().filter(|k| k.ends_with(layout::INDEX_SUFFIX)) {
        out.indexes += 1;
        let Some(body) = s3.raw_get(k).await else {
            continue;
        };
        let l = match layout::parse_listing(&body) {
            Ok(l) => l,
            Err(e) => {
                out.bad_indexes
                    .push((k.clone(), format!("unparsable: {e}")));
                continue;
            }
        };
        let data_name = layout::data_key_of_index(k)
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        if !l.names.iter().any(|n| n == data_name) {
            out.without_own_data.push(k.clone());
        }
        for n in &l.names {
            let local = Path::new(&l.dir).join(n);
            let nk = key(prefix, &local);
            let Some(size) = keys.get(&nk) else {
                out.bad_indexes
                    .push((k.clone(), format!("names {n}, which is not in the bucket")));
                continue;
            };
            let want = std::fs::metadata(&local)
                .ok()
                .map(|m| m.len())
                .or_else(|| sizes.get(&local).copied());
            if let Some(w) = want {
                if w != *size {
                    out.bad_indexes.push((
                        k.clone(),
                        format!("names {n}: stored {size} bytes, the file has {w}"),
                    ));
                }
            }
        }
    }
    out
}

/// Waits until every local file in `files` has an object of its size (and, with
/// `want_indexes`, every Data.db its index), then checks the invariant in full.
pub async fn wait_caught_up(
    s3: &S3,
    prefix: &str,
    files: &[PathBuf],
    want_indexes: bool,
    timeout: Duration,
) -> Checked {
    let t0 = std::time::Instant::now();
    loop {
        let keys: HashMap<String, u64> = s3.raw_keys(prefix).await.into_iter().collect();
        let pending: Vec<&PathBuf> = files
            .iter()
            .filter(|p| {
                let Ok(m) = std::fs::metadata(p) else {
                    return false;
                };
                let k = key(prefix, p);
                let name = p.file_name().unwrap().to_string_lossy();
                keys.get(&k) != Some(&m.len())
                    || (want_indexes
                        && layout::wants_index(&name)
                        && !keys.contains_key(&layout::index_key(&k)))
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        if t0.elapsed() > timeout {
            eprintln!(
                "not caught up after {timeout:?}: {} file(s) pending, e.g. {:?}",
                pending.len(),
                &pending[..pending.len().min(5)]
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check(s3, prefix, files, &HashMap::new(), want_indexes).await
}

/// Keys under `prefix` (the set of names).
pub async fn key_set(s3: &S3, prefix: &str) -> BTreeSet<String> {
    s3.raw_keys(prefix)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

// ---- multipart uploads left in the bucket (aws CLI) -----------------------------------------

fn aws(s3: &S3, args: &[&str]) -> String {
    let out = std::process::Command::new("aws")
        .args(args)
        .args(["--endpoint-url", &s3.endpoint, "--output", "json"])
        .envs(s3.cli_env())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the aws CLI ({e}): `pip install awscli` (used to list multipart uploads)")
        });
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unfinished multipart uploads under `prefix`: `(key, upload id)`.
pub fn multipart_uploads(s3: &S3, prefix: &str) -> Vec<(String, String)> {
    let text = aws(
        s3,
        &[
            "s3api",
            "list-multipart-uploads",
            "--bucket",
            &s3.bucket,
            "--prefix",
            prefix,
        ],
    );
    if text.trim().is_empty() {
        return vec![];
    }
    let v: serde_json::Value = serde_json::from_str(&text).expect("aws output is JSON");
    v.get("Uploads")
        .and_then(|u| u.as_array())
        .map(|a| {
            a.iter()
                .map(|u| {
                    (
                        u["Key"].as_str().unwrap_or_default().to_string(),
                        u["UploadId"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Aborts the given uploads (cleanup after counting them).
pub fn abort_uploads(s3: &S3, uploads: &[(String, String)]) {
    for (k, id) in uploads {
        aws(
            s3,
            &[
                "s3api",
                "abort-multipart-upload",
                "--bucket",
                &s3.bucket,
                "--key",
                k,
                "--upload-id",
                id,
            ],
        );
    }
}

// ---- kernel limits -------------------------------------------------------------------------

/// Sets `/proc/sys/fs/inotify/NAME` and puts the old value back when dropped, even when the
/// test panics. Tests that use it must hold [`SYSCTL_LOCK`].
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

pub static SYSCTL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Sysctl {
    pub fn set(name: &str, value: u64) -> Sysctl {
        let path = Path::new("/proc/sys/fs/inotify").join(name);
        let old = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        std::fs::write(&path, value.to_string()).unwrap_or_else(|e| {
            panic!("write {} (the test must run as root): {e}", path.display())
        });
        Sysctl { path, old }
    }

    /// Puts the old value back now.
    pub fn restore(self) {}
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, self.old.trim()) {
            eprintln!("COULD NOT RESTORE {}: {e}", self.path.display());
        }
    }
}
