//! BalancerPolicy → how a backend is balanced: algorithm, hash key and
//! endpoint weights. A policy attaches to a Service (and optionally one of
//! its ports); when several target the same Service port, the oldest wins
//! and the others are reported.

use std::sync::Arc;

use std::time::Duration;
use switchyard_crds::{AffinityType, Algorithm as PolicyAlgorithm, BalancerPolicy, HashKey};
use switchyard_dataplane::balance::Algorithm;

use switchyard_crds::{HealthCheckType, RetryOn};
use switchyard_dataplane::health::PassiveConfig;
use switchyard_dataplane::health::active::{ActiveCheck, CheckKind};
use switchyard_dataplane::snapshot::RetryPolicy;
use switchyard_dataplane::{AffinityCookie, BalanceConfig, Endpoint, HashOn};

use super::diagnostics::{Diagnostic, Reason};
use crate::world::{ObjectKey, World};

const KIND: &str = "BalancerPolicy";

/// Policies targeting `service` (and `port`, when they name one), oldest
/// first.
fn targeting<'w>(
    world: &'w World,
    namespace: &str,
    service: &str,
    port: Option<i32>,
) -> Vec<(&'w ObjectKey, &'w BalancerPolicy)> {
    let mut found: Vec<_> = world
        .policies
        .iter()
        .filter(|(key, p)| {
            let t = &p.spec.target_ref;
            key.namespace == namespace
                && t.kind == "Service"
                && t.name == service
                && (t.port.is_none() || port.is_none() || t.port == port)
        })
        .map(|(key, p)| (key, &**p))
        .collect();
    found.sort_by_key(|(key, p)| super::precedence(&p.metadata, key));
    found
}

/// The policy in force for one Service port.
pub(super) fn for_service_port<'w>(
    world: &'w World,
    namespace: &str,
    service: &str,
    port: i32,
) -> Option<&'w BalancerPolicy> {
    targeting(world, namespace, service, Some(port)).first().map(|(_, p)| *p)
}

/// The balancing of `policy`; sets each endpoint's weight from
/// `endpointWeights` (first matching entry; default 1).
pub(super) fn apply(policy: &BalancerPolicy, endpoints: &mut [Endpoint]) -> BalanceConfig {
    let spec = &policy.spec;
    for ep in endpoints.iter_mut() {
        let ip = ep.addr.ip().to_string();
        let matched = spec.endpoint_weights.iter().find(|w| {
            w.address.as_deref().is_none_or(|a| a == ip)
                && w.pod_name.as_deref().is_none_or(|g| ep.pod.as_deref().is_some_and(|pod| glob(g, pod)))
                && w.zone.as_deref().is_none_or(|z| ep.zone.as_deref() == Some(z))
                && (w.address.is_some() || w.pod_name.is_some() || w.zone.is_some())
        });
        ep.weight = matched.map_or(1, |w| w.weight);
    }
    let algorithm = match spec.algorithm {
        PolicyAlgorithm::RoundRobin => Algorithm::RoundRobin,
        PolicyAlgorithm::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        PolicyAlgorithm::LeastConnections => Algorithm::LeastConnections,
        PolicyAlgorithm::IpHash => Algorithm::IpHash,
        PolicyAlgorithm::PowerOfTwoChoices => Algorithm::PowerOfTwoChoices,
        PolicyAlgorithm::ConsistentHash => Algorithm::ConsistentHash,
    };
    let name = |n: &Option<String>| Arc::<str>::from(n.as_deref().unwrap_or_default());
    let hash_on = match &spec.consistent_hash {
        None => HashOn::SourceIp,
        Some(h) => match h.key {
            HashKey::SourceIp => HashOn::SourceIp,
            HashKey::Header => HashOn::Header(name(&h.header)),
            HashKey::Cookie => HashOn::Cookie(name(&h.cookie)),
            HashKey::QueryParameter => HashOn::QueryParameter(name(&h.query_parameter)),
        },
    };
    let (active_check, passive) = health_config(policy);
    let duration =
        |d: Option<&String>| d.and_then(|d| switchyard_crds::parse_duration(d).ok()).filter(|d| !d.is_zero());
    let retries = match &spec.retries {
        None => RetryPolicy::default(),
        Some(r) => {
            // An empty retryOn means the default set.
            let on = |what: RetryOn| r.retry_on.is_empty() || r.retry_on.contains(&what);
            RetryPolicy {
                attempts: r.attempts.unwrap_or(1),
                on_connect_failure: on(RetryOn::ConnectFailure),
                on_reset: on(RetryOn::Reset),
                on_unavailable: on(RetryOn::Unavailable),
            }
        }
    };
    BalanceConfig {
        algorithm,
        hash_on,
        affinity: affinity_cookie(policy),
        active_check,
        passive,
        slow_start: duration(spec.slow_start.as_ref().map(|s| &s.window)),
        // `0s` means no limit.
        request_timeout: spec
            .timeouts
            .as_ref()
            .and_then(|t| t.request.as_deref())
            .and_then(|d| switchyard_crds::parse_duration(d).ok())
            .map(|d| if d.is_zero() { Duration::MAX } else { d }),
        connect_timeout: spec
            .timeouts
            .as_ref()
            .and_then(|t| t.connect.as_deref())
            .and_then(|d| switchyard_crds::parse_duration(d).ok())
            .filter(|d| !d.is_zero()),
        retries,
    }
}

