//! Cluster mode's source: kube-runtime reflectors for every kind compile
//! reads, feeding one change channel.
//!
//! A reflector's store keeps its previous content while it relists after a
//! watch desync or an API server restart (it swaps atomically on
//! `InitDone`), so a resync never shows compile an empty world. Watches
//! reconnect with exponential backoff (250 ms doubling to at most 4 s).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use switchyard_crds::BalancerPolicy;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::world::{Object, World};

/// Field selector of the only Secrets we cache: TLS Secrets.
pub const TLS_SECRET_SELECTOR: &str = "type=kubernetes.io/tls";

/// The reflector stores of every watched kind.
#[derive(Clone)]
pub struct Stores {
    pub ingresses: Store<Ingress>,
    pub ingress_classes: Store<IngressClass>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub secrets: Store<Secret>,
    pub policies: Store<BalancerPolicy>,
    /// Notified when the BalancerPolicy list answers 404 (CRD not installed):
    /// the first sync does not wait for a kind that may never exist.
    policies_failed: Arc<Notify>,
}

/// A watch event was received at this instant (for propagation latency).
pub type Changed = Instant;

impl Stores {
    /// Starts one reflector per kind on `tasks`. `namespace` limits the
    /// namespaced kinds (IngressClass is cluster-scoped).
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        tasks: &mut JoinSet<()>,
    ) -> (Self, mpsc::UnboundedReceiver<Changed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let policies_failed = Arc::new(Notify::new());
        let stores = Self {
            ingresses: reflect(tasks, scoped(client, namespace), watcher::Config::default(), &tx, None),
            ingress_classes: reflect(tasks, Api::all(client.clone()), watcher::Config::default(), &tx, None),
            services: reflect(tasks, scoped(client, namespace), watcher::Config::default(), &tx, None),
            endpoint_slices: reflect(tasks, scoped(client, namespace), watcher::Config::default(), &tx, None),
            secrets: reflect(
                tasks,
                scoped(client, namespace),
                watcher::Config::default().fields(TLS_SECRET_SELECTOR),
                &tx,
                None,
            ),
            policies: reflect(
                tasks,
                scoped(client, namespace),
                watcher::Config::default(),
                &tx,
                Some(policies_failed.clone()),
            ),
            policies_failed,
        };
        (stores, rx)
    }

    /// Waits until every store holds a first full list (BalancerPolicy: or
    /// its watch failed, e.g. the CRD is absent).
    pub async fn wait_synced(&self) {
        let _ = tokio::join!(
            self.ingresses.wait_until_ready(),
            self.ingress_classes.wait_until_ready(),
            self.services.wait_until_ready(),
            self.endpoint_slices.wait_until_ready(),
            self.secrets.wait_until_ready(),
        );
        tokio::select! {
            _ = self.policies.wait_until_ready() => {}
            () = self.policies_failed.notified() => {
                tracing::warn!("BalancerPolicy watch failing (CRD not installed?); serving without policies until it appears");
            }
        }
    }

    /// The world as the stores hold it now.
    pub fn world(&self) -> World {
        let mut world = World::default();
        let objects = self
            .ingresses
            .state()
            .into_iter()
            .map(|o| Object::Ingress(Box::new((*o).clone())))
            .chain(self.ingress_classes.state().into_iter().map(|o| Object::IngressClass(Box::new((*o).clone()))))
            .chain(self.services.state().into_iter().map(|o| Object::Service(Box::new((*o).clone()))))
            .chain(self.endpoint_slices.state().into_iter().map(|o| Object::EndpointSlice(Box::new((*o).clone()))))
            .chain(self.secrets.state().into_iter().map(|o| Object::Secret(Box::new((*o).clone()))))
            .chain(self.policies.state().into_iter().map(|o| Object::BalancerPolicy(Box::new((*o).clone()))));
        for object in objects {
            world.insert(object);
        }
        world
    }
}

/// An API for a namespaced kind: one namespace, or all.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts a reflector for `api` and returns its store. Every event sends a
/// change notification; watch errors are logged (and retried with backoff).
fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changes: &mpsc::UnboundedSender<Changed>,
    on_error: Option<Arc<Notify>>,
) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let changes = changes.clone();
    let stream = watcher(api, config)
        .backoff(WatchBackoff::default())
        .modify(|o: &mut K| {
            // managedFields are large and never read: do not cache them.
            o.managed_fields_mut().clear();
        })
        .reflect(writer);
    tasks.spawn(async move {
        let kind = K::kind(&K::DynamicType::default()).to_string();
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    if failing {
                        tracing::info!(%kind, "watch recovered");
                        failing = false;
                    }
                    let _ = changes.send(Instant::now());
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(%kind, error = %err, "watch failed; retrying with backoff");
                    }
                    failing = true;
                    // Only "the kind does not exist" (404: CRD not installed)
                    // lets the first sync go ahead without this kind.
                    let absent =
                        matches!(&err, watcher::Error::InitialListFailed(kube::Error::Api(e)) if e.code == 404);
                    if let (true, Some(notify)) = (absent, &on_error) {
                        notify.notify_one();
                    }
                }
            }
        }
    });
    reader
}

/// Exponential backoff for failed watches, capped low (4 s) so that an API
/// server that comes back is noticed quickly; reset after a success.
#[derive(Debug)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Coalesces a burst of change notifications: waits `window` after the
/// first, drains the rest, and returns the earliest instant (or `None` when
/// every sender is gone).
pub async fn next_burst(rx: &mut mpsc::UnboundedReceiver<Changed>, window: Duration) -> Option<Changed> {
    let first = rx.recv().await?;
    tokio::time::sleep(window).await;
    let mut earliest = first;
    while let Ok(t) = rx.try_recv() {
        earliest = earliest.min(t);
    }
    Some(earliest)
}
