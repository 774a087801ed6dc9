//! End-to-end: active health checks through the real binary, with echo
//! backends on loopback whose health endpoint the test flips.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const NS: &str = "hc";

fn manifests(eps: &[(String, std::net::SocketAddr)], check: &str) -> Vec<(&'static str, String)> {
    let ingress = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: hc}\nspec:\n  \
                   ingressClassName: switchyard\n  rules: [{host: a.test, http: {paths: [{path: /, pathType: Prefix, \
                   backend: {service: {name: web, port: {number: 80}}}}]}}]\n";
    let policy = format!(
        "---\napiVersion: switchyard.dev/v1alpha1\nkind: BalancerPolicy\nmetadata: {{name: web, namespace: hc}}\n\
         spec:\n  targetRef: {{kind: Service, name: web}}\n  healthCheck:\n    active: {check}\n"
    );
    vec![
        ("b.yaml", service(NS, "web") + &endpoint_slice(NS, "web", eps)),
        ("i.yaml", ingress.to_string()),
        ("p.yaml", policy),
    ]
}

async fn set_health(backend: std::net::SocketAddr, status: u16) {
    let req = Request::put(format!("http://{backend}/healthz?status={status}")).body(Full::default()).unwrap();
    assert_eq!(send(backend, req).await.unwrap().status.as_u16(), status);
}

