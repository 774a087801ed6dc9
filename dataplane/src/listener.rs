//! Accept loops: one per listening socket, each connection served by
//! hyper's auto (HTTP/1.1 + h2c) builder with upgrades, and drained
//! gracefully on shutdown (see [`Drain`] for the steps).
//!
//! Every HTTP/1 connection is read through an [`audit`] of its raw bytes
//! (framing hyper repairs silently, exact head sizes) and two timers (slow
//! head, idle keep-alive); at most `max_connections` are served at once.
//! HTTP/1 connections, cleartext or TLS, release hyper's buffers while
//! idle, and their plain requests may take the proxy's fast path (see
//! [`h1`]).
//! With `proxy_protocol`, each connection first gives its client's address
//! in a PROXY header (see [`proxy_protocol`]).
//!
//! On the HTTPS listener, while some host is passed through (see
//! [`crate::passthrough`]), each ClientHello is first [`peek`]ed: a
//! passthrough SNI sends the connection, unread, to its backend
//! ([`crate::tcp`]); any other is terminated.

pub mod audit;
pub(crate) mod conn_io;
mod h1;
mod peek;
pub mod proxy_protocol;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus::IntCounter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::proxy::{ConnInfo, ConnState, GOING_AWAY_GRACE, Proxy, ProxyBody, RequestGuard};
use crate::snapshot::Snapshot;
use crate::tcp;
use crate::tls::Selected;
use audit::{Audit, HeadLimits};
use conn_io::{AuditedIo, ConnTimeouts};

/// Listener tunables.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Time allowed for a client to send a request head, from its first
    /// byte (slowloris guard; the connection is closed).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// An HTTP/1 connection idle this long between requests frees its HTTP
    /// buffers and state until its next request (see [`h1`]).
    pub release_idle_after: Duration,
    /// How long in-flight requests may run after shutdown starts.
    pub drain_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's
    /// accept queue until one closes. `None`: no limit.
    pub max_connections: Option<usize>,
    /// Request line (414) and header section (431) sizes.
    pub head_limits: HeadLimits,
    /// Header fields per request (431, answered by hyper).
    pub max_headers: usize,
    /// Every connection starts with a PROXY protocol header (v1 or v2),
    /// whose source address replaces the socket's peer; a connection
    /// without a valid one, or slower than `header_read_timeout` to send
    /// it, is closed unanswered.
    pub proxy_protocol: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            release_idle_after: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(20),
            max_connections: None,
            head_limits: HeadLimits::default(),
            max_headers: 100,
            proxy_protocol: false,
        }
    }
}

// === impl Drain ===

/// The runtime's hold on its listeners' shutdown, in two steps:
///
/// 1. [`close_keep_alive`](Self::close_keep_alive) (readiness just turned
///    503): connections are still accepted, but every HTTP/1 response says
///    `Connection: close`, so clients move to new connections, which the
///    load balancer sends elsewhere once it has noticed;
/// 2. [`stop_accepting`](Self::stop_accepting): the listener closes
///    (connections the kernel already completed are still served), idle
///    keep-alive connections close, HTTP/2 connections get GOAWAY, and
///    in-flight requests, WebSockets and TLS passthrough connections get
///    `drain_timeout` to finish; WebSockets still open then get a Close
///    frame (1001), passthrough connections are closed.
#[derive(Clone, Debug)]
pub struct Drain {
    shared: Arc<DrainShared>,
}

#[derive(Debug)]
struct DrainShared {
    closing_keep_alive: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        let shared = DrainShared { closing_keep_alive: AtomicBool::new(false), stop: watch::Sender::new(false) };
        Self { shared: Arc::new(shared) }
    }
}

impl Drain {
    /// Step 1: keep accepting, end keep-alive.
    pub fn close_keep_alive(&self) {
        self.shared.closing_keep_alive.store(true, Ordering::Release);
    }

    /// Step 2 (implies step 1): stop accepting and drain.
    pub fn stop_accepting(&self) {
        self.close_keep_alive();
        self.shared.stop.send_replace(true);
    }

    fn is_closing_keep_alive(&self) -> bool {
        self.shared.closing_keep_alive.load(Ordering::Acquire)
    }

    async fn stopped(&self) {
        let mut stop = self.shared.stop.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }
}

// === serve_http ===

