//! Progress of tablesnap's first backfill (`--once`, or the `-B` scan at start), which on a
//! multi-terabyte node runs for hours: files and bytes done out of the total, rate and ETA.
//!
//! On a terminal it is an indicatif bar in tableslurp's style (log lines printed meanwhile go
//! above it, see [`suspend`]); without one (systemd, cron, a pipe) it is one log line every
//! 30 s. The daemon hands it the files its startup scan queued ([`Progress::start`]) and
//! reports each one finished ([`Progress::file_done`]): files found already stored or vanished
//! leave the byte total, so the rate and ETA count only what is really uploaded. Events for
//! files outside the startup scan (live uploads meanwhile) are ignored.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::upload::Outcome;

/// How often the progress is logged without a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The bar being drawn, if any: log lines are written around it ([`suspend`]).
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs `f` (writing a log line to stderr) with the progress bar, if one is drawn, hidden
/// meanwhile, so the line lands above the bar instead of through it.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let bar = BAR.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// `1.21 MiB`: bytes in binary units with three significant figures.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// `bytes` over `elapsed` in the largest unit that keeps it readable (`812 KiB/s`, not
/// `0.8 MB/s` or `0.0 MB/s`).
pub fn human_rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "- B/s".into();
    }
    format!("{}/s", human_bytes((bytes as f64 / secs).round() as u64))
}

/// `1h02m`, `3m05s`, `42s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The key of `p` in [`State::pending`].
fn path_hash(p: &Path) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::LazyLock<std::collections::hash_map::RandomState> =
        std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
    KEYS.hash_one(p)
}

#[derive(Debug, Default)]
struct State {
    /// Files of the scan not finished yet (by a hash of the path: the daemon holds the
    /// paths; a million of them held again here cost ~100 MiB), with their size at the scan.
    /// A collision of two 64-bit hashes would only miscount the progress shown.
    pending: HashMap<u64, u64>,
    files_total: u64,
    files_done: u64,
    /// Bytes to upload: the scan's total minus what was found already stored or vanished.
    bytes_total: u64,
    bytes_done: u64,
    finished: bool,
}

struct Inner {
    what: &'static str,
    started: Instant,
    state: Arc<Mutex<State>>,
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// The progress of one backfill; a no-op when there is none ([`Progress::none`]).
pub struct Progress {
    inner: Option<Inner>,
}

impl Progress {
    /// No backfill: every call does nothing.
    pub fn none() -> Self {
        Self { inner: None }
    }

    /// Starts tracking the files the startup scan queued (sizes are read now): a bar when
    /// stderr is a terminal, else a log line every [`LOG_INTERVAL`] (needs a tokio runtime).
    /// `already_stored`: files the scan found stored as they are (counted done, no bytes).
    pub fn start<'a>(files: impl IntoIterator<Item = &'a PathBuf>, already_stored: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self::start_with(
            files,
            already_stored,
            tty,
            LOG_INTERVAL,
            Arc::new(|l| tracing::info!("{l}")),
        )
    }

    /// [`Progress::start`] with the choices made explicit: `tty` draws a bar; otherwise `log`
    /// receives a line every `every`.
    pub fn start_with<'a>(
        files: impl IntoIterator<Item = &'a PathBuf>,
        already_stored: u64,
        tty: bool,
        every: Duration,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Self {
        let pending: HashMap<u64, u64> = files
            .into_iter()
            .map(|p| (path_hash(p), std::fs::metadata(p).map_or(0, |m| m.len())))
            .collect();
        if pending.is_empty() && already_stored == 0 {
            return Self::none();
        }
        let nothing_to_send = pending.is_empty();
        let state = State {
            files_total: pending.len() as u64 + already_stored,
            files_done: already_stored,
            bytes_total: pending.values().sum(),
            pending,
            ..Default::default()
        };
        let what = "backfill";
        log(&format!(
            "{what}: {} files, {} to check against the bucket",
            state.files_total,
            human_bytes(state.bytes_total)
        ));
        let bar = tty.then(|| {
            let pb = ProgressBar::with_draw_target(
                Some(state.bytes_total),
                ProgressDrawTarget::stderr(),
            );
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_message(format!("0/{} files", state.files_total));
            pb.enable_steady_tick(Duration::from_millis(200));
            if let Ok(mut g) = BAR.lock() {
                *g = Some(pb.clone());
            }
            pb
        });
        let state = Arc::new(Mutex::new(state));
        let started = Instant::now();
        // Without a bar: a line every `every` until finished.
        let ticker = match (&bar, tokio::runtime::Handle::try_current()) {
            (None, Ok(rt)) => {
                let state = state.clone();
                Some(rt.spawn(async move {
                    let first = tokio::time::Instant::now() + every;
                    let mut t = tokio::time::interval_at(first, every);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        t.tick().await;
                        let line = match state.lock() {
                            Ok(s) if !s.finished => render(what, &s, started.elapsed()),
                            _ => break,
                        };
                        log(&line);
                    }
                }))
            }
            _ => None,
        };
        let mut p = Self {
            inner: Some(Inner {
                what,
                started,
                state,
                bar,
                ticker,
            }),
        };
        if nothing_to_send {
            // Everything was found stored: done at once, and said so.
            p.finish();
        }
        p
    }

    /// One file of the scan is finished (uploaded, found stored, vanished); other paths are
    /// ignored.
    pub fn file_done(&mut self, path: &Path, outcome: &Outcome) {
        let Some(inner) = &self.inner else { return };
        let mut s = inner.state.lock().expect("progress state");
        let Some(size) = s.pending.remove(&path_hash(path)) else {
            return;
        };
        s.files_done += 1;
        match outcome {
            Outcome::Uploaded { bytes } => s.bytes_done += bytes,
            // Nothing to upload after all: it leaves the total.
            Outcome::Present | Outcome::Vanished | Outcome::Ignored | Outcome::Copied { .. } => {
                s.bytes_total = s.bytes_total.saturating_sub(size)
            }
        }
        if let Some(b) = &inner.bar {
            b.set_length(s.bytes_total.max(s.bytes_done));
            b.set_position(s.bytes_done);
            b.set_message(format!("{}/{} files", s.files_done, s.files_total));
        }
        let all_done = s.pending.is_empty();
        drop(s);
        if all_done {
            self.finish();
        }
    }

    /// `backfill: 12/117 files, 340 KiB/1.21 MiB uploaded, 1.3 MiB/s, ETA 3s`.
    pub fn line(&self) -> Option<String> {
        let inner = self.inner.as_ref()?;
        let s = inner.state.lock().ok()?;
        Some(render(inner.what, &s, inner.started.elapsed()))
    }

    /// Ends the display (the bar is cleared: the summary line replaces it) and logs the
    /// summary line.
    pub fn finish(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if let Some(t) = &inner.ticker {
            t.abort();
        }
        if let Some(b) = &inner.bar {
            b.finish_and_clear();
            if let Ok(mut g) = BAR.lock() {
                *g = None;
            }
        }
        let mut s = inner.state.lock().expect("progress state");
        s.finished = true;
        tracing::info!(
            "{} done: {}/{} files, {} uploaded in {} ({})",
            inner.what,
            s.files_done,
            s.files_total,
            human_bytes(s.bytes_done),
            human_duration(inner.started.elapsed()),
            human_rate(s.bytes_done, inner.started.elapsed())
        );
    }
}

