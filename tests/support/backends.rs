//! Backends that speak more than the echo's HTTP: TLS (HTTP/1.1 and h2),
//! gRPC (tonic-health's `grpc.health.v1` server over HTTP/2, cleartext or
//! TLS). Each serves a listener the test made: on loopback, or bound in a
//! test network namespace ([`super::netns::Netns::bind`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::codegen::Service as _;
use tonic_health::ServingStatus;

use super::tls::Leaf;

/// A rustls server configuration for `leaf`, offering `alpn`.
pub fn server_tls(leaf: &Leaf, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).map(Result::unwrap);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.collect(), key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A loopback listener on a free port.
pub async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Serves HTTPS (TLS with `leaf`, offering `alpn`) on `listener`: each
/// answer is JSON naming `name`, the SNI, ALPN and HTTP version it saw,
/// the path, Host, X-Forwarded-Proto and X-Forwarded-For.
pub fn serve_https(listener: TcpListener, leaf: &Leaf, name: &str, alpn: &[&[u8]]) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls(leaf, alpn));
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, name) = (acceptor.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let alpn = tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let header = |n: &str| req.headers().get(n).map(|h| h.to_str().unwrap_or("?").to_string());
                    let body = serde_json::json!({
                        "backend": &*name,
                        "tls": true,
                        "sni": sni,
                        "alpn": alpn,
                        "version": format!("{:?}", req.version()),
                        "path": req.uri().path(),
                        "host": header("host"),
                        "x-forwarded-proto": header("x-forwarded-proto"),
                        "x-forwarded-for": header("x-forwarded-for"),
                    });
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string())))) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    addr
}

/// Serves gRPC (`grpc.health.v1` from tonic-health) over HTTP/2 on
/// `listener`: h2c, or TLS with ALPN `h2` when `tls` is given. Service
/// `switchyard.test` starts SERVING; the reporter changes it.
pub async fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> tonic_health::server::HealthReporter {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("switchyard.test", ServingStatus::Serving).await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (health, tls) = (health.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut health = health.clone();
                    async move { health.call(req).await }
                });
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    Some(config) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else { return };
                        // Only h2 is offered: a client that asked for
                        // nothing else negotiated it.
                        if stream.get_ref().1.alpn_protocol() != Some(&b"h2"[..]) {
                            return;
                        }
                        let _ = h2.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    None => {
                        let _ = h2.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    reporter
}

/// A gRPC health client through the proxy's plain listener (h2c), with
/// `:authority` set to `host` (the route's host).
pub async fn grpc_client(
    proxy: SocketAddr,
    host: &str,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
}

/// A `grpc.health.v1.HealthCheckRequest` for `service`.
pub fn check(service: &str) -> tonic_health::pb::HealthCheckRequest {
    tonic_health::pb::HealthCheckRequest { service: service.to_string() }
}
