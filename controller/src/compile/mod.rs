//! `compile`: a pure function from [`World`] to a routing [`Snapshot`] and
//! the [`Diagnostic`]s about what was rejected.
//!
//! No I/O, no clock, no randomness: the same world gives the same snapshot.
//! Ingresses are processed oldest first (`creationTimestamp`, then
//! namespace/name), so the older object wins every conflict.

mod backend;
mod class;
mod diagnostics;
mod ingress;
mod passthrough;
mod policy;
mod tcp;
mod tls;

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use switchyard_dataplane::Snapshot;
use switchyard_dataplane::pace::yield_point;
use switchyard_dataplane::router::Router;

pub use class::{CLASS_ANNOTATION, ClassConfig, DEFAULT_CLASS_ANNOTATION};
pub use diagnostics::{Diagnostic, Reason};

use crate::world::{ObjectKey, World};

/// The result of one compile.
#[derive(Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    /// Sorted, deduplicated.
    pub diagnostics: Vec<Diagnostic>,
    /// The Ingresses that were served (class ours), sorted.
    pub served_ingresses: Vec<ObjectKey>,
}

/// Compiles `world` for the controller configured by `classes`.
pub fn compile(world: &World, classes: &ClassConfig) -> Compiled {
    let mut diagnostics = Vec::new();
    let mut backends = backend::Backends::new(world);
    let mut router = Router::default();

    let mut ours: Vec<(&ObjectKey, &k8s_openapi::api::networking::v1::Ingress)> =
        world.ingresses.iter().map(|(k, ing)| (k, &**ing)).filter(|(_, ing)| classes.is_ours(ing, world)).collect();
    ours.sort_by_key(|(key, ing)| precedence(&ing.metadata, key));
    let tls = tls::build(world, &ours, classes.default_certificate.as_ref(), &mut diagnostics);
    for (key, ing) in &ours {
        yield_point();
        ingress::add_ingress(key, ing, &tls, &mut router, &mut backends, &mut diagnostics);
    }
    router.finish();
    let passthrough = passthrough::build(&ours, &mut backends, &mut diagnostics);
    let tcp_services = tcp::build(world, classes.tcp_services.as_ref(), &mut backends, &mut diagnostics);
    policy::check_policies(world, &mut diagnostics);

    diagnostics.sort();
    diagnostics.dedup();
    let mut served_ingresses: Vec<ObjectKey> = ours.into_iter().map(|(k, _)| k.clone()).collect();
    served_ingresses.sort();
    Compiled {
        snapshot: Snapshot { generation: 0, router, backends: backends.into_vec(), tls, passthrough, tcp_services },
        diagnostics,
        served_ingresses,
    }
}

/// The order in which objects win conflicts: oldest `creationTimestamp`
/// first; objects without one (hand-written manifests) after those with
/// one; then namespace/name.
pub(crate) fn precedence<'k>(
    meta: &ObjectMeta,
    key: &'k ObjectKey,
) -> (bool, Option<k8s_openapi::jiff::Timestamp>, &'k ObjectKey) {
    let created = meta.creation_timestamp.as_ref().map(|t| t.0);
    (created.is_none(), created, key)
}

/// Counts diagnostics by `(kind, reason)`, for the rejected-objects metric.
pub fn count_by_reason(diagnostics: &[Diagnostic]) -> HashMap<(&'static str, Reason), i64> {
    let mut counts = HashMap::new();
    for d in diagnostics {
        *counts.entry((d.kind, d.reason)).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests;