/// A listening socket for [`serve_http`] and [`serve_https`], with
/// TCP_NODELAY set before it listens, so that every connection it accepts
/// has it (Linux copies it into accepted sockets; the listener does not set
/// it per connection there).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted process rebinds at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves plain-HTTP proxy traffic on `listener` (from [`listen`]) until
/// `drain` says stop, then drains open connections and tunnels for at most
/// `drain_timeout`.
pub async fn serve_http(listener: TcpListener, proxy: Arc<Proxy>, config: ListenerConfig, drain: Drain) {
    serve(listener, proxy, config, drain, None).await;
}

/// Like [`serve_http`], terminating TLS first (see [`TlsTermination`]).
pub async fn serve_https(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: ListenerConfig,
    drain: Drain,
    tls: TlsTermination,
) {
    serve(listener, proxy, config, drain, Some(tls)).await;
}

/// TLS on a listener: the rustls configuration (its resolver picks each
/// handshake's certificate from the snapshot in force), the bound on a
/// handshake's duration (the ClientHello peek included), and the connect
/// timeout toward passthrough backends (unless their policy sets one).
#[derive(Clone)]
pub struct TlsTermination {
    pub config: Arc<rustls::ServerConfig>,
    pub snapshots: Arc<crate::SnapshotHandle>,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
}

async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: ListenerConfig,
    drain: Drain,
    tls: Option<TlsTermination>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The head timeout is the audited socket's (hyper's would also run
    // while a keep-alive connection is idle); hyper's buffer limit is a
    // backstop past the audit's exact head limits.
    let max_buf_size = config.head_limits.max_head().max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(config.max_headers)
        .max_buf_size(max_buf_size);
    // The same, for HTTP/1 served without the auto builder.
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new()).header_read_timeout(None).max_headers(config.max_headers).max_buf_size(max_buf_size);
    // Idle HTTP/2 connections are pinged, and closed when the peer is gone.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    let slots = Arc::new(Semaphore::new(config.max_connections.unwrap_or(Semaphore::MAX_PERMITS)));
    let relays = Arc::new(Relays::default());
    // Turns true once the listener has closed (the drain's second step):
    // idle connections then close, as hyper-util's graceful shutdown
    // closes those it watches.
    let (closed_tx, closed) = watch::channel(false);
    let conns = Arc::new(Connections {
        builder,
        h1,
        closed,
        proxy: proxy.clone(),
        config: config.clone(),
        drain: drain.clone(),
        truncated: proxy.metrics().upstream_errors.with_label_values(&["truncated"]),
        local_port: local.map_or(0, |a| a.port()),
        fast_h1: proxy.fast_h1_enabled(),
        tls,
        relays: relays.clone(),
    });
    let stopped = drain.stopped();
    tokio::pin!(stopped);
    loop {
        // Beyond the limit, connections wait in the accept queue.
        let slot = tokio::select! {
            biased;
            () = &mut stopped => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        conns.serve(&graceful, stream, peer, Some(slot));
    }
    // Closing the socket resets connections still in its accept queue:
    // take those first (they complete a handshake the client saw succeed).
    let mut late = 0;
    while let Some((stream, peer)) = accept_now(&listener) {
        conns.serve(&graceful, stream, peer, slots.clone().try_acquire_owned().ok());
        late += 1;
    }
    drop(listener);
    closed_tx.send_replace(true);
    drop(conns);
    let tunnels = proxy.tunnels().clone();
    tracing::info!(
        ?local,
        late,
        tunnels = tunnels.open(),
        passthrough = relays.open(),
        "listener closed; draining connections"
    );
    let drained = async {
        // Connections still peeking register their relay before they stop
        // being watched: once these are done, every relay is known.
        graceful.shutdown().await;
        tunnels.all_closed().await;
        relays.all_closed().await;
    };
    if tokio::time::timeout(config.drain_timeout, drained).await.is_err() {
        tracing::warn!(?local, timeout = ?config.drain_timeout, tunnels = tunnels.open(),
            passthrough = relays.open(),
            "drain deadline reached; closing WebSockets (1001), passthrough and remaining connections");
        relays.close();
        tunnels.go_away();
        let _ = tokio::time::timeout(GOING_AWAY_GRACE, tunnels.all_closed()).await;
    }
}

// === impl Relays ===

