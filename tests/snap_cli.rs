//! The `tablesnap` binary as operators run it: original invocations, exit codes, one-line
//! errors that name the problem, secrets kept out of the output, clean SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tablesnap");

fn run(args: &[&str], env: &[(String, String)]) -> (i32, String) {
    common::run_bin(BIN, args, env)
}

#[test]
fn exclude_and_include_are_mutually_exclusive_like_the_original() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    let (code, out) = run(&["b", p, "-e", "x", "-i", "y"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot be used with"), "{out}");
}

#[test]
fn bad_regex_and_bad_event_names_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    let (code, out) = run(&["b", p, "-e", "("], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("regular expression"), "{out}");
    let (code, out) = run(&["b", p, "--listen-events", "IN_DELETE"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("IN_DELETE"), "{out}");
}

#[test]
fn missing_bucket_fails_fast_naming_it_without_leaking_the_secret() {
    let s3 = common::s3();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    let t0 = Instant::now();
    let (code, out) = run(
        &[
            "no-such-bucket-tablesnap",
            p,
            "-k",
            &s3.access_key,
            "-s",
            &s3.secret_key,
            "--endpoint-url",
            &s3.endpoint,
        ],
        &[],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no-such-bucket-tablesnap"), "{out}");
    assert!(out.contains("the bucket does not exist"), "{out}");
    assert!(!out.contains(&s3.secret_key), "secret leaked: {out}");
    assert!(
        out.contains("secret was given on the command line"),
        "argv secret warning: {out}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn wrong_credentials_fail_fast_without_leaking_them() {
    let s3 = common::s3();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    let env = vec![
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            "GK00000000000000000000dead".to_string(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "wrong-secret-value-1234".to_string(),
        ),
    ];
    let (code, out) = run(&[&s3.bucket, p, "--endpoint-url", &s3.endpoint], &env);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&s3.bucket) && out.contains("credentials"),
        "{out}"
    );
    assert!(!out.contains("wrong-secret-value-1234"), "{out}");
    assert!(
        !out.contains("secret was given on the command line"),
        "{out}"
    );
}

#[test]
fn unreachable_endpoint_is_a_clear_configuration_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    // A port nothing listens on (bound then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), "k".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "s".to_string()),
    ];
    let t0 = Instant::now();
    // With --once it is fatal (the daemon instead waits for the endpoint, still watching).
    let (code, out) = run(
        &[
            "--once",
            "bucket1",
            p,
            "--endpoint-url",
            &format!("http://127.0.0.1:{port}"),
        ],
        &env,
    );
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("s3://bucket1") && out.contains("endpoint"),
        "{out}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
}

#[test]
fn a_missing_watch_path_is_named() {
    let (code, out) = run(
        &["file:///tmp/tablesnap-cli-dest", "/nonexistent/data/dir"],
        &[],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("/nonexistent/data/dir"), "{out}");
}

#[test]
fn sigterm_stops_the_daemon_cleanly_with_a_summary() {
    let s3 = common::s3();
    let d = tempfile::tempdir().unwrap();
    let prefix = s3.unique_prefix("sigterm");
    let mut child = Command::new(BIN)
        .args([
            &s3.bucket,
            d.path().to_str().unwrap(),
            "-n",
            "node1",
            "-p",
            &prefix,
            "--index-delay",
            "600000",
        ])
        .env_clear()
        .envs(s3.cli_env())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is watching, then write a file and let it upload.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.contains("tablesnap started") {
        let l = rx
            .recv_timeout(deadline - Instant::now())
            .expect("no startup line");
        log.push_str(&l);
        log.push('\n');
    }
    std::fs::write(d.path().join("nb-1-big-TOC.txt"), b"Data.db\nTOC.txt\n").unwrap();
    std::fs::write(d.path().join("nb-1-big-Data.db"), b"DATA").unwrap();
    let key = format!("{prefix}node1:{}/nb-1-big-Data.db", d.path().display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::wait_until_async(
        Duration::from_secs(30),
        &key,
        || async { s3.raw_get(&key).await.as_deref() == Some(b"DATA".as_slice()) },
    ));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push_str(&l);
        log.push('\n');
    }
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("tablesnap stopped: 2 files (20 bytes) uploaded"),
        "{log}"
    );
    // The index was still in its (10 minute) quiet period: shutdown writes it.
    let index = rt
        .block_on(s3.raw_get(&format!("{key}-listdir.json")))
        .expect("index written at shutdown");
    assert_eq!(
        String::from_utf8(index).unwrap(),
        format!(
            r#"{{"{}": ["nb-1-big-Data.db", "nb-1-big-TOC.txt"]}}"#,
            d.path().display()
        )
    );
}

#[test]
fn tablesnap_syslog_sends_daemon_facility_lines_tagged_tablesnap() {
    let d = tempfile::tempdir().unwrap();
    let sock_path = d.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("nb-1-big-TOC.txt"), b"TOC.txt\n").unwrap();
    let dest = format!("file://{}", d.path().join("dest").display());
    let env = vec![
        ("TABLESNAP_SYSLOG".to_string(), "1".to_string()),
        (
            "TABLESNAP_SYSLOG_SOCKET".to_string(),
            sock_path.display().to_string(),
        ),
    ];
    let (code, out) = run(&["--once", "-n", "h", &dest, data.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("uploaded"),
        "with syslog, nothing is logged to stderr: {out}"
    );
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        let l = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = l.contains("tablesnap stopped");
        lines.push(l);
        if done {
            break;
        }
    }
    // <30> = facility DAEMON (3) * 8 + severity INFO (6).
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<30>tablesnap: ") && l.contains("uploaded")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with('<') && l.contains(">tablesnap: ")),
        "{lines:?}"
    );
}

