//! HTTP/1 connections (cleartext, or TLS once its handshake is done) that
//! hold no HTTP buffers while idle, and whose plain requests may take the
//! proxy's fast path (`crate::proxy::fast_h1`).
//!
//! hyper keeps a connection's read buffer (8 KiB once used) and write
//! buffer (8 KiB) for the connection's whole life, and its state machine
//! lives in the connection's task: about 20 KiB per idle keep-alive
//! connection. Here a connection idle between requests for
//! `release_after` is *parked*: hyper is stopped at its idle state (its
//! shutdown of the socket held back, see [`super::conn_io`]), its
//! buffers are freed, and the task waits on the socket. The next
//! request's first bytes start a new hyper connection on the same socket,
//! with any bytes hyper had read but not parsed given back first. Busy
//! connections are never parked, so steady keep-alive traffic pays
//! nothing for this.
//!
//! A connection opens parked too: it takes its first buffers when its
//! first bytes arrive. Those bytes also tell HTTP/2 (its preface, with
//! prior knowledge or after ALPN `h2`) from HTTP/1; HTTP/2 goes to hyper's
//! auto builder. Before hyper is started, the fast path is offered the
//! request at the head of the input: what it takes it answers itself, and
//! the connection goes back to waiting, parked.
//!
//! A hyper connection is stopped only once it has served a request: one
//! stopped in its initial state would answer its first request with
//! `Connection: close`. A connection that has not sent a request yet closes
//! at once on a drain. Over TLS, a client's first request often arrives
//! with its last handshake message: rustls has decrypted it already, and
//! the parked read takes it from rustls before it waits on the socket (see
//! [`super::conn_io::Parkable`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::conn_io::{AuditedIo, Parkable};
use super::{ConnService, Connections};
use crate::proxy::{After, ConnState};

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a connection until it closes: HTTP/1, parked while idle, or
/// (cleartext) HTTP/2 with prior knowledge. The connection's whole task: its
/// future is what every idle connection holds, so it is kept small (the
/// HTTP/2 path and hyper's connection are boxed).
pub(super) async fn serve<S>(
    conns: Arc<Connections>,
    watcher: Watcher,
    slot: Option<OwnedSemaphorePermit>,
    mut io: AuditedIo<S>,
    mut service: ConnService,
    state: Arc<ConnState>,
) where
    S: Parkable + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = service.conn_info.peer;
    let mut first = true;
    // The last request was served on the fast path: an idle spell now is
    // counted as a release (there is nothing to free).
    let mut served_fast = false;
    loop {
        // Parked: only the socket, its audit and its timers are held.
        if !io.has_replay() && !next_input(&mut io, &conns, served_fast.then_some(&*state)).await {
            break;
        }
        if first && may_be_h2(io.pending_input()) {
            Box::pin(conns.auto_connection(watcher, io, service)).await;
            drop(slot);
            return;
        }
        first = false;
        match serve_fast(&conns, &mut io, &service, &state).await {
            Some(After::KeepAlive) => {
                served_fast = true;
                continue;
            }
            Some(After::Close) => break,
            None => served_fast = false,
        }
        state.end_park();
        let mut conn = Box::new(conns.h1.serve_connection(TokioIo::new(io), service).with_upgrades());
        match drive(&mut conn, &state, &conns.closed).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "connection ended with error");
                break;
            }
        }
        // hyper stopped at its idle state: take the socket back.
        let Some(parts) = conn.into_parts() else { break };
        conns.proxy.metrics().connections_released.inc();
        io = parts.io.into_inner();
        io.replay(&parts.read_buf);
        service = parts.service;
    }
    // The drain waits for the watcher: dropped only once closed.
    drop((watcher, slot));
}

type Conn<S> = http1::UpgradeableConnection<TokioIo<AuditedIo<S>>, ConnService>;

/// Whether a connection's first bytes could be HTTP/2's preface.
fn may_be_h2(input: &[u8]) -> bool {
    !input.is_empty() && H2_PREFACE.starts_with(&input[..input.len().min(H2_PREFACE.len())])
}

/// Polls hyper's connection until it ends: `true` when it stopped to be
/// parked (the socket still open), `false` when the connection is over.
/// The listener's closing (see `Drain`) stops it gracefully: an idle connection closes at once, a busy
/// one after its response.
async fn drive<S>(conn: &mut Conn<S>, state: &ConnState, closed: &watch::Receiver<bool>) -> hyper::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut closed = closed.clone();
    let stop = closed.wait_for(|closed| *closed);
    tokio::pin!(stop);
    let (mut stopping, mut parking) = (false, false);
    std::future::poll_fn(|cx| {
        if !stopping && stop.as_mut().poll(cx).is_ready() {
            stopping = true;
            Pin::new(&mut *conn).graceful_shutdown();
        }
        let polled = Pin::new(&mut *conn).poll(cx);
        if polled.is_pending() && !stopping && !parking && state.park_wanted() {
            // Idle long enough: hyper closes its idle state machine
            // (graceful shutdown of an idle connection) and ends.
            parking = true;
            state.begin_park();
            Pin::new(&mut *conn).graceful_shutdown();
            return Pin::new(&mut *conn).poll(cx).map_ok(|()| !stopping);
        }
        polled.map_ok(|()| parking && !stopping)
    })
    .await
}

/// Serves the request at the start of the connection's input on the fast
/// path (see `crate::proxy::fast_h1`), if it takes it: `None` leaves the
/// input untouched for hyper.
async fn serve_fast<S>(
    conns: &Connections,
    io: &mut AuditedIo<S>,
    service: &ConnService,
    state: &Arc<ConnState>,
) -> Option<After>
where
    S: Parkable + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A head the audit refused is answered by hyper's path.
    if !conns.fast_h1 || state.rejection().is_some() {
        return None;
    }
    let taken = service.proxy.take_fast_h1(io.pending_input(), service.conn_info, conns.config.max_headers)?;
    io.consume_input(taken.head_len);
    let guard = state.start_request();
    let closing = || service.drain.is_closing_keep_alive();
    // Boxed: the connection's future, which every idle connection holds,
    // stays small.
    let after = Box::pin(service.proxy.forward_fast_h1(taken, io, closing)).await;
    drop(guard);
    state.served_without_hyper();
    Some(after)
}

/// Waits for the socket's next bytes and reads them (kept in `io` for
/// hyper), or `false` to close (end of stream, an error, the idle deadline
/// or the drain). With `fast`, the state of a connection whose last
/// request took the fast path: its idle spell past the release delay is
/// counted in `switchyard_connections_released_total`, as hyper's
/// connections are when they release their buffers.
async fn next_input<S: Parkable + AsyncRead + Unpin>(
    io: &mut AuditedIo<S>,
    conns: &Connections,
    fast: Option<&ConnState>,
) -> bool {
    let mut closed = conns.closed.clone();
    let stop = closed.wait_for(|closed| *closed);
    tokio::pin!(stop);
    let mut counted = false;
    std::future::poll_fn(|cx| {
        // Input first: a connection the drain takes from the accept queue
        // has usually sent its request already, and is served.
        if let Poll::Ready(input) = io.poll_parked(cx) {
            return Poll::Ready(input);
        }
        if let Some(state) = fast
            && !counted
            && state.park_wanted()
        {
            counted = true;
            conns.proxy.metrics().connections_released.inc();
        }
        stop.as_mut().poll(cx).map(|_| false)
    })
    .await
}
