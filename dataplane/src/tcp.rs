//! L4: connections relayed as bytes to a backend's endpoints, for TCP
//! services (`--tcp-services-configmap`, one listener per entry) and TLS
//! passthrough (the HTTPS listener hands a connection over).
//!
//! The endpoint is picked by the backend's BalancerPolicy like a request's
//! (IPHash and ConsistentHash on the client's address; LeastConnections
//! counts open connections), skipping unhealthy endpoints (active checks,
//! `type: TCP` fits L4). A connection that cannot be opened is tried on
//! other endpoints, so a client only sees a failure when none answers;
//! each failure counts toward passive ejection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::balance::{Algorithm, InFlightGuard, hash_ip};
use crate::metrics::Metrics;
use crate::snapshot::{BalanceConfig, HashOn, Snapshot, SnapshotHandle};

/// Endpoints tried for one connection, at most.
const MAX_ATTEMPTS: usize = 3;

/// How often ports that could not be opened are tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// TCP keepalive on a relayed socket: a peer that vanished without a word
/// (NAT state gone, host down) is noticed after about two minutes instead
/// of holding the relay forever.
pub fn keepalive(stream: &TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    if let Err(err) = socket2::SockRef::from(stream).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %err, "cannot enable TCP keepalive");
    }
}

/// The hash key of an L4 connection: the client's address, for IPHash and
/// ConsistentHash on the source IP (the other hash sources are HTTP
/// attributes: those fall back to the selector's rotation).
pub fn connection_hash(balance: &BalanceConfig, client: IpAddr) -> Option<u64> {
    match (balance.algorithm, &balance.hash_on) {
        (Algorithm::IpHash, _) | (Algorithm::ConsistentHash, HashOn::SourceIp) => Some(hash_ip(client)),
        _ => None,
    }
}

/// An open connection to an endpoint, counted in flight while it lives.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    pub endpoint: SocketAddr,
    /// `namespace/name` of the Service (the metrics label).
    pub service: Arc<str>,
    _in_flight: Option<InFlightGuard>,
}

/// Why no endpoint could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("service {0} is unavailable: {1}")]
    Unavailable(Arc<str>, Arc<str>),
    #[error("no healthy endpoint for service {0}")]
    NoEndpoint(Arc<str>),
    #[error("no endpoint of service {service} accepted a connection ({attempts} tried): {last}")]
    Failed { service: Arc<str>, attempts: usize, last: io::Error },
}

/// Opens a connection to an endpoint of `snapshot.backends[backend]` for a
/// client at `client`, trying up to [`MAX_ATTEMPTS`] endpoints.
/// `connect_timeout` applies unless the backend's policy sets its own.
pub async fn connect(
    snapshot: &Snapshot,
    backend: usize,
    client: IpAddr,
    connect_timeout: Duration,
    metrics: &Metrics,
) -> Result<Upstream, ConnectError> {
    let backend = &snapshot.backends[backend];
    if let Some(reason) = &backend.unavailable {
        return Err(ConnectError::Unavailable(backend.service.clone(), reason.clone()));
    }
    let key = connection_hash(&backend.balance, client);
    let timeout = backend.balance.connect_timeout.unwrap_or(connect_timeout);
    let mut tried = Vec::new();
    let mut last = None;
    while tried.len() < MAX_ATTEMPTS {
        let Some(i) = backend.pick_endpoint_except(key, &tried) else { break };
        let endpoint = backend.endpoints[i].addr;
        let in_flight = backend.load(i).map(|l| l.start());
        let result = match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {timeout:?}"))),
        };
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                keepalive(&stream);
                backend.record_outcome(i, false);
                let service = backend.service.clone();
                return Ok(Upstream { stream, endpoint, service, _in_flight: in_flight });
            }
            Err(err) => {
                metrics.upstream_errors.with_label_values(&["connect"]).inc();
                if let Some(ejected) = backend.record_outcome(i, true) {
                    tracing::warn!(%endpoint, service = %backend.service, ejection = ?ejected,
                        reason = "passive: consecutive failures", "endpoint ejected");
                    metrics.health_transitions.with_label_values(&[&*backend.service, "ejected"]).inc();
                }
                tracing::debug!(%endpoint, service = %backend.service, error = %err, "L4 connect failed");
                tried.push(i);
                last = Some(err);
            }
        }
    }
    match last {
        Some(last) => Err(ConnectError::Failed { service: backend.service.clone(), attempts: tried.len(), last }),
        None => Err(ConnectError::NoEndpoint(backend.service.clone())),
    }
}

/// Copies bytes both ways between `client` and `upstream` until both
/// directions end (a half-close is passed on), counting them per service.
pub async fn relay<C>(client: C, upstream: Upstream, metrics: &Metrics) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let service = &*upstream.service;
    // Counted down on drop too: a relay aborted at the drain deadline.
    let active = ActiveGuard::new(metrics.tcp_active.with_label_values(&[service]));
    let mut client = Counted {
        inner: client,
        received: metrics.tcp_received_bytes.with_label_values(&[service]),
        sent: metrics.tcp_sent_bytes.with_label_values(&[service]),
    };
    let mut stream = upstream.stream;
    let result = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
    drop(active);
    result
}

/// One open L4 connection in `switchyard_tcp_active_connections`.
struct ActiveGuard(prometheus::IntGauge);

