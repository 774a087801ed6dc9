//! The admin listener: liveness, readiness, metrics and a debug view.
//!
//! * `GET /healthz` — 200 while the process is alive;
//! * `GET /readyz` — 200 once the first snapshot is live, 503 before and
//!   while shutting down;
//! * `GET /metrics` — Prometheus text;
//! * `GET /debug/snapshot` — JSON of virtual hosts, routes and backends.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::snapshot::SnapshotHandle;

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct AdminState {
    pub snapshots: Arc<SnapshotHandle>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts: readiness turns 503 first.
    pub shutting_down: AtomicBool,
    /// `(service, endpoint)` pairs of `switchyard_upstream_requests_total`
    /// that no snapshot listed at the last scrape: removed if still unlisted
    /// at the next one.
    unlisted: Mutex<HashSet<(String, String)>>,
}

impl AdminState {
    pub fn new(snapshots: Arc<SnapshotHandle>, metrics: Arc<Metrics>) -> Self {
        Self { snapshots, metrics, shutting_down: AtomicBool::new(false), unlisted: Mutex::default() }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.shutting_down.load(Ordering::Acquire) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
            "/readyz" if self.snapshots.is_ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "waiting for the first configuration\n"),
            "/metrics" => {
                self.refresh_in_flight();
                let mut resp = text(StatusCode::OK, self.metrics.render());
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                resp
            }
            "/debug/snapshot" => {
                let snapshot = self.snapshots.load();
                let body = serde_json::to_vec_pretty(&*snapshot).expect("snapshot serializes");
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl AdminState {
    /// Copies the live in-flight counters and health of the current
    /// snapshot's endpoints into `switchyard_upstream_in_flight` and
    /// `switchyard_endpoint_healthy`.
    fn refresh_in_flight(&self) {
        let snapshot = self.snapshots.load();
        let gauge = &self.metrics.upstream_in_flight;
        let healthy = &self.metrics.endpoint_healthy;
        gauge.reset();
        healthy.reset();
        let mut listed = HashSet::new();
        for backend in &snapshot.backends {
            for (i, endpoint) in backend.endpoints.iter().enumerate() {
                listed.insert((&*backend.service, &*endpoint.label));
                let labels = [&*backend.service, &*endpoint.label];
                let n = backend.load(i).map_or(0, |l| l.in_flight());
                gauge.with_label_values(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
                let up = backend.health(i).is_none_or(|h| h.is_available()) && !endpoint.draining;
                healthy.with_label_values(&labels).set(i64::from(up));
            }
        }
        self.prune_upstream_requests(&listed);
    }

    /// Drops the request counters of endpoints that left the configuration
    /// (pods replaced by a rollout get new addresses): otherwise every
    /// address ever served keeps its series, and memory grows with each
    /// rollout. An endpoint is dropped at the second scrape that finds it
    /// unlisted, so the first still reports its last requests.
    fn prune_upstream_requests(&self, listed: &HashSet<(&str, &str)>) {
        let counters = &self.metrics.upstream_requests;
        let mut unlisted = self.unlisted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut still = HashSet::new();
        for family in prometheus::core::Collector::collect(counters) {
            for metric in family.get_metric() {
                let label = |name: &str| metric.get_label().iter().find(|l| l.name() == name).map_or("", |l| l.value());
                let (service, endpoint, code) = (label("service"), label("endpoint"), label("code"));
                if listed.contains(&(service, endpoint)) {
                    continue;
                }
                let key = (service.to_string(), endpoint.to_string());
                if unlisted.contains(&key) {
                    let _ = counters.remove_label_values(&[service, endpoint, code]);
                } else {
                    still.insert(key);
                }
            }
        }
        *unlisted = still;
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Serves the admin endpoints until `shutdown` completes.
pub async fn serve_admin(listener: TcpListener, state: Arc<AdminState>, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.respond(&req)) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Backend, Endpoint, Snapshot};

    fn snapshot_with(ports: &[u16]) -> Snapshot {
        let endpoints = ports.iter().map(|&p| Endpoint::new(([10, 0, 0, 1], p).into())).collect();
        Snapshot { backends: vec![Backend::new("shop/web:80", "shop/web", endpoints)], ..Snapshot::default() }
    }

    #[test]
    fn request_counters_of_departed_endpoints_are_dropped_at_the_second_scrape() {
        let handle = Arc::new(SnapshotHandle::default());
        let state = AdminState::new(handle.clone(), Arc::new(Metrics::new()));
        handle.publish(snapshot_with(&[80, 81]));
        let count = |endpoint: &str, code: &str| {
            state.metrics.upstream_requests.with_label_values(&["shop/web", endpoint, code]).inc();
        };
        count("10.0.0.1:80", "200");
        count("10.0.0.1:81", "200");
        count("10.0.0.1:81", "502");
        let series = |endpoint: &str| {
            state
                .metrics
                .render()
                .lines()
                .filter(|l| l.starts_with("switchyard_upstream_requests_total") && l.contains(endpoint))
                .count()
        };

        // A rollout replaces :81 with :82.
        handle.publish(snapshot_with(&[80, 82]));
        state.refresh_in_flight();
        assert_eq!(series("10.0.0.1:81"), 2, "the first scrape still reports the departed endpoint");
        state.refresh_in_flight();
        assert_eq!(series("10.0.0.1:81"), 0, "gone at the second");
        assert_eq!(series("10.0.0.1:80"), 1, "listed endpoints keep theirs");

        // An endpoint that comes back before the second scrape keeps its counts.
        count("10.0.0.1:82", "200");
        handle.publish(snapshot_with(&[80]));
        state.refresh_in_flight();
        handle.publish(snapshot_with(&[80, 82]));
        state.refresh_in_flight();
        state.refresh_in_flight();
        assert_eq!(series("10.0.0.1:82"), 1);
    }
}
