//! The routing snapshot: an immutable, fully-resolved view of what to serve.
//!
//! A snapshot is built once per configuration change (by the controller's
//! `compile`) and shared as `Arc<Snapshot>`. The request path does one
//! lock-free load of the current snapshot and only borrows from it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::uri::Authority;
use serde::Serialize;

use crate::balance::{Algorithm, EndpointLoad, LoadRegistry, Selector, WeightedEndpoint};
use crate::health::active::ActiveCheck;
use crate::health::{AvailabilitySummary, EndpointHealth, HealthRegistry, PassiveConfig};
use crate::router::Router;

/// Everything one request needs to be routed and balanced.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Monotonic generation number, assigned by the publisher.
    pub generation: u64,
    pub router: Router,
    /// Backends, indexed by [`Route::backend`].
    pub backends: Vec<Backend>,
    /// Certificates for the HTTPS listener, by host.
    pub tls: crate::tls::TlsCerts,
    /// TLS passthrough: hosts whose TLS connections go, unterminated, to a
    /// backend (Ingresses annotated `switchyard.dev/ssl-passthrough`).
    pub passthrough: crate::passthrough::PassthroughHosts,
    /// L4 TCP services (`--tcp-services-configmap`), sorted by port.
    pub tcp_services: Vec<TcpService>,
}

/// One L4 TCP service: a listening port whose connections are proxied, as
/// bytes, to a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcpService {
    /// The port the proxy listens on.
    pub port: u16,
    /// Index into [`Snapshot::backends`].
    pub backend: usize,
    /// `namespace/service:port`, as the ConfigMap entry names it.
    pub target: Arc<str>,
}

/// How a route's path is compared with the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PathKind {
    /// The whole path, case-sensitive.
    Exact,
    /// Element-wise prefix on `/`, trailing slash ignored. Ingress
    /// `ImplementationSpecific` is compiled to this.
    Prefix,
}

/// One routing rule, after compilation.
#[derive(Clone, Debug, Serialize)]
pub struct Route {
    /// The host this route was declared for (`example.com`, `*.example.com`),
    /// or `*` for rules without a host and for the default backend.
    pub host: Arc<str>,
    /// The path as written in the Ingress (empty for the default backend).
    pub path: Arc<str>,
    pub kind: PathKind,
    /// Index into [`Snapshot::backends`].
    pub backend: usize,
    /// `namespace/name` of the Ingress that declared the route.
    pub source: Arc<str>,
    /// Request body size limit (413 beyond it), from the Ingress's
    /// `proxy-body-size` annotation. `None`: the proxy's default;
    /// `Some(u64::MAX)`: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<u64>,
    /// Plain-HTTP requests get a 308 to `https://` (the host has a TLS
    /// certificate and the Ingress did not opt out with `ssl-redirect`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// HTTPS responses carry `Strict-Transport-Security` (the host has TLS).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hsts: bool,
    /// How the proxy talks to the backend (the `backend-protocol`
    /// annotation).
    #[serde(skip_serializing_if = "UpstreamProtocol::is_default")]
    pub upstream: UpstreamProtocol,
}

/// The protocol toward a route's backend (annotation
/// `switchyard.dev/backend-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 in cleartext (upgrades such as WebSocket included).
    #[default]
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 in cleartext, prior knowledge.
    H2c,
    /// gRPC: HTTP/2 in cleartext (prior knowledge), trailers forwarded.
    Grpc,
    /// gRPC over TLS (ALPN `h2`).
    Grpcs,
}

impl UpstreamProtocol {
    /// The annotation's values, case-insensitive.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_uppercase().as_str() {
            "HTTP" => Some(Self::Http),
            "HTTPS" => Some(Self::Https),
            "H2C" => Some(Self::H2c),
            "GRPC" => Some(Self::Grpc),
            "GRPCS" => Some(Self::Grpcs),
            _ => None,
        }
    }

    /// TLS toward the backend.
    pub fn tls(self) -> bool {
        matches!(self, Self::Https | Self::Grpcs)
    }

    /// HTTP/2 toward the backend.
    pub fn http2(self) -> bool {
        matches!(self, Self::H2c | Self::Grpc | Self::Grpcs)
    }

    fn is_default(&self) -> bool {
        *self == Self::Http
    }
}

