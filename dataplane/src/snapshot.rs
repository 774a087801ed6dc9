//! The routing snapshot: an immutable, fully-resolved view of what to serve.
//!
//! A snapshot is built once per configuration change (by the controller's
//! `compile`) and shared as `Arc<Snapshot>`. The request path does one
//! lock-free load of the current snapshot and only borrows from it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::uri::Authority;
use serde::Serialize;

use crate::balance::{Algorithm, EndpointLoad, LoadRegistry, Selector, WeightedEndpoint};
use crate::router::Router;

/// Everything one request needs to be routed and balanced.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Monotonic generation number, assigned by the publisher.
    pub generation: u64,
    pub router: Router,
    /// Backends, indexed by [`Route::backend`].
    pub backends: Vec<Backend>,
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
    /// In-flight counters, one per endpoint, attached at publish time from
    /// the dataplane's registry so that they survive snapshot swaps.
    #[serde(skip)]
    pub(crate) loads: Box<[Arc<EndpointLoad>]>,
}

/// The balancing part of a backend, as compiled from a BalancerPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BalanceConfig {
    #[serde(serialize_with = "algorithm_name")]
    pub algorithm: Algorithm,
    /// What the hashing algorithms hash (`IPHash` always hashes the source).
    pub hash_on: HashOn,
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
        Self {
            id: id.into(),
            service: service.into(),
            endpoints: endpoints.into_boxed_slice(),
            unavailable: None,
            balance,
            selector,
            loads: Box::default(),
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
    pub fn pick_endpoint(&self, hash_key: Option<u64>) -> Option<usize> {
        let ctx =
            crate::balance::PickContext { hash_key, loads: &self.loads, available: crate::balance::Availability::All };
        self.selector.pick(&ctx).filter(|&i| i < self.endpoints.len())
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
    /// `ip:port` (IPv6 bracketed) pre-parsed for building upstream URIs.
    #[serde(skip)]
    pub authority: Authority,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        let authority = Authority::try_from(addr.to_string()).expect("a socket address is a valid authority");
        Self { addr, pod: None, zone: None, weight: 1, authority }
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
    generation: AtomicU64,
    loads: LoadRegistry,
    ready: AtomicBool,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            generation: AtomicU64::new(0),
            loads: LoadRegistry::new(),
            ready: AtomicBool::new(false),
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
        for backend in &mut snapshot.backends {
            backend.loads = self.loads.resolve(backend.endpoints.iter().map(|e| e.addr));
        }
        self.current.store(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
        generation
    }

    /// True once a first snapshot was published.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
