//! End-to-end: the proxy's limits and the answers they give — header count
//! and size (431), request line (414), body size per Ingress (413, by
//! Content-Length and mid-stream when chunked), slow heads, idle keep-alive
//! connections and the connection limit — against the real binary, raw
//! sockets on loopback and a recording backend.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::raw::{RawClient, Recorder};
use support::*;

const NS: &str = "limits";

/// An Ingress for `host` → Service `rec`, with `annotation` if given.
fn ingress(name: &str, host: &str, annotation: Option<(&str, &str)>) -> String {
    let annotations = annotation.map(|(k, v)| format!("\n  annotations: {{{k}: \"{v}\"}}")).unwrap_or_default();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {NS}{annotations}\n\
         spec:\n  ingressClassName: switchyard\n  rules:\n  - host: {host}\n    http:\n      paths:\n      \
         - {{path: /, pathType: Prefix, backend: {{service: {{name: rec, port: {{number: 80}}}}}}}}\n"
    )
}

async fn start(backend: &Recorder, ingresses: &[String], flags: &[&str]) -> Standalone {
    let mut manifests = service(NS, "rec") + &endpoint_slice(NS, "rec", &[("rec-1".to_string(), backend.addr)]);
    for ing in ingresses {
        manifests += ing;
    }
    Standalone::start_with(&[("m.yaml", &manifests)], flags).await
}

/// Sends `bytes` on a new connection; returns the status and whether the
/// proxy then closed the connection.
async fn status_of(proxy: &Standalone, bytes: &[u8]) -> (u16, bool) {
    let mut client = RawClient::connect(proxy.http).await;
    client.send(bytes).await;
    let resp = client.response().await.expect("a response");
    let closed = resp.closes() && client.closed_within(Duration::from_secs(3)).await;
    (resp.status, closed)
}

