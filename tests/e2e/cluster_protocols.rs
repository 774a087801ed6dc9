//! End-to-end on the real kube-apiserver + etcd: the protocol features of
//! the issue "TLS termination, HTTP/2 and gRPC, and L4", one case each
//! with objects from the API: a TCP services ConfigMap (balancing, a bad
//! entry's Event, a live change), backend protocols (h2c, and gRPC to a
//! server in the test's network namespace), the PROXY protocol, and TLS
//! passthrough by SNI.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use support::backends::{check, grpc_client, serve_grpc};
use support::cluster::*;
use support::raw::{RawClient, proxy_v2_header};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn run_args(ns: &str) -> Vec<String> {
    ["--watch-namespace", ns, "--election-namespace", ns, "--lease-duration", "15s"].map(String::from).to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn tcp_configmap(ns: &str, entries: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tcp-services", "namespace": ns},
           "data": entries})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_services_configmap_from_the_api() {
    let c = cluster().await;
    let (ns, _net, _) = web_backends(&c, "tcp", 3, 3).await;
    let (port, bad_port, next_port) = (free_addr().port(), free_addr().port(), free_addr().port());
    c.apply::<ConfigMap>(Some(&ns), tcp_configmap(&ns, json!({port.to_string(): format!("{ns}/web:80")}))).await;
    let flag = format!("{ns}/tcp-services");
    let args = [run_args(&ns), vec!["--tcp-services-configmap".into(), flag]].concat();
    let _ctl = Switchyard::start_run(&c.kubeconfig, &strs(&args), true).await;

    // Round robin (no policy) over the three endpoints, bytes relayed as is.
    wait_for("the TCP service port", WAIT, || backend_over_tcp(port)).await;
    let mut seen = BTreeSet::new();
    for _ in 0..9 {
        seen.insert(backend_over_tcp(port).await.expect("served through the TCP service"));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // A bad entry is rejected alone, with an Event on the ConfigMap; a
    // new port opens, the good one keeps serving.
    let entries = json!({
        port.to_string(): format!("{ns}/web:80"),
        bad_port.to_string(): "no-namespace-here:80",
        next_port.to_string(): format!("{ns}/web:http"),
    });
    c.apply::<ConfigMap>(Some(&ns), tcp_configmap(&ns, entries)).await;
    wait_for("the new TCP service port", WAIT, || backend_over_tcp(next_port)).await;
    assert!(backend_over_tcp(port).await.is_some());
    let event = wait_for("an Event for the bad entry", WAIT, || async {
        let events = Api::<Event>::namespaced(c.client.clone(), &ns).list(&ListParams::default()).await.ok()?;
        events.items.into_iter().find(|e| e.reason.as_deref() == Some("InvalidTCPService"))
    })
    .await;
    let regarding = event.regarding.unwrap();
    assert_eq!((regarding.kind.as_deref(), regarding.name.as_deref()), (Some("ConfigMap"), Some("tcp-services")));
    assert!(event.note.unwrap_or_default().contains(&bad_port.to_string()));

    // The entry is removed: its port closes.
    c.apply::<ConfigMap>(Some(&ns), tcp_configmap(&ns, json!({next_port.to_string(): format!("{ns}/web:80")}))).await;
    wait_for("the removed port to close", WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_grpc_backends_from_the_api() {
    let c = cluster().await;
    let (ns, net, _) = web_backends(&c, "proto", 2, 1).await;
    // A gRPC server in the network namespace (served by this process).
    let grpc_addr = SocketAddr::new(net.addr(1), 50051);
    let listener = tokio::net::TcpListener::from_std(net.bind(grpc_addr)).unwrap();
    let _reporter = serve_grpc(listener, None).await;
    c.apply::<Service>(Some(&ns), service_json(&ns, "grpc")).await;
    let mut grpc_slice = slice(&ns, "grpc", &[("grpc-1", grpc_addr, true)]);
    grpc_slice["ports"][0]["port"] = json!(grpc_addr.port());
    c.apply::<EndpointSlice>(Some(&ns), grpc_slice).await;
    for (name, host, svc, protocol) in [("h", "h2c.test", "web", "H2C"), ("g", "grpc.test", "grpc", "GRPC")] {
        let mut ing = ingress(&ns, name, Some("switchyard"), host, svc);
        ing["metadata"]["annotations"] = json!({"switchyard.dev/backend-protocol": protocol});
        c.apply::<Ingress>(Some(&ns), ing).await;
    }
    let ctl = Switchyard::start_run(&c.kubeconfig, &strs(&run_args(&ns)), true).await;

    let version = wait_for("an h2c answer", WAIT, || async {
        let r = get(ctl.http, "h2c.test", "/").await.ok()?;
        r.json()["version"].as_str().map(String::from)
    })
    .await;
    assert_eq!(version, "HTTP/2.0", "the echo backend was reached over h2c");
    let mut client = grpc_client(ctl.http, "grpc.test").await;
    let status = client.check(check("switchyard.test")).await.unwrap().into_inner().status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let err = client.check(check("unknown")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_client_address_from_the_api() {
    let c = cluster().await;
    let (ns, _net) = one_backend(&c, "pp").await;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "web", Some("switchyard"), "pp.test", "web")).await;
    let args = [run_args(&ns), vec!["--proxy-protocol".into()]].concat();
    // Readiness is the admin listener's: no PROXY header there.
    let ctl = Switchyard::start_run(&c.kubeconfig, &strs(&args), true).await;
    let header = proxy_v2_header("198.18.77.9:41000".parse().unwrap());
    let resp = wait_for("a response after a PROXY v2 header", WAIT, || async {
        let mut client = RawClient::connect(ctl.http).await;
        client.send(&[header.as_slice(), b"GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n"].concat()).await;
        client.response().await.filter(|r| r.status == 200)
    })
    .await;
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "198.18.77.9");
    assert_eq!(echo["headers"]["x-real-ip"], "198.18.77.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_from_the_api() {
    use support::tls::{Ca, served_cert};
    let c = cluster().await;
    let (ns, net, _) = web_backends(&c, "pt", 2, 1).await;
    // A TLS backend with its own certificate, in the network namespace.
    let ca = Ca::new();
    let leaf = ca.leaf(&["pass.test"]);
    let tls_addr = SocketAddr::new(net.addr(1), 8443);
    let listener = tokio::net::TcpListener::from_std(net.bind(tls_addr)).unwrap();
    support::backends::serve_https(listener, &leaf, "tls-1", &[b"http/1.1"]);
    c.apply::<Service>(Some(&ns), service_json(&ns, "secure")).await;
    let mut tls_slice = slice(&ns, "secure", &[("tls-1", tls_addr, true)]);
    tls_slice["ports"][0]["port"] = json!(tls_addr.port());
    c.apply::<EndpointSlice>(Some(&ns), tls_slice).await;
    let mut pass = ingress(&ns, "pass", Some("switchyard"), "pass.test", "secure");
    pass["metadata"]["annotations"] = json!({"switchyard.dev/ssl-passthrough": "true"});
    c.apply::<Ingress>(Some(&ns), pass).await;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "term", Some("switchyard"), "term.test", "web")).await;
    let https = free_addr();
    let args = [run_args(&ns), vec!["--https-addr".into(), https.to_string()]].concat();
    let _ctl = Switchyard::start_run(&c.kubeconfig, &strs(&args), true).await;

    // pass.test: the backend's own certificate, through the proxy.
    wait_for("the backend's certificate for pass.test", WAIT, || async {
        (served_cert(https, Some("pass.test")).await == leaf.der).then_some(())
    })
    .await;
    // term.test on the same port is terminated by the proxy.
    assert_ne!(served_cert(https, Some("term.test")).await, leaf.der);
}