/// The TLS passthrough connections of one listener, for the drain: it
/// waits for them as for WebSockets, and closes those still open at its
/// deadline.
#[derive(Debug)]
struct Relays {
    /// `None` once closed by the drain: later relays are refused.
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Default for Relays {
    fn default() -> Self {
        Self { tasks: Mutex::new(Some(JoinSet::new())) }
    }
}

impl Relays {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<JoinSet<()>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `relay` as a task of the set; false (and not run) once closed.
    fn spawn(&self, relay: impl Future<Output = ()> + Send + 'static) -> bool {
        let mut tasks = self.lock();
        let Some(tasks) = tasks.as_mut() else { return false };
        while tasks.try_join_next().is_some() {}
        tasks.spawn(relay);
        true
    }

    /// Relays open now.
    fn open(&self) -> usize {
        let mut tasks = self.lock();
        let Some(tasks) = tasks.as_mut() else { return 0 };
        while tasks.try_join_next().is_some() {}
        tasks.len()
    }

    /// Resolves when every relay registered so far has ended.
    async fn all_closed(&self) {
        std::future::poll_fn(|cx| {
            let mut tasks = self.lock();
            let Some(tasks) = tasks.as_mut() else { return Poll::Ready(()) };
            loop {
                match tasks.poll_join_next(cx) {
                    Poll::Ready(Some(_)) => continue,
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
    }

    /// Closes every relay (their tasks are aborted) and refuses new ones.
    fn close(&self) {
        let tasks = self.lock().take();
        drop(tasks);
    }
}

/// A connection already in the accept queue, without waiting.
fn accept_now(listener: &TcpListener) -> Option<(TcpStream, std::net::SocketAddr)> {
    let waker = std::task::Waker::noop();
    match listener.poll_accept(&mut Context::from_waker(waker)) {
        Poll::Ready(Ok(pair)) => Some(pair),
        Poll::Ready(Err(_)) | Poll::Pending => None,
    }
}

/// What serving one accepted connection needs. Shared by the accept loop
/// and connections still reading a PROXY header or a TLS handshake;
/// dropped before the drain waits for the connections it watches.
struct Connections {
    builder: auto::Builder<TokioExecutor>,
    h1: http1::Builder,
    closed: watch::Receiver<bool>,
    proxy: Arc<Proxy>,
    config: ListenerConfig,
    drain: Drain,
    truncated: IntCounter,
    /// The listener's port: every connection's local port (no
    /// `getsockname` per connection).
    local_port: u16,
    tls: Option<TlsTermination>,
    relays: Arc<Relays>,
    /// Cleartext HTTP/1 requests may take the proxy's fast path.
    fast_h1: bool,
}

impl Connections {
    fn serve(
        self: &Arc<Self>,
        graceful: &GracefulShutdown,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        // Linux gives accepted sockets the listener's TCP_NODELAY (set by
        // [`listen`]): one system call less per connection.
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        // Taken now: the drain waits for a header or handshake in flight too.
        let watcher = graceful.watcher();
        let conn_info = ConnInfo { peer, local_port: self.local_port, tls: self.tls.is_some() };
        if self.tls.is_none() && !self.config.proxy_protocol {
            return self.serve_h1(watcher, stream, conn_info, slot);
        }
        // The PROXY header and the TLS handshake are read in the
        // connection's own task, each bounded in time.
        let this = self.clone();
        tokio::spawn(async move { this.prepare(watcher, stream, conn_info, slot).await });
    }

    /// Reads the PROXY header (if required) and completes the TLS
    /// handshake (if any), then serves the connection; or, for a
    /// passthrough SNI, hands it to a relay.
    async fn prepare(
        self: Arc<Self>,
        watcher: Watcher,
        mut stream: TcpStream,
        mut conn_info: ConnInfo,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        if self.config.proxy_protocol {
            match proxy_protocol::read_header(&mut stream, self.config.header_read_timeout).await {
                Ok(Some(source)) => conn_info.peer = source,
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!(peer = %conn_info.peer, error = %err, "PROXY header refused; connection closed");
                    return;
                }
            }
        }
        let Some(tls) = &self.tls else {
            return self.serve_h1(watcher, stream, conn_info, slot);
        };
        let metrics = self.proxy.metrics().clone();
        // One bound for the ClientHello peek and the handshake.
        let deadline = Instant::now() + tls.handshake_timeout;
        if !tls.snapshots.load().passthrough.is_empty() {
            match tokio::time::timeout_at(deadline, peek::server_name(&stream)).await {
                Ok(Some(sni)) => {
                    let snapshot = tls.snapshots.load();
                    if let Some(backend) = passthrough_backend(&snapshot, &sni) {
                        let relay = Relay { snapshot, backend, sni, connect_timeout: tls.connect_timeout };
                        return self.pass_through(watcher, stream, conn_info, slot, relay);
                    }
                }
                // No SNI, or not a ClientHello: the handshake reports it.
                Ok(None) => {}
                Err(_) => {
                    metrics.tls_handshakes.with_label_values(&["", "timeout"]).inc();
                    tracing::debug!(peer = %conn_info.peer, "TLS ClientHello timed out");
                    return;
                }
            }
        }
        let handshake = tokio::time::timeout_at(deadline, handshake(stream, tls, &metrics));
        match handshake.await {
            // Served as cleartext connections are: HTTP/1 releasing its
            // buffers while idle, HTTP/2 (ALPN h2) by its preface.
            Ok(Some(stream)) => self.serve_h1(watcher, stream, conn_info, slot),
            Ok(None) => {}
            Err(_) => {
                metrics.tls_handshakes.with_label_values(&["", "timeout"]).inc();
                tracing::debug!(peer = %conn_info.peer, "TLS handshake timed out");
            }
        }
    }

    /// Relays a TLS passthrough connection (its ClientHello still unread)
    /// to an endpoint of its backend, in a task the drain knows of. The
    /// connection keeps its slot while it lasts.
    fn pass_through(
        &self,
        watcher: Watcher,
        stream: TcpStream,
        conn_info: ConnInfo,
        slot: Option<OwnedSemaphorePermit>,
        relay: Relay,
    ) {
        let metrics = self.proxy.metrics().clone();
        let peer = conn_info.peer;
        tcp::keepalive(&stream);
        let task = async move {
            let _slot = slot;
            let Relay { snapshot, backend, sni, connect_timeout } = relay;
            let service = snapshot.backends[backend].service.clone();
            metrics.tcp_connections.with_label_values(&[&*service]).inc();
            let connected = tcp::connect(&snapshot, backend, peer.ip(), connect_timeout, &metrics).await;
            // The connection outlives configuration changes: hold no snapshot.
            drop(snapshot);
            match connected {
                Ok(upstream) => {
                    let endpoint = upstream.endpoint;
                    tracing::debug!(%peer, %sni, %service, %endpoint, "TLS passthrough");
                    if let Err(err) = tcp::relay(stream, upstream, &metrics).await {
                        tracing::debug!(%peer, %sni, %endpoint, error = %err, "TLS passthrough ended with an error");
                    }
                }
                Err(err) => {
                    tracing::warn!(%peer, %sni, error = %err, "TLS passthrough connection refused: no endpoint");
                }
            }
        };
        if !self.relays.spawn(task) {
            tracing::debug!(%peer, "TLS passthrough refused: the listener is closing");
        }
        // Only now: the drain, once no connection is watched, knows every relay.
        drop(watcher);
    }

    /// The audited socket and the service for one connection.
    fn connection<S>(
        &self,
        stream: S,
        conn_info: ConnInfo,
        release_after: Option<Duration>,
    ) -> (AuditedIo<S>, ConnService, Arc<ConnState>) {
        let state = Arc::new(ConnState::default());
        let timeouts = ConnTimeouts {
            header_read: self.config.header_read_timeout,
            idle: self.config.idle_timeout,
            release_after,
        };
        let io = AuditedIo::new(stream, Audit::new(self.config.head_limits), state.clone(), timeouts);
        let service = ConnService {
            proxy: self.proxy.clone(),
            state: state.clone(),
            drain: self.drain.clone(),
            truncated: self.truncated.clone(),
            conn_info,
        };
        (io, service, state)
    }

    /// Serves a connection as HTTP/1 releasing its buffers while idle
    /// (see [`h1`]), or, on cleartext, HTTP/2 with prior knowledge.
    fn serve_h1<S>(
        self: &Arc<Self>,
        watcher: Watcher,
        stream: S,
        conn_info: ConnInfo,
        slot: Option<OwnedSemaphorePermit>,
    ) where
        S: conn_io::Parkable + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (io, service, state) = self.connection(stream, conn_info, Some(self.config.release_idle_after));
        // Boxed before it is spawned: tokio moves a task's future several
        // times while spawning and running it (about 1,100 instructions of
        // copying per connection, callgrind); a box moves as a pointer.
        let task = Box::pin(h1::serve(self.clone(), watcher, slot, io, service, state));
        tokio::spawn(task);
    }

    fn auto_connection<S>(
        &self,
        watcher: Watcher,
        io: AuditedIo<S>,
        service: ConnService,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = service.conn_info.peer;
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let conn = watcher.watch(conn);
        async move {
            if let Err(err) = conn.await {
                tracing::debug!(%peer, error = %err, "connection ended with error");
            }
        }
    }
}

/// What hyper calls for each request of one connection.
#[derive(Clone)]
struct ConnService {
    proxy: Arc<Proxy>,
    state: Arc<ConnState>,
    drain: Drain,
    truncated: IntCounter,
    conn_info: ConnInfo,
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<http::Response<CountedBody<ProxyBody>>, Infallible>> + Send>>;

impl hyper::service::Service<http::Request<Incoming>> for ConnService {
    type Response = http::Response<CountedBody<ProxyBody>>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: http::Request<Incoming>) -> ServiceFuture {
        let this = self.clone();
        // Boxed: the request's future (several KiB) is allocated while the
        // request runs, instead of being moved into the connection's
        // in-flight slot, which every idle connection would hold.
        Box::pin(async move {
            let ConnService { proxy, state, drain, truncated, conn_info } = this;
            let guard = state.start_request();
            let http1 = req.version() <= http::Version::HTTP_11;
            let mut resp = proxy.serve(req, conn_info, &state).await?;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                state.mark_upgraded();
            } else if http1 && drain.is_closing_keep_alive() {
                // Shutting down: this connection's last response.
                resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok(resp.map(|body| CountedBody { body, _guard: guard, truncated }))
        })
    }
}

/// Where a passthrough connection goes: the backend of the snapshot it
/// was looked up in.
struct Relay {
    snapshot: Arc<Snapshot>,
    backend: usize,
    sni: String,
    connect_timeout: Duration,
}

/// The backend `sni` is passed through to, if any. Exact hosts win over
/// wildcards across both tables: a wildcard passthrough host yields to a
/// certificate bound to the exact host (that host is terminated).
fn passthrough_backend(snapshot: &Snapshot, sni: &str) -> Option<usize> {
    let matched = snapshot.passthrough.matched(sni)?;
    let exact_cert =
        matches!(snapshot.tls.lookup(Some(sni)), Some((_, Selected::Host(host))) if !host.starts_with("*."));
    (!matched.wildcard || !exact_cert).then_some(matched.backend)
}

/// A response body that keeps its request counted on the connection until
/// it is fully sent (the idle timer does not run meanwhile).
struct CountedBody<B> {
    body: B,
    _guard: RequestGuard,
    /// `switchyard_upstream_errors_total{kind="truncated"}`: a body that
    /// fails was cut short by the upstream (local bodies never fail).
    truncated: IntCounter,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        if matches!(frame, Some(Err(_))) {
            this.truncated.inc();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Reads the ClientHello, then completes the handshake with the
/// certificate the SNI selects. Counted in `switchyard_tls_handshakes_total`
/// by the served host the SNI matched (never the raw SNI).
async fn handshake(
    stream: TcpStream,
    tls: &TlsTermination,
    metrics: &crate::metrics::Metrics,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match acceptor.await {
        Ok(start) => start,
        Err(err) => {
            metrics.tls_handshakes.with_label_values(&["", "error"]).inc();
            tracing::debug!(?peer, error = %err, "TLS ClientHello unreadable");
            return None;
        }
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    let snapshot = tls.snapshots.load();
    let label =
        snapshot.tls.lookup(sni.as_deref()).map_or_else(|| "default".to_string(), |(_, s)| s.label().to_string());
    drop(snapshot);
    match start.into_stream(tls.config.clone()).await {
        Ok(stream) => {
            metrics.tls_handshakes.with_label_values(&[&label, "ok"]).inc();
            Some(stream)
        }
        Err(err) => {
            metrics.tls_handshakes.with_label_values(&[&label, "error"]).inc();
            tracing::debug!(?peer, ?sni, error = %err, "TLS handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every accepted connection has TCP_NODELAY, without a system call
    /// per connection on Linux: the listening socket carries it.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "accepted socket without TCP_NODELAY");
        drop(client);
        // The same address can be listened on again at once (SO_REUSEADDR).
        drop((listener, accepted));
        super::listen(addr).expect("rebinding the port just closed");
    }
}
