//! With no credentials anywhere (no flags, no environment, no credential files, and an
//! instance metadata service that does not answer), each tool says so in one line, naming
//! what it tried and what to set, and exits 3. The metadata endpoint is a closed port on
//! 127.0.0.1 (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, or object_store's `AWS_METADATA_ENDPOINT`),
//! so nothing leaves the machine.

mod common;

use std::net::TcpListener;

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env(home: &std::path::Path, metadata_var: &str, metadata: &str) -> Vec<(String, String)> {
    vec![
        ("HOME".into(), home.display().to_string()),
        (metadata_var.into(), metadata.into()),
        // Never reached: the credentials are missing before any request to the bucket.
        (
            "AWS_ENDPOINT_URL".into(),
            format!("http://127.0.0.1:{}", closed_port()),
        ),
        // boto's system-wide file, if this machine has one, must not be read.
        (
            "BOTO_CONFIG".into(),
            home.join("boto.cfg").display().to_string(),
        ),
    ]
}

fn assert_no_credentials_line(out: &str, code: i32, metadata: &str, home: &std::path::Path) {
    assert_eq!(code, 3, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {out}");
    let line = errors[0];
    for want in [
        "no credentials for s3://backups",
        "-k/-s",
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        &format!("{}/.aws/credentials [default]", home.display()),
        &format!("{}/boto.cfg", home.display()),
        "web identity or container variables",
        &format!("instance metadata service at {metadata} gave none"),
        "Connection refused",
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(line.contains(want), "missing {want:?} in {line}");
    }
    assert!(!out.contains("169.254"), "{out}");
    assert!(!out.contains("access denied"), "{out}");
}

#[test]
fn each_tool_says_no_credentials_were_found_and_exits_3() {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    for (var, bin, args) in [
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            env!("CARGO_BIN_EXE_tablesnap"),
            vec!["-n", "h1", "backups", data],
        ),
        (
            "AWS_METADATA_ENDPOINT",
            env!("CARGO_BIN_EXE_tablesnap"),
            vec!["--once", "-n", "h1", "s3://backups", data],
        ),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            env!("CARGO_BIN_EXE_tableslurp"),
            vec!["-n", "h1", "--list", "s3://backups"],
        ),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            env!("CARGO_BIN_EXE_tablechop"),
            vec!["s3://backups", "/var/lib/cassandra/data", "7"],
        ),
    ] {
        let metadata = format!("http://127.0.0.1:{}", closed_port());
        let (code, out) = common::run_bin(bin, &args, &env(home.path(), var, &metadata));
        assert_no_credentials_line(&out, code, &metadata, home.path());
    }
}

/// Credentials that exist but are refused are a different problem: not "no credentials".
#[test]
fn present_credentials_are_not_reported_missing() {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let metadata = format!("http://127.0.0.1:{}", closed_port());
    let mut e = env(home.path(), "AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata);
    e.push(("AWS_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into()));
    e.push((
        "AWS_SECRET_ACCESS_KEY".into(),
        "wJalrXUtnFEMI-secret".into(),
    ));
    let (code, out) = common::run_bin(
        env!("CARGO_BIN_EXE_tablesnap"),
        &[
            "--once",
            "-n",
            "h1",
            "backups",
            data.path().to_str().unwrap(),
        ],
        &e,
    );
    assert_eq!(code, 3, "{out}");
    assert!(!out.contains("no credentials"), "{out}");
    assert!(out.contains("the endpoint did not answer"), "{out}");
    assert!(!out.contains("wJalrXUtnFEMI-secret"), "{out}");
}

/// A metadata service on 127.0.0.1 that accepts connections and never answers (as
/// 169.254.169.254 behaves on many hosts outside EC2); counts the connections it took.
fn silent_metadata_service() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = taken.clone();
    std::thread::spawn(move || {
        let mut held = vec![];
        for c in l.incoming().flatten() {
            t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(c);
        }
    });
    (url, taken)
}

/// Runs tablechop (the tool that does the least before asking for credentials) and gives
/// it at most `limit` to exit: (code, output), or a panic naming how long it hung.
fn chop_within(env: &[(String, String)], limit: std::time::Duration) -> (i32, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tablechop"))
        .args(["s3://backups", "/var/lib/cassandra/data", "7"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("tablechop was still waiting for the metadata service after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Outside EC2 the tools used to wait for object_store's request timeout and retries (about
/// two minutes) before saying "no credentials"; the metadata service now gets a second to
/// answer, as in the AWS SDKs. 30 s is a bound on hanging, not a speed target.
#[test]
fn a_metadata_service_that_never_answers_gets_a_second_not_two_minutes() {
    let home = tempfile::tempdir().unwrap();
    let (url, taken) = silent_metadata_service();
    let e = env(home.path(), "AWS_EC2_METADATA_SERVICE_ENDPOINT", &url);
    let (code, out) = chop_within(&e, std::time::Duration::from_secs(30));
    assert_eq!(code, 3, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {out}");
    assert!(
        errors[0].contains(&format!(
            "instance metadata service at {url} gave none (no answer within 1 s)"
        )),
        "{out}"
    );
    assert!(
        taken.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "never asked: {out}"
    );
}

/// `AWS_EC2_METADATA_DISABLED=true` (the AWS SDKs' and CLI's switch) is honoured: the
/// metadata service is not asked at all.
#[test]
fn aws_ec2_metadata_disabled_is_honoured() {
    let home = tempfile::tempdir().unwrap();
    let (url, taken) = silent_metadata_service();
    let mut e = env(home.path(), "AWS_EC2_METADATA_SERVICE_ENDPOINT", &url);
    e.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    let (code, out) = chop_within(&e, std::time::Duration::from_secs(30));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no credentials for s3://backups"), "{out}");
    assert!(out.contains("(AWS_EC2_METADATA_DISABLED is set)"), "{out}");
    assert_eq!(
        taken.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "asked: {out}"
    );
}
