//! End-to-end TLS passthrough on the real binary: TLS backends on loopback
//! with their own certificates (from the test's CA), an Ingress annotated
//! `switchyard.dev/ssl-passthrough` next to a terminated one on the same
//! HTTPS port, real rustls clients that check which certificate answered,
//! and the PROXY protocol and the drain in front of a relay.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use support::backends::{loopback, serve_https};
use support::tls::{Ca, ClientOptions, Leaf, connect, served_cert, tls_secret};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "pt";
const PASSTHROUGH: &str = "switchyard.dev/ssl-passthrough: \"true\"";

/// An Ingress for `host` → Service `svc` port 80, with `annotations` and a
/// `spec.tls` entry naming `secret` (if any).
fn ingress(name: &str, host: &str, svc: &str, secret: Option<&str>, annotations: &str) -> String {
    let tls = secret.map_or(String::new(), |s| format!("  tls:\n  - hosts: [\"{host}\"]\n    secretName: {s}\n"));
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {NS}\n  \
         annotations: {{{annotations}}}\nspec:\n  ingressClassName: switchyard\n{tls}  rules:\n  - host: \"{host}\"\n    \
         http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
    )
}

/// A TLS backend named `name` with its own certificate `leaf` and ALPN
/// `http/1.1` only: it answers HTTP/1.1 with JSON naming itself and the
/// ALPN it negotiated.
async fn start_tls_backend(name: &str, leaf: &Leaf) -> SocketAddr {
    serve_https(loopback().await, leaf, name, &[b"http/1.1"])
}

