//! End-to-end: the access log of the real `switchyard standalone` binary.
//! Requests through real sockets (routed, 404, 502 from dead endpoints,
//! sticky, streamed) must each leave one JSON line with the right facts.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use support::*;

const NS: &str = "logs";

fn ingress(name: &str, host: &str, svc: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  ingressClassName: switchyard\n  rules: [{{host: {host}, http: {{paths: [{{path: /, pathType: Prefix, \
         backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}]}}}}]\n"
    )
}

fn sticky_policy(svc: &str) -> String {
    format!(
        "---\napiVersion: switchyard.dev/v1alpha1\nkind: BalancerPolicy\nmetadata: {{name: {svc}, namespace: {NS}}}\n\
         spec:\n  targetRef: {{kind: Service, name: {svc}}}\n  sessionAffinity:\n    type: Cookie\n    \
         cookie: {{name: SY, path: /}}\n"
    )
}

fn backend(svc: &str, endpoints: &[(&str, SocketAddr)]) -> String {
    let eps: Vec<_> = endpoints.iter().map(|(pod, addr)| (pod.to_string(), *addr)).collect();
    service(NS, svc) + &endpoint_slice(NS, svc, &eps)
}

/// The access-log lines written so far.
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// Waits until the log holds at least `n` lines.
async fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} access-log lines"), Duration::from_secs(10), || async {
        let got = lines(path);
        (got.len() >= n).then_some(got)
    })
    .await
}