#[test]
fn every_flag_can_come_from_the_environment_for_containers() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("nb-1-big-TOC.txt"), b"Index.db\nTOC.txt\n").unwrap();
    std::fs::write(data.join("nb-1-big-Index.db"), b"index").unwrap();
    let dest = d.path().join("dest");
    let env: Vec<(String, String)> = [
        ("TABLESNAP_BUCKET", format!("file://{}", dest.display())),
        ("TABLESNAP_ONCE", "true".into()),
        ("TABLESNAP_NAME", "envhost".into()),
        ("TABLESNAP_PREFIX", "pre/".into()),
        ("TABLESNAP_EXCLUDE", "Index".into()),
        ("TABLESNAP_THREADS", "2".into()),
        ("TABLESNAP_PATHS", data.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (code, out) = run(&[], &env);
    assert_eq!(code, 0, "{out}");
    let base = dest.join(format!("pre/envhost:{}", data.display()));
    assert_eq!(
        std::fs::read(base.join("nb-1-big-TOC.txt")).unwrap(),
        b"Index.db\nTOC.txt\n"
    );
    assert!(
        !base.join("nb-1-big-Index.db").exists(),
        "TABLESNAP_EXCLUDE ignored"
    );
}

#[test]
fn the_standard_aws_variables_are_enough_to_reach_an_http_endpoint() {
    let s3 = common::s3();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("nb-1-big-TOC.txt"), b"TOC.txt\n").unwrap();
    let prefix = s3.unique_prefix("awsenv");
    // Only what the AWS CLI would read: no --endpoint-url, no AWS_ALLOW_HTTP.
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), s3.secret_key.clone()),
        ("AWS_ENDPOINT_URL_S3".to_string(), s3.endpoint.clone()),
        ("AWS_DEFAULT_REGION".to_string(), s3.region.clone()),
    ];
    let (code, out) = run(
        &[
            "--once",
            "-n",
            "h",
            "-p",
            &prefix,
            &s3.bucket,
            d.path().to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}");
    let key = format!("{prefix}h:{}/nb-1-big-TOC.txt", d.path().display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(s3.raw_get(&key)).as_deref(),
        Some(b"TOC.txt\n".as_slice())
    );
}

/// Hosts of the original kept their keys where boto 2 looked: the AWS shared credentials
/// file or `~/.boto`. The same init script, no key in flags or environment, must still work.
#[test]
fn credentials_files_boto_read_still_work() {
    let s3 = common::s3();
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("nb-1-big-TOC.txt"), b"TOC.txt\n").unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [backup]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    let dir = d.path().to_str().unwrap();
    let base = |profile: &str| {
        vec![
            ("HOME".to_string(), home.path().display().to_string()),
            ("AWS_PROFILE".to_string(), profile.to_string()),
            ("AWS_REGION".to_string(), s3.region.clone()),
        ]
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let args = |prefix: &str| {
        vec![
            "--once".to_string(),
            "--endpoint-url".into(),
            s3.endpoint.clone(),
            "-n".into(),
            "h".into(),
            "-p".into(),
            prefix.to_string(),
            s3.bucket.clone(),
            dir.to_string(),
        ]
    };
    let run_with = |prefix: &str, env: &[(String, String)]| {
        let a = args(prefix);
        run(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)
    };

    // The named profile of ~/.aws/credentials.
    let prefix = s3.unique_prefix("credfile");
    let (code, out) = run_with(&prefix, &base("backup"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(".aws/credentials [backup]"), "{out}");
    assert!(!out.contains(&s3.secret_key), "secret in output: {out}");
    let key = format!("{prefix}h:{}/nb-1-big-TOC.txt", d.path().display());
    assert_eq!(
        rt.block_on(s3.raw_get(&key)).as_deref(),
        Some(b"TOC.txt\n".as_slice())
    );

    // A profile that is not there: one line naming it and the file, exit 3, nothing stored.
    let prefix = s3.unique_prefix("credfile");
    let (code, out) = run_with(&prefix, &base("nope"));
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("\"nope\"") && out.contains(".aws/credentials"),
        "{out}"
    );

    // No shared file: ~/.boto's [Credentials], as boto 2 read it.
    std::fs::remove_file(home.path().join(".aws/credentials")).unwrap();
    std::fs::write(
        home.path().join(".boto"),
        format!(
            "[Credentials]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    let prefix = s3.unique_prefix("credboto");
    let mut env = base("");
    env.retain(|(k, _)| k != "AWS_PROFILE");
    let (code, out) = run_with(&prefix, &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(".boto [Credentials]"), "{out}");
    let key = format!("{prefix}h:{}/nb-1-big-TOC.txt", d.path().display());
    assert_eq!(
        rt.block_on(s3.raw_get(&key)).as_deref(),
        Some(b"TOC.txt\n".as_slice())
    );
}
