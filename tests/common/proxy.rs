//! A fault-injecting HTTP/1.1 TCP proxy on 127.0.0.1, put between tablesnap and the real S3
//! test server (give the daemon `StoreOptions.endpoint = proxy.url()`).
//!
//! It parses just enough HTTP/1.1 to know where each request and response ends (request
//! line, headers, `Content-Length`, chunked responses), one upstream connection per client
//! connection, so keep-alive connections carry many requests and each request can be
//! faulted on its own. Faults, set through the [`Proxy`] handle (or a timed [`Step`] list):
//!
//! * [`Proxy::refuse`]: close the listening socket: new connections get ECONNREFUSED, and
//!   open connections are reset;
//! * [`Proxy::reset_on_accept`]: accept, then reset (RST) at once;
//! * [`Proxy::fail_next`]: answer the next N requests with a canned S3 XML error
//!   (`500 InternalError`, `503 SlowDown`) without forwarding them;
//! * [`Proxy::fail_gets_of`]: answer every GET of a path containing a string with a canned
//!   error (one object unreadable, the rest of the bucket fine);
//! * [`Proxy::reset_mid_body`]: forward only the first N bytes of the body of the next
//!   requests whose body is larger than N (a multipart part, say), then reset both sides;
//! * [`Proxy::delay`]: hold every response for a while before forwarding it;
//! * [`Proxy::kill_connections`]: reset every open connection now.
//!
//! Every fault injected is counted ([`Proxy::counts`]), and so are the S3 operations seen,
//! among them uploads of keys that were already stored through this proxy (re-uploads).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    pub requests: u64,
    /// Requests forwarded upstream whose response reached the client.
    pub forwarded: u64,
    /// Times the listener was closed ([`Proxy::refuse`]).
    pub refuse_periods: u64,
    /// Connections reset right after accept.
    pub reset_on_accept: u64,
    /// Canned 5xx answers.
    pub errors: u64,
    /// Requests cut in the middle of their body.
    pub resets_mid_body: u64,
    /// Responses held back by [`Proxy::delay`].
    pub delayed: u64,
    /// Open connections reset by [`Proxy::kill_connections`] or [`Proxy::refuse`].
    pub killed: u64,
    /// S3 operations seen (forwarded or not).
    pub puts: u64,
    pub parts: u64,
    pub multipart_started: u64,
    pub multipart_completed: u64,
    pub multipart_aborted: u64,
    /// PUT / CreateMultipartUpload of a key with the same content as what an earlier request
    /// through this proxy already stored there (2xx to a PUT or CompleteMultipartUpload).
    /// Content is told by the `x-amz-meta-md5sum` header, else by the body length.
    pub reuploads: u64,
}

impl Counts {
    /// Faults injected, all kinds together.
    pub fn faults(&self) -> u64 {
        self.refuse_periods
            + self.reset_on_accept
            + self.errors
            + self.resets_mid_body
            + self.delayed
            + self.killed
    }
}

/// One change of behaviour, for [`Proxy::apply`] and [`Proxy::spawn_schedule`].
#[derive(Debug, Clone)]
pub enum Step {
    /// Clear every fault.
    Pass,
    Refuse,
    ResetOnAccept,
    /// `(n, status)`: canned error for the next `n` requests (500 or 503).
    Fail(u32, u16),
    /// `(after, times)`: see [`Proxy::reset_mid_body`].
    ResetMidBody(u64, u32),
    Delay(Duration),
    KillConnections,
}

#[derive(Default)]
struct Plan {
    refuse: bool,
    reset_on_accept: bool,
    errors: VecDeque<u16>,
    /// `(path substring, status)`: every GET whose path contains it gets that error.
    fail_get: Option<(String, u16)>,
    reset_mid: Option<(u64, u32)>,
    delay: Duration,
}

#[derive(Default)]
struct Shared {
    plan: Plan,
    counts: Counts,
    /// Keys (request paths) stored through the proxy → content fingerprint.
    stored: HashMap<String, String>,
    /// Multipart uploads started → content fingerprint.
    started: HashMap<String, String>,
    reuploaded: Vec<String>,
}

