//! The fast path for the most common request: a cleartext HTTP/1.1 `GET`
//! or `HEAD` without a body, routed to a cleartext HTTP/1.1 backend.
//!
//! hyper's path builds a request (a header map, a URI) from the client's
//! bytes, rewrites it, sends it through a client connection that runs in
//! a task of its own (a channel each way), and encodes the response again
//! from a second header map: about 39,000 instructions per request, twice
//! nginx's (docs/performance.md). Here the connection's own task does it
//! all on bytes: the head is parsed once with httparse into borrowed
//! slices, routed and balanced as before, written upstream with the
//! hop-by-hop fields removed and `X-Forwarded-*` set, on a bare pooled
//! socket ([`RawPool`]); the response head is rewritten the same way and
//! its body copied through, framed by its length, chunked coding
//! (re-encoded) or the upstream's close.
//!
//! What the fast path takes, it answers as hyper's path would: the same
//! routing, balancing, retries, passive health, in-flight counts, timeouts,
//! metrics and local answers (502, 504). Anything else — a request with a
//! body or an upgrade, an unusual target or Host, a route that redirects
//! or has session affinity or a header-hashed balancer, a backend over TLS
//! or HTTP/2, no route, no endpoint, the access log or trusted proxies
//! configured — is declined before anything is sent, and hyper serves it.
//! `--h1-fast-path=false` turns it off.

mod request;
mod response;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw_pool::RawPool;
use super::{ConnInfo, ForwardError, Proxy};
use crate::balance::{Algorithm, hash_ip};
use crate::snapshot::{Backend, HashOn, Snapshot, UpstreamProtocol};
use request::Method;
use response::{Chunked, Framing, Parsed, ResponseHead};

/// A response head larger than this is refused (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The upstream read buffer: room for a small response whole.
const READ_BUFFER: usize = 8 * 1024;
/// The read buffer of a large body (fewer system calls per byte).
const BODY_BUFFER: usize = 64 * 1024;

/// A request the fast path took: routed, balanced, its upstream head
/// written. It borrows nothing from the client's input.
pub(crate) struct Taken {
    /// Bytes of the client's head, to be consumed from its input.
    pub head_len: usize,
    snapshot: Arc<Snapshot>,
    route_host: Arc<str>,
    backend: usize,
    chosen: usize,
    hash_key: Option<u64>,
    method: Method,
    client_close: bool,
    upstream_head: Vec<u8>,
    start: Instant,
}

/// How a connection goes on after a response of the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    KeepAlive,
    Close,
}

impl Proxy {
    /// Whether the fast path may take requests at all (see the module
    /// documentation for what turns it off).
    pub(crate) fn fast_h1_enabled(&self) -> bool {
        self.config.fast_h1 && self.config.access_log.is_none() && self.config.trusted_proxies.is_empty()
    }

    /// Takes the request at the start of `input` if the fast path serves
    /// it; `None` leaves it, untouched, to hyper.
    pub(crate) fn take_fast_h1(&self, input: &[u8], conn: ConnInfo, max_headers: usize) -> Option<Taken> {
        let mut storage = [httparse::EMPTY_HEADER; request::MAX_HEADERS];
        let head = request::parse(input, &mut storage, max_headers.min(request::MAX_HEADERS))?;
        let start = Instant::now();
        let snapshot = self.snapshots.load();
        let route = snapshot.router.route(Some(head.host), head.path)?;
        let backend = &snapshot.backends[route.backend];
        if route.https_redirect
            || route.upstream != UpstreamProtocol::Http
            || backend.unavailable.is_some()
            || backend.balance.affinity.is_some()
        {
            return None;
        }
        let hash_key = match (backend.balance.algorithm, &backend.balance.hash_on) {
            (Algorithm::IpHash, _) | (Algorithm::ConsistentHash, HashOn::SourceIp) => Some(hash_ip(conn.peer.ip())),
            (Algorithm::ConsistentHash, _) => return None,
            _ => None,
        };
        let chosen = backend.pick_endpoint(hash_key)?;
        let mut upstream_head = Vec::with_capacity(head.len + 160);
        request::write_upstream_head(&head, conn.peer.ip(), conn.local_port, &mut upstream_head);
        let (route_host, backend_index) = (route.host.clone(), route.backend);
        Some(Taken {
            head_len: head.len,
            route_host,
            backend: backend_index,
            chosen,
            hash_key,
            method: head.method,
            client_close: head.close,
            upstream_head,
            start,
            snapshot,
        })
    }

