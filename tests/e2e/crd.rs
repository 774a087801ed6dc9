//! End-to-end on a real kube-apiserver (started by `tests/run.sh`): the
//! checked-in BalancerPolicy CRD installs and becomes Established; the API
//! server accepts a policy for every algorithm, applies the schema defaults,
//! and rejects invalid policies with the schema's and the CEL rules' own
//! messages; `kubectl get` shows the printer columns and `kubectl explain`
//! documents the fields. No controller runs here: this is the API contract.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::cluster::{Cluster, cluster, kubectl};
use support::wait_for;
use switchyard_crds::BalancerPolicy;

/// The file users `kubectl apply` (the chart holds the same bytes).
const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/balancerpolicies.switchyard.dev.yaml");
const FIELD_MANAGER: &str = "switchyard-e2e";
const WAIT: Duration = Duration::from_secs(30);

/// Server-side applies the checked-in CRD file and waits for Established.
/// Idempotent, so tests running at once may all call it.
async fn install_checked_in_crd(c: &Cluster) {
    let text = std::fs::read_to_string(CRD_FILE).unwrap();
    assert_eq!(
        text,
        switchyard_crds::crd_yaml(),
        "{CRD_FILE} is stale: run UPDATE_CRDS=1 cargo test -p switchyard-crds"
    );
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    let name = crd.metadata.name.clone().unwrap();
    let api = Api::<CustomResourceDefinition>::all(c.client.clone());
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd)).await.unwrap();
    wait_for("CRD Established", WAIT, || async {
        let crd = api.get(&name).await.ok()?;
        let conditions = crd.status?.conditions?;
        conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
    })
    .await;
}