struct Inner {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Mutex<Shared>,
    /// Bumped to reset every open connection.
    kill: watch::Sender<u64>,
    /// Whether the listener must be closed.
    refuse: watch::Sender<bool>,
}

/// The proxy handle. Dropping it stops accepting (open connections finish on their own).
pub struct Proxy {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.inner.kill.send_modify(|e| *e += 1);
    }
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`
    /// (`http://HOST:PORT`, as in `TABLESNAP_TEST_S3_ENDPOINT`).
    pub async fn start(upstream: &str) -> Proxy {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr = tokio::net::lookup_host(hostport)
            .await
            .unwrap_or_else(|e| panic!("resolve {hostport}: {e}"))
            .next()
            .expect("upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            addr,
            upstream,
            shared: Mutex::new(Shared::default()),
            kill: watch::channel(0).0,
            refuse: watch::channel(false).0,
        });
        let task = tokio::spawn(accept_loop(inner.clone(), listener));
        Proxy { inner, task }
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give the daemon.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        f(&mut self.inner.shared.lock().unwrap())
    }

    /// Clears every fault: plain pass-through.
    pub fn pass(&self) {
        self.with(|s| {
            s.plan.reset_on_accept = false;
            s.plan.errors.clear();
            s.plan.reset_mid = None;
            s.plan.delay = Duration::ZERO;
        });
        self.refuse(false);
    }

    /// Closes (`true`) or reopens (`false`) the listening socket. Closing also resets every
    /// open connection, so keep-alive connections do not slip through.
    pub fn refuse(&self, on: bool) {
        let changed = self.with(|s| {
            let changed = s.plan.refuse != on;
            s.plan.refuse = on;
            if changed && on {
                s.counts.refuse_periods += 1;
            }
            changed
        });
        if changed {
            if on {
                self.kill_connections();
            }
            let _ = self.inner.refuse.send(on);
        }
    }

    /// Accept and reset at once every new connection while `on`.
    pub fn reset_on_accept(&self, on: bool) {
        self.with(|s| s.plan.reset_on_accept = on);
        if on {
            self.kill_connections();
        }
    }

    /// Answers the next `n` requests with a canned S3 error: 500 InternalError or
    /// 503 SlowDown (any other status: a generic error).
    pub fn fail_next(&self, n: u32, status: u16) {
        self.with(|s| {
            s.plan
                .errors
                .extend(std::iter::repeat_n(status, n as usize))
        });
    }

    /// Answers every GET whose request path contains `path_part` with a canned S3 error
    /// (`None`: stop). The other requests pass.
    pub fn fail_gets_of(&self, path_part: Option<&str>, status: u16) {
        self.with(|s| s.plan.fail_get = path_part.map(|p| (p.to_string(), status)));
    }

    /// For the next `times` requests whose body is larger than `after` bytes: forward
    /// `after` bytes of the body, then reset the client and upstream connections.
    pub fn reset_mid_body(&self, after: u64, times: u32) {
        self.with(|s| s.plan.reset_mid = (times > 0).then_some((after, times)));
    }

    /// Holds every response this long before forwarding it (`ZERO` to stop).
    pub fn delay(&self, d: Duration) {
        self.with(|s| s.plan.delay = d);
    }

    /// Resets every connection open now.
    pub fn kill_connections(&self) {
        self.inner.kill.send_modify(|e| *e += 1);
    }

    pub fn apply(&self, step: Step) {
        match step {
            Step::Pass => self.pass(),
            Step::Refuse => self.refuse(true),
            Step::ResetOnAccept => self.reset_on_accept(true),
            Step::Fail(n, st) => self.fail_next(n, st),
            Step::ResetMidBody(a, t) => self.reset_mid_body(a, t),
            Step::Delay(d) => self.delay(d),
            Step::KillConnections => self.kill_connections(),
        }
    }

    /// Applies each step at its offset from now, in a background task.
    pub fn spawn_schedule(self: &Arc<Self>, steps: Vec<(Duration, Step)>) -> JoinHandle<()> {
        let p = self.clone();
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            for (at, step) in steps {
                tokio::time::sleep_until(t0 + at).await;
                p.apply(step);
            }
        })
    }

    /// Canned errors not yet used.
    pub fn errors_pending(&self) -> usize {
        self.with(|s| s.plan.errors.len())
    }

    pub fn counts(&self) -> Counts {
        self.with(|s| s.counts.clone())
    }

    /// Request paths (`/BUCKET/KEY`, still URL-encoded) uploaded again with the same content
    /// after an earlier upload through this proxy had succeeded.
    pub fn reuploaded(&self) -> Vec<String> {
        self.with(|s| s.reuploaded.clone())
    }
}