    /// Forwards a request the fast path took and writes the response to
    /// `client` (`closing`: the listener is draining, this is the
    /// connection's last response).
    pub(crate) async fn forward_fast_h1<IO>(&self, taken: Taken, client: &mut IO, closing: bool) -> After
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let Taken {
            snapshot,
            route_host,
            backend,
            mut chosen,
            hash_key,
            method,
            client_close,
            upstream_head,
            start,
            ..
        } = taken;
        let backend = &snapshot.backends[backend];
        let close = client_close || closing;
        let clients = self.clients_for(backend.balance.connect_timeout);
        let pool = &clients.raw;
        let timeout = backend.balance.request_timeout.unwrap_or(self.config.upstream_timeout);
        let retries = &backend.balance.retries;
        let mut tried = Vec::new();
        let mut buf = Vec::with_capacity(READ_BUFFER);
        let mut out = Vec::with_capacity(256);
        let mut attempt = 0;
        let (exchange, guard) = loop {
            let guard = backend.load(chosen).map(|l| l.start());
            let addr = backend.endpoints[chosen].addr;
            buf.clear();
            out.clear();
            let exchange =
                exchange(pool, addr, &upstream_head, timeout, method == Method::Head, close, &mut buf, &mut out).await;
            if let Err(err) = &exchange {
                self.metrics.upstream_errors.with_label_values(&[err.kind()]).inc();
            }
            let retry = match &exchange {
                Err(ForwardError::Connect) => retries.on_connect_failure,
                Err(ForwardError::Upstream) => retries.on_reset,
                Ok((_, head)) => head.status == 503 && retries.on_unavailable,
                Err(_) => false,
            };
            if !retry || attempt >= retries.attempts {
                break (exchange, guard);
            }
            tried.push(chosen);
            let Some(other) = backend.pick_endpoint_except(hash_key, &tried) else { break (exchange, guard) };
            tracing::debug!(service = %backend.service, failed = %addr,
                retry = %backend.endpoints[other].addr, "retrying on another endpoint");
            self.record_outcome(backend, chosen, true);
            chosen = other;
            attempt += 1;
        };
        let endpoint = &backend.endpoints[chosen];
        let (upstream, head) = match exchange {
            Ok(pair) => pair,
            Err(err) => {
                self.record_outcome(backend, chosen, matches!(err, ForwardError::Connect | ForwardError::Upstream));
                tracing::debug!(endpoint = %endpoint.addr, service = %backend.service, error = %err, "forward failed");
                let status = err.status();
                self.count_fast(&route_host, backend, &endpoint.label, status.as_str(), start);
                drop(guard);
                return local_answer(client, status, &err.to_string(), close).await;
            }
        };
        self.record_outcome(backend, chosen, matches!(head.status, 502..=504));
        if let Some(load) = backend.load(chosen) {
            load.observe_latency(start.elapsed());
        }
        let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        self.count_fast(&route_host, backend, &endpoint.label, status.as_str(), start);
        let addr = endpoint.addr;
        // The snapshot is not held while the body streams.
        drop(snapshot);
        let copied = copy_body(upstream, head, &mut buf, &mut out, client).await;
        drop(guard);
        match copied {
            Copied::Whole(Some(upstream)) => pool.put(addr, upstream),
            Copied::Whole(None) => {}
            Copied::UpstreamFailed => {
                self.metrics.upstream_errors.with_label_values(&["truncated"]).inc();
                return After::Close;
            }
            Copied::ClientGone => return After::Close,
        }
        if close || head.framing == Framing::UntilClose { After::Close } else { After::KeepAlive }
    }

    /// The request's counts, as hyper's path makes them.
    fn count_fast(&self, host: &str, backend: &Backend, endpoint: &str, status: &str, start: Instant) {
        self.metrics.h1_fast_path_requests.inc();
        let service = &*backend.service;
        self.metrics.upstream_requests.with_label_values(&[service, endpoint, status]).inc();
        self.metrics.requests.with_label_values(&[host, service, status]).inc();
        self.metrics.request_duration.with_label_values(&[service]).observe(start.elapsed().as_secs_f64());
    }
}

