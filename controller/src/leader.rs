//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! kube 5 has no helper, so this is a small loop in the style of
//! client-go's leaderelection:
//!
//! * every write is a `replace` carrying the `resourceVersion` that was read,
//!   so two candidates cannot both win (the loser gets 409 Conflict);
//! * a follower judges expiry by *its own monotonic clock*: the Lease is
//!   expired when its record (holder, renewTime) has not changed for a lease
//!   duration since this replica first saw it. Clock skew between replicas
//!   does not matter;
//! * a leader steps down when it could not renew within the renew deadline
//!   (two thirds of the lease duration), measured from the start of its last
//!   successful attempt, before any follower may consider the Lease expired;
//! * every API call is bounded by a timeout, so a hung connection cannot
//!   keep a stale leader leading;
//! * on shutdown the leader releases the Lease so another replica takes over
//!   at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

/// Shortest lease accepted (`--lease-duration`).
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(2);

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

    /// A leader that has not renewed for this long steps down.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// The other holder's record as this replica last saw it change.
#[derive(Debug)]
struct Observed {
    record: (Option<String>, Option<MicroTime>),
    since: Instant,
}

/// Runs the election until `stop` turns true, publishing leadership on
/// `leading`. Releases the Lease on the way out if held.
pub async fn run(client: Client, config: LeaderConfig, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut renewed_at: Option<Instant> = None;
    let mut observed: Option<Observed> = None;
    loop {
        let attempt = Instant::now();
        let outcome = tokio::time::timeout(config.period(), try_acquire_or_renew(&api, &config, &mut observed)).await;
        let held = match outcome {
            Ok(Ok(true)) => {
                renewed_at = Some(attempt);
                true
            }
            Ok(Ok(false)) => false,
            Ok(Err(err)) => {
                tracing::warn!(lease = %config.lease_name, error = %err, "lease update failed");
                renewed_at.is_some_and(|t| t.elapsed() < config.renew_deadline()) && *leading.borrow()
            }
            Err(_) => {
                tracing::warn!(lease = %config.lease_name, timeout = ?config.period(), "lease update timed out");
                renewed_at.is_some_and(|t| t.elapsed() < config.renew_deadline()) && *leading.borrow()
            }
        };
        if !held {
            renewed_at = None;
        }
        if held != *leading.borrow() {
            tracing::info!(identity = %config.identity, lease = %config.lease_name, leader = held, "leadership changed");
            let _ = leading.send(held);
        }
        // While leading, wake at the renew deadline at the latest.
        let wait = match renewed_at {
            Some(t) => config.period().min(config.renew_deadline().saturating_sub(t.elapsed())),
            None => config.period(),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if *leading.borrow() {
        match tokio::time::timeout(config.period(), release(&api, &config)).await {
            Ok(Ok(())) => tracing::info!(lease = %config.lease_name, "lease released"),
            Ok(Err(err)) => tracing::warn!(error = %err, "could not release the lease"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
        let _ = leading.send(false);
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> kube::Result<bool> {
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
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let their_duration =
            Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0).max(0)).unwrap_or(0));
        let seen = match observed.take() {
            Some(o) if o.record == record => o,
            _ => Observed { record, since: Instant::now() },
        };
        let expired = seen.since.elapsed() >= their_duration;
        *observed = Some(seen);
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
        Ok(_) => {
            *observed = None;
            Ok(true)
        }
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