async fn accept_loop(inner: Arc<Inner>, first: TcpListener) {
    let mut listener = Some(first);
    let mut refuse_rx = inner.refuse.subscribe();
    loop {
        if *refuse_rx.borrow_and_update() {
            listener = None;
            if refuse_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        if listener.is_none() {
            // SO_REUSEADDR is set by tokio on Unix: the port can be bound again at once.
            let mut tries = 0;
            listener = loop {
                match TcpListener::bind(inner.addr).await {
                    Ok(l) => break Some(l),
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("proxy: cannot bind {} again: {e}", inner.addr),
                }
            };
        }
        let l = listener.as_ref().unwrap();
        tokio::select! {
            r = l.accept() => {
                let Ok((sock, _)) = r else { continue };
                let _ = sock.set_nodelay(true);
                let reset = {
                    let mut s = inner.shared.lock().unwrap();
                    s.counts.connections += 1;
                    if s.plan.reset_on_accept {
                        s.counts.reset_on_accept += 1;
                    }
                    s.plan.reset_on_accept
                };
                if reset {
                    rst(sock);
                    continue;
                }
                tokio::spawn(connection(inner.clone(), sock));
            }
            r = refuse_rx.changed() => if r.is_err() { return },
        }
    }
}

/// Closes with a TCP RST instead of a FIN (SO_LINGER 0).
fn rst(sock: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a valid linger struct of the given size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(sock);
}

enum End {
    /// Close normally.
    Close,
    /// Reset the client connection.
    Reset,
}

async fn connection(inner: Arc<Inner>, mut client: TcpStream) {
    let mut kill = inner.kill.subscribe();
    kill.borrow_and_update();
    let end = tokio::select! {
        e = serve(&inner, &mut client) => e,
        _ = kill.changed() => {
            inner.shared.lock().unwrap().counts.killed += 1;
            End::Reset
        }
    };
    match end {
        End::Close => {
            let _ = client.shutdown().await;
        }
        End::Reset => rst(client),
    }
}

/// A stream with its read-ahead buffer.
struct Conn<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Conn<S> {
    fn new(s: S) -> Self {
        Conn { s, buf: Vec::new() }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.s.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads up to the end of a header block; `None` on a clean EOF before any byte.
    async fn head(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let rest = self.buf.split_off(i + 4);
                return Ok(Some(std::mem::replace(&mut self.buf, rest)));
            }
            if self.buf.len() > 1 << 20 {
                return Err(std::io::Error::other("header block over 1 MiB"));
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads one CRLF-terminated line (with the CRLF).
    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let rest = self.buf.split_off(i + 2);
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            if self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Moves exactly `n` bytes to `dst` (or drops them when `dst` is `None`).
    async fn copy<W: AsyncWrite + Unpin>(
        &mut self,
        mut n: u64,
        mut dst: Option<&mut W>,
    ) -> std::io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            if let Some(d) = dst.as_mut() {
                d.write_all(&self.buf[..take]).await?;
            }
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }
}

fn find(h: &[u8], needle: &[u8]) -> Option<usize> {
    h.windows(needle.len()).position(|w| w == needle)
}

struct Head {
    /// Method (requests) or status code (responses) as text.
    first: String,
    second: String,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    md5: Option<String>,
}

fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let a = parts.next()?.to_string();
    let b = parts.next()?.to_string();
    let (first, second) = if a.starts_with("HTTP/") {
        (b, String::new())
    } else {
        (a, b)
    };
    let mut h = Head {
        first,
        second,
        content_length: None,
        chunked: false,
        close: false,
        md5: None,
    };
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => h.content_length = v.parse().ok(),
            "transfer-encoding" => h.chunked = v.contains("chunked"),
            "connection" => h.close = v.contains("close"),
            "x-amz-meta-md5sum" => h.md5 = Some(v),
            _ => {}
        }
    }
    Some(h)
}

