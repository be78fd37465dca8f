//! End-to-end tests of the tablesnap daemon against a real S3 server (Garage on 127.0.0.1,
//! started by `scripts/test.sh`) with real Cassandra SSTables from `testdata/sstables` (and the
//! whole corpus `../shared/sstables` for the one test that needs all of it).
//! Each test simulates how Cassandra writes (rename, in-place close, hard links, new table
//! directories, compaction) and asserts on the bucket: keys, bytes (sha256 against
//! MANIFEST.tsv), `stat`/`md5sum` metadata and every index body.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ManifestEntry, Running, S3};
use md5::{Digest, Md5};
use tablesnap::daemon::{self, Config, Summary};
use tablesnap::layout::{self, Layout, StatMeta};
use tablesnap::upload::UploadConfig;
use tablesnap::watch::Events;

const HOST: &str = "node1.example.com";
const WAIT: Duration = Duration::from_secs(60);

fn config(s3: &S3, prefix: &str, paths: Vec<PathBuf>) -> Config {
    let mut c = Config::new(s3.store_options(), Layout::new(prefix, HOST, ":"), paths);
    c.index_delay = Duration::from_millis(300);
    c
}

fn key(prefix: &str, path: &Path) -> String {
    Layout::new(prefix, HOST, ":").data_key(path.to_str().unwrap())
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// The manifest entries of one table directory of the corpus (relative dir like `hello/foo-...`).
fn table_files(root: &Path, rel_dir: &str) -> Vec<ManifestEntry> {
    let mut v: Vec<_> = common::manifest(root)
        .into_iter()
        .filter(|e| Path::new(&e.path).parent() == Some(Path::new(rel_dir)))
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(!v.is_empty(), "no files for {rel_dir} in MANIFEST.tsv");
    v
}

fn file_name(e: &ManifestEntry) -> String {
    Path::new(&e.path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Asserts that the object for `local` holds exactly `sha256` and carries correct metadata.
async fn assert_object(s3: &S3, prefix: &str, local: &Path, sha256: &str) {
    let k = key(prefix, local);
    let body = s3
        .raw_get(&k)
        .await
        .unwrap_or_else(|| panic!("{k} is missing"));
    assert_eq!(common::sha256_bytes(&body), sha256, "bytes of {k}");
    let (size, meta, _) = s3.raw_head(&k).await.expect("head");
    assert_eq!(size, body.len() as u64);
    assert_eq!(meta.get("md5sum"), Some(&md5_hex(&body)), "md5sum of {k}");
    let stat = StatMeta::parse(meta.get("stat").expect("stat metadata")).expect("stat JSON");
    if let Ok(m) = std::fs::metadata(local) {
        assert_eq!(
            (stat.uid, stat.gid, stat.mode),
            (m.uid(), m.gid(), m.mode())
        );
    }
    assert_eq!(stat.user.as_deref(), Some("root"));
    // Byte-exact as the original writes it.
    assert_eq!(meta.get("stat").unwrap(), &stat.to_json());
}

/// Every index under `prefix`: parses, has the right content type, names only objects that
/// exist (with the size of the local file when it still exists). Returns dir → names of
/// the newest index body seen per data key.
async fn check_indexes(s3: &S3, prefix: &str) -> BTreeMap<String, Vec<String>> {
    let keys: HashMap<String, u64> = s3.raw_keys(prefix).await.into_iter().collect();
    let mut out = BTreeMap::new();
    for k in keys.keys().filter(|k| k.ends_with(layout::INDEX_SUFFIX)) {
        let body = s3.raw_get(k).await.unwrap();
        let (_, _, ct) = s3.raw_head(k).await.unwrap();
        assert_eq!(
            ct.as_deref(),
            Some("application/json"),
            "content type of {k}"
        );
        let l = layout::parse_listing(&body).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            layout::listdir_json(&l.dir, &l.names),
            "index body bytes of {k}"
        );
        let data_key = layout::data_key_of_index(k).unwrap();
        let data_name = data_key.rsplit('/').next().unwrap();
        // A restore point no Data.db called for (files deleted, a late file) has a key of
        // its own; every other index names its own Data.db.
        assert!(
            data_name.starts_with(layout::RESTORE_POINT_PREFIX)
                || l.names.iter().any(|n| n == data_name),
            "{k} does not name its own Data.db"
        );
        for n in &l.names {
            let nk = key(prefix, &Path::new(&l.dir).join(n));
            let size = keys
                .get(&nk)
                .unwrap_or_else(|| panic!("index {k} names {n}, which is not in the bucket"));
            if let Ok(m) = std::fs::metadata(Path::new(&l.dir).join(n)) {
                assert_eq!(*size, m.len(), "size of {nk}");
            }
        }
        out.insert(data_key.to_string(), l.names);
    }
    out
}

async fn wait_for_keys(s3: &S3, prefix: &str, want: &[String]) {
    let want: BTreeSet<String> = want.iter().cloned().collect();
    common::wait_until_async(WAIT, &format!("{} keys under {prefix}", want.len()), || {
        let want = want.clone();
        async move {
            let have: BTreeSet<String> = s3
                .raw_keys(prefix)
                .await
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            want.is_subset(&have)
        }
    })
    .await;
}

fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_written_as_tmp_then_renamed_is_uploaded_with_index() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("rename");
    let data = tempfile::tempdir().unwrap();
    let table = data.path().join("legacy_tables/legacy_ka_simple-1234");
    std::fs::create_dir_all(&table).unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.recursive = true;
        c
    })
    .await;
    // Cassandra 2.1 style: components are written as -tmp- names and renamed into place.
    let src_dir = "legacy_tables/legacy_ka_simple-5edea35d664539748ab2b705f09f5306";
    let files = table_files(&root, src_dir);
    for e in &files {
        let name = file_name(e);
        let tmp = table.join(name.replacen("-ka-", "-tmp-ka-", 1));
        write_file(&tmp, &std::fs::read(root.join(&e.path)).unwrap());
        std::fs::rename(&tmp, table.join(&name)).unwrap();
    }
    let mut want: Vec<String> = files
        .iter()
        .map(|e| key(&prefix, &table.join(file_name(e))))
        .collect();
    let data_db = files.iter().find(|e| e.path.ends_with("Data.db")).unwrap();
    want.push(layout::index_key(&key(
        &prefix,
        &table.join(file_name(data_db)),
    )));
    wait_for_keys(&s3, &prefix, &want).await;
    for e in &files {
        assert_object(&s3, &prefix, &table.join(file_name(e)), &e.sha256).await;
    }
    let idx = check_indexes(&s3, &prefix).await;
    let names: Vec<String> = files.iter().map(file_name).collect();
    assert_eq!(
        idx.values().next().unwrap(),
        &names,
        "index names exactly the components"
    );
    let keys = s3.raw_keys(&prefix).await;
    assert!(
        keys.iter().all(|(k, _)| !k.contains("-tmp")),
        "tmp files must not be uploaded: {keys:?}"
    );
    assert_eq!(keys.len(), want.len(), "nothing else uploaded: {keys:?}");
    let s = d.stop().await;
    assert_eq!(s.files_uploaded, files.len() as u64);
}

