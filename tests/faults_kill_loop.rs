//! The kill loop: a generator keeps writing SSTable-like files the way Cassandra does
//! (flushes: every component written in place next to a transaction log; compactions: a new
//! generation, then the old ones deleted; new table directories) while the `tablesnap`
//! binary (`-B -r -a`, through the fault proxy) is `kill -9`ed at random moments and
//! restarted, `TABLESNAP_KILL_LOOP_ITERATIONS` times (default 20). Then:
//!
//! 1. the multipart uploads the crashes left are counted (expected: a crash cannot abort
//!    them; a bucket lifecycle rule does) and aborted;
//! 2. a daemon is stopped with SIGTERM in the middle of a multipart upload: it must leave 0;
//! 3. `tablesnap --once -B -r` catches up;
//! 4. the invariant is checked over every file on disk: in the bucket byte-identical (and
//!    its md5sum metadata right), every index naming only objects that exist with the right
//!    size, every Data.db indexed; nothing stored twice.
//!
//! The counts are printed at the end (`--nocapture`).

mod common;
mod faults_harness;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use faults_harness as h;
use rand::Rng;

/// Files written by the generator, with their size (they never change once closed).
#[derive(Default)]
struct Written {
    sizes: HashMap<PathBuf, u64>,
    flushes: u64,
    compactions: u64,
    deleted: u64,
    tables: u64,
}

