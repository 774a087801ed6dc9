//! Per-endpoint state keyed by identity, so that it survives snapshot swaps.
//!
//! When a snapshot is built, each endpoint's state (its [`EndpointLoad`],
//! its health…) is looked up by address: an endpoint that was already
//! serving keeps its state; a new one starts fresh. The registry holds only
//! weak references: once no snapshot lists an endpoint and nothing else
//! (a request in flight) holds its state, the entry goes away by itself. The
//! lock is taken at build time only, never on the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::load::EndpointLoad;

/// Endpoint state of type `T`, keyed by address.
#[derive(Debug)]
pub struct EndpointRegistry<T> {
    entries: Mutex<HashMap<SocketAddr, Weak<T>, foldhash::fast::RandomState>>,
}

impl<T> Default for EndpointRegistry<T> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::default()) }
    }
}

impl<T> EndpointRegistry<T> {
    /// The state of `endpoints`, in the same order, reusing the live entry
    /// of every endpoint already known and calling `fresh` for the others.
    /// Call once per backend of a snapshot build (and [`sweep`](Self::sweep)
    /// once per build).
    pub fn resolve_with(
        &self,
        endpoints: impl IntoIterator<Item = SocketAddr>,
        mut fresh: impl FnMut(SocketAddr) -> T,
    ) -> Box<[Arc<T>]> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        endpoints
            .into_iter()
            .map(|addr| {
                crate::pace::yield_point();
                if let Some(live) = entries.get(&addr).and_then(Weak::upgrade) {
                    return live;
                }
                let new = Arc::new(fresh(addr));
                entries.insert(addr, Arc::downgrade(&new));
                new
            })
            .collect()
    }

    /// Forgets the entries nothing holds any more. Once per snapshot build:
    /// per backend, a build of many backends would scan every entry again
    /// for each.
    pub fn sweep(&self) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, e| e.strong_count() > 0);
    }

    /// Endpoints with a live entry.
    pub fn len(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.values().filter(|e| e.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// In-flight counters and latency EWMA, keyed by endpoint.
pub type LoadRegistry = EndpointRegistry<EndpointLoad>;

impl EndpointRegistry<EndpointLoad> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The loads of `endpoints`, in the same order; new endpoints start idle.
    pub fn resolve(&self, endpoints: impl IntoIterator<Item = SocketAddr>) -> Box<[Arc<EndpointLoad>]> {
        self.resolve_with(endpoints, |_| EndpointLoad::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counters_survive_a_rebuild() {
        let registry = LoadRegistry::new();
        let old = registry.resolve([addr("10.0.0.1:80"), addr("10.0.0.2:80")]);
        let guard = old[1].start();

        // The new snapshot drops .1, keeps .2, adds .3, in another order.
        let new = registry.resolve([addr("10.0.0.3:80"), addr("10.0.0.2:80")]);
        assert!(Arc::ptr_eq(&old[1], &new[1]));
        assert_eq!(new[1].in_flight(), 1);
        assert_eq!(new[0].in_flight(), 0);

        drop(old);
        assert_eq!(registry.len(), 2, ".1 is gone once no snapshot holds it");
        drop(guard);
        assert_eq!(new[1].in_flight(), 0);
    }

    #[test]
    fn a_request_keeps_a_removed_endpoint_alive() {
        let registry = LoadRegistry::new();
        let old = registry.resolve([addr("10.0.0.1:80")]);
        let guard = old[0].start();
        drop(old);
        let _empty = registry.resolve([]);
        assert_eq!(registry.len(), 1);
        // The endpoint comes back while its request is still running.
        let back = registry.resolve([addr("10.0.0.1:80")]);
        assert_eq!(back[0].in_flight(), 1);
        drop(guard);
        drop(back);
        assert!(registry.is_empty());
    }
}
