//! End-to-end PROXY protocol (`--proxy-protocol`) on the real binary: raw
//! loopback clients that send a v1 or v2 header (as a load balancer would)
//! before their HTTP request or TLS handshake, and an echo backend that
//! reports the `X-Forwarded-For` and `X-Real-IP` it received. Addresses
//! inside the headers are documentation ranges (198.18.0.0/15,
//! 2001:db8::/32): they are only data.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::raw::{RawClient, RawResponse, proxy_v2_header};
use support::tls::{Ca, tls_secret};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const NS: &str = "pp";

/// An Ingress for `host` → Service `web`, with TLS from `secret` if given.
fn ingress(name: &str, host: &str, secret: Option<&str>) -> String {
    let tls = secret.map_or(String::new(), |s| format!("  tls:\n  - hosts: [\"{host}\"]\n    secretName: {s}\n"));
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         spec:\n  ingressClassName: switchyard\n{tls}  rules:\n  - host: \"{host}\"\n    http:\n      paths:\n      \
         - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
    )
}

/// A proxy with the echo backend `web` behind `a.test` (plain) and
/// `s.test` (TLS, certificate from `ca`), plus `flags`; and its HTTPS
/// listener's address.
async fn start(ca: &Ca, flags: &[&str]) -> (Switchyard, SocketAddr) {
    let leaf = ca.leaf(&["s.test"]);
    let manifests = service(NS, "web")
        + &endpoint_slice(NS, "web", &[("web-1".to_string(), start_echo("web-1").await)])
        + &ingress("a", "a.test", None)
        + &ingress("s", "s.test", Some("s-tls"))
        + &tls_secret(NS, "s-tls", &leaf.cert_pem, &leaf.key_pem);
    let https = free_addr();
    let https_flag = https.to_string();
    let mut all = vec!["--https-addr", https_flag.as_str()];
    all.extend_from_slice(flags);
    (Switchyard::start_with(&[("m.yaml", &manifests)], &all).await, https)
}

/// A v2 `LOCAL` header (a balancer's own health check), with no addresses.
fn v2_local() -> Vec<u8> {
    [b"\r\n\r\n\0\r\nQUIT\n".as_slice(), &[0x20, 0x00, 0x00, 0x00]].concat()
}