/// `healthCheck` → the dataplane's active check and passive settings
/// (defaults where a field is absent or, in standalone mode, invalid).
fn health_config(policy: &BalancerPolicy) -> (Option<ActiveCheck>, PassiveConfig) {
    let duration = |d: Option<&String>, default: Duration| {
        d.and_then(|d| switchyard_crds::parse_duration(d).ok()).filter(|d| !d.is_zero()).unwrap_or(default)
    };
    let health = policy.spec.health_check.as_ref();
    let active = health.and_then(|h| h.active.as_ref()).map(|a| {
        let defaults = ActiveCheck::default();
        ActiveCheck {
            kind: match a.kind {
                HealthCheckType::Http => CheckKind::Http,
                HealthCheckType::Tcp => CheckKind::Tcp,
            },
            path: a.path.as_deref().unwrap_or("/").into(),
            port: a.port.and_then(|p| u16::try_from(p).ok()),
            host: a.host.as_deref().map(Into::into),
            interval: duration(a.interval.as_ref(), defaults.interval),
            timeout: duration(a.timeout.as_ref(), defaults.timeout),
            healthy_threshold: a.healthy_threshold.unwrap_or(defaults.healthy_threshold),
            unhealthy_threshold: a.unhealthy_threshold.unwrap_or(defaults.unhealthy_threshold),
            expected: a
                .expected_statuses
                .as_ref()
                .map(|list| list.iter().filter_map(|r| status_range(r)).collect::<Vec<_>>())
                .filter(|l| !l.is_empty())
                .unwrap_or(defaults.expected),
        }
    });
    let defaults = PassiveConfig::default();
    let passive = match health.and_then(|h| h.passive.as_ref()) {
        None => defaults,
        Some(p) => PassiveConfig {
            consecutive_failures: p.consecutive_failures.unwrap_or(defaults.consecutive_failures),
            ejection_time: duration(p.ejection_time.as_ref(), defaults.ejection_time),
            max_ejection_percent: p.max_ejection_percent.unwrap_or(defaults.max_ejection_percent).min(100),
        },
    };
    (active, passive)
}

/// `"200-399"` or `"204"`.
fn status_range(text: &str) -> Option<(u16, u16)> {
    match text.split_once('-') {
        Some((lo, hi)) => Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)),
        None => text.trim().parse().ok().map(|s| (s, s)),
    }
}

/// Default affinity cookie name.
pub const DEFAULT_AFFINITY_COOKIE: &str = "SWITCHYARD_AFFINITY";

