//! inotify limits: the kernel queue overflowing (`fs.inotify.max_queued_events`) and the
//! watch limit (`fs.inotify.max_user_watches`), at startup and while running. The limits are
//! machine-wide, so these tests live in their own test binary (cargo runs test binaries one
//! after the other), hold `SYSCTL_LOCK` against each other, lower a limit only for as long as
//! needed and restore it through a guard, also on panic. They need root.

mod common;
mod faults_harness;

use std::time::Duration;

use common::Running;
use faults_harness::{self as h, Sysctl};
use tablesnap::daemon;

// ---- inotify limits: they are machine-wide, so these tests hold SYSCTL_LOCK and restore
// ---- the old value as soon as the daemon has its watches (and on panic).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inotify_queue_overflow_loses_nothing_even_in_new_directories() {
    let _lock = h::SYSCTL_LOCK.lock().await;
    let s3 = common::s3();
    let prefix = s3.unique_prefix("overflow");
    let data = tempfile::tempdir().unwrap();
    // A tiny kernel queue for the inotify instances created now (the daemon's, and a witness
    // that shows the burst below really overflows a queue of this size).
    let limit = Sysctl::set("max_queued_events", 16);
    let witness = inotify::Inotify::init().unwrap();
    witness
        .watches()
        .add(
            data.path(),
            inotify::WatchMask::CREATE | inotify::WatchMask::CLOSE_WRITE,
        )
        .unwrap();
    let d = Running::start({
        let mut c = h::config(s3.store_options(), &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c
    })
    .await;
    drop(limit);
    // A burst: 40 new table directories with a flush each, far more than 16 events.
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..40u32 {
        let t = data
            .path()
            .join(format!("t{i}-0123456789abcdef0123456789abcdef"));
        std::fs::create_dir(&t).unwrap();
        files.extend(h::flush(&t, i + 1, 500));
        dirs.push(t);
    }
    let mut witness = witness;
    let mut buf = [0u8; 65536];
    let overflowed = witness
        .read_events(&mut buf)
        .map(|evs| {
            evs.into_iter()
                .any(|e| e.mask.contains(inotify::EventMask::Q_OVERFLOW))
        })
        .unwrap_or(false);
    assert!(overflowed, "the burst must overflow a 16-event queue");
    let c = h::wait_caught_up(&s3, &prefix, &files, true, Duration::from_secs(60)).await;
    c.assert_ok();
    // The directories whose creation events were lost must be watched too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut later = Vec::new();
    for (i, t) in dirs.iter().enumerate() {
        later.extend(h::flush(t, 100 + i as u32, 300));
    }
    let c2 = h::wait_caught_up(&s3, &prefix, &later, true, Duration::from_secs(30)).await;
    assert!(d.is_running());
    d.stop().await;
    eprintln!(
        "after the overflow: {} files checked, {} lost; later in the new directories: {} checked, {} lost",
        c.files,
        c.lost.len(),
        c2.files,
        c2.lost.len()
    );
    c2.assert_ok();
}

