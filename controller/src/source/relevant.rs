//! Which watch events can change what compile produces.
//!
//! The leader writes `status` of every served Ingress and of every
//! BalancerPolicy; each write comes back as a watch event. Compile reads no
//! status, so such an event must not recompile the world (with thousands of
//! Ingresses that was hundreds of back-to-back full compiles). An update is
//! skipped only when the new object equals the cached one in everything but
//! bookkeeping (`resourceVersion`, `managedFields`) and, for kinds whose
//! status compile never reads and nothing else reacts to, `status`. Any
//! other difference, even in a field compile ignores today, recompiles:
//! when in doubt, recompile.

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use switchyard_crds::BalancerPolicy;

/// A watched kind, and how two versions of one object compare for compile.
///
/// Each implementation destructures the object exhaustively, so that a
/// field added by a new `k8s-openapi` is a compile error here until someone
/// decides whether it matters.
pub trait CompileInput {
    /// Whether `new` compiles exactly as `old` did (`false`: recompile).
    fn same_for_compile(old: &Self, new: &Self) -> bool;
}

/// Metadata equal but for `resourceVersion` and `managedFields`, which
/// every write changes and compile never reads. `generation` (bumped by
/// every spec change), labels, annotations, `deletionTimestamp` and the
/// rest are compared.
pub fn same_metadata(old: &ObjectMeta, new: &ObjectMeta) -> bool {
    let ObjectMeta {
        annotations,
        creation_timestamp,
        deletion_grace_period_seconds,
        deletion_timestamp,
        finalizers,
        generate_name,
        generation,
        labels,
        managed_fields: _,
        name,
        namespace,
        owner_references,
        resource_version: _,
        self_link,
        uid,
    } = old;
    *generation == new.generation
        && *annotations == new.annotations
        && *labels == new.labels
        && *deletion_timestamp == new.deletion_timestamp
        && *deletion_grace_period_seconds == new.deletion_grace_period_seconds
        && *creation_timestamp == new.creation_timestamp
        && *finalizers == new.finalizers
        && *generate_name == new.generate_name
        && *name == new.name
        && *namespace == new.namespace
        && *owner_references == new.owner_references
        && *self_link == new.self_link
        && *uid == new.uid
}

impl CompileInput for Ingress {
    /// `status` is ignored: the leader writes it, compile never reads it,
    /// and the status writer reads it from the cache (and re-checks every
    /// few seconds), not from a recompile.
    fn same_for_compile(old: &Self, new: &Self) -> bool {
        let Self { metadata, spec, status: _ } = old;
        same_metadata(metadata, &new.metadata) && *spec == new.spec
    }
}

impl CompileInput for BalancerPolicy {
    /// `status` is ignored, as for Ingress: the leader writes it.
    fn same_for_compile(old: &Self, new: &Self) -> bool {
        let Self { metadata, spec, status: _ } = old;
        same_metadata(metadata, &new.metadata) && *spec == new.spec
    }
}

impl CompileInput for IngressClass {
    fn same_for_compile(old: &Self, new: &Self) -> bool {
        let Self { metadata, spec } = old;
        same_metadata(metadata, &new.metadata) && *spec == new.spec
    }
}

impl CompileInput for Service {
    /// `status` counts: the `--publish-service` Service's load-balancer
    /// address reaches Ingress status through the recompile it triggers.
    fn same_for_compile(old: &Self, new: &Self) -> bool {
        let Self { metadata, spec, status } = old;
        same_metadata(metadata, &new.metadata) && *spec == new.spec && *status == new.status
    }
}

impl CompileInput for EndpointSlice {
    fn same_for_compile(old: &Self, new: &Self) -> bool {
        let Self { address_type, endpoints, metadata, ports } = old;
        same_metadata(metadata, &new.metadata)
            && *address_type == new.address_type
            && *endpoints == new.endpoints
            && *ports == new.ports
    }
}

impl CompileInput for ConfigMap {
    fn same_for_compile(old: &Self, new: &Self) -> bool {
        let Self { binary_data, data, immutable, metadata } = old;
        same_metadata(metadata, &new.metadata)
            && *data == new.data
            && *binary_data == new.binary_data
            && *immutable == new.immutable
    }
}

impl CompileInput for Secret {
    /// Never the same: the cache holds Secrets without their data, so two
    /// cached versions cannot tell a rotated certificate from a no-op.
    fn same_for_compile(_: &Self, _: &Self) -> bool {
        false
    }
}

