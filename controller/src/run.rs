//! `switchyard run`: the in-cluster mode.
//!
//! Reflectors feed the same `World → compile → snapshot` path as standalone
//! mode. Watch events that cannot change the snapshot (status writes) are
//! dropped; a lone change compiles at once, bursts are coalesced. Every replica serves
//! traffic; the Lease holder alone writes status and Events. The watches,
//! compiles, election and status writes run on the controller's own runtime
//! ([`ControlPlane`]); the dataplane keeps its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use switchyard_dataplane::metrics::Metrics;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::RunArgs;
use crate::leader::{self, LeaderConfig};
use crate::publish::Publisher;
use crate::runtime::{ControlPlane, Dataplane};
use crate::source::cluster::{Debounce, Stores};
use crate::status::{PublishSource, StatusInput, StatusWriter};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let control = ControlPlane::start(args.dataplane.controller_nice)?;
    // Made on the controller's runtime: the client's connection tasks run there.
    let kubeconfig = args.kubeconfig.clone();
    let client = control.handle().spawn(async move { client(kubeconfig).await }).await.context("API client task")??;
    let publish = publish_source(&args)?;
    anyhow::ensure!(
        args.lease_duration >= leader::MIN_LEASE_DURATION,
        "--lease-duration {:?}: must be at least {:?}",
        args.lease_duration,
        leader::MIN_LEASE_DURATION
    );
    let identity = args.pod_name.clone().unwrap_or_else(default_identity);
    let dataplane = Dataplane::bind(&args.dataplane).await?;
    control.reclaim_snapshots(dataplane.snapshots.clone());
    // Made here, so that its health probes run on the dataplane's runtime.
    let publisher = Publisher::new(dataplane.snapshots.clone(), dataplane.metrics.clone(), args.classes.to_config());
    let metrics = dataplane.metrics.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let controller = control.handle().spawn(controller(args, client, publish, identity, publisher, metrics, stop_rx));
    let served = dataplane.serve_until_signal().await;
    let _ = stop_tx.send(true);
    // The controller gives the leader loop a moment to release the Lease.
    let _ = tokio::time::timeout(Duration::from_secs(4), controller).await;
    served
}

/// Everything but the dataplane: watches, the compile loop, leader
/// election and status, until `stop`.
async fn controller(
    args: RunArgs,
    client: Client,
    publish: PublishSource,
    identity: String,
    mut publisher: Publisher,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();

    let default_certificate = args.classes.default_ssl_certificate.clone();
    let tcp_services = args.classes.tcp_services_configmap.as_ref();
    let (stores, mut changes) =
        Stores::start(&client, args.watch_namespace.as_deref(), default_certificate, tcp_services, &mut tasks);

    let (leading_tx, leading_rx) = watch::channel(false);
    let election = LeaderConfig {
        namespace: args.election_namespace.clone(),
        lease_name: args.election_id.clone(),
        identity: identity.clone(),
        lease_duration: args.lease_duration,
    };
    let leader_task = tokio::spawn(leader::run(client.clone(), election, leading_tx, stop.clone()));
    {
        let metrics = metrics.clone();
        let mut leading = leading_rx.clone();
        tasks.spawn(async move {
            while leading.changed().await.is_ok() {
                metrics.leader.set(i64::from(*leading.borrow()));
            }
        });
    }

    let (status_tx, status_rx) = watch::channel(Arc::new(StatusInput::default()));
    let writer = StatusWriter::new(client.clone(), stores.clone(), publish, &identity, metrics.clone());
    tasks.spawn(writer.run(status_rx, leading_rx));

    let mut debounce = Debounce::new(args.debounce);
    tasks.spawn(async move {
        let started = Instant::now();
        stores.wait_synced().await;
        tracing::info!(after = ?started.elapsed(), "initial sync complete");
        // Everything received before the first sync is in the first snapshot.
        switchyard_dataplane::pace::caught_up();
        while changes.try_recv().is_ok() {}
        let mut received = None;
        loop {
            let world = stores.world().await;
            // Compiling a large world takes milliseconds: off the worker,
            // so that the controller's other tasks do not wait for it.
            let compiled = tokio::task::block_in_place(|| publisher.apply(&world, |_, _| None));
            if let Some(at) = received {
                metrics.config_propagation.observe(Instant::elapsed(&at).as_secs_f64());
            }
            debounce.compiled();
            let _ = status_tx
                .send(Arc::new(StatusInput { served: compiled.served_ingresses, diagnostics: compiled.diagnostics }));
            match debounce.next_burst(&mut changes).await {
                Some(at) => received = Some(at),
                None => return,
            }
        }
    });

    let _ = stop.wait_for(|stop| *stop).await;
    // Give the leader loop a moment to release the Lease.
    let _ = tokio::time::timeout(Duration::from_secs(3), leader_task).await;
    tasks.abort_all();
}

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<Client> {
    let config = match &kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("--kubeconfig {}: cannot read", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}: invalid", path.display()))?
        }
        None => Config::infer().await.context("no kubeconfig: set --kubeconfig or KUBECONFIG, or run in a cluster")?,
    };
    tracing::info!(server = %config.cluster_url, "connecting to the Kubernetes API");
    Client::try_from(config).context("building the Kubernetes client")
}

fn publish_source(args: &RunArgs) -> anyhow::Result<PublishSource> {
    if let Some(svc) = &args.publish_service {
        let (namespace, name) = svc
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .with_context(|| format!("--publish-service {svc:?}: expected NAMESPACE/NAME"))?;
        return Ok(PublishSource::Service { namespace: namespace.into(), name: name.into() });
    }
    if !args.publish_address.is_empty() {
        return Ok(PublishSource::Addresses(args.publish_address.clone()));
    }
    tracing::warn!("neither --publish-service nor --publish-address given: Ingress status will not be written");
    Ok(PublishSource::None)
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "switchyard".into());
    format!("{host}-{}", std::process::id())
}
