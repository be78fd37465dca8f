//! Races and bad local state: files deleted between their event and their upload,
//! directories deleted while watched, directories created and filled faster than a watch can
//! be added, files renamed over others, files that change while they are uploaded, an
//! unreadable file (inotify limits: faults_inotify.rs). Each test asserts on
//! the bucket (bytes, md5sum metadata, indexes), never on logs.

mod common;
mod faults_harness;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Running;
use common::proxy::Proxy;
use faults_harness as h;
use tablesnap::upload::UploadConfig;

fn small_parts() -> UploadConfig {
    UploadConfig {
        part_size: Some(5 << 20),
        max_upload_size: 5 << 20,
        memory_budget: 20 << 20,
        ..UploadConfig::default()
    }
}

fn table(root: &Path, name: &str) -> PathBuf {
    let t = root.join(format!("ks/{name}-0123456789abcdef0123456789abcdef"));
    std::fs::create_dir_all(&t).unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_deleted_between_event_and_upload_is_skipped_and_never_indexed() {
    let s3 = common::s3();
    let p = Proxy::start(&s3.endpoint).await;
    let prefix = s3.unique_prefix("deleted");
    let data = tempfile::tempdir().unwrap();
    let t = table(data.path(), "del");
    let d = Running::start({
        let mut c = h::config(h::store_via(&s3, &p.url()), &prefix, vec![t.clone()]);
        c.threads = 1;
        c
    })
    .await;
    // Slow responses keep the single upload slot busy, so every event below is queued.
    p.delay(Duration::from_millis(500));
    let gen1 = h::flush(&t, 1, 20_000);
    // Generation 2 is flushed, then compacted into generation 3 and deleted before the
    // daemon gets to it.
    let gen2 = h::flush(&t, 2, 30_000);
    let gen3 = h::flush(&t, 3, 40_000);
    for f in &gen2 {
        std::fs::remove_file(f).unwrap();
    }
    let files: Vec<PathBuf> = gen1.iter().chain(&gen3).cloned().collect();
    let c = h::wait_caught_up(&s3, &prefix, &files, true, Duration::from_secs(90)).await;
    c.assert_ok();
    let keys = h::key_set(&s3, &prefix).await;
    for f in &gen2 {
        assert!(
            !keys.contains(&h::key(&prefix, f)),
            "{} was deleted before its upload and must not be stored",
            f.display()
        );
    }
    // Never indexed either: no restore point names a file of generation 2.
    let mut indexes = 0;
    for k in keys.iter().filter(|k| k.ends_with("-listdir.json")) {
        let body = s3.raw_get(k).await.expect("a listed index is readable");
        let body = String::from_utf8(body).unwrap();
        assert!(!body.contains("nb-2-big"), "{k} names generation 2: {body}");
        indexes += 1;
    }
    assert!(indexes >= 2, "no indexes of generations 1 and 3: {keys:?}");
    assert!(d.is_running());
    p.pass();
    let s = d.stop().await;
    // Counted as vanished when the upload found it gone; dropped uncounted when the
    // watcher's own check found it gone first (either is right: what matters is above).
    assert_eq!((s.failures, s.pending), (0, 0), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_deleted_while_watched_then_recreated() {
    let s3 = common::s3();
    let p = Proxy::start(&s3.endpoint).await;
    let prefix = s3.unique_prefix("rmdir");
    let data = tempfile::tempdir().unwrap();
    let d = Running::start({
        let mut c = h::config(
            h::store_via(&s3, &p.url()),
            &prefix,
            vec![data.path().into()],
        );
        c.recursive = true;
        c.auto_add = true;
        c.threads = 1;
        c
    })
    .await;
    let keep = table(data.path(), "keep");
    let gone = table(data.path(), "gone");
    // Let the watches on the new directories settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.delay(Duration::from_millis(400));
    let mut files = h::flush(&keep, 1, 5000);
    h::flush(&gone, 1, 5000);
    // The table is dropped while its files wait for an upload slot.
    std::fs::remove_dir_all(&gone).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...and created again under the same name (DROP TABLE; CREATE TABLE with the same id
    // does not happen, but a restored snapshot does exactly this).
    std::fs::create_dir_all(&gone).unwrap();
    files.extend(h::flush(&gone, 2, 6000));
    files.extend(h::flush(&keep, 2, 7000));
    p.pass();
    let c = h::wait_caught_up(&s3, &prefix, &files, true, Duration::from_secs(60)).await;
    c.assert_ok();
    assert!(
        d.is_running(),
        "a vanished directory must not stop the daemon"
    );
    // Still watching the recreated directory.
    let later = gone.join("nb-3-big-TOC.txt");
    h::write_file(&later, b"Data.db\n");
    files.push(later);
    h::wait_caught_up(&s3, &prefix, &files, true, Duration::from_secs(30))
        .await
        .assert_ok();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_created_and_filled_faster_than_watches_are_added() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("fastdirs");
    let data = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = Running::start({
        let mut c = h::config(s3.store_options(), &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c
    })
    .await;
    let mut files = Vec::new();
    for i in 0..15u32 {
        // mkdir -p of several levels and files at every level at once...
        let deep = data.path().join(format!(
            "ks{i}/t{i}-0123456789abcdef0123456789abcdef/.t_idx/x"
        ));
        std::fs::create_dir_all(&deep).unwrap();
        let mut dir = deep.clone();
        for level in 0..4 {
            let f = dir.join(format!("nb-{}-big-Data.db", i * 10 + level));
            h::write_file(
                &f,
                &h::bytes((i * 10 + level) as u64, 1000 + level as usize),
            );
            files.push(f);
            let toc = dir.join(format!("nb-{}-big-TOC.txt", i * 10 + level));
            h::write_file(&toc, b"Data.db\nTOC.txt\n");
            files.push(toc);
            if !dir.pop() {
                break;
            }
        }
        // ...and a directory filled elsewhere, then moved in (a restored snapshot).
        let staged = outside.path().join(format!("s{i}"));
        std::fs::create_dir_all(staged.join("sub")).unwrap();
        for n in ["nb-1-big-Data.db", "sub/nb-2-big-Data.db"] {
            h::write_file(&staged.join(n), &h::bytes(i as u64 + 500, 700));
        }
        for n in ["nb-1-big-TOC.txt", "sub/nb-2-big-TOC.txt"] {
            h::write_file(&staged.join(n), b"Data.db\nTOC.txt\n");
        }
        let dst = data.path().join(format!("ks{i}/moved{i}"));
        std::fs::rename(&staged, &dst).unwrap();
        for n in [
            "nb-1-big-Data.db",
            "sub/nb-2-big-Data.db",
            "nb-1-big-TOC.txt",
            "sub/nb-2-big-TOC.txt",
        ] {
            files.push(dst.join(n));
        }
    }
    let c = h::wait_caught_up(&s3, &prefix, &files, true, Duration::from_secs(60)).await;
    c.assert_ok();
    assert_eq!(c.files, files.len());
    // The new directories are watched: files written there later are uploaded too.
    let mut later = Vec::new();
    for i in 0..15u32 {
        let f = data
            .path()
            .join(format!("ks{i}/moved{i}/sub/nb-3-big-TOC.txt"));
        h::write_file(&f, b"later");
        later.push(f);
    }
    h::wait_caught_up(&s3, &prefix, &later, false, Duration::from_secs(30))
        .await
        .assert_ok();
    d.stop().await;
}

async fn rename_over(same_size: bool) {
    let s3 = common::s3();
    let prefix = s3.unique_prefix(if same_size { "renover-same" } else { "renover" });
    let data = tempfile::tempdir().unwrap();
    let t = table(data.path(), "ren");
    let d = Running::start(h::config(s3.store_options(), &prefix, vec![t.clone()])).await;
    let target = t.join("nb-1-big-Statistics.db");
    let other = t.join("nb-1-big-Filter.db");
    h::write_file(&target, &h::bytes(1, 4096));
    h::write_file(&other, &h::bytes(2, 100));
    let files = vec![target.clone(), other.clone()];
    h::wait_caught_up(&s3, &prefix, &files, false, h::WAIT)
        .await
        .assert_ok();
    // A new version written aside and renamed over the old one (IN_MOVED_TO), and an
    // existing file renamed over another.
    let tmp = t.join("nb-1-big-Statistics.db.tmp");
    h::write_file(&tmp, &h::bytes(3, if same_size { 4096 } else { 5000 }));
    std::fs::rename(&tmp, &target).unwrap();
    let other2 = t.join("nb-1-big-Digest.crc32");
    h::write_file(&other2, &h::bytes(4, if same_size { 100 } else { 64 }));
    std::fs::rename(&other2, &other).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = h::wait_caught_up(&s3, &prefix, &files, false, h::WAIT).await;
    assert!(d.is_running());
    d.stop().await;
    c.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_renamed_over_another_of_a_different_size_is_stored_again() {
    rename_over(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_renamed_over_another_of_the_same_size_is_stored_again() {
    rename_over(true).await;
}

/// A large file is modified while its multipart upload is in flight.
async fn changed_while_uploading(same_size: bool) {
    let s3 = common::s3();
    let p = Proxy::start(&s3.endpoint).await;
    let prefix = s3.unique_prefix(if same_size { "torn-same" } else { "torn-grow" });
    let data = tempfile::tempdir().unwrap();
    let t = table(data.path(), "torn");
    let d = Running::start({
        let mut c = h::config(h::store_via(&s3, &p.url()), &prefix, vec![t.clone()]);
        c.upload = small_parts();
        c
    })
    .await;
    // Its TOC first (a complete SSTable once Data.db is whole); only Data.db then moves.
    h::write_file(&t.join("nb-1-big-TOC.txt"), b"Data.db\nTOC.txt\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.delay(Duration::from_millis(700));
    let f = t.join("nb-1-big-Data.db");
    h::write_file(&f, &h::bytes(10, 16 << 20));
    common::wait_until_async(Duration::from_secs(30), "a part in flight", || async {
        p.counts().parts >= 1
    })
    .await;
    if same_size {
        // Rewritten in place: same size, other bytes.
        let mut w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        w.write_all(&h::bytes(11, 16 << 20)).unwrap();
        w.sync_all().unwrap();
    } else {
        let mut w = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        w.write_all(&h::bytes(12, 3 << 20)).unwrap();
        w.sync_all().unwrap();
    }
    p.pass();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = h::wait_caught_up(
        &s3,
        &prefix,
        std::slice::from_ref(&f),
        true,
        Duration::from_secs(60),
    )
    .await;
    eprintln!("proxy {:?}", p.counts());
    assert!(d.is_running());
    d.stop().await;
    c.assert_ok();
    assert!(h::multipart_uploads(&s3, &prefix).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_that_grows_while_uploading_is_uploaded_again_never_torn() {
    changed_while_uploading(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_rewritten_in_place_while_uploading_is_uploaded_again_never_torn() {
    changed_while_uploading(true).await;
}

/// Root reads every file whatever its mode, so the daemon runs as `nobody` here: the
/// `tablesnap` binary, started with `Command::uid(65534)`. A file of generation 1 is
/// unreadable (mode 000) while generation 2 is flushed next to it.
async fn unreadable(index_while_unreadable: bool) {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("unreadable");
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = table(data.path(), "perm");
    for d in [t.parent().unwrap(), &t] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_tablesnap"))
        .args(["-n", h::HOST, "-p", &prefix, "--rescan-interval", "2"])
        .args(["--index-delay", "200", &s3.dest()])
        .arg(&t)
        .envs(s3.cli_env())
        .env("HOME", "/tmp")
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tablesnap as nobody");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "tablesnap exited early"
    );
    let bad = t.join("nb-1-big-Index.db");
    {
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&bad)
            .unwrap();
        w.write_all(&h::bytes(1, 5000)).unwrap();
    }
    let good = h::flush(&t, 2, 3000);
    let c = h::wait_caught_up(
        &s3,
        &prefix,
        &good,
        index_while_unreadable,
        Duration::from_secs(20),
    )
    .await;
    let still_alive = child.try_wait().unwrap().is_none();
    if !c.ok() {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    }
    c.assert_ok();
    assert!(still_alive, "an unreadable file must not stop the daemon");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        s3.raw_head(&h::key(&prefix, &bad)).await.is_none(),
        "an unreadable file cannot have been stored"
    );
    // Fixed permissions (no inotify event for that): the next rescan picks it up.
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
    let t0 = Instant::now();
    let mut all = good.clone();
    all.push(bad.clone());
    let c = h::wait_caught_up(&s3, &prefix, &all, true, Duration::from_secs(30)).await;
    eprintln!("picked up {:?} after the chmod", t0.elapsed());
    // SIGTERM: clean exit.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    c.assert_ok();
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("nb-1-big-Index.db"),
        "the unreadable file is reported by name: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_file_is_skipped_without_stopping_the_others_and_retried_on_rescan() {
    unreadable(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_file_does_not_block_the_index_of_another_generation() {
    unreadable(true).await;
}