impl ActiveGuard {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A client stream that counts the bytes read from it and written to it.
struct Counted<S> {
    inner: S,
    received: IntCounter,
    sent: IntCounter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.received.inc_by(n as u64);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            self.sent.inc_by(*n as u64);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === TCP services ===

/// Tunables of the TCP service listeners.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// The address TCP service ports are opened on (the port is replaced).
    pub bind_ip: IpAddr,
    /// Connect timeout toward endpoints, unless a policy sets its own.
    pub connect_timeout: Duration,
    /// Connections relayed at once per port; more wait in the kernel's
    /// accept queue (`--max-connections`). `None`: no limit.
    pub max_connections: Option<usize>,
}

/// The TCP service listeners: one per port the snapshot in force lists,
/// opened and closed as snapshots change.
pub struct TcpServices {
    snapshots: Arc<SnapshotHandle>,
    metrics: Arc<Metrics>,
    config: TcpConfig,
    /// Open listeners by port, each stopped by its sender.
    listeners: Mutex<HashMap<u16, watch::Sender<bool>>>,
    /// Relayed connections (of every port), for the drain.
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl TcpServices {
    pub fn new(snapshots: Arc<SnapshotHandle>, metrics: Arc<Metrics>, config: TcpConfig) -> Arc<Self> {
        Arc::new(Self {
            snapshots,
            metrics,
            config,
            listeners: Mutex::default(),
            conns: Arc::new(Mutex::new(JoinSet::new())),
        })
    }

    /// Follows the published snapshots until `stop` says so: each change
    /// opens the ports newly listed and closes those no longer listed.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut published = self.snapshots.subscribe();
        let mut retry = tokio::time::interval(BIND_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let all_open = self.reconcile().await;
            tokio::select! {
                changed = published.changed() => if changed.is_err() { break },
                // Ports that could not be opened are tried again.
                _ = retry.tick(), if !all_open => {}
                _ = stop.changed() => break,
            }
        }
        self.close_all();
    }

    /// The ports open now.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.lock_listeners().keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, HashMap<u16, watch::Sender<bool>>> {
        self.listeners.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens and closes ports to match the snapshot; false when some port
    /// could not be opened.
    async fn reconcile(self: &Arc<Self>) -> bool {
        let snapshot = self.snapshots.load();
        let wanted: Vec<u16> = snapshot.tcp_services.iter().map(|s| s.port).collect();
        let gone: Vec<u16> = self.lock_listeners().keys().filter(|p| !wanted.contains(p)).copied().collect();
        for port in gone {
            if let Some(stop) = self.lock_listeners().remove(&port) {
                stop.send_replace(true);
                tracing::info!(port, "TCP service closed: no longer in the ConfigMap");
            }
        }
        let mut all_open = true;
        for service in &snapshot.tcp_services {
            if self.lock_listeners().contains_key(&service.port) {
                continue;
            }
            let addr = SocketAddr::new(self.config.bind_ip, service.port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let (stop, stopped) = watch::channel(false);
                    self.lock_listeners().insert(service.port, stop);
                    tracing::info!(%addr, target = %service.target, "TCP service listening");
                    tokio::spawn(self.clone().accept_loop(listener, service.port, stopped));
                }
                // Retried every BIND_RETRY, and at the next snapshot.
                Err(err) => {
                    all_open = false;
                    tracing::error!(%addr, target = %service.target, error = %err,
                        retry = ?BIND_RETRY, "cannot listen for a TCP service");
                }
            }
        }
        all_open
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, port: u16, mut stopped: watch::Receiver<bool>) {
        let limit = self.config.max_connections.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS);
        let slots = Arc::new(tokio::sync::Semaphore::new(limit));
        loop {
            // Beyond the limit, connections wait in the accept queue.
            let slot = tokio::select! {
                biased;
                _ = stopped.changed() => return,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let (client, peer) = tokio::select! {
                biased;
                // Sent `true`, or the sender dropped: stop either way.
                _ = stopped.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(port, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = client.set_nodelay(true);
            keepalive(&client);
            let this = self.clone();
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                let _slot = slot;
                this.serve(client, peer, port).await;
            });
        }
    }

    async fn serve(&self, client: TcpStream, peer: SocketAddr, port: u16) {
        let snapshot = self.snapshots.load();
        let Some(service) = snapshot.tcp_services.iter().find(|s| s.port == port) else { return };
        let label = snapshot.backends[service.backend].service.clone();
        self.metrics.tcp_connections.with_label_values(&[&*label]).inc();
        let connected =
            connect(&snapshot, service.backend, peer.ip(), self.config.connect_timeout, &self.metrics).await;
        // The connection outlives configuration changes: hold no snapshot.
        drop(snapshot);
        match connected {
            Ok(upstream) => {
                let endpoint = upstream.endpoint;
                if let Err(err) = relay(client, upstream, &self.metrics).await {
                    tracing::debug!(%peer, %endpoint, port, error = %err, "TCP relay ended with an error");
                }
            }
            Err(err) => tracing::warn!(%peer, port, error = %err, "TCP connection refused: no endpoint"),
        }
    }

    /// Stops every listener (connections already relayed continue).
    pub fn close_all(&self) {
        for (_, stop) in self.lock_listeners().drain() {
            stop.send_replace(true);
        }
    }

    /// After [`close_all`](Self::close_all): waits up to `timeout` for the
    /// relayed connections to end, then closes those still open.
    pub async fn drain(&self, timeout: Duration) {
        let mut conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(PoisonError::into_inner));
        let open = conns.len();
        if tokio::time::timeout(timeout, async { while conns.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(open = conns.len(), "drain deadline reached: closing TCP service connections");
            conns.abort_all();
        } else if open > 0 {
            tracing::info!("TCP service connections drained");
        }
    }
}

impl std::fmt::Debug for TcpServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpServices").field("config", &self.config).field("ports", &self.ports()).finish()
    }
}