fn render(what: &str, s: &State, elapsed: Duration) -> String {
    let eta = if s.bytes_done == 0 || s.bytes_done >= s.bytes_total {
        "-".to_string()
    } else {
        let rate = s.bytes_done as f64 / elapsed.as_secs_f64().max(1e-3);
        human_duration(Duration::from_secs_f64(
            (s.bytes_total - s.bytes_done) as f64 / rate,
        ))
    };
    format!(
        "{what}: {}/{} files, {}/{} uploaded, {}, ETA {eta}",
        s.files_done,
        s.files_total,
        human_bytes(s.bytes_done),
        human_bytes(s.bytes_total),
        human_rate(s.bytes_done, elapsed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_durations_are_in_readable_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.00 KiB");
        assert_eq!(human_bytes(1_343_241), "1.28 MiB");
        assert_eq!(human_bytes(150 << 30), "150 GiB");
        assert_eq!(human_bytes(3 << 40), "3.00 TiB");
        // A small, quick transfer is not "0.0 MB/s".
        assert_eq!(human_rate(40_000, Duration::from_millis(50)), "781 KiB/s");
        assert_eq!(human_rate(10 << 20, Duration::from_secs(1)), "10.0 MiB/s");
        assert_eq!(human_rate(5, Duration::from_secs(10)), "1 B/s");
        assert_eq!(human_rate(5, Duration::ZERO), "- B/s");
        assert_eq!(human_duration(Duration::from_secs(42)), "42s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[tokio::test]
    async fn without_a_terminal_a_line_is_logged_every_interval_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = [("a", 3000usize), ("b", 1000), ("c", 500)]
            .iter()
            .map(|(n, len)| {
                let p = dir.path().join(n);
                std::fs::write(&p, vec![0u8; *len]).unwrap();
                p
            })
            .collect();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let mut p = Progress::start_with(
            &files,
            0,
            false,
            Duration::from_millis(100),
            Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_string())),
        );
        assert_eq!(
            lines.lock().unwrap().as_slice(),
            ["backfill: 3 files, 4.39 KiB to check against the bucket"]
        );
        p.file_done(&files[0], &Outcome::Uploaded { bytes: 3000 });
        // Found already stored: leaves the byte total. Unknown paths are ignored.
        p.file_done(&files[2], &Outcome::Present);
        p.file_done(Path::new("/elsewhere"), &Outcome::Uploaded { bytes: 7 });
        let line = p.line().unwrap();
        assert!(
            line.starts_with("backfill: 2/3 files, 2.93 KiB/3.91 KiB uploaded, "),
            "{line}"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        {
            let l = lines.lock().unwrap();
            assert!(l.len() >= 3, "{l:?}");
            for periodic in &l[1..] {
                assert!(periodic.starts_with("backfill: 2/3 files"), "{periodic}");
                assert!(periodic.contains("/s, ETA "), "{periodic}");
            }
        }
        // The last file ends it: no more lines.
        p.file_done(&files[1], &Outcome::Vanished);
        assert!(p.line().is_none());
        let n = lines.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(lines.lock().unwrap().len(), n);
    }

    #[test]
    fn no_files_means_no_progress() {
        let mut p = Progress::start_with(
            &Vec::<PathBuf>::new(),
            0,
            false,
            Duration::from_millis(10),
            Arc::new(|_: &str| panic!("nothing to log")),
        );
        assert!(p.line().is_none());
        p.finish();
    }
}
