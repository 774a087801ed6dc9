//! Accept loops: one per listening socket, each connection served by
//! hyper's auto (HTTP/1.1 + h2c) builder with upgrades, and drained
//! gracefully on shutdown.
//!
//! Every HTTP/1 connection is read through an [`audit`] of its raw bytes
//! (framing hyper repairs silently, exact head sizes) and two timers (slow
//! head, idle keep-alive); at most `max_connections` are served at once.

pub mod audit;
mod conn_io;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::proxy::{ConnInfo, ConnState, Proxy, RequestGuard};
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
    /// How long in-flight requests may run after shutdown starts.
    pub drain_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's
    /// accept queue until one closes. `None`: no limit.
    pub max_connections: Option<usize>,
    /// Request line (414) and header section (431) sizes.
    pub head_limits: HeadLimits,
    /// Header fields per request (431, answered by hyper).
    pub max_headers: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(25),
            max_connections: None,
            head_limits: HeadLimits::default(),
            max_headers: 100,
        }
    }
}

/// Serves plain-HTTP proxy traffic on `listener` until `shutdown`
/// completes, then stops accepting and drains open connections (idle
/// keep-alive connections are closed, in-flight requests finish) for at most
/// `drain_timeout`.
pub async fn serve_http(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The head timeout is the audited socket's (hyper's would also run
    // while a keep-alive connection is idle); hyper's buffer limit is a
    // backstop past the audit's exact head limits.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(config.max_headers)
        .max_buf_size(config.head_limits.max_head().max(8192));
    // Idle HTTP/2 connections are pinged, and closed when the peer is gone.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    let slots = Arc::new(Semaphore::new(config.max_connections.unwrap_or(Semaphore::MAX_PERMITS)));
    let timeouts = ConnTimeouts { header_read: config.header_read_timeout, idle: config.idle_timeout };
    tokio::pin!(shutdown);
    loop {
        // Beyond the limit, connections wait in the accept queue.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
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
        let _ = stream.set_nodelay(true);
        let conn_info = ConnInfo { peer, local: stream.local_addr().unwrap_or(peer), tls: false };
        let proxy = proxy.clone();
        let state = Arc::new(ConnState::default());
        let io = AuditedIo::new(stream, Audit::new(config.head_limits), state.clone(), timeouts);
        let service = service_fn(move |req| {
            let (proxy, state) = (proxy.clone(), state.clone());
            async move {
                let guard = state.start_request();
                let resp = proxy.serve(req, conn_info, &state).await?;
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    state.mark_upgraded();
                }
                Ok::<_, std::convert::Infallible>(resp.map(|body| CountedBody { body, _guard: guard }))
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(err) = conn.await {
                tracing::debug!(%peer, error = %err, "connection ended with error");
            }
        });
    }
    drop(listener);
    tracing::info!(?local, "listener closed; draining connections");
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(?local, timeout = ?config.drain_timeout, "drain deadline reached; closing remaining connections");
    }
}

/// A response body that keeps its request counted on the connection until
/// it is fully sent (the idle timer does not run meanwhile).
struct CountedBody<B> {
    body: B,
    _guard: RequestGuard,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
