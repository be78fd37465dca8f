//! The first backfill's progress as an operator sees it: `tablesnap --once` run under a
//! pseudo-terminal (`script`) draws tableslurp's bar (files and bytes done out of the total,
//! rate, ETA) and ends with a summary line in readable units; without a terminal there is no
//! bar, only log lines. Real SSTables from `testdata/sstables` to a `file://` bucket, slowed
//! down with `--max-bandwidth` so that the bar is drawn mid-way.

mod common;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tablesnap");

/// A copy of the sample SSTables (only the keyspace directories) and its file count/bytes.
fn data() -> (tempfile::TempDir, usize, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let root = common::sample_sstables();
    let mut n = 0;
    for ks in ["hello", "Keyspace1", "legacy_tables", "baselines"] {
        n += common::copy_tree(root.join(ks), tmp.path().join(ks));
    }
    let bytes = common::manifest(&root).iter().map(|e| e.size).sum();
    assert_eq!(n, common::manifest(&root).len());
    (tmp, n, bytes)
}

/// The `N/TOTAL files` counts the bar showed, in order.
fn file_counts(out: &str, total: usize) -> Vec<usize> {
    let suffix = format!("/{total} files");
    out.match_indices(&suffix)
        .filter_map(|(i, _)| {
            let digits: String = out[..i]
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.chars().rev().collect::<String>().parse().ok()
        })
        .collect()
}

#[test]
fn once_on_a_terminal_draws_files_bytes_rate_and_eta() {
    let (data, n, bytes) = data();
    let bucket = tempfile::tempdir().unwrap();
    let typescript = bucket.path().join("typescript");
    let cmd = format!(
        "{BIN} --once -r -n demo --max-bandwidth 300K file://{}/b {}",
        bucket.path().display(),
        data.path().display()
    );
    let st = Command::new("script")
        .args(["-qec", &cmd])
        .arg(&typescript)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run script(1)");
    assert!(st.success(), "tablesnap under script: {st}");
    let out = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();

    // The bar: tableslurp's template, redrawn in place (ESC[2K), with the byte total.
    let total = tablesnap::progress::human_bytes(bytes);
    assert_eq!(total, "1.21 MiB");
    assert!(out.contains("\x1b[2K"), "no bar redraw in: {out}");
    assert!(
        out.contains(&format!("/{total} ")),
        "no byte total in the bar: {out}"
    );
    assert!(out.contains(" ETA "), "{out}");
    assert!(out.contains("KiB/s"), "no rate in the bar: {out}");
    let counts = file_counts(&out, n);
    assert!(counts.contains(&0), "the bar starts at 0/{n}: {counts:?}");
    assert!(
        counts.iter().any(|&c| c > 0 && c < n),
        "the bar was drawn mid-way: {counts:?}"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "file counts never go back: {counts:?}"
    );
    // The summary replaces the bar, with the rate in readable units.
    assert!(
        out.contains(&format!(
            "backfill: {n} files, {total} to check against the bucket"
        )),
        "{out}"
    );
    let done = out
        .lines()
        .find(|l| l.contains("backfill done:"))
        .unwrap_or_else(|| panic!("no summary in: {out}"));
    assert!(
        done.contains(&format!(
            "backfill done: {n}/{n} files, {total} uploaded in "
        )),
        "{done}"
    );
    assert!(
        done.contains("KiB/s)"),
        "rate at 300K/s is in KiB/s: {done}"
    );
    // And the files really are in the bucket.
    for e in common::manifest(common::sample_sstables()) {
        let key = format!("demo:{}/{}", data.path().display(), e.path);
        let stored = bucket.path().join("b").join(key.trim_start_matches('/'));
        assert_eq!(common::sha256_file(&stored), e.sha256, "{}", e.path);
    }
}

#[test]
fn without_a_terminal_there_is_no_bar_only_log_lines() {
    let (data, n, _) = data();
    let bucket = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/b", bucket.path().display());
    let (code, out) = common::run_bin(
        BIN,
        &[
            "--once",
            "-r",
            "-n",
            "demo",
            &dest,
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("\x1b["),
        "escape codes without a terminal: {out}"
    );
    assert!(
        out.contains(&format!("backfill: {n} files, 1.21 MiB to check")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "backfill done: {n}/{n} files, 1.21 MiB uploaded in "
        )),
        "{out}"
    );

    // A second run finds everything stored: nothing to upload, and it says so.
    let (code, out) = common::run_bin(
        BIN,
        &[
            "--once",
            "-r",
            "-n",
            "demo",
            &dest,
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("backfill done: {n}/{n} files, 0 B uploaded in ")),
        "{out}"
    );
}

/// The daemon's startup scan (`-B`) reports the same way, and says when the backfill is done
/// while it keeps running.
#[test]
fn the_startup_scan_of_the_daemon_reports_its_end_while_it_keeps_watching() {
    use std::io::{BufRead, BufReader};
    let (data, n, _) = data();
    let bucket = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["-B", "-r", "-n", "demo"])
        .arg(format!("file://{}/b", bucket.path().display()))
        .arg(data.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut log = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !log.contains("backfill done:") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                log.push_str(&l);
                log.push('\n');
            }
            Err(_) => panic!("no 'backfill done' within 60 s: {log}"),
        }
    }
    // Still running: the daemon goes on watching after its backfill.
    assert!(child.try_wait().unwrap().is_none(), "{log}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        log.contains(&format!("backfill: {n} files, 1.21 MiB to check")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "backfill done: {n}/{n} files, 1.21 MiB uploaded in "
        )),
        "{log}"
    );
}
