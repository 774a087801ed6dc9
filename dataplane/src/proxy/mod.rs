//! The HTTP reverse proxy: route, pick an endpoint, forward, stream back.
//!
//! Bodies are streamed both ways (never buffered), HTTP/1.1 `Upgrade`
//! (WebSocket) is tunnelled, and upstream connections are pooled and shared
//! by every worker thread.

mod access_log;
mod affinity;
mod body;
mod checks;
mod client_ip;
mod conn_state;
mod fast_h1;
mod h1pool;
mod hash_key;
mod headers;
mod idle;
mod local;
mod raw_pool;
mod splice;
mod upgrade;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::snapshot::{Backend, Route, SnapshotHandle, UpstreamProtocol};

pub use access_log::{AccessLog, AccessLogTarget};
pub use body::{ClientBody, GuardedBody};
pub use checks::parse_size;
pub use conn_state::{ConnState, Rejection, RequestGuard};
pub(crate) use fast_h1::{After, ClientIo};
pub use local::local_response;
pub use upgrade::{GOING_AWAY_GRACE, Tunnels};
pub use upstream::{CaError, client_tls_config, parse_ca_pem};

use body::BodyFailure;
use upstream::UpstreamClients;

/// Request body toward the upstream: the client's, or empty for a retry.
pub type UpstreamBody = Either<ClientBody, Empty<Bytes>>;

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
    /// Request body size limit of routes that set none (413 beyond it;
    /// `u64::MAX`: no limit).
    pub max_body_size: u64,
    /// `Strict-Transport-Security` for HTTPS responses of hosts with TLS
    /// (`None`: not sent).
    pub hsts: Option<http::HeaderValue>,
    /// The access log (`None`: off, and free).
    pub access_log: Option<AccessLog>,
    /// TLS toward `HTTPS`/`GRPCS` backends ([`client_tls_config`]; `None`:
    /// no certificate verification).
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// Serve plain HTTP/1.1 `GET`/`HEAD` requests to cleartext HTTP/1.1
    /// backends on the fast path (see `fast_h1`; `--h1-fast-path`).
    pub fast_h1: bool,
    /// On the fast path, move long response bodies from the upstream to
    /// cleartext clients with `splice(2)` (see `splice`;
    /// `--splice-bodies`).
    pub splice_bodies: bool,
}

/// The HSTS header value sent by default: one year, subdomains included.
pub const DEFAULT_HSTS: &str = "max-age=31536000; includeSubDomains";

/// nginx's `client_max_body_size` default: 1 MiB.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 1024 * 1024;

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            trusted_proxies: Vec::new(),
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            hsts: Some(http::HeaderValue::from_static(DEFAULT_HSTS)),
            access_log: None,
            upstream_tls: None,
            fast_h1: true,
            splice_bodies: true,
        }
    }
}

/// Facts about the downstream connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The port the connection came in on (the listener's).
    pub local_port: u16,
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
    clients: Arc<UpstreamClients>,
    /// Clients for backends whose policy sets its own connect timeout (the
    /// connector's timeout is per client), created on first use.
    clients_by_connect_timeout: std::sync::RwLock<std::collections::HashMap<Duration, Arc<UpstreamClients>>>,
    upstream_tls: Arc<rustls::ClientConfig>,
    config: ProxyConfig,
    /// Open WebSocket tunnels (shutdown waits for them, then closes them).
    tunnels: Tunnels,
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

    /// The `kind` label of `switchyard_upstream_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout(_) => "timeout",
            Self::Upstream => "reset",
            Self::UnrequestedUpgrade => "protocol",
        }
    }
}

impl Proxy {
    pub fn new(snapshots: Arc<SnapshotHandle>, metrics: Arc<Metrics>, config: ProxyConfig) -> Self {
        let upstream_tls = config
            .upstream_tls
            .clone()
            .unwrap_or_else(|| Arc::new(client_tls_config(None).expect("the default protocol versions are supported")));
        let clients = Arc::new(UpstreamClients::new(config.connect_timeout, config.pool_idle_timeout, &upstream_tls));
        let tunnels = Tunnels::default();
        let clients_by_connect_timeout = Default::default();
        Self { snapshots, metrics, clients, clients_by_connect_timeout, upstream_tls, config, tunnels }
    }

