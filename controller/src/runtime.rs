//! Wiring shared by every serving mode: bind listeners, serve, and shut
//! down in order on SIGTERM/SIGINT:
//!
//! 1. `/readyz` turns 503 and HTTP/1 responses say `Connection: close`,
//!    while the listeners keep accepting for `--shutdown-delay` (the
//!    Service's endpoints and load balancers catch up meanwhile);
//! 2. the listeners close; idle keep-alive connections close, HTTP/2 ones
//!    get GOAWAY, in-flight requests and WebSockets get `--drain-timeout`;
//! 3. WebSockets still open get a Close frame (1001, going away); TCP
//!    service ports close with the other listeners and their connections
//!    get the same `--drain-timeout`;
//! 4. the process exits 0. A second signal skips what is left.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use switchyard_dataplane::SnapshotHandle;
use switchyard_dataplane::admin::{AdminState, serve_admin};
use switchyard_dataplane::listener::audit::HeadLimits;
use switchyard_dataplane::listener::{Drain, ListenerConfig, TlsTermination, listen, serve_http, serve_https};
use switchyard_dataplane::metrics::Metrics;
use switchyard_dataplane::proxy::{AccessLog, AccessLogTarget, Proxy, ProxyConfig, client_tls_config, parse_ca_pem};
use switchyard_dataplane::tcp::{TcpConfig, TcpServices};
use switchyard_dataplane::tls;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::DataplaneArgs;

/// The controller's own runtime, beside the dataplane's: one worker thread
/// (plus the blocking threads that compiles move to), so that watching,
/// parsing and compiling never occupy a thread that serves requests. Its
/// threads start `--controller-nice` above the process's nice value (0 by
/// default); at a lower priority the kernel lets a dataplane thread that
/// wakes up with a request run first, and on a saturated core config
/// changes wait longer. (Pacing during churn is `switchyard_dataplane::pace`.)
///
/// Dropping it stops its tasks without waiting for them.
pub struct ControlPlane {
    runtime: Option<tokio::runtime::Runtime>,
}

impl ControlPlane {
    pub fn start(nice: u8) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("switchyard-ctl")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()
            .context("cannot start the controller's runtime")?;
        Ok(Self { runtime: Some(runtime) })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("present until dropped").handle()
    }

    /// Frees replaced snapshots here, once the requests that held them
    /// finish, instead of on the dataplane thread of the last one.
    pub fn reclaim_snapshots(&self, snapshots: Arc<SnapshotHandle>) {
        self.handle().spawn(snapshots.reclaim_retired());
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Callable from async code, unlike dropping a runtime.
            runtime.shutdown_background();
        }
    }
}

/// Sets the calling thread's nice value to the main thread's plus `nice`
/// (Linux: the priority of a thread id is that thread's own; a new thread
/// inherits its creator's, which may already be lowered). A refusal is
/// logged, not fatal.
fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    let main = rustix::process::getpid();
    let tid = rustix::thread::gettid();
    let result = rustix::process::getpriority_process(Some(main))
        .and_then(|base| rustix::process::setpriority_process(Some(tid), (base + i32::from(nice)).min(19)));
    if let Err(err) = result {
        tracing::warn!(error = %err, "cannot lower the controller thread's priority; it competes with the dataplane");
    }
}

/// The dataplane of one process, with its listeners bound.
pub struct Dataplane {
    pub snapshots: Arc<SnapshotHandle>,
    pub metrics: Arc<Metrics>,
    args: DataplaneArgs,
    http: TcpListener,
    https: Option<TcpListener>,
    admin: TcpListener,
}

