//! Cluster mode's source: kube-runtime reflectors for every kind compile
//! reads, feeding one change channel.
//!
//! A reflector's store keeps its previous content while it relists after a
//! watch desync or an API server restart (it swaps atomically on
//! `InitDone`), so a resync never shows compile an empty world. Watches
//! reconnect with exponential backoff (250 ms doubling to at most 4 s).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use switchyard_crds::BalancerPolicy;
use switchyard_dataplane::pace;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::source::relevant::{CompileInput, triggers_compile};
use crate::world::{Object, ObjectKey, World};

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
    /// The TCP services ConfigMap (`--tcp-services-configmap`), watched
    /// alone by name.
    pub tcp_services: Option<Store<ConfigMap>>,
    /// The Secrets whose data the cache keeps (see [`ReferencedSecrets`]).
    referenced: ReferencedSecrets,
    /// Notified when the BalancerPolicy list answers 404 (CRD not installed):
    /// the first sync does not wait for a kind that may never exist.
    policies_failed: Arc<Notify>,
}

/// How long the first sync waits for the TCP services ConfigMap.
const TCP_SERVICES_SYNC: Duration = Duration::from_secs(10);

/// A watch event was received at this instant (for propagation latency).
pub type Changed = Instant;

impl Stores {
    /// Starts one reflector per kind on `tasks`. `namespace` limits the
    /// namespaced kinds (IngressClass is cluster-scoped).
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        default_certificate: Option<ObjectKey>,
        tcp_services: Option<&ObjectKey>,
        tasks: &mut JoinSet<()>,
    ) -> (Self, mpsc::UnboundedReceiver<Changed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let policies_failed = Arc::new(Notify::new());
        let referenced = ReferencedSecrets::new(client.clone(), default_certificate);
        let keep = referenced.clone();
        let stores = Self {
            ingresses: reflect(tasks, scoped(client, namespace), watcher::Config::default(), &tx, None),
            ingress_classes: reflect(tasks, Api::all(client.clone()), watcher::Config::default(), &tx, None),
            services: reflect(tasks, scoped(client, namespace), watcher::Config::default(), &tx, None),
            endpoint_slices: reflect(tasks, scoped(client, namespace), watcher::Config::default(), &tx, None),
            secrets: reflect_with(
                tasks,
                scoped(client, namespace),
                watcher::Config::default().fields(TLS_SECRET_SELECTOR),
                &tx,
                None,
                move |secret: &mut Secret| keep.observe(secret),
            ),
            policies: reflect(
                tasks,
                scoped(client, namespace),
                watcher::Config::default(),
                &tx,
                Some(policies_failed.clone()),
            ),
            tcp_services: tcp_services.map(|key| {
                let api = Api::namespaced(client.clone(), &key.namespace);
                let by_name = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
                reflect(tasks, api, by_name, &tx, None)
            }),
            policies_failed,
            referenced,
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
            async {
                // An optional feature must not keep everything else from
                // serving (e.g. RBAC does not grant the ConfigMap).
                if let Some(store) = &self.tcp_services
                    && tokio::time::timeout(TCP_SERVICES_SYNC, store.wait_until_ready()).await.is_err()
                {
                    tracing::warn!(timeout = ?TCP_SERVICES_SYNC,
                        "the TCP services ConfigMap is not readable yet; serving without TCP services until it is");
                }
            },
        );
        tokio::select! {
            _ = self.policies.wait_until_ready() => {}
            () = self.policies_failed.notified() => {
                tracing::warn!("BalancerPolicy watch failing (CRD not installed?); serving without policies until it appears");
            }
        }
    }

    /// The world as the stores hold it now (sharing the cached objects),
    /// with the data of every Secret an Ingress references (fetched once
    /// when the cache stripped it).
    pub async fn world(&self) -> World {
        let ingresses = self.ingresses.state();
        let cached = self.secrets.state();
        let secrets = self.referenced.resolve(&ingresses, &cached).await;
        let mut world = World::default();
        // The Ingresses the Secrets were resolved for, not a newer list.
        let objects = ingresses
            .into_iter()
            .map(Object::Ingress)
            .chain(self.ingress_classes.state().into_iter().map(Object::IngressClass))
            .chain(self.services.state().into_iter().map(Object::Service))
            .chain(self.endpoint_slices.state().into_iter().map(Object::EndpointSlice))
            .chain(secrets.into_iter().map(|o| Object::Secret(Arc::new(o))))
            .chain(self.policies.state().into_iter().map(Object::BalancerPolicy))
            .chain(self.tcp_services.iter().flat_map(|s| s.state()).map(Object::ConfigMap));
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

/// Starts a reflector for `api` and returns its store. Every event that
/// can change what compile produces (see [`triggers_compile`]) sends a
/// change notification; watch errors are logged (and retried with backoff).
fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changes: &mpsc::UnboundedSender<Changed>,
    on_error: Option<Arc<Notify>>,
) -> Store<K>
where
    K: CompileInput + Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    reflect_with(tasks, api, config, changes, on_error, |_: &mut K| {})
}

