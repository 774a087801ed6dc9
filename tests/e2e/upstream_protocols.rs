//! End-to-end: the `backend-protocol` annotation on the real binary.
//! HTTPS backends (TLS made by the test, verified only with
//! `--upstream-ca-file`), h2c backends, and gRPC through the proxy with a
//! real gRPC client and server (tonic, `grpc.health.v1`): a unary call, a
//! server-streaming call, a non-OK status and the trailers. HTTP/2
//! downstream is also driven by `h2load` (Debian's nghttp2-client), over
//! h2c and TLS.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::backends::{check, grpc_client, loopback, serve_grpc, serve_https, server_tls};
use support::tls::Ca;
use support::*;
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response;

const NS: &str = "proto";

/// An Ingress for `host` (empty: any host) → Service `svc` port 80 with
/// `switchyard.dev/backend-protocol: protocol` (if any).
fn ingress(name: &str, host: &str, svc: &str, protocol: Option<&str>) -> String {
    let annotations = protocol.map_or(String::new(), |p| format!("switchyard.dev/backend-protocol: {p}"));
    let host = if host.is_empty() { String::new() } else { format!("host: \"{host}\"\n    ") };
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {NS}\n  \
         annotations: {{{annotations}}}\nspec:\n  ingressClassName: switchyard\n  rules:\n  - {host}http:\n      \
         paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
    )
}

fn backend(svc: &str, addr: SocketAddr) -> String {
    service(NS, svc) + &endpoint_slice(NS, svc, &[(format!("{svc}-1"), addr)])
}

