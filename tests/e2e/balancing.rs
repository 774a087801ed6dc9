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
