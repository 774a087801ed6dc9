//! Active health checks: one probe loop per endpoint (and check), started
//! with random jitter so a large pool is not probed in lockstep, reconciled
//! against each new snapshot (new endpoints get a loop, removed ones lose
//! theirs).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::EndpointHealth;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// How an endpoint is probed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum CheckKind {
    /// `GET path`; healthy when the status is in `expected`.
    Http,
    /// Healthy when a TCP connection opens.
    Tcp,
}

/// BalancerPolicy `healthCheck.active`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ActiveCheck {
    pub kind: CheckKind,
    pub path: Arc<str>,
    /// Probe this port instead of the serving one.
    pub port: Option<u16>,
    /// Host header (default: the endpoint address).
    pub host: Option<Arc<str>>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive status ranges counted as healthy.
    pub expected: Vec<(u16, u16)>,
}

impl Default for ActiveCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::Http,
            path: "/".into(),
            port: None,
            host: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expected: vec![(200, 399)],
        }
    }
}

/// The probe loops in force.
#[derive(Debug)]
pub struct Prober {
    metrics: Arc<Metrics>,
    loops: Mutex<HashMap<(SocketAddr, ActiveCheck), ProbeLoop>>,
    /// Where probe loops run: the runtime current when the prober was made
    /// (the dataplane's), not the one `reconcile` is called from (the
    /// controller's, whose threads run at a lower priority).
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Debug)]
struct ProbeLoop {
    task: JoinHandle<()>,
    health: Weak<EndpointHealth>,
}

impl Prober {
    /// Probe loops will run on the runtime current now, if any (else on
    /// the one current at `reconcile`).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics, loops: Mutex::new(HashMap::new()), runtime: tokio::runtime::Handle::try_current().ok() }
    }

    /// Starts probes for endpoints of `snapshot` whose backend has an
    /// active check and stops the others. Call after each publish, from
    /// inside a runtime (unless the prober was made in one).
    pub fn reconcile(&self, snapshot: &Snapshot) {
        let mut wanted = HashMap::new();
        for backend in &snapshot.backends {
            let Some(check) = &backend.balance.active_check else { continue };
            for (i, endpoint) in backend.endpoints.iter().enumerate() {
                if let Some(health) = backend.health(i) {
                    wanted
                        .entry((endpoint.addr, check.clone()))
                        .or_insert_with(|| (health.clone(), backend.service.clone()));
                }
            }
        }
        let mut loops = self.loops.lock().unwrap_or_else(PoisonError::into_inner);
        loops.retain(|key, probe| {
            let keep = wanted.contains_key(key) && probe.health.strong_count() > 0;
            if !keep {
                probe.task.abort();
                // No check any more: the endpoint is judged by readiness alone.
                if let Some(h) = probe.health.upgrade() {
                    h.set_active(true);
                }
            }
            keep
        });
        for (key, (health, service)) in wanted {
            if loops.contains_key(&key) {
                continue;
            }
            let weak = Arc::downgrade(&health);
            let probes = probe_loop(weak.clone(), key.1.clone(), service, self.metrics.clone());
            let task = match &self.runtime {
                Some(runtime) => runtime.spawn(probes),
                None => tokio::spawn(probes),
            };
            loops.insert(key, ProbeLoop { task, health: weak });
        }
    }

    /// Probe loops running (one per endpoint and check).
    pub fn len(&self) -> usize {
        self.loops.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for probe in self.loops.lock().unwrap_or_else(PoisonError::into_inner).values() {
            probe.task.abort();
        }
    }
}

async fn probe_loop(health: Weak<EndpointHealth>, check: ActiveCheck, service: Arc<str>, metrics: Arc<Metrics>) {
    let Some(addr) = health.upgrade().map(|h| h.addr()) else { return };
    // Jitter: start somewhere within the first interval.
    let interval_ms = u64::try_from(check.interval.as_millis()).unwrap_or(u64::MAX).max(1);
    let jitter = RandomState::new().hash_one(addr) % interval_ms;
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let ok = probe(addr, &check).await;
        let Some(h) = health.upgrade() else { return };
        if ok {
            (successes, failures) = (successes + 1, 0);
        } else {
            (successes, failures) = (0, failures + 1);
        }
        let verdict = if !h.active_ok() && successes >= check.healthy_threshold.max(1) {
            Some(true)
        } else if h.active_ok() && failures >= check.unhealthy_threshold.max(1) {
            Some(false)
        } else {
            None
        };
        if let Some(healthy) = verdict
            && h.set_active(healthy)
        {
            let to = if healthy { "healthy" } else { "unhealthy" };
            tracing::warn!(endpoint = %addr, %service, to, reason = "active check", "endpoint health changed");
            metrics.health_transitions.with_label_values(&[&*service, to]).inc();
        }
        drop(h);
        tokio::time::sleep(check.interval).await;
    }
}

/// One probe, bounded by the check's timeout.
async fn probe(addr: SocketAddr, check: &ActiveCheck) -> bool {
    let target = SocketAddr::new(addr.ip(), check.port.unwrap_or(addr.port()));
    let attempt = async {
        let stream = TcpStream::connect(target).await.ok()?;
        if check.kind == CheckKind::Tcp {
            return Some(true);
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let host = check.host.as_deref().map_or_else(|| target.to_string(), str::to_string);
        let req = Request::get(&*check.path)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "switchyard-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let status = sender.send_request(req).await.ok()?.status().as_u16();
        Some(check.expected.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)))
    };
    matches!(tokio::time::timeout(check.timeout, attempt).await, Ok(Some(true)))
}
