//! `BalancerPolicy` types: how traffic to one Service is spread over its
//! endpoints (issue 4, "The API").
//!
//! Doc comments on fields become the schema's `description`, which is what
//! `kubectl explain balancerpolicy.spec...` prints, so they are written for
//! users. Bounds, enums and patterns live in `#[schemars(...)]`; rules that
//! relate fields to each other are CEL (`x-kubernetes-validations`), checked
//! by the API server before the controller ever sees an object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::{DURATION_PATTERN, at_least};
use crate::health::{HealthCheck, Retries, SlowStart, Timeouts};

/// An HTTP token (RFC 9110 section 5.6.2): what header, cookie and query
/// parameter names may hold. The same pattern the Gateway API uses.
pub(crate) const TOKEN_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$";

/// BalancerPolicy says how traffic to one Service is spread over its
/// endpoints: the load-balancing algorithm, per-endpoint weights and sticky
/// sessions. Attach it to a Service in the same namespace with targetRef; when
/// several policies target the same Service port, the oldest wins and the
/// others report Accepted=False.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "BalancerPolicy",
    derive = "PartialEq",
    namespaced,
    shortname = "bp",
    category = "switchyard",
    status = "BalancerPolicyStatus",
    doc = "BalancerPolicy says how traffic to one Service is spread over its endpoints: the load-balancing \
           algorithm, per-endpoint weights, sticky sessions and (reserved) health checks, timeouts and retries.",
    // The JSON form: clippy reads repeated `type_ = "string"` in the
    // structured form as duplicated attributes.
    printcolumn = r#"{"name": "Target", "type": "string", "jsonPath": ".spec.targetRef.name",
                      "description": "The Service the policy applies to"}"#,
    printcolumn = r#"{"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm",
                      "description": "The load-balancing algorithm"}"#,
    printcolumn = r#"{"name": "Affinity", "type": "string", "jsonPath": ".spec.sessionAffinity.type",
                      "description": "Session affinity type"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string",
                      "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status",
                      "description": "Whether the policy is in force"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.algorithm) || self.algorithm != 'ConsistentHash' || has(self.consistentHash)",
        "message": "consistentHash is required when algorithm is ConsistentHash",
        "fieldPath": ".consistentHash",
        "reason": "FieldValueRequired"
    }
]))]
pub struct BalancerPolicySpec {
    /// The Service this policy applies to, in the policy's namespace.
    pub target_ref: TargetRef,

    /// How a request picks an endpoint. One of:
    /// - RoundRobin (default): strict rotation over the ready endpoints.
    /// - WeightedRoundRobin: smooth weighted rotation, in the proportions of endpointWeights.
    /// - LeastConnections: the endpoint with the fewest in-flight requests relative to its weight; a request
    ///   counts until its response body ends, a WebSocket while it is open.
    /// - IPHash: consistent hash of the client IP, so a client keeps its endpoint and removing one endpoint moves
    ///   only that endpoint's clients.
    /// - PowerOfTwoChoices: of two distinct random endpoints, the less loaded one.
    /// - ConsistentHash: consistent hash of the request attribute named in consistentHash (required then).
    #[serde(default)]
    pub algorithm: Algorithm,

    /// The request attribute to hash on. Required when algorithm is ConsistentHash, and only allowed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,

    /// Weights for endpoints, matched by address, pod name or zone. The first entry that matches an endpoint
    /// gives its weight; endpoints no entry matches weigh 1. Weights steer WeightedRoundRobin, LeastConnections
    /// (load is divided by weight) and the hashing algorithms (share of the hash space).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub endpoint_weights: Vec<EndpointWeight>,

    /// Sticky sessions: keep a client on the endpoint that served it first, on top of any algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,

    /// Health checking of the endpoints (active probes and passive ejection). An endpoint takes new requests
    /// when it is ready in its EndpointSlice, not failed by the active check and not ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Ramp up the share of new or recovered endpoints over a window, for every algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<SlowStart>,

    /// Per-policy timeouts toward the endpoints, replacing the controller's flags. connect and request are
    /// acted upon; idle is reserved (accepted and validated, not yet acted upon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Retrying failed requests on another endpoint (idempotent requests without a body only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
}

// === impl TargetRef ===

/// A reference to the Service a policy attaches to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Kind of the target. Only Service is supported (the default).
    #[serde(default = "service_kind")]
    #[schemars(extend("enum" = ["Service"]))]
    pub kind: String,

    /// Name of the Service, in the policy's namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// A port of the Service (its port number, not the target port). When absent the policy applies to all
    /// ports of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

fn service_kind() -> String {
    "Service".to_string()
}

