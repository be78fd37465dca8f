//! Prometheus metrics for the daemon (`--metrics-addr`): what an operator alerts on. The
//! most important one is `tablesnap_oldest_pending_seconds`, the age of the oldest file not
//! yet durable: the recovery point this node would lose if its disks died now.
//!
//! Served by a deliberately tiny HTTP/1.1 responder, no framework needed: `GET /metrics`,
//! and `GET /healthz` for liveness and readiness probes (Kubernetes, load balancers,
//! monitoring agents): 200 while the main loop is alive and the destination takes uploads;
//! 503, with the reason in the body, when the loop has not come round for
//! [`LOOP_STALLED`] or every upload has been failing at the destination for longer than
//! `--health-failing-after`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::upload::Stats;

/// Failure kinds, as label values.
pub const FAILURE_KINDS: [&str; 8] = [
    "transient",
    "denied",
    "not_found",
    "local",
    "changed",
    "unstorable",
    "collision",
    "other",
];
/// Rescan reasons, as label values.
pub const RESCAN_REASONS: [&str; 4] = ["startup", "overflow", "interval", "watch_error"];

/// Daemon-level counters and gauges (the uploader keeps its own [`Stats`]).
#[derive(Debug, Default)]
pub struct Metrics {
    pub files_present: AtomicU64,
    pub failures: [AtomicU64; 8],
    pub retries: AtomicU64,
    pub rescans: [AtomicU64; 4],
    pub queue_depth: AtomicU64,
    pub in_flight: AtomicU64,
    pub pending_indexes: AtomicU64,
    pub watched_dirs: AtomicU64,
    /// Unix time (ms) when the oldest file not yet durable was first seen; 0 = none.
    pub oldest_pending_ms: AtomicU64,
    /// Unix time (ms) of the last successful upload; 0 = none yet.
    pub last_success_ms: AtomicU64,
    /// Unix time (ms) of the first failure at the destination since the last success (or
    /// since start); stale once `last_success_ms` is later. 0 = none.
    pub failing_since_ms: AtomicU64,
    /// Unix time (ms) the main loop last came round (its heartbeat); 0 = not started.
    pub loop_alive_ms: AtomicU64,
    /// How long uploads may fail at the destination before `/healthz` says 503 (ms);
    /// 0 = never for that reason.
    pub failing_after_ms: AtomicU64,
}