/// GET `path` for `host` on an established stream (HTTP/1.1); the status
/// and the body.
async fn get_over<S>(stream: S, host: &str, path: &str) -> (StatusCode, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    (status, String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// A TLS client over `tcp` (already connected: support's `connect` opens
/// its own socket) that trusts `ca` only and offers `h2` then `http/1.1`.
async fn tls_over(
    tcp: TcpStream,
    sni: &str,
    ca: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_tls_over(tcp, sni, ca).await.expect("TLS handshake")
}

async fn try_tls_over(
    tcp: TcpStream,
    sni: &str,
    ca: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// The proxy, with `files` and `--https-addr` plus `extra` flags, and its
/// HTTPS address.
async fn start(files: &str, extra: &[&str]) -> (Switchyard, SocketAddr) {
    let https = free_addr();
    let flag = https.to_string();
    let mut flags = vec!["--https-addr", flag.as_str()];
    flags.extend_from_slice(extra);
    (Switchyard::start_with(&[("all.yaml", files)], &flags).await, https)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_hosts_reach_their_backend_unterminated_next_to_terminated_ones() {
    let ca = Ca::new();
    let (pass, term) = (ca.leaf(&["pass.test"]), ca.leaf(&["term.test"]));
    let backends = [start_tls_backend("pass-1", &pass).await, start_tls_backend("pass-2", &pass).await];
    let endpoints: Vec<(String, SocketAddr)> =
        backends.iter().enumerate().map(|(i, a)| (format!("pass-{}", i + 1), *a)).collect();
    let common = service(NS, "pass")
        + &endpoint_slice(NS, "pass", &endpoints)
        + &service(NS, "web")
        + &endpoint_slice(NS, "web", &[("web-1".to_string(), start_echo("web-1").await)])
        + &ingress("term", "term.test", "web", Some("term-tls"), "")
        + &tls_secret(NS, "term-tls", &term.cert_pem, &term.key_pem);
    // Its HTTP routes speak HTTPS to the same backends.
    let proto = "switchyard.dev/backend-protocol: HTTPS";
    let with_passthrough =
        common.clone() + &ingress("pass", "pass.test", "pass", None, &format!("{PASSTHROUGH}, {proto}"));
    let (proxy, https) = start(&with_passthrough, &[]).await;

    // (a) The backend's own certificate (the chain verifies for pass.test
    // against the CA), the backend's own ALPN choice, and its answer over
    // that session.
    let options =
        ClientOptions { sni: Some("pass.test"), alpn: &[b"h2", b"http/1.1"], trust: Some(&ca.cert_der), only: None };
    let tls = connect(https, options).await.expect("passthrough handshake verifies");
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], pass.der, "the backend's certificate");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "the backend's ALPN, not the proxy's h2");
    let (status, body) = get_over(tls, "pass.test", "/hello").await;
    assert_eq!(status, StatusCode::OK);
    let seen = json(&body);
    assert!(seen["backend"].as_str().unwrap().starts_with("pass-"), "{body}");
    assert_eq!(seen["sni"], "pass.test");
    assert_eq!(seen["alpn"], "http/1.1");
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["x-forwarded-for"], serde_json::Value::Null, "bytes are not parsed: no header added");

    // (b) A terminated host on the same port: the proxy's certificate for
    // it, served by the echo backend.
    assert_eq!(served_cert(https, Some("term.test")).await, term.der);
    let tls = connect(https, ClientOptions { sni: Some("term.test"), ..Default::default() }).await.unwrap();
    let (status, body) = get_over(tls, "term.test", "/").await;
    assert_eq!((status, json(&body)["backend"].as_str()), (StatusCode::OK, Some("web-1")), "{body}");

    // (c) Unknown SNI and no SNI: the default certificate, terminated.
    let default = served_cert(https, Some("unknown.test")).await;
    assert!(default != pass.der && default != term.der);
    assert_eq!(served_cert(https, None).await, default);

    // (d) Connections are spread over both endpoints (round-robin).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let tls = connect(https, ClientOptions { sni: Some("pass.test"), ..Default::default() }).await.unwrap();
        assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], pass.der);
        let (_, body) = get_over(tls, "PASS.test", "/").await;
        seen.insert(json(&body)["backend"].as_str().unwrap_or("?").to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["pass-1", "pass-2"]);

    // (f) Counted as L4 connections of the Service: 1 + 6 so far, with bytes
    // both ways; none of them a handshake of ours.
    let series = r#"switchyard_tcp_connections_total{service="pt/pass"}"#;
    assert_eq!(metric(proxy.admin, series).await, Some(7.0));
    let received = metric(proxy.admin, r#"switchyard_tcp_received_bytes_total{service="pt/pass"}"#).await;
    let sent = metric(proxy.admin, r#"switchyard_tcp_sent_bytes_total{service="pt/pass"}"#).await;
    assert!(received.unwrap_or(0.0) > 1000.0 && sent.unwrap_or(0.0) > 1000.0, "{received:?} {sent:?}");
    // Handshakes of ours: term.test twice, the default twice (c).
    let handshakes = metric(proxy.admin, r#"switchyard_tls_handshakes_total{result="ok",sni="default"}"#).await;
    assert_eq!(handshakes, Some(2.0), "passthrough is not a handshake of ours");

    // The HTTP routes of the passthrough Ingress still serve plain HTTP.
    let r = get(proxy.http, "pass.test", "/plain").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.backend().starts_with("pass-"), "{}", r.body);

    // (e) Without the annotation, pass.test is terminated by the proxy
    // again (the default certificate: its Ingress has no spec.tls).
    proxy.write("all.yaml", &(common + &ingress("pass", "pass.test", "pass", None, proto)));
    let start = Instant::now();
    while served_cert(https, Some("pass.test")).await != default {
        assert!(start.elapsed() < Duration::from_secs(10), "still passed through 10 s after the change");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("terminated again {:?} after the annotation was removed", start.elapsed());
    let before = metric(proxy.admin, series).await;
    let tls = connect(https, ClientOptions { sni: Some("pass.test"), ..Default::default() }).await.unwrap();
    let (status, body) = get_over(tls, "pass.test", "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = json(&body);
    assert!(seen["x-forwarded-for"].is_string(), "proxied as HTTP now: {body}");
    assert_eq!(metric(proxy.admin, series).await, before, "no more passthrough connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_behind_the_proxy_protocol_and_a_dead_backend() {
    let ca = Ca::new();
    let pass = ca.leaf(&["pass.test"]);
    let live = start_tls_backend("pass-1", &pass).await;
    let dead = free_addr();
    let files = service(NS, "pass")
        + &endpoint_slice(NS, "pass", &[("pass-1".to_string(), live)])
        + &ingress("pass", "pass.test", "pass", None, PASSTHROUGH)
        + &service(NS, "gone")
        + &endpoint_slice(NS, "gone", &[("gone-1".to_string(), dead)])
        + &ingress("gone", "gone.test", "gone", None, "nginx.ingress.kubernetes.io/ssl-passthrough: \"true\"");
    let (proxy, https) = start(&files, &["--proxy-protocol"]).await;

    // The PROXY header is read first; the ClientHello after it is peeked and
    // relayed untouched.
    let mut tcp = TcpStream::connect(https).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.18.0.7 198.18.0.1 40000 443\r\n").await.unwrap();
    let tls = tls_over(tcp, "pass.test", &ca.cert_der).await;
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], pass.der);
    let (status, body) = get_over(tls, "pass.test", "/").await;
    assert_eq!((status, json(&body)["backend"].as_str()), (StatusCode::OK, Some("pass-1")), "{body}");

    // A backend that refuses: the client's connection is closed, unanswered.
    let mut tcp = TcpStream::connect(https).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.18.0.7 198.18.0.1 40001 443\r\n").await.unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), try_tls_over(tcp, "gone.test", &ca.cert_der))
        .await
        .expect("closed, not hung");
    assert!(failed.is_err(), "no handshake without an endpoint");
    let log = proxy.log_text();
    assert!(log.contains("TLS passthrough connection refused"), "{log}");
    assert_eq!(metric(proxy.admin, r#"switchyard_tcp_connections_total{service="pt/gone"}"#).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_relay_runs_until_the_drain_deadline_then_closes() {
    let ca = Ca::new();
    let pass = ca.leaf(&["pass.test"]);
    let files = service(NS, "pass")
        + &endpoint_slice(NS, "pass", &[("pass-1".to_string(), start_tls_backend("pass-1", &pass).await)])
        + &ingress("pass", "pass.test", "pass", None, PASSTHROUGH);
    let (mut proxy, https) = start(&files, &["--shutdown-delay", "200ms", "--drain-timeout", "1s"]).await;
    let tls = tls_over(TcpStream::connect(https).await.unwrap(), "pass.test", &ca.cert_der).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = || Request::get("/").header("host", "pass.test").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(send.send_request(request()).await.unwrap().status(), StatusCode::OK);

    let t0 = Instant::now();
    proxy.signal("TERM");
    // Past the delay, the listener is closed, but the relay still runs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = send.send_request(request()).await.expect("the relay outlives the listener");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    // The deadline (delay + drain = 1.2 s) closes it.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await.expect("the relay is closed");
    let at = t0.elapsed();
    assert!(at >= Duration::from_millis(1100), "not before the deadline ({at:?}): {ended:?}");
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "exit 0 after the deadline: {status:?}\n{}", proxy.log_text());
    eprintln!("relay closed {at:?} after the signal, exit after {:?}", t0.elapsed());
}