/// Load-balancing algorithms (see spec.algorithm).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Algorithm {
    /// Strict rotation over ready endpoints.
    #[default]
    RoundRobin,
    /// Smooth weighted rotation.
    WeightedRoundRobin,
    /// Fewest in-flight requests, weight-normalised.
    LeastConnections,
    /// Consistent hash of the client IP.
    #[serde(rename = "IPHash")]
    IpHash,
    /// Two random endpoints, the less loaded wins.
    PowerOfTwoChoices,
    /// Consistent hash of a request attribute (see spec.consistentHash).
    ConsistentHash,
}

// === impl ConsistentHash ===

/// The request attribute a consistent hash is computed from. Requests with
/// the same value go to the same endpoint, and removing one of N endpoints
/// moves only the values that were on it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.key != 'Header' || has(self.header)",
        "message": "header is required when key is Header",
        "fieldPath": ".header",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "!has(self.header) || self.key == 'Header'",
        "message": "header may only be set when key is Header",
        "fieldPath": ".header",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "self.key != 'Cookie' || has(self.cookie)",
        "message": "cookie is required when key is Cookie",
        "fieldPath": ".cookie",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "!has(self.cookie) || self.key == 'Cookie'",
        "message": "cookie may only be set when key is Cookie",
        "fieldPath": ".cookie",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "self.key != 'QueryParameter' || has(self.queryParameter)",
        "message": "queryParameter is required when key is QueryParameter",
        "fieldPath": ".queryParameter",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "!has(self.queryParameter) || self.key == 'QueryParameter'",
        "message": "queryParameter may only be set when key is QueryParameter",
        "fieldPath": ".queryParameter",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct ConsistentHash {
    /// What to hash. One of:
    /// - SourceIP: the client IP (the connection's peer, or the X-Forwarded-For hop when trusted proxies are
    ///   configured).
    /// - Header: the value of the request header named in header.
    /// - Cookie: the value of the cookie named in cookie.
    /// - QueryParameter: the value of the query parameter named in queryParameter.
    ///
    /// A request without the named header, cookie or parameter is balanced by weighted rotation instead.
    pub key: HashKey,

    /// Name of the request header to hash, e.g. X-User (case-insensitive). Required when key is Header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN))]
    pub header: Option<String>,

    /// Name of the cookie to hash. Required when key is Cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN))]
    pub cookie: Option<String>,

    /// Name of the query parameter to hash (case-sensitive). Required when key is QueryParameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN))]
    pub query_parameter: Option<String>,
}

/// Hash key sources (see spec.consistentHash.key).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum HashKey {
    /// The client IP.
    #[serde(rename = "SourceIP")]
    SourceIp,
    /// A request header.
    Header,
    /// A request cookie.
    Cookie,
    /// A URL query parameter.
    QueryParameter,
}

// === impl EndpointWeight ===

/// A weight for the endpoints an entry matches. An entry names at least one
/// of address, podName and zone; an endpoint matches when it matches all of
/// those the entry names.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.address) || has(self.podName) || has(self.zone)",
        "message": "an endpointWeights entry must match endpoints by at least one of address, podName or zone"
    }
]))]
pub struct EndpointWeight {
    /// The endpoint's IP address as it appears in the EndpointSlice, e.g. 10.1.2.3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isIP(self)", "message": "address must be an IPv4 or IPv6 address, e.g. 10.1.2.3"}
    ]))]
    pub address: Option<String>,

    /// Name of the Pod behind the endpoint (the EndpointSlice endpoint's targetRef). '*' matches any run of
    /// characters, e.g. web-large-*.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9*]([-a-z0-9.*]*[a-z0-9*])?$"))]
    pub pod_name: Option<String>,

    /// The endpoint's zone (the EndpointSlice endpoint's zone, from topology.kubernetes.io/zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub zone: Option<String>,

    /// Relative weight of the matching endpoints, 0 to 1000000; unmatched endpoints weigh 1. An endpoint with
    /// weight 3 gets three times the share of one with weight 1. Weight 0 gives the endpoint no new requests
    /// (as if it were draining) while it stays in the EndpointSlice.
    #[schemars(range(max = 1_000_000))]
    pub weight: u32,
}

// === impl SessionAffinity ===

/// Sticky sessions. With type Cookie, the first response sets a cookie that
/// names the endpoint (a digest of its address, so every Switchyard replica
/// resolves it the same way), and later requests carrying it go to that
/// endpoint for as long as it is ready; otherwise a new endpoint is picked
/// and the cookie reissued.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.cookie) || (has(self.type) && self.type == 'Cookie')",
        "message": "cookie may only be set when type is Cookie",
        "fieldPath": ".cookie",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct SessionAffinity {
    /// One of:
    /// - None (default): no stickiness.
    /// - Cookie: pin each client to an endpoint with a cookie (attributes in cookie).
    #[serde(rename = "type", default)]
    pub kind: AffinityType,

    /// Attributes of the affinity cookie; only with type Cookie. Every attribute has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<AffinityCookie>,
}