/// A main loop that has not come round for this long is stalled (it beats every
/// [`HEARTBEAT`] even when idle).
pub const LOOP_STALLED: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the main loop records that it is alive.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// Default of `--health-failing-after`.
pub const DEFAULT_FAILING_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Failure kinds that are the destination's (not this node's disk, not a file's name).
const DESTINATION_KINDS: [&str; 4] = ["transient", "denied", "not_found", "other"];

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Metrics {
    pub fn failure(&self, kind: &str) {
        self.failure_at(kind, now_ms());
    }

    fn failure_at(&self, kind: &str, now: u64) {
        let i = FAILURE_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(FAILURE_KINDS.len() - 1);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
        if DESTINATION_KINDS.contains(&FAILURE_KINDS[i]) {
            let since = self.failing_since_ms.load(Ordering::Relaxed);
            if since == 0 || self.last_success_ms.load(Ordering::Relaxed) >= since {
                self.failing_since_ms.store(now, Ordering::Relaxed);
            }
        }
    }

    /// The main loop's heartbeat.
    pub fn alive(&self) {
        self.loop_alive_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// What `/healthz` answers at `now` (ms): 200 "ok", or 503 and why.
    pub fn health(&self, now: u64) -> (u16, String) {
        let alive = self.loop_alive_ms.load(Ordering::Relaxed);
        let stalled = LOOP_STALLED.as_millis() as u64;
        if alive != 0 && now.saturating_sub(alive) > stalled {
            return (
                503,
                format!(
                    "main loop stalled: last came round {} s ago",
                    now.saturating_sub(alive) / 1000
                ),
            );
        }
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        let after = self.failing_after_ms.load(Ordering::Relaxed);
        let failing = since != 0 && self.last_success_ms.load(Ordering::Relaxed) < since;
        if failing && after != 0 && now.saturating_sub(since) > after {
            return (
                503,
                format!(
                    "destination failing: no upload has succeeded for {} s since the first failure (see the log and tablesnap_upload_failures_total)",
                    now.saturating_sub(since) / 1000
                ),
            );
        }
        (200, "ok".into())
    }

    pub fn rescan(&self, reason: &str) {
        if let Some(i) = RESCAN_REASONS.iter().position(|k| *k == reason) {
            self.rescans[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, up: &Stats) -> String {
        let mut o = String::with_capacity(2048);
        let mut one = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        one(
            "tablesnap_files_uploaded_total",
            "counter",
            "Files stored in the bucket.",
            l(&up.files_uploaded),
        );
        one(
            "tablesnap_bytes_uploaded_total",
            "counter",
            "Bytes of files stored in the bucket.",
            l(&up.bytes_uploaded),
        );
        one(
            "tablesnap_files_already_stored_total",
            "counter",
            "Files found already stored with the same size.",
            l(&self.files_present),
        );
        one(
            "tablesnap_files_vanished_total",
            "counter",
            "Files deleted (compacted) before they could be uploaded.",
            l(&up.files_vanished),
        );
        one(
            "tablesnap_files_superseded_total",
            "counter",
            "Stored objects kept under a tablesnap-was- name before a reused SSTable name took other bytes.",
            l(&up.files_superseded),
        );
        one(
            "tablesnap_indexes_written_total",
            "counter",
            "-listdir.json indexes written.",
            l(&up.indexes_written),
        );
        one(
            "tablesnap_multipart_aborted_total",
            "counter",
            "Multipart uploads aborted after a failure or shutdown.",
            l(&up.multipart_aborted),
        );
        one(
            "tablesnap_corrupt_sstables_total",
            "counter",
            "Data.db files whose bytes on this disk do not match their SSTable's own Digest (corrupt here; uploaded anyway).",
            l(&up.corrupt_sstables),
        );
        one(
            "tablesnap_retries_total",
            "counter",
            "Uploads scheduled again after a failure.",
            l(&self.retries),
        );
        one(
            "tablesnap_queue_depth",
            "gauge",
            "Files waiting to be uploaded (queued or waiting to retry).",
            l(&self.queue_depth),
        );
        one(
            "tablesnap_uploads_in_flight",
            "gauge",
            "Uploads and index writes running now.",
            l(&self.in_flight),
        );
        one(
            "tablesnap_pending_indexes",
            "gauge",
            "Directories whose index is waiting to be written.",
            l(&self.pending_indexes),
        );
        one(
            "tablesnap_watched_directories",
            "gauge",
            "Directories watched with inotify.",
            l(&self.watched_dirs),
        );
        let now = now_ms();
        let oldest = self.oldest_pending_ms.load(Ordering::Relaxed);
        let age = if oldest == 0 {
            0.0
        } else {
            now.saturating_sub(oldest) as f64 / 1000.0
        };
        one(
            "tablesnap_oldest_pending_seconds",
            "gauge",
            "Age of the oldest file not yet durable (the recovery point lost if the node died now).",
            age,
        );
        let last = self.last_success_ms.load(Ordering::Relaxed);
        one(
            "tablesnap_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful upload (0: none yet).",
            last as f64 / 1000.0,
        );
        let _ = writeln!(
            o,
            "# HELP tablesnap_upload_failures_total Failed upload attempts by kind.\n# TYPE tablesnap_upload_failures_total counter"
        );
        for (k, a) in FAILURE_KINDS.iter().zip(&self.failures) {
            let _ = writeln!(
                o,
                "tablesnap_upload_failures_total{{kind=\"{k}\"}} {}",
                a.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP tablesnap_rescans_total Rescans of the watched directories by reason.\n# TYPE tablesnap_rescans_total counter"
        );
        for (k, a) in RESCAN_REASONS.iter().zip(&self.rescans) {
            let _ = writeln!(
                o,
                "tablesnap_rescans_total{{reason=\"{k}\"}} {}",
                a.load(Ordering::Relaxed)
            );
        }
        o
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The pause after a failed accept: 50 ms, doubling, at most 2 s.
fn accept_backoff(prev: std::time::Duration) -> std::time::Duration {
    (prev * 2).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(2),
    )
}

/// Binds `addr` now (so a bad address fails at startup) and serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    uploader: Arc<crate::upload::Uploader>,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        // accept() fails again at once while the cause lasts (EMFILE: out of descriptors):
        // back off instead of spinning a core, and say so once per streak.
        let mut pause = std::time::Duration::ZERO;
        loop {
            let (mut sock, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => { pause = std::time::Duration::ZERO; s }
                    Err(e) => {
                        if pause.is_zero() {
                            tracing::warn!("metrics endpoint cannot accept connections: {e}; backing off");
                        }
                        pause = accept_backoff(pause);
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = cancel.cancelled() => return,
                        }
                        continue;
                    }
                },
                _ = cancel.cancelled() => return,
            };
            let metrics = metrics.clone();
            let uploader = uploader.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while n < buf.len() {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let line = req.lines().next().unwrap_or("");
                let resp = if line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?")
                {
                    let body = metrics.render(&uploader.stats);
                    response("200 OK", "text/plain; version=0.0.4", &body)
                } else if line.starts_with("GET /healthz ") || line.starts_with("GET /healthz?") {
                    let (code, why) = metrics.health(now_ms());
                    let status = if code == 200 {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    response(status, "text/plain", &format!("{why}\n"))
                } else {
                    let body = "tablesnap: metrics are at /metrics, health at /healthz\n";
                    response("404 Not Found", "text/plain", body)
                };
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod health_tests {
    use super::*;

    /// `/healthz`: ok until the destination has failed (and nothing succeeded) for longer
    /// than the threshold, ok again after a success; a loop that stops beating is stalled.
    #[test]
    fn health_follows_the_destination_and_the_loop() {
        let m = Metrics::default();
        m.failing_after_ms.store(60_000, Ordering::Relaxed);
        let t0 = now_ms();
        m.alive();
        assert_eq!(m.health(t0).0, 200);
        m.failure("local"); // this node's disk, not the destination
        assert_eq!(
            m.health(t0 + 3_600_000 - 1).0,
            503,
            "the loop did not beat for an hour"
        );
        m.alive();
        let t1 = now_ms();
        assert_eq!(
            m.health(t1 + 61_000).0,
            503,
            "loop silent for 61 s is stalled"
        );
        m.alive();
        assert_eq!(
            m.health(now_ms()).0,
            200,
            "a local failure is not the destination's"
        );
        let since = now_ms();
        m.failure_at("transient", since);
        assert_eq!(m.failing_since_ms.load(Ordering::Relaxed), since);
        m.loop_alive_ms.store(since + 59_000, Ordering::Relaxed);
        let (code, why) = m.health(since + 59_000);
        assert_eq!(code, 200, "{why}");
        let later = since + 61_000;
        m.loop_alive_ms.store(later, Ordering::Relaxed);
        let (code, why) = m.health(later);
        assert_eq!(code, 503, "{why}");
        assert!(why.starts_with("destination failing"), "{why}");
        // A success ends it; a new failure starts a new count.
        m.last_success_ms.store(later + 1, Ordering::Relaxed);
        assert_eq!(m.health(later + 2).0, 200);
        m.loop_alive_ms.store(later + 10, Ordering::Relaxed);
        m.failure_at("denied", later + 5);
        let again = m.failing_since_ms.load(Ordering::Relaxed);
        assert_eq!(
            again,
            later + 5,
            "a failure after a success starts a new streak"
        );
        m.failure_at("transient", later + 7);
        assert_eq!(
            m.failing_since_ms.load(Ordering::Relaxed),
            again,
            "the streak goes on"
        );
        // 0 turns the destination rule off.
        m.failing_after_ms.store(0, Ordering::Relaxed);
        m.loop_alive_ms.store(again + 3_600_000, Ordering::Relaxed);
        assert_eq!(m.health(again + 3_600_000).0, 200);
    }
}

#[cfg(test)]
mod accept_tests {
    use super::accept_backoff;
    use std::time::Duration;

    /// Regression (issue #10, defect 10): accept errors (EMFILE) spun a core at 100 %.
    #[test]
    fn accept_errors_back_off_up_to_two_seconds() {
        let mut p = Duration::ZERO;
        let mut total = Duration::ZERO;
        for _ in 0..20 {
            p = accept_backoff(p);
            total += p;
        }
        assert_eq!(accept_backoff(Duration::ZERO), Duration::from_millis(50));
        assert_eq!(p, Duration::from_secs(2));
        // Twenty failures in a row take seconds, not microseconds.
        assert!(total > Duration::from_secs(20), "{total:?}");
    }
}
