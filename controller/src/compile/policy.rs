//! BalancerPolicy checks. The dataplane balances round-robin today; a
//! policy asking for more is reported, never silently ignored.

use switchyard_crds::{AffinityType, Algorithm};

use super::diagnostics::{Diagnostic, Reason};
use crate::world::{ObjectKey, World};

const KIND: &str = "BalancerPolicy";

pub(super) fn check_policies(world: &World, diagnostics: &mut Vec<Diagnostic>) {
    for (key, policy) in &world.policies {
        let spec = &policy.spec;
        if !world.services.contains_key(&ObjectKey::new(key.namespace.clone(), spec.target_ref.name.clone())) {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::TargetNotFound,
                format!("target Service {}/{} not found", key.namespace, spec.target_ref.name),
            ));
        }
        if spec.algorithm != Algorithm::RoundRobin {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::NotImplemented,
                format!("algorithm {:?} is not implemented yet; RoundRobin is used", spec.algorithm),
            ));
        }
        if spec.session_affinity.as_ref().is_some_and(|a| a.kind == AffinityType::Cookie) {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::NotImplemented,
                "cookie session affinity is not implemented yet; requests are not pinned",
            ));
        }
    }
}
