//! Accept loops: one per listening socket, each connection served by
//! hyper's auto (HTTP/1.1 + h2c) builder with upgrades, and drained
//! gracefully on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::proxy::{ConnInfo, Proxy};

/// Listener tunables.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Time allowed for a client to send a request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may run after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(30), drain_timeout: Duration::from_secs(25) }
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
    builder.http1().timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
    // Idle HTTP/2 connections are pinged, and closed when the peer is gone.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);
    loop {
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
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { proxy.serve(req, conn_info).await }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
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