impl Route {
    /// A route with the proxy's defaults for everything an Ingress's
    /// annotations and TLS section may change.
    pub fn new(host: &str, path: &str, kind: PathKind, backend: usize, source: Arc<str>) -> Self {
        Self {
            host: host.into(),
            path: path.into(),
            kind,
            backend,
            source,
            max_body_size: None,
            https_redirect: false,
            hsts: false,
            upstream: UpstreamProtocol::Http,
        }
    }
}

/// A Service port and the endpoints that currently serve it.
#[derive(Debug, Serialize)]
pub struct Backend {
    /// Stable identity: `namespace/service:port`.
    pub id: Arc<str>,
    /// `namespace/service`, the metrics label.
    pub service: Arc<str>,
    /// Endpoints eligible for traffic (ready), sorted by address.
    pub endpoints: Box<[Endpoint]>,
    /// Why the backend cannot serve at all (service missing, port missing…),
    /// answered as a 503 with this text. `None` when it resolved.
    pub unavailable: Option<Arc<str>>,
    /// How requests are spread (from the Service's BalancerPolicy).
    pub balance: BalanceConfig,
    #[serde(skip)]
    selector: Selector,
    /// Affinity cookie value → endpoint index.
    #[serde(skip)]
    pinned: HashMap<u64, usize>,
    /// Whether any endpoint is draining (terminating but still serving).
    #[serde(skip)]
    any_draining: bool,
    #[serde(skip)]
    rng: crate::balance::rng::SplitMix64,
    /// In-flight counters, one per endpoint, attached at publish time from
    /// the dataplane's registry so that they survive snapshot swaps.
    #[serde(skip)]
    pub(crate) loads: Box<[Arc<EndpointLoad>]>,
    /// Health, one per endpoint, attached at publish from the dataplane's
    /// registry (it outlives snapshots).
    pub(crate) health: Box<[Arc<EndpointHealth>]>,
    /// Whether all of `health` is available, kept between requests.
    #[serde(skip)]
    availability: AvailabilitySummary,
    /// The metric series its requests count in most, once looked up.
    #[serde(skip)]
    pub(crate) series: crate::metrics::BackendSeries,
}

/// The balancing part of a backend, as compiled from a BalancerPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BalanceConfig {
    #[serde(serialize_with = "algorithm_name")]
    pub algorithm: Algorithm,
    /// What the hashing algorithms hash (`IPHash` always hashes the source).
    pub hash_on: HashOn,
    /// Cookie session affinity, when the policy asks for it.
    pub affinity: Option<AffinityCookie>,
    /// Active health check, when the policy configures one.
    pub active_check: Option<ActiveCheck>,
    /// Passive outlier ejection (always on; policy or defaults).
    pub passive: PassiveConfig,
    /// Slow-start window for new and recovered endpoints.
    pub slow_start: Option<std::time::Duration>,
    /// Time allowed for response headers (replaces `--upstream-timeout`).
    pub request_timeout: Option<std::time::Duration>,
    /// TCP connect timeout (replaces `--connect-timeout`).
    pub connect_timeout: Option<std::time::Duration>,
    /// When to retry on another endpoint.
    pub retries: RetryPolicy,
}

/// BalancerPolicy `retries`. Retries go to an endpoint not tried yet, only
/// for idempotent requests without a body, and only before any byte of the
/// response reached the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    /// Connection refused or timed out: nothing reached the endpoint.
    pub on_connect_failure: bool,
    /// The connection broke before a response.
    pub on_reset: bool,
    /// The endpoint answered 503.
    pub on_unavailable: bool,
}

impl Default for RetryPolicy {
    /// Without a policy: one retry when the connection is refused.
    fn default() -> Self {
        Self { attempts: 1, on_connect_failure: true, on_reset: false, on_unavailable: false }
    }
}

/// Sticky sessions by cookie. The cookie's value is a digest of the
/// endpoint's identity (`ip:port`), so every replica resolves it the same
/// way with no shared state, and it survives scale-out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AffinityCookie {
    pub name: Arc<str>,
    /// Everything after `name=value`: `; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax`.
    pub attributes: Arc<str>,
    /// Add `Secure` even on plain HTTP (it is always added on HTTPS).
    pub secure: bool,
}

/// The affinity cookie value of an endpoint: a stable digest of `ip:port`.
pub fn affinity_digest(addr: SocketAddr) -> u64 {
    crate::balance::hash_key(addr.to_string().as_bytes())
}

fn algorithm_name<S: serde::Serializer>(a: &Algorithm, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{a:?}"))
}

