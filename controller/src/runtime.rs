//! Wiring shared by every serving mode: bind listeners, serve, and shut
//! down in order on SIGTERM/SIGINT (readiness first, then stop accepting,
//! then drain).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use switchyard_dataplane::SnapshotHandle;
use switchyard_dataplane::admin::{AdminState, serve_admin};
use switchyard_dataplane::listener::audit::HeadLimits;
use switchyard_dataplane::listener::{ListenerConfig, serve_http};
use switchyard_dataplane::metrics::Metrics;
use switchyard_dataplane::proxy::{Proxy, ProxyConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::DataplaneArgs;

/// The dataplane of one process, with its listeners bound.
pub struct Dataplane {
    pub snapshots: Arc<SnapshotHandle>,
    pub metrics: Arc<Metrics>,
    args: DataplaneArgs,
    http: TcpListener,
    admin: TcpListener,
}

impl Dataplane {
    /// Binds the listeners now, so that a taken port fails at start with a
    /// clear error.
    pub async fn bind(args: &DataplaneArgs) -> anyhow::Result<Self> {
        let http = TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;
        let admin = TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;
        tracing::info!(http = %http.local_addr()?, admin = %admin.local_addr()?, "listening");
        Ok(Self {
            snapshots: Arc::new(SnapshotHandle::default()),
            metrics: Arc::new(Metrics::new()),
            args: args.clone(),
            http,
            admin,
        })
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn serve_until_signal(self) -> anyhow::Result<()> {
        let proxy_config = ProxyConfig {
            connect_timeout: self.args.connect_timeout,
            upstream_timeout: self.args.upstream_timeout,
            trusted_proxies: self.args.trusted_proxies.clone(),
            max_body_size: self.args.max_body_size,
            ..ProxyConfig::default()
        };
        let listener_config = ListenerConfig {
            header_read_timeout: self.args.header_read_timeout,
            idle_timeout: self.args.idle_timeout,
            drain_timeout: self.args.drain_timeout,
            max_connections: Some(self.args.max_connections).filter(|&n| n > 0),
            head_limits: HeadLimits {
                max_request_line: self.args.max_request_line,
                max_header_bytes: self.args.max_header_bytes,
            },
            max_headers: self.args.max_headers,
        };
        let proxy = Arc::new(Proxy::new(self.snapshots.clone(), self.metrics.clone(), proxy_config));
        let admin_state = Arc::new(AdminState::new(self.snapshots.clone(), self.metrics.clone()));

        let (stop_http, http_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);
        let http_task = tokio::spawn(serve_http(self.http, proxy, listener_config, wait_for(http_stopped)));
        let admin_task = tokio::spawn(serve_admin(self.admin, admin_state.clone(), wait_for(admin_stopped)));

        shutdown_signal().await?;
        tracing::info!(delay = ?self.args.shutdown_delay, "shutdown requested: readiness off");
        admin_state.shutting_down.store(true, Ordering::Release);
        tokio::time::sleep(self.args.shutdown_delay).await;
        let _ = stop_http.send(true);
        http_task.await.context("HTTP listener task")?;
        let _ = stop_admin.send(true);
        admin_task.await.context("admin listener task")?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
