//! End-to-end: the real `switchyard standalone` binary, real echo backends
//! on loopback, real HTTP/1.1 and WebSocket clients.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const NS: &str = "shop";

fn ingress(name: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  ingressClassName: switchyard\n{rules}"
    )
}

fn path(path: &str, kind: &str, svc: &str) -> String {
    format!("      - {{path: {path}, pathType: {kind}, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n")
}

/// Services `web` (2 endpoints), `api`, `exact`, `other`, `empty` (no
/// endpoints); returns the manifests.
async fn backends() -> String {
    let mut yaml = String::new();
    for (svc, pods) in [
        ("web", &["web-1", "web-2"][..]),
        ("api", &["api-1"][..]),
        ("exact", &["exact-1"][..]),
        ("other", &["other-1"][..]),
    ] {
        yaml += &service(NS, svc);
        let mut eps = Vec::new();
        for pod in pods {
            eps.push((pod.to_string(), start_echo(pod).await));
        }
        yaml += &endpoint_slice(NS, svc, &eps);
    }
    yaml += &service(NS, "empty");
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_path_routing_merge_default_backend_404_503() {
    let main_rules = format!(
        "  rules:\n  - host: a.test\n    http:\n      paths:\n{}{}{}  - host: \"*.wild.test\"\n    http:\n      paths:\n{}  - host: empty.test\n    http:\n      paths:\n{}  - host: nosvc.test\n    http:\n      paths:\n{}",
        path("/", "Prefix", "web"),
        path("/api", "Prefix", "api"),
        path("/api/exact", "Exact", "exact"),
        path("/", "Prefix", "other"),
        path("/", "Prefix", "empty"),
        path("/", "Prefix", "missing"),
    );
    let merged = format!("  rules:\n  - host: A.TEST\n    http:\n      paths:\n{}", path("/other", "Prefix", "other"));
    let foreign = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: theirs, namespace: shop}\n\
                   spec:\n  ingressClassName: nginx\n  defaultBackend: {service: {name: other, port: {number: 80}}}\n";
    let proxy = Standalone::start(&[
        ("backends.yaml", &backends().await),
        ("main.yaml", &ingress("main", &main_rules)),
        ("merged.json.yaml", &ingress("merged", &merged)),
        ("foreign.yaml", foreign),
    ])
    .await;
    let p = proxy.http;

    // Prefix / round-robins over both endpoints of `web`.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = get(p, "a.test", "/shop/cart").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        seen.push(r.backend());
    }
    seen.sort();
    assert_eq!(seen, ["web-1", "web-1", "web-2", "web-2"]);
    // Longest prefix, element-wise.
    assert_eq!(get(p, "a.test", "/api/users").await.unwrap().backend(), "api-1");
    assert!(get(p, "a.test", "/apix").await.unwrap().backend().starts_with("web-"));
    // Exact beats Prefix; Exact is whole-path only.
    assert_eq!(get(p, "a.test", "/api/exact").await.unwrap().backend(), "exact-1");
    assert_eq!(get(p, "a.test", "/api/exact/").await.unwrap().backend(), "api-1");
    // A rule from a second Ingress for the same host (case-insensitive) merges in.
    assert_eq!(get(p, "a.test:8080", "/other/x").await.unwrap().backend(), "other-1");
    // Wildcard covers exactly one label.
    assert_eq!(get(p, "shop.wild.test", "/").await.unwrap().backend(), "other-1");
    assert_eq!(get(p, "a.b.wild.test", "/").await.unwrap().status, StatusCode::NOT_FOUND);
    // No matching host, no default backend (the foreign class's is ignored): 404.
    let r = get(p, "unknown.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    // Service without endpoints, and a missing Service: 503 with a reason.
    let r = get(p, "empty.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("no ready endpoints for service shop/empty"), "{}", r.body);
    let r = get(p, "nosvc.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("service shop/missing not found"), "{}", r.body);

    // Adding a defaultBackend takes effect live: unknown hosts reach it.
    let default = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: fallback, namespace: shop}\n\
                   spec:\n  ingressClassName: switchyard\n  defaultBackend: {service: {name: api, port: {number: 80}}}\n";
    proxy.write("default.yaml", default);
    let took = eventually(p, "unknown.test", "/", Duration::from_secs(5), |r| r.backend() == "api-1").await;
    eprintln!("defaultBackend applied after {took:?}");
    // A known host whose paths do not match also falls to the default backend.
    let r = get(p, "nosvc.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "host rule still owns its paths");
    assert_eq!(get(p, "a.b.wild.test", "/").await.unwrap().backend(), "api-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_is_forwarded_unchanged_with_forwarded_headers() {
    let rules = format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/", "Prefix", "api"));
    let proxy =
        Standalone::start(&[("backends.yaml", &backends().await), ("main.yaml", &ingress("main", &rules))]).await;
    let req = Request::post(format!("http://{}/submit/form?x=1&y=%20z", proxy.http))
        .header("host", "a.test")
        .header("user-agent", "switchyard-e2e/1.0")
        .header("x-custom", "kept")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must-not-pass")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let r = send(proxy.http, req).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let echo = r.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/submit/form?x=1&y=%20z");
    assert_eq!(echo["body_len"], 10);
    let h = &echo["headers"];
    assert_eq!(h["host"], "a.test");
    assert_eq!(h["user-agent"], "switchyard-e2e/1.0");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "client-supplied XFF is not trusted");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "a.test");
    assert!(h.get("x-hop").is_none(), "a field named in Connection is hop-by-hop: {h}");
    assert_eq!(r.headers["x-backend"], "api-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_keepalive_and_inflight_survive_a_live_edit() {
    let rules =
        |svc: &str| format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/", "Prefix", svc));
    let proxy =
        Standalone::start(&[("backends.yaml", &backends().await), ("main.yaml", &ingress("main", &rules("api")))])
            .await;

    // A WebSocket through the proxy.
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://a.test/ws", tcp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("api-1:hello"));

    // An idle keep-alive connection, used once before the edit.
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut keepalive, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let ka_get = |path: &str| Request::get(path).header("host", "a.test").body(Full::<Bytes>::default()).unwrap();
    let r = keepalive.send_request(ka_get("/before")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.into_body().collect().await.unwrap();

    // A request in flight across the edit.
    let inflight = tokio::spawn(get(proxy.http, "a.test", "/slow?delay_ms=1500"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The edit: a.test now goes to `other`.
    let started = Instant::now();
    proxy.write("main.yaml", &ingress("main", &rules("other")));
    let took = eventually(proxy.http, "a.test", "/", Duration::from_secs(5), |r| r.backend() == "other-1").await;
    eprintln!("route change served after {took:?} (file written {:?} ago)", started.elapsed());
    assert!(took < Duration::from_secs(3), "a manifest change must be served within about a second, took {took:?}");

    // Nothing was dropped: the WebSocket still talks to its backend…
    ws.send(Message::text("still there")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("api-1:still there"));
    // …the in-flight request completes…
    let r = inflight.await.unwrap().unwrap();
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "api-1".to_string()));
    // …and the idle keep-alive connection serves the new routing.
    let r = keepalive.send_request(ka_get("/after")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("other-1"));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_are_streamed_not_buffered() {
    let rules = format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/", "Prefix", "api"));
    let proxy =
        Standalone::start(&[("backends.yaml", &backends().await), ("main.yaml", &ingress("main", &rules))]).await;
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req =
        Request::get("/sse?events=4&interval_ms=300").header("host", "a.test").body(Full::<Bytes>::default()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let start = Instant::now();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(start.elapsed());
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert_eq!(text.matches("data: api-1 event").count(), 4, "{text}");
    // Events arrive one by one as written, 300 ms apart, not all at the end.
    assert!(arrivals.len() >= 4, "expected one frame per event, got {arrivals:?}");
    assert!(arrivals[arrivals.len() - 1] - arrivals[0] >= Duration::from_millis(600), "{arrivals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_manifest_keeps_its_last_good_version_and_others_still_apply() {
    let rules =
        |svc: &str| format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/", "Prefix", svc));
    let rules_b =
        |svc: &str| format!("  rules:\n  - host: b.test\n    http:\n      paths:\n{}", path("/", "Prefix", svc));
    let proxy = Standalone::start(&[
        ("backends.yaml", &backends().await),
        ("a.yaml", &ingress("a", &rules("api"))),
        ("b.yaml", &ingress("b", &rules_b("api"))),
    ])
    .await;
    // a.yaml becomes invalid YAML; b.yaml changes validly.
    proxy.write("a.yaml", "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a\n  broken: [");
    proxy.write("b.yaml", &ingress("b", &rules_b("other")));
    eventually(proxy.http, "b.test", "/", Duration::from_secs(5), |r| r.backend() == "other-1").await;
    assert_eq!(get(proxy.http, "a.test", "/").await.unwrap().backend(), "api-1", "last good a.yaml stays in force");
    // An object that does not fit its type is refused the same way.
    proxy.write("a.yaml", &ingress("a", "  rules: 7\n"));
    proxy.write("b.yaml", &ingress("b", &rules_b("web")));
    eventually(proxy.http, "b.test", "/", Duration::from_secs(5), |r| r.backend().starts_with("web-")).await;
    assert_eq!(get(proxy.http, "a.test", "/").await.unwrap().backend(), "api-1");
    let log = proxy.log_text();
    assert!(log.contains("a.yaml") && log.contains("invalid manifest"), "log must name the file:\n{log}");
    assert!(log.contains("Ingress shop/a"), "log must name the object:\n{log}");
    // Fixing the file applies it.
    proxy.write("a.yaml", &ingress("a", &rules("other")));
    eventually(proxy.http, "a.test", "/", Duration::from_secs(5), |r| r.backend() == "other-1").await;
}

/// Read syscalls of `pid` so far (`/proc/PID/io`).
fn read_syscalls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("syscr: ")).unwrap().trim().parse().unwrap()
}

/// The directory watch must not react to the rescan's own reads of the
/// manifests (inotify reports opens and reads too): idle, the process
/// rescans once a second, not in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_manifest_directory_is_not_rescanned_in_a_loop() {
    let proxy = Standalone::start(&[("backends.yaml", &backends().await)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read_syscalls(proxy.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reads = read_syscalls(proxy.pid()) - before;
    // One scan a second reads the directory and each file: a few dozen
    // reads in 3 s. The loop this guards against made hundreds a second.
    assert!(reads < 200, "{reads} read syscalls in 3 s while nothing changed");
    // And a change is still applied promptly.
    proxy.write(
        "i.yaml",
        &ingress("i", &format!("  rules:\n  - host: i.test\n    http:\n      paths:\n{}", path("/", "Prefix", "api"))),
    );
    eventually(proxy.http, "i.test", "/", Duration::from_secs(5), |r| r.backend() == "api-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_metrics_and_snapshot() {
    let rules = format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/api", "Prefix", "api"));
    let proxy =
        Standalone::start(&[("backends.yaml", &backends().await), ("main.yaml", &ingress("main", &rules))]).await;
    assert_eq!(get(proxy.http, "a.test", "/api").await.unwrap().status, StatusCode::OK);
    assert_eq!(get(proxy.http, "a.test", "/nope").await.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(get(proxy.admin, "x", "/healthz").await.unwrap().status, StatusCode::OK);
    assert_eq!(get(proxy.admin, "x", "/readyz").await.unwrap().status, StatusCode::OK);
    let metrics = get(proxy.admin, "x", "/metrics").await.unwrap().body;
    assert!(
        metrics.contains(r#"switchyard_requests_total{code="200",host="a.test",service="shop/api"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"switchyard_requests_total{code="404",host="",service=""} 1"#), "{metrics}");
    assert!(metrics.contains(r#"switchyard_request_duration_seconds_count{service="shop/api"} 1"#), "{metrics}");
    let snapshot = get(proxy.admin, "x", "/debug/snapshot").await.unwrap().json();
    assert_eq!(snapshot["router"]["vhosts"][0]["host"], "a.test");
    assert_eq!(snapshot["router"]["vhosts"][0]["routes"][0]["path"], "/api");
    let backend = snapshot["backends"].as_array().unwrap().iter().find(|b| b["id"] == "shop/api:80").unwrap();
    assert_eq!(backend["endpoints"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_inflight_requests_then_exits_zero() {
    let rules = format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/", "Prefix", "api"));
    let mut proxy =
        Standalone::start(&[("backends.yaml", &backends().await), ("main.yaml", &ingress("main", &rules))]).await;
    let inflight = tokio::spawn(get(proxy.http, "a.test", "/slow?delay_ms=1000"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.signal("TERM");
    let r = inflight.await.unwrap().unwrap();
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "api-1".to_string()));
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}\n{}", proxy.log_text());
    assert!(tokio::net::TcpStream::connect(proxy.http).await.is_err(), "listener closed after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_failure_is_502() {
    // An endpoint nobody listens on.
    let dead = free_addr();
    let yaml = service(NS, "dead") + &endpoint_slice(NS, "dead", &[("dead-1".to_string(), dead)]);
    let rules = format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/", "Prefix", "dead"));
    let proxy = Standalone::start(&[("backends.yaml", &yaml), ("main.yaml", &ingress("main", &rules))]).await;
    let r = get(proxy.http, "a.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert!(r.body.contains("upstream connect error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_504() {
    let rules = format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/", "Prefix", "api"));
    let proxy = Standalone::start_with(
        &[("backends.yaml", &backends().await), ("main.yaml", &ingress("main", &rules))],
        &["--upstream-timeout", "300ms"],
    )
    .await;
    let r = get(proxy.http, "a.test", "/?delay_ms=3000").await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    assert_eq!(get(proxy.http, "a.test", "/fast").await.unwrap().status, StatusCode::OK);
}

/// Sends raw bytes on a fresh connection and returns what came back
/// (until close or 2 s).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_hosts_are_refused_and_only_websocket_upgrades_pass() {
    let rules = format!(
        "  rules:\n  - host: public.test\n    http:\n      paths:\n{}  - host: internal.test\n    http:\n      paths:\n{}",
        path("/", "Prefix", "api"),
        path("/", "Prefix", "other")
    );
    let proxy =
        Standalone::start(&[("backends.yaml", &backends().await), ("main.yaml", &ingress("main", &rules))]).await;
    // Absolute-form target naming one host, Host header another: 400.
    let reply =
        raw(proxy.http, b"GET http://public.test/x HTTP/1.1\r\nHost: internal.test\r\nConnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // Agreeing absolute-form: routed by it.
    let reply =
        raw(proxy.http, b"GET http://public.test/x HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("api-1"), "{reply}");
    // Two Host headers: 400.
    let reply =
        raw(proxy.http, b"GET /x HTTP/1.1\r\nHost: public.test\r\nHost: internal.test\r\nConnection: close\r\n\r\n")
            .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // An h2c upgrade is not passed on: the backend sees a plain request.
    let reply = raw(
        proxy.http,
        b"GET /x HTTP/1.1\r\nHost: public.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(!reply.to_ascii_lowercase().contains("\"upgrade\""), "Upgrade must not reach the backend: {reply}");
    assert!(!reply.to_ascii_lowercase().contains("http2-settings"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_extended_only_behind_trusted_proxies() {
    let rules = format!("  rules:\n  - host: a.test\n    http:\n      paths:\n{}", path("/", "Prefix", "api"));
    let proxy = Standalone::start_with(
        &[("backends.yaml", &backends().await), ("main.yaml", &ingress("main", &rules))],
        &["--trusted-proxies", "127.0.0.0/8,10.0.0.0/8"],
    )
    .await;
    let req = Request::get(format!("http://{}/", proxy.http))
        .header("host", "a.test")
        .header("x-forwarded-for", "198.51.100.7, 10.1.2.3")
        .body(Full::<Bytes>::default())
        .unwrap();
    let h = send(proxy.http, req).await.unwrap().json()["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "198.51.100.7", "rightmost untrusted hop");
    // A plain GET: answered on the HTTP/1.1 fast path, which keeps the
    // chain as hyper's path does.
    assert_eq!(metric(proxy.admin, "switchyard_h1_fast_path_requests_total").await, Some(1.0));
}

/// (thread name, nice value) of each thread of `pid`, from /proc.
fn thread_priorities(pid: u32) -> Vec<(String, i32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue; // the thread ended meanwhile
        };
        threads.push((comm.trim().to_string(), nice_of(&stat)));
    }
    threads
}

/// The nice value in a /proc stat line.
fn nice_of(stat: &str) -> i32 {
    // After "PID (NAME) " come the fields from the third on; nice is the 19th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[16].parse().unwrap()
}

/// Watching, parsing and compiling run on the controller's own threads,
/// `--controller-nice` (0 by default) above the process's nice value; the
/// threads that serve requests keep the process's own. Changes still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_threads_run_at_a_lower_priority_than_the_dataplane() {
    // The child inherits the nice value of the thread that starts it.
    let base = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    for (flags, added) in [(&[][..], 0), (&["--controller-nice", "10"][..], 10), (&["--controller-nice", "3"][..], 3)] {
        let proxy = Standalone::start_with(&[("backends.yaml", &backends().await)], flags).await;
        proxy.write(
            "i.yaml",
            &ingress(
                "i",
                &format!("  rules:\n  - host: i.test\n    http:\n      paths:\n{}", path("/", "Prefix", "api")),
            ),
        );
        eventually(proxy.http, "i.test", "/", Duration::from_secs(5), |r| r.backend() == "api-1").await;
        let threads = thread_priorities(proxy.pid());
        let of = |name: &str| threads.iter().filter(|(n, _)| n == name).map(|(_, nice)| *nice).collect::<Vec<_>>();
        let (control, dataplane) = (of("switchyard-ctl"), of("switchyard-dp"));
        assert!(!control.is_empty() && !dataplane.is_empty(), "{flags:?}: threads {threads:?}");
        let lowered = (base + added).min(19);
        assert!(control.iter().all(|&n| n == lowered), "{flags:?}: controller threads {control:?}, want {lowered}");
        assert!(dataplane.iter().all(|&n| n == base), "{flags:?}: dataplane threads {dataplane:?}, want {base}");
    }
    // Out of range: a clear error at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["standalone", "--manifests", "/nonexistent", "--controller-nice", "20"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--controller-nice"), "{stderr}");
}