async fn healthy(admin: std::net::SocketAddr, endpoint: std::net::SocketAddr) -> Option<f64> {
    metric(admin, &format!(r#"switchyard_endpoint_healthy{{endpoint="{endpoint}",service="hc/web"}}"#)).await
}

async fn spread(p: std::net::SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = get(p, "a.test", "/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        *seen.entry(r.backend()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_http_check_takes_an_endpoint_out_and_passing_brings_it_back() {
    let mut eps = Vec::new();
    for name in ["web-1", "web-2", "web-3"] {
        eps.push((name.to_string(), start_echo(name).await));
    }
    let check =
        "{type: HTTP, path: /healthz, interval: 100ms, timeout: 100ms, healthyThreshold: 2, unhealthyThreshold: 2}";
    let files = manifests(&eps, check);
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let proxy = Standalone::start(&files).await;
    assert_eq!(spread(proxy.http, 6).await.len(), 3);

    // web-2's /healthz fails while its serving port still works.
    let web2 = eps[1].1;
    set_health(web2, 500).await;
    wait_for("web-2 unhealthy", Duration::from_secs(5), || async {
        (healthy(proxy.admin, web2).await? == 0.0).then_some(())
    })
    .await;
    let seen = spread(proxy.http, 30).await;
    assert!(!seen.contains_key("web-2"), "an endpoint failing its check gets no traffic: {seen:?}");

    // It passes again: back after healthyThreshold probes.
    set_health(web2, 200).await;
    wait_for("web-2 healthy", Duration::from_secs(5), || async {
        (healthy(proxy.admin, web2).await? == 1.0).then_some(())
    })
    .await;
    assert!(spread(proxy.http, 9).await.contains_key("web-2"));
    let metrics = get(proxy.admin, "x", "/metrics").await.unwrap().body;
    for to in ["unhealthy", "healthy"] {
        assert!(
            metrics
                .contains(&format!(r#"switchyard_endpoint_health_transitions_total{{service="hc/web",to="{to}"}} 1"#)),
            "{to}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_detects_a_closed_port_and_503_when_none_is_left() {
    let eps = vec![("web-1".to_string(), start_echo("web-1").await)];
    // Probe a port nobody listens on: the serving port works, the check fails.
    let closed = free_addr().port();
    let check = format!("{{type: TCP, port: {closed}, interval: 100ms, timeout: 100ms, unhealthyThreshold: 2}}");
    let files = manifests(&eps, &check);
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let proxy = Standalone::start(&files).await;
    wait_for("closed port detected", Duration::from_secs(5), || async {
        (healthy(proxy.admin, eps[0].1).await? == 0.0).then_some(())
    })
    .await;
    let r = get(proxy.http, "a.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("no healthy endpoints for service hc/web"), "{}", r.body);
}

fn policy_files(eps: &[(String, std::net::SocketAddr)], spec: &str) -> Vec<(&'static str, String)> {
    let mut files = manifests(eps, "{type: TCP, interval: 1h}");
    files[2].1 = format!(
        "---\napiVersion: switchyard.dev/v1alpha1\nkind: BalancerPolicy\nmetadata: {{name: web, namespace: hc}}\n\
         spec:\n  targetRef: {{kind: Service, name: web}}\n{spec}"
    );
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_gives_a_joining_endpoint_a_smaller_share_during_its_window() {
    let mut eps = vec![("web-1".to_string(), start_echo("web-1").await)];
    let files = policy_files(&eps, "  slowStart: {window: 4s}\n");
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let proxy = Standalone::start(&files).await;
    eps.push(("web-2".to_string(), start_echo("web-2").await));
    proxy.write("b.yaml", &(service(NS, "web") + &endpoint_slice(NS, "web", &eps)));
    eventually(proxy.admin, "x", "/debug/snapshot", Duration::from_secs(5), |r| r.body.contains("web-2")).await;
    let early = spread(proxy.http, 100).await;
    let early_share = early.get("web-2").copied().unwrap_or(0);
    assert!(early_share < 25, "a joining endpoint ramps up (round-robin would give it 50): {early:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let late = spread(proxy.http, 100).await;
    assert!(late.get("web-2").copied().unwrap_or(0) >= 40, "after the window it gets its full share: {late:?}");
    eprintln!("slow start: web-2 got {early_share}/100 early in the window, {:?} after", late.get("web-2"));
}

/// A backend that answers 503 to everything.
async fn unavailable_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let body = "{\"backend\":\"unavailable\"}";
                    let resp =
                        format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if tcp.write_all(resp.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_unavailable_reach_another_endpoint_for_idempotent_requests_only() {
    let eps =
        vec![("bad-1".to_string(), unavailable_backend().await), ("web-1".to_string(), start_echo("web-1").await)];
    let spec =
        "  retries: {attempts: 2, retryOn: [Unavailable]}\n  healthCheck: {passive: {consecutiveFailures: 1000}}\n";
    let files = policy_files(&eps, spec);
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let proxy = Standalone::start(&files).await;
    for _ in 0..20 {
        let r = get(proxy.http, "a.test", "/").await.unwrap();
        assert_eq!((r.status, r.backend()), (StatusCode::OK, "web-1".to_string()), "GET retried past the 503");
    }
    let mut posts = BTreeMap::new();
    for _ in 0..10 {
        let req =
            Request::post(format!("http://{}/", proxy.http)).header("host", "a.test").body(Full::default()).unwrap();
        *posts.entry(send(proxy.http, req).await.unwrap().status.as_u16()).or_insert(0) += 1;
    }
    assert!(posts.get(&503).copied().unwrap_or(0) > 0, "a POST is never retried: {posts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_request_timeout_replaces_the_global_one() {
    let eps = vec![("web-1".to_string(), start_echo("web-1").await)];
    let files = policy_files(&eps, "  timeouts: {request: 200ms}\n");
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let proxy = Standalone::start(&files).await;
    let r = get(proxy.http, "a.test", "/?delay_ms=2000").await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    assert_eq!(get(proxy.http, "a.test", "/").await.unwrap().status, StatusCode::OK);
}

/// Steady load (200 requests/s for `secs` seconds, bounded) while the
/// `victim` backend process is killed after one second. Returns (ok,
/// failed) and how long the endpoint took to leave the rotation
/// (`switchyard_endpoint_healthy` = 0: passive ejection or the active
/// check, whichever comes first).
async fn kill_under_load(spec: &str, secs: u64) -> (usize, usize, Duration) {
    let mut echoes: Vec<_> =
        (1..=3).map(|i| (format!("web-{i}"), EchoProcess::start(&format!("web-{i}"), 0))).collect();
    let eps: Vec<_> = echoes.iter().map(|(n, e)| (n.clone(), e.addr)).collect();
    let files = policy_files(&eps, spec);
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let proxy = Standalone::start(&files).await;
    let (http, admin) = (proxy.http, proxy.admin);
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut inflight = Vec::new();
        for _ in 0..(secs * 200) {
            tick.tick().await;
            inflight.push(tokio::spawn(get(http, "a.test", "/")));
        }
        for h in inflight {
            match h.await.unwrap() {
                Ok(r) if r.status == StatusCode::OK => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = echoes[1].1.addr;
    echoes[1].1.kill();
    let killed = std::time::Instant::now();
    let out = wait_for("victim out of rotation", Duration::from_secs(10), || async {
        (healthy(admin, victim).await? == 0.0).then(|| killed.elapsed())
    })
    .await;
    let (ok, failed) = load.await.unwrap();
    (ok, failed, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_loses_no_get_with_retries_and_few_without() {
    let check = "  healthCheck:\n    active: {type: HTTP, path: /healthz, interval: 1s, timeout: 500ms, unhealthyThreshold: 3}\n";
    let (ok, failed, out) = kill_under_load(&format!("{check}  retries: {{attempts: 2}}\n"), 5).await;
    eprintln!("with retries: {ok} ok, {failed} failed; out of rotation {out:?} after the kill");
    assert_eq!(failed, 0, "with retries no GET fails");
    assert!(ok >= 900, "{ok}");
    let (ok, failed, out) = kill_under_load(&format!("{check}  retries: {{attempts: 0}}\n"), 5).await;
    eprintln!("without retries: {ok} ok, {failed} failed; out of rotation {out:?} after the kill");
    assert!(failed <= 5, "without retries, failures are bounded by the passive threshold (5): {failed}");
}