fn get(host: &str) -> String {
    format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// Sends `header` then a GET for `a.test` on a new connection; the reply.
async fn request_after(proxy: &Switchyard, header: &[u8]) -> RawResponse {
    let mut client = RawClient::connect(proxy.http).await;
    client.send(&[header, get("a.test").as_bytes()].concat()).await;
    client.response().await.expect("a response")
}

/// The `(X-Forwarded-For, X-Real-IP)` the echo backend received.
fn seen(resp: &RawResponse) -> (String, String) {
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    let header = |name: &str| echo["headers"][name].as_str().unwrap_or("<none>").to_string();
    (header("x-forwarded-for"), header("x-real-ip"))
}

fn pair(ip: &str) -> (String, String) {
    (ip.to_string(), ip.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_source_is_the_client_on_http_and_https() {
    let ca = Ca::new();
    let (proxy, https) = start(&ca, &["--proxy-protocol"]).await;

    // v2 with an IPv4 source.
    let resp = request_after(&proxy, &proxy_v2_header("198.18.0.7:40000".parse().unwrap())).await;
    assert_eq!(seen(&resp), pair("198.18.0.7"), "v2 IPv4");

    // v1 with an IPv6 source.
    let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 80\r\n";
    assert_eq!(seen(&request_after(&proxy, v1).await), pair("2001:db8::7"), "v1 IPv6");
    // v2 with an IPv6 source.
    let v2 = proxy_v2_header("[2001:db8::8]:40000".parse().unwrap());
    assert_eq!(seen(&request_after(&proxy, &v2).await), pair("2001:db8::8"), "v2 IPv6");

    // One header, then two requests on the same keep-alive connection.
    let mut client = RawClient::connect(proxy.http).await;
    client
        .send(&[b"PROXY TCP4 198.18.0.9 198.18.0.1 40000 80\r\n".as_slice(), get("a.test").as_bytes()].concat())
        .await;
    assert_eq!(seen(&client.response().await.expect("first response")), pair("198.18.0.9"));
    client.send(get("a.test").as_bytes()).await;
    assert_eq!(seen(&client.response().await.expect("second response")), pair("198.18.0.9"), "keep-alive");

    // LOCAL (health checks) and v1 UNKNOWN: the socket's own address.
    assert_eq!(seen(&request_after(&proxy, &v2_local()).await), pair("127.0.0.1"), "v2 LOCAL");
    assert_eq!(seen(&request_after(&proxy, b"PROXY UNKNOWN\r\n").await), pair("127.0.0.1"), "v1 UNKNOWN");

    // HTTPS: the header, then the TLS handshake on the same connection.
    let mut tcp = TcpStream::connect(https).await.unwrap();
    tcp.write_all(&proxy_v2_header("198.18.0.11:40000".parse().unwrap())).await.unwrap();
    let tls = tls_connector(&ca).connect("s.test".try_into().unwrap(), tcp).await.expect("TLS after the header");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/echo").header("host", "s.test").body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "198.18.0.11", "HTTPS: {echo}");
    assert_eq!(echo["headers"]["x-real-ip"], "198.18.0.11");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_valid_header_are_closed_unanswered() {
    let ca = Ca::new();
    let (proxy, https) = start(&ca, &["--proxy-protocol", "--header-read-timeout", "1s"]).await;
    let closed_unanswered = |bytes: Vec<u8>, what: &'static str| {
        let addr = proxy.http;
        async move {
            let mut client = RawClient::connect(addr).await;
            client.send(&bytes).await;
            assert!(client.closed_within(Duration::from_secs(5)).await, "{what}: closed without a response");
        }
    };

    closed_unanswered(get("a.test").into_bytes(), "no header").await;
    closed_unanswered([b"PROXY TCP4 nonsense\r\n".as_slice(), get("a.test").as_bytes()].concat(), "bad v1").await;
    let mut bad_v2 = proxy_v2_header("198.18.0.7:40000".parse().unwrap());
    bad_v2[12] = 0x31; // version 3
    closed_unanswered([bad_v2.as_slice(), get("a.test").as_bytes()].concat(), "bad v2 version").await;
    let mut too_big = v2_local();
    too_big[14..16].copy_from_slice(&60_000u16.to_be_bytes());
    closed_unanswered(too_big, "v2 payload over the cap").await;
    // A header that never completes: closed after --header-read-timeout.
    let start = std::time::Instant::now();
    closed_unanswered(b"PROXY TCP4 198.18.0.7".to_vec(), "slow header").await;
    assert!(start.elapsed() >= Duration::from_millis(900), "closed by the timeout: {:?}", start.elapsed());

    // HTTPS: a ClientHello without a header is closed too.
    let tcp = TcpStream::connect(https).await.unwrap();
    assert!(tls_connector(&ca).connect("s.test".try_into().unwrap(), tcp).await.is_err(), "TLS without a header");

    // The proxy still serves well-formed connections.
    let resp = request_after(&proxy, &proxy_v2_header("198.18.0.7:40000".parse().unwrap())).await;
    assert_eq!(seen(&resp), pair("198.18.0.7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_a_header_is_not_http() {
    let ca = Ca::new();
    let (proxy, _) = start(&ca, &[]).await;
    let resp = request_after(&proxy, b"PROXY TCP4 198.18.0.7 198.18.0.1 40000 80\r\n").await;
    assert_eq!(resp.status, 400, "{resp:?}");
    // A plain request still works, from the socket's address.
    assert_eq!(seen(&request_after(&proxy, b"").await), pair("127.0.0.1"));
}

/// A TLS client that trusts `ca` and speaks HTTP/1.1.
fn tls_connector(ca: &Ca) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