/// The request attribute a consistent hash is computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub enum HashOn {
    #[default]
    SourceIp,
    Header(Arc<str>),
    Cookie(Arc<str>),
    QueryParameter(Arc<str>),
}

impl Backend {
    /// A round-robin backend.
    pub fn new(id: impl Into<Arc<str>>, service: impl Into<Arc<str>>, endpoints: Vec<Endpoint>) -> Self {
        Self::with_balance(id, service, endpoints, BalanceConfig::default())
    }

    /// A backend balanced as `balance` says; endpoint weights come from
    /// [`Endpoint::weight`].
    pub fn with_balance(
        id: impl Into<Arc<str>>,
        service: impl Into<Arc<str>>,
        endpoints: Vec<Endpoint>,
        balance: BalanceConfig,
    ) -> Self {
        let mut endpoints = endpoints;
        endpoints.sort_by_key(|e| e.addr);
        endpoints.dedup_by_key(|e| e.addr);
        let weighted: Vec<_> = endpoints.iter().map(|e| WeightedEndpoint { addr: e.addr, weight: e.weight }).collect();
        let selector = Selector::build(balance.algorithm, &weighted);
        let pinned = endpoints.iter().enumerate().map(|(i, e)| (e.affinity_digest, i)).collect();
        let any_draining = endpoints.iter().any(|e| e.draining);
        let endpoint_count = endpoints.len();
        Self {
            id: id.into(),
            service: service.into(),
            endpoints: endpoints.into_boxed_slice(),
            unavailable: None,
            balance,
            selector,
            pinned,
            any_draining,
            rng: crate::balance::rng::SplitMix64::from_entropy(),
            loads: Box::default(),
            health: Box::default(),
            availability: AvailabilitySummary::default(),
            series: crate::metrics::BackendSeries::new(endpoint_count),
        }
    }

    /// A backend that answers 503 with `reason`.
    pub fn unavailable(id: impl Into<Arc<str>>, service: impl Into<Arc<str>>, reason: impl Into<Arc<str>>) -> Self {
        let mut b = Self::new(id, service, Vec::new());
        b.unavailable = Some(reason.into());
        b
    }

    /// Picks the endpoint for the next request (`hash_key`: for the hashing
    /// algorithms), or `None` when there is none.
    /// Draining endpoints get no new requests.
    pub fn pick_endpoint(&self, hash_key: Option<u64>) -> Option<usize> {
        self.pick_endpoint_except(hash_key, &[])
    }

    /// Like [`pick_endpoint`](Self::pick_endpoint), never returning one of
    /// `exclude` (endpoints that just failed). Under slow start, an endpoint
    /// that is ramping is taken with probability equal to its ramp, else the
    /// pick is made again without it.
    pub fn pick_endpoint_except(&self, hash_key: Option<u64>, exclude: &[usize]) -> Option<usize> {
        let first = self.select(hash_key, exclude, None)?;
        let Some(window) = self.balance.slow_start else { return Some(first) };
        let ramp = self.health.get(first).map_or(1.0, |h| h.ramp(window));
        if ramp >= 1.0 {
            return Some(first);
        }
        let draw = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if draw < ramp {
            return Some(first);
        }
        self.select(hash_key, exclude, Some(first)).or(Some(first))
    }

    fn select(&self, hash_key: Option<u64>, exclude: &[usize], also: Option<usize>) -> Option<usize> {
        use crate::balance::{Availability, PickContext};
        let eligible = |i: usize| {
            !exclude.contains(&i)
                && Some(i) != also
                && self.endpoints.get(i).is_some_and(|e| !e.draining)
                && self.health.get(i).is_none_or(|h| h.is_available())
        };
        let all_eligible =
            exclude.is_empty() && also.is_none() && !self.any_draining && self.availability.all_available(&self.health);
        let available = if all_eligible { Availability::All } else { Availability::Predicate(&eligible) };
        let ctx = PickContext { hash_key, loads: &self.loads, available };
        self.selector.pick(&ctx).filter(|&i| eligible(i))
    }

    /// The endpoint an affinity cookie value names, if it still serves
    /// (draining endpoints keep their sessions).
    pub fn pinned_endpoint(&self, digest: u64) -> Option<usize> {
        self.pinned.get(&digest).copied().filter(|&i| self.health.get(i).is_none_or(|h| h.is_available()))
    }

    /// The health of endpoint `i` (attached at publish).
    pub fn health(&self, i: usize) -> Option<&Arc<EndpointHealth>> {
        self.health.get(i)
    }

