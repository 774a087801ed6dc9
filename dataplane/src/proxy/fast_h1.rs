//! The fast path for the most common request: an HTTP/1.1 `GET` or `HEAD`
//! without a body (cleartext, or over TLS once terminated), routed to a
//! cleartext HTTP/1.1 backend.
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
//! (re-encoded) or the upstream's close. A long body with a length goes
//! to a cleartext client without being copied (`super::splice`). The
//! last response of a connection that closes leaves with the FIN, in one
//! segment (`write_closing`).
//!
//! What the fast path takes, it answers as hyper's path would: the same
//! routing, balancing, retries, passive health, in-flight counts, timeouts,
//! metrics, access-log lines, `Strict-Transport-Security` and local
//! answers (502, 504). Anything else — HTTP/2, a request with a body or an
//! upgrade, an unusual target or Host, a route that redirects or has
//! session affinity or a header-hashed balancer, a backend over TLS or
//! HTTP/2, no route, no endpoint — is declined
//! before anything is sent, and hyper serves it.
//! `--h1-fast-path=false` turns it off.
//!
//! One difference in kind: a pooled upstream connection that turns out to
//! have been closed (end of stream before any response byte, the request
//! already written) gets the request again on a new connection, even with
//! no retries configured, as nginx does with its keep-alive connections.
//! Only `GET` and `HEAD` are taken, which RFC 9110 §9.2.2 lets a proxy
//! repeat.

mod date;
mod request;
mod response;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use rustix::net::{SendFlags, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::access_log::{self, RequestLine};
use super::raw_pool::RawPool;
use super::splice::{self, Spliced};
use super::{ConnInfo, ForwardError, Proxy};
use crate::balance::{Algorithm, hash_ip};
use crate::snapshot::{Backend, HashOn, Snapshot, UpstreamProtocol};
use request::Method;
use response::{Additions, Chunked, Framing, Parsed, ResponseHead};

/// A response head larger than this is refused (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The upstream's first read: a head and a small response whole (nginx's
/// `proxy_buffer_size` is a page too). The more it takes of a long body,
/// the more of that body is copied rather than spliced.
const READ_BUFFER: usize = 4 * 1024;
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
    /// `Strict-Transport-Security` for the response (TLS, a host with TLS).
    hsts: Option<http::HeaderValue>,
    upstream_head: Vec<u8>,
    start: Instant,
    /// The access-log line (inert when the log is off or not sampled).
    log: access_log::Entry,
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
        self.config.fast_h1
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
        if (route.https_redirect && !conn.tls)
            || route.upstream != UpstreamProtocol::Http
            || backend.unavailable.is_some()
            || backend.balance.affinity.is_some()
        {
            return None;
        }
        let from = request::Forwarded::of(&head, conn.peer.ip(), &self.config.trusted_proxies);
        let hash_key = match (backend.balance.algorithm, &backend.balance.hash_on) {
            (Algorithm::IpHash, _) | (Algorithm::ConsistentHash, HashOn::SourceIp) => Some(hash_ip(from.client)),
            (Algorithm::ConsistentHash, _) => return None,
            _ => None,
        };
        let chosen = backend.pick_endpoint(hash_key)?;
        let mut upstream_head = Vec::with_capacity(head.len + 160);
        request::write_upstream_head(&head, &from, conn.local_port, conn.tls, &mut upstream_head);
        let (route_host, backend_index) = (route.host.clone(), route.backend);
        let hsts = if conn.tls && route.hsts { self.config.hsts.clone() } else { None };
        let log = match &self.config.access_log {
            Some(access_log) => {
                let method = match head.method {
                    Method::Get => &http::Method::GET,
                    Method::Head => &http::Method::HEAD,
                };
                let line = RequestLine { method, path: head.path, protocol: http::Version::HTTP_11 };
                let mut entry = access_log.begin_parts(line, Some(head.host), || from.client, start);
                entry.route(&route.source, &backend.service);
                entry
            }
            None => access_log::Entry::default(),
        };
        Some(Taken {
            head_len: head.len,
            route_host,
            backend: backend_index,
            chosen,
            hash_key,
            method: head.method,
            client_close: head.close,
            hsts,
            upstream_head,
            start,
            snapshot,
            log,
        })
    }

    /// Forwards a request the fast path took and writes the response to
    /// `client`. `closing` says, when the response is written, whether the
    /// listener is draining (the connection's last response then says
    /// close). A client that closes its connection while the upstream has
    /// not answered yet cancels the request, as on hyper's path.
    pub(crate) async fn forward_fast_h1<IO>(&self, taken: Taken, client: &mut IO, closing: impl Fn() -> bool) -> After
    where
        IO: ClientIo,
    {
        let Taken {
            snapshot,
            route_host,
            backend,
            mut chosen,
            hash_key,
            method,
            client_close,
            hsts,
            upstream_head,
            start,
            mut log,
            ..
        } = taken;
        let backend = &snapshot.backends[backend];
        let add = Additions { hsts: hsts.as_ref().map(http::HeaderValue::as_bytes) };
        let head_request = method == Method::Head;
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
            // The first attempt's deadline counts from the request's start
            // (read already: one reading of the clock less per request).
            let began = if attempt == 0 { start } else { Instant::now() };
            let limit = (began + timeout, timeout);
            let exchange = exchange(pool, addr, &upstream_head, limit, head_request, add, &mut buf, &mut out);
            let exchange = tokio::select! {
                biased;
                exchange = exchange => exchange,
                () = client_gone(client) => {
                    tracing::debug!(endpoint = %addr, service = %backend.service,
                        "client closed its connection before the response; request cancelled");
                    return After::Close;
                }
            };
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
        let close = client_close || closing();
        let endpoint = &backend.endpoints[chosen];
        log.upstream(endpoint.addr, attempt as usize + 1);
        let (upstream, head) = match exchange {
            Ok(pair) => pair,
            Err(err) => {
                self.record_outcome(backend, chosen, matches!(err, ForwardError::Connect | ForwardError::Upstream));
                tracing::debug!(endpoint = %endpoint.addr, service = %backend.service, error = %err, "forward failed");
                let status = err.status();
                self.count_fast(&route_host, backend, chosen, status, start.elapsed());
                drop(guard);
                let answer = LocalAnswer { status, detail: &err.to_string(), head_request, close, add };
                return answer.write(client, &mut log).await;
            }
        };
        response::finish_head(&mut out, &head, close);
        self.record_outcome(backend, chosen, matches!(head.status, 502..=504));
        let elapsed = start.elapsed();
        if let Some(load) = backend.load(chosen) {
            load.observe_latency(elapsed);
        }
        let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        self.count_fast(&route_host, backend, chosen, status, elapsed);
        let addr = endpoint.addr;
        // The snapshot is not held while the body streams.
        drop(snapshot);
        log.status(head.status);
        let spliced = self.config.splice_bodies.then_some(&self.metrics.spliced_body_bytes);
        let mut sent = 0;
        let copied = copy_body(upstream, head, &mut buf, &mut out, client, spliced, &mut sent, close).await;
        log.body_bytes(sent);
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
    fn count_fast(&self, host: &Arc<str>, backend: &Backend, endpoint: usize, status: StatusCode, elapsed: Duration) {
        self.metrics.h1_fast_path_requests.inc();
        let (series, service) = (&backend.series, &*backend.service);
        series.count_upstream(&self.metrics, service, endpoint, &backend.endpoints[endpoint].label, status);
        series.count_request(&self.metrics, host, service, status);
        series.observe_duration(&self.metrics, service, elapsed);
    }
}

