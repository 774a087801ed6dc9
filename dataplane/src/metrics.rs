//! Prometheus metrics of the dataplane and of configuration propagation.
//!
//! One [`Metrics`] per process, shared by `Arc`. Label sets are bounded:
//! `host` is the host a route was *declared* for (never the raw Host header)
//! and `service` is `namespace/name`.

use std::sync::{Arc, OnceLock};

use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `switchyard_requests_total{host,service,code}`
    pub requests: IntCounterVec,
    /// `switchyard_request_duration_seconds{service}`: request received →
    /// response headers sent.
    pub request_duration: HistogramVec,
    /// `switchyard_snapshot_generation`
    pub snapshot_generation: IntGauge,
    /// `switchyard_config_reloads_total{result}` (`applied`, `unchanged`, `failed`)
    pub config_reloads: IntCounterVec,
    /// `switchyard_rejected_objects{kind,reason}`, as of the latest compile.
    pub rejected_objects: prometheus::IntGaugeVec,
    /// `switchyard_config_propagation_seconds`: watch event received →
    /// snapshot live.
    pub config_propagation: prometheus::Histogram,
    /// `switchyard_leader`: 1 while this replica holds the Lease.
    pub leader: IntGauge,
    /// `switchyard_status_writes_total{kind,result}`
    pub status_writes: IntCounterVec,
    /// `switchyard_upstream_requests_total{service,endpoint,code}`
    pub upstream_requests: IntCounterVec,
    /// `switchyard_upstream_in_flight{service,endpoint}`, refreshed from the
    /// live counters at each scrape.
    pub upstream_in_flight: prometheus::IntGaugeVec,
    /// `switchyard_affinity_total{result}` (`hit`, `new`, `repinned`)
    pub affinity: IntCounterVec,
    /// `switchyard_endpoint_health_transitions_total{service,to}`
    /// (`healthy`, `unhealthy`, `ejected`)
    pub health_transitions: IntCounterVec,
    /// `switchyard_endpoint_healthy{service,endpoint}`: 1 when the endpoint
    /// takes new requests; refreshed at scrape time.
    pub endpoint_healthy: prometheus::IntGaugeVec,
    /// `switchyard_upstream_errors_total{kind}`: failed upstream exchanges
    /// (`connect`, `timeout`, `reset`, `protocol`), and responses the
    /// upstream cut short mid-body (`truncated`).
    pub upstream_errors: IntCounterVec,
    /// `switchyard_access_log_dropped_total`: access-log lines lost (buffer
    /// full or write failed).
    pub access_log_dropped: prometheus::IntCounter,
    /// `switchyard_connections_released_total`: idle keep-alive
    /// connections that freed their HTTP buffers until their next request.
    pub connections_released: prometheus::IntCounter,
    /// `switchyard_h1_fast_path_requests_total`: requests answered on the
    /// HTTP/1.1 fast path (see `proxy::fast_h1`); the others
    /// went through hyper.
    pub h1_fast_path_requests: prometheus::IntCounter,
    /// `switchyard_spliced_body_bytes_total`: response body bytes the fast
    /// path moved from upstream to client inside the kernel (`splice`),
    /// never copied through the proxy's memory.
    pub spliced_body_bytes: prometheus::IntCounter,
    /// `switchyard_tls_handshakes_total{sni,result}`: `sni` is the served
    /// host the SNI matched (`default` otherwise: bounded), `result` is
    /// `ok` or `error`.
    pub tls_handshakes: IntCounterVec,
    /// `switchyard_tls_certificate_expiry_timestamp_seconds{secret}`:
    /// `notAfter` of each served certificate, as of the latest snapshot.
    pub tls_certificate_expiry: prometheus::IntGaugeVec,
    /// `switchyard_tcp_connections_total{service}`: connections relayed
    /// at L4 (TCP services and TLS passthrough), counted when accepted.
    pub tcp_connections: IntCounterVec,
    /// `switchyard_tcp_active_connections{service}`
    pub tcp_active: prometheus::IntGaugeVec,
    /// `switchyard_tcp_received_bytes_total{service}`: from clients.
    pub tcp_received_bytes: IntCounterVec,
    /// `switchyard_tcp_sent_bytes_total{service}`: to clients.
    pub tcp_sent_bytes: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests answered, by route host, backend service and status code.",
            ),
            &["host", "service", "code"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request received to response headers sent, by backend service.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["service"],
        )
        .expect("valid metric");
        let snapshot_generation =
            IntGauge::new("switchyard_snapshot_generation", "Generation of the routing snapshot in force.")
                .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("switchyard_config_reloads_total", "Configuration recompilations, by result."),
            &["result"],
        )
        .expect("valid metric");
        let rejected_objects = prometheus::IntGaugeVec::new(
            Opts::new(
                "switchyard_rejected_objects",
                "Objects (or parts of objects) rejected by the latest compile, by kind and reason.",
            ),
            &["kind", "reason"],
        )
        .expect("valid metric");
        let config_propagation = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "switchyard_config_propagation_seconds",
                "Time from a watch event (or file change) received to the snapshot that includes it being live.",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("valid metric");
        let leader = IntGauge::new("switchyard_leader", "1 while this replica is the leader (writes status).")
            .expect("valid metric");
        let status_writes = IntCounterVec::new(
            Opts::new("switchyard_status_writes_total", "Status writes to the API server, by object kind and result."),
            &["kind", "result"],
        )
        .expect("valid metric");
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_requests_total",
                "Requests forwarded, by service, endpoint and status code.",
            ),
            &["service", "endpoint", "code"],
        )
        .expect("valid metric");
        let upstream_in_flight = prometheus::IntGaugeVec::new(
            Opts::new(
                "switchyard_upstream_in_flight",
                "Requests in flight (until the response body ends), by endpoint.",
            ),
            &["service", "endpoint"],
        )
        .expect("valid metric");
        let affinity = IntCounterVec::new(
            Opts::new("switchyard_affinity_total", "Sticky-session resolutions: hit, new or repinned."),
            &["result"],
        )
        .expect("valid metric");
        let health_transitions = IntCounterVec::new(
            Opts::new(
                "switchyard_endpoint_health_transitions_total",
                "Endpoint health changes, by service and new state.",
            ),
            &["service", "to"],
        )
        .expect("valid metric");
        let endpoint_healthy = prometheus::IntGaugeVec::new(
            Opts::new(
                "switchyard_endpoint_healthy",
                "1 when the endpoint takes new requests (active and passive checks).",
            ),
            &["service", "endpoint"],
        )
        .expect("valid metric");
        let access_log_dropped = prometheus::IntCounter::new(
            "switchyard_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind or a write failed.",
        )
        .expect("valid metric");
        let connections_released = prometheus::IntCounter::new(
            "switchyard_connections_released_total",
            "Times an idle HTTP/1 keep-alive connection freed its HTTP buffers until its next request.",
        )
        .expect("valid metric");
        let h1_fast_path_requests = prometheus::IntCounter::new(
            "switchyard_h1_fast_path_requests_total",
            "Requests answered on the HTTP/1.1 fast path (plain GET and HEAD to cleartext HTTP/1.1 backends).",
        )
        .expect("valid metric");
        let spliced_body_bytes = prometheus::IntCounter::new(
            "switchyard_spliced_body_bytes_total",
            "Response body bytes moved from upstream to a cleartext client inside the kernel (splice) on the HTTP/1.1 fast path.",
        )
        .expect("valid metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "switchyard_tls_handshakes_total",
                "TLS handshakes on the HTTPS listener, by served host and result.",
            ),
            &["sni", "result"],
        )
        .expect("valid metric");
        let tls_certificate_expiry = prometheus::IntGaugeVec::new(
            Opts::new(
                "switchyard_tls_certificate_expiry_timestamp_seconds",
                "notAfter (Unix time) of each served certificate, by Secret.",
            ),
            &["secret"],
        )
        .expect("valid metric");
        let tcp_connections = IntCounterVec::new(
            Opts::new(
                "switchyard_tcp_connections_total",
                "Connections relayed at L4 (TCP services, TLS passthrough), by service.",
            ),
            &["service"],
        )
        .expect("valid metric");
        let tcp_active = prometheus::IntGaugeVec::new(
            Opts::new("switchyard_tcp_active_connections", "L4 connections open now, by service."),
            &["service"],
        )
        .expect("valid metric");
        let tcp_received_bytes = IntCounterVec::new(
            Opts::new(
                "switchyard_tcp_received_bytes_total",
                "Bytes received from clients on L4 connections, by service (counted as they pass).",
            ),
            &["service"],
        )
        .expect("valid metric");
        let tcp_sent_bytes = IntCounterVec::new(
            Opts::new(
                "switchyard_tcp_sent_bytes_total",
                "Bytes sent to clients on L4 connections, by service (counted as they pass).",
            ),
            &["service"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_errors_total",
                "Upstream failures by kind: connect, timeout, reset, protocol, truncated (response cut mid-body).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for c in [
            Box::new(tls_handshakes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tls_certificate_expiry.clone()),
            Box::new(health_transitions.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(upstream_in_flight.clone()),
            Box::new(affinity.clone()),
            Box::new(config_propagation.clone()),
            Box::new(leader.clone()),
            Box::new(status_writes.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(snapshot_generation.clone()),
            Box::new(config_reloads.clone()),
            Box::new(rejected_objects.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(connections_released.clone()),
            Box::new(h1_fast_path_requests.clone()),
            Box::new(spliced_body_bytes.clone()),
            Box::new(tcp_connections.clone()),
            Box::new(tcp_active.clone()),
            Box::new(tcp_received_bytes.clone()),
            Box::new(tcp_sent_bytes.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            tls_handshakes,
            tls_certificate_expiry,
            registry,
            requests,
            request_duration,
            snapshot_generation,
            config_reloads,
            rejected_objects,
            config_propagation,
            leader,
            status_writes,
            upstream_requests,
            upstream_in_flight,
            affinity,
            health_transitions,
            endpoint_healthy,
            upstream_errors,
            access_log_dropped,
            connections_released,
            h1_fast_path_requests,
            spliced_body_bytes,
            tcp_connections,
            tcp_active,
            tcp_received_bytes,
            tcp_sent_bytes,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// The series a backend's requests are counted in most often, looked up on
/// first use and then kept beside the snapshot's backend: a request that
/// ends in `200` increments its counters without hashing label values or
/// taking the vectors' lock (three lookups per request otherwise). Other
/// statuses, and a second host routed to the same backend, are looked up
/// as before. A backend lives as long as its snapshot. One difference: the
/// admin endpoint removes the series of an endpoint that left the current
/// snapshot; a request still in flight on an older snapshot then counts
/// into the removed series (lost) where a lookup would have recreated it
/// until the next removal.
#[derive(Default)]
pub struct BackendSeries {
    /// `switchyard_request_duration_seconds{service}`.
    duration: OnceLock<Histogram>,
    /// `switchyard_requests_total{host,service,"200"}` for the first host.
    ok: OnceLock<(Arc<str>, IntCounter)>,
    /// `switchyard_upstream_requests_total{service,endpoint,"200"}`, one
    /// per endpoint.
    upstream_ok: Box<[OnceLock<IntCounter>]>,
}

impl std::fmt::Debug for BackendSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSeries").finish_non_exhaustive()
    }
}

impl BackendSeries {
    pub fn new(endpoints: usize) -> Self {
        Self { upstream_ok: (0..endpoints).map(|_| OnceLock::new()).collect(), ..Self::default() }
    }

    /// Counts a request in `switchyard_requests_total`.
    pub fn count_request(&self, metrics: &Metrics, host: &Arc<str>, service: &str, status: StatusCode) {
        if status == StatusCode::OK {
            let (cached, counter) =
                self.ok.get_or_init(|| (host.clone(), metrics.requests.with_label_values(&[host, service, "200"])));
            if cached == host {
                counter.inc();
                return;
            }
        }
        metrics.requests.with_label_values(&[host, service, status.as_str()]).inc();
    }

    /// Counts a request to endpoint `index` (labelled `label`) in
    /// `switchyard_upstream_requests_total`.
    pub fn count_upstream(&self, metrics: &Metrics, service: &str, index: usize, label: &str, status: StatusCode) {
        if status == StatusCode::OK
            && let Some(cell) = self.upstream_ok.get(index)
        {
            cell.get_or_init(|| metrics.upstream_requests.with_label_values(&[service, label, "200"])).inc();
            return;
        }
        metrics.upstream_requests.with_label_values(&[service, label, status.as_str()]).inc();
    }

    /// Records a request's duration in `switchyard_request_duration_seconds`.
    pub fn observe_duration(&self, metrics: &Metrics, service: &str, elapsed: std::time::Duration) {
        self.duration
            .get_or_init(|| metrics.request_duration.with_label_values(&[service]))
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_string()))
    }

    #[test]
    fn cached_series_count_in_the_same_series_as_lookups() {
        let metrics = Metrics::new();
        let series = BackendSeries::new(2);
        let (a, b): (Arc<str>, Arc<str>) = ("a.test".into(), "b.test".into());
        for _ in 0..3 {
            series.count_request(&metrics, &a, "ns/web", StatusCode::OK);
            series.count_upstream(&metrics, "ns/web", 1, "10.0.0.2:80", StatusCode::OK);
        }
        // A second host on the same backend, other statuses, and an index
        // out of range are looked up, into the same families.
        series.count_request(&metrics, &b, "ns/web", StatusCode::OK);
        series.count_request(&metrics, &a, "ns/web", StatusCode::NOT_FOUND);
        series.count_upstream(&metrics, "ns/web", 1, "10.0.0.2:80", StatusCode::BAD_GATEWAY);
        series.count_upstream(&metrics, "ns/web", 7, "10.0.0.9:80", StatusCode::OK);
        metrics.upstream_requests.with_label_values(&["ns/web", "10.0.0.2:80", "200"]).inc();
        series.observe_duration(&metrics, "ns/web", std::time::Duration::from_millis(3));

        let text = metrics.render();
        let requests = |host: &str, code: &str| {
            value(&text, &format!("switchyard_requests_total{{code=\"{code}\",host=\"{host}\",service=\"ns/web\"}}"))
        };
        assert_eq!(requests("a.test", "200").as_deref(), Some("3"), "{text}");
        assert_eq!(requests("b.test", "200").as_deref(), Some("1"));
        assert_eq!(requests("a.test", "404").as_deref(), Some("1"));
        let upstream = |endpoint: &str, code: &str| {
            value(
                &text,
                &format!(
                    "switchyard_upstream_requests_total{{code=\"{code}\",endpoint=\"{endpoint}\",service=\"ns/web\"}}"
                ),
            )
        };
        assert_eq!(upstream("10.0.0.2:80", "200").as_deref(), Some("4"), "cached and looked up share the series");
        assert_eq!(upstream("10.0.0.2:80", "502").as_deref(), Some("1"));
        assert_eq!(upstream("10.0.0.9:80", "200").as_deref(), Some("1"));
        assert_eq!(value(&text, "switchyard_request_duration_seconds_count{service=\"ns/web\"}").as_deref(), Some("1"));
    }
}
