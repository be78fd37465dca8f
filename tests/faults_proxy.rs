//! The fault-injecting proxy itself (tests/common/proxy.rs): each fault does what the other
//! fault tests rely on, checked with raw HTTP/1.1 over TCP and with an `object_store` client
//! through the proxy against the real test S3 server.

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request on `s` and reads one response with a Content-Length body.
async fn roundtrip(s: &mut TcpStream, req: &[u8]) -> std::io::Result<(u16, String)> {
    s.write_all(req).await?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < i + 4 + len {
                let n = s.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Ok((
                status,
                String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).into(),
            ));
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn get_req(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn canned_errors_hit_exactly_the_next_requests_on_a_keep_alive_connection() {
    let s3 = common::s3();
    let p = Proxy::start(&s3.endpoint).await;
    p.fail_next(1, 503);
    p.fail_next(1, 500);
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let path = format!("/{}/nothing-here", s3.bucket);
    let (st, body) = roundtrip(&mut s, &get_req(&path)).await.unwrap();
    assert_eq!(st, 503);
    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
    let (st, body) = roundtrip(&mut s, &get_req(&path)).await.unwrap();
    assert_eq!(st, 500);
    assert!(body.contains("<Code>InternalError</Code>"), "{body}");
    // The third goes to the real server (unsigned: it refuses, with its own answer).
    let (st, body) = roundtrip(&mut s, &get_req(&path)).await.unwrap();
    assert!(st == 403 || st == 400 || st == 404, "{st} {body}");
    let c = p.counts();
    assert_eq!(
        (c.requests, c.errors, c.forwarded, c.connections),
        (3, 2, 1, 1)
    );
    // A request with a body that is answered by a canned error: the body is consumed and
    // the connection stays usable.
    p.fail_next(1, 503);
    let put = format!("PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(roundtrip(&mut s, put.as_bytes()).await.unwrap().0, 503);
    assert!(roundtrip(&mut s, &get_req(&path)).await.unwrap().0 >= 400);
    assert_eq!(p.counts().faults(), 3);
}

#[tokio::test]
async fn refuse_closes_the_listener_and_resets_open_connections_until_reopened() {
    let s3 = common::s3();
    let p = Proxy::start(&s3.endpoint).await;
    let path = format!("/{}/x", s3.bucket);
    let mut open = TcpStream::connect(p.addr()).await.unwrap();
    roundtrip(&mut open, &get_req(&path)).await.unwrap();
    p.refuse(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = TcpStream::connect(p.addr()).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(
        roundtrip(&mut open, &get_req(&path)).await.is_err(),
        "an open keep-alive connection must not slip through"
    );
    p.refuse(false);
    let mut s = None;
    for _ in 0..50 {
        if let Ok(c) = TcpStream::connect(p.addr()).await {
            s = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = s.expect("the proxy listens again on the same port");
    assert!(roundtrip(&mut s, &get_req(&path)).await.unwrap().0 >= 400);
    // Reset on accept.
    p.reset_on_accept(true);
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    assert!(roundtrip(&mut s, &get_req(&path)).await.is_err());
    p.pass();
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    assert!(roundtrip(&mut s, &get_req(&path)).await.is_ok());
    let c = p.counts();
    assert_eq!((c.refuse_periods, c.reset_on_accept), (1, 1));
    assert!(c.killed >= 1, "{c:?}");
}

#[tokio::test]
async fn reset_mid_body_cuts_only_large_bodies_and_delay_holds_responses() {
    let s3 = common::s3();
    let p = Proxy::start(&s3.endpoint).await;
    let path = format!("/{}/y", s3.bucket);
    p.reset_mid_body(1000, 1);
    // A small body passes.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let small = format!("PUT {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789");
    assert!(roundtrip(&mut s, small.as_bytes()).await.is_ok());
    // A large one is cut after 1000 bytes: no response, the connection is reset.
    let mut req =
        format!("PUT {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n").into_bytes();
    req.extend(std::iter::repeat_n(b'z', 5000));
    let r = roundtrip(&mut s, &req).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(p.counts().resets_mid_body, 1);
    // Only once.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    assert!(roundtrip(&mut s, &req).await.is_ok());
    // Delays.
    p.delay(Duration::from_millis(700));
    let t = Instant::now();
    roundtrip(&mut s, &get_req(&path)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(700));
    assert_eq!(p.counts().delayed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_through_the_proxy_survives_errors_and_counts_s3_operations() {
    let s3 = common::s3();
    let p = Proxy::start(&s3.endpoint).await;
    let via = common::S3 {
        endpoint: p.url(),
        ..s3.clone()
    };
    let store = via.raw();
    let prefix = s3.unique_prefix("proxy");
    let key = Path::parse(format!("{prefix}small")).unwrap();
    p.fail_next(2, 503);
    store
        .put(&key, PutPayload::from_static(b"hello"))
        .await
        .expect("PUT retried past two 503s");
    assert_eq!(
        s3.raw_get(&format!("{prefix}small")).await.unwrap(),
        b"hello"
    );
    // A multipart upload of two parts (5 MiB + 1 byte), the first part reset mid-body once.
    p.reset_mid_body(1 << 20, 1);
    let big: Vec<u8> = (0..(5u32 << 20) + 1).map(|i| (i % 251) as u8).collect();
    let mkey = Path::parse(format!("{prefix}big")).unwrap();
    let mut up = store.put_multipart(&mkey).await.unwrap();
    up.put_part(PutPayload::from(big[..5 << 20].to_vec()))
        .await
        .unwrap();
    up.put_part(PutPayload::from(big[5 << 20..].to_vec()))
        .await
        .unwrap();
    up.complete().await.unwrap();
    assert_eq!(
        common::sha256_bytes(&s3.raw_get(&format!("{prefix}big")).await.unwrap()),
        common::sha256_bytes(&big)
    );
    // Uploading the same content again is seen as a re-upload; other content is not.
    store
        .put(&key, PutPayload::from_static(b"hello"))
        .await
        .unwrap();
    store
        .put(&key, PutPayload::from_static(b"other content"))
        .await
        .unwrap();
    let c = p.counts();
    eprintln!("{c:?}");
    assert_eq!(c.errors, 2);
    assert_eq!(c.resets_mid_body, 1);
    assert!(c.parts >= 3, "two parts, one of them twice: {c:?}");
    assert_eq!((c.multipart_started, c.multipart_completed), (1, 1));
    assert_eq!(c.reuploads, 1, "{:?}", p.reuploaded());
}