    /// The proxy's open WebSocket tunnels.
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// The metrics the proxy counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The pooled clients for a connect timeout (the shared ones by
    /// default, without a reference count taken).
    fn clients_for(&self, connect_timeout: Option<Duration>) -> std::borrow::Cow<'_, Arc<UpstreamClients>> {
        use std::borrow::Cow;
        let Some(timeout) = connect_timeout.filter(|t| *t != self.config.connect_timeout) else {
            return Cow::Borrowed(&self.clients);
        };
        let read = self.clients_by_connect_timeout.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(clients) = read.get(&timeout) {
            return Cow::Owned(clients.clone());
        }
        drop(read);
        let mut write = self.clients_by_connect_timeout.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let new = || Arc::new(UpstreamClients::new(timeout, self.config.pool_idle_timeout, &self.upstream_tls));
        Cow::Owned(write.entry(timeout).or_insert_with(new).clone())
    }

    /// Answers one request. Never fails: every error becomes a response.
    /// `state` is what the connection's raw-byte audit found. One async
    /// function down to the balancing: each level of nested futures is
    /// copied when built, and the whole is several KiB.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        state: &ConnState,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let mut log_entry = self.access_log_entry(&req, conn, start);
        let entry = &mut log_entry;
        let response = 'answer: {
            if let Some(rejection) = state.rejection().or_else(|| checks::request_problem(&req)) {
                self.metrics.requests.with_label_values(&["", "", rejection.status.as_str()]).inc();
                break 'answer refuse(rejection);
            }
            let snapshot = self.snapshots.load();
            let route = snapshot.router.route(request_host(&req), req.uri().path());
            let Some(route) = route else {
                self.metrics.requests.with_label_values(&["", "", StatusCode::NOT_FOUND.as_str()]).inc();
                break 'answer local_response(StatusCode::NOT_FOUND, "no route for this host and path");
            };
            let backend = &snapshot.backends[route.backend];
            entry.route(&route.source, &backend.service);
            if route.https_redirect && !conn.tls {
                self.metrics.requests.with_label_values(&[&*route.host, &*backend.service, "308"]).inc();
                break 'answer local::https_redirect(request_host(&req), req.uri());
            }
            if checks::content_length(&req).is_some_and(|len| len > self.body_limit(route)) {
                self.metrics.requests.with_label_values(&[&*route.host, &*backend.service, "413"]).inc();
                break 'answer refuse(checks::TOO_LARGE);
            }
            let mut response = match &backend.unavailable {
                Some(reason) => local_response(StatusCode::SERVICE_UNAVAILABLE, reason),
                None => {
                    let trusted = &self.config.trusted_proxies;
                    let client = ClientInfo {
                        conn,
                        ip: client_ip::client_ip(req.headers(), conn.peer.ip(), trusted),
                        via_trusted_proxy: client_ip::is_trusted(conn.peer.ip(), trusted),
                    };
                    self.balance_and_forward(req, route, backend, client, start, entry).await
                }
            };
            if conn.tls
                && route.hsts
                && let Some(hsts) = &self.config.hsts
            {
                response.headers_mut().entry(http::header::STRICT_TRANSPORT_SECURITY).or_insert_with(|| hsts.clone());
            }
            backend.series.count_request(&self.metrics, &route.host, &backend.service, response.status());
            backend.series.observe_duration(&self.metrics, &backend.service, start.elapsed());
            response
        };
        Ok(log_entry.attach(response))
    }

    /// The request's access-log entry: inert when the log is off or the
    /// request is not sampled.
    fn access_log_entry(&self, req: &Request<Incoming>, conn: ConnInfo, start: Instant) -> access_log::Entry {
        let Some(log) = &self.config.access_log else { return access_log::Entry::default() };
        let trusted = &self.config.trusted_proxies;
        log.begin(req, request_host(req), || client_ip::client_ip(req.headers(), conn.peer.ip(), trusted), start)
    }

    /// Picks the endpoint (affinity cookie first, then the backend's
    /// algorithm), forwards, and retries on endpoints not tried yet as the
    /// backend's retry policy says: idempotent requests without a body only,
    /// and only before any response byte reached the client (by default,
    /// one retry when the connection is refused).
    async fn balance_and_forward(
        &self,
        req: Request<Incoming>,
        route: &Route,
        backend: &Backend,
        client: ClientInfo,
        start: Instant,
        entry: &mut access_log::Entry,
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
        let (req, body_failure) = {
            let (parts, body) = req.into_parts();
            let (body, failure) = ClientBody::new(body, self.body_limit(route));
            (Request::from_parts(parts, Either::Left(body)), failure)
        };
        let mut result = self.forward_to(req, backend, chosen, client, route.upstream).await;
        self.count_error(&result);
        if result.is_err()
            && let Some(failure) = body_failure.get()
        {
            // The client's body failed, not the endpoint.
            tracing::debug!(service = %backend.service, ?failure, "request body refused");
            return refuse(match failure {
                BodyFailure::TooLarge => checks::TOO_LARGE,
                BodyFailure::Client => checks::BAD_BODY,
            });
        }
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
            result = self.forward_to(req, backend, chosen, client, route.upstream).await;
            self.count_error(&result);
        }
        let endpoint = &backend.endpoints[chosen];
        entry.upstream(endpoint.addr, tried.len() + 1);
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
        backend.series.count_upstream(&self.metrics, &backend.service, chosen, &endpoint.label, response.status());
        if let Some(cookie) = affinity {
            let outcome = affinity::outcome(presented, endpoint.affinity_digest);
            entry.affinity(outcome.as_str());
            self.metrics.affinity.with_label_values(&[outcome.as_str()]).inc();
            if outcome != affinity::Outcome::Hit {
                affinity::set_cookie(response.headers_mut(), cookie, endpoint.affinity_digest, client.conn.tls);
            }
        }
        response
    }

    /// Counts a failed attempt in `switchyard_upstream_errors_total`.
    fn count_error<T>(&self, result: &Result<T, ForwardError>) {
        if let Err(err) = result {
            self.metrics.upstream_errors.with_label_values(&[err.kind()]).inc();
        }
    }

    /// The route's request body size limit.
    fn body_limit(&self, route: &Route) -> u64 {
        route.max_body_size.unwrap_or(self.config.max_body_size)
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

    /// One attempt on endpoint `i` (errors are counted by the caller).
    async fn forward_to(
        &self,
        mut req: Request<UpstreamBody>,
        backend: &Backend,
        i: usize,
        client: ClientInfo,
        protocol: UpstreamProtocol,
    ) -> Result<Response<GuardedBody>, ForwardError> {
        let guard = backend.load(i).map(|l| l.start());
        let timeout = backend.balance.request_timeout.unwrap_or(self.config.upstream_timeout);
        let clients = self.clients_for(backend.balance.connect_timeout);
        let endpoint = &backend.endpoints[i];
        let upgrade = upgrade::requested(&req);
        let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let http2 = protocol.http2() && upgrade.is_none();
        headers::prepare_request(&mut parts, upgrade.clone(), client, http2);
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.version = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };

        // Cleartext HTTP/1.1 without an upgrade, the common case, goes
        // through our own pool; the rest through hyper-util's client.
        let (mut resp, lent) = if protocol == UpstreamProtocol::Http && upgrade.is_none() {
            parts.uri = Uri::from(path);
            if !parts.headers.contains_key(http::header::HOST)
                && let Ok(host) = http::HeaderValue::from_str(endpoint.authority.as_str())
            {
                parts.headers.insert(http::header::HOST, host);
            }
            let sent = tokio::time::timeout(timeout, clients.h1.send(endpoint.addr, Request::from_parts(parts, body)));
            match sent.await {
                Err(_elapsed) => return Err(ForwardError::Timeout(timeout)),
                Ok(Err(h1pool::SendError::Connect)) => return Err(ForwardError::Connect),
                Ok(Err(h1pool::SendError::Upstream)) => return Err(ForwardError::Upstream),
                Ok(Ok((resp, lent))) => (resp, Some(lent)),
            }
        } else {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if protocol.tls() { Scheme::HTTPS } else { Scheme::HTTP });
            uri.authority = Some(endpoint.authority.clone());
            uri.path_and_query = Some(path);
            parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a valid URI");
            let upstream_client = clients.pick(protocol, upgrade.is_some());
            let sent = tokio::time::timeout(timeout, upstream_client.request(Request::from_parts(parts, body)));
            match sent.await {
                Err(_elapsed) => return Err(ForwardError::Timeout(timeout)),
                Ok(Err(err)) if err.is_connect() => return Err(ForwardError::Connect),
                Ok(Err(_)) => return Err(ForwardError::Upstream),
                Ok(Ok(resp)) => (resp, None),
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(downstream) = downstream_upgrade else {
                return Err(ForwardError::UnrequestedUpgrade);
            };
            // Only to the protocol the client asked for (RFC 9110 §7.8).
            let asked = upgrade.as_ref().map(|v| v.as_bytes());
            let switched = resp.headers().get(http::header::UPGRADE).map(|v| v.as_bytes());
            if !matches!((asked, switched), (Some(a), Some(s)) if a.eq_ignore_ascii_case(s)) {
                return Err(ForwardError::UnrequestedUpgrade);
            }
            // The tunnel holds the guard: a WebSocket counts while open.
            upgrade::tunnel(downstream, hyper::upgrade::on(&mut resp), endpoint.addr, guard, &self.tunnels);
            return Ok(resp.map(|b| GuardedBody::new(b, None, None)));
        }
        headers::strip_hop_by_hop(resp.headers_mut());
        Ok(resp.map(|b| GuardedBody::new(b, guard, lent)))
    }
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

/// A local refusal after which the connection is closed: the rest of what
/// the client sent cannot be trusted to be framed as it meant.
fn refuse(rejection: Rejection) -> Response<ProxyBody> {
    let mut resp = local_response(rejection.status, rejection.reason);
    resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// The authority the client addressed: the URI's (HTTP/2, absolute-form)
/// or the Host header's.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()))
}
