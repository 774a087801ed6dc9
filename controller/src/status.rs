//! The status writer: only the leader writes. It fills
//! `status.loadBalancer.ingress` of every served Ingress from the published
//! address (the `--publish-service` Service's own load-balancer status, or
//! `--publish-address`), clears it on Ingresses it stops serving, and
//! records an `events.k8s.io` Event for each new diagnostic.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource};
use serde_json::json;
use switchyard_crds::BalancerPolicy;
use switchyard_dataplane::metrics::Metrics;
use tokio::sync::watch;

use crate::compile::{Diagnostic, Reason};
use crate::source::cluster::Stores;
use crate::world::ObjectKey;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "switchyard";

/// What the latest compile served and said.
#[derive(Debug, Default)]
pub struct StatusInput {
    pub served: Vec<ObjectKey>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Where the address written into Ingress status comes from.
#[derive(Clone, Debug)]
pub enum PublishSource {
    /// `--publish-service NAMESPACE/NAME`.
    Service { namespace: String, name: String },
    /// `--publish-address ADDR[,ADDR…]`: IPs or host names.
    Addresses(Vec<String>),
    /// Neither given: status is not written.
    None,
}

pub struct StatusWriter {
    client: Client,
    stores: Stores,
    publish: PublishSource,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Diagnostics already recorded as Events.
    reported: BTreeSet<Diagnostic>,
}

impl StatusWriter {
    pub fn new(client: Client, stores: Stores, publish: PublishSource, identity: &str, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: "switchyard".into(), instance: Some(identity.to_string()) };
        let recorder = Recorder::new(client.clone(), reporter);
        Self { client, stores, publish, recorder, metrics, reported: BTreeSet::new() }
    }

