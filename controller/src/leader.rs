//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! kube 5 has no helper, so this is a small loop in the style of
//! client-go's leaderelection: read the Lease; if we hold it, renew it; if it
//! is free or expired, take it. Every write is a `replace` carrying the
//! `resourceVersion` that was read, so two candidates cannot both win (the
//! loser gets 409 Conflict). A leader that cannot renew steps down once its
//! own lease would have expired. On shutdown the leader releases the Lease so
//! that another replica takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where and how long the Lease is held.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    pub lease_duration: Duration,
}

impl LeaderConfig {
    /// Renew or retry period: a third of the lease.
    fn period(&self) -> Duration {
        self.lease_duration / 3
    }
}

/// Runs the election until `stop` turns true, publishing leadership on
/// `leading`. Releases the Lease on the way out if held.
pub async fn run(client: Client, config: LeaderConfig, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewed: Option<Instant> = None;
    loop {
        let held = match try_acquire_or_renew(&api, &config).await {
            Ok(held) => {
                if held {
                    last_renewed = Some(Instant::now());
                }
                held
            }
            Err(err) => {
                tracing::warn!(lease = %config.lease_name, error = %err, "lease update failed");
                // Keep leading only while our last renewal is still valid.
                last_renewed.is_some_and(|t| t.elapsed() < config.lease_duration) && *leading.borrow()
            }
        };
        if held != *leading.borrow() {
            tracing::info!(identity = %config.identity, lease = %config.lease_name, leader = held, "leadership changed");
            let _ = leading.send(held);
        }
        tokio::select! {
            () = tokio::time::sleep(config.period()) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if *leading.borrow() {
        if let Err(err) = release(&api, &config).await {
            tracing::warn!(error = %err, "could not release the lease");
        }
        let _ = leading.send(false);
    }
}

async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaderConfig) -> kube::Result<bool> {
    let now = MicroTime(Timestamp::now());
    let duration_secs = i32::try_from(config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(config.lease_name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    if !ours {
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(secs)) => {
                let expires = renewed.0 + Duration::from_secs(u64::try_from(secs.max(0)).unwrap_or(0));
                expires < now.0
            }
            _ => true,
        };
        if !free && !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(duration_secs);
    match api.replace(&config.lease_name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, config: &LeaderConfig) -> kube::Result<()> {
    let Some(mut lease) = api.get_opt(&config.lease_name).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    api.replace(&config.lease_name, &PostParams::default(), &lease).await.map(|_| ())
}
