//! Test PKI (a CA issuing leaf certificates, made with rcgen) and a TLS
//! client that reports which certificate the server presented.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate authority for one test.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
}

/// A leaf certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "switchyard test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert_pem: cert.pem(), cert_der: cert.der().clone(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A leaf for `names` (DNS names; `*.` wildcards allowed).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}

/// A `kubernetes.io/tls` Secret object.
pub fn tls_secret_json(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> serde_json::Value {
    let b64 = |s: &str| serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)},
    })
}

/// [`tls_secret_json`] as a manifest document.
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> String {
    format!("---\n{}", serde_yaml::to_string(&tls_secret_json(namespace, name, cert_pem, key_pem)).unwrap())
}

/// Accepts any certificate (the tests compare it with the expected one)
/// but still checks the handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test client connects.
pub struct ClientOptions<'a> {
    /// SNI; `None` sends none (the server name is then an IP address).
    pub sni: Option<&'a str>,
    pub alpn: &'a [&'a [u8]],
    /// Only this version, if set.
    pub only: Option<&'static rustls::SupportedProtocolVersion>,
    /// Verify the chain against this CA (and the SNI) instead of accepting anything.
    pub trust: Option<&'a CertificateDer<'static>>,
}

impl Default for ClientOptions<'_> {
    fn default() -> Self {
        Self { sni: None, alpn: &[b"http/1.1"], only: None, trust: None }
    }
}

/// Connects and completes a handshake.
pub async fn connect(addr: SocketAddr, options: ClientOptions<'_>) -> std::io::Result<TlsStream<TcpStream>> {
    Client::new(addr, options).connect().await
}

/// A client that connects to `addr` again and again with one
/// configuration, and so one session store: it resumes its sessions when
/// the server lets it.
pub struct Client {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Client {
    pub fn new(addr: SocketAddr, options: ClientOptions<'_>) -> Self {
        let (config, name) = client_config(addr, options);
        Self { addr, config, name }
    }

    /// Connects and completes a handshake.
    pub async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        TlsConnector::from(self.config.clone()).connect(self.name.clone(), tcp).await
    }
}

/// Sends `request` in the same TCP write as the client's last handshake
/// message (as browsers and `wrk` often do), then returns what the server
/// sends back within `wait` (blocking: run it off the runtime).
pub fn request_with_finished(
    addr: SocketAddr,
    options: ClientOptions<'_>,
    request: &[u8],
    wait: std::time::Duration,
) -> Vec<u8> {
    use std::io::{Read, Write};
    /// Passes the first write (the ClientHello) through and holds later ones.
    struct Held {
        tcp: std::net::TcpStream,
        writes: usize,
        held: Vec<u8>,
    }
    impl Read for Held {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.tcp.read(buf)
        }
    }
    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            if self.writes == 1 {
                return self.tcp.write(buf);
            }
            self.held.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (config, name) = client_config(addr, options);
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(wait)).unwrap();
    let mut io = Held { tcp, writes: 0, held: Vec::new() };
    while conn.is_handshaking() {
        conn.complete_io(&mut io).unwrap();
    }
    conn.writer().write_all(request).unwrap();
    while conn.wants_write() {
        conn.write_tls(&mut io).unwrap();
    }
    io.tcp.write_all(&io.held).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        match conn.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match conn.read_tls(&mut io.tcp) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if conn.process_new_packets().is_err() {
                        break;
                    }
                }
            },
            Err(_) => break,
        }
    }
    got
}

fn client_config(addr: SocketAddr, options: ClientOptions<'_>) -> (Arc<ClientConfig>, ServerName<'static>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match options.only {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions).unwrap();
    let mut config = match options.trust {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCert(provider))).with_no_client_auth(),
    };
    config.alpn_protocols = options.alpn.iter().map(|p| p.to_vec()).collect();
    let name = match options.sni {
        Some(sni) => ServerName::try_from(sni.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    (Arc::new(config), name)
}

/// The leaf certificate the server presented to a handshake with `sni`.
pub async fn served_cert(addr: SocketAddr, sni: Option<&str>) -> CertificateDer<'static> {
    let tls = connect(addr, ClientOptions { sni, ..Default::default() }).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}