/// Copies a corpus table's components into `dir` the Cassandra 3.0+ way: written in place
/// (IN_CLOSE_WRITE) next to a transaction log that is removed when the flush commits.
/// `gen` renames `nb-1-` to `nb-GEN-`. Returns (local path, sha256) per component.
fn flush_in_place(
    root: &Path,
    src_rel: &str,
    dir: &Path,
    generation: u32,
) -> Vec<(PathBuf, String)> {
    let txn = dir.join(format!(
        "nb_txn_flush_{generation:08}-0000-0000-0000-000000000000.log"
    ));
    write_file(&txn, b"ADD:[...]\n");
    let mut out = Vec::new();
    for e in table_files(root, src_rel) {
        let name = file_name(&e).replacen("nb-1-", &format!("nb-{generation}-"), 1);
        let p = dir.join(&name);
        write_file(&p, &std::fs::read(root.join(&e.path)).unwrap());
        out.push((p, e.sha256.clone()));
    }
    // (With --delete-on-backup the daemon may have removed it already.)
    let _ = std::fs::remove_file(&txn);
    out
}

const NB: &str = "legacy_tables/legacy_nb_simple-84180d72e04a3ae68cc91ac6cdffd3f3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_written_in_place_is_uploaded_on_close_write() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("closewrite");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/simple-84180d72e04a3ae68cc91ac6cdffd3f3");
    std::fs::create_dir_all(&table).unwrap();
    let d = Running::start(config(&s3, &prefix, vec![table.clone()])).await;
    let files = flush_in_place(&root, NB, &table, 1);
    let mut want: Vec<String> = files.iter().map(|(p, _)| key(&prefix, p)).collect();
    want.push(layout::index_key(&key(
        &prefix,
        &table.join("nb-1-big-Data.db"),
    )));
    wait_for_keys(&s3, &prefix, &want).await;
    for (p, sha) in &files {
        assert_object(&s3, &prefix, p, sha).await;
    }
    let idx = check_indexes(&s3, &prefix).await;
    let mut names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The index waits for the flush to settle: every component, never the transaction log.
    assert_eq!(idx.values().next().unwrap(), &names);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backup_hard_links_are_uploaded_on_in_create() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("hardlink");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/simple-84180d72e04a3ae68cc91ac6cdffd3f3");
    std::fs::create_dir_all(&table).unwrap();
    let files = flush_in_place(&root, NB, &table, 3);
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c.events = Events::parse(&["IN_CREATE".into()]).unwrap();
        c
    })
    .await;
    // Incremental backup: Cassandra hard-links each flushed component into backups/.
    let backups = table.join("backups");
    std::fs::create_dir(&backups).unwrap();
    let mut want = Vec::new();
    let mut linked = Vec::new();
    for (p, sha) in &files {
        let l = backups.join(p.file_name().unwrap());
        std::fs::hard_link(p, &l).unwrap();
        want.push(key(&prefix, &l));
        linked.push((l, sha.clone()));
    }
    wait_for_keys(&s3, &prefix, &want).await;
    for (l, sha) in &linked {
        assert_object(&s3, &prefix, l, sha).await;
    }
    check_indexes(&s3, &prefix).await;
    // Only IN_CREATE was requested, and the originals already existed: only links uploaded.
    let keys = s3.raw_keys(&prefix).await;
    assert!(
        keys.iter().all(|(k, _)| k.contains("/backups/")),
        "only the links are uploaded: {keys:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_table_directories_are_watched_and_scanned_under_recursive_auto_add() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("newdirs");
    let data = tempfile::tempdir().unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c
    })
    .await;
    // Cassandra creates a keyspace and table directory and writes into it at once: files
    // closed before the watch on the new directory exists must still be found.
    let mut all = Vec::new();
    for i in 0..12 {
        let table = data
            .path()
            .join(format!("ks{}/t{i}-0123456789abcdef0123456789abcdef", i % 3));
        std::fs::create_dir_all(&table).unwrap();
        all.extend(flush_in_place(&root, NB, &table, i + 1));
    }
    let want: Vec<String> = all.iter().map(|(p, _)| key(&prefix, p)).collect();
    wait_for_keys(&s3, &prefix, &want).await;
    for (p, sha) in &all {
        assert_object(&s3, &prefix, p, sha).await;
    }
    // Every table got its index, and each names its whole generation.
    common::wait_until_async(WAIT, "12 indexes", || async {
        s3.raw_keys(&prefix)
            .await
            .iter()
            .filter(|(k, _)| k.ends_with(layout::INDEX_SUFFIX))
            .count()
            == 12
    })
    .await;
    let idx = check_indexes(&s3, &prefix).await;
    assert!(idx.values().all(|names| names.len() == 8), "{idx:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_before_upload_is_skipped_not_fatal() {
    // Upstream #36/#64: a file compacted away between its event and its upload killed the
    // original daemon (SIGKILL) and the index named files that never reached the bucket.
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("compacted");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/simple-84180d72e04a3ae68cc91ac6cdffd3f3");
    std::fs::create_dir_all(&table).unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![table.clone()]);
        c.threads = 1;
        c.upload = UploadConfig {
            part_size: Some(5 << 20),
            // The big file holds the slot about 4 s.
            throttle: Some(std::sync::Arc::new(tablesnap::throttle::Throttle::new(
                12 << 20,
            ))),
            ..UploadConfig::default()
        };
        c
    })
    .await;
    // Keep the only upload slot busy with a large file...
    let big: Vec<u8> = (0..48u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write_file(&table.join("nb-1-big-Data.db"), &big);
    // ...while a generation is flushed (and queued behind it: its files are looked at
    // within milliseconds; deleted before that look, they would never be queued, and
    // nothing would vanish between queue and upload), then compacted into a new one and
    // deleted.
    let old = flush_in_place(&root, NB, &table, 2);
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    for (p, _) in &old {
        std::fs::remove_file(p).unwrap();
    }
    let new = flush_in_place(&root, NB, &table, 3);
    let mut want: Vec<String> = new.iter().map(|(p, _)| key(&prefix, p)).collect();
    want.push(layout::index_key(&key(
        &prefix,
        &table.join("nb-3-big-Data.db"),
    )));
    want.push(key(&prefix, &table.join("nb-1-big-Data.db")));
    wait_for_keys(&s3, &prefix, &want).await;
    assert!(d.is_running(), "the daemon must survive files vanishing");
    // And it keeps working after that.
    let later = table.join("nb-4-big-TOC.txt");
    write_file(&later, b"Data.db\nTOC.txt\n");
    wait_for_keys(&s3, &prefix, &[key(&prefix, &later)]).await;
    for (p, sha) in &new {
        assert_object(&s3, &prefix, p, sha).await;
    }
    assert_object(
        &s3,
        &prefix,
        &table.join("nb-1-big-Data.db"),
        &common::sha256_bytes(&big),
    )
    .await;
    let keys: BTreeSet<String> = s3
        .raw_keys(&prefix)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for (p, _) in &old {
        assert!(
            !keys.contains(&key(&prefix, p)),
            "{} vanished before upload and must not be stored",
            p.display()
        );
    }
    for names in check_indexes(&s3, &prefix).await.values() {
        assert!(
            names.iter().all(|n| !n.starts_with("nb-2-")),
            "an index names a compacted file: {names:?}"
        );
    }
    let s = d.stop().await;
    assert!(s.files_vanished >= 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_flag_uploads_only_what_is_missing_with_one_listing() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("backup");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/simple-84180d72e04a3ae68cc91ac6cdffd3f3");
    std::fs::create_dir_all(&table).unwrap();
    let files = flush_in_place(&root, NB, &table, 1);
    // Half of the files are already in the bucket, marked so a re-upload would show.
    let store = s3.store();
    let (present, missing) = files.split_at(files.len() / 2);
    for (p, _) in present {
        let body = std::fs::read(p).unwrap();
        let meta = tablesnap::store::PutMeta {
            content_type: None,
            user: vec![("md5sum", md5_hex(&body)), ("stat", "marker".into())],
        };
        store
            .put(&key(&prefix, p), body.into(), &meta)
            .await
            .unwrap();
    }
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![table.clone()]);
        c.backup = true;
        c
    })
    .await;
    let mut want: Vec<String> = files.iter().map(|(p, _)| key(&prefix, p)).collect();
    want.push(layout::index_key(&key(
        &prefix,
        &table.join("nb-1-big-Data.db"),
    )));
    wait_for_keys(&s3, &prefix, &want).await;
    for (p, sha) in missing {
        assert_object(&s3, &prefix, p, sha).await;
    }
    for (p, sha) in present {
        let k = key(&prefix, p);
        let (_, meta, _) = s3.raw_head(&k).await.unwrap();
        assert_eq!(
            meta.get("stat").map(String::as_str),
            Some("marker"),
            "{k} was uploaded again"
        );
        assert_eq!(common::sha256_bytes(&s3.raw_get(&k).await.unwrap()), *sha);
    }
    check_indexes(&s3, &prefix).await;
    let s = d.stop().await;
    assert_eq!(s.files_uploaded, missing.len() as u64, "{s}");
    assert_eq!(s.files_present, present.len() as u64, "{s}");
}

