//! The `BalancerPolicy` custom resource (`switchyard.dev/v1alpha1`).
//!
//! A policy attaches to a Service (`spec.targetRef`) and says how traffic to
//! it is spread. The foundation reads it in standalone mode and in the
//! cluster; algorithms beyond round-robin, affinity and health checks are
//! filled in by later work (see the issues), so the fields here are the
//! contract's and the dataplane honours `algorithm: RoundRobin` today.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod balancer_policy;
mod duration;

pub use balancer_policy::*;
pub use duration::{DURATION_PATTERN, parse_duration};

/// The BalancerPolicy CustomResourceDefinition as YAML (what
/// `switchyard crd` prints and `crds/` holds).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    serde_yaml::to_string(&BalancerPolicy::crd()).expect("the CRD serializes")
}
