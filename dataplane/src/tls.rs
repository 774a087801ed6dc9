//! TLS termination: the certificate table a snapshot carries, the SNI
//! resolver the HTTPS listener gives rustls, PEM parsing of `kubernetes.io/tls`
//! Secret data, and the self-signed fallback certificate.
//!
//! Certificates are picked per handshake from the snapshot in force, so a
//! rotated Secret is served to the next handshake while open connections
//! keep the session they negotiated.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use serde::Serialize;

use crate::snapshot::SnapshotHandle;

/// The crypto provider every TLS object of the dataplane uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why Secret data cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt: {0}")]
    BadCertificate(String),
    #[error("tls.key holds no PEM private key")]
    NoKey,
    #[error("tls.key: unsupported or malformed private key: {0}")]
    BadKey(String),
    #[error("tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
}

/// A certificate chain and key, checked and ready to serve.
#[derive(Clone)]
pub struct ParsedCert {
    pub key: Arc<CertifiedKey>,
    /// `notAfter` of the leaf, Unix seconds.
    pub not_after: i64,
    /// DNS names of the leaf (subjectAltName, else the common name).
    pub names: Vec<String>,
}

impl fmt::Debug for ParsedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedCert").field("not_after", &self.not_after).field("names", &self.names).finish()
    }
}

/// Parses the `tls.crt` / `tls.key` pair of a Secret: a PEM chain (leaf
/// first) and a PKCS#8, PKCS#1 or SEC1 key that must match the leaf.
pub fn parse_pem_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<ParsedCert, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let (not_after, names) = leaf_facts(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey,
        e => CertError::BadKey(e.to_string()),
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch,
        e => CertError::BadKey(e.to_string()),
    })?;
    Ok(ParsedCert { key: Arc::new(certified), not_after, names })
}

fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(i64, Vec<String>), CertError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string));
    }
    Ok((not_after, names))
}

/// A self-signed certificate for `name`, made at start when no default
/// certificate is configured (clients see an untrusted certificate instead
/// of a failed handshake, as with ingress-nginx's "fake" certificate).
pub fn self_signed(name: &str) -> Arc<CertifiedKey> {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen makes a certificate");
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).expect("rcgen makes a PKCS#8 key");
    let certified = CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider())
        .expect("a generated key matches its certificate");
    Arc::new(certified)
}

/// One Secret's certificate as served by a snapshot.
#[derive(Serialize)]
pub struct ServedCert {
    /// `namespace/name` of the Secret.
    pub secret: Arc<str>,
    /// The hosts it is served for (`*.example.com` for a wildcard entry).
    pub hosts: Vec<Arc<str>>,
    /// `notAfter` of the leaf, Unix seconds.
    pub not_after: i64,
    /// Never serialized: `/debug/snapshot` shows no key material.
    #[serde(skip)]
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedCert")
            .field("secret", &self.secret)
            .field("hosts", &self.hosts)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Host name → certificate, for one snapshot.
#[derive(Debug, Default, Serialize)]
pub struct TlsCerts {
    certs: Vec<ServedCert>,
    /// Host → (certificate index, the host as bound).
    #[serde(skip)]
    exact: HashMap<Box<str>, (usize, Arc<str>)>,
    /// Keyed by the suffix after `*.`.
    #[serde(skip)]
    wildcard: HashMap<Box<str>, (usize, Arc<str>)>,
    /// `--default-ssl-certificate`, when configured and valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    default_secret: Option<Arc<str>>,
    #[serde(skip)]
    default: Option<usize>,
}

/// What a handshake's SNI selected, for logs and metrics (bounded
/// cardinality: a configured host, never the raw SNI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selected<'a> {
    Host(&'a str),
    Default,
}

impl Selected<'_> {
    pub fn label(&self) -> &str {
        match self {
            Selected::Host(h) => h,
            Selected::Default => "default",
        }
    }
}

impl TlsCerts {
    /// Adds (or finds) the certificate of `secret`; returns its index.
    pub fn insert(&mut self, secret: &str, cert: &ParsedCert) -> usize {
        if let Some(i) = self.certs.iter().position(|c| &*c.secret == secret) {
            return i;
        }
        self.certs.push(ServedCert {
            secret: secret.into(),
            hosts: Vec::new(),
            not_after: cert.not_after,
            key: cert.key.clone(),
        });
        self.certs.len() - 1
    }