/// The S3 operation of a request, for the counters.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    Put,
    Part,
    Start,
    Complete,
    Abort,
    Other,
}

fn op_of(method: &str, target: &str) -> (Op, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has = |k: &str| {
        query
            .split('&')
            .any(|kv| kv == k || kv.starts_with(&format!("{k}=")))
    };
    let op = match method {
        "PUT" if has("partNumber") => Op::Part,
        "PUT" => Op::Put,
        "POST" if has("uploads") => Op::Start,
        "POST" if has("uploadId") => Op::Complete,
        "DELETE" if has("uploadId") => Op::Abort,
        _ => Op::Other,
    };
    (op, path.to_string())
}

fn canned(status: u16, head_only: bool, n: u64) -> Vec<u8> {
    let (reason, code, msg) = match status {
        503 => ("Slow Down", "SlowDown", "Please reduce your request rate."),
        500 => (
            "Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        _ => ("Error", "ServiceUnavailable", "Injected by the test proxy."),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{msg}</Message><RequestId>proxy-{n}</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: proxy-{n}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

enum Fault {
    None,
    Error(u16),
    ResetAfter(u64),
}

async fn serve(inner: &Inner, client: &mut TcpStream) -> End {
    let (cr, cw) = client.split();
    let mut c = Conn::new(cr);
    let mut cw = cw;
    let mut up: Option<Conn<TcpStream>> = None;
    loop {
        let raw = match c.head().await {
            Ok(Some(h)) => h,
            Ok(None) => return End::Close,
            Err(_) => return End::Reset,
        };
        let Some(req) = parse_head(&raw) else {
            return End::Reset;
        };
        if req.chunked {
            // Not used by object_store; refuse rather than guess the framing.
            return End::Reset;
        }
        let body_len = req.content_length.unwrap_or(0);
        let (op, key) = op_of(&req.first, &req.second);
        let fingerprint = req.md5.clone().unwrap_or_else(|| format!("len:{body_len}"));
        let (fault, delay, nreq) = {
            let mut s = inner.shared.lock().unwrap();
            s.counts.requests += 1;
            match op {
                Op::Put => s.counts.puts += 1,
                Op::Part => s.counts.parts += 1,
                Op::Start => s.counts.multipart_started += 1,
                Op::Complete => s.counts.multipart_completed += 1,
                Op::Abort => s.counts.multipart_aborted += 1,
                Op::Other => {}
            }
            let get_fault = s
                .plan
                .fail_get
                .as_ref()
                .filter(|(p, _)| req.first == "GET" && req.second.contains(p.as_str()))
                .map(|(_, st)| *st);
            let fault = if let Some(st) = s.plan.errors.pop_front().or(get_fault) {
                s.counts.errors += 1;
                Fault::Error(st)
            } else if let Some((after, times)) = s.plan.reset_mid.filter(|(a, _)| body_len > *a) {
                s.plan.reset_mid = (times > 1).then_some((after, times - 1));
                s.counts.resets_mid_body += 1;
                Fault::ResetAfter(after)
            } else {
                Fault::None
            };
            if matches!(fault, Fault::None) && matches!(op, Op::Put | Op::Start) {
                if s.stored.get(&key) == Some(&fingerprint) {
                    s.counts.reuploads += 1;
                    s.reuploaded.push(key.clone());
                }
                if op == Op::Start {
                    s.started.insert(key.clone(), fingerprint.clone());
                }
            }
            (fault, s.plan.delay, s.counts.requests)
        };
        match fault {
            Fault::Error(st) => {
                if c.copy::<TcpStream>(body_len, None).await.is_err() {
                    return End::Reset;
                }
                if cw
                    .write_all(&canned(st, req.first == "HEAD", nreq))
                    .await
                    .is_err()
                {
                    return End::Reset;
                }
                continue;
            }
            Fault::ResetAfter(after) => {
                if let Some(u) = connect(inner, &mut up).await {
                    if u.s.write_all(&raw).await.is_ok() {
                        let _ = c.copy(after, Some(&mut u.s)).await;
                        let _ = u.s.flush().await;
                    }
                }
                if let Some(u) = up.take() {
                    rst(u.s);
                }
                return End::Reset;
            }
            Fault::None => {}
        }
        let Some(u) = connect(inner, &mut up).await else {
            return End::Reset;
        };
        if u.s.write_all(&raw).await.is_err() || c.copy(body_len, Some(&mut u.s)).await.is_err() {
            return End::Reset;
        }
        // The response (skipping interim 1xx answers).
        let (rraw, resp) = loop {
            let rraw = match u.head().await {
                Ok(Some(h)) => h,
                _ => return End::Reset,
            };
            let Some(resp) = parse_head(&rraw) else {
                return End::Reset;
            };
            if resp.first.starts_with('1') && resp.first != "101" {
                if cw.write_all(&rraw).await.is_err() {
                    return End::Reset;
                }
                continue;
            }
            break (rraw, resp);
        };
        if !delay.is_zero() {
            inner.shared.lock().unwrap().counts.delayed += 1;
            tokio::time::sleep(delay).await;
        }
        if cw.write_all(&rraw).await.is_err() {
            return End::Reset;
        }
        let no_body = req.first == "HEAD" || resp.first == "204" || resp.first == "304";
        let r = if no_body {
            Ok(true)
        } else if resp.chunked {
            copy_chunked(u, &mut cw).await.map(|_| true)
        } else if let Some(n) = resp.content_length {
            u.copy(n, Some(&mut cw)).await.map(|_| true)
        } else {
            // Delimited by the end of the connection.
            let mut rest = std::mem::take(&mut u.buf);
            let r = u.s.read_to_end(&mut rest).await;
            match r {
                Ok(_) => cw.write_all(&rest).await.map(|_| false),
                Err(e) => Err(e),
            }
        };
        let keep = match r {
            Ok(k) => k,
            Err(_) => return End::Reset,
        };
        {
            let mut s = inner.shared.lock().unwrap();
            s.counts.forwarded += 1;
            if resp.first.starts_with('2') {
                match op {
                    Op::Put => {
                        s.stored.insert(key, fingerprint);
                    }
                    Op::Complete => {
                        if let Some(fp) = s.started.get(&key).cloned() {
                            s.stored.insert(key, fp);
                        }
                    }
                    _ => {}
                }
            }
        }
        if !keep || resp.close || req.close {
            return End::Close;
        }
    }
}

async fn connect<'a>(
    inner: &Inner,
    up: &'a mut Option<Conn<TcpStream>>,
) -> Option<&'a mut Conn<TcpStream>> {
    // An idle upstream connection the server closed meanwhile: open a new one rather than
    // fail the request (that would be a fault nobody asked for).
    if let Some(u) = up.as_ref() {
        let mut b = [0u8; 1];
        match u.s.try_read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => *up = None,
        }
    }
    if up.is_none() {
        let s = TcpStream::connect(inner.upstream).await.ok()?;
        let _ = s.set_nodelay(true);
        *up = Some(Conn::new(s));
    }
    up.as_mut()
}

async fn copy_chunked<W: AsyncWrite + Unpin>(
    u: &mut Conn<TcpStream>,
    cw: &mut W,
) -> std::io::Result<()> {
    loop {
        let line = u.line().await?;
        cw.write_all(&line).await?;
        let size_text = std::str::from_utf8(&line)
            .map_err(std::io::Error::other)?
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        let size = u64::from_str_radix(&size_text, 16).map_err(std::io::Error::other)?;
        if size == 0 {
            // Trailers up to an empty line.
            loop {
                let t = u.line().await?;
                cw.write_all(&t).await?;
                if t == b"\r\n" {
                    return Ok(());
                }
            }
        }
        u.copy(size + 2, Some(cw)).await?;
    }
}
