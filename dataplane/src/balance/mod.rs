//! Load-balancing selectors: built with the snapshot, used per request
//! without locks.
//!
//! Every selector is *built* once per routing snapshot from a backend's
//! endpoints (weighted cycles and hash tables precomputed) and then *used*
//! per request with atomics only: no lock, no allocation. [`Selector`] is the
//! single entry point; the modules hold one algorithm each:
//!
//! | module | algorithm |
//! |---|---|
//! | `round_robin` | strict rotation |
//! | `weighted` | nginx's smooth weighted round robin |
//! | `least_conn` | fewest in-flight requests, weight-normalised |
//! | `p2c` | power of two choices |
//! | `maglev` | Maglev consistent hashing (`IPHash`, `ConsistentHash`) |
//!
//! State that must survive a snapshot swap (in-flight counts, latency EWMA)
//! is not in the selectors: it is an [`EndpointLoad`] per endpoint, shared
//! through a [`LoadRegistry`] keyed by address, and passed in with each pick.
//! Unavailable endpoints are skipped per pick through [`Availability`],
//! without rebuilding anything.
//!
//! Typical use by the proxy:
//!
//! ```
//! use std::sync::Arc;
//! use switchyard_dataplane::balance::{
//!     Algorithm, Availability, LoadRegistry, PickContext, Selector, WeightedEndpoint, hash_key,
//! };
//!
//! // Snapshot build.
//! let registry = LoadRegistry::new();
//! let endpoints = [
//!     WeightedEndpoint { addr: "10.0.0.1:80".parse().unwrap(), weight: 1 },
//!     WeightedEndpoint { addr: "10.0.0.2:80".parse().unwrap(), weight: 3 },
//! ];
//! let selector = Selector::build(Algorithm::ConsistentHash, &endpoints);
//! let loads = registry.resolve(endpoints.iter().map(|e| e.addr));
//!
//! // Per request.
//! let ctx = PickContext {
//!     hash_key: Some(hash_key(b"user-42")),
//!     loads: &loads,
//!     available: Availability::All,
//! };
//! let i = selector.pick(&ctx).expect("an endpoint");
//! let guard = loads[i].start(); // keep it in the response body
//! assert_eq!(loads[i].in_flight(), 1);
//! drop(guard);
//! ```

mod availability;
mod hash;
mod least_conn;
mod load;
mod load_registry;
mod maglev;
mod p2c;
mod rendezvous;
pub(crate) mod rng;
mod round_robin;
mod selector;
mod weighted;

pub use availability::{Availability, EndpointMask};
pub use hash::{fmix64, fnv1a64, hash_ip, hash_key};
pub use least_conn::LeastConnections;
pub use load::{EndpointLoad, InFlightGuard};
pub use load_registry::{EndpointRegistry, LoadRegistry};
pub use maglev::{DEFAULT_TABLE_SIZE, Maglev};
pub use p2c::PowerOfTwoChoices;
pub use rendezvous::Rendezvous;
pub use round_robin::RoundRobin;
pub use selector::{Algorithm, PickContext, Selector, WeightedEndpoint};
pub use weighted::{MAX_CYCLE, WeightedRoundRobin};
