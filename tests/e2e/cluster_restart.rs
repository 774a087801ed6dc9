//! End-to-end: the API server is stopped and restarted while traffic flows.
//! Its own test binary, so that no other test runs while the API is down.
//!
//! The outage lasts `SWITCHYARD_APISERVER_OUTAGE_SECS` seconds (default 5,
//! to keep CI short; set 60 for the "API server gone for a minute" run).

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;
use support::cluster::cluster;
use support::netns::Netns;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_loses_no_request_and_resyncs() {
    let c = cluster().await;
    let ns = c.fresh_namespace("restart").await;
    let mut net = Netns::create(1);
    let addr = net.start_echo(BIN, 0, "web-1");
    c.apply::<Service>(
        Some(&ns),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await;
    c.apply::<EndpointSlice>(
        Some(&ns),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-abc", "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
               "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}]}),
    )
    .await;
    let ing = |path: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web", "namespace": ns},
               "spec": {"ingressClassName": "switchyard", "rules": [{"host": "a.test", "http": {"paths": [
                   {"path": path, "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
    };
    c.apply::<Ingress>(Some(&ns), ing("/")).await;
    let ctl = Switchyard::start_run(
        &c.kubeconfig,
        &["--watch-namespace", &ns, "--election-namespace", &ns, "--publish-address", "198.18.255.1"],
        true,
    )
    .await;
    wait_for("routed", WAIT, || async {
        get(ctl.http, "a.test", "/").await.ok().filter(|r| r.status == StatusCode::OK)
    })
    .await;

    // Steady traffic (bounded: the outage plus 15 s, at ~50 requests/s)
    // while the API server goes away and comes back.
    let outage: u64 = std::env::var("SWITCHYARD_APISERVER_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, http, admin) = (stop.clone(), ok.clone(), failed.clone(), ctl.http, ctl.admin);
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(outage + 15);
            let mut not_ready = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match get(http, "a.test", "/").await {
                    Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                if get(admin, "x", "/readyz").await.map(|r| r.status).ok() != Some(StatusCode::OK) {
                    not_ready += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            not_ready
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = c.env["SWITCHYARD_CLUSTER_DIR"].clone();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/cluster/restart-apiserver.sh");
    let status = tokio::task::spawn_blocking(move || {
        Command::new("bash").args([script, &dir, &outage.to_string()]).status().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "restart-apiserver.sh failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let not_ready = load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "during the {outage} s API server outage: {ok} requests ok, {failed} failed, readyz not 200 {not_ready} times"
    );
    assert!(ok > 50, "traffic flowed during the test ({ok})");
    assert_eq!(failed, 0, "no request may fail while the API server restarts");
    assert_eq!(not_ready, 0, "/readyz stays 200 through an API outage");

    // After the restart the watches resync: a change is served.
    let c = cluster().await;
    c.apply::<Ingress>(Some(&ns), ing("/v2")).await;
    wait_for("change after restart", WAIT, || async {
        (get(ctl.http, "a.test", "/").await.ok()?.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(get(ctl.http, "a.test", "/v2/x").await.unwrap().status, StatusCode::OK);
}
