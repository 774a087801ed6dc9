//! Switchyard's embedded dataplane.
//!
//! It knows routes and endpoints, not Kubernetes objects: the controller
//! compiles the cluster (or a manifest directory) into an immutable
//! [`Snapshot`], publishes it through a [`SnapshotHandle`], and the listeners
//! serve every request from the newest one. Nothing here depends on kube.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod balance;
pub mod clock;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pace;
pub mod passthrough;
pub mod proxy;
pub mod router;
pub mod snapshot;
pub mod tcp;
pub mod tls;

pub use snapshot::{
    AffinityCookie, Backend, BalanceConfig, Endpoint, HashOn, PathKind, Route, Snapshot, SnapshotHandle, TcpService,
    affinity_digest,
};