async fn once(s3: &S3, prefix: &str, dir: &Path, f: impl FnOnce(&mut Config)) -> Summary {
    let mut c = config(s3, prefix, vec![dir.into()]);
    c.once = true;
    c.recursive = true;
    f(&mut c);
    tokio::time::timeout(WAIT, daemon::run(c, std::future::pending()))
        .await
        .expect("--once did not finish")
        .expect("--once failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_exclude_and_the_default_tmp_rule() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/simple-84180d72e04a3ae68cc91ac6cdffd3f3");
    std::fs::create_dir_all(&table).unwrap();
    let files = flush_in_place(&root, NB, &table, 1);
    write_file(&table.join("ks-simple-tmp-ka-9-Data.db"), b"partial");
    let names = |keys: Vec<(String, u64)>| -> BTreeSet<String> {
        keys.into_iter()
            .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
            .collect()
    };
    let all: BTreeSet<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();

    // Default: everything but -tmp files; the index does not name the tmp file either.
    let p1 = s3.unique_prefix("filter-default");
    once(&s3, &p1, data.path(), |_| {}).await;
    let mut expect = all.clone();
    expect.insert("nb-1-big-Data.db-listdir.json".into());
    assert_eq!(names(s3.raw_keys(&p1).await), expect);
    let idx = check_indexes(&s3, &p1).await;
    assert_eq!(
        idx.values()
            .next()
            .unwrap()
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        all
    );

    // -e: any regex that matches (search) excludes; the index is filtered on bare names.
    let p2 = s3.unique_prefix("filter-exclude");
    once(&s3, &p2, data.path(), |c| {
        c.upload.filter = tablesnap::filter::Filter::new(
            &[
                "Index\\.db$".into(),
                "^Summary".into(),
                "Summary\\.db".into(),
            ],
            &[],
        )
        .unwrap();
    })
    .await;
    let mut expect: BTreeSet<String> = all
        .iter()
        .filter(|n| !n.ends_with("Index.db") && !n.contains("Summary"))
        .cloned()
        .collect();
    let idx_names = expect.clone();
    // -e replaces the default -tmp rule, but a temporary SSTable name (`-tmp-`, `tmp-`) is
    // never final: it is renamed into place when complete, so it is never uploaded nor
    // named (the original uploaded it half-written).
    expect.insert("nb-1-big-Data.db-listdir.json".into());
    assert_eq!(names(s3.raw_keys(&p2).await), expect);
    let idx = check_indexes(&s3, &p2).await;
    for v in idx.values() {
        assert_eq!(v.iter().cloned().collect::<BTreeSet<_>>(), idx_names);
    }

    // -i: only matching paths.
    let p3 = s3.unique_prefix("filter-include");
    once(&s3, &p3, data.path(), |c| {
        c.upload.filter = tablesnap::filter::Filter::new(&[], &["big-Data\\.db$".into()]).unwrap();
    })
    .await;
    let expect: BTreeSet<String> = ["nb-1-big-Data.db", "nb-1-big-Data.db-listdir.json"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names(s3.raw_keys(&p3).await), expect);
    let idx = check_indexes(&s3, &p3).await;
    assert_eq!(
        idx.values().next().unwrap(),
        &vec!["nb-1-big-Data.db".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_corpus_backfill_is_byte_identical_to_the_manifest() {
    let Some(root) = common::sstables() else {
        return;
    };
    let s3 = common::s3();
    let prefix = s3.unique_prefix("corpus");
    let data = tempfile::tempdir().unwrap();
    let n = common::copy_tree(&root, data.path());
    let manifest = common::manifest(&root);
    let top_level = std::fs::read_dir(&root)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count();
    assert_eq!(
        n,
        manifest.len() + top_level,
        "copied the corpus (plus LICENSE, MANIFEST.tsv, ...)"
    );
    let t0 = std::time::Instant::now();
    let s = once(&s3, &prefix, data.path(), |c| c.threads = 8).await;
    eprintln!("backfill of {n} files: {:?}", t0.elapsed());
    assert_eq!(s.files_uploaded as usize, n, "{s}");
    let keys: HashMap<String, u64> = s3.raw_keys(&prefix).await.into_iter().collect();
    for e in &manifest {
        let k = key(&prefix, &data.path().join(&e.path));
        assert_eq!(keys.get(&k), Some(&e.size), "{k}");
    }
    use futures::StreamExt;
    futures::stream::iter(&manifest)
        .for_each_concurrent(16, |e| {
            let local = data.path().join(&e.path);
            let (s3, prefix) = (&s3, &prefix);
            async move { assert_object(s3, prefix, &local, &e.sha256).await }
        })
        .await;
    eprintln!("checked objects: {:?}", t0.elapsed());
    // One index per Data.db, each naming its whole directory.
    let data_files = manifest
        .iter()
        .filter(|e| e.path.contains("Data.db"))
        .count();
    let idx = check_indexes(&s3, &prefix).await;
    assert_eq!(idx.len(), data_files);
    for (data_key, names) in &idx {
        let dir = Path::new(
            Layout::new(prefix.as_str(), HOST, ":")
                .path_of(data_key)
                .unwrap(),
        )
        .parent()
        .unwrap()
        .to_path_buf();
        let mut local: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        local.sort();
        assert_eq!(names, &local, "{data_key}");
    }
    // A second run finds everything stored and uploads nothing.
    let again = once(&s3, &prefix, data.path(), |_| {}).await;
    assert_eq!(
        (again.files_uploaded, again.files_present as usize),
        (0, n),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_stream_as_multipart_with_whole_file_md5() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("multipart");
    let data = tempfile::tempdir().unwrap();
    let f = data.path().join("nb-7-big-Data.db");
    let body: Vec<u8> = (0..(23u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2246822519) >> 7) as u8)
        .collect();
    write_file(&f, &body);
    write_file(&data.path().join("nb-7-big-TOC.txt"), b"Data.db\nTOC.txt\n");
    let s = once(&s3, &prefix, data.path(), |c| {
        c.upload.part_size = Some(5 << 20);
        c.upload.max_upload_size = 6 << 20;
        c.upload.memory_budget = 10 << 20;
    })
    .await;
    assert_eq!(s.files_uploaded, 2, "Data.db and its TOC");
    assert_object(&s3, &prefix, &f, &common::sha256_bytes(&body)).await;
    check_indexes(&s3, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_backup_removes_only_confirmed_files_and_indexes_still_name_them() {
    let root = common::sample_sstables();
    let s3 = common::s3();
    let prefix = s3.unique_prefix("delete");
    let data = tempfile::tempdir().unwrap();
    let table = data
        .path()
        .join("ks/simple-84180d72e04a3ae68cc91ac6cdffd3f3");
    std::fs::create_dir_all(&table).unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![table.clone()]);
        c.delete_on_backup = true;
        c
    })
    .await;
    let files = flush_in_place(&root, NB, &table, 5);
    let mut want: Vec<String> = files.iter().map(|(p, _)| key(&prefix, p)).collect();
    want.push(layout::index_key(&key(
        &prefix,
        &table.join("nb-5-big-Data.db"),
    )));
    wait_for_keys(&s3, &prefix, &want).await;
    common::wait_until(WAIT, "local files deleted", || {
        files.iter().all(|(p, _)| !p.exists())
    });
    for (p, sha) in &files {
        let body = s3.raw_get(&key(&prefix, p)).await.unwrap();
        assert_eq!(&common::sha256_bytes(&body), sha, "{}", p.display());
    }
    // Every component, although none is on disk any more (the transaction log, uploaded
    // and deleted too, may also be named).
    let idx = check_indexes(&s3, &prefix).await;
    let named: BTreeSet<&String> = idx.values().next().unwrap().iter().collect();
    for (p, _) in &files {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(named.contains(&n), "index lacks {n}: {idx:?}");
    }
    d.stop().await;
}

fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    use std::io::{Read, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_move_with_uploads() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("metrics");
    let data = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.metrics_addr = Some(addr);
        c
    })
    .await;
    let m0 = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    assert_eq!(m0["tablesnap_files_uploaded_total"], 0.0);
    assert_eq!(m0["tablesnap_watched_directories"], 1.0);
    assert_eq!(m0["tablesnap_last_success_timestamp_seconds"], 0.0);
    let f = data.path().join("nb-1-big-Data.db");
    write_file(&f, &[7u8; 1000]);
    write_file(&data.path().join("nb-1-big-TOC.txt"), b"Data.db\nTOC.txt\n");
    wait_for_keys(&s3, &prefix, &[layout::index_key(&key(&prefix, &f))]).await;
    let m1 = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    assert_eq!(m1["tablesnap_files_uploaded_total"], 2.0, "{m1:?}");
    assert_eq!(m1["tablesnap_bytes_uploaded_total"], 1016.0);
    assert_eq!(m1["tablesnap_indexes_written_total"], 1.0);
    assert_eq!(m1["tablesnap_queue_depth"], 0.0);
    assert_eq!(m1["tablesnap_oldest_pending_seconds"], 0.0);
    assert!(m1["tablesnap_last_success_timestamp_seconds"] > 1.7e9);
    assert_eq!(
        m1["tablesnap_upload_failures_total{kind=\"transient\"}"],
        0.0
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_on_start_keeps_a_same_size_copy_and_replaces_a_different_size_one() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("md5start");
    let data = tempfile::tempdir().unwrap();
    let same = data.path().join("nb-1-big-Index.db");
    let other = data.path().join("nb-1-big-Filter.db");
    let fresh = data.path().join("nb-1-big-TOC.txt");
    write_file(&same, b"local bytes 1234");
    write_file(&other, b"local, longer bytes");
    write_file(&fresh, b"Filter.db\nIndex.db\nTOC.txt\n");
    let store = s3.store();
    let put = |p: &Path, body: &'static [u8]| {
        let k = key(&prefix, p);
        let store = store.clone();
        async move {
            let meta = tablesnap::store::PutMeta {
                content_type: None,
                user: vec![("md5sum", md5_hex(body)), ("stat", "{}".into())],
            };
            store.put(&k, body.into(), &meta).await.unwrap();
        }
    };
    put(&same, b"stored bytes 123").await; // same size, other bytes
    put(&other, b"short").await; // other size
    // Without --md5-on-start the same-size copy is trusted; a different size is replaced.
    let s = once(&s3, &prefix, data.path(), |_| {}).await;
    assert_eq!((s.files_uploaded, s.files_present), (2, 1), "{s}");
    assert_eq!(
        s3.raw_get(&key(&prefix, &same)).await.unwrap(),
        b"stored bytes 123"
    );
    assert_eq!(
        s3.raw_get(&key(&prefix, &other)).await.unwrap(),
        b"local, longer bytes"
    );
    assert_eq!(
        s3.raw_get(&key(&prefix, &fresh)).await.unwrap(),
        b"Filter.db\nIndex.db\nTOC.txt\n"
    );
    // With it, the MD5s are compared: a mismatch is reported and the stored copy kept
    // (the local file is the suspect: SSTables never change), a match is left alone.
    let s = once(&s3, &prefix, data.path(), |c| c.upload.md5_on_start = true).await;
    assert_eq!((s.files_uploaded, s.files_present), (0, 3), "{s}");
    assert_eq!(
        s3.raw_get(&key(&prefix, &same)).await.unwrap(),
        b"stored bytes 123"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_over_another_of_the_same_size_is_uploaded_again() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("renameover");
    let data = tempfile::tempdir().unwrap();
    let d = Running::start(config(&s3, &prefix, vec![data.path().into()])).await;
    let b = data.path().join("nb-1-big-Summary.db");
    write_file(&b, b"first version!!");
    common::wait_until_async(WAIT, "first version stored", || async {
        s3.raw_get(&key(&prefix, &b)).await.as_deref() == Some(b"first version!!".as_slice())
    })
    .await;
    let a = data.path().join("incoming");
    write_file(&a, b"second version!");
    std::fs::rename(&a, &b).unwrap();
    common::wait_until_async(WAIT, "second version stored", || async {
        s3.raw_get(&key(&prefix, &b)).await.as_deref() == Some(b"second version!".as_slice())
    })
    .await;
    let (_, meta, _) = s3.raw_head(&key(&prefix, &b)).await.unwrap();
    assert_eq!(meta["md5sum"], md5_hex(b"second version!"));
    d.stop().await;
}

/// With IN_CREATE added to the default events (for snapshots and incremental backups), a file
/// still being written under its final name (Cassandra 3+) is not stored half-written and
/// re-read while it grows: it goes up once, whole, at IN_CLOSE_WRITE. Hard links still go up
/// at IN_CREATE, which is all they get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_create_waits_for_close_write_of_a_file_being_written() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("createwrite");
    let data = tempfile::tempdir().unwrap();
    let table = data.path().join("ks/t-1");
    std::fs::create_dir_all(&table).unwrap();
    let d = Running::start({
        let mut c = config(&s3, &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c.events = Events::parse(&[
            "IN_MOVED_TO".into(),
            "IN_CLOSE_WRITE".into(),
            "IN_CREATE".into(),
        ])
        .unwrap();
        c
    })
    .await;
    let p = table.join("nb-1-big-Data.db");
    let first = vec![1u8; 100_000];
    let rest = vec![2u8; 50_000];
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&first).unwrap();
    // Well past the queue's pickup and the index delay: a partial upload would be there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Some(b) = s3.raw_get(&key(&prefix, &p)).await {
        panic!(
            "a half-written file was uploaded: {} of 150000 bytes",
            b.len()
        );
    }
    f.write_all(&rest).unwrap();
    drop(f);
    let mut whole = first.clone();
    whole.extend_from_slice(&rest);
    wait_for_keys(&s3, &prefix, &[key(&prefix, &p)]).await;
    assert_eq!(
        s3.raw_get(&key(&prefix, &p)).await.as_deref(),
        Some(whole.as_slice())
    );

    let backups = table.join("backups");
    std::fs::create_dir(&backups).unwrap();
    // Let the new directory's watch be in place, so the link is seen by its IN_CREATE and
    // not by the scan of a new directory.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let l = backups.join("nb-1-big-Data.db");
    std::fs::hard_link(&p, &l).unwrap();
    wait_for_keys(&s3, &prefix, &[key(&prefix, &l)]).await;
    assert_eq!(
        s3.raw_get(&key(&prefix, &l)).await.as_deref(),
        Some(whole.as_slice())
    );
    d.stop().await;
}
