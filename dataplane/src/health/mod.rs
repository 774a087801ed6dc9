//! Endpoint health: active probes and passive outlier ejection.
//!
//! Health lives beside the snapshot, not in it: one [`EndpointHealth`] per
//! endpoint (`ip:port`), shared by every route and backend that uses the
//! endpoint, carried across snapshot swaps by a [`HealthRegistry`] and
//! dropped when no snapshot lists the endpoint any more. An endpoint takes
//! new requests when it is ready in its EndpointSlice, not failed by the
//! active check, and not ejected by passive detection.
//!
//! There is no panic mode: when every endpoint of a Service is out, requests
//! get a quick 503 rather than being sent to endpoints known to be broken.

pub mod active;
mod state;

pub use state::{AvailabilitySummary, EndpointHealth, HealthRegistry, PassiveConfig};