impl Dataplane {
    /// Binds the listeners now, so that a taken port fails at start with a
    /// clear error.
    pub async fn bind(args: &DataplaneArgs) -> anyhow::Result<Self> {
        let http =
            listen(args.http_addr).with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;
        let admin = TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;
        let https = match args.https_addr {
            Some(addr) => Some(listen(addr).with_context(|| format!("cannot listen on --https-addr {addr}"))?),
            None => None,
        };
        let https_addr = https.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string());
        tracing::info!(http = %http.local_addr()?, https = https_addr.as_deref().unwrap_or("off"),
            admin = %admin.local_addr()?, "listening");
        Ok(Self {
            snapshots: Arc::new(SnapshotHandle::default()),
            metrics: Arc::new(Metrics::new()),
            args: args.clone(),
            http,
            https,
            admin,
        })
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn serve_until_signal(self) -> anyhow::Result<()> {
        let access_log = self.access_log()?;
        let proxy_config = ProxyConfig {
            connect_timeout: self.args.connect_timeout,
            upstream_timeout: self.args.upstream_timeout,
            trusted_proxies: self.args.trusted_proxies.clone(),
            max_body_size: self.args.max_body_size,
            access_log: access_log.clone(),
            hsts: self.hsts()?,
            upstream_tls: self.upstream_tls()?,
            fast_h1: self.args.h1_fast_path,
            splice_bodies: self.args.splice_bodies,
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
            proxy_protocol: self.args.proxy_protocol,
            ..ListenerConfig::default()
        };
        let proxy = Arc::new(Proxy::new(self.snapshots.clone(), self.metrics.clone(), proxy_config));
        let admin_state = Arc::new(AdminState::new(self.snapshots.clone(), self.metrics.clone()));

        let drain = Drain::default();
        let (stop_admin, admin_stopped) = watch::channel(false);
        let https_task = self.https.map(|listener| {
            let tls = TlsTermination {
                config: tls::server_config(
                    Arc::new(tls::SniResolver::new(self.snapshots.clone(), tls::self_signed("switchyard-default"))),
                    self.args.tls_min_version,
                    self.args.tls_session_cache as usize,
                ),
                snapshots: self.snapshots.clone(),
                handshake_timeout: self.args.header_read_timeout,
                connect_timeout: self.args.connect_timeout,
            };
            tokio::spawn(serve_https(listener, proxy.clone(), listener_config.clone(), drain.clone(), tls))
        });
        // TCP service ports open on the HTTP listener's address.
        let tcp_config = TcpConfig {
            bind_ip: self.args.http_addr.ip(),
            connect_timeout: self.args.connect_timeout,
            max_connections: Some(self.args.max_connections).filter(|&n| n > 0),
        };
        let tcp_services = TcpServices::new(self.snapshots.clone(), self.metrics.clone(), tcp_config);
        let (stop_tcp, tcp_stopped) = watch::channel(false);
        let tcp_task = tokio::spawn(tcp_services.clone().run(tcp_stopped));
        let http_task = tokio::spawn(serve_http(self.http, proxy, listener_config, drain.clone()));
        let admin_task = tokio::spawn(serve_admin(self.admin, admin_state.clone(), wait_for(admin_stopped)));

        let mut signals = Signals::install()?;
        signals.next().await;
        tracing::info!(delay = ?self.args.shutdown_delay, "shutdown requested: readiness off, keep-alive ending");
        admin_state.shutting_down.store(true, Ordering::Release);
        drain.close_keep_alive();
        let sequence = async {
            tokio::time::sleep(self.args.shutdown_delay).await;
            tracing::info!(drain = ?self.args.drain_timeout, "shutdown delay over: no longer accepting");
            drain.stop_accepting();
            let _ = stop_tcp.send(true);
            tcp_task.await.context("TCP services task")?;
            let (https, http, ()) = tokio::join!(
                async {
                    match https_task {
                        Some(task) => task.await.context("HTTPS listener task"),
                        None => Ok(()),
                    }
                },
                async { http_task.await.context("HTTP listener task") },
                tcp_services.drain(self.args.drain_timeout),
            );
            https.and(http)
        };
        let drained = tokio::select! {
            done = sequence => done,
            () = signals.next() => {
                tracing::warn!("second signal: exiting without finishing the drain");
                Ok(())
            }
        };
        let _ = stop_admin.send(true);
        let admin = admin_task.await.context("admin listener task");
        // Whatever happened above, the last lines are written out.
        if let Some(log) = access_log {
            let flushed = tokio::task::spawn_blocking(move || log.flush(ACCESS_LOG_FLUSH)).await.unwrap_or(false);
            if !flushed {
                tracing::warn!(timeout = ?ACCESS_LOG_FLUSH, "the access log was not written out in time: its last lines may be lost");
            }
        }
        drained.and(admin)?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

impl Dataplane {
    /// `--hsts` as a header value (`None` when empty).
    fn hsts(&self) -> anyhow::Result<Option<http::HeaderValue>> {
        let value = self.args.hsts.trim();
        if value.is_empty() {
            return Ok(None);
        }
        Ok(Some(http::HeaderValue::try_from(value).with_context(|| format!("--hsts {value:?}: not a header value"))?))
    }

    /// TLS toward HTTPS/GRPCS backends: verified against
    /// `--upstream-ca-file` if given, else not verified (`None`).
    fn upstream_tls(&self) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        let Some(path) = &self.args.upstream_ca_file else { return Ok(None) };
        let pem = std::fs::read(path).with_context(|| format!("cannot read --upstream-ca-file {}", path.display()))?;
        let roots = parse_ca_pem(&pem).with_context(|| format!("--upstream-ca-file {}", path.display()))?;
        let config =
            client_tls_config(Some(roots)).with_context(|| format!("--upstream-ca-file {}", path.display()))?;
        tracing::info!(ca = %path.display(), "backend TLS certificates are verified against this CA");
        Ok(Some(Arc::new(config)))
    }

    /// Opens `--access-log`, if given.
    fn access_log(&self) -> anyhow::Result<Option<AccessLog>> {
        let Some(target) = &self.args.access_log else { return Ok(None) };
        let sample = self.args.access_log_sample;
        let log = AccessLog::start(&AccessLogTarget::parse(target), sample, self.metrics.access_log_dropped.clone())
            .with_context(|| format!("cannot open --access-log {target}"))?;
        tracing::info!(target = %target, sample, "access log on");
        Ok(Some(log))
    }
}

/// How long shutdown waits for the access log's last lines to be written.
const ACCESS_LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// SIGTERM and SIGINT, installed once so that a second one is seen too.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
