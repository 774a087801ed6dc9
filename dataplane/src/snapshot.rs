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

use crate::balance::RoundRobin;
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
    #[serde(skip)]
    pub(crate) rotation: RoundRobin,
}

impl Backend {
    pub fn new(id: impl Into<Arc<str>>, service: impl Into<Arc<str>>, endpoints: Vec<Endpoint>) -> Self {
        let mut endpoints = endpoints;
        endpoints.sort_by_key(|e| e.addr);
        endpoints.dedup_by_key(|e| e.addr);
        Self {
            id: id.into(),
            service: service.into(),
            endpoints: endpoints.into_boxed_slice(),
            unavailable: None,
            rotation: RoundRobin::default(),
        }
    }

    /// A backend that answers 503 with `reason`.
    pub fn unavailable(id: impl Into<Arc<str>>, service: impl Into<Arc<str>>, reason: impl Into<Arc<str>>) -> Self {
        let mut b = Self::new(id, service, Vec::new());
        b.unavailable = Some(reason.into());
        b
    }

    /// Picks the endpoint for the next request, or `None` when there is none.
    pub fn pick_endpoint(&self) -> Option<&Endpoint> {
        self.rotation.pick(&self.endpoints)
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
    /// `ip:port` (IPv6 bracketed) pre-parsed for building upstream URIs.
    #[serde(skip)]
    pub authority: Authority,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        let authority = Authority::try_from(addr.to_string()).expect("a socket address is a valid authority");
        Self { addr, pod: None, zone: None, authority }
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
    ready: AtomicBool,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            generation: AtomicU64::new(0),
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