/// Watches of all processes of this user (from /proc/*/fdinfo).
fn inotify_watches_in_use() -> u64 {
    let mut n = 0;
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(rd) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for f in rd.flatten() {
            if let Ok(t) = std::fs::read_to_string(f.path()) {
                n += t.lines().filter(|l| l.starts_with("inotify wd:")).count() as u64;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_limit_reached_is_a_clear_error_naming_the_sysctl() {
    let _lock = h::SYSCTL_LOCK.lock().await;
    let s3 = common::s3();
    let prefix = s3.unique_prefix("watchlimit");
    let data = tempfile::tempdir().unwrap();
    for i in 0..200 {
        std::fs::create_dir_all(data.path().join(format!("ks/t{i}"))).unwrap();
    }
    let mut c = h::config(s3.store_options(), &prefix, vec![data.path().into()]);
    c.recursive = true;
    // Room for what the machine uses now plus some, not for 200 more directories.
    let limit = Sysctl::set("max_user_watches", inotify_watches_in_use() + 50);
    let r = tokio::time::timeout(h::WAIT, daemon::run(c, std::future::pending())).await;
    drop(limit);
    let e = match r.expect("the daemon must fail, not hang") {
        Ok(s) => panic!("the daemon started with too few watches: {s}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("fs.inotify.max_user_watches"), "{msg}");
    assert_eq!(e.exit_code(), 3);
    assert!(
        h::key_set(&s3, &prefix).await.is_empty(),
        "nothing is uploaded by a daemon that cannot watch"
    );
}

/// The watch limit is reached while the daemon runs (`-r -a`): a new table directory cannot
/// be watched. Its files must still be uploaded (they can be found by scanning it), and the
/// operator told which sysctl to raise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_limit_reached_at_runtime_does_not_lose_the_new_directory() {
    let _lock = h::SYSCTL_LOCK.lock().await;
    let s3 = common::s3();
    let prefix = s3.unique_prefix("watchlimit-live");
    let data = tempfile::tempdir().unwrap();
    let d = Running::start({
        let mut c = h::config(s3.store_options(), &prefix, vec![data.path().into()]);
        c.recursive = true;
        c.auto_add = true;
        c
    })
    .await;
    // No room for one more watch, for as short a time as possible (the limit is per user,
    // machine-wide).
    // The limit is lowered a little above what is in use, and the rest is taken by a filler
    // instance until the kernel says ENOSPC (the kernel's count need not match /proc).
    let limit = Sysctl::set("max_user_watches", inotify_watches_in_use() + 20);
    let filler = inotify::Inotify::init().unwrap();
    let fill = tempfile::tempdir().unwrap();
    let mut full = false;
    for i in 0..1000 {
        let d = fill.path().join(i.to_string());
        std::fs::create_dir(&d).unwrap();
        if let Err(e) = filler.watches().add(&d, inotify::WatchMask::CREATE) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            full = true;
            break;
        }
    }
    assert!(full, "could not reach the watch limit");
    let t = data.path().join("ks/new-0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&t).unwrap();
    let files = h::flush(&t, 1, 2000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(limit);
    drop(filler);
    let c = h::wait_caught_up(&s3, &prefix, &files, true, Duration::from_secs(20)).await;
    assert!(d.is_running());
    d.stop().await;
    c.assert_ok();
}

/// A sharper overflow: the daemon (the binary, `-r -a`) is frozen with SIGSTOP while 30 new
/// table directories are created and flushed, so the kernel queue (16 events) must overflow
/// and directory-creation events are lost for sure. After SIGCONT every file must be
/// uploaded, and so must files written later into those directories (they must be watched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inotify_overflow_while_the_daemon_is_frozen_loses_nothing_later_either() {
    let _lock = h::SYSCTL_LOCK.lock().await;
    let s3 = common::s3();
    let prefix = s3.unique_prefix("overflow-frozen");
    let data = tempfile::tempdir().unwrap();
    let limit = Sysctl::set("max_queued_events", 16);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tablesnap"))
        .args([
            "-n",
            h::HOST,
            "-p",
            &prefix,
            "-B",
            "-r",
            "-a",
            "--index-delay",
            "200",
        ])
        .arg(s3.dest())
        .arg(data.path())
        .envs(s3.cli_env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Ready: with -B the startup scan (after the watches are in place) uploads this file.
    let probe = data.path().join("probe-Data.db");
    h::write_file(&probe, b"probe");
    let c = h::wait_caught_up(&s3, &prefix, std::slice::from_ref(&probe), false, h::WAIT).await;
    drop(limit);
    c.assert_ok();
    let pid = child.id() as i32;
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..30u32 {
        let t = data
            .path()
            .join(format!("t{i}-0123456789abcdef0123456789abcdef"));
        std::fs::create_dir(&t).unwrap();
        files.extend(h::flush(&t, i + 1, 500));
        dirs.push(t);
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let c = h::wait_caught_up(&s3, &prefix, &files, true, Duration::from_secs(60)).await;
    let mut later = Vec::new();
    if c.ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, t) in dirs.iter().enumerate() {
            later.extend(h::flush(t, 100 + i as u32, 300));
        }
    }
    let c2 = h::wait_caught_up(&s3, &prefix, &later, true, Duration::from_secs(20)).await;
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "frozen overflow: {} files checked, {} lost; written later into the new directories: {} checked, {} lost",
        c.files,
        c.lost.len(),
        c2.files,
        c2.lost.len()
    );
    assert!(alive);
    c.assert_ok();
    c2.assert_ok();
}
