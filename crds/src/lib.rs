//! The `BalancerPolicy` custom resource (`switchyard.dev/v1alpha1`).
//!
//! A policy attaches to a Service (`spec.targetRef`) and says how traffic to
//! it is spread: algorithm, endpoint weights and sticky sessions (issue 4),
//! plus the health fields of issue 5, reserved in the schema ahead of their
//! implementation. The CRD generated from these types is checked in twice
//! (`crds/` and the Helm chart); a test here fails when either drifts.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod balancer_policy;
mod crd;
mod duration;
mod health;

pub use balancer_policy::*;
pub use crd::crd_yaml;
pub use duration::{DURATION_PATTERN, parse_duration};
pub use health::*;

#[cfg(test)]
mod checked_in;