fn get_with_headers(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: a.test\r\n{headers}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_limits_answer_431_and_414() {
    let backend = Recorder::start().await;
    let proxy = start(&backend, &[ingress("a", "a.test", None)], &[]).await;

    // Header count: 99 fields plus Host pass, 101 do not (default 100).
    let fields = |n: usize| (0..n).map(|i| format!("X-F{i}: v\r\n")).collect::<String>();
    assert_eq!(status_of(&proxy, &get_with_headers(&fields(99))).await.0, 200);
    assert_eq!(status_of(&proxy, &get_with_headers(&fields(101))).await, (431, true));

    // Header section size (default 32 KiB): 30 KiB passes, 33 KiB does not,
    // nor does a head far past every buffer.
    let big = |kib: usize| (0..kib).map(|i| format!("X-B{i:04}: {}\r\n", "b".repeat(1010))).collect::<String>();
    assert_eq!(status_of(&proxy, &get_with_headers(&big(30))).await.0, 200);
    assert_eq!(status_of(&proxy, &get_with_headers(&big(33))).await, (431, true));
    assert_eq!(status_of(&proxy, &get_with_headers(&big(90))).await.0, 431);

    // Request line (default 8 KiB).
    let line = |len: usize| format!("GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n", "p".repeat(len)).into_bytes();
    assert_eq!(status_of(&proxy, &line(8000)).await.0, 200);
    assert_eq!(status_of(&proxy, &line(9000)).await, (414, true));
    assert_eq!(status_of(&proxy, &line(20_000)).await, (414, true));

    // Only the accepted requests reached the backend.
    assert_eq!(backend.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_head_limits() {
    let backend = Recorder::start().await;
    let flags = ["--max-headers", "10", "--max-header-bytes", "2048", "--max-request-line", "1024"];
    let proxy = start(&backend, &[ingress("a", "a.test", None)], &flags).await;
    let fields = |n: usize| (0..n).map(|i| format!("X-F{i}: v\r\n")).collect::<String>();
    assert_eq!(status_of(&proxy, &get_with_headers(&fields(8))).await.0, 200);
    assert_eq!(status_of(&proxy, &get_with_headers(&fields(11))).await.0, 431);
    let long = format!("X-L: {}\r\n", "l".repeat(2100));
    assert_eq!(status_of(&proxy, &get_with_headers(&long)).await.0, 431);
    let line = format!("GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n", "p".repeat(1100));
    assert_eq!(status_of(&proxy, line.as_bytes()).await.0, 414);
    assert_eq!(backend.requests().len(), 1);
}

fn post_cl(host: &str, len: usize) -> Vec<u8> {
    let mut bytes = format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    bytes.resize(bytes.len() + len, b'x');
    bytes
}

fn post_chunked(host: &str, chunks: usize, chunk: usize) -> Vec<u8> {
    let mut bytes = format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..chunks {
        bytes.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
        bytes.resize(bytes.len() + chunk, b'y');
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_size_per_ingress_answers_413() {
    let backend = Recorder::start().await;
    let ingresses = [
        ingress("ours", "ours.test", Some(("switchyard.dev/proxy-body-size", "1k"))),
        ingress("nginx", "nginx.test", Some(("nginx.ingress.kubernetes.io/proxy-body-size", "2K"))),
        ingress("unlimited", "unlimited.test", Some(("switchyard.dev/proxy-body-size", "0"))),
        ingress("default", "default.test", None),
        ingress("bad", "bad.test", Some(("switchyard.dev/proxy-body-size", "ten"))),
    ];
    let proxy = start(&backend, &ingresses, &[]).await;

    // A bad value is reported, and the default applies.
    let log = proxy.log_text();
    assert!(log.contains("InvalidAnnotation") && log.contains("limits/bad"), "{log}");

    let mib = 1024 * 1024;
    let cases: &[(&str, &[u8], u16)] = &[
        ("1k by Content-Length: at the limit", &post_cl("ours.test", 1024), 200),
        ("1k by Content-Length: past it", &post_cl("ours.test", 1025), 413),
        ("1k chunked: at the limit", &post_chunked("ours.test", 4, 256), 200),
        ("1k chunked: past it mid-stream", &post_chunked("ours.test", 8, 256), 413),
        ("nginx 2K: under", &post_cl("nginx.test", 2000), 200),
        ("nginx 2K: over", &post_cl("nginx.test", 2049), 413),
        ("nginx 2K chunked: over", &post_chunked("nginx.test", 3, 1000), 413),
        ("0 = unlimited", &post_cl("unlimited.test", 3 * mib), 200),
        ("0 = unlimited, chunked", &post_chunked("unlimited.test", 48, 64 * 1024), 200),
        ("default 1m: under", &post_cl("default.test", mib), 200),
        ("default 1m: over", &post_cl("default.test", mib + 1), 413),
        ("default 1m chunked: over", &post_chunked("default.test", 20, 64 * 1024), 413),
        ("bad value: the default applies", &post_cl("bad.test", mib + 1), 413),
    ];
    for (what, bytes, want) in cases {
        backend.clear();
        let (status, closed) = status_of(&proxy, bytes).await;
        assert_eq!(status, *want, "{what}");
        let reached = backend.requests();
        if *want == 413 {
            assert!(closed, "{what}: the connection must close after 413");
            assert!(reached.is_empty(), "{what}: the backend received a complete request");
        } else {
            assert_eq!(reached.len(), 1, "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_body_limit_flag() {
    let backend = Recorder::start().await;
    let proxy = start(&backend, &[ingress("a", "a.test", None)], &["--max-body-size", "100"]).await;
    assert_eq!(status_of(&proxy, &post_cl("a.test", 100)).await.0, 200);
    assert_eq!(status_of(&proxy, &post_cl("a.test", 101)).await.0, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_cut_and_idle_connections_closed() {
    let backend = Recorder::start().await;
    let flags = ["--header-read-timeout", "1s", "--idle-timeout", "3s"];
    let proxy = start(&backend, &[ingress("a", "a.test", None)], &flags).await;

    // Slowloris: a head dripped a byte every 200 ms is cut after ~1 s.
    let mut slow = RawClient::connect(proxy.http).await;
    let start = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = None;
    for b in head {
        slow.send(std::slice::from_ref(b)).await;
        if slow.closed_within(Duration::from_millis(200)).await {
            cut = Some(start.elapsed());
            break;
        }
    }
    let cut = cut.expect("a dripped head must be cut");
    assert!(cut >= Duration::from_millis(900) && cut < Duration::from_secs(3), "cut after {cut:?}");

    // An idle keep-alive connection is not a slow head: it outlives the
    // header timeout, serves a request after 2 s, then closes ~3 s after
    // its last response.
    let mut idle = RawClient::connect(proxy.http).await;
    idle.send(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(idle.response().await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    idle.send(b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(idle.response().await.expect("still open after 2 s idle").status, 200);
    let last = Instant::now();
    assert!(idle.closed_within(Duration::from_secs(6)).await, "idle connection not closed");
    let after = last.elapsed();
    assert!(after >= Duration::from_millis(2800) && after < Duration::from_secs(5), "closed after {after:?}");

    // A connection that never sends anything is idle too.
    let mut silent = RawClient::connect(proxy.http).await;
    assert!(!silent.closed_within(Duration::from_millis(1500)).await, "closed by the header timeout");
    assert!(silent.closed_within(Duration::from_secs(4)).await, "silent connection not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_release_their_buffers_and_serve_again() {
    // A keep-alive connection idle for 250 ms frees hyper's buffers and
    // state (counted in `switchyard_connections_released_total`); its next
    // request, even pipelined behind another, is served as before.
    let backend = Recorder::start().await;
    let proxy = start(&backend, &[ingress("a", "a.test", None)], &[]).await;
    let released = || metric(proxy.admin, "switchyard_connections_released_total");
    let before = released().await.expect("the metric is exported");
    let mut client = RawClient::connect(proxy.http).await;
    for i in 0..3 {
        client.send(format!("GET /r{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes()).await;
        let resp = client.response().await.unwrap_or_else(|| panic!("request {i}: no response"));
        assert_eq!(resp.status, 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let after = released().await.unwrap();
    assert!(after - before >= 3.0, "3 idle periods, {} releases", after - before);

    backend.clear();
    client.send(b"GET /p1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    for _ in 0..2 {
        assert_eq!(client.response().await.expect("a pipelined response").status, 200);
    }
    let paths: Vec<String> = backend.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(paths, ["/p1", "/p2"]);

    // Bytes that are no request (a stray CRLF) wake a released connection
    // without a request: the next one, past the release delay, is still
    // kept alive (not answered with `Connection: close`).
    client.send(b"\r\n").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.send(b"GET /crlf HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let resp = client.response().await.expect("answered after a stray CRLF");
    assert_eq!(resp.status, 200);
    assert!(!resp.closes(), "a connection woken by a stray CRLF must stay keep-alive");

    // Half a head, then a pause past the release delay: the rest still
    // completes the request.
    client.send(b"GET /h HTTP/1.1\r\nHo").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.send(b"st: a.test\r\n\r\n").await;
    assert_eq!(client.response().await.expect("the completed head is answered").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timer_waits_for_slow_upstreams() {
    // A response that takes longer than the idle timeout is not cut.
    let slow = EchoProcess::start("slow", 2500);
    let manifests = service(NS, "rec")
        + &endpoint_slice(NS, "rec", &[("slow-1".to_string(), slow.addr)])
        + &ingress("a", "a.test", None);
    let proxy = Standalone::start_with(&[("m.yaml", &manifests)], &["--idle-timeout", "1s"]).await;
    let mut client = RawClient::connect(proxy.http).await;
    client.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let resp = client.response().await.expect("response from a slow upstream");
    assert_eq!(resp.status, 200);
    // The idle timers start once the slow response is done: the connection
    // is released, then closed a second after the response.
    let released = metric(proxy.admin, "switchyard_connections_released_total").await.unwrap();
    let after_response = Instant::now();
    assert!(client.closed_within(Duration::from_secs(4)).await, "idle after a slow response, never closed");
    assert!(after_response.elapsed() >= Duration::from_millis(800), "closed {:?} after", after_response.elapsed());
    let now = metric(proxy.admin, "switchyard_connections_released_total").await.unwrap();
    assert!(now > released, "released before closing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait() {
    let backend = Recorder::start().await;
    let proxy = start(&backend, &[ingress("a", "a.test", None)], &["--max-connections", "2"]).await;
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut first = RawClient::connect(proxy.http).await;
    let mut second = RawClient::connect(proxy.http).await;
    for c in [&mut first, &mut second] {
        c.send(request).await;
        assert_eq!(c.response().await.unwrap().status, 200);
    }
    // The third is queued by the kernel, not served...
    let mut third = RawClient::connect(proxy.http).await;
    third.send(request).await;
    assert!(third.response_within(Duration::from_secs(1)).await.is_none(), "served beyond --max-connections");
    // ...until a slot frees.
    drop(first);
    let resp = third.response().await.expect("served once a connection closed");
    assert_eq!(resp.status, 200);
    second.send(request).await;
    assert_eq!(second.response().await.unwrap().status, 200);
}