    /// Serves certificate `index` for `host` (`*.` wildcard allowed, ASCII
    /// case-insensitive). A host already bound keeps its certificate: the
    /// Secret holding it is returned.
    pub fn bind(&mut self, host: &str, index: usize) -> Result<(), Arc<str>> {
        let lower = host.to_ascii_lowercase();
        let lower = lower.trim_end_matches('.');
        let (map, key) = match lower.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, lower),
        };
        match map.entry(key.into()) {
            Entry::Occupied(e) if e.get().0 == index => Ok(()),
            Entry::Occupied(e) => Err(self.certs[e.get().0].secret.clone()),
            Entry::Vacant(e) => {
                let host: Arc<str> = lower.into();
                e.insert((index, host.clone()));
                self.certs[index].hosts.push(host);
                Ok(())
            }
        }
    }

    /// Uses certificate `index` for unknown or missing SNI.
    pub fn set_default(&mut self, index: usize) {
        self.default_secret = Some(self.certs[index].secret.clone());
        self.default = Some(index);
    }

    /// The certificate for a ClientHello's SNI: an exact host, else a
    /// wildcard covering exactly one label, else the default (if any).
    pub fn lookup(&self, sni: Option<&str>) -> Option<(&Arc<CertifiedKey>, Selected<'_>)> {
        if let Some((i, host)) = sni.and_then(|s| self.bound(s)) {
            return Some((&self.certs[*i].key, Selected::Host(host)));
        }
        self.default.map(|i| (&self.certs[i].key, Selected::Default))
    }

    /// The binding for a host name: exact, else a one-label wildcard.
    fn bound(&self, sni: &str) -> Option<&(usize, Arc<str>)> {
        let sni = sni.trim_end_matches('.');
        if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.bound(&sni.to_ascii_lowercase());
        }
        if let Some(binding) = self.exact.get(sni) {
            return Some(binding);
        }
        let (label, suffix) = sni.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(suffix)
    }

    /// True when requests for `host` (a rule's host: exact or `*.` wildcard)
    /// are served over TLS with a configured certificate.
    pub fn covers(&self, host: &str) -> bool {
        match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard.contains_key(suffix.to_ascii_lowercase().as_str()),
            None => self.bound(host).is_some(),
        }
    }

    /// The served certificates (for metrics: expiry per Secret).
    pub fn certs(&self) -> &[ServedCert] {
        &self.certs
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// Picks each handshake's certificate from the snapshot in force.
pub struct SniResolver {
    snapshots: Arc<SnapshotHandle>,
    fallback: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn new(snapshots: Arc<SnapshotHandle>, fallback: Arc<CertifiedKey>) -> Self {
        Self { snapshots, fallback }
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.snapshots.load();
        Some(snapshot.tls.lookup(hello.server_name()).map_or_else(|| self.fallback.clone(), |(key, _)| key.clone()))
    }
}

/// The lowest TLS version the HTTPS listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl std::str::FromStr for MinVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.2" | "TLSv1.2" => Ok(Self::Tls12),
            "1.3" | "TLSv1.3" => Ok(Self::Tls13),
            _ => Err(format!("unsupported TLS version {s:?}: expected 1.2 or 1.3")),
        }
    }
}

