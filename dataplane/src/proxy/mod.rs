//! The HTTP reverse proxy: route, pick an endpoint, forward, stream back.
//!
//! Bodies are streamed both ways (never buffered), HTTP/1.1 `Upgrade`
//! (WebSocket) is tunnelled, and upstream connections are pooled and shared
//! by every worker thread.

mod affinity;
mod body;
mod client_ip;
mod hash_key;
mod headers;
mod local;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::InFlightGuard;
use crate::metrics::Metrics;
use crate::snapshot::{Backend, Endpoint, SnapshotHandle};

pub use body::GuardedBody;
pub use local::local_response;

/// Request body toward the upstream: the client's, or empty for a retry.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// Response body: the upstream's streamed body, or a short local answer.
pub type ProxyBody = Either<GuardedBody, Full<Bytes>>;

/// Tunables of the proxy, with the defaults a user would expect.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// TCP connect timeout toward an endpoint (502 when exceeded).
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response headers (504 when exceeded).
    pub upstream_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed (`--trusted-proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Facts about the downstream connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// Per-request facts derived from the connection and trusted headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientInfo {
    pub conn: ConnInfo,
    /// The client's address (see `client_ip`).
    pub ip: std::net::IpAddr,
    /// Whether the peer is a trusted proxy (its X-Forwarded-For is kept).
    pub via_trusted_proxy: bool,
}

/// Shared by every connection of every listener.
#[derive(Debug)]
pub struct Proxy {
    snapshots: Arc<SnapshotHandle>,
    metrics: Arc<Metrics>,
    client: UpstreamClient,
    /// Clients for backends whose policy sets its own connect timeout (the
    /// connector's timeout is per client), created on first use.
    clients_by_connect_timeout: std::sync::RwLock<std::collections::HashMap<Duration, UpstreamClient>>,
    config: ProxyConfig,
}

/// Why forwarding failed; mapped to a status by [`ForwardError::status`].
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("upstream connect error")]
    Connect,
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream error")]
    Upstream,
    #[error("upstream switched protocols without an upgrade being requested")]
    UnrequestedUpgrade,
}

impl ForwardError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect | Self::Upstream | Self::UnrequestedUpgrade => StatusCode::BAD_GATEWAY,
        }
    }
}

impl Proxy {
    pub fn new(snapshots: Arc<SnapshotHandle>, metrics: Arc<Metrics>, config: ProxyConfig) -> Self {
        let client = upstream_client(config.connect_timeout, config.pool_idle_timeout);
        Self { snapshots, metrics, client, clients_by_connect_timeout: Default::default(), config }
    }

    /// The pooled client for a connect timeout (the shared one by default).
    fn client_for(&self, connect_timeout: Option<Duration>) -> UpstreamClient {
        let Some(timeout) = connect_timeout.filter(|t| *t != self.config.connect_timeout) else {
            return self.client.clone();
        };
        let read = self.clients_by_connect_timeout.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = read.get(&timeout) {
            return client.clone();
        }
        drop(read);
        let mut write = self.clients_by_connect_timeout.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        write.entry(timeout).or_insert_with(|| upstream_client(timeout, self.config.pool_idle_timeout)).clone()
    }

    /// Answers one request. Never fails: every error becomes a response.
    pub async fn serve(&self, req: Request<Incoming>, conn: ConnInfo) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        if let Some(problem) = host_problem(&req) {
            self.metrics.requests.with_label_values(&["", "", StatusCode::BAD_REQUEST.as_str()]).inc();
            return Ok(local_response(StatusCode::BAD_REQUEST, problem));
        }
        let snapshot = self.snapshots.load();
        let route = snapshot.router.route(request_host(&req), req.uri().path());
        let Some(route) = route else {
            self.metrics.requests.with_label_values(&["", "", StatusCode::NOT_FOUND.as_str()]).inc();
            return Ok(local_response(StatusCode::NOT_FOUND, "no route for this host and path"));
        };
        let backend = &snapshot.backends[route.backend];
        let response = match &backend.unavailable {
            Some(reason) => local_response(StatusCode::SERVICE_UNAVAILABLE, reason),
            None => {
                let trusted = &self.config.trusted_proxies;
                let client = ClientInfo {
                    conn,
                    ip: client_ip::client_ip(req.headers(), conn.peer.ip(), trusted),
                    via_trusted_proxy: client_ip::is_trusted(conn.peer.ip(), trusted),
                };
                self.balance_and_forward(req, backend, client, start).await
            }
        };
        self.metrics.requests.with_label_values(&[&*route.host, &*backend.service, response.status().as_str()]).inc();
        self.metrics.request_duration.with_label_values(&[&*backend.service]).observe(start.elapsed().as_secs_f64());
        Ok(response)
    }

    /// Picks the endpoint (affinity cookie first, then the backend's
    /// algorithm), forwards, and retries on endpoints not tried yet as the
    /// backend's retry policy says: idempotent requests without a body only,
    /// and only before any response byte reached the client (by default,
    /// one retry when the connection is refused).
    async fn balance_and_forward(
        &self,
        req: Request<Incoming>,
        backend: &Backend,
        client: ClientInfo,
        start: Instant,
    ) -> Response<ProxyBody> {
        let key = hash_key::request_hash(&req, client.ip, &backend.balance);
        let affinity = backend.balance.affinity.as_ref();
        let presented = affinity.and_then(|a| affinity::presented(&req, a));
        let first = presented.and_then(|d| backend.pinned_endpoint(d)).or_else(|| backend.pick_endpoint(key));
        let Some(mut chosen) = first else {
            let why = if backend.endpoints.is_empty() { "no ready endpoints" } else { "no healthy endpoints" };
            return local_response(StatusCode::SERVICE_UNAVAILABLE, &format!("{why} for service {}", backend.service));
        };
        let retries = &backend.balance.retries;
        // The head is copied only when a retry is possible at all.
        let replay = (retries.attempts > 0).then(|| replayable_head(&req)).flatten();
        // Allocates only when a retry happens.
        let mut tried = Vec::new();
        let mut result = self.forward_to(req.map(Either::Left), backend, chosen, client).await;
        for _ in 0..retries.attempts {
            let retry = match &result {
                Err(ForwardError::Connect) => retries.on_connect_failure,
                Err(ForwardError::Upstream) => retries.on_reset,
                Ok(resp) => resp.status() == StatusCode::SERVICE_UNAVAILABLE && retries.on_unavailable,
                Err(_) => false,
            };
            let Some(head) = replay.as_ref().filter(|_| retry) else { break };
            tried.push(chosen);
            let Some(other) = backend.pick_endpoint_except(key, &tried) else { break };
            tracing::debug!(service = %backend.service, failed = %backend.endpoints[chosen].addr,
                retry = %backend.endpoints[other].addr, "retrying on another endpoint");
            self.record_outcome(backend, chosen, true);
            chosen = other;
            let req = Request::from_parts(
                copy_head(&head.method, &head.uri, head.version, &head.headers),
                Either::Right(Empty::new()),
            );
            result = self.forward_to(req, backend, chosen, client).await;
        }
        let endpoint = &backend.endpoints[chosen];
        let failed = match &result {
            Err(ForwardError::Connect | ForwardError::Upstream) => true,
            Ok(resp) => matches!(resp.status().as_u16(), 502..=504),
            Err(_) => false,
        };
        self.record_outcome(backend, chosen, failed);
        let mut response = match result {
            Ok(resp) => {
                if let Some(load) = backend.load(chosen) {
                    load.observe_latency(start.elapsed());
                }
                resp.map(Either::Left)
            }
            Err(err) => {
                tracing::debug!(endpoint = %endpoint.addr, service = %backend.service, error = %err, "forward failed");
                local_response(err.status(), &err.to_string())
            }
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[&*backend.service, &endpoint.label, response.status().as_str()])
            .inc();
        if let Some(cookie) = affinity {
            let outcome = affinity::outcome(presented, endpoint.affinity_digest);
            self.metrics.affinity.with_label_values(&[outcome.as_str()]).inc();
            if outcome != affinity::Outcome::Hit {
                affinity::set_cookie(response.headers_mut(), cookie, endpoint.affinity_digest, client.conn.tls);
            }
        }
        response
    }

    /// Passive health bookkeeping, with a log line and a count on ejection.
    fn record_outcome(&self, backend: &Backend, i: usize, failed: bool) {
        if let Some(time) = backend.record_outcome(i, failed) {
            let endpoint = backend.endpoints[i].addr;
            tracing::warn!(%endpoint, service = %backend.service, ejection = ?time,
                reason = "passive: consecutive failures", "endpoint ejected");
            self.metrics.health_transitions.with_label_values(&[&*backend.service, "ejected"]).inc();
        }
    }

    async fn forward_to(
        &self,
        req: Request<UpstreamBody>,
        backend: &Backend,
        i: usize,
        client: ClientInfo,
    ) -> Result<Response<GuardedBody>, ForwardError> {
        let guard = backend.load(i).map(|l| l.start());
        let timeout = backend.balance.request_timeout.unwrap_or(self.config.upstream_timeout);
        let upstream = self.client_for(backend.balance.connect_timeout);
        self.forward(&upstream, req, &backend.endpoints[i], client, guard, timeout).await
    }

    async fn forward(
        &self,
        upstream: &UpstreamClient,
        mut req: Request<UpstreamBody>,
        endpoint: &Endpoint,
        client: ClientInfo,
        guard: Option<InFlightGuard>,
        timeout: Duration,
    ) -> Result<Response<GuardedBody>, ForwardError> {
        let upgrade = upgrade::requested(&req);
        let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        headers::prepare_request(&mut parts, upgrade, client);
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a valid URI");
        parts.version = Version::HTTP_11;

        let sent = tokio::time::timeout(timeout, upstream.request(Request::from_parts(parts, body)));
        let mut resp = match sent.await {
            Err(_elapsed) => return Err(ForwardError::Timeout(timeout)),
            Ok(Err(err)) if err.is_connect() => return Err(ForwardError::Connect),
            Ok(Err(_)) => return Err(ForwardError::Upstream),
            Ok(Ok(resp)) => resp,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(downstream) = downstream_upgrade else {
                return Err(ForwardError::UnrequestedUpgrade);
            };
            // The tunnel holds the guard: a WebSocket counts while open.
            upgrade::tunnel(downstream, hyper::upgrade::on(&mut resp), endpoint.addr, guard);
            return Ok(resp.map(|b| GuardedBody::new(b, None)));
        }
        headers::strip_hop_by_hop(resp.headers_mut());
        Ok(resp.map(|b| GuardedBody::new(b, guard)))
    }
}

type UpstreamClient = Client<HttpConnector, UpstreamBody>;

fn upstream_client(connect_timeout: Duration, pool_idle_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(pool_idle_timeout)
        .build(connector)
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE].contains(method)
}

fn copy_head(method: &http::Method, uri: &Uri, version: Version, headers: &http::HeaderMap) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method.clone();
    parts.uri = uri.clone();
    parts.version = version;
    parts.headers = headers.clone();
    parts
}

/// The head of a request that can be sent again: idempotent, no body, no
/// upgrade.
fn replayable_head(req: &Request<Incoming>) -> Option<http::request::Parts> {
    use http_body::Body as _;
    if !is_idempotent(req.method()) || !req.body().is_end_stream() || upgrade::requested(req).is_some() {
        return None;
    }
    Some(copy_head(req.method(), req.uri(), req.version(), req.headers()))
}

/// Requests whose target is ambiguous are refused (RFC 9110 §7.2, RFC 9112
/// §3.2, RFC 9113 §8.3.1): several Host fields, or an absolute-form target
/// or `:authority` that names another host than the Host field. Routing on
/// one and forwarding the other would let a client reach a virtual host
/// that no Ingress exposes.
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    match (req.uri().authority(), host) {
        (Some(authority), Some(host)) if !authority.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()) => {
            Some("the request target's host and the Host header disagree")
        }
        _ => None,
    }
}

/// The authority the client addressed: the URI's (HTTP/2, absolute-form)
/// or the Host header's.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()))
}
