//! The shipped Prometheus alert rules and a real Prometheus scraping the daemon (issue #19,
//! item 6). `promtool` checks `packaging/prometheus/tablesnap.rules.yml` and runs its unit
//! tests (`tablesnap.rules.test.yml`: each alert fires on the series it is for and stays
//! quiet on the others); then Prometheus (Debian's `prometheus` package) scrapes a running
//! tablesnap on 127.0.0.1, loads the rules, and its query API returns the daemon's numbers.
//! Without Prometheus installed the tests say so and pass, except where
//! `TABLESNAP_REQUIRE_PROMETHEUS` is set (CI), where they fail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SNAP: &str = env!("CARGO_BIN_EXE_tablesnap");

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus")
}

/// The tool on PATH (or in /usr/bin), None (saying so) where it is not installed.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var_os("TABLESNAP_REQUIRE_PROMETHEUS").is_some_and(|v| !v.is_empty()) {
            panic!(
                "TABLESNAP_REQUIRE_PROMETHEUS is set but {name} is not installed (apt-get install prometheus)"
            );
        }
        eprintln!("skipping: {name} not installed (apt-get install prometheus)");
    }
    found
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        vec!["check", "rules", "tablesnap.rules.yml"],
        vec!["test", "rules", "tablesnap.rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(rules_dir())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}: {text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}: {text}");
    }
}

/// The body of `GET path` from Prometheus' HTTP API.
fn api(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Prometheus answers small JSON bodies whole; a chunked one is unwrapped here.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut whole = String::new();
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            whole.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        return Some(whole);
    }
    Some(body.to_string())
}

/// The value of an instant query with one result, once there is one.
fn query(addr: SocketAddr, promql: &str) -> Option<f64> {
    let enc: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = api(addr, &format!("/api/v1/query?query={enc}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let r = v["data"]["result"].as_array()?;
    r.first()?["value"][1].as_str()?.parse().ok()
}

fn wait<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_loads_the_rules() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let _daemon = Kill(
        Command::new(SNAP)
            .args([
                "-n",
                "h1",
                "--metrics-addr",
                &metrics.to_string(),
                &format!("file://{}", bucket.path().display()),
                data.path().to_str().unwrap(),
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rules = rules_dir().join("tablesnap.rules.yml");
    let cfg = work.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tablesnap\n    static_configs:\n      - targets: ['{metrics}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let web = free_addr();
    let _prom = Kill(
        Command::new(prometheus)
            .args([
                &format!("--config.file={}", cfg.display()),
                &format!("--storage.tsdb.path={}", work.path().join("tsdb").display()),
                &format!("--web.listen-address={web}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Bounds on waiting for the processes, not speed targets.
    let limit = Duration::from_secs(60);
    let up = wait(limit, "Prometheus scraping tablesnap (up == 1)", || {
        query(web, "up{job=\"tablesnap\"}").filter(|v| *v == 1.0)
    });
    assert_eq!(up, 1.0);
    std::fs::write(data.path().join("a.txt"), b"hello").unwrap();
    let files = wait(
        limit,
        "tablesnap_files_uploaded_total == 1 in Prometheus",
        || query(web, "tablesnap_files_uploaded_total{job=\"tablesnap\"}").filter(|v| *v == 1.0),
    );
    assert_eq!(files, 1.0);
    let bytes = query(web, "tablesnap_bytes_uploaded_total{job=\"tablesnap\"}").unwrap();
    assert_eq!(bytes, 5.0);
    // The shipped rules load and evaluate against the real series, and none fires.
    let rules = wait(limit, "the tablesnap rule group evaluated", || {
        let body = api(web, "/api/v1/rules")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let g = v["data"]["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == "tablesnap")?
            .clone();
        g["rules"]
            .as_array()?
            .iter()
            .all(|r| r["health"] == "ok")
            .then_some(g)
    });
    assert_eq!(rules["rules"].as_array().unwrap().len(), 7, "{rules}");
    for r in rules["rules"].as_array().unwrap() {
        assert_eq!(r["state"], "inactive", "{r}");
    }
}