/// Session affinity types (see spec.sessionAffinity.type).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AffinityType {
    /// No stickiness.
    #[default]
    None,
    /// Stickiness by cookie.
    Cookie,
}

/// Attributes of the affinity cookie Switchyard sets.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AffinityCookie {
    /// Cookie name. Default SWITCHYARD_AFFINITY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN))]
    pub name: Option<String>,

    /// Lifetime of the cookie (its Max-Age), as a Gateway API duration: 1 to 4 number-unit pairs with units
    /// h, m, s or ms, e.g. 30m, 1h, 1h30m. When absent the cookie is a session cookie, dropped when the
    /// browser closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = at_least("1s", "ttl must be at least 1s (Max-Age counts whole seconds)")))]
    pub ttl: Option<String>,

    /// Path attribute of the cookie; must start with '/'. Default /.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^;\s]*$"))]
    pub path: Option<String>,

    /// SameSite attribute of the cookie: Strict, Lax or None. Default Lax. None makes the cookie Secure, as
    /// browsers require.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Strict", "Lax", "None"]))]
    pub same_site: Option<String>,

    /// Whether the cookie carries the Secure attribute (sent over HTTPS only). Default false; always set on
    /// responses served over HTTPS and when sameSite is None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,

    /// Whether the cookie carries the HttpOnly attribute (hidden from scripts). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
}

// === impl BalancerPolicyStatus ===

