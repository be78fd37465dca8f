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
