//! End-to-end: the cleartext HTTP/1.1 fast path (`proxy::fast_h1`) against
//! the real binary, raw sockets on loopback and a scripted backend that
//! answers each target with exact bytes: which requests it takes (counted
//! in `switchyard_h1_fast_path_requests_total`), the head the backend
//! receives, each response framing passed intact, upstream connection
//! reuse, upstream failures answered as hyper's path answers them, and the
//! flag that turns it off.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::raw::RawClient;
use support::*;

const NS: &str = "fast";
const FAST: &str = "switchyard_h1_fast_path_requests_total";
/// The body of `/big`: larger than any single read of the proxy.
const BIG: usize = 300_000;
/// The body of `/huge`: more than the proxy's socket buffers can take.
const HUGE: usize = 8 << 20;
/// `/cut` says this length and sends half of it before closing.
const CUT: usize = 100_000;
const SPLICED: &str = "switchyard_spliced_body_bytes_total";
/// How long the backend takes to answer `/slow`.
const SLOW: Duration = Duration::from_millis(300);

/// A backend that answers each request by its target (see `answer`),
/// counting connections and keeping every request head it read.
#[derive(Clone)]
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    /// `/hang` requests whose connection the proxy closed unanswered.
    cancelled: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = Self { addr, accepted: Arc::default(), heads: Arc::default(), cancelled: Arc::default() };
        let shared = this.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(shared.clone().serve(stream));
            }
        });
        this
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn last_head(&self) -> String {
        self.heads.lock().unwrap().last().cloned().expect("a request reached the backend")
    }

    async fn serve(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                buf.drain(..end + 4);
                // Request bodies (hyper's path) are framed by Content-Length.
                let length = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                    .unwrap_or(0);
                while buf.len() < length {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf.drain(..length);
                self.heads.lock().unwrap().push(head.clone());
                if head.starts_with("GET /hang ") {
                    // Never answered: wait for the proxy to give up on it.
                    if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
                        self.cancelled.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                if head.starts_with("GET /slow ") {
                    tokio::time::sleep(SLOW).await;
                }
                let (answer, close) = answer(&head);
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
                if close {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// The backend's answer to a request head, and whether it then closes.
fn answer(head: &str) -> (Vec<u8>, bool) {
    let mut request_line = head.split(' ');
    let (method, target) = (request_line.next().unwrap(), request_line.next().unwrap());
    let fixed = |text: &str| text.as_bytes().to_vec();
    match target {
        "/chunked" => (
            fixed(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
            ),
            false,
        ),
        "/early" => (
            fixed("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            false,
        ),
        "/until-close" => (fixed("HTTP/1.1 200 OK\r\nX-Framing: none\r\n\r\nstreamed to the close"), true),
        "/no-content" => (fixed("HTTP/1.1 204 No Content\r\n\r\n"), false),
        "/big" | "/huge" => {
            let len = if target == "/big" { BIG } else { HUGE };
            let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
            answer.extend_from_slice(&body);
            (answer, false)
        }
        "/cut" => {
            let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {CUT}\r\n\r\n").into_bytes();
            answer.extend(std::iter::repeat_n(b'c', CUT / 2));
            (answer, true)
        }
        "/hop" => (
            fixed(
                "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
                 Set-Cookie: a=b\r\nContent-Length: 2\r\n\r\nok",
            ),
            false,
        ),
        "/garbage" => (fixed("SSH-2.0-OpenSSH_9.2\r\n\r\n"), true),
        "/switch" => (fixed("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"), true),
        // Says close, but leaves the socket open: the proxy must not reuse it.
        "/close-after" => (fixed("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"), false),
        _ if method == "HEAD" => (fixed("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"), false),
        _ => {
            let text = format!("{method} {target}");
            (format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len()).into_bytes(), false)
        }
    }
}

fn ingress(host: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: fast\n  namespace: {NS}\n\
         spec:\n  ingressClassName: switchyard\n  rules:\n  - host: {host}\n    http:\n      paths:\n      \
         - {{path: /, pathType: Prefix, backend: {{service: {{name: scripted, port: {{number: 80}}}}}}}}\n"
    )
}

async fn start(backend: &Scripted, flags: &[&str]) -> Standalone {
    let manifests = service(NS, "scripted")
        + &endpoint_slice(NS, "scripted", &[("scripted-1".to_string(), backend.addr)])
        + &ingress("a.test");
    Standalone::start_with(&[("m.yaml", &manifests)], flags).await
}

async fn fast_count(proxy: &Standalone) -> f64 {
    metric(proxy.admin, FAST).await.expect("the fast path's counter is exported")
}

fn get_bytes(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_gets_take_the_fast_path_on_one_upstream_connection() {
    let backend = Scripted::start().await;
    let proxy = start(&backend, &[]).await;
    let before = fast_count(&proxy).await;
    let mut client = RawClient::connect(proxy.http).await;
    for i in 0..5 {
        client
            .send(
                format!(
                    "GET /r{i}?q=1 HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=9\r\n\
                     X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nUser-Agent: raw/1\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        let resp = client.response().await.unwrap_or_else(|| panic!("request {i}: no response"));
        assert_eq!((resp.status, resp.body_text()), (200, format!("GET /r{i}?q=1")), "request {i}");
        assert!(!resp.closes(), "request {i}: keep-alive");
    }
    assert_eq!(fast_count(&proxy).await - before, 5.0, "five requests on the fast path");
    assert_eq!(backend.accepted(), 1, "one upstream connection, reused");

    // The head the backend read: the client's, without hop-by-hop fields,
    // with our X-Forwarded-* and X-Real-IP instead of the client's.
    let head = backend.last_head().to_ascii_lowercase();
    let port = proxy.http.port();
    for expected in [
        "get /r4?q=1 http/1.1\r\n",
        "host: a.test\r\n",
        "user-agent: raw/1\r\n",
        "x-forwarded-for: 127.0.0.1\r\n",
        "x-real-ip: 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
        "x-forwarded-host: a.test\r\n",
    ] {
        assert!(head.contains(expected), "{expected:?} missing from {head:?}");
    }
    assert!(head.contains(&format!("x-forwarded-port: {port}\r\n")), "{head:?}");
    for gone in ["connection:", "keep-alive:", "6.6.6.6"] {
        assert!(!head.contains(gone), "{gone:?} forwarded: {head:?}");
    }

    // A request with a body is hyper's: answered, not counted.
    client.send(b"POST /form HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc").await;
    assert_eq!(client.response().await.expect("POST answered").body_text(), "POST /form");
    assert_eq!(fast_count(&proxy).await - before, 5.0, "the POST went through hyper");

    // A client's close is honoured (a new connection: the one above is
    // hyper's until it idles).
    let mut client = RawClient::connect(proxy.http).await;
    client.send(b"GET /last HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await;
    let last = client.response().await.expect("answered");
    assert!(last.closes(), "Connection: close answered with close: {}", last.head);
    assert!(client.closed_within(Duration::from_secs(3)).await, "closed after the client asked");
    assert_eq!(fast_count(&proxy).await - before, 6.0, "the close request on the fast path");
}

/// Reads a connection to its end (bounded).
async fn read_to_close(proxy: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_passes_intact() {
    let backend = Scripted::start().await;
    let proxy = start(&backend, &[]).await;
    let before = fast_count(&proxy).await;
    let mut client = RawClient::connect(proxy.http).await;

    // Chunked: re-encoded, extensions and trailers dropped.
    client.send(&get_bytes("/chunked")).await;
    let resp = client.response().await.expect("chunked response");
    assert_eq!((resp.status, resp.body_text().as_str()), (200, "hello world"));
    assert!(resp.head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{}", resp.head);

    // A body longer than the proxy's buffers, twice on one connection.
    for _ in 0..2 {
        client.send(&get_bytes("/big")).await;
        let resp = client.response().await.expect("big response");
        assert_eq!(resp.body.len(), BIG);
        assert!(resp.body.iter().enumerate().all(|(i, &b)| b == b'a' + (i % 26) as u8), "the body is intact");
    }

    // An interim 103 is not passed on; the final response is.
    let early = read_to_close(proxy.http, b"GET /early HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await;
    assert!(early.starts_with("HTTP/1.1 200 OK\r\n") && early.ends_with("\r\n\r\nok"), "{early:?}");
    assert!(!early.contains("103"), "{early:?}");

    // No body: 204, and HEAD with a length. The connection stays usable.
    client.send(&get_bytes("/no-content")).await;
    assert_eq!(client.response().await.expect("204").status, 204);
    // A HEAD answer carries a length but no body: the next response on
    // the connection follows its head directly.
    let both = read_to_close(
        proxy.http,
        b"HEAD /h HTTP/1.1\r\nHost: a.test\r\n\r\nGET /after-head HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (first, rest) = both.split_once("\r\n\r\n").expect("a first head");
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n") && first.contains("content-length: 9"), "HEAD: {both:?}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "the GET's head right after HEAD's: {both:?}");
    assert!(both.ends_with("\r\n\r\nGET /after-head"), "HEAD then GET: {both:?}");

    // Hop-by-hop response fields and those Connection names are removed.
    client.send(&get_bytes("/hop")).await;
    let resp = client.response().await.expect("hop response");
    let lower = resp.head.to_ascii_lowercase();
    assert!(lower.contains("set-cookie: a=b"), "{}", resp.head);
    for gone in ["x-secret", "keep-alive"] {
        assert!(!lower.contains(gone), "{gone} passed on: {}", resp.head);
    }

    // No framing: the body runs to the upstream's close, and the client's
    // connection closes after it.
    let whole = read_to_close(proxy.http, &get_bytes("/until-close")).await;
    assert!(whole.starts_with("HTTP/1.1 200 OK\r\n"), "{whole:?}");
    assert!(whole.to_ascii_lowercase().contains("connection: close\r\n"), "{whole:?}");
    assert!(whole.ends_with("\r\n\r\nstreamed to the close"), "{whole:?}");
    assert!(fast_count(&proxy).await - before >= 9.0, "all on the fast path");
}

/// A connection's last response (the client asked to close) ends with the
/// close on every path that writes it (see `write_closing`): whole, for
/// each framing and for a local answer, with splicing on and off; and
/// whole to a client that sent more after asking to close. Closing a
/// socket with unread input resets the connection and discards what it
/// has not sent yet, so the response must have left before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_responses_leave_whole_with_the_close() {
    let backend = Scripted::start().await;
    let close = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    for splice in ["true", "false"] {
        let proxy = start(&backend, &["--splice-bodies", splice]).await;
        let before = fast_count(&proxy).await;

        let small = read_to_close(proxy.http, close("/small").as_bytes()).await;
        assert!(small.starts_with("HTTP/1.1 200 OK\r\n") && small.ends_with("\r\n\r\nGET /small"), "{small:?}");
        assert!(small.to_ascii_lowercase().contains("connection: close\r\n"), "{small:?}");

        let chunked = read_to_close(proxy.http, close("/chunked").as_bytes()).await;
        assert!(chunked.ends_with("\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "{chunked:?}");

        for target in ["/big", "/huge"] {
            let whole = read_to_close(proxy.http, close(target).as_bytes()).await;
            let (head, body) = whole.split_once("\r\n\r\n").expect("a head");
            let len = if target == "/big" { BIG } else { HUGE };
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{target} (splice {splice}): {head}");
            assert_eq!(body.len(), len, "{target} (splice {splice}): the whole body");
            assert!(body.bytes().enumerate().all(|(i, b)| b == b'a' + (i % 26) as u8), "{target}: intact");
        }

        // A local answer: the backend's garbage makes a 502.
        let bad = read_to_close(proxy.http, close("/garbage").as_bytes()).await;
        assert!(bad.starts_with("HTTP/1.1 502 ") && bad.ends_with('\n'), "{bad:?}");
        assert!(bad.to_ascii_lowercase().contains("connection: close\r\n"), "{bad:?}");

        // More bytes after the close request, sent while the backend takes
        // its time: they are never read, and the response still arrives.
        let mut stream = TcpStream::connect(proxy.http).await.unwrap();
        stream.write_all(close("/slow").as_bytes()).await.unwrap();
        tokio::time::sleep(SLOW / 3).await;
        stream.write_all(&get_bytes("/unread")).await.unwrap();
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("the connection was not closed after the response"),
            }
        }
        let all = String::from_utf8_lossy(&all);
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n") && all.ends_with("\r\n\r\nGET /slow"), "{all:?}");
        assert!(!backend.heads.lock().unwrap().iter().any(|h| h.starts_with("GET /unread")), "read after close");
        assert_eq!(fast_count(&proxy).await - before, 6.0, "all on the fast path (splice {splice})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_answered_as_on_hyper_s_path() {
    let backend = Scripted::start().await;
    let proxy = start(&backend, &[]).await;
    let before = fast_count(&proxy).await;
    let mut client = RawClient::connect(proxy.http).await;
    for target in ["/garbage", "/switch"] {
        client.send(&get_bytes(target)).await;
        let resp = client.response().await.unwrap_or_else(|| panic!("{target}: no answer"));
        assert_eq!(resp.status, 502, "{target}");
        assert!(resp.body_text().starts_with("502 Bad Gateway: upstream"), "{target}: {:?}", resp.body_text());
    }
    // An upstream connection whose response said close is not reused,
    // even while the backend keeps it open; one that did not say so is.
    client.send(&get_bytes("/close-after")).await;
    assert_eq!(client.response().await.expect("answered").status, 200);
    let opened = backend.accepted();
    client.send(&get_bytes("/next")).await;
    assert_eq!(client.response().await.expect("answered").body_text(), "GET /next");
    assert_eq!(backend.accepted(), opened + 1, "the connection that said close was reused");
    client.send(&get_bytes("/again")).await;
    assert_eq!(client.response().await.expect("answered").body_text(), "GET /again");
    assert_eq!(backend.accepted(), opened + 1, "a reusable connection was not reused");
    assert_eq!(fast_count(&proxy).await - before, 5.0, "all on the fast path");

    // A client that closes before the upstream answers cancels the request:
    // the upstream connection is closed, not left waiting.
    let mut hanging = TcpStream::connect(proxy.http).await.unwrap();
    hanging.write_all(&get_bytes("/hang")).await.unwrap();
    wait_for("the request to reach the backend", Duration::from_secs(5), || async {
        backend.heads.lock().unwrap().iter().any(|h| h.starts_with("GET /hang ")).then_some(())
    })
    .await;
    drop(hanging);
    wait_for("the upstream request to be cancelled", Duration::from_secs(3), || async {
        (backend.cancelled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let text = get(proxy.admin, "admin", "/metrics").await.unwrap().body;
    for kind in ["reset", "protocol"] {
        let series = format!("switchyard_upstream_errors_total{{kind=\"{kind}\"}} ");
        assert!(text.lines().any(|l| l.starts_with(&series) && !l.ends_with(" 0")), "{series}not counted:\n{text}");
    }

    // A dead endpoint: connect refused, answered 502 like hyper's path.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let manifests = service(NS, "scripted")
        + &endpoint_slice(NS, "scripted", &[("dead-1".to_string(), dead_addr)])
        + &ingress("a.test");
    proxy.write("m.yaml", &manifests);
    let answered = wait_for("the dead endpoint to be served", Duration::from_secs(10), || async {
        let mut c = RawClient::connect(proxy.http).await;
        c.send(&get_bytes("/")).await;
        c.response().await.filter(|r| r.status == 502)
    })
    .await;
    assert!(answered.body_text().starts_with("502 Bad Gateway: upstream connect error"), "{}", answered.body_text());

    // A local answer to HEAD has no body: the next response follows its head.
    let both = read_to_close(
        proxy.http,
        b"HEAD / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(both.matches("HTTP/1.1 502 Bad Gateway\r\n").count(), 2, "{both:?}");
    assert_eq!(both.matches("502 Bad Gateway: upstream connect error").count(), 1, "one body: {both:?}");
    assert!(both.ends_with("upstream connect error\n"), "{both:?}");
}

fn assert_big(resp: &support::raw::RawResponse, what: &str) {
    assert_eq!(resp.status, 200, "{what}");
    assert_eq!(resp.body.len(), BIG, "{what}: the whole body");
    assert!(resp.body.iter().enumerate().all(|(i, &b)| b == b'a' + (i % 26) as u8), "{what}: the body is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_bodies_are_spliced_to_cleartext_clients() {
    let backend = Scripted::start().await;
    let proxy = start(&backend, &[]).await;
    let spliced = || async { metric(proxy.admin, SPLICED).await.expect("the splice counter is exported") };
    let before = spliced().await;
    let mut client = RawClient::connect(proxy.http).await;
    for i in 0..3 {
        client.send(&get_bytes("/big")).await;
        assert_big(&client.response().await.expect("big response"), &format!("request {i}"));
    }
    // The part read with the head is copied (a few KiB), the rest moved in
    // the kernel; exactly the body, so the upstream connection stayed in
    // step and served all three.
    let moved = spliced().await - before;
    assert!(moved >= 3.0 * (BIG - 16 * 1024) as f64 && moved <= 3.0 * BIG as f64, "spliced {moved} bytes");
    assert_eq!(backend.accepted(), 1, "one upstream connection for the three");
    client.send(&get_bytes("/small")).await;
    assert_eq!(client.response().await.expect("answered").body_text(), "GET /small");

    // A client with a small receive window that reads late, a body larger
    // than the socket buffers between: the proxy waits for the client to
    // drain, the body still arrives whole.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(proxy.http).await.unwrap();
    slow.write_all(&get_bytes("/huge")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let total = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut chunk)).await.expect("more body").unwrap();
        assert!(n > 0, "closed after {} bytes", all.len());
        all.extend_from_slice(&chunk[..n]);
        if let Some(end) = all[..all.len().min(4096)].windows(4).position(|w| w == b"\r\n\r\n")
            && all.len() >= end + 4 + HUGE
        {
            break end + 4 + HUGE;
        }
    };
    assert_eq!(all.len(), total, "nothing after the body");
    let body = &all[total - HUGE..];
    assert!(body.iter().enumerate().all(|(i, &b)| b == b'a' + (i % 26) as u8), "the slow client's body is intact");

    // A client that leaves mid-body: the proxy stops and closes the
    // upstream connection (it is out of step); the next request is served.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut leaving = socket.connect(proxy.http).await.unwrap();
    leaving.write_all(&get_bytes("/huge")).await.unwrap();
    let n =
        tokio::time::timeout(Duration::from_secs(5), leaving.read(&mut chunk)).await.expect("a first read").unwrap();
    assert!(n > 0, "the response started");
    drop(leaving);
    let opened = backend.accepted();
    let mut client = RawClient::connect(proxy.http).await;
    client.send(&get_bytes("/after-leaving")).await;
    assert_eq!(client.response().await.expect("answered").body_text(), "GET /after-leaving");
    assert!(backend.accepted() > opened, "the connection of the abandoned body was reused");

    // An upstream that closes mid-body: the client gets what there was and
    // a closed connection (never a short body on a live connection), and
    // the truncation is counted.
    let cut = read_to_close(proxy.http, &get_bytes("/cut")).await;
    let (head, body) = cut.split_once("\r\n\r\n").expect("the head was sent");
    assert!(head.to_ascii_lowercase().contains(&format!("content-length: {CUT}")), "{head}");
    assert!(body.len() < CUT && body.bytes().all(|b| b == b'c'), "{} bytes of the body", body.len());
    let truncated = "switchyard_upstream_errors_total{kind=\"truncated\"}";
    assert!(metric(proxy.admin, truncated).await.unwrap_or(0.0) >= 1.0, "the truncation is counted");

    // Turned off: the same bodies, copied.
    let copying = start(&backend, &["--splice-bodies=false"]).await;
    let mut client = RawClient::connect(copying.http).await;
    client.send(&get_bytes("/big")).await;
    assert_big(&client.response().await.expect("big response"), "copied");
    assert_eq!(metric(copying.admin, SPLICED).await, Some(0.0), "spliced with --splice-bodies=false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_can_be_turned_off() {
    let backend = Scripted::start().await;
    let proxy = start(&backend, &["--h1-fast-path=false"]).await;
    let mut client = RawClient::connect(proxy.http).await;
    for _ in 0..3 {
        client.send(&get_bytes("/chunked")).await;
        assert_eq!(client.response().await.expect("served by hyper").body_text(), "hello world");
    }
    assert_eq!(fast_count(&proxy).await, 0.0, "the fast path served with --h1-fast-path=false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_tls_take_the_fast_path_with_hsts() {
    use support::tls::{Ca, ClientOptions, connect, request_with_finished, tls_secret};
    let backend = Scripted::start().await;
    let leaf = Ca::new().leaf(&["a.test"]);
    let tls_ingress =
        ingress("a.test").replace("spec:\n", "spec:\n  tls:\n  - hosts: [a.test]\n    secretName: a-tls\n");
    let manifests = service(NS, "scripted")
        + &endpoint_slice(NS, "scripted", &[("scripted-1".to_string(), backend.addr)])
        + &tls_ingress
        + &tls_secret(NS, "a-tls", &leaf.cert_pem, &leaf.key_pem);
    let https = free_addr();
    let https_flag = https.to_string();
    let proxy = Standalone::start_with(&[("m.yaml", &manifests)], &["--https-addr", &https_flag]).await;
    let before = fast_count(&proxy).await;

    let stream = connect(https, ClientOptions { sni: Some("a.test"), ..Default::default() }).await.unwrap();
    let (mut stream, mut all) = (stream, Vec::new());
    stream.write_all(b"GET /tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await.expect("closed").unwrap_or(0);
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text:?}");
    assert!(text.contains("strict-transport-security: max-age=31536000; includesubdomains\r\n"), "{text:?}");
    assert!(text.ends_with("get /tls"), "{text:?}");
    assert!(backend.last_head().to_ascii_lowercase().contains("x-forwarded-proto: https\r\n"));
    assert_eq!(fast_count(&proxy).await - before, 1.0, "over TLS on the fast path");

    // A request in the same TCP write as the client's last handshake
    // message is answered too (rustls has decrypted it with the handshake).
    let request = b"GET /with-finished HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let answer = tokio::task::spawn_blocking(move || {
        request_with_finished(
            https,
            ClientOptions { sni: Some("a.test"), ..Default::default() },
            request,
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("GET /with-finished"), "{answer:?}");
    assert_eq!(fast_count(&proxy).await - before, 2.0);
}
