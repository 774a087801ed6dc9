//! End-to-end: BalancerPolicy algorithms over real HTTP through the real
//! binary, with echo backends on loopback.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const NS: &str = "lb";

async fn pool(pods: &[&str]) -> (String, Vec<(String, std::net::SocketAddr)>) {
    let mut eps = Vec::new();
    for pod in pods {
        eps.push((pod.to_string(), start_echo(pod).await));
    }
    (service(NS, "web") + &endpoint_slice(NS, "web", &eps), eps)
}

fn ingress() -> String {
    "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: lb}\nspec:\n  ingressClassName: switchyard\n  \
     rules: [{host: a.test, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]\n"
        .to_string()
}

fn policy(body: &str) -> String {
    format!(
        "---\napiVersion: switchyard.dev/v1alpha1\nkind: BalancerPolicy\nmetadata: {{name: web, namespace: lb}}\n\
         spec:\n  targetRef: {{kind: Service, name: web}}\n{body}"
    )
}

async fn counts(p: std::net::SocketAddr, n: usize, header: Option<(&str, String)>) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let mut req = Request::get(format!("http://{p}/")).header("host", "a.test");
        if let Some((k, v)) = &header {
            req = req.header(*k, v);
        }
        let r = send(p, req.body(Full::default()).unwrap()).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        *seen.entry(r.backend()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_rotates_and_weighted_round_robin_keeps_proportions() {
    let (backends, _) = pool(&["small-1", "large-1"]).await;
    let wrr = policy("  algorithm: WeightedRoundRobin\n  endpointWeights: [{podName: \"large-*\", weight: 3}]\n");
    let proxy = Standalone::start(&[("b.yaml", &backends), ("i.yaml", &ingress())]).await;
    // Round-robin: strict alternation.
    let order: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(get(proxy.http, "a.test", "/").await.unwrap().backend());
        }
        v
    };
    assert!(order.windows(2).all(|w| w[0] != w[1]), "strict rotation: {order:?}");
    proxy.write("p.yaml", &wrr);
    eventually(proxy.admin, "x", "/debug/snapshot", Duration::from_secs(5), |r| r.body.contains("WeightedRoundRobin"))
        .await;
    let seen = counts(proxy.http, 400, None).await;
    let large = seen.get("large-1").copied().unwrap_or(0) as f64 / 400.0;
    assert!((large - 0.75).abs() <= 0.03, "1:3 within ±3% over 400 requests: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_endpoint_holding_slow_requests() {
    let (backends, _) = pool(&["web-1", "web-2"]).await;
    let proxy = Standalone::start(&[
        ("b.yaml", &backends),
        ("i.yaml", &ingress()),
        ("p.yaml", &policy("  algorithm: LeastConnections\n")),
    ])
    .await;
    // Four slow requests spread 2/2 over the two endpoints.
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(tokio::spawn(get(proxy.http, "a.test", "/?delay_ms=1500")));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Both hold 2 now; fast requests alternate, never piling on one side.
    let seen = counts(proxy.http, 20, None).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    for h in slow {
        let r = h.await.unwrap().unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    // One slow request in flight: the next fast ones all go to the other endpoint.
    let first = tokio::spawn(get(proxy.http, "a.test", "/?delay_ms=1500"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = counts(proxy.http, 10, None).await;
    let busy = first.await.unwrap().unwrap().backend();
    assert!(!seen.contains_key(&busy), "new requests avoid {busy} while it holds a slow request: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_clients_and_moves_only_those_of_a_removed_endpoint() {
    let (backends, eps) = pool(&["web-1", "web-2", "web-3", "web-4"]).await;
    let hash = policy("  algorithm: ConsistentHash\n  consistentHash: {key: Header, header: X-User}\n");
    let proxy = Standalone::start(&[("b.yaml", &backends), ("i.yaml", &ingress()), ("p.yaml", &hash)]).await;
    let mut placement = BTreeMap::new();
    for user in 0..40 {
        let seen = counts(proxy.http, 3, Some(("x-user", format!("user-{user}")))).await;
        assert_eq!(seen.len(), 1, "user-{user} stays on one endpoint: {seen:?}");
        placement.insert(user, seen.into_keys().next().unwrap());
    }
    // Remove web-2.
    let remaining: Vec<_> = eps.iter().filter(|(pod, _)| pod != "web-2").cloned().collect();
    proxy.write("b.yaml", &(service(NS, "web") + &endpoint_slice(NS, "web", &remaining)));
    eventually(proxy.admin, "x", "/debug/snapshot", Duration::from_secs(5), |r| {
        r.json()["backends"][0]["endpoints"].as_array().is_some_and(|e| e.len() == 3)
    })
    .await;
    let mut moved_others = 0;
    for (user, before) in &placement {
        let now = counts(proxy.http, 1, Some(("x-user", format!("user-{user}")))).await.into_keys().next().unwrap();
        if before != "web-2" && &now != before {
            moved_others += 1;
        }
        assert_ne!(now, "web-2");
    }
    assert_eq!(moved_others, 0, "clients of the other endpoints do not move");
}

const STICKY: &str =
    "  sessionAffinity:\n    type: Cookie\n    cookie: {name: SY, ttl: 1h, path: /, sameSite: Lax, httpOnly: true}\n";

fn set_cookie(r: &Reply) -> Option<String> {
    r.headers.get("set-cookie").map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
}

async fn with_cookie(p: std::net::SocketAddr, cookie: &str) -> Reply {
    let req = Request::get(format!("http://{p}/")).header("host", "a.test").header("cookie", cookie);
    send(p, req.body(Full::default()).unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_pins_across_replicas_repins_when_the_backend_dies_and_holds_websockets() {
    let mut echoes: Vec<_> =
        (1..=3).map(|i| (format!("web-{i}"), EchoProcess::start(&format!("web-{i}"), 0))).collect();
    let eps: Vec<_> = echoes.iter().map(|(n, e)| (n.clone(), e.addr)).collect();
    let files = [
        ("b.yaml", service(NS, "web") + &endpoint_slice(NS, "web", &eps)),
        ("i.yaml", ingress()),
        ("p.yaml", policy(STICKY)),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let one = Standalone::start(&files).await;
    let two = Standalone::start(&files).await;

    // First response sets the cookie with the configured attributes.
    let first = get(one.http, "a.test", "/").await.unwrap();
    let raw = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(raw.contains("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"), "{raw}");
    let cookie = set_cookie(&first).unwrap();
    let pinned = first.backend();
    // 50 requests with the cookie stay on one endpoint, and no new cookie is set.
    for _ in 0..50 {
        let r = with_cookie(one.http, &cookie).await;
        assert_eq!(r.backend(), pinned);
        assert!(r.headers.get("set-cookie").is_none());
    }
    // Another replica, no shared state, resolves the same cookie to the same endpoint.
    for _ in 0..10 {
        assert_eq!(with_cookie(two.http, &cookie).await.backend(), pinned);
    }
    // A WebSocket opened with the cookie lands on the pinned endpoint.
    let tcp = tokio::net::TcpStream::connect(one.http).await.unwrap();
    let mut ws_req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request("ws://a.test/ws").unwrap();
    ws_req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(ws_req, tcp).await.unwrap();
    futures_util::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::text("hi")).await.unwrap();
    let echo = futures_util::StreamExt::next(&mut ws).await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), format!("{pinned}:hi"));

    // The pinned backend dies: the next request goes elsewhere and the cookie is reissued.
    echoes.iter_mut().find(|(n, _)| *n == pinned).unwrap().1.kill();
    let r = with_cookie(one.http, &cookie).await;
    assert_eq!(r.status, StatusCode::OK, "connect failure retried on another endpoint: {r:?}");
    assert_ne!(r.backend(), pinned);
    let new_cookie = set_cookie(&r).expect("cookie reissued");
    assert_ne!(new_cookie, cookie);
    for _ in 0..10 {
        assert_eq!(with_cookie(one.http, &new_cookie).await.backend(), r.backend());
    }
    let metrics = get(one.admin, "x", "/metrics").await.unwrap().body;
    for result in ["hit", "new", "repinned"] {
        assert!(metrics.contains(&format!("switchyard_affinity_total{{result=\"{result}\"}}")), "{result}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_of_two_choices_avoids_a_slow_endpoint() {
    let echoes = [("fast-1", 0), ("fast-2", 0), ("slow-1", 400)]
        .map(|(name, delay)| (name.to_string(), EchoProcess::start(name, delay)));
    let eps: Vec<_> = echoes.iter().map(|(n, e)| (n.clone(), e.addr)).collect();
    let proxy = Standalone::start(&[
        ("b.yaml", &(service(NS, "web") + &endpoint_slice(NS, "web", &eps))),
        ("i.yaml", &ingress()),
        ("p.yaml", &policy("  algorithm: PowerOfTwoChoices\n")),
    ])
    .await;
    let mut tasks = Vec::new();
    for _ in 0..45 {
        tasks.push(tokio::spawn(get(proxy.http, "a.test", "/")));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        *seen.entry(t.await.unwrap().unwrap().backend()).or_default() += 1;
    }
    let slow = seen.get("slow-1").copied().unwrap_or(0);
    assert!(slow <= 6, "the slow endpoint (fair share 15) gets few requests: {seen:?}");
    assert!(seen.len() >= 2, "{seen:?}");
}

/// GET through the proxy from a given loopback source address.
async fn get_from(proxy: std::net::SocketAddr, source: std::net::IpAddr) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").header("host", "a.test").body(Full::<bytes::Bytes>::default()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    json["backend"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_each_client_and_removal_moves_only_its_clients() {
    let (backends, eps) = pool(&["web-1", "web-2", "web-3", "web-4"]).await;
    let proxy = Standalone::start(&[
        ("b.yaml", &backends),
        ("i.yaml", &ingress()),
        ("p.yaml", &policy("  algorithm: IPHash\n")),
    ])
    .await;
    let clients: Vec<std::net::IpAddr> = (2..42).map(|i| std::net::IpAddr::from([127, 0, 0, i])).collect();
    let mut placement = BTreeMap::new();
    for ip in &clients {
        let a = get_from(proxy.http, *ip).await;
        assert_eq!(get_from(proxy.http, *ip).await, a, "client {ip} stays on one endpoint");
        placement.insert(*ip, a);
    }
    let distinct: std::collections::BTreeSet<_> = placement.values().collect();
    assert!(distinct.len() >= 3, "40 clients spread over the pool: {placement:?}");
    let victim = placement[&clients[0]].clone();
    let remaining: Vec<_> = eps.iter().filter(|(pod, _)| *pod != victim).cloned().collect();
    proxy.write("b.yaml", &(service(NS, "web") + &endpoint_slice(NS, "web", &remaining)));
    eventually(proxy.admin, "x", "/debug/snapshot", Duration::from_secs(5), |r| {
        r.json()["backends"][0]["endpoints"].as_array().is_some_and(|e| e.len() == 3)
    })
    .await;
    for ip in &clients {
        let now = get_from(proxy.http, *ip).await;
        if placement[ip] != victim {
            assert_eq!(now, placement[ip], "client {ip} of a surviving endpoint does not move");
        } else {
            assert_ne!(now, victim);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_endpoint_keeps_its_sessions_but_gets_no_new_ones() {
    let (backends, eps) = pool(&["web-1", "web-2"]).await;
    let proxy = Standalone::start(&[("b.yaml", &backends), ("i.yaml", &ingress()), ("p.yaml", &policy(STICKY))]).await;
    let first = get(proxy.http, "a.test", "/").await.unwrap();
    let (cookie, pinned) = (set_cookie(&first).unwrap(), first.backend());
    // The pinned endpoint starts terminating (ready: false, serving: true).
    let mut slices = service(NS, "web");
    for (pod, addr) in &eps {
        let conditions =
            if *pod == pinned { "{ready: false, serving: true, terminating: true}" } else { "{ready: true}" };
        slices += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-{pod}, namespace: {NS}, \
             labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\n\
             endpoints: [{{addresses: [\"{}\"], conditions: {conditions}}}]\n",
            addr.port(),
            addr.ip()
        );
    }
    proxy.write("b.yaml", &slices);
    eventually(proxy.admin, "x", "/debug/snapshot", Duration::from_secs(5), |r| r.body.contains("\"draining\": true"))
        .await;
    for _ in 0..10 {
        assert_eq!(with_cookie(proxy.http, &cookie).await.backend(), pinned, "existing session continues");
    }
    let fresh = counts(proxy.http, 10, None).await;
    assert!(!fresh.contains_key(&pinned), "no new sessions on the draining endpoint: {fresh:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_retried_around_then_ejected_with_no_failed_request() {
    let mut echoes: Vec<_> =
        (1..=3).map(|i| (format!("web-{i}"), EchoProcess::start(&format!("web-{i}"), 0))).collect();
    let eps: Vec<_> = echoes.iter().map(|(n, e)| (n.clone(), e.addr)).collect();
    let proxy = Standalone::start(&[
        ("b.yaml", &(service(NS, "web") + &endpoint_slice(NS, "web", &eps))),
        ("i.yaml", &ingress()),
    ])
    .await;
    assert_eq!(counts(proxy.http, 6, None).await.len(), 3);
    echoes[1].1.kill();
    // Every GET still succeeds: a refused connection is retried elsewhere.
    let seen = counts(proxy.http, 60, None).await;
    assert!(!seen.contains_key("web-2"), "{seen:?}");
    let metrics = get(proxy.admin, "x", "/metrics").await.unwrap().body;
    assert!(
        metrics.contains(r#"switchyard_endpoint_health_transitions_total{service="lb/web",to="ejected"} 1"#),
        "five consecutive connect failures eject it: {metrics}"
    );
    let dead = eps[1].1.to_string();
    assert!(
        metrics.contains(&format!(r#"switchyard_endpoint_healthy{{endpoint="{dead}",service="lb/web"}} 0"#)),
        "{metrics}"
    );
}
