//! The health fields of `BalancerPolicy.spec` (issue 5, "The API"):
//! `healthCheck`, `slowStart`, `timeouts` and `retries`.
//!
//! All are acted upon except `timeouts.idle`, which is reserved: in the schema, documented and validated, so that manifests
//! written today stay valid; their descriptions say so.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::{DURATION_PATTERN, at_least};

/// A status-code range: `200` or `200-399`.
const STATUS_RANGE_PATTERN: &str = "^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$";

/// Health checking of the endpoints: active probes and passive ejection.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Probes sent to every endpoint on a timer; an endpoint that fails unhealthyThreshold probes in a row leaves
    /// the rotation until it passes healthyThreshold in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealthCheck>,

    /// Outlier detection on live traffic: an endpoint that fails consecutiveFailures requests in a row is ejected
    /// for ejectionTime. Applies with defaults (5 failures, 30s, 50%) even when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveHealthCheck>,
}

// === impl ActiveHealthCheck ===

/// An active health check, run once per endpoint (with jitter), shared by
/// every route that uses the endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.type) && self.type == 'HTTP') || (!has(self.path) && !has(self.host) && !has(self.expectedStatuses))",
        "message": "path, host and expectedStatuses apply to HTTP checks only"
    },
    {
        "rule": format!(
            "!has(self.timeout) || !has(self.interval) || !self.timeout.matches('{DURATION_PATTERN}') \
             || !self.interval.matches('{DURATION_PATTERN}') || duration(self.timeout) <= duration(self.interval)"
        ),
        "message": "timeout must not be longer than interval",
        "fieldPath": ".timeout"
    }
]))]
pub struct ActiveHealthCheck {
    /// One of:
    /// - HTTP (default): a GET request, passed when the status is one of expectedStatuses.
    /// - TCP: a connection, passed when it opens.
    #[serde(rename = "type", default)]
    pub kind: HealthCheckType,

    /// Path of the HTTP GET, e.g. /healthz. HTTP only. Default /.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^\s]*$"))]
    pub path: Option<String>,

    /// Port to probe on each endpoint, when it differs from the serving port (the endpoint port, not the
    /// Service port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Host header of the HTTP GET. HTTP only. Default: the endpoint's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*$")
    )]
    pub host: Option<String>,

    /// Time between two probes of one endpoint, as a Gateway API duration (e.g. 5s); at least 100ms.
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = at_least("100ms", "interval must be at least 100ms")))]
    pub interval: Option<String>,

    /// How long a probe may take before it counts as failed, as a Gateway API duration (e.g. 1s); at most
    /// interval. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = at_least("1ms", "timeout must be greater than zero")))]
    pub timeout: Option<String>,

    /// Consecutive passed probes that return an endpoint to the rotation, 1 to 100. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,

    /// Consecutive failed probes that take an endpoint out of the rotation, 1 to 100. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,

    /// HTTP statuses that pass, each a code (204) or an inclusive range (200-399). HTTP only.
    /// Default ["200-399"].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(max = 7), regex(pattern = STATUS_RANGE_PATTERN)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": format!(
                "self.all(s, !s.matches('{STATUS_RANGE_PATTERN}') || size(s) == 3 \
                 || int(s.substring(0, 3)) <= int(s.substring(4, 7)))"
            ),
            "message": "a status range must run from low to high, e.g. 200-399"
        }
    ]))]
    pub expected_statuses: Option<Vec<String>>,
}

/// Active health check types (see spec.healthCheck.active.type).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum HealthCheckType {
    /// An HTTP GET.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// A TCP connect.
    #[serde(rename = "TCP")]
    Tcp,
}

// === impl PassiveHealthCheck ===

/// Passive outlier detection: connect errors, resets and 502/503/504
/// responses in a row eject an endpoint for a while.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PassiveHealthCheck {
    /// Failures in a row (connect errors, resets, 502, 503 and 504 answers) that eject an endpoint, 1 to 1000.
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,

    /// How long an ejected endpoint stays out, as a Gateway API duration (e.g. 30s); at least 1s. Doubles on each
    /// repeated ejection, up to a cap. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = at_least("1s", "ejectionTime must be at least 1s")))]
    pub ejection_time: Option<String>,

    /// Never eject more than this percentage of the Service's endpoints, 0 to 100. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: Option<u32>,
}

// === impl SlowStart ===

/// Slow start: a new or recovered endpoint is taken with a probability that
/// grows linearly from 0 to 1 over the window, so its share ramps up.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlowStart {
    /// How long a new or recovered endpoint takes to ramp up to its full share, as a Gateway API duration
    /// (e.g. 30s); at least 1s.
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = at_least("1s", "window must be at least 1s")))]
    pub window: String,
}

// === impl Timeouts ===

/// Timeouts toward the endpoints, as Gateway API durations (e.g. 5s, 1m).
/// connect and request are acted upon; idle is reserved (accepted and
/// validated, not yet acted upon).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Time to open a connection to an endpoint (502 when exceeded); greater than zero. Default: the
    /// --connect-timeout flag (5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = at_least("1ms", "connect must be greater than zero")))]
    pub connect: Option<String>,

    /// Time for an endpoint to answer with response headers (504 when exceeded); 0s for no limit. Default: the
    /// --upstream-timeout flag (60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub request: Option<String>,

    /// How long a connection to an endpoint may carry no bytes before it is closed; 0s for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub idle: Option<String>,
}

// === impl Retries ===

/// Retries on another endpoint. Only idempotent requests are retried, and
/// never after bytes of the response reached the client. Requests with a
/// body are not retried.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try, 0 to 10; 0 turns retries off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10))]
    pub attempts: Option<u32>,

    /// Failures that are retried, any of:
    /// - ConnectFailure: the endpoint could not be reached.
    /// - Reset: the connection was reset before a response.
    /// - Unavailable: the endpoint answered 503.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub retry_on: Vec<RetryOn>,
}

/// A retryable failure (see spec.retries.retryOn).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RetryOn {
    /// Connecting to the endpoint failed.
    ConnectFailure,
    /// The connection was reset before a response.
    Reset,
    /// The endpoint answered 503 Service Unavailable.
    Unavailable,
}
