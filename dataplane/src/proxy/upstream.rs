//! Pooled clients toward backends, one set per connect timeout: our own
//! pool for cleartext HTTP/1.1 (`h1pool`), hyper-util's client for HTTP/1.1
//! over TLS and for upgrades, and HTTP/2 (h2c prior knowledge or
//! TLS with ALPN `h2`, for gRPC). Each keeps its own connection pool,
//! shared by every worker thread.
//!
//! TLS toward backends verifies nothing by default, as nginx and HAProxy
//! do (`proxy_ssl_verify off`, `verify none`): backends are addressed by
//! pod IP and their certificates rarely name it. With a CA configured
//! (`--upstream-ca-file`), the chain must lead to that CA; the name is
//! still not checked, for the same reason. Handshake signatures are always
//! verified.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::UpstreamBody;
use super::h1pool::H1Pool;
use super::raw_pool::RawPool;
use crate::snapshot::UpstreamProtocol;

pub(super) type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// The clients of one connect timeout.
#[derive(Clone, Debug)]
pub(super) struct UpstreamClients {
    /// Cleartext HTTP/1.1 without upgrades: see `h1pool`.
    pub(super) h1: H1Pool,
    /// Bare sockets for the fast path (see `fast_h1`).
    pub(super) raw: RawPool,
    http1: UpstreamClient,
    http2: UpstreamClient,
}

impl UpstreamClients {
    pub(super) fn new(connect_timeout: Duration, pool_idle_timeout: Duration, tls: &rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false); // `https://` URIs go through the TLS layer
        // ALPN names the one protocol, so that a backend that speaks both
        // picks it.
        let with_alpn = |alpn: &[u8]| {
            let mut config = tls.clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            HttpsConnector::from((http.clone(), config))
        };
        let (http1, http2) = (with_alpn(b"http/1.1"), with_alpn(b"h2"));
        let client = |connector, http2_only| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(pool_idle_timeout)
                .http2_only(http2_only)
                .build(connector)
        };
        let h1 = H1Pool::new(connect_timeout, pool_idle_timeout);
        let raw = RawPool::new(connect_timeout, pool_idle_timeout);
        Self { h1, raw, http1: client(http1, false), http2: client(http2, true) }
    }

    /// The client for `protocol`; an upgrade (WebSocket) always goes over
    /// HTTP/1.1.
    pub(super) fn pick(&self, protocol: UpstreamProtocol, upgrade: bool) -> &UpstreamClient {
        if protocol.http2() && !upgrade { &self.http2 } else { &self.http1 }
    }
}

/// The rustls client configuration toward backends: with `ca`, chains must
/// lead to it; without, any certificate is accepted.
pub fn client_tls_config(ca: Option<RootCertStore>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = crate::tls::provider();
    let chain = match ca {
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
        ),
        None => None,
    };
    let verifier = Arc::new(BackendVerifier { chain, provider: provider.clone() });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("no PEM certificate found")]
    Empty,
    #[error("not valid PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("certificate {index} is not a usable CA: {source}")]
    Certificate { index: usize, source: rustls::Error },
}

/// The CA certificates of a PEM file, for [`client_tls_config`].
pub fn parse_ca_pem(pem: &[u8]) -> Result<RootCertStore, CaError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        roots.add(cert?).map_err(|source| CaError::Certificate { index, source })?;
    }
    if roots.is_empty() {
        return Err(CaError::Empty);
    }
    Ok(roots)
}

/// See the module documentation.
#[derive(Debug)]
struct BackendVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for BackendVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // The name is checked last, after the chain: a name mismatch
            // means the chain was good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