/// The HTTPS listener's rustls configuration: certificates from `resolver`,
/// TLS `min`..1.3, ALPN `h2` then `http/1.1`, and up to `sessions`
/// sessions remembered for resumption for [`SESSION_LIFETIME`] (TLS 1.3
/// tickets, two per handshake, each good once; TLS 1.2 session IDs), the
/// oldest forgotten first. With 0, no ticket or session ID is issued:
/// every handshake is a full one.
pub fn server_config(resolver: Arc<SniResolver>, min: MinVersion, sessions: usize) -> Arc<ServerConfig> {
    static BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let versions = match min {
        MinVersion::Tls12 => BOTH,
        MinVersion::Tls13 => TLS13,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    match NonZeroUsize::new(sessions) {
        Some(sessions) => config.session_storage = Arc::new(SessionCache::new(sessions, SESSION_LIFETIME)),
        None => {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
    }
    Arc::new(config)
}

/// How long a session can be resumed after it was issued (ingress-nginx's
/// `ssl-session-timeout` default). rustls checks no age when it resumes
/// from a store: the store must forget. Past it, a client makes a full
/// handshake, with a new key exchange and the certificate in force.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(600);

/// The sessions the HTTPS listener remembers for resumption, each for
/// `lifetime`, the oldest forgotten first when full. Every operation takes
/// constant time: rustls's own memory cache finds a ticket being redeemed
/// by a linear search of its insertion order, which was 16% of a resumed
/// handshake's CPU when it held 10,000 sessions.
struct SessionCache {
    lifetime: Duration,
    sessions: Mutex<Sessions>,
}

/// Session ID or ticket → (when it was issued, the session).
type Sessions = LruCache<Vec<u8>, (Instant, Vec<u8>)>;

impl SessionCache {
    fn new(capacity: NonZeroUsize, lifetime: Duration) -> Self {
        Self { lifetime, sessions: Mutex::new(LruCache::new(capacity)) }
    }

    fn lock(&self) -> MutexGuard<'_, Sessions> {
        // A panic while the lock was held cannot leave the cache invalid.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, issued: Instant) -> bool {
        issued.elapsed() < self.lifetime
    }
}

impl fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sessions = self.lock();
        f.debug_struct("SessionCache")
            .field("len", &sessions.len())
            .field("cap", &sessions.cap())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.lock().put(key, (Instant::now(), value));
        true
    }

    /// A TLS 1.2 session ID: used again and again, until it expires. A
    /// lookup does not make it newer (`peek`): the oldest go first.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut sessions = self.lock();
        match sessions.peek(key) {
            Some((issued, value)) if self.fresh(*issued) => Some(value.clone()),
            Some(_) => {
                sessions.pop(key);
                None
            }
            None => None,
        }
    }

    /// A TLS 1.3 ticket: good once.
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (issued, value) = self.lock().pop(key)?;
        self.fresh(issued).then_some(value)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn parses_a_matching_pair_and_refuses_broken_ones() {
        let (cert, key) = pem_pair(&["a.example", "*.b.example"]);
        let parsed = parse_pem_pair(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(parsed.names, ["a.example", "*.b.example"]);
        assert!(parsed.not_after > 1_700_000_000);

        let (_, other_key) = pem_pair(&["x.example"]);
        assert_eq!(parse_pem_pair(cert.as_bytes(), other_key.as_bytes()).unwrap_err(), CertError::KeyMismatch);
        assert_eq!(parse_pem_pair(b"", key.as_bytes()).unwrap_err(), CertError::NoCertificate);
        assert_eq!(parse_pem_pair(cert.as_bytes(), b"not a key").unwrap_err(), CertError::NoKey);
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(parse_pem_pair(garbage.as_bytes(), key.as_bytes()), Err(CertError::BadCertificate(_))));
    }

    #[test]
    fn lookup_prefers_exact_then_one_label_wildcard_then_default() {
        let (c1, k1) = pem_pair(&["a.example"]);
        let (c2, k2) = pem_pair(&["*.example"]);
        let (c3, k3) = pem_pair(&["fallback"]);
        let mut t = TlsCerts::default();
        let a = t.insert("ns/a", &parse_pem_pair(c1.as_bytes(), k1.as_bytes()).unwrap());
        let w = t.insert("ns/w", &parse_pem_pair(c2.as_bytes(), k2.as_bytes()).unwrap());
        let d = t.insert("ns/d", &parse_pem_pair(c3.as_bytes(), k3.as_bytes()).unwrap());
        t.bind("A.Example", a).unwrap();
        t.bind("*.example", w).unwrap();
        assert_eq!(t.bind("a.example", w).unwrap_err().as_ref(), "ns/a", "the first binding stays");
        fn selected(t: &TlsCerts, sni: Option<&str>) -> Option<String> {
            t.lookup(sni).map(|(_, s)| s.label().to_string())
        }
        assert_eq!(selected(&t, Some("a.example")), Some("a.example".into()));
        assert_eq!(selected(&t, Some("A.EXAMPLE.")), Some("a.example".into()));
        assert_eq!(selected(&t, Some("b.example")), Some("*.example".into()));
        assert_eq!(selected(&t, Some("c.b.example")), None, "a wildcard covers one label");
        t.set_default(d);
        assert_eq!(selected(&t, Some("c.b.example")), Some("default".into()));
        assert_eq!(selected(&t, None), Some("default".into()));
        assert!(t.covers("a.example") && t.covers("x.example") && t.covers("*.example"));
        assert!(!t.covers("example") && !t.covers("*.other"));
        // No key material in the debug view.
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("ns/a") && !json.contains("PRIVATE") && !json.contains("key"), "{json}");
    }

    #[test]
    fn session_cache_takes_once_forgets_the_oldest_and_expires() {
        let cache = SessionCache::new(NonZeroUsize::new(2).unwrap(), Duration::from_secs(3600));
        let (a, b, c) = (b"a".to_vec(), b"b".to_vec(), b"c".to_vec());
        assert!(cache.put(a.clone(), b"1".to_vec()) && cache.put(b.clone(), b"2".to_vec()));
        // A TLS 1.2 session ID may be used again; a TLS 1.3 ticket once.
        assert_eq!(cache.get(&a), Some(b"1".to_vec()));
        assert_eq!(cache.get(&a), Some(b"1".to_vec()));
        assert_eq!(cache.take(&b), Some(b"2".to_vec()));
        assert_eq!(cache.take(&b), None);
        // Full: the oldest goes first, however often it was used.
        cache.put(b.clone(), b"2".to_vec());
        cache.get(&a);
        cache.put(c.clone(), b"3".to_vec());
        assert_eq!((cache.get(&a), cache.get(&b), cache.get(&c)), (None, Some(b"2".to_vec()), Some(b"3".to_vec())));
        assert_eq!(format!("{cache:?}"), "SessionCache { len: 2, cap: 2, lifetime: 3600s }");

        // Past its lifetime, a session is neither resumed nor kept.
        let cache = SessionCache::new(NonZeroUsize::new(2).unwrap(), Duration::from_millis(20));
        cache.put(a.clone(), b"1".to_vec());
        cache.put(b.clone(), b"2".to_vec());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!((cache.get(&a), cache.take(&b)), (None, None));
        assert_eq!(cache.lock().len(), 0);
    }
}
