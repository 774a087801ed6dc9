//! End-to-end TLS termination on the real binary: certificates made by the
//! test (a CA and leaves, rcgen), Secrets and Ingresses in a manifest
//! directory, real rustls clients, HTTP/1.1 and HTTP/2 over TLS, h2c.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::HandshakeKind;
use support::tls::{Ca, Client, ClientOptions, Leaf, connect, served_cert, tls_secret};
use support::*;

const NS: &str = "tls";

/// An Ingress for `host` → Service `web`, with a `spec.tls` entry naming
/// `secret` (if any) and extra annotations.
fn ingress(name: &str, host: &str, secret: Option<&str>, annotations: &str) -> String {
    let tls = secret.map_or(String::new(), |s| format!("  tls:\n  - hosts: [\"{host}\"]\n    secretName: {s}\n"));
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {NS}\n  \
         annotations: {{{annotations}}}\nspec:\n  ingressClassName: switchyard\n{tls}  rules:\n  - host: \"{host}\"\n    \
         http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
    )
}

async fn web() -> String {
    service(NS, "web") + &endpoint_slice(NS, "web", &[("web-1".to_string(), start_echo("web-1").await)])
}

/// The web backend and `a.test` served over TLS with a fresh CA's leaf.
async fn web_and_a_test() -> [(&'static str, String); 2] {
    let a = Ca::new().leaf(&["a.test"]);
    [
        ("web.yaml", web().await),
        ("a.yaml", ingress("a", "a.test", Some("a-tls"), "") + &tls_secret(NS, "a-tls", &a.cert_pem, &a.key_pem)),
    ]
}

/// The HTTPS listener's address (the `--https-addr` given at start).
struct Https {
    proxy: Switchyard,
    addr: SocketAddr,
}

async fn start(files: &[(&str, String)], extra: &[&str]) -> Https {
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let addr = free_addr();
    let https = addr.to_string();
    let mut flags = vec!["--https-addr", &https];
    flags.extend_from_slice(extra);
    Https { proxy: Switchyard::start_with(&files, &flags).await, addr }
}

/// GET `path` for `host` on an established TLS stream (HTTP/1.1).
async fn get_over<S>(stream: S, host: &str, path: &str) -> (StatusCode, http::HeaderMap, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sni_gets_its_certificate_unknown_gets_the_default_and_rotation_reaches_new_handshakes() {
    let ca = Ca::new();
    let (a, b, a2) = (ca.leaf(&["a.test"]), ca.leaf(&["*.b.test"]), ca.leaf(&["a.test"]));
    let stranger = ca.leaf(&["c.test"]);
    let files = [
        ("web.yaml", web().await),
        ("a.yaml", ingress("a", "a.test", Some("a-tls"), "") + &tls_secret(NS, "a-tls", &a.cert_pem, &a.key_pem)),
        ("b.yaml", ingress("b", "*.b.test", Some("b-tls"), "") + &tls_secret(NS, "b-tls", &b.cert_pem, &b.key_pem)),
        // A key that does not belong to the certificate: rejected alone.
        (
            "c.yaml",
            ingress("c", "c.test", Some("c-tls"), "") + &tls_secret(NS, "c-tls", &stranger.cert_pem, &a.key_pem),
        ),
        ("d.yaml", ingress("d", "d.test", Some("missing-tls"), "")),
    ];
    let h = start(&files, &[]).await;

    // Each SNI its own certificate; the chain verifies against the CA.
    assert_eq!(served_cert(h.addr, Some("a.test")).await, a.der);
    assert_eq!(served_cert(h.addr, Some("x.b.test")).await, b.der, "wildcard");
    let verified = ClientOptions { sni: Some("a.test"), trust: Some(&ca.cert_der), ..Default::default() };
    connect(h.addr, verified).await.expect("a.test verifies against the test CA");
    // Unknown SNI, no SNI, a broken Secret and a missing one: the default (self-signed) certificate.
    let default = served_cert(h.addr, Some("unknown.test")).await;
    for (sni, what) in [(None, "no SNI"), (Some("c.test"), "broken Secret"), (Some("d.test"), "missing Secret")] {
        let got = served_cert(h.addr, sni).await;
        assert_eq!(got, default, "{what} gets the default certificate");
    }
    assert!(![&a.der, &b.der, &stranger.der].contains(&&default));
    let log = h.proxy.log_text();
    assert!(log.contains("InvalidTLSSecret") && log.contains("does not match"), "{log}");
    assert!(log.contains("TLSSecretNotFound"), "{log}");

    // A request over TLS reaches the backend and carries HSTS.
    let open = connect(h.addr, ClientOptions { sni: Some("a.test"), ..Default::default() }).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(open)).await.unwrap();
    tokio::spawn(conn);
    let request = || Request::get("/").header("host", "a.test").body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=31536000; includeSubDomains");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["backend"], "web-1");

    // Rotate a-tls: the next handshake gets the new certificate...
    h.proxy.write(
        "a.yaml",
        &(ingress("a", "a.test", Some("a-tls"), "") + &tls_secret(NS, "a-tls", &a2.cert_pem, &a2.key_pem)),
    );
    let start = Instant::now();
    while served_cert(h.addr, Some("a.test")).await != a2.der {
        assert!(start.elapsed() < Duration::from_secs(10), "rotated certificate not served within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("rotated certificate served {:?} after the Secret changed", start.elapsed());
    // ... while the connection opened before keeps working.
    let resp = send.send_request(request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the open connection continues");
    // The other host never noticed.
    assert_eq!(served_cert(h.addr, Some("y.b.test")).await, b.der);

    // The Secret deleted while in use: new handshakes fall back to the
    // default certificate, the open connection still works.
    h.proxy.write("a.yaml", &ingress("a", "a.test", Some("a-tls"), ""));
    let start = Instant::now();
    while served_cert(h.addr, Some("a.test")).await != default {
        assert!(start.elapsed() < Duration::from_secs(10), "deleted Secret still served after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = send.send_request(request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the open connection outlives its Secret");

    let ok = metric(h.proxy.admin, r#"switchyard_tls_handshakes_total{result="ok",sni="a.test"}"#).await;
    assert!(ok.unwrap_or(0.0) >= 3.0, "handshakes counted by served host: {ok:?}");
    let expiry =
        metric(h.proxy.admin, r#"switchyard_tls_certificate_expiry_timestamp_seconds{secret="tls/b-tls"}"#).await;
    assert!(expiry.unwrap_or(0.0) > 1.7e9, "expiry gauge: {expiry:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_tls_hosts_is_redirected_unless_the_ingress_opts_out() {
    let ca = Ca::new();
    let (a, o): (Leaf, Leaf) = (ca.leaf(&["a.test"]), ca.leaf(&["optout.test"]));
    let files = [
        ("web.yaml", web().await),
        ("a.yaml", ingress("a", "a.test", Some("a-tls"), "") + &tls_secret(NS, "a-tls", &a.cert_pem, &a.key_pem)),
        (
            "o.yaml",
            ingress("o", "optout.test", Some("o-tls"), "switchyard.dev/ssl-redirect: \"false\"")
                + &tls_secret(NS, "o-tls", &o.cert_pem, &o.key_pem),
        ),
        ("plain.yaml", ingress("plain", "plain.test", None, "")),
        ("bad.yaml", ingress("bad", "bad.test", None, "nginx.ingress.kubernetes.io/ssl-redirect: \"maybe\"")),
    ];
    let h = start(&files, &["--hsts", "max-age=600"]).await;

    let r = get(h.proxy.http, "a.test:8080", "/x/y?z=1").await.unwrap();
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers["location"], "https://a.test/x/y?z=1");
    assert!(!r.headers.contains_key("strict-transport-security"), "no HSTS over plain HTTP");
    // Opted out: served over plain HTTP too.
    let r = get(h.proxy.http, "optout.test", "/").await.unwrap();
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "web-1".to_string()));
    // No TLS, no redirect.
    assert_eq!(get(h.proxy.http, "plain.test", "/").await.unwrap().status, StatusCode::OK);
    let log = h.proxy.log_text();
    assert!(log.contains("InvalidAnnotation") && log.contains("ssl-redirect"), "{log}");

    // HTTPS: served, with the configured HSTS value.
    let tls = connect(h.addr, ClientOptions { sni: Some("optout.test"), ..Default::default() }).await.unwrap();
    let (status, headers, _) = get_over(tls, "optout.test", "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["strict-transport-security"], "max-age=600");
    let tls = connect(h.addr, ClientOptions { sni: Some("a.test"), ..Default::default() }).await.unwrap();
    let (status, _, body) = get_over(tls, "a.test", "/x").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_by_alpn_and_cleartext_h2c() {
    let ca = Ca::new();
    let a = ca.leaf(&["a.test"]);
    let files = [
        ("web.yaml", web().await),
        ("a.yaml", ingress("a", "a.test", Some("a-tls"), "") + &tls_secret(NS, "a-tls", &a.cert_pem, &a.key_pem)),
        ("plain.yaml", ingress("plain", "plain.test", None, "")),
    ];
    let h = start(&files, &[]).await;

    async fn h2_get<S>(stream: S, authority: &str) -> (Version, StatusCode, String)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{authority}/h2")).body(Empty::<Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.unwrap();
        let (version, status) = (resp.version(), resp.status());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (version, status, String::from_utf8_lossy(&body).into_owned())
    }

    // ALPN offers h2 and http/1.1: the server picks h2.
    let tls = connect(h.addr, ClientOptions { sni: Some("a.test"), alpn: &[b"h2", b"http/1.1"], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (version, status, body) = h2_get(tls, "a.test").await;
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK), "{body}");
    assert!(body.contains("web-1"), "{body}");
    // Only http/1.1 offered: HTTP/1.1.
    let tls = connect(h.addr, ClientOptions { sni: Some("a.test"), alpn: &[b"http/1.1"], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // h2c with prior knowledge on the plain listener.
    let tcp = tokio::net::TcpStream::connect(h.proxy.http).await.unwrap();
    let (version, status, body) = h2_get(tcp, "plain.test").await;
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK), "{body}");

    // curl, when the machine has it: HTTP/2 over TLS negotiated by ALPN.
    if let Ok(out) = std::process::Command::new("curl")
        .args(["-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--noproxy", "*"])
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", h.addr.port()))
        .arg(format!("https://a.test:{}/", h.addr.port()))
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200", "curl --http2: {out:?}");
    } else {
        eprintln!("curl not found: skipping only the curl part of this test");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_min_version_is_enforced() {
    let files = web_and_a_test().await;

    // Default: 1.2 and 1.3 both accepted.
    let h = start(&files, &[]).await;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let options = ClientOptions { sni: Some("a.test"), only: Some(v), ..Default::default() };
        assert!(connect(h.addr, options).await.is_ok(), "{v:?} accepted by default");
    }
    drop(h);
    let h = start(&files, &["--tls-min-version", "1.3"]).await;
    let tls12 = ClientOptions { sni: Some("a.test"), only: Some(&rustls::version::TLS12), ..Default::default() };
    assert!(connect(h.addr, tls12).await.is_err(), "TLS 1.2 refused with --tls-min-version 1.3");
    let tls13 = ClientOptions { sni: Some("a.test"), only: Some(&rustls::version::TLS13), ..Default::default() };
    assert!(connect(h.addr, tls13).await.is_ok());
    let failed = metric(h.proxy.admin, r#"switchyard_tls_handshakes_total{result="error",sni="a.test"}"#).await;
    assert_eq!(failed, Some(1.0), "the refused handshake is counted");
}

/// The kind of handshake each of three connections of one client got
/// (each connection serves one request, so TLS 1.3 tickets are read).
async fn handshake_kinds(addr: SocketAddr, version: &'static rustls::SupportedProtocolVersion) -> Vec<HandshakeKind> {
    let client = Client::new(addr, ClientOptions { sni: Some("a.test"), only: Some(version), ..Default::default() });
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let tls = client.connect().await.expect("TLS handshake");
        kinds.push(tls.get_ref().1.handshake_kind().expect("handshake done"));
        let (status, _, body) = get_over(tls, "a.test", "/").await;
        assert_eq!((status, body.contains(r#""backend":"web-1""#)), (StatusCode::OK, true), "{body}");
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_clients_resume_their_session_unless_the_cache_is_off() {
    use HandshakeKind::{Full, Resumed};
    let files = web_and_a_test().await;

    let h = start(&files, &[]).await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(handshake_kinds(h.addr, v).await, [Full, Resumed, Resumed], "{v:?}, default cache");
    }
    // Every handshake, full or resumed, is counted.
    let ok = metric(h.proxy.admin, r#"switchyard_tls_handshakes_total{result="ok",sni="a.test"}"#).await;
    assert_eq!(ok, Some(6.0));
    drop(h);

    let h = start(&files, &["--tls-session-cache", "0"]).await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(handshake_kinds(h.addr, v).await, [Full, Full, Full], "{v:?}, --tls-session-cache 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_keep_alive_connections_serve_again_and_early_first_requests_are_served() {
    let files = web_and_a_test().await;
    let h = start(&files, &[]).await;
    let tls = connect(h.addr, ClientOptions { sni: Some("a.test"), alpn: &[b"http/1.1"], ..Default::default() })
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    let conn = tokio::spawn(conn);
    // The first request 700 ms after the handshake, then two more after
    // idle pauses: one connection, and no `Connection: close`.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let req = Request::get(format!("/r{i}")).header("host", "a.test").body(Empty::<Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.unwrap_or_else(|e| panic!("request {i} on the same connection: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        assert!(resp.headers().get("connection").is_none_or(|v| v != "close"), "request {i}: {:?}", resp.headers());
        resp.into_body().collect().await.unwrap();
    }
    assert!(!conn.is_finished(), "one TLS connection served all three requests");

    // A first request that arrives with the client's Finished is read by
    // the handshake: it is served at once, not when more bytes arrive.
    let addr = h.addr;
    let got = tokio::task::spawn_blocking(move || {
        let options = ClientOptions { sni: Some("a.test"), only: Some(&rustls::version::TLS13), ..Default::default() };
        let request = b"GET /first HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
        support::tls::request_with_finished(addr, options, request, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
}