/// The cookie of `sessionAffinity: {type: Cookie}`, attributes rendered once.
fn affinity_cookie(policy: &BalancerPolicy) -> Option<AffinityCookie> {
    let affinity = policy.spec.session_affinity.as_ref().filter(|a| a.kind == AffinityType::Cookie)?;
    let c = affinity.cookie.as_ref();
    let mut attributes = format!("; Path={}", c.and_then(|c| c.path.as_deref()).unwrap_or("/"));
    if let Some(ttl) = c.and_then(|c| c.ttl.as_deref()).and_then(|t| switchyard_crds::parse_duration(t).ok()) {
        attributes.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if c.and_then(|c| c.http_only).unwrap_or(true) {
        attributes.push_str("; HttpOnly");
    }
    let same_site = c.and_then(|c| c.same_site.as_deref()).unwrap_or("Lax");
    attributes.push_str(&format!("; SameSite={same_site}"));
    Some(AffinityCookie {
        name: c.and_then(|c| c.name.as_deref()).unwrap_or(DEFAULT_AFFINITY_COOKIE).into(),
        attributes: attributes.into(),
        // Browsers drop SameSite=None cookies without Secure.
        secure: c.and_then(|c| c.secure).unwrap_or(false) || same_site == "None",
    })
}

/// `*` matches any run of characters; everything else literally. Greedy
/// with one backtrack point: O(pattern × text) at worst, never exponential
/// (a hostile pattern must not stall compile).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

pub(super) fn check_policies(world: &World, diagnostics: &mut Vec<Diagnostic>) {
    for (key, policy) in &world.policies {
        let spec = &policy.spec;
        let target = ObjectKey::new(key.namespace.clone(), spec.target_ref.name.clone());
        if spec.target_ref.kind != "Service" || !world.services.contains_key(&target) {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::TargetNotFound,
                format!("target {} {target} not found", spec.target_ref.kind),
            ));
            continue;
        }
        let rivals = targeting(world, &key.namespace, &spec.target_ref.name, spec.target_ref.port);
        let same_port = |p: &BalancerPolicy| p.spec.target_ref.port == spec.target_ref.port;
        if let Some((winner, _)) = rivals.iter().find(|(_, p)| same_port(p)).filter(|(k, _)| *k != key) {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::PolicyConflict,
                format!("BalancerPolicy {winner} (older) already targets this Service port; this one is ignored"),
            ));
        }
        if spec.algorithm == PolicyAlgorithm::ConsistentHash {
            let named = spec.consistent_hash.as_ref().is_some_and(|h| match h.key {
                HashKey::SourceIp => true,
                HashKey::Header => h.header.is_some(),
                HashKey::Cookie => h.cookie.is_some(),
                HashKey::QueryParameter => h.query_parameter.is_some(),
            });
            if !named {
                diagnostics.push(Diagnostic::new(
                    KIND,
                    key,
                    Reason::InvalidPolicy,
                    "ConsistentHash needs consistentHash.key and the header/cookie/queryParameter it names; hashing the source IP",
                ));
            }
        }
        if let Some(ttl) = spec.session_affinity.as_ref().and_then(|a| a.cookie.as_ref()?.ttl.as_deref())
            && let Err(err) = switchyard_crds::parse_duration(ttl)
        {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::InvalidPolicy,
                format!("sessionAffinity.cookie.ttl: {err}; using a session cookie"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("web-large-*", "web-large-7f9c"));
        assert!(glob("*", "anything"));
        assert!(glob("a*c*e", "abcde"));
        assert!(glob("exact", "exact"));
        assert_eq!(super::status_range("200-399"), Some((200, 399)));
        assert_eq!(super::status_range("204"), Some((204, 204)));
        assert_eq!(super::status_range("x"), None);
        assert!(!glob("web-large-*", "web-small-1"));
        assert!(!glob("a*c", "abd"));
        assert!(glob("*-1", "web-large-1"));
        assert!(!glob("", "x"));
        // A pathological pattern returns at once instead of backtracking
        // exponentially.
        let pattern = "*a".repeat(20) + "*b";
        assert!(!glob(&pattern, &"a".repeat(60)));
    }
}
