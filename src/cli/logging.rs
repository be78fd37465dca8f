//! Logging as the original did it, through `tracing`: stderr by default, syslog (facility
//! DAEMON, tag `tablesnap`) when `TABLESNAP_SYSLOG` is set, debug level when `TDEBUG` is set.
//! `RUST_LOG` overrides the level for finer control.

use std::io::Write;
use std::os::unix::net::UnixDatagram;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber for a tool (`tag` is the syslog tag).
pub fn init(tag: &'static str) {
    let default = if std::env::var_os("TDEBUG").is_some() {
        "debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if std::env::var_os("TABLESNAP_SYSLOG").is_some() {
        // TABLESNAP_SYSLOG_SOCKET: another syslog socket (tests, containers).
        let path = std::env::var_os("TABLESNAP_SYSLOG_SOCKET").unwrap_or_else(|| "/dev/log".into());
        if let Ok(sock) = UnixDatagram::unbound() {
            if sock.connect(&path).is_ok() {
                tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_ansi(false)
                    .without_time()
                    .with_target(false)
                    .with_level(false)
                    .with_writer(Syslog { sock, tag })
                    .init();
                return;
            }
        }
        eprintln!(
            "{tag}: TABLESNAP_SYSLOG is set but /dev/log is not reachable; logging to stderr"
        );
    }
    // Under systemd, journald stamps every line itself: no second timestamp.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BarAwareStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if journald {
        b.without_time().with_ansi(false).init();
    } else {
        b.init();
    }
}

struct Syslog {
    sock: UnixDatagram,
    tag: &'static str,
}

/// One syslog datagram per event, with the event's level as severity.
struct SyslogLine<'a> {
    sock: &'a UnixDatagram,
    prefix: String,
    buf: Vec<u8>,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        let mut msg = self.prefix.clone().into_bytes();
        msg.extend_from_slice(&self.buf);
        let _ = self.sock.send(&msg);
    }
}

const LOG_DAEMON: u8 = 3 << 3;

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        self.line(6)
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let sev = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        self.line(sev)
    }
}

impl Syslog {
    fn line(&self, sev: u8) -> SyslogLine<'_> {
        SyslogLine {
            sock: &self.sock,
            prefix: format!("<{}>{}: ", LOG_DAEMON | sev, self.tag),
            buf: Vec::new(),
        }
    }
}

/// stderr, with the backfill's progress bar (if one is drawn) hidden while a line is written,
/// so log lines go above the bar instead of through it.
struct BarAwareStderr;

/// One event's text, written in one piece when dropped.
struct BarAwareLine(Vec<u8>);

impl Write for BarAwareLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BarAwareLine {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        crate::progress::suspend(|| {
            let _ = std::io::stderr().write_all(&buf);
        });
    }
}

impl<'a> MakeWriter<'a> for BarAwareStderr {
    type Writer = BarAwareLine;
    fn make_writer(&'a self) -> Self::Writer {
        BarAwareLine(Vec::new())
    }
}
