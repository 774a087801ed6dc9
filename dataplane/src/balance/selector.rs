//! One entry point over every balancing algorithm.
//!
//! A [`Selector`] is built once per snapshot from a backend's endpoints (in
//! the backend's order) and the policy's algorithm; per request the proxy
//! calls [`Selector::pick`] with a [`PickContext`] and gets the index of the
//! endpoint to use. The algorithms are those of the `BalancerPolicy`
//! `spec.algorithm` field (issue 4); `IPHash` and `ConsistentHash` share the
//! Maglev table and differ only in which request attribute the proxy hashes
//! into [`PickContext::hash_key`].

use std::net::SocketAddr;
use std::sync::Arc;

use super::availability::Availability;
use super::least_conn::LeastConnections;
use super::load::EndpointLoad;
use super::maglev::Maglev;
use super::p2c::PowerOfTwoChoices;
use super::round_robin::RoundRobin;
use super::weighted::WeightedRoundRobin;

/// `BalancerPolicy.spec.algorithm`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    PowerOfTwoChoices,
    /// Maglev over the hash of the client IP.
    IpHash,
    /// Maglev over the hash of a header, cookie or query parameter.
    ConsistentHash,
}

/// One endpoint as a selector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightedEndpoint {
    /// The identity consistent hashing is built from.
    pub addr: SocketAddr,
    /// Relative share; 0 means no new requests. Ignored by `RoundRobin`.
    pub weight: u32,
}

/// What one pick needs from the request and the live state.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickContext<'a> {
    /// [`super::hash_key`] / [`super::hash_ip`] of the request's key, for the
    /// hashing algorithms. Without one they fall back to weighted rotation.
    pub hash_key: Option<u64>,
    /// Per-endpoint loads, in endpoint order, for the load-aware algorithms.
    /// Missing entries count as idle.
    pub loads: &'a [Arc<EndpointLoad>],
    /// Endpoints that may not take new requests right now.
    pub available: Availability<'a>,
}

#[derive(Debug)]
pub enum Selector {
    RoundRobin {
        endpoints: usize,
        rotation: RoundRobin,
    },
    WeightedRoundRobin(WeightedRoundRobin),
    LeastConnections(LeastConnections),
    PowerOfTwoChoices(PowerOfTwoChoices),
    /// `IPHash` and `ConsistentHash` over up to
    /// [`super::rendezvous::MAX_ENDPOINTS`] endpoints: exact minimal
    /// disruption.
    Rendezvous {
        hash: super::Rendezvous,
        /// For requests that carry no key (header absent…).
        keyless: WeightedRoundRobin,
    },
    /// `IPHash` and `ConsistentHash` over larger pools.
    Maglev {
        table: Maglev,
        /// For requests that carry no key (header absent…).
        keyless: WeightedRoundRobin,
    },
}