fn generator(root: PathBuf, stop: Arc<AtomicBool>, out: Arc<Mutex<Written>>) {
    let mut rng = rand::rng();
    let mut tables: Vec<(PathBuf, Vec<u32>)> = Vec::new();
    let mut next_gen = 1u32;
    let new_table = |n: usize, root: &Path| {
        let t = root.join(format!(
            "ks{}/table{n}-0123456789abcdef0123456789abcdef",
            n % 2
        ));
        std::fs::create_dir_all(&t).unwrap();
        t
    };
    for n in 0..2 {
        tables.push((new_table(n, &root), vec![]));
    }
    out.lock().unwrap().tables = 2;
    while !stop.load(Ordering::Relaxed) {
        // Now and then a new table (a new directory written into at once).
        if tables.len() < 6 && rng.random_ratio(1, 15) {
            let n = tables.len();
            tables.push((new_table(n, &root), vec![]));
            out.lock().unwrap().tables += 1;
        }
        let i = rng.random_range(0..tables.len());
        let dir = tables[i].0.clone();
        let data_len = if rng.random_ratio(1, 10) {
            rng.random_range((11 << 19)..(8 << 20))
        } else {
            rng.random_range(1000..200_000)
        };
        let generation = next_gen;
        next_gen += 1;
        let files = h::flush(&dir, generation, data_len);
        {
            let mut w = out.lock().unwrap();
            for f in &files {
                w.sizes.insert(
                    f.clone(),
                    std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
                );
            }
            w.flushes += 1;
        }
        tables[i].1.push(generation);
        // A compaction once a table has three generations: the new one is written (above),
        // then the old ones are deleted.
        if tables[i].1.len() >= 3 {
            let keep_from = tables[i].1.len() - 1;
            let olds: Vec<u32> = tables[i].1.drain(..keep_from).collect();
            let mut n = 0;
            for g in olds {
                for c in h::COMPONENTS {
                    if std::fs::remove_file(dir.join(format!("nb-{g}-big-{c}"))).is_ok() {
                        n += 1;
                    }
                }
            }
            let mut w = out.lock().unwrap();
            w.compactions += 1;
            w.deleted += n;
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
    }
}

struct Bin {
    prefix: String,
    endpoint: String,
    data: PathBuf,
    log: PathBuf,
}

impl Bin {
    fn command(&self, extra: &[&str]) -> tokio::process::Command {
        let s3 = common::s3();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_tablesnap"));
        c.args([
            "-n",
            h::HOST,
            "-p",
            &self.prefix,
            "--endpoint-url",
            &self.endpoint,
        ])
        .args(["--index-delay", "200", "--multipart-chunk-size", "5"])
        .args(["--max-upload-size", "5"])
        .args(extra)
        .arg(s3.dest())
        .arg(&self.data)
        .envs(s3.cli_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
        c
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing() {
    let iterations: u32 = std::env::var("TABLESNAP_KILL_LOOP_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let s3 = common::s3();
    let proxy = Proxy::start(&s3.endpoint).await;
    let prefix = s3.unique_prefix("killloop");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bin = Bin {
        prefix: prefix.clone(),
        endpoint: proxy.url(),
        data: data.clone(),
        log: work.path().join("tablesnap.log"),
    };
    let t_start = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(Written::default()));
    let gen_thread = {
        let (d, s, w) = (data.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || generator(d, s, w))
    };

    // ---- the loop: start, let it work for a random while, kill -9 --------------------------
    let mut kills = 0u32;
    let mut mid_multipart = 0u32;
    let mut rng = rand::rng();
    for i in 0..iterations {
        proxy.pass();
        let before = proxy.counts().requests;
        let mut child = bin.command(&["-B", "-r", "-a"]).spawn().unwrap();
        let t0 = Instant::now();
        let alive_for = Duration::from_millis(rng.random_range(200..2000));
        // A fault now and then, on top of the crashes; only once the startup probe has been
        // answered (a failed probe makes the daemon exit: see faults_network.rs).
        let fault = rng.random_range(0..6);
        if fault < 3 {
            while proxy.counts().requests < before + 2 && t0.elapsed() < alive_for {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            match fault {
                0 => proxy.fail_next(rng.random_range(1..6), 503),
                1 => proxy.fail_next(rng.random_range(1..4), 500),
                _ => proxy.reset_mid_body(1 << 20, 1),
            }
        }
        tokio::time::sleep(alive_for.saturating_sub(t0.elapsed())).await;
        if i % 4 == 3 {
            // Every 4th kill lands in the middle of a multipart upload (a large Data.db).
            let parts = proxy.counts().parts;
            let dir = data.join(format!("ks1/large{i}-0123456789abcdef0123456789abcdef"));
            std::fs::create_dir_all(&dir).unwrap();
            let f = dir.join(format!("nb-{i}-big-Data.db"));
            let body = h::bytes(1000 + i as u64, 8 << 20);
            written
                .lock()
                .unwrap()
                .sizes
                .insert(f.clone(), body.len() as u64);
            h::write_file(&f, &body);
            // As Cassandra finishes an SSTable: its TOC after the data.
            let toc = dir.join(format!("nb-{i}-big-TOC.txt"));
            written.lock().unwrap().sizes.insert(toc.clone(), 16);
            h::write_file(&toc, b"Data.db\nTOC.txt\n");
            let t1 = Instant::now();
            while proxy.counts().parts == parts && t1.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            mid_multipart += (proxy.counts().parts > parts) as u32;
        }
        if let Some(st) = child.try_wait().unwrap() {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "tablesnap exited by itself ({st}) in iteration {i}:\n{}",
                bin.log_tail()
            );
        }
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    gen_thread.join().expect("generator panicked");
    proxy.pass();
    let counts_loop = proxy.counts();

    // ---- what the crashes left --------------------------------------------------------------
    let crash_left = h::multipart_uploads(&s3, &prefix);
    h::abort_uploads(&s3, &crash_left);

    // ---- a clean SIGTERM in the middle of a multipart upload leaves none -------------------
    let sig_dir = data.join("ks0/sigterm-0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&sig_dir).unwrap();
    let mut child = bin
        .command(&["-B", "-r", "-a", "--shutdown-timeout", "1"])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.delay(Duration::from_millis(1500));
    let started_before = proxy.counts().multipart_started;
    let parts_before = proxy.counts().parts;
    h::write_file(&sig_dir.join("nb-1-big-Data.db"), &h::bytes(99, 21 << 20));
    h::write_file(&sig_dir.join("nb-1-big-TOC.txt"), b"Data.db\nTOC.txt\n");
    common::wait_until_async(
        Duration::from_secs(60),
        "a multipart part in flight",
        || async {
            let c = proxy.counts();
            c.multipart_started > started_before && c.parts > parts_before
        },
    )
    .await;
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let st = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("tablesnap did not stop on SIGTERM")
        .unwrap();
    assert!(st.success(), "SIGTERM exit: {st}\n{}", bin.log_tail());
    proxy.pass();
    let after_sigterm = h::multipart_uploads(&s3, &prefix);

    // ---- catch up ---------------------------------------------------------------------------
    let mut once_runs = 0;
    loop {
        once_runs += 1;
        let st = tokio::time::timeout(
            Duration::from_secs(120),
            bin.command(&["--once", "-B", "-r"]).status(),
        )
        .await
        .expect("--once did not finish")
        .unwrap();
        if st.success() {
            break;
        }
        assert!(
            once_runs < 3,
            "--once failed {once_runs} times:\n{}",
            bin.log_tail()
        );
    }

    // ---- the invariant over every file on disk --------------------------------------------
    let files = h::local_files(&data);
    let sizes = written.lock().unwrap().sizes.clone();
    let c = h::check(&s3, &prefix, &files, &sizes, true).await;
    let counts = proxy.counts();
    let w = written.lock().unwrap();
    eprintln!("==== kill loop ({:?}) ====", t_start.elapsed());
    eprintln!(
        "kills survived:            {kills} ({mid_multipart} while a multipart part was in flight)"
    );
    eprintln!(
        "faults injected:           {} during the loop ({} canned 5xx, {} resets mid-body), {} in all (with the SIGTERM phase's delayed responses)",
        counts_loop.faults(),
        counts_loop.errors,
        counts_loop.resets_mid_body,
        counts.faults()
    );
    eprintln!(
        "generator:                 {} flushes, {} compactions, {} files written, {} deleted, {} tables",
        w.flushes,
        w.compactions,
        w.sizes.len(),
        w.deleted,
        w.tables
    );
    eprintln!("files checked:             {}", c.files);
    eprintln!("files lost:                {}", c.lost.len());
    eprintln!(
        "indexes checked:           {} ({} bad, {} Data.db without index, {} written after their Data.db was compacted away)",
        c.indexes,
        c.bad_indexes.len(),
        c.missing_indexes.len(),
        c.without_own_data.len()
    );
    eprintln!(
        "orphan multipart uploads:  {} left by the kill -9s (aborted by the test), {} after SIGTERM",
        crash_left.len(),
        after_sigterm.len()
    );
    eprintln!(
        "re-uploads of stored keys: {} {:?}",
        counts.reuploads,
        proxy.reuploaded()
    );
    eprintln!(
        "S3 requests through proxy: {} ({} PUT, {} parts, {} multipart started, {} completed, {} aborted); --once runs: {once_runs}",
        counts.requests,
        counts.puts,
        counts.parts,
        counts.multipart_started,
        counts.multipart_completed,
        counts.multipart_aborted
    );
    assert!(kills >= iterations.min(20));
    assert!(c.files > 0);
    c.assert_ok();
    assert!(
        after_sigterm.is_empty(),
        "multipart uploads left after a clean SIGTERM: {after_sigterm:?}"
    );
    assert_eq!(
        counts.reuploads,
        0,
        "files already stored were uploaded again: {:?}",
        proxy.reuploaded()
    );
}