/// Sends the request head to `addr` and reads the response head into
/// `buf` (the client's head is written to `out`), within `timeout`. A
/// pooled connection that turns out closed before any response byte is
/// replaced by a new one once (the request is a `GET` or `HEAD`).
#[allow(clippy::too_many_arguments)]
async fn exchange(
    pool: &RawPool,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
    head_request: bool,
    close: bool,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(TcpStream, ResponseHead), ForwardError> {
    let attempt = async {
        let (mut upstream, mut pooled) = match pool.take(addr) {
            Some(stream) => (stream, true),
            // Boxed: the connect future is only needed now and then.
            None => (Box::pin(pool.connect(addr)).await.map_err(|_| ForwardError::Connect)?, false),
        };
        loop {
            match send_and_read_head(&mut upstream, request, head_request, close, buf, out).await {
                Ok(head) => return Ok((upstream, head)),
                Err(Exchange::Nothing) if pooled => {
                    tracing::debug!(%addr, "pooled upstream connection was closed; opening a new one");
                    upstream = Box::pin(pool.connect(addr)).await.map_err(|_| ForwardError::Connect)?;
                    pooled = false;
                    buf.clear();
                    out.clear();
                }
                Err(Exchange::Nothing | Exchange::Broken) => return Err(ForwardError::Upstream),
                Err(Exchange::Switching) => return Err(ForwardError::UnrequestedUpgrade),
            }
        }
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(Err(ForwardError::Timeout(timeout)))
}

/// Why an exchange failed.
enum Exchange {
    /// The connection failed before any response byte arrived.
    Nothing,
    /// It failed after, or the response is not valid HTTP/1.x.
    Broken,
    /// A 101 nobody asked for.
    Switching,
}

async fn send_and_read_head(
    upstream: &mut TcpStream,
    request: &[u8],
    head_request: bool,
    close: bool,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Exchange> {
    upstream.write_all(request).await.map_err(|_| Exchange::Nothing)?;
    let mut received = false;
    loop {
        if buf.capacity() - buf.len() < 1024 {
            if buf.len() >= MAX_RESPONSE_HEAD {
                return Err(Exchange::Broken);
            }
            buf.reserve(READ_BUFFER);
        }
        match upstream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(if received { Exchange::Broken } else { Exchange::Nothing }),
            Ok(_) => received = true,
        }
        loop {
            match response::parse(buf, head_request, close, out) {
                Parsed::Partial => break,
                Parsed::Interim(len) => {
                    buf.drain(..len);
                }
                Parsed::Switching => return Err(Exchange::Switching),
                Parsed::Invalid => return Err(Exchange::Broken),
                Parsed::Complete(head) => return Ok(head),
            }
        }
    }
}

/// How a body copy ended.
enum Copied {
    /// Whole; with the upstream connection when it can serve again.
    Whole(Option<TcpStream>),
    /// The upstream failed or broke the framing mid-body.
    UpstreamFailed,
    /// Writing to the client failed.
    ClientGone,
}

/// Writes the response head (in `out`) and the body to the client: the
/// part already read with the head in one write, then the rest as it
/// comes.
async fn copy_body<IO>(
    mut upstream: TcpStream,
    head: ResponseHead,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    client: &mut IO,
) -> Copied
where
    IO: AsyncWrite + Unpin,
{
    let first = &buf[head.len..];
    let mut reusable = head.reusable;
    match head.framing {
        Framing::Length(len) => {
            let take = usize::try_from(len).unwrap_or(usize::MAX).min(first.len());
            out.extend_from_slice(&first[..take]);
            // More than the length said: the connection is out of step.
            reusable &= take == first.len();
            if client.write_all(out).await.is_err() {
                return Copied::ClientGone;
            }
            let mut left = len - take as u64;
            while left > 0 {
                buf.clear();
                buf.reserve(usize::try_from(left).unwrap_or(BODY_BUFFER).min(BODY_BUFFER));
                match upstream.read_buf(buf).await {
                    Ok(0) | Err(_) => return Copied::UpstreamFailed,
                    Ok(_) => {}
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                reusable &= take == buf.len();
                if client.write_all(&buf[..take]).await.is_err() {
                    return Copied::ClientGone;
                }
                left -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut chunked = Chunked::default();
            let mut used = match chunked.feed(first, out) {
                Ok(used) => head.len + used,
                Err(_) => return Copied::UpstreamFailed,
            };
            loop {
                if client.write_all(out).await.is_err() {
                    return Copied::ClientGone;
                }
                if chunked.is_done() {
                    reusable &= used == buf.len();
                    break;
                }
                out.clear();
                buf.drain(..used);
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(BODY_BUFFER);
                }
                match upstream.read_buf(buf).await {
                    Ok(0) | Err(_) => return Copied::UpstreamFailed,
                    Ok(_) => {}
                }
                used = match chunked.feed(buf, out) {
                    Ok(used) => used,
                    Err(_) => return Copied::UpstreamFailed,
                };
            }
        }
        Framing::UntilClose => {
            out.extend_from_slice(first);
            if client.write_all(out).await.is_err() {
                return Copied::ClientGone;
            }
            loop {
                buf.clear();
                buf.reserve(BODY_BUFFER);
                match upstream.read_buf(buf).await {
                    Ok(0) => break,
                    Err(_) => return Copied::UpstreamFailed,
                    Ok(_) => {}
                }
                if client.write_all(buf).await.is_err() {
                    return Copied::ClientGone;
                }
            }
            reusable = false;
        }
    }
    Copied::Whole(reusable.then_some(upstream))
}

/// A local answer, as `local_response` makes it for hyper's path.
async fn local_answer<IO>(client: &mut IO, status: StatusCode, detail: &str, close: bool) -> After
where
    IO: AsyncWrite + Unpin,
{
    let body = format!("{} {}: {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""), detail);
    let connection = if close { "connection: close\r\n" } else { "" };
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n\
         content-length: {}\r\n{connection}\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    match client.write_all(answer.as_bytes()).await {
        Ok(()) if !close => After::KeepAlive,
        _ => After::Close,
    }
}