/// A unary Check sent as raw HTTP/2 through the proxy (h2c), returning the
/// response's headers, body and trailers: the trailers must arrive intact.
async fn raw_grpc_check(proxy: SocketAddr, host: &str) -> (http::HeaderMap, Bytes, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    // HealthCheckRequest { service = "switchyard.test" } in protobuf, in a
    // gRPC length-prefixed message.
    let service = b"switchyard.test";
    let mut message = BytesMut::new();
    message.put_u8(0x0a);
    message.put_u8(service.len() as u8);
    message.put_slice(service);
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let req = Request::post(format!("http://{host}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame.freeze()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("the gRPC response has trailers");
    (parts.headers, collected.to_bytes(), trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_status_and_trailers_through_the_proxy() {
    let (grpc_listener, grpcs_listener) = (loopback().await, loopback().await);
    let (grpc, grpcs) = (grpc_listener.local_addr().unwrap(), grpcs_listener.local_addr().unwrap());
    let reporter = serve_grpc(grpc_listener, None).await;
    let ca = Ca::new();
    let _reporter_tls = serve_grpc(grpcs_listener, Some(server_tls(&ca.leaf(&["grpcs.internal"]), &[b"h2"]))).await;
    let files = backend("grpc", grpc)
        + &backend("grpcs", grpcs)
        + &ingress("g", "grpc.test", "grpc", Some("GRPC"))
        + &ingress("gs", "grpcs.test", "grpcs", Some("GRPCS"));
    let proxy = Switchyard::start(&[("all.yaml", &files)]).await;

    // Unary, cleartext gRPC backend.
    let mut client = grpc_client(proxy.http, "grpc.test").await;
    let status = client.check(check("switchyard.test")).await.unwrap().into_inner().status;
    assert_eq!(status, health_check_response::ServingStatus::Serving as i32);
    // A non-OK status reaches the client with its code and message.
    let err = client.check(check("no.such.service")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Server streaming: Watch sends the current status, then each change.
    let mut watch = client.watch(check("switchyard.test")).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.status, health_check_response::ServingStatus::Serving as i32);
    reporter.set_service_status("switchyard.test", ServingStatus::NotServing).await;
    let second = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.status, health_check_response::ServingStatus::NotServing as i32);
    reporter.set_service_status("switchyard.test", ServingStatus::Serving).await;
    let third = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(third.status, health_check_response::ServingStatus::Serving as i32);
    drop(watch);

    // The trailers, seen raw: grpc-status 0 after the message.
    let (headers, body, trailers) = raw_grpc_check(proxy.http, "grpc.test").await;
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(&body[..5], &[0, 0, 0, 0, 2], "one 2-byte message (status = SERVING)");
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");

    // gRPC over TLS to the backend (its certificate is not verified by
    // default); the client still speaks h2c to the proxy.
    let mut client = grpc_client(proxy.http, "grpcs.test").await;
    let status = client.check(check("switchyard.test")).await.unwrap().into_inner().status;
    assert_eq!(status, health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_h2c_backends_and_upstream_ca_verification() {
    let ca = Ca::new();
    let https = serve_https(loopback().await, &ca.leaf(&["web.internal"]), "secure-1", &[b"h2", b"http/1.1"]);
    let files = backend("secure", https)
        + &backend("h2", start_echo("h2-1").await)
        + &backend("plain", start_echo("plain-1").await)
        + &ingress("s", "secure.test", "secure", Some("HTTPS"))
        + &ingress("n", "nginx.test", "secure", None)
            .replace("annotations: {}", "annotations: {nginx.ingress.kubernetes.io/backend-protocol: HTTPS}")
        + &ingress("h", "h2c.test", "h2", Some("H2C"))
        + &ingress("p", "plain.test", "plain", None);
    let proxy = Switchyard::start(&[("all.yaml", &files)]).await;

    // HTTPS backend, nothing verified by default: HTTP/1.1 over TLS.
    for host in ["secure.test", "nginx.test"] {
        let r = get(proxy.http, host, "/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.body);
        let seen = r.json();
        assert_eq!(seen["tls"], true);
        assert_eq!(seen["alpn"], "http/1.1");
        assert_eq!(seen["version"], "HTTP/1.1");
        assert_eq!(seen["host"], host, "the client's Host reaches the backend");
        assert_eq!(seen["x-forwarded-proto"], "http", "what the client used");
    }
    // H2C backend: HTTP/2 with prior knowledge; the default stays HTTP/1.1.
    assert_eq!(get(proxy.http, "h2c.test", "/").await.unwrap().json()["version"], "HTTP/2.0");
    assert_eq!(get(proxy.http, "plain.test", "/").await.unwrap().json()["version"], "HTTP/1.1");
    drop(proxy);

    // With --upstream-ca-file: the backend's chain must lead to that CA.
    let dir = tempfile::tempdir().unwrap();
    let (right, wrong) = (dir.path().join("right.pem"), dir.path().join("wrong.pem"));
    std::fs::write(&right, &ca.cert_pem).unwrap();
    std::fs::write(&wrong, Ca::new().cert_pem).unwrap();
    for (ca_file, expected) in [(&right, StatusCode::OK), (&wrong, StatusCode::BAD_GATEWAY)] {
        let flag = ca_file.display().to_string();
        let proxy = Switchyard::start_with(&[("all.yaml", &files)], &["--upstream-ca-file", &flag]).await;
        let r = get(proxy.http, "secure.test", "/").await.unwrap();
        assert_eq!(r.status, expected, "CA {}: {}", ca_file.display(), r.body);
        // Cleartext backends are unaffected.
        assert_eq!(get(proxy.http, "plain.test", "/").await.unwrap().status, StatusCode::OK);
    }
    // An unreadable CA file stops the process at start with a clear error.
    let mut bad = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["standalone", "--manifests", &dir.path().display().to_string(), "--upstream-ca-file"])
        .arg(dir.path().join("missing.pem"))
        .args(["--http-addr", &free_addr().to_string(), "--admin-addr", &free_addr().to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut bad, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(bad.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "a missing CA file must fail the start");
    assert!(stderr.contains("upstream-ca-file") && stderr.contains("missing.pem"), "{stderr}");
}

fn wait_child(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `h2load` (nghttp2-client) against the proxy, over h2c and over TLS
/// (ALPN h2): every request must succeed, over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_h2c_and_tls() {
    let h2load = which("h2load").unwrap_or_else(|| {
        panic!("!!! h2load not found: install Debian's nghttp2-client (.ci/run does) to run this test !!!")
    });
    let files = backend("web", start_echo("web-1").await) + &ingress("any", "", "web", None);
    let https = free_addr();
    let https_flag = https.to_string();
    let proxy = Switchyard::start_with(&[("all.yaml", &files)], &["--https-addr", &https_flag]).await;
    for (url, protocol) in [(format!("http://{}/", proxy.http), "h2c"), (format!("https://{https}/"), "h2")] {
        let out = tokio::process::Command::new(&h2load)
            .args(["-n", "400", "-c", "4", "-m", "8", "-t", "1", "-T", "10", &url])
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("h2load finished").unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("{url}:\n{text}");
        assert!(out.status.success(), "h2load failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("Application protocol: {protocol}")), "{protocol} negotiated:\n{text}");
        assert!(text.contains("requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed"), "{text}");
        assert!(text.contains("status codes: 400 2xx"), "{text}");
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(program)).find(|p| p.is_file())
}