    /// Records a passive success or failure of endpoint `i`; returns the
    /// ejection time when this failure ejected it. At most
    /// `maxEjectionPercent` of the backend's endpoints are ejected at once.
    pub fn record_outcome(&self, i: usize, failed: bool) -> Option<std::time::Duration> {
        let health = self.health.get(i)?;
        if !failed {
            health.record_success();
            return None;
        }
        // Counting the ejected endpoints reads every endpoint: only when
        // this failure would eject one, not on every failed attempt.
        let within_budget = || {
            let budget = self.health.len() * self.balance.passive.max_ejection_percent as usize / 100;
            self.health.iter().filter(|h| h.is_ejected()).count() < budget
        };
        health.record_failure(&self.balance.passive, within_budget)
    }

    /// The in-flight counter of endpoint `i` (attached at publish).
    pub fn load(&self, i: usize) -> Option<&Arc<EndpointLoad>> {
        self.loads.get(i)
    }
}

/// One address:port that serves a backend.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The Pod behind it, from the EndpointSlice `targetRef`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<Arc<str>>,
    /// Relative share (BalancerPolicy `endpointWeights`; default 1).
    pub weight: u32,
    /// Terminating but still serving: keeps its sticky sessions, gets no
    /// new requests.
    pub draining: bool,
    /// `ip:port` (IPv6 bracketed) pre-parsed for building upstream URIs.
    #[serde(skip)]
    pub authority: Authority,
    /// `ip:port`, the metrics label.
    #[serde(skip)]
    pub label: Arc<str>,
    /// [`affinity_digest`] of the address, computed once.
    #[serde(skip)]
    pub affinity_digest: u64,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        // Formatted once: the label, and the authority's bytes (shared).
        let text = addr_text(addr);
        let label: Arc<str> = text.as_str().into();
        let authority =
            Authority::from_maybe_shared(bytes::Bytes::from(text)).expect("a socket address is a valid authority");
        let affinity_digest = crate::balance::hash_key(label.as_bytes());
        Self { addr, pod: None, zone: None, weight: 1, draining: false, label, affinity_digest, authority }
    }
}

/// `addr` as `Display` writes it (`10.0.0.7:8080`, `[::1]:80`). IPv4 is
/// written without the formatting machinery, which took half the time of
/// building a backend of 10,000 endpoints.
fn addr_text(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else { return addr.to_string() };
    let mut text = String::with_capacity(21);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text.push(':');
    text.push_str(digits.format(v4.port()));
    text
}

/// Drops `snapshot` a few hundred endpoints at a time, with
/// [`yield_point`](crate::pace::yield_point)s between (the router and the
/// rest of each backend go at once).
fn free_paced(mut snapshot: Snapshot) {
    for backend in std::mem::take(&mut snapshot.backends) {
        let mut endpoints = backend.endpoints.into_vec();
        while !endpoints.is_empty() {
            endpoints.truncate(endpoints.len().saturating_sub(256));
            crate::pace::yield_point();
        }
    }
}

// === impl SnapshotHandle ===

