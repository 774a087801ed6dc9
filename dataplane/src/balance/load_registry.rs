//! Endpoint loads keyed by identity, so they survive snapshot swaps.
//!
//! When a snapshot is built, each endpoint's [`EndpointLoad`] is looked up
//! by its address: an endpoint that was already serving keeps its in-flight
//! count and latency EWMA; a new one starts idle. The registry holds only
//! weak references: once no snapshot lists an endpoint and its last request
//! has finished, its entry goes away by itself. The lock is taken at build
//! time only, never on the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::load::EndpointLoad;

#[derive(Debug, Default)]
pub struct LoadRegistry {
    loads: Mutex<HashMap<SocketAddr, Weak<EndpointLoad>>>,
}

impl LoadRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The loads of `endpoints`, in the same order, reusing the live entry
    /// of every endpoint already known. Call once per snapshot build.
    pub fn resolve(&self, endpoints: impl IntoIterator<Item = SocketAddr>) -> Box<[Arc<EndpointLoad>]> {
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        loads.retain(|_, load| load.strong_count() > 0);
        endpoints
            .into_iter()
            .map(|addr| {
                if let Some(live) = loads.get(&addr).and_then(Weak::upgrade) {
                    return live;
                }
                let fresh = Arc::new(EndpointLoad::new());
                loads.insert(addr, Arc::downgrade(&fresh));
                fresh
            })
            .collect()
    }

    /// Endpoints with a live load entry.
    pub fn len(&self) -> usize {
        let loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        loads.values().filter(|load| load.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
