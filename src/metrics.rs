//! Prometheus metrics for the daemon (`--metrics-addr`): what an operator alerts on. The
//! most important one is `tablesnap_oldest_pending_seconds`, the age of the oldest file not
//! yet durable: the recovery point this node would lose if its disks died now.
//!
//! Served by a deliberately tiny HTTP/1.1 responder (GET /metrics), no framework needed.

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
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Metrics {
    pub fn failure(&self, kind: &str) {
        let i = FAILURE_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(FAILURE_KINDS.len() - 1);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
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
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let body = "tablesnap: metrics are at /metrics\n";
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
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