/// Sends the request head to `addr` and reads the response head into
/// `buf` (the client's head is written to `out`), by `limit` (a deadline,
/// and the timeout it came from, for the error). A
/// pooled connection that turns out closed before any response byte is
/// replaced by a new one once (the request is a `GET` or `HEAD`).
#[allow(clippy::too_many_arguments)]
async fn exchange(
    pool: &RawPool,
    addr: SocketAddr,
    request: &[u8],
    limit: (Instant, Duration),
    head_request: bool,
    add: Additions<'_>,
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
            match send_and_read_head(&mut upstream, request, head_request, add, buf, out).await {
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
    let (deadline, timeout) = limit;
    tokio::time::timeout_at(deadline.into(), attempt).await.unwrap_or(Err(ForwardError::Timeout(timeout)))
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
    add: Additions<'_>,
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
            match response::parse(buf, head_request, add, out) {
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
/// comes. With `spliced` (the count of bytes moved so), the rest of a long
/// body with a length goes from socket to socket inside the kernel when
/// the client's connection is cleartext (see `super::splice`). `sent`
/// counts the body bytes handed to the client (framing excluded). With
/// `close`, the connection closes after the response: its last bytes are
/// written with [`write_closing`] when the body's end is known ([`write_out`]).
#[allow(clippy::too_many_arguments)]
async fn copy_body<IO>(
    mut upstream: TcpStream,
    head: ResponseHead,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    client: &mut IO,
    spliced: Option<&prometheus::IntCounter>,
    sent: &mut u64,
    close: bool,
) -> Copied
where
    IO: ClientIo,
{
    let first = &buf[head.len..];
    let mut reusable = head.reusable;
    match head.framing {
        Framing::Length(len) => {
            let take = usize::try_from(len).unwrap_or(usize::MAX).min(first.len());
            out.extend_from_slice(&first[..take]);
            // More than the length said: the connection is out of step.
            reusable &= take == first.len();
            if write_out(client, out, close && take as u64 == len).await.is_err() {
                return Copied::ClientGone;
            }
            *sent = take as u64;
            let mut left = len - take as u64;
            if let (Some(counter), Some(tcp)) = (spliced.filter(|_| left >= splice::MIN_BODY), client.plain_tcp()) {
                let mut delivered = 0;
                let outcome = splice::body(&upstream, tcp, left, &mut delivered).await;
                client.touch();
                counter.inc_by(delivered);
                *sent += delivered;
                match outcome {
                    Spliced::Whole => left = 0,
                    Spliced::NotMoved => {}
                    Spliced::UpstreamFailed => return Copied::UpstreamFailed,
                    Spliced::ClientGone => return Copied::ClientGone,
                }
            }
            while left > 0 {
                buf.clear();
                buf.reserve(usize::try_from(left).unwrap_or(BODY_BUFFER).min(BODY_BUFFER));
                match upstream.read_buf(buf).await {
                    Ok(0) | Err(_) => return Copied::UpstreamFailed,
                    Ok(_) => {}
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                reusable &= take == buf.len();
                if write_out(client, &buf[..take], close && take as u64 == left).await.is_err() {
                    return Copied::ClientGone;
                }
                *sent += take as u64;
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
                if write_out(client, out, close && chunked.is_done()).await.is_err() {
                    return Copied::ClientGone;
                }
                *sent = chunked.data_bytes();
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
            *sent = first.len() as u64;
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
                *sent += buf.len() as u64;
            }
            reusable = false;
        }
    }
    Copied::Whole(reusable.then_some(upstream))
}

/// A local answer, as `local_response` makes it for hyper's path (no body
/// to a `HEAD`).
struct LocalAnswer<'a> {
    status: StatusCode,
    detail: &'a str,
    head_request: bool,
    close: bool,
    add: Additions<'a>,
}

impl LocalAnswer<'_> {
    async fn write<IO: ClientIo>(self, client: &mut IO, log: &mut access_log::Entry) -> After {
        let Self { status, detail, head_request, close, add } = self;
        let reason = status.canonical_reason().unwrap_or("");
        let body = format!("{} {reason}: {detail}\n", status.as_u16());
        let mut answer = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n\
             content-length: {}\r\ndate: ",
            status.as_u16(),
            body.len()
        )
        .into_bytes();
        date::now(|date| answer.extend_from_slice(date));
        answer.extend_from_slice(b"\r\n");
        if let Some(hsts) = add.hsts {
            answer.extend_from_slice(b"strict-transport-security: ");
            answer.extend_from_slice(hsts);
            answer.extend_from_slice(b"\r\n");
        }
        if close {
            answer.extend_from_slice(b"connection: close\r\n");
        }
        answer.extend_from_slice(b"\r\n");
        if !head_request {
            answer.extend_from_slice(body.as_bytes());
        }
        log.status(status.as_u16());
        if write_out(client, &answer, close).await.is_err() {
            return After::Close;
        }
        if !head_request {
            log.body_bytes(body.len() as u64);
        }
        if close { After::Close } else { After::KeepAlive }
    }
}

/// The client connection as the fast path needs it: written to, and
/// watched for its end while the upstream has not answered.
pub(crate) trait ClientIo: AsyncWrite + Unpin {
    /// Ready once the client has closed its connection (end of stream or
    /// an error); pending while it is open and silent. Once the client has
    /// sent more bytes (a pipelined request, a TLS record), it is known to
    /// be there, and this stays pending.
    fn poll_gone(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<bool>;

    /// The client's socket when bytes written to it go out as they are
    /// (cleartext, nothing buffered in between): a body may then be
    /// spliced into it.
    fn plain_tcp(&self) -> Option<&TcpStream>;

    /// Notes activity on the connection that did not go through its
    /// writer (a spliced body), for its idle timer.
    fn touch(&mut self);
}

/// Writes `bytes` to the client; with `last`, they are the last of a
/// connection that closes after them (see [`write_closing`]).
async fn write_out<IO: ClientIo>(client: &mut IO, bytes: &[u8], last: bool) -> std::io::Result<()> {
    if last { write_closing(client, bytes).await } else { client.write_all(bytes).await }
}

/// Writes the last bytes of a connection that closes after them. On a
/// cleartext socket they are queued with `MSG_MORE` and then
/// `shutdown(SHUT_WR)` sends them with the FIN in one segment, where a
/// plain write and the close send two, and the client acknowledges two
/// (S2 in `docs/performance.md`: a connection per request). The
/// shutdown, rather than leaving the FIN to the close, sends them even if
/// the client sent bytes that will never be read: closing a socket with
/// unread input resets the connection and discards what is still queued.
async fn write_closing<IO: ClientIo>(client: &mut IO, bytes: &[u8]) -> std::io::Result<()> {
    let Some(tcp) = client.plain_tcp() else { return client.write_all(bytes).await };
    let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
    let mut written = 0;
    while written < bytes.len() {
        let rest = &bytes[written..];
        written += tcp.async_io(Interest::WRITABLE, || Ok(rustix::net::send(tcp, rest, flags)?)).await?;
    }
    // Should it fail (the client reset the connection already), the close
    // that follows ends the connection all the same.
    let _ = rustix::net::shutdown(tcp, Shutdown::Write);
    client.touch();
    Ok(())
}

/// Resolves when the client has gone (see [`ClientIo::poll_gone`]).
async fn client_gone<IO: ClientIo>(client: &mut IO) {
    let mut present = false;
    std::future::poll_fn(|cx| {
        if present {
            return std::task::Poll::Pending;
        }
        match client.poll_gone(cx) {
            std::task::Poll::Ready(true) => std::task::Poll::Ready(()),
            std::task::Poll::Ready(false) => {
                present = true;
                std::task::Poll::Pending
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await;
}