impl Selector {
    /// Builds the selector for `endpoints`; pick results index this slice.
    pub fn build(algorithm: Algorithm, endpoints: &[WeightedEndpoint]) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        match algorithm {
            Algorithm::RoundRobin => Self::RoundRobin { endpoints: endpoints.len(), rotation: RoundRobin::default() },
            Algorithm::WeightedRoundRobin => Self::WeightedRoundRobin(WeightedRoundRobin::new(&weights)),
            Algorithm::LeastConnections => Self::LeastConnections(LeastConnections::new(&weights)),
            Algorithm::PowerOfTwoChoices => Self::PowerOfTwoChoices(PowerOfTwoChoices::new(&weights)),
            Algorithm::IpHash | Algorithm::ConsistentHash if endpoints.len() <= super::rendezvous::MAX_ENDPOINTS => {
                let ids: Vec<(std::net::SocketAddr, u32)> = endpoints.iter().map(|e| (e.addr, e.weight)).collect();
                Self::Rendezvous { hash: super::Rendezvous::new(&ids), keyless: WeightedRoundRobin::new(&weights) }
            }
            Algorithm::IpHash | Algorithm::ConsistentHash => {
                let ids: Vec<(String, u32)> = endpoints.iter().map(|e| (e.addr.to_string(), e.weight)).collect();
                Self::Maglev { table: Maglev::new(&ids), keyless: WeightedRoundRobin::new(&weights) }
            }
        }
    }

    /// Number of endpoints it was built for.
    pub fn len(&self) -> usize {
        match self {
            Self::RoundRobin { endpoints, .. } => *endpoints,
            Self::WeightedRoundRobin(wrr) => wrr.len(),
            Self::LeastConnections(lc) => lc.len(),
            Self::PowerOfTwoChoices(p2c) => p2c.len(),
            Self::Maglev { table, .. } => table.len(),
            Self::Rendezvous { hash, .. } => hash.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether picks use [`PickContext::hash_key`], so the proxy knows to
    /// compute it.
    pub fn wants_hash_key(&self) -> bool {
        matches!(self, Self::Maglev { .. } | Self::Rendezvous { .. })
    }

    /// Whether picks read [`PickContext::loads`].
    pub fn wants_loads(&self) -> bool {
        matches!(self, Self::LeastConnections(_) | Self::PowerOfTwoChoices(_))
    }

    /// The endpoint for this request, or `None` when no endpoint is
    /// available. Lock-free and allocation-free.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        match self {
            Self::RoundRobin { endpoints, rotation } => rotation.pick_index(*endpoints, ctx.available),
            Self::WeightedRoundRobin(wrr) => wrr.pick(ctx.available),
            Self::LeastConnections(lc) => lc.pick(ctx.loads, ctx.available),
            Self::PowerOfTwoChoices(p2c) => p2c.pick(ctx.loads, ctx.available),
            Self::Rendezvous { hash, keyless } => match ctx.hash_key {
                Some(key) => hash.pick(key, ctx.available),
                None => keyless.pick(ctx.available),
            },
            Self::Maglev { table, keyless } => match ctx.hash_key {
                Some(key) => table.pick(key, ctx.available),
                None => keyless.pick(ctx.available),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{EndpointMask, hash_key};

    fn mk_endpoints(weights: &[u32]) -> Vec<WeightedEndpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| WeightedEndpoint { addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)), weight })
            .collect()
    }

    const ALL: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::PowerOfTwoChoices,
        Algorithm::IpHash,
        Algorithm::ConsistentHash,
    ];

    #[test]
    fn every_algorithm_picks_available_endpoints_only() {
        let endpoints = mk_endpoints(&[1, 2, 3]);
        let loads: Vec<_> = (0..3).map(|_| Arc::new(EndpointLoad::new())).collect();
        let mut mask = EndpointMask::all(3);
        mask.set(1, false);
        for algorithm in ALL {
            let selector = Selector::build(algorithm, &endpoints);
            assert_eq!(selector.len(), 3, "{algorithm:?}");
            for i in 0..100u64 {
                let ctx = PickContext {
                    hash_key: Some(hash_key(&i.to_le_bytes())),
                    loads: &loads,
                    available: mask.as_availability(),
                };
                let picked = selector.pick(&ctx);
                assert!(matches!(picked, Some(0 | 2)), "{algorithm:?}: {picked:?}");
            }
        }
    }

    #[test]
    fn no_endpoints_or_none_available_gives_none() {
        for algorithm in ALL {
            let empty = Selector::build(algorithm, &[]);
            assert!(empty.is_empty());
            assert_eq!(empty.pick(&PickContext::default()), None, "{algorithm:?}");

            let selector = Selector::build(algorithm, &mk_endpoints(&[1, 1]));
            let ctx = PickContext { hash_key: Some(7), available: Availability::Mask(&[0]), ..PickContext::default() };
            assert_eq!(selector.pick(&ctx), None, "{algorithm:?}");
        }
    }

    #[test]
    fn dispatches_to_the_algorithm() {
        let endpoints = mk_endpoints(&[1, 3]);
        let loads = [EndpointLoad::with_in_flight(0), EndpointLoad::with_in_flight(9)];
        let pick_n = |selector: &Selector, key: Option<u64>| -> Vec<usize> {
            let ctx = PickContext { hash_key: key, loads: &loads, available: Availability::All };
            (0..4).map(|_| selector.pick(&ctx).unwrap()).collect()
        };
        let rr = Selector::build(Algorithm::RoundRobin, &endpoints);
        assert_eq!(pick_n(&rr, None), [0, 1, 0, 1]);
        let wrr = Selector::build(Algorithm::WeightedRoundRobin, &endpoints);
        assert_eq!(pick_n(&wrr, None), [1, 0, 1, 1]);
        let lc = Selector::build(Algorithm::LeastConnections, &endpoints);
        assert_eq!(pick_n(&lc, None), [0, 0, 0, 0]); // 1/1 vs 10/3
        let p2c = Selector::build(Algorithm::PowerOfTwoChoices, &endpoints);
        assert_eq!(pick_n(&p2c, None), [0, 0, 0, 0]);
        let hash = Selector::build(Algorithm::ConsistentHash, &endpoints);
        let sticky = pick_n(&hash, Some(hash_key(b"user-1")));
        assert!(sticky.iter().all(|&i| i == sticky[0]), "{sticky:?}");
        assert_eq!(pick_n(&hash, None), [1, 0, 1, 1], "keyless: weighted rotation");

        assert!(hash.wants_hash_key() && !hash.wants_loads());
        assert!(lc.wants_loads() && p2c.wants_loads() && !rr.wants_loads());
    }

    #[test]
    fn ip_hash_is_the_same_on_every_replica() {
        let endpoints = mk_endpoints(&[1, 1, 1, 1]);
        let replica_a = Selector::build(Algorithm::IpHash, &endpoints);
        let mut shuffled = endpoints.clone();
        shuffled.rotate_left(2);
        let replica_b = Selector::build(Algorithm::IpHash, &shuffled);
        for i in 0..1_000u32 {
            let key = crate::balance::hash_ip(std::net::Ipv4Addr::from(i).into());
            let ctx = PickContext { hash_key: Some(key), ..PickContext::default() };
            let a = endpoints[replica_a.pick(&ctx).unwrap()].addr;
            let b = shuffled[replica_b.pick(&ctx).unwrap()].addr;
            assert_eq!(a, b);
        }
    }
}