/// Whether `event`, about to be applied to `store`, can change what compile
/// produces. Call it before the event reaches the store.
///
/// * An update equal for compile to the cached object: no.
/// * A relist (`Init`, `InitApply`) fills the reflector's buffer, not the
///   store, so nothing compile reads changes until `InitDone` swaps it in.
/// * Anything else (a new object, a deletion, `InitDone`): yes.
pub fn triggers_compile<K>(store: &Store<K>, event: &watcher::Event<K>) -> bool
where
    K: CompileInput + Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    match event {
        watcher::Event::Apply(new) => {
            let key = ObjectRef::from_obj_with(new, K::DynamicType::default());
            store.get(&key).is_none_or(|old| !K::same_for_compile(&old, new))
        }
        watcher::Event::Init | watcher::Event::InitApply(_) => false,
        watcher::Event::Delete(_) | watcher::Event::InitDone => true,
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;
    use serde_json::json;

    use super::*;

    fn ingress(rv: &str) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "shop", "resourceVersion": rv, "generation": 1,
                "uid": "u-1", "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"app": "web"}, "annotations": {"switchyard.dev/x": "1"}
            },
            "spec": {"ingressClassName": "switchyard", "rules": [{"host": "a.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
            ]}}]}
        }))
        .unwrap()
    }

    fn with(mut object: Ingress, change: impl FnOnce(&mut Ingress)) -> Ingress {
        change(&mut object);
        object
    }

    fn status_written(o: &mut Ingress) {
        *o = serde_json::from_value({
            let mut v = serde_json::to_value(&*o).unwrap();
            v["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.1"}]}});
            v["metadata"]["resourceVersion"] = json!("99");
            v["metadata"]["managedFields"] = json!([{"manager": "switchyard", "operation": "Update",
                "subresource": "status", "apiVersion": "networking.k8s.io/v1"}]);
            v
        })
        .unwrap();
    }

    #[test]
    fn an_ingress_status_write_is_not_a_change() {
        let old = ingress("1");
        let new = with(old.clone(), status_written);
        assert_ne!(old, new);
        assert!(Ingress::same_for_compile(&old, &new));
        assert!(Ingress::same_for_compile(&new, &old), "clearing status is not a change either");
        assert!(Ingress::same_for_compile(&old, &with(old.clone(), |o| o.metadata.resource_version = None)));
    }

    #[test]
    fn every_ingress_change_compile_may_read_is_a_change() {
        type Change = fn(&mut Ingress);
        let old = ingress("1");
        let changes: [(&str, Change); 9] = [
            ("generation", |o| o.metadata.generation = Some(2)),
            ("annotation value", |o| {
                o.metadata.annotations.as_mut().unwrap().insert("switchyard.dev/x".into(), "2".into());
            }),
            ("annotation added", |o| {
                o.metadata.annotations.as_mut().unwrap().insert("kubernetes.io/ingress.class".into(), "x".into());
            }),
            ("annotations removed", |o| o.metadata.annotations = None),
            ("label", |o| _ = o.metadata.labels.as_mut().unwrap().insert("app".into(), "other".into())),
            ("deletion", |o| {
                o.metadata.deletion_timestamp = o.metadata.creation_timestamp.clone();
            }),
            ("finalizer", |o| o.metadata.finalizers = Some(vec!["x".into()])),
            ("recreated", |o| o.metadata.uid = Some("u-2".into())),
            // Not possible from a real API server (a spec change bumps the
            // generation), but a spec difference must never be skipped.
            ("spec, same generation", |o| {
                o.spec.as_mut().unwrap().ingress_class_name = Some("other".into());
            }),
        ];
        for (what, change) in changes {
            let new = with(with(old.clone(), status_written), change);
            assert!(!Ingress::same_for_compile(&old, &new), "{what} must recompile");
        }
    }

    #[test]
    fn balancer_policy_status_is_ignored_but_not_its_spec() {
        let old: BalancerPolicy = serde_json::from_value(json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "BalancerPolicy",
            "metadata": {"name": "p", "namespace": "shop", "generation": 3, "resourceVersion": "5"},
            "spec": {"targetRef": {"name": "web"}, "algorithm": "RoundRobin"}
        }))
        .unwrap();
        let mut written = serde_json::to_value(&old).unwrap();
        written["metadata"]["resourceVersion"] = json!("6");
        written["status"] = json!({"observedGeneration": 3, "conditions": [{"type": "Accepted", "status": "True",
            "reason": "Accepted", "message": "ok", "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
        let written: BalancerPolicy = serde_json::from_value(written).unwrap();
        assert!(BalancerPolicy::same_for_compile(&old, &written));
        let mut edited = written.clone();
        edited.metadata.generation = Some(4);
        edited.spec.algorithm = serde_json::from_value(json!("LeastConnections")).unwrap();
        assert!(!BalancerPolicy::same_for_compile(&written, &edited));
    }

    #[test]
    fn services_slices_and_secrets_compare_everything_but_bookkeeping() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        let mut bumped = svc.clone();
        bumped.metadata.resource_version = Some("2".into());
        assert!(Service::same_for_compile(&svc, &bumped));
        let mut lb = bumped.clone();
        lb.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.9"}]}})).unwrap();
        assert!(!Service::same_for_compile(&bumped, &lb), "the publish Service's address counts");

        let slice = |ready: bool, rv: &str| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": rv,
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}]
            }))
            .unwrap()
        };
        assert!(EndpointSlice::same_for_compile(&slice(true, "1"), &slice(true, "2")));
        assert!(!EndpointSlice::same_for_compile(&slice(true, "1"), &slice(false, "2")));

        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": "t", "namespace": "shop"}, "type": "kubernetes.io/tls"}),
        )
        .unwrap();
        assert!(!Secret::same_for_compile(&secret, &secret), "a cached Secret has no data to compare");
    }

    #[test]
    fn events_are_judged_against_the_cached_object() {
        let (store, mut writer) = reflector::store::<Ingress>();
        let old = ingress("1");
        let apply = |o: &Ingress| watcher::Event::Apply(o.clone());
        assert!(triggers_compile(&store, &apply(&old)), "a new object");
        writer.apply_watcher_event(&apply(&old));
        let written = with(old.clone(), status_written);
        assert!(!triggers_compile(&store, &apply(&written)), "a status write");
        writer.apply_watcher_event(&apply(&written));
        let edited = with(written.clone(), |o| o.metadata.generation = Some(2));
        assert!(triggers_compile(&store, &apply(&edited)), "a spec change");
        assert!(triggers_compile(&store, &watcher::Event::Delete(written.clone())));

        // A relist changes the store only when it completes.
        assert!(!triggers_compile(&store, &watcher::Event::Init));
        assert!(!triggers_compile(&store, &watcher::Event::InitApply(edited)));
        assert!(triggers_compile(&store, &watcher::Event::InitDone));
    }
}