/// The one line whose `path` is `path`.
fn line_for<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    let found: Vec<_> = lines.iter().filter(|l| l["path"] == path).collect();
    assert_eq!(found.len(), 1, "exactly one line for {path}: {lines:#?}");
    found[0]
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn assert_rfc3339_millis(time: &Value) {
    let t = time.as_str().unwrap_or_else(|| panic!("time is a string: {time}"));
    let shape: String = t.chars().map(|c| if c.is_ascii_digit() { 'D' } else { c }).collect();
    assert_eq!(shape, "DDDD-DD-DDTDD:DD:DD.DDDZ", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_leaves_one_json_line_with_its_facts() {
    let plain = start_echo("plain-1").await;
    let sticky = start_echo("sticky-1").await;
    let (dead_a, dead_b) = (free_addr(), free_addr());
    let files = [
        ("plain.yaml", backend("plain", &[("plain-1", plain)]) + &ingress("plain", "plain.test", "plain")),
        ("sticky.yaml", backend("sticky", &[("sticky-1", sticky)]) + &ingress("sticky", "sticky.test", "sticky")),
        ("policy.yaml", sticky_policy("sticky")),
        (
            "dead.yaml",
            backend("dead", &[("dead-1", dead_a), ("dead-2", dead_b)]) + &ingress("dead", "dead.test", "dead"),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let proxy = Switchyard::start_with(&files, &["--access-log", log.to_str().unwrap()]).await;
    let p = proxy.http;
    assert!(lines(&log).is_empty(), "nothing logged before traffic (readiness probes are on the admin port)");

    // 1. Routed; the query string is not logged.
    let ok = get(p, "plain.test", "/hello?token=s3cret").await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    // 2. No route.
    let missing = get(p, "nowhere.test", "/missing").await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // 3. Both endpoints refuse connections: tried, retried, 502.
    let bad = get(p, "dead.test", "/dead").await.unwrap();
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    // 4. Sticky: a new session, then a hit with its cookie.
    let first = get(p, "sticky.test", "/new").await.unwrap();
    let cookie = first.headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let req = Request::get(format!("http://{p}/hit")).header("host", "sticky.test").header("cookie", &cookie);
    let hit = send(p, req.body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(hit.status, StatusCode::OK);
    assert!(hit.headers.get("set-cookie").is_none());
    // 5. A POST, and a large body (bytes counted as streamed).
    let req = Request::post(format!("http://{p}/upload")).header("host", "plain.test");
    let posted = send(p, req.body(Full::new(Bytes::from_static(b"abc"))).unwrap()).await.unwrap();
    let big = get(p, "plain.test", "/bytes/200000").await.unwrap();
    assert_eq!(big.body.len(), 200_000);
    // 6. A streamed response: logged when its last event is sent.
    let sse = get(p, "plain.test", "/sse?events=4&interval_ms=150").await.unwrap();

    let all = wait_lines(&log, 8).await;
    assert_eq!(all.len(), 8, "one line per request: {all:#?}");
    for line in &all {
        assert_rfc3339_millis(&line["time"]);
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert!(line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{line}");
        let keys: Vec<_> = line.as_object().unwrap().keys().cloned().collect();
        for key in ["host", "method", "status", "bytes", "upstream", "attempts", "affinity", "service", "ingress"] {
            assert!(keys.iter().any(|k| k == key), "{key} in {line}");
        }
    }

    let l = line_for(&all, "/hello");
    assert_eq!(l["host"], "plain.test");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes"], ok.body.len());
    assert_eq!(l["upstream"], plain.to_string());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["affinity"], Value::Null, "no affinity configured");
    assert_eq!(l["service"], "logs/plain");
    assert_eq!(l["ingress"], "logs/plain");
    assert!(!l.to_string().contains("s3cret"), "no query string: {l}");

    let l = line_for(&all, "/missing");
    assert_eq!((l["host"].as_str(), l["status"].as_u64()), (Some("nowhere.test"), Some(404)));
    assert_eq!(l["bytes"], missing.body.len());
    for key in ["upstream", "affinity", "service", "ingress"] {
        assert_eq!(l[key], Value::Null, "{key}: {l}");
    }
    assert_eq!(l["attempts"], 0);

    let l = line_for(&all, "/dead");
    assert_eq!(l["status"], 502);
    assert_eq!(l["bytes"], bad.body.len());
    assert_eq!(l["attempts"], 2, "refused, retried once on the other endpoint: {l}");
    let upstream = l["upstream"].as_str().unwrap();
    assert!([dead_a.to_string(), dead_b.to_string()].iter().any(|a| a == upstream), "{l}");
    assert_eq!(l["service"], "logs/dead");

    let l = line_for(&all, "/new");
    assert_eq!((l["affinity"].as_str(), l["status"].as_u64()), (Some("new"), Some(200)));
    assert_eq!(l["upstream"], sticky.to_string());
    assert_eq!(l["ingress"], "logs/sticky");
    assert_eq!(line_for(&all, "/hit")["affinity"], "hit");

    let l = line_for(&all, "/upload");
    assert_eq!((l["method"].as_str(), l["status"].as_u64()), (Some("POST"), Some(posted.status.as_u16() as u64)));
    assert_eq!(line_for(&all, "/bytes/200000")["bytes"], 200_000);

    let l = line_for(&all, "/sse");
    assert_eq!(l["bytes"], sse.body.len());
    assert!(!sse.body.is_empty());
    let ms = l["duration_ms"].as_f64().unwrap();
    assert!(ms >= 400.0, "duration covers the streamed body (3 intervals of 150 ms), not just its head: {ms}");

    assert_eq!(metric(proxy.admin, "switchyard_access_log_dropped_total").await, Some(0.0));
    // The plain GETs above (/hello, /dead, /bytes, /sse) were answered on
    // the HTTP/1.1 fast path, whose lines are checked above like the rest.
    let fast = metric(proxy.admin, "switchyard_h1_fast_path_requests_total").await.unwrap_or(0.0);
    assert!(fast >= 4.0, "{fast} requests on the fast path with the access log on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_at_zero_logs_nothing_and_one_logs_everything() {
    let echo = start_echo("web-1").await;
    let files = backend("web", &[("web-1", echo)]) + &ingress("web", "a.test", "web");
    let logs = tempfile::tempdir().unwrap();
    let (none, every) = (logs.path().join("none.log"), logs.path().join("every.log"));
    let off = Switchyard::start_with(
        &[("web.yaml", &files)],
        &["--access-log", none.to_str().unwrap(), "--access-log-sample", "0"],
    )
    .await;
    let on = Switchyard::start_with(
        &[("web.yaml", &files)],
        &["--access-log", every.to_str().unwrap(), "--access-log-sample", "1"],
    )
    .await;
    for i in 0..20 {
        for proxy in [&off, &on] {
            assert_eq!(get(proxy.http, "a.test", &format!("/{i}")).await.unwrap().status, StatusCode::OK);
        }
        assert_eq!(get(off.http, "nowhere.test", "/").await.unwrap().status, StatusCode::NOT_FOUND);
    }
    assert_eq!(wait_lines(&every, 20).await.len(), 20);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(none.exists(), "the file is opened at start");
    assert_eq!(std::fs::read_to_string(&none).unwrap(), "", "sample 0: no line at all");
}

#[test]
fn a_sample_rate_outside_0_to_1_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["standalone", "--manifests", ".", "--access-log", "-", "--access-log-sample", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a rate between 0 and 1"), "{out:?}");
}