/// A policy named `name` on Service `web` whose spec is `extra` merged over
/// the targetRef.
fn policy(ns: &str, name: &str, extra: Value) -> Value {
    let mut spec = json!({"targetRef": {"kind": "Service", "name": "web", "port": 80}});
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "BalancerPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

async fn submit(api: &Api<BalancerPolicy>, object: &Value) -> Result<BalancerPolicy, kube::Error> {
    let name = object["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_is_accepted_and_the_schema_defaults_apply() {
    let c = cluster().await;
    install_checked_in_crd(&c).await;
    let ns = c.fresh_namespace("crd-valid").await;
    let api = Api::<BalancerPolicy>::namespaced(c.client.clone(), &ns);
    let weights = json!([{"address": "10.1.2.3", "weight": 3}, {"podName": "web-large-*", "weight": 4},
                         {"zone": "zone-a", "weight": 0}, {"address": "fd00::7", "podName": "web-0", "weight": 1000000}]);
    let valid = [
        ("round-robin", json!({"algorithm": "RoundRobin"})),
        ("weighted", json!({"algorithm": "WeightedRoundRobin", "endpointWeights": weights})),
        ("least-connections", json!({"algorithm": "LeastConnections"})),
        ("ip-hash", json!({"algorithm": "IPHash", "sessionAffinity": {"type": "None"}})),
        ("p2c", json!({"algorithm": "PowerOfTwoChoices"})),
        ("hash-source-ip", json!({"algorithm": "ConsistentHash", "consistentHash": {"key": "SourceIP"}})),
        (
            "hash-cookie",
            json!({"algorithm": "ConsistentHash", "consistentHash": {"key": "Cookie", "cookie": "session"}}),
        ),
        (
            "hash-query",
            json!({"algorithm": "ConsistentHash", "consistentHash": {"key": "QueryParameter", "queryParameter": "user"}}),
        ),
        // The issue's example (with the algorithm its consistentHash needs) and the health fields.
        (
            "full",
            json!({
                "algorithm": "ConsistentHash",
                "consistentHash": {"key": "Header", "header": "X-User"},
                "endpointWeights": [{"address": "10.1.2.3", "weight": 3}, {"podName": "web-large-*", "weight": 4}],
                "sessionAffinity": {"type": "Cookie", "cookie": {"name": "SWITCHYARD_AFFINITY", "ttl": "1h", "path": "/",
                                    "sameSite": "Lax", "secure": false, "httpOnly": true}},
                "healthCheck": {
                    "active": {"type": "HTTP", "path": "/healthz", "port": 8081, "host": "health.local", "interval": "5s",
                               "timeout": "1s", "healthyThreshold": 2, "unhealthyThreshold": 3,
                               "expectedStatuses": ["200-399", "418"]},
                    "passive": {"consecutiveFailures": 5, "ejectionTime": "30s", "maxEjectionPercent": 50}},
                "slowStart": {"window": "30s"},
                "timeouts": {"connect": "5s", "request": "60s", "idle": "300s"},
                "retries": {"attempts": 2, "retryOn": ["ConnectFailure", "Reset", "Unavailable"]}
            }),
        ),
    ];
    for (name, body) in valid {
        let sent = policy(&ns, name, body);
        let stored = submit(&api, &sent).await.unwrap_or_else(|e| panic!("policy {name} rejected: {e}"));
        // Nothing the server stored differs from what was sent (no pruned or rewritten field).
        let stored_spec = serde_json::to_value(&stored.spec).unwrap();
        for (key, value) in sent["spec"].as_object().unwrap() {
            assert_eq!(&stored_spec[key], value, "policy {name}: spec.{key} as stored");
        }
    }
    // Only a target: the server fills in the defaults.
    let minimal = json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "BalancerPolicy",
                         "metadata": {"name": "minimal", "namespace": ns},
                         "spec": {"targetRef": {"name": "web"}, "sessionAffinity": {}}});
    submit(&api, &minimal).await.unwrap();
    // Read untyped: serde would fill in the same defaults and hide a missing one.
    let resource = kube::api::ApiResource::erase::<BalancerPolicy>(&());
    let raw = Api::<kube::api::DynamicObject>::namespaced_with(c.client.clone(), &ns, &resource);
    let stored = raw.get("minimal").await.unwrap().data["spec"].clone();
    assert_eq!(stored["algorithm"], "RoundRobin", "{stored}");
    assert_eq!(stored["targetRef"]["kind"], "Service", "{stored}");
    assert_eq!(stored["sessionAffinity"]["type"], "None", "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_manifests_are_accepted() {
    let c = cluster().await;
    install_checked_in_crd(&c).await;
    let ns = c.fresh_namespace("crd-examples").await;
    let api = Api::<BalancerPolicy>::namespaced(c.client.clone(), &ns);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut applied = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Multi-document files (an application with its Ingress) hold no policy.
        let Ok(mut object) = serde_yaml::from_str::<Value>(&text) else { continue };
        if object["kind"] != "BalancerPolicy" {
            continue;
        }
        object["metadata"]["namespace"] = json!(ns);
        let stored = submit(&api, &object).await.unwrap_or_else(|e| panic!("{} rejected: {e}", path.display()));
        let stored_spec = serde_json::to_value(&stored.spec).unwrap();
        for (key, value) in object["spec"].as_object().unwrap() {
            assert_eq!(&stored_spec[key], value, "{}: spec.{key} as stored", path.display());
        }
        applied.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    applied.sort();
    assert_eq!(
        applied,
        [
            "consistent-hash.yaml",
            "ip-hash.yaml",
            "least-connections.yaml",
            "power-of-two-choices.yaml",
            "round-robin.yaml",
            "sticky-sessions.yaml",
            "weighted-round-robin.yaml"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_rejected_with_clear_messages() {
    let c = cluster().await;
    install_checked_in_crd(&c).await;
    let ns = c.fresh_namespace("crd-invalid").await;
    let api = Api::<BalancerPolicy>::namespaced(c.client.clone(), &ns);
    let cookie = |cookie: Value| json!({"sessionAffinity": {"type": "Cookie", "cookie": cookie}});
    let active = |check: Value| json!({"healthCheck": {"active": check}});
    // (object name, spec fields, the field the API server blames, what it says about it)
    let invalid: Vec<(&str, Value, &str, &str)> = vec![
        ("unknown-algorithm", json!({"algorithm": "Random"}), "spec.algorithm", r#"Unsupported value: "Random""#),
        (
            "hash-without-key",
            json!({"algorithm": "ConsistentHash"}),
            "spec.consistentHash",
            "Required value: consistentHash is required when algorithm is ConsistentHash",
        ),
        (
            "header-without-name",
            json!({"algorithm": "ConsistentHash", "consistentHash": {"key": "Header"}}),
            "spec.consistentHash.header",
            "Required value: header is required when key is Header",
        ),
        (
            "cookie-without-name",
            json!({"algorithm": "ConsistentHash", "consistentHash": {"key": "Cookie", "header": "X-User"}}),
            "spec.consistentHash.cookie",
            "Required value: cookie is required when key is Cookie",
        ),
        (
            "header-for-query-key",
            json!({"algorithm": "ConsistentHash",
                   "consistentHash": {"key": "QueryParameter", "queryParameter": "u", "header": "X-User"}}),
            "spec.consistentHash.header",
            "Forbidden: header may only be set when key is Header",
        ),
        (
            "weight-too-large",
            json!({"endpointWeights": [{"address": "10.1.2.3", "weight": 1_000_001}]}),
            "spec.endpointWeights[0].weight",
            "should be less than or equal to 1000000",
        ),
        (
            "weight-negative",
            json!({"endpointWeights": [{"zone": "a", "weight": -1}]}),
            "spec.endpointWeights[0].weight",
            "should be greater than or equal to 0",
        ),
        (
            "weight-without-selector",
            json!({"endpointWeights": [{"podName": "web-*", "weight": 2}, {"weight": 2}]}),
            "spec.endpointWeights[1]",
            "an endpointWeights entry must match endpoints by at least one of address, podName or zone",
        ),
        (
            "weight-bad-address",
            json!({"endpointWeights": [{"address": "web-1", "weight": 2}]}),
            "spec.endpointWeights[0].address",
            "address must be an IPv4 or IPv6 address",
        ),
        (
            "ttl-days",
            cookie(json!({"ttl": "1d"})),
            "spec.sessionAffinity.cookie.ttl",
            r#"Invalid value: "1d": spec.sessionAffinity.cookie.ttl in body should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'"#,
        ),
        (
            "ttl-too-short",
            cookie(json!({"ttl": "500ms"})),
            "spec.sessionAffinity.cookie.ttl",
            "ttl must be at least 1s",
        ),
        (
            "cookie-without-affinity",
            json!({"sessionAffinity": {"type": "None", "cookie": {"name": "SY"}}}),
            "spec.sessionAffinity.cookie",
            "Forbidden: cookie may only be set when type is Cookie",
        ),
        (
            "cookie-default-type",
            json!({"sessionAffinity": {"cookie": {"name": "SY"}}}),
            "spec.sessionAffinity.cookie",
            "Forbidden: cookie may only be set when type is Cookie",
        ),
        (
            "same-site-typo",
            cookie(json!({"sameSite": "Relaxed"})),
            "spec.sessionAffinity.cookie.sameSite",
            r#"Unsupported value: "Relaxed": supported values: "Strict", "Lax", "None""#,
        ),
        ("cookie-name-space", cookie(json!({"name": "my cookie"})), "spec.sessionAffinity.cookie.name", "should match"),
        ("cookie-path-relative", cookie(json!({"path": "app"})), "spec.sessionAffinity.cookie.path", "should match"),
        (
            "target-deployment",
            json!({"targetRef": {"kind": "Deployment", "name": "web"}}),
            "spec.targetRef.kind",
            r#"Unsupported value: "Deployment": supported values: "Service""#,
        ),
        (
            "target-port-zero",
            json!({"targetRef": {"name": "web", "port": 0}}),
            "spec.targetRef.port",
            "should be greater than or equal to 1",
        ),
        (
            "target-port-high",
            json!({"targetRef": {"name": "web", "port": 65536}}),
            "spec.targetRef.port",
            "should be less than or equal to 65535",
        ),
        ("target-no-name", json!({"targetRef": {"kind": "Service"}}), "spec.targetRef.name", "Required value"),
        (
            "tcp-with-path",
            active(json!({"type": "TCP", "path": "/healthz"})),
            "spec.healthCheck.active",
            "path, host and expectedStatuses apply to HTTP checks only",
        ),
        (
            "timeout-over-interval",
            active(json!({"interval": "1s", "timeout": "2s"})),
            "spec.healthCheck.active.timeout",
            "timeout must not be longer than interval",
        ),
        (
            "status-range-backwards",
            active(json!({"expectedStatuses": ["399-200"]})),
            "spec.healthCheck.active.expectedStatuses",
            "a status range must run from low to high, e.g. 200-399",
        ),
        (
            "threshold-zero",
            active(json!({"unhealthyThreshold": 0})),
            "spec.healthCheck.active.unhealthyThreshold",
            "should be greater than or equal to 1",
        ),
        (
            "ejection-percent",
            json!({"healthCheck": {"passive": {"maxEjectionPercent": 101}}}),
            "spec.healthCheck.passive.maxEjectionPercent",
            "should be less than or equal to 100",
        ),
        ("slow-start-no-window", json!({"slowStart": {}}), "spec.slowStart.window", "Required value"),
        (
            "retry-on-typo",
            json!({"retries": {"retryOn": ["Timeout"]}}),
            "spec.retries.retryOn[0]",
            r#"Unsupported value: "Timeout""#,
        ),
        (
            "retry-attempts",
            json!({"retries": {"attempts": 11}}),
            "spec.retries.attempts",
            "should be less than or equal to 10",
        ),
        ("timeout-format", json!({"timeouts": {"connect": "5 seconds"}}), "spec.timeouts.connect", "should match"),
    ];
    let mut wrong = Vec::new();
    for (name, body, field, message) in &invalid {
        match submit(&api, &policy(&ns, name, body.clone())).await {
            Ok(_) => wrong.push(format!("{name}: accepted, expected {field}: {message}")),
            Err(kube::Error::Api(status)) => {
                let m = &status.message;
                eprintln!("{name}: {m}");
                let blamed = m.contains(&format!("{field}: ")) && m.contains(message);
                if status.code != 422 || status.reason != "Invalid" || !blamed {
                    wrong.push(format!(
                        "{name}: {} {}: {m}\n    expected {field}: {message}",
                        status.code, status.reason
                    ));
                }
                // A rule that fails to evaluate is not a clear message.
                if m.contains("error evaluating") || m.contains("no such key") {
                    wrong.push(format!("{name}: a CEL rule failed to evaluate: {m}"));
                }
            }
            Err(e) => wrong.push(format!("{name}: unexpected error {e}")),
        }
    }
    assert!(wrong.is_empty(), "{} of {} invalid policies misjudged:\n{}", wrong.len(), invalid.len(), wrong.join("\n"));
    // None of them was stored.
    let stored = api.list(&Default::default()).await.unwrap();
    assert!(stored.items.is_empty(), "stored: {:?}", stored.items.iter().map(|p| &p.metadata.name).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explains_the_fields_and_lists_the_columns() {
    let c = cluster().await;
    install_checked_in_crd(&c).await;
    let ns = c.fresh_namespace("crd-kubectl").await;

    // The API server publishes a new CRD's OpenAPI shortly after it is
    // Established: retry until the explanation is complete.
    let expected = [
        "KIND:       BalancerPolicy",
        "VERSION:    v1alpha1",
        "FIELD: cookie <Object>",
        "Attributes of the affinity cookie",
        "httpOnly\t<boolean>",
        "name\t<string>",
        "Default SWITCHYARD_AFFINITY",
        "path\t<string>",
        "sameSite\t<string>",
        "enum: Strict, Lax, None",
        "secure\t<boolean>",
        "ttl\t<string>",
        "Gateway API duration",
    ];
    let explain = ["explain", "balancerpolicy.spec.sessionAffinity.cookie"];
    let start = std::time::Instant::now();
    let explained = loop {
        // A fresh cache each time: kubectl caches discovery and OpenAPI.
        let fresh = tempfile::tempdir().unwrap();
        let (ok, text) = kubectl(&c.kubeconfig, fresh.path(), &explain);
        if ok && expected.iter().all(|e| text.contains(e)) {
            break text;
        }
        assert!(start.elapsed() < WAIT, "kubectl explain never showed all of {expected:?}; last output:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("$ kubectl {}\n{explained}", explain.join(" "));
    let cache = tempfile::tempdir().unwrap();
    let (ok, spec) = kubectl(&c.kubeconfig, cache.path(), &["explain", "bp.spec.algorithm"]);
    assert!(ok && spec.contains("LeastConnections: the endpoint with the fewest in-flight requests"), "{spec}");
    let values: Vec<&str> = spec.lines().skip_while(|l| *l != "ENUM:").skip(1).take(6).map(str::trim).collect();
    assert_eq!(
        values,
        ["RoundRobin", "WeightedRoundRobin", "LeastConnections", "IPHash", "PowerOfTwoChoices", "ConsistentHash"],
        "{spec}"
    );

    // Printer columns, short name and category, with a status as the leader would write it.
    let api = Api::<BalancerPolicy>::namespaced(c.client.clone(), &ns);
    let body = json!({"algorithm": "IPHash", "sessionAffinity": {"type": "Cookie"}});
    submit(&api, &policy(&ns, "sticky", body)).await.unwrap();
    let status = json!({"status": {"observedGeneration": 1, "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "in force",
         "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}]}});
    api.patch_status("sticky", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let (ok, table) = kubectl(&c.kubeconfig, cache.path(), &["get", "bp", "-n", &ns]);
    eprintln!("$ kubectl get bp\n{table}");
    assert!(ok, "{table}");
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "TARGET", "ALGORITHM", "AFFINITY", "ACCEPTED", "AGE"], "{table}");
    assert_eq!(lines[1][..5], ["sticky", "web", "IPHash", "Cookie", "True"], "{table}");
    let (ok, by_category) = kubectl(&c.kubeconfig, cache.path(), &["get", "switchyard", "-n", &ns, "-o", "name"]);
    assert!(ok && by_category.contains("balancerpolicy.switchyard.dev/sticky"), "{by_category}");
}

/// The example in the BalancerPolicy issue (a contract used by checks
/// outside the repo) is accepted verbatim, including its `consistentHash`
/// block next to `algorithm: RoundRobin` (ignored by that algorithm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issue_contract_example_is_accepted_verbatim() {
    let c = cluster().await;
    install_checked_in_crd(&c).await;
    let ns = c.fresh_namespace("crd-contract").await;
    let api = Api::<BalancerPolicy>::namespaced(c.client.clone(), &ns);
    let mut object: Value =
        serde_yaml::from_str(include_str!("../../crds/testdata/balancer-policy-contract.yaml")).unwrap();
    object.as_object_mut().unwrap().remove("status");
    object["metadata"] = json!({"name": "web", "namespace": ns});
    submit(&api, &object).await.unwrap_or_else(|e| panic!("the issue's example is rejected: {e}"));
}
