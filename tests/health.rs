//! `GET /healthz` on the metrics address (issue #19, item 6): what a liveness or readiness
//! probe (Kubernetes, a load balancer, a monitoring agent) asks. 200 while the main loop is
//! alive and the destination takes uploads; 503, naming why, once every upload has failed at
//! the destination for longer than `--health-failing-after`. Through the real binary, with a
//! `file://` bucket and an S3 endpoint that refuses connections on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SNAP: &str = env!("CARGO_BIN_EXE_tablesnap");

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// (status code, body) of `GET path`, or None while nothing listens yet.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    Some((code, out.split("\r\n\r\n").nth(1)?.to_string()))
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
    Daemon(
        Command::new(SNAP)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Polls `/healthz` until `want(code, body)` or `limit` (a bound on waiting, not a target).
fn wait_health(
    addr: SocketAddr,
    limit: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < limit {
        if let Some((code, body)) = get(addr, "/healthz") {
            if want(code, &body) {
                return (code, body);
            }
            last = Some((code, body));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("/healthz never answered as wanted within {limit:?}; last: {last:?}");
}

#[test]
fn healthz_is_200_while_uploads_succeed() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let dest = format!("file://{}", bucket.path().display());
    let a = addr.to_string();
    let _d = start(
        &[
            "-n",
            "h1",
            "--metrics-addr",
            &a,
            &dest,
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    let (code, body) = wait_health(addr, Duration::from_secs(30), |c, _| c == 200);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // /healthz answers from the start, before the watches are in place (it says the
    // daemon is alive, not that it is watching): a file written before then is only found
    // by -B or a rescan. Wait until the data directory is watched.
    let t0 = Instant::now();
    while !get(addr, "/metrics").is_some_and(|(_, m)| {
        m.lines()
            .any(|l| l.starts_with("tablesnap_watched_directories ") && !l.ends_with(" 0"))
    }) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the data directory is never watched"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(data.path().join("a.txt"), b"x").unwrap();
    let key = bucket
        .path()
        .join(format!("h1:{}/a.txt", data.path().display()));
    let t0 = Instant::now();
    while !key.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(key.exists(), "a.txt was not stored");
    assert_eq!(get(addr, "/healthz").unwrap(), (200, "ok\n".into()));
    let (code, body) = get(addr, "/nothing").unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("/healthz"), "{body}");
}

#[test]
fn healthz_is_503_once_the_destination_has_failed_for_longer_than_the_threshold() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // An endpoint where nothing listens: every upload fails (connection refused).
    let endpoint = format!("http://{}", free_addr());
    let a = addr.to_string();
    let _d = start(
        &[
            "-n",
            "h1",
            "--endpoint-url",
            &endpoint,
            "--metrics-addr",
            &a,
            "--health-failing-after",
            "2",
            "s3://backups",
            data.path().to_str().unwrap(),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret"),
        ],
    );
    let (code, body) = wait_health(addr, Duration::from_secs(30), |c, _| c == 200);
    assert_eq!(
        (code, body.as_str()),
        (200, "ok\n"),
        "healthy before any upload failed"
    );
    std::fs::write(data.path().join("a.txt"), b"x").unwrap();
    // object_store retries a request for a while before it fails: bound the wait generously.
    let (code, body) = wait_health(addr, Duration::from_secs(300), |c, _| c == 503);
    assert_eq!(code, 503);
    assert!(
        body.starts_with("destination failing: no upload has succeeded for "),
        "{body}"
    );
    assert!(!body.contains("wJalrXUtnFEMI-secret"), "{body}");
}