/// [`reflect`], with `modify` applied to each object before it is cached.
fn reflect_with<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changes: &mpsc::UnboundedSender<Changed>,
    on_error: Option<Arc<Notify>>,
    modify: impl Fn(&mut K) + Send + Sync + 'static,
) -> Store<K>
where
    K: CompileInput + Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    let store = reader.clone();
    let changes = changes.clone();
    let stream = watcher(api, config).backoff(WatchBackoff::default()).modify(move |o: &mut K| {
        // managedFields are large and never read: do not cache them.
        o.managed_fields_mut().clear();
        modify(o);
    });
    tasks.spawn(async move {
        let kind = K::kind(&K::DynamicType::default()).to_string();
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        // When the current relist began: what it brings was received from
        // then on, though compile sees it only once it completes.
        let mut relisting_since = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if failing {
                        tracing::info!(%kind, "watch recovered");
                        failing = false;
                    }
                    let received = Instant::now();
                    // Judged before the store takes the event, while it
                    // still holds the previous version of the object.
                    let relevant = triggers_compile(&store, &event);
                    // What `WatchStreamExt::reflect` does (the store is not
                    // shared, so there is nothing to dispatch).
                    writer.apply_watcher_event(&event);
                    let at = match event {
                        watcher::Event::Init => {
                            relisting_since = Some(received);
                            received
                        }
                        watcher::Event::InitDone => relisting_since.take().unwrap_or(received),
                        _ => received,
                    };
                    if relevant {
                        pace::behind();
                        let _ = changes.send(at);
                    }
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

/// Coalesces change notifications into compiles: at most one compile
/// starts per `window` after the previous one ended.
///
/// * Leading edge: the first change after a quiet spell (no compile ended
///   within `window`) is compiled at once, with whatever else is queued.
/// * Trailing edge: changes that arrive during a compile, or within
///   `window` after it, wait until `window` after that compile ended and are
///   then compiled together.
///
/// Under sustained events compiles are therefore at least `window` apart
/// (end to start), as with a plain debounce, while a lone change does not
/// wait.
#[derive(Debug)]
pub struct Debounce {
    window: Duration,
    /// No compile starts before this instant.
    quiet_until: Option<tokio::time::Instant>,
}

impl Debounce {
    pub fn new(window: Duration) -> Self {
        Self { window, quiet_until: None }
    }

    /// Records that a compile just ended.
    pub fn compiled(&mut self) {
        self.quiet_until = Some(tokio::time::Instant::now() + self.window);
    }

    /// Waits for the changes of the next compile; returns the earliest
    /// instant one of them was received (or `None` when every sender is
    /// gone).
    pub async fn next_burst(&mut self, rx: &mut mpsc::UnboundedReceiver<Changed>) -> Option<Changed> {
        let mut earliest = rx.recv().await?;
        if let Some(until) = self.quiet_until {
            tokio::time::sleep_until(until).await;
        }
        // Everything received from here on goes into the next compile; a
        // change that arrives after the drain marks it behind again.
        pace::caught_up();
        let mut count = 1;
        while let Ok(t) = rx.try_recv() {
            earliest = earliest.min(t);
            count += 1;
        }
        // A bulk burst is applied paced.
        if count >= pace::BULK {
            pace::behind();
        }
        Some(earliest)
    }
}

/// Which TLS Secrets' data the process holds: those the Ingresses in the
/// cache name in `spec.tls` (any class), and `--default-ssl-certificate`.
///
/// The Secret watch is field-selected to `type=kubernetes.io/tls`, and the
/// reflector cache keeps no Secret data at all (metadata only: enough to
/// know a Secret exists and its resourceVersion). The data of referenced
/// Secrets is kept here, taken from each watch event as it passes; a
/// Secret that becomes referenced is read once with a GET. On every
/// recompile, entries no longer referenced (or deleted) are dropped, so
/// the process holds key material only for Secrets in use.
#[derive(Clone)]
struct ReferencedSecrets {
    client: Client,
    default_certificate: Option<ObjectKey>,
    keys: Arc<std::sync::RwLock<HashSet<ObjectKey>>>,
    /// The full objects of referenced Secrets.
    data: Arc<std::sync::Mutex<HashMap<ObjectKey, Secret>>>,
}

impl ReferencedSecrets {
    fn new(client: Client, default_certificate: Option<ObjectKey>) -> Self {
        Self { client, default_certificate, keys: Arc::default(), data: Arc::default() }
    }

    /// Runs on each watched Secret before it is cached: keeps a copy of a
    /// referenced one, then strips the data from what the cache stores.
    fn observe(&self, secret: &mut Secret) {
        let key = ObjectKey::of(&secret.metadata);
        if self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&key) {
            self.lock().insert(key, secret.clone());
        }
        strip_data(secret);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Secret>> {
        self.data.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Secrets for compile: the cached ones, with the data of each
    /// referenced one. Forgets the data of Secrets no longer referenced.
    async fn resolve(&self, ingresses: &[Arc<Ingress>], cached: &[Arc<Secret>]) -> Vec<Secret> {
        let keys = referenced_keys(self.default_certificate.as_ref(), ingresses);
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys.clone();
        let present: HashSet<ObjectKey> = cached.iter().map(|s| ObjectKey::of(&s.metadata)).collect();
        let missing: Vec<ObjectKey> = {
            let mut data = self.lock();
            data.retain(|key, _| keys.contains(key) && present.contains(key));
            keys.iter().filter(|k| present.contains(*k) && !data.contains_key(*k)).cloned().collect()
        };
        for key in missing {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
            match api.get_opt(&key.name).await {
                // A watch event that arrived meanwhile is newer: keep it.
                Ok(Some(full)) => _ = self.lock().entry(key).or_insert(full),
                Ok(None) => {}
                Err(err) => tracing::warn!(secret = %key, error = %err, "cannot read a referenced TLS Secret"),
            }
        }
        let data = self.lock();
        cached.iter().map(|s| data.get(&ObjectKey::of(&s.metadata)).cloned().unwrap_or_else(|| (**s).clone())).collect()
    }

    /// How many Secrets' data is held (for tests and debugging).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().len()
    }
}

/// The Secrets named by `spec.tls` of `ingresses` (in each Ingress's
/// namespace), and the default certificate.
fn referenced_keys(default: Option<&ObjectKey>, ingresses: &[Arc<Ingress>]) -> HashSet<ObjectKey> {
    let mut keys: HashSet<ObjectKey> = default.into_iter().cloned().collect();
    for ing in ingresses {
        let namespace = ing.metadata.namespace.as_deref().unwrap_or_default();
        let names = ing.spec.iter().flat_map(|s| s.tls.iter().flatten()).filter_map(|t| t.secret_name.as_deref());
        keys.extend(names.map(|name| ObjectKey::new(namespace, name)));
    }
    keys
}

/// Drops the data of `secret` (the cache keeps metadata only).
fn strip_data(secret: &mut Secret) {
    secret.data = None;
    secret.string_data = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_secret(ns: &str, name: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "7"}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}, "stringData": {"x": "y"}
        }))
        .unwrap()
    }

    fn ingress_naming(secret: &str) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"tls": [{"hosts": ["a.test"], "secretName": secret}, {"hosts": ["b.test"]}]}
            }))
            .unwrap(),
        )
    }

    /// A [`Debounce`] whose last compile ended long ago.
    fn idle(window: Duration) -> Debounce {
        let mut debounce = Debounce::new(window);
        debounce.quiet_until = tokio::time::Instant::now().checked_sub(Duration::from_secs(1));
        debounce
    }

    // These run on real time (tokio's paused clock needs its `test-util`
    // feature, which would rebuild every tokio dependent): the windows are
    // chosen so that only lower bounds, or bounds far from the window, are
    // asserted.

    /// A lone change, with no compile in the last window, compiles at once
    /// (the window is a minute: waiting for it would fail the test).
    #[tokio::test]
    async fn a_lone_change_compiles_without_waiting_for_the_window() {
        let _flag = crate::source::PACE_FLAG.lock().await;
        for mut debounce in [Debounce::new(Duration::from_secs(60)), idle(Duration::from_secs(60))] {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let at = Instant::now();
            tx.send(at).unwrap();
            let burst = tokio::time::timeout(Duration::from_secs(10), debounce.next_burst(&mut rx)).await;
            assert_eq!(burst.expect("compiled at once"), Some(at));
        }
    }

    /// Changes that arrive right after a compile wait until one window after
    /// it, and are compiled together, with the earliest receipt time.
    #[tokio::test]
    async fn changes_after_a_compile_wait_out_the_window_and_coalesce() {
        let _flag = crate::source::PACE_FLAG.lock().await;
        let window = Duration::from_millis(300);
        let mut debounce = idle(window);
        let (tx, mut rx) = mpsc::unbounded_channel();
        debounce.compiled();
        let compiled = tokio::time::Instant::now();
        let earliest = Instant::now();
        tx.send(earliest + Duration::from_millis(2)).unwrap();
        tx.send(earliest).unwrap();
        let late = tx.clone();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            late.send(Instant::now()).unwrap();
        });
        assert_eq!(debounce.next_burst(&mut rx).await, Some(earliest));
        assert!(compiled.elapsed() >= window, "waited only {:?}", compiled.elapsed());
        sender.await.unwrap();
        assert!(rx.try_recv().is_err(), "the change sent during the wait is part of the burst");
    }

    /// Under a steady stream of changes, compiles are at least one window
    /// apart (end to start): never more than one per window.
    #[tokio::test]
    async fn sustained_changes_compile_at_most_once_per_window() {
        let _flag = crate::source::PACE_FLAG.lock().await;
        let window = Duration::from_millis(50);
        let compile = Duration::from_millis(5);
        let mut debounce = Debounce::new(window);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let producer = tokio::spawn(async move {
            for _ in 0..300 {
                if tx.send(Instant::now()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let mut ends: Vec<tokio::time::Instant> = Vec::new();
        let mut compiles = 0;
        while let Some(_at) = debounce.next_burst(&mut rx).await {
            let start = tokio::time::Instant::now();
            if let Some(end) = ends.last() {
                assert!(start - *end >= window, "compile {compiles} started {:?} after the last", start - *end);
            }
            compiles += 1;
            tokio::time::sleep(compile).await;
            debounce.compiled();
            ends.push(tokio::time::Instant::now());
        }
        producer.await.unwrap();
        assert!(compiles >= 2, "the stream was compiled in several bursts ({compiles})");
    }

    /// A burst of at least `pace::BULK` changes is compiled paced; a
    /// smaller one clears what an earlier burst set.
    #[tokio::test]
    async fn a_bulk_burst_is_paced_and_a_small_one_is_not() {
        let _flag = crate::source::PACE_FLAG.lock().await;
        let mut debounce = Debounce::new(Duration::from_millis(1));
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..pace::BULK {
            tx.send(Instant::now()).unwrap();
        }
        debounce.next_burst(&mut rx).await.unwrap();
        assert!(pace::is_behind(), "a bulk burst is paced");
        tx.send(Instant::now()).unwrap();
        debounce.next_burst(&mut rx).await.unwrap();
        assert!(!pace::is_behind(), "a lone change is not");
    }

    #[tokio::test]
    async fn no_burst_once_every_sender_is_gone() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Changed>();
        drop(tx);
        assert_eq!(Debounce::new(Duration::from_millis(1)).next_burst(&mut rx).await, None);
    }

    #[test]
    fn referenced_keys_are_the_ingresses_secrets_and_the_default() {
        let default = ObjectKey::new("infra", "wildcard");
        let keys = referenced_keys(Some(&default), &[ingress_naming("a-tls")]);
        assert_eq!(keys, [ObjectKey::new("shop", "a-tls"), default].into_iter().collect());
    }

    /// The cache keeps no data; the data of referenced Secrets is held
    /// while they are referenced and dropped as soon as they are not.
    #[tokio::test]
    async fn only_referenced_tls_secrets_keep_their_data() {
        // Never contacted: every Secret here arrives through `observe`.
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let secrets = ReferencedSecrets::new(client, None);
        let ingresses = [ingress_naming("a-tls")];
        assert!(secrets.resolve(&ingresses, &[]).await.is_empty(), "nothing cached yet");

        let mut cached = Vec::new();
        for (ns, name) in [("shop", "a-tls"), ("shop", "other-tls"), ("elsewhere", "a-tls")] {
            let mut secret = tls_secret(ns, name);
            secrets.observe(&mut secret);
            assert!(secret.data.is_none() && secret.string_data.is_none(), "the cache keeps no data of {ns}/{name}");
            cached.push(Arc::new(secret));
        }
        assert_eq!(secrets.held(), 1, "only shop/a-tls is held");
        let resolved = secrets.resolve(&ingresses, &cached).await;
        let with_data: Vec<String> =
            resolved.iter().filter(|s| s.data.is_some()).map(|s| ObjectKey::of(&s.metadata).to_string()).collect();
        assert_eq!(with_data, ["shop/a-tls"]);

        // The Ingress stops naming it: its data is forgotten at once.
        let resolved = secrets.resolve(&[ingress_naming("b-tls")], &cached).await;
        assert_eq!(secrets.held(), 0);
        assert!(resolved.iter().all(|s| s.data.is_none()));
        // Deleted while referenced (gone from the cache): forgotten too.
        let mut secret = tls_secret("shop", "a-tls");
        secrets.resolve(&ingresses, &[]).await;
        secrets.observe(&mut secret);
        assert_eq!(secrets.held(), 1);
        secrets.resolve(&ingresses, &[]).await;
        assert_eq!(secrets.held(), 0);
    }
}