/// The publication point between the controller and the dataplane.
///
/// The controller `publish`es; every request `load`s. Readiness turns true
/// with the first published snapshot.
#[derive(Debug)]
pub struct SnapshotHandle {
    current: ArcSwap<Snapshot>,
    /// Replaced snapshots that requests still held when they were replaced.
    /// Kept here so that the last reference, and with it the freeing of a
    /// large snapshot (milliseconds for 10,000 endpoints), is dropped by
    /// [`reclaim`](Self::reclaim) on the controller's side, not by the
    /// last request on a dataplane thread.
    retired: Mutex<Vec<Arc<Snapshot>>>,
    /// Signalled when a snapshot is retired.
    retiring: tokio::sync::Notify,
    generation: AtomicU64,
    loads: LoadRegistry,
    health: HealthRegistry,
    ready: AtomicBool,
    /// The generation last published, for tasks that follow changes.
    published: tokio::sync::watch::Sender<u64>,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            retired: Mutex::new(Vec::new()),
            retiring: tokio::sync::Notify::new(),
            generation: AtomicU64::new(0),
            loads: LoadRegistry::new(),
            health: HealthRegistry::default(),
            ready: AtomicBool::new(false),
            published: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl SnapshotHandle {
    /// The snapshot in force now. Cheap; do not hold it across long awaits
    /// when a fresher one matters.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes `snapshot` live, stamping it with the next generation number.
    /// Returns that generation.
    pub fn publish(&self, mut snapshot: Snapshot) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        snapshot.generation = generation;
        self.loads.sweep();
        self.health.sweep();
        for backend in &mut snapshot.backends {
            crate::pace::yield_point();
            backend.loads = self.loads.resolve(backend.endpoints.iter().map(|e| e.addr));
            backend.health = self.health.resolve(backend.endpoints.iter().map(|e| e.addr));
            backend.availability = AvailabilitySummary::default();
        }
        self.health.mark_started();
        let old = self.current.swap(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
        self.published.send_replace(generation);
        self.reclaim();
        match Arc::try_unwrap(old) {
            Ok(unused) => free_paced(unused),
            Err(in_use) => {
                self.lock_retired().push(in_use);
                self.retiring.notify_one();
            }
        }
        generation
    }

    /// Frees the replaced snapshots no request holds any more; returns how
    /// many are still held.
    pub fn reclaim(&self) -> usize {
        let (unused, held): (Vec<_>, usize) = {
            let mut retired = self.lock_retired();
            // Only `current` hands out snapshots, so a count of one stays one.
            let unused = retired.extract_if(.., |s| Arc::strong_count(s) == 1).collect();
            (unused, retired.len())
        };
        for snapshot in unused {
            if let Ok(snapshot) = Arc::try_unwrap(snapshot) {
                free_paced(snapshot);
            }
        }
        held
    }

    /// Runs [`reclaim`](Self::reclaim) while replaced snapshots are still
    /// held (every 10 ms, backing off to every second). Spawn it where a
    /// few milliseconds of freeing do not delay requests (the controller's
    /// runtime); the freeing itself runs on a blocking thread, so that the
    /// runtime's other tasks go on meanwhile.
    pub async fn reclaim_retired(self: Arc<Self>) {
        loop {
            self.retiring.notified().await;
            let mut pause = std::time::Duration::from_millis(10);
            loop {
                let this = self.clone();
                let held = tokio::task::spawn_blocking(move || this.reclaim()).await.unwrap_or(0);
                if held == 0 {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
        }
    }

    fn lock_retired(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Snapshot>>> {
        self.retired.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True once a first snapshot was published.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Changes each time a snapshot is published (to the generation).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in ["0.0.0.0:0", "10.0.0.7:8080", "127.0.0.1:80", "255.255.255.255:65535", "1.20.255.9:9", "[::1]:80"]
        {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(addr_text(addr), addr.to_string());
            assert_eq!(&*Endpoint::new(addr).label, addr.to_string());
        }
    }

    fn one_backend() -> Snapshot {
        let backend = Backend::new("ns/web:80", "ns/web", vec![Endpoint::new("10.0.0.1:80".parse().unwrap())]);
        Snapshot { backends: vec![backend], ..Snapshot::default() }
    }

    /// A snapshot a request still holds when it is replaced is freed by
    /// `reclaim`, not by the request letting go of it.
    #[test]
    fn a_replaced_snapshot_in_use_is_freed_by_reclaim_not_by_its_last_request() {
        let handle = SnapshotHandle::default();
        handle.publish(one_backend());
        let request = handle.load();
        let watch = Arc::downgrade(&request);
        handle.publish(one_backend());
        drop(request);
        assert!(watch.upgrade().is_some(), "the request's drop must not free it");
        assert_eq!(handle.reclaim(), 0);
        assert!(watch.upgrade().is_none(), "reclaim frees it");
        // Not in use when replaced: freed by the publish itself.
        let watch = Arc::downgrade(&handle.load());
        handle.publish(one_backend());
        assert!(watch.upgrade().is_none());
        assert_eq!(handle.reclaim(), 0);
    }

    #[tokio::test]
    async fn the_reclaim_loop_frees_a_snapshot_once_its_requests_finish() {
        let handle = Arc::new(SnapshotHandle::default());
        handle.publish(one_backend());
        let reclaimer = tokio::spawn(handle.clone().reclaim_retired());
        let request = handle.load();
        let watch = Arc::downgrade(&request);
        handle.publish(one_backend());
        // Held for a while: still retired, not freed.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(handle.reclaim(), 1, "still held by the request");
        drop(request);
        // Freed within the loop's longest pause (1 s), with room for a slow machine.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while watch.upgrade().is_some() {
            assert!(std::time::Instant::now() < deadline, "not freed after its request finished");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        reclaimer.abort();
    }
}
