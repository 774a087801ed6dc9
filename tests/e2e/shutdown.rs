//! End-to-end: graceful shutdown of the real `switchyard standalone`
//! binary, step by step (readiness, keep-alive, accept, drain, HTTP/2
//! GOAWAY, WebSocket 1001 at the deadline, exit 0), and a restart of one of
//! two proxies under load that loses no request.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::raw::RawClient;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const NS: &str = "shop";

/// Manifests routing `host` to one Service whose endpoints are `eps`.
fn manifests(host: &str, svc: &str, eps: &[(String, SocketAddr)]) -> String {
    service(NS, svc)
        + &endpoint_slice(NS, svc, eps)
        + &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {svc}, namespace: {NS}}}\n\
             spec:\n  ingressClassName: switchyard\n  rules:\n  - host: {host}\n    http:\n      paths:\n      \
             - {{path: /, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
        )
}

async fn readyz(admin: SocketAddr) -> Option<StatusCode> {
    get(admin, "admin", "/readyz").await.ok().map(|r| r.status)
}

fn request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_readiness_first_then_keep_alive_ends_then_accept_stops_then_drain_and_exit_0() {
    let delay = Duration::from_millis(1500);
    let echo = start_echo("web-1").await;
    let files = manifests("a.test", "web", &[("web-1".into(), echo)]);
    let mut proxy = Standalone::start_with(&[("all.yaml", &files)], &["--shutdown-delay", "1500ms"]).await;

    // Two keep-alive connections, each with one exchange done.
    let (mut busy, mut idle) = (RawClient::connect(proxy.http).await, RawClient::connect(proxy.http).await);
    for conn in [&mut busy, &mut idle] {
        conn.send(&request("a.test", "/")).await;
        let r = conn.response().await.unwrap();
        assert!(r.status == 200 && !r.closes(), "{r:?}");
    }
    // A request still running when the signal comes, and past the delay.
    let http = proxy.http;
    let slow = tokio::spawn(async move {
        let r = get(http, "a.test", "/slow?delay_ms=3000").await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    proxy.signal("TERM");
    // 1. Readiness turns 503 at once.
    let not_ready = wait_for("readyz 503", Duration::from_secs(2), || async {
        (readyz(proxy.admin).await == Some(StatusCode::SERVICE_UNAVAILABLE)).then(Instant::now)
    })
    .await;
    assert!(not_ready - t0 < Duration::from_millis(500), "readiness off after {:?}", not_ready - t0);
    // 2. During the delay: still accepting, and every HTTP/1 response ends
    //    its connection.
    let fresh = get(proxy.http, "a.test", "/").await.unwrap();
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.headers.get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]), "{fresh:?}");
    busy.send(&request("a.test", "/")).await;
    let last = busy.response().await.unwrap();
    assert!(last.status == 200 && last.closes(), "keep-alive ends during the delay: {last:?}");
    assert!(busy.closed_within(Duration::from_secs(1)).await, "closed after `Connection: close`");
    assert!(t0.elapsed() < delay, "the checks above ran within the delay ({:?})", t0.elapsed());
    // 3. After the delay: the idle keep-alive connection is closed, and new
    //    connections are refused.
    assert!(idle.closed_within(delay + Duration::from_secs(2)).await, "idle keep-alive closed after the delay");
    let closed_at = t0.elapsed();
    assert!(
        closed_at >= delay - Duration::from_millis(100),
        "idle connection closed only after the delay: {closed_at:?}"
    );
    assert!(closed_at < delay + Duration::from_millis(1000), "idle connection closed at {closed_at:?}");
    let refused = tokio::net::TcpStream::connect(proxy.http).await;
    assert!(refused.is_err(), "listener closed after the delay");
    assert_eq!(readyz(proxy.admin).await, Some(StatusCode::SERVICE_UNAVAILABLE), "admin still answers while draining");
    // 4. The in-flight request finishes; then the process exits 0, well
    //    before the drain deadline (10 s).
    let (slow, finished) = slow.await.unwrap();
    let slow = slow.unwrap();
    assert_eq!((slow.status, slow.backend()), (StatusCode::OK, "web-1".to_string()), "{slow:?}");
    let status = proxy.wait_exit(Duration::from_secs(12)).await;
    let exited = Instant::now();
    assert!(status.success(), "exit status {status:?}\n{}", proxy.log_text());
    assert!(exited >= finished, "exit after the in-flight request");
    assert!(exited - t0 < Duration::from_secs(6), "exit as soon as drained, not at the deadline: {:?}", exited - t0);
    eprintln!(
        "shutdown: readiness off after {:?}, idle keep-alive closed at {closed_at:?}, exit at {:?}",
        not_ready - t0,
        exited - t0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_get_goaway_and_their_streams_finish() {
    let echo = start_echo("web-1").await;
    let files = manifests("a.test", "web", &[("web-1".into(), echo)]);
    let mut proxy = Standalone::start_with(&[("all.yaml", &files)], &["--shutdown-delay", "300ms"]).await;
    // HTTP/2 with prior knowledge (h2c).
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let conn = tokio::spawn(async move { (conn.await, Instant::now()) });
    let req = |path: &str| Request::get(format!("http://a.test{path}")).body(Empty::<Bytes>::new()).unwrap();
    let first = sender.send_request(req("/")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let in_flight = sender.send_request(req("/slow?delay_ms=1500"));
    let in_flight = tokio::spawn(async move {
        let resp = in_flight.await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body, Instant::now()))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    proxy.signal("TERM");
    let (status, body, finished) = in_flight.await.unwrap().expect("the in-flight stream finishes");
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("web-1"), "whole body: {body:?}");
    // GOAWAY: the client connection ends cleanly (an abrupt close is an
    // error), once its last stream is done.
    let (ended, at) = tokio::time::timeout(Duration::from_secs(5), conn).await.expect("connection closed").unwrap();
    ended.expect("HTTP/2 connection ended with GOAWAY, not an abrupt close");
    // (its in-flight stream completed above, so the close waited for it)
    assert!(at - t0 >= Duration::from_millis(300), "GOAWAY only after the delay: {:?}", at - t0);
    assert!(sender.send_request(req("/")).await.is_err(), "no new stream after GOAWAY");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
    eprintln!("h2: stream finished at {:?}, connection closed at {:?}", finished - t0, at - t0);
}

/// A WebSocket backend that, once upgraded, streams binary frames of 5,
/// 300 and 70 000 bytes (every length encoding) without pause; `closes`
/// counts Close frames it receives from clients.
async fn start_ws_streamer() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closes = Arc::new(AtomicUsize::new(0));
    let seen = closes.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if tcp.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let key = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key")))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default();
                let accept = derive_accept_key(key.as_bytes());
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if tcp.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let (mut rd, mut wr) = tcp.into_split();
                tokio::spawn(async move {
                    // Client frames are small here; a Close starts with 0x88.
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = rd.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if buf[0] == 0x88 {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                let frames: Vec<Vec<u8>> = [5usize, 300, 70_000].iter().map(|&n| binary_frame(n)).collect();
                loop {
                    for f in &frames {
                        if wr.write_all(f).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
    });
    (addr, closes)
}

/// An unmasked binary frame of `len` bytes (server to client).
fn binary_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x82];
    match len {
        0..=125 => f.push(len as u8),
        126..=0xffff => {
            f.push(126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    f.extend(std::iter::repeat_n(b'x', len));
    f
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(proxy: SocketAddr, host: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{host}/ws"), tcp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Reads until a Close frame: its code, when it came, and the data
/// messages before it (each checked whole by tungstenite's framing).
async fn read_until_close(ws: &mut Ws) -> (Option<CloseCode>, Instant, usize) {
    let mut data = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a Close within 10 s") {
            Some(Ok(Message::Close(frame))) => return (frame.map(|f| f.code), Instant::now(), data),
            Some(Ok(Message::Binary(b))) => {
                assert!([5, 300, 70_000].contains(&b.len()), "a whole frame, not a piece: {}", b.len());
                assert!(b.iter().all(|&c| c == b'x'));
                data += 1;
            }
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => data += 1,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(err)) => panic!("WebSocket protocol error before Close (a frame cut?): {err}"),
            None => panic!("stream ended without a Close frame"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_drain_deadline_websockets_get_1001_at_a_frame_boundary_and_slow_requests_end() {
    let echo = start_echo("web-1").await;
    let (streamer, backend_closes) = start_ws_streamer().await;
    let files = manifests("a.test", "web", &[("web-1".into(), echo)])
        + &manifests("stream.test", "stream", &[("stream-1".into(), streamer)]);
    let mut proxy =
        Standalone::start_with(&[("all.yaml", &files)], &["--shutdown-delay", "200ms", "--drain-timeout", "1s"]).await;
    let mut chat = ws_connect(proxy.http, "a.test").await;
    chat.send(Message::text("hello")).await.unwrap();
    assert_eq!(chat.next().await.unwrap().unwrap(), Message::text("web-1:hello"));
    let mut stream = ws_connect(proxy.http, "stream.test").await;
    let http = proxy.http;
    let slow = tokio::spawn(async move { (get(http, "a.test", "/slow?delay_ms=20000").await, Instant::now()) });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    proxy.signal("TERM");
    let streaming = tokio::spawn(async move {
        let got = read_until_close(&mut stream).await;
        // tungstenite answers the Close; give it a moment to go out.
        let _ = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
        got
    });
    let (chat_code, chat_at, _) = read_until_close(&mut chat).await;
    let (stream_code, stream_at, frames) = streaming.await.unwrap();
    // The deadline is delay + drain = 1.2 s after the signal.
    for (what, code, at) in [("echo", chat_code, chat_at), ("streaming", stream_code, stream_at)] {
        assert_eq!(code, Some(CloseCode::Away), "{what} WebSocket closed with 1001");
        let when = at - t0;
        assert!(when >= Duration::from_millis(1100), "{what}: not before the deadline ({when:?})");
        assert!(when < Duration::from_millis(2700), "{what}: at the deadline ({when:?})");
    }
    assert!(frames > 10, "the stream flowed until the Close ({frames} frames)");
    // The client's Close answer reached the backend through the tunnel.
    wait_for("the client's Close at the backend", Duration::from_secs(2), || async {
        (backend_closes.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    // The 20 s request is cut at the deadline: an error, not a hang.
    let (slow, slow_at) = slow.await.unwrap();
    assert!(slow.as_ref().map_or(true, |r| r.status != StatusCode::OK), "cut: {slow:?}");
    assert!(slow_at - t0 < Duration::from_secs(4), "the slow request ended at {:?}", slow_at - t0);
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "exit 0 after the deadline: {status:?}\n{}", proxy.log_text());
    eprintln!(
        "deadline: echo WebSocket 1001 at {:?}, streaming WebSocket 1001 at {:?} after {frames} whole frames, \
         slow request ended at {:?}, exit after {:?}",
        chat_at - t0,
        stream_at - t0,
        slow_at - t0,
        t0.elapsed()
    );
}

// === restart under load ===

/// Load bounds: whichever comes first.
const MAX_REQUESTS: u64 = 60_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(30);

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 2],
    /// Connection refused: the request never reached a proxy, and was sent
    /// to the other one.
    refused: AtomicU64,
    /// Anything else: a request that reached a proxy and did not get its
    /// 200. Must stay 0.
    lost: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

fn is_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        source = e.source();
    }
    false
}

/// Starts `switchyard standalone` again on `proxy`'s ports and manifests,
/// appending to its log.
fn respawn(proxy: &mut Switchyard, extra: &[&str]) {
    let log = std::fs::OpenOptions::new().append(true).open(&proxy.log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["standalone", "--manifests", &proxy.path().display().to_string()])
        .args(extra)
        .args(["--http-addr", &proxy.http.to_string(), "--admin-addr", &proxy.admin.to_string()])
        .args(["--workers", &support::workers(), "--drain-timeout", "10s", "--log", "info"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("respawn switchyard");
    proxy.child = Some(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_one_of_two_proxies_under_load_loses_no_request() {
    let flags = ["--shutdown-delay", "1s"];
    let eps = vec![("web-1".to_string(), start_echo("web-1").await), ("web-2".to_string(), start_echo("web-2").await)];
    let files = manifests("a.test", "web", &eps);
    let mut a = Standalone::start_with(&[("all.yaml", &files)], &flags).await;
    let b = Standalone::start_with(&[("all.yaml", &files)], &flags).await;
    let proxies = [(a.http, a.admin), (b.http, b.admin)];

    // The load balancer's view: a proxy takes new requests while its
    // /readyz says 200, polled every 100 ms (10 times within the delay).
    let ready = Arc::new([AtomicBool::new(true), AtomicBool::new(true)]);
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (ready, stop) = (ready.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, (_, admin)) in proxies.iter().enumerate() {
                    ready[i].store(readyz(*admin).await == Some(StatusCode::OK), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // 16 clients with keep-alive connections; one request in 8 takes
    // 200 ms, so that some are in flight whenever the signal comes.
    let tally = Arc::new(Tally::default());
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..16u64 {
        let (ready, stop, tally, sent) = (ready.clone(), stop.clone(), tally.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let mut turn = w;
            while !stop.load(Ordering::Relaxed)
                && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                && started.elapsed() < MAX_LOAD_TIME
            {
                turn += 1;
                let path = if turn % 8 == 0 { "/slow?delay_ms=200" } else { "/" };
                let mut first = (turn % 2) as usize;
                if !ready[first].load(Ordering::Relaxed) {
                    first = 1 - first;
                }
                let mut done = false;
                for attempt in 0..4 {
                    let i = (first + attempt) % 2;
                    let uri = format!("http://{}{path}", proxies[i].0);
                    let req = Request::get(uri).header("host", "a.test").body(Empty::new()).unwrap();
                    let answer = async {
                        let resp = client.request(req).await?;
                        let status = resp.status();
                        let body = resp.into_body().collect().await?.to_bytes();
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
                    };
                    match tokio::time::timeout(Duration::from_secs(10), answer).await {
                        Ok(Ok((StatusCode::OK, body))) if body.starts_with(b"{") => {
                            tally.ok[i].fetch_add(1, Ordering::Relaxed);
                            done = true;
                            break;
                        }
                        Ok(Err(err)) if is_refused(&*err) => {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        other => {
                            let what = match other {
                                Ok(Ok((status, body))) => format!("{status} {}", String::from_utf8_lossy(&body)),
                                Ok(Err(err)) => format!("error: {err:?}"),
                                Err(_) => "timed out".to_string(),
                            };
                            tally.errors.lock().unwrap().push(format!("proxy {i}: {what}"));
                            break;
                        }
                    }
                }
                if !done {
                    tally.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // Let the load settle, then restart proxy A: SIGTERM, wait for exit 0,
    // start it again on the same ports.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = tally.ok[0].load(Ordering::Relaxed);
    let t0 = Instant::now();
    a.signal("TERM");
    let status = a.wait_exit(Duration::from_secs(15)).await;
    let down_at = t0.elapsed();
    assert!(status.success(), "A exited {status:?}\n{}", a.log_text());
    respawn(&mut a, &flags);
    a.wait_ready().await;
    let up_at = t0.elapsed();
    wait_for("A back in rotation", Duration::from_secs(5), || async {
        (ready[0].load(Ordering::Relaxed)).then_some(())
    })
    .await;
    let during = tally.ok[0].load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    checker.await.unwrap();

    let ok = [tally.ok[0].load(Ordering::Relaxed), tally.ok[1].load(Ordering::Relaxed)];
    let (refused, lost) = (tally.refused.load(Ordering::Relaxed), tally.lost.load(Ordering::Relaxed));
    let total = ok[0] + ok[1] + lost;
    eprintln!(
        "restart under load: {total} requests in {:?}: {} ok (A {}, B {}), {lost} lost, {refused} connection \
         refusals retried on the other proxy; A stopped {down_at:?} after SIGTERM and was ready again at {up_at:?}; \
         A served {before} before the signal and {} after its restart",
        started.elapsed(),
        ok[0] + ok[1],
        ok[0],
        ok[1],
        ok[0] - during,
    );
    let errors = tally.errors.lock().unwrap();
    assert_eq!(lost, 0, "lost requests; first ones: {:?}", &errors[..errors.len().min(10)]);
    assert!(total > 1000, "enough load to mean something ({total})");
    assert!(before > 0 && ok[0] > during, "A served before and after its restart ({before}, {})", ok[0] - during);
    assert!(down_at >= Duration::from_secs(1), "A kept serving through its shutdown delay ({down_at:?})");
}