    /// Runs until `input`'s sender is dropped. Writes only while `leading`.
    pub async fn run(mut self, mut input: watch::Receiver<Arc<StatusInput>>, mut leading: watch::Receiver<bool>) {
        // The publish Service's address can change without any watched
        // event of ours: re-check it periodically.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                changed = input.changed() => if changed.is_err() { return },
                changed = leading.changed() => {
                    if changed.is_err() {
                        return; // the election ended: shutting down
                    }
                    if !*leading.borrow() {
                        // A new leader starts from what it observes.
                        self.reported.clear();
                    }
                }
                _ = tick.tick() => {}
            }
            if !*leading.borrow() {
                continue;
            }
            let current = input.borrow().clone();
            self.sync(&current).await;
        }
    }

    async fn sync(&mut self, input: &StatusInput) {
        match self.addresses().await {
            Ok(Some(addresses)) => self.write_status(input, &addresses).await,
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read the publish Service; Ingress status not updated"),
        }
        self.write_policy_status(input).await;
        self.record_events(input).await;
    }

    /// `Accepted` and `ResolvedRefs` conditions, with `observedGeneration`,
    /// on every BalancerPolicy; written only when they change.
    async fn write_policy_status(&self, input: &StatusInput) {
        for policy in self.stores.policies.state() {
            let key = ObjectKey::of(&policy.metadata);
            let generation = policy.metadata.generation;
            let mine: Vec<&Diagnostic> =
                input.diagnostics.iter().filter(|d| d.kind == "BalancerPolicy" && d.object == key).collect();
            let find = |reasons: &[Reason]| mine.iter().find(|d| reasons.contains(&d.reason)).copied();
            let accepted = match find(&[Reason::PolicyConflict, Reason::InvalidPolicy]) {
                Some(d) => ("False", d.reason.as_str(), d.message.clone()),
                None => ("True", "Accepted", "the policy is in force".to_string()),
            };
            let resolved = match find(&[Reason::TargetNotFound]) {
                Some(d) => ("False", d.reason.as_str(), d.message.clone()),
                None => ("True", "ResolvedRefs", "the target Service exists".to_string()),
            };
            let old = policy.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            let conditions: Vec<Condition> = [("Accepted", accepted), ("ResolvedRefs", resolved)]
                .into_iter()
                .map(|(kind, (status, reason, message))| {
                    let previous = old.iter().find(|c| c.type_ == kind);
                    let last_transition_time = match previous {
                        Some(c) if c.status == status => c.last_transition_time.clone(),
                        _ => Time(Timestamp::now()),
                    };
                    Condition {
                        type_: kind.to_string(),
                        status: status.to_string(),
                        reason: reason.to_string(),
                        message,
                        observed_generation: generation,
                        last_transition_time,
                    }
                })
                .collect();
            let unchanged = policy.status.as_ref().is_some_and(|s| {
                s.observed_generation == generation
                    && s.conditions.len() == conditions.len()
                    && s.conditions.iter().zip(&conditions).all(|(a, b)| {
                        (&a.type_, &a.status, &a.reason, &a.message, a.observed_generation)
                            == (&b.type_, &b.status, &b.reason, &b.message, b.observed_generation)
                    })
            });
            if unchanged {
                continue;
            }
            let api = Api::<BalancerPolicy>::namespaced(self.client.clone(), &key.namespace);
            let body = json!({"status": {"observedGeneration": generation, "conditions": conditions}});
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            match api.patch_status(&key.name, &params, &Patch::Merge(&body)).await {
                Ok(_) => self.metrics.status_writes.with_label_values(&["BalancerPolicy", "ok"]).inc(),
                Err(err) => {
                    self.metrics.status_writes.with_label_values(&["BalancerPolicy", "error"]).inc();
                    tracing::warn!(policy = %key, error = %err, "cannot write BalancerPolicy status");
                }
            }
        }
    }

    async fn addresses(&self) -> kube::Result<Option<Vec<IngressLoadBalancerIngress>>> {
        Ok(match &self.publish {
            PublishSource::None => None,
            PublishSource::Addresses(list) => Some(list.iter().map(|a| lb_address(a)).collect()),
            PublishSource::Service { namespace, name } => {
                let svc = Api::<Service>::namespaced(self.client.clone(), namespace).get_opt(name).await?;
                let ingress = svc.and_then(|s| s.status?.load_balancer?.ingress).unwrap_or_default();
                Some(
                    ingress
                        .into_iter()
                        .map(|i| IngressLoadBalancerIngress { ip: i.ip, hostname: i.hostname, ports: None })
                        .collect(),
                )
            }
        })
    }

    /// Sets the status of every served Ingress, and clears it on Ingresses
    /// we no longer serve that still show exactly our addresses (computed
    /// from the cache, so it also holds after a restart or failover; another
    /// controller's address is never touched).
    async fn write_status(&mut self, input: &StatusInput, addresses: &[IngressLoadBalancerIngress]) {
        let served: BTreeSet<&ObjectKey> = input.served.iter().collect();
        for ingress in self.stores.ingresses.state() {
            let key = ObjectKey::of(&ingress.metadata);
            let have =
                ingress.status.as_ref().and_then(|s| s.load_balancer.as_ref()?.ingress.clone()).unwrap_or_default();
            if served.contains(&key) {
                if have != addresses {
                    self.patch(&key, addresses).await;
                }
            } else if !have.is_empty() && have == addresses {
                self.patch(&key, &[]).await;
            }
        }
    }

    /// Sets (or, with no addresses, clears) one Ingress's status.
    async fn patch(&self, key: &ObjectKey, addresses: &[IngressLoadBalancerIngress]) {
        let api = Api::<Ingress>::namespaced(self.client.clone(), &key.namespace);
        let body = if addresses.is_empty() {
            json!({"status": {"loadBalancer": {"ingress": null}}})
        } else {
            json!({"status": {"loadBalancer": {"ingress": addresses}}})
        };
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match api.patch_status(&key.name, &params, &Patch::Merge(&body)).await {
            Ok(_) => {
                self.metrics.status_writes.with_label_values(&["Ingress", "ok"]).inc();
                tracing::info!(ingress = %key, addresses = addresses.len(), "Ingress status written");
            }
            Err(err) => {
                self.metrics.status_writes.with_label_values(&["Ingress", "error"]).inc();
                tracing::warn!(ingress = %key, error = %err, "cannot write Ingress status");
            }
        }
    }

    async fn record_events(&mut self, input: &StatusInput) {
        let now: BTreeSet<Diagnostic> = input.diagnostics.iter().cloned().collect();
        let new: Vec<Diagnostic> = now.difference(&self.reported).cloned().collect();
        for d in &new {
            let reference = match d.kind {
                "Ingress" => {
                    let r = ObjectRef::<Ingress>::new(&d.object.name).within(&d.object.namespace);
                    self.stores.ingresses.get(&r).map(|o| o.object_ref(&()))
                }
                "BalancerPolicy" => {
                    let r = ObjectRef::new(&d.object.name).within(&d.object.namespace);
                    self.stores.policies.get(&r).map(|o| o.object_ref(&()))
                }
                // The TCP services ConfigMap (when it exists: a missing one
                // is only logged).
                "ConfigMap" => self.stores.tcp_services.as_ref().and_then(|store| {
                    let r = ObjectRef::new(&d.object.name).within(&d.object.namespace);
                    store.get(&r).map(|o| o.object_ref(&()))
                }),
                _ => None,
            };
            let Some(reference) = reference else { continue };
            let event = Event {
                type_: EventType::Warning,
                reason: d.reason.as_str().to_string(),
                note: Some(d.message.chars().take(1000).collect()),
                action: "Compile".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &reference).await {
                Ok(()) => {
                    self.reported.insert(d.clone());
                }
                Err(err) => tracing::warn!(object = %d.object, error = %err, "cannot record Event; will retry"),
            }
        }
        // Forget resolved diagnostics, so that a recurrence is recorded again.
        self.reported.retain(|d| now.contains(d));
    }
}

fn lb_address(addr: &str) -> IngressLoadBalancerIngress {
    match addr.parse::<IpAddr>() {
        Ok(_) => IngressLoadBalancerIngress { ip: Some(addr.to_string()), ..Default::default() },
        Err(_) => IngressLoadBalancerIngress { hostname: Some(addr.to_string()), ..Default::default() },
    }
}