/// Observed state of a policy, written by the leading Switchyard replica.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BalancerPolicyStatus {
    /// The metadata.generation of the spec the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,

    /// Accepted: whether the policy is in force (False with reason PolicyConflict when an older policy already
    /// targets the same Service port). ResolvedRefs: whether the target Service exists (False with reason
    /// TargetNotFound when it does not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{ActiveHealthCheck, HealthCheckType, PassiveHealthCheck, RetryOn};

    /// The examples of issues 4 and 5, verbatim but for the comments, with
    /// the status the controller writes.
    const ISSUE_EXAMPLE: &str = include_str!("../testdata/balancer-policy-contract.yaml");

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn issue_example_deserializes_to_every_field() {
        let bp: BalancerPolicy = serde_yaml::from_str(ISSUE_EXAMPLE).unwrap();
        let spec = &bp.spec;
        assert_eq!(spec.target_ref, TargetRef { kind: "Service".into(), name: "web".into(), port: Some(80) });
        assert_eq!(spec.algorithm, Algorithm::RoundRobin);
        assert_eq!(
            spec.consistent_hash,
            Some(ConsistentHash { key: HashKey::Header, header: some("X-User"), cookie: None, query_parameter: None })
        );
        assert_eq!(
            spec.endpoint_weights,
            [
                EndpointWeight { address: some("10.1.2.3"), pod_name: None, zone: None, weight: 3 },
                EndpointWeight { address: None, pod_name: some("web-large-*"), zone: None, weight: 4 },
            ]
        );
        let cookie = AffinityCookie {
            name: some("SWITCHYARD_AFFINITY"),
            ttl: some("1h"),
            path: some("/"),
            same_site: some("Lax"),
            secure: Some(false),
            http_only: Some(true),
        };
        assert_eq!(spec.session_affinity, Some(SessionAffinity { kind: AffinityType::Cookie, cookie: Some(cookie) }));
        let health = spec.health_check.as_ref().unwrap();
        assert_eq!(
            health.active,
            Some(ActiveHealthCheck {
                kind: HealthCheckType::Http,
                path: some("/healthz"),
                port: Some(8081),
                host: some("health.local"),
                interval: some("5s"),
                timeout: some("1s"),
                healthy_threshold: Some(2),
                unhealthy_threshold: Some(3),
                expected_statuses: Some(vec!["200-399".into()]),
            })
        );
        assert_eq!(
            health.passive,
            Some(PassiveHealthCheck {
                consecutive_failures: Some(5),
                ejection_time: some("30s"),
                max_ejection_percent: Some(50)
            })
        );
        assert_eq!(spec.slow_start.as_ref().unwrap().window, "30s");
        let timeouts = spec.timeouts.as_ref().unwrap();
        assert_eq!((timeouts.connect.as_deref(), timeouts.request.as_deref()), (Some("5s"), Some("60s")));
        assert_eq!(timeouts.idle.as_deref(), Some("300s"));
        let retries = spec.retries.as_ref().unwrap();
        assert_eq!(retries.attempts, Some(2));
        assert_eq!(retries.retry_on, [RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Unavailable]);
        let status = bp.status.as_ref().unwrap();
        assert_eq!(status.observed_generation, Some(3));
        let types: Vec<_> = status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(types, [("Accepted", "True"), ("ResolvedRefs", "True")]);
    }

    #[test]
    fn issue_example_serializes_back_to_the_same_document() {
        let original: serde_json::Value = serde_yaml::from_str(ISSUE_EXAMPLE).unwrap();
        let bp: BalancerPolicy = serde_json::from_value(original.clone()).unwrap();
        let written = serde_json::to_value(&bp).unwrap();
        assert_eq!(written["spec"], original["spec"]);
        assert_eq!(written["status"], original["status"]);
        // And through YAML, as `kubectl get -o yaml` would show it.
        let again: BalancerPolicy = serde_yaml::from_str(&serde_yaml::to_string(&bp).unwrap()).unwrap();
        assert_eq!((again.spec, again.status), (bp.spec, bp.status));
    }

    #[test]
    fn contract_example_parses() {
        let yaml = r#"
apiVersion: switchyard.dev/v1alpha1
kind: BalancerPolicy
metadata: {name: web, namespace: default}
spec:
  targetRef: {kind: Service, name: web, port: 80}
  algorithm: IPHash
  consistentHash: {key: Header, header: X-User}
  endpointWeights:
    - {address: 10.1.2.3, weight: 3}
    - {podName: "web-large-*", weight: 4}
  sessionAffinity:
    type: Cookie
    cookie: {name: SWITCHYARD_AFFINITY, ttl: 1h, path: /, sameSite: Lax, secure: false, httpOnly: true}
"#;
        let bp: BalancerPolicy = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(bp.spec.algorithm, Algorithm::IpHash);
        assert_eq!(bp.spec.target_ref.port, Some(80));
        assert_eq!(bp.spec.endpoint_weights[1].pod_name.as_deref(), Some("web-large-*"));
        assert_eq!(bp.spec.session_affinity.unwrap().kind, AffinityType::Cookie);
    }

    #[test]
    fn a_minimal_policy_gets_the_defaults_and_writes_nothing_extra() {
        let spec: BalancerPolicySpec = serde_yaml::from_str("targetRef: {name: web}").unwrap();
        assert_eq!(spec.target_ref.kind, "Service");
        assert_eq!(spec.algorithm, Algorithm::RoundRobin);
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({"targetRef": {"kind": "Service", "name": "web"}, "algorithm": "RoundRobin"})
        );
        let affinity: SessionAffinity = serde_yaml::from_str("{}").unwrap();
        assert_eq!(affinity.kind, AffinityType::None);
    }

    #[test]
    fn unknown_algorithm_is_rejected() {
        let yaml = "targetRef: {name: web}\nalgorithm: Random\n";
        let err = serde_yaml::from_str::<BalancerPolicySpec>(yaml).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    /// The manifests under deploy/examples/ (one per algorithm, plus sticky
    /// sessions) parse as policies and say what their file name says.
    #[test]
    fn example_manifests_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let expected = [
            ("round-robin.yaml", Algorithm::RoundRobin),
            ("weighted-round-robin.yaml", Algorithm::WeightedRoundRobin),
            ("least-connections.yaml", Algorithm::LeastConnections),
            ("ip-hash.yaml", Algorithm::IpHash),
            ("power-of-two-choices.yaml", Algorithm::PowerOfTwoChoices),
            ("consistent-hash.yaml", Algorithm::ConsistentHash),
            ("sticky-sessions.yaml", Algorithm::LeastConnections),
        ];
        for (file, algorithm) in expected {
            let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(text.starts_with("# "), "{file} starts with a comment header");
            let bp: BalancerPolicy = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!((bp.spec.target_ref.kind.as_str(), bp.spec.algorithm), ("Service", algorithm), "{file}");
        }
    }

    /// Every property of the schema, at any depth, has a description, so
    /// `kubectl explain` never shows a bare field.
    #[test]
    fn every_field_is_documented() {
        fn walk(path: &str, schema: &serde_json::Value, undocumented: &mut Vec<String>) {
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                let path = format!("{path}.{name}");
                if property["description"].as_str().is_none_or(str::is_empty) {
                    undocumented.push(path.clone());
                }
                walk(&path, property, undocumented);
                walk(&format!("{path}[]"), &property["items"], undocumented);
            }
        }
        let crd: serde_json::Value = serde_yaml::from_str(&crate::crd_yaml()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut undocumented = Vec::new();
        for top in ["spec", "status"] {
            walk(top, &root["properties"][top], &mut undocumented);
        }
        assert!(root["properties"]["spec"]["properties"]["sessionAffinity"]["properties"]["cookie"].is_object());
        assert_eq!(undocumented, Vec::<String>::new());
    }
}
