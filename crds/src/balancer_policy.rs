//! `BalancerPolicy` types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How traffic to one Service is spread over its endpoints.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "BalancerPolicy",
    namespaced,
    shortname = "bp",
    status = "BalancerPolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct BalancerPolicySpec {
    /// The Service this policy applies to, in the policy's namespace.
    pub target_ref: TargetRef,
    /// The load-balancing algorithm.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// What to hash on; required when `algorithm` is `ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
    /// Per-endpoint weights (default 1), first matching entry wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_weights: Vec<EndpointWeight>,
    /// Sticky sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

/// A reference to the Service a policy attaches to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Always `Service`.
    #[serde(default = "service_kind")]
    pub kind: String,
    /// Name of the Service in the policy's namespace.
    pub name: String,
    /// Service port the policy applies to; all ports when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

fn service_kind() -> String {
    "Service".to_string()
}

/// Load-balancing algorithms.
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
    /// Consistent hash of a request attribute (see `consistentHash`).
    ConsistentHash,
}

/// The request attribute a consistent hash is computed from.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    pub key: HashKey,
    /// Header name, when `key` is `Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Cookie name, when `key` is `Cookie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Query parameter name, when `key` is `QueryParameter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<String>,
}

/// Hash key sources.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum HashKey {
    #[serde(rename = "SourceIP")]
    SourceIp,
    Header,
    Cookie,
    QueryParameter,
}

/// A weight for the endpoints that match by address, pod name or zone.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointWeight {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Pod name from the EndpointSlice `targetRef`; `*` globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub weight: u32,
}

/// Sticky sessions.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    #[serde(rename = "type", default)]
    pub kind: AffinityType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<AffinityCookie>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AffinityType {
    #[default]
    None,
    Cookie,
}

/// Attributes of the affinity cookie.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AffinityCookie {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Gateway API duration (`1h`, `30m`); a session cookie when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
}

/// Observed state of a policy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BalancerPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unknown_algorithm_is_rejected() {
        let yaml = "targetRef: {name: web}\nalgorithm: Random\n";
        let err = serde_yaml::from_str::<BalancerPolicySpec>(yaml).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }
}
