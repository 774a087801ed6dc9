//! Ingresses annotated `switchyard.dev/ssl-passthrough` → the snapshot's
//! passthrough hosts.
//!
//! Each rule host of such an Ingress is passed through, by SNI, to the
//! backend of the rule's path `/` (else its first path): the HTTPS listener
//! relays those connections unterminated. The Ingress's HTTP routes are
//! compiled as usual (they serve the plain-HTTP listener). Ingresses come
//! in precedence order: a host already passed through by an older Ingress
//! stays with it, and so does a host that an older Ingress *without*
//! passthrough names (in its rules or `spec.tls`): an Ingress cannot take
//! another's HTTPS traffic by asking for passthrough. A younger Ingress
//! naming a host that an older one passes through is told so.

use std::collections::HashMap;

use k8s_openapi::api::networking::v1::{HTTPIngressRuleValue, Ingress, IngressBackend};
use switchyard_dataplane::passthrough::{InsertError, PassthroughHosts};

use super::backend::Backends;
use super::diagnostics::{Diagnostic, Reason};
use crate::world::ObjectKey;

const KIND: &str = "Ingress";

/// `"true"`: the Ingress's hosts are passed through, unterminated.
pub const SSL_PASSTHROUGH_ANNOTATION: &str = "switchyard.dev/ssl-passthrough";
/// The ingress-nginx spelling; ours wins when both are set.
pub const NGINX_SSL_PASSTHROUGH_ANNOTATION: &str = "nginx.ingress.kubernetes.io/ssl-passthrough";

pub(super) fn build(
    ingresses: &[(&ObjectKey, &Ingress)],
    backends: &mut Backends<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> PassthroughHosts {
    let mut hosts = PassthroughHosts::default();
    // Which Ingress passes each host through, to name it in a conflict.
    let mut owners: HashMap<String, &ObjectKey> = HashMap::new();
    let passing: Vec<bool> = ingresses.iter().map(|&(key, ing)| enabled(key, ing, diagnostics)).collect();
    if !passing.contains(&true) {
        // Nothing is passed through, so nothing can conflict with it.
        return hosts;
    }
    // The oldest Ingress without passthrough that names each host.
    let mut terminated: HashMap<String, (usize, &ObjectKey)> = HashMap::new();
    for (i, &(key, ing)) in ingresses.iter().enumerate().filter(|(i, _)| !passing[*i]) {
        for host in named_hosts(ing) {
            terminated.entry(host).or_insert((i, key));
        }
    }
    for (i, &(key, ing)) in ingresses.iter().enumerate() {
        if !passing[i] {
            continue;
        }
        let rules = ing.spec.as_ref().and_then(|s| s.rules.as_deref()).unwrap_or_default();
        if rules.is_empty() {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::InvalidHost,
                "ssl-passthrough: the Ingress has no rule, so no host to pass through (SNI selects the backend)",
            ));
        }
        for rule in rules {
            let Some(host) = rule.host.as_deref().filter(|h| !h.is_empty()) else {
                diagnostics.push(Diagnostic::new(
                    KIND,
                    key,
                    Reason::InvalidHost,
                    "ssl-passthrough: a rule without a host cannot be passed through (SNI selects the backend); \
                     its routes still serve plain HTTP",
                ));
                continue;
            };
            let Some(backend) = rule_backend(rule.http.as_ref()) else {
                diagnostics.push(Diagnostic::new(
                    KIND,
                    key,
                    Reason::UnsupportedBackend,
                    format!("ssl-passthrough: host {host:?} has no path, so no backend to pass it through to"),
                ));
                continue;
            };
            let Some(service) = &backend.service else {
                diagnostics.push(Diagnostic::new(
                    KIND,
                    key,
                    Reason::UnsupportedBackend,
                    format!("ssl-passthrough: host {host:?}: only Service backends can be passed through"),
                ));
                continue;
            };
            if let Some(older) = older_terminated(&terminated, &normalize(host), i) {
                diagnostics.push(Diagnostic::new(
                    KIND,
                    key,
                    Reason::RouteConflict,
                    format!("ssl-passthrough for host {host:?} ignored: Ingress {older} (older) serves it terminated"),
                ));
                continue;
            }
            let backend = backends.resolve(key, &key.namespace, service, diagnostics);
            match hosts.insert(host, backend) {
                Ok(()) => {
                    owners.insert(normalize(host), key);
                }
                Err(InsertError::InvalidHost(_)) => diagnostics.push(Diagnostic::new(
                    KIND,
                    key,
                    Reason::InvalidHost,
                    format!("ssl-passthrough: host {host:?} is not a DNS name or a one-label `*.` wildcard"),
                )),
                Err(InsertError::Taken { host: taken, backend: kept }) => {
                    let owner = owners.get(&taken).copied();
                    // A second rule of the same Ingress to the same backend
                    // says nothing new.
                    if owner == Some(key) && kept == backend {
                        continue;
                    }
                    let by = match owner {
                        Some(owner) if owner == key => "an earlier rule of this Ingress".to_string(),
                        Some(owner) => format!("Ingress {owner} (older)"),
                        None => "another Ingress".to_string(),
                    };
                    diagnostics.push(Diagnostic::new(
                        KIND,
                        key,
                        Reason::RouteConflict,
                        format!("ssl-passthrough for host {taken:?} ignored: {by} already passes it through"),
                    ));
                }
            }
        }
    }
    // Younger Ingresses naming a host passed through: their HTTPS for it
    // goes elsewhere (plain HTTP still reaches their routes).
    for (i, &(key, ing)) in ingresses.iter().enumerate().filter(|(i, _)| !passing[*i]) {
        for host in named_hosts(ing) {
            let Some(&owner) = owners.get(&host) else { continue };
            if ingresses.iter().position(|&(k, _)| k == owner).is_some_and(|o| o < i) {
                diagnostics.push(Diagnostic::new(
                    KIND,
                    key,
                    Reason::RouteConflict,
                    format!(
                        "HTTPS for host {host:?} is passed through by Ingress {owner} (older, ssl-passthrough); \
                         this Ingress serves it on plain HTTP only"
                    ),
                ));
            }
        }
    }
    hosts
}

/// Lowercase, without a trailing dot.
fn normalize(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    lower.strip_suffix('.').unwrap_or(&lower).to_string()
}

/// The hosts an Ingress names in its rules and its `spec.tls`, normalized.
fn named_hosts(ing: &Ingress) -> Vec<String> {
    let Some(spec) = &ing.spec else { return Vec::new() };
    let rules = spec.rules.iter().flatten().filter_map(|r| r.host.as_deref());
    let tls = spec.tls.iter().flatten().flat_map(|t| t.hosts.iter().flatten()).map(String::as_str);
    rules.chain(tls).filter(|h| !h.is_empty()).map(normalize).collect()
}

/// An Ingress older than the one at `index` that serves `host` terminated:
/// the same host, or for a wildcard `*.example.com`, a host one label
/// under it.
fn older_terminated<'k>(
    terminated: &HashMap<String, (usize, &'k ObjectKey)>,
    host: &str,
    index: usize,
) -> Option<&'k ObjectKey> {
    let older = |&(i, key): &(usize, &'k ObjectKey)| (i < index).then_some(key);
    if let Some(found) = terminated.get(host).and_then(older) {
        return Some(found);
    }
    let suffix = host.strip_prefix("*.")?;
    terminated
        .iter()
        .filter(|(h, _)| h.split_once('.').is_some_and(|(label, rest)| rest == suffix && !label.is_empty()))
        .filter_map(|(_, claim)| older(claim))
        .min()
}

/// The annotation's value: `true` or `false`; anything else is reported
/// and read as `false` (the default).
fn enabled(key: &ObjectKey, ing: &Ingress, diagnostics: &mut Vec<Diagnostic>) -> bool {
    let names = [SSL_PASSTHROUGH_ANNOTATION, NGINX_SSL_PASSTHROUGH_ANNOTATION];
    super::ingress::bool_annotation(key, ing, names, (false, "not passed through"), diagnostics)
}

/// The backend a rule's host is passed through to: its path `/`, else its
/// first path.
fn rule_backend(http: Option<&HTTPIngressRuleValue>) -> Option<&IngressBackend> {
    let paths = &http?.paths;
    let root = paths.iter().find(|p| p.path.as_deref().unwrap_or("/") == "/");
    root.or(paths.first()).map(|p| &p.backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{ClassConfig, Compiled, compile};
    use crate::source::manifest;
    use crate::world::World;

    fn compiled(docs: &[String]) -> Compiled {
        let mut world = World::default();
        for object in manifest::parse(&docs.concat()).unwrap().objects {
            world.insert(object);
        }
        compile(&world, &ClassConfig::default())
    }

    /// An Ingress `name` (created at `created`, if given) with
    /// `annotations` (flow-mapping entries) and `rules` (YAML list items).
    fn mk_ingress(name: &str, created: Option<&str>, annotations: &str, rules: &str) -> String {
        let ts = created.map(|t| format!(", creationTimestamp: \"{t}\"")).unwrap_or_default();
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
             metadata: {{name: {name}, namespace: default{ts}, annotations: {{{annotations}}}}}\n\
             spec:\n  ingressClassName: switchyard\n  rules:\n{rules}"
        )
    }

    /// A rule for `host` (empty: none) with `(path, service)` paths.
    fn mk_rule(host: &str, paths: &[(&str, &str)]) -> String {
        let host = if host.is_empty() { String::new() } else { format!("host: \"{host}\"\n    ") };
        let paths: String = paths
            .iter()
            .map(|(path, svc)| {
                format!(
                    "      - {{path: {path}, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 443}}}}}}}}\n"
                )
            })
            .collect();
        format!("  - {host}http:\n      paths:\n{paths}")
    }

    const ON: &str = "switchyard.dev/ssl-passthrough: \"true\"";

    /// `(host, backend id)` of every passthrough host.
    fn passed(c: &Compiled) -> Vec<(String, String)> {
        let hosts = c.snapshot.passthrough.hosts();
        hosts.iter().map(|h| (h.host.to_string(), c.snapshot.backends[h.backend].id.to_string())).collect()
    }

    fn reasons(c: &Compiled) -> Vec<(String, Reason)> {
        c.diagnostics
            .iter()
            .filter(|d| d.reason != Reason::ServiceNotFound)
            .map(|d| (d.object.to_string(), d.reason))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn annotated_hosts_pass_to_the_root_path_else_the_first_path() {
        let c = compiled(&[
            mk_ingress(
                "a",
                None,
                ON,
                &(mk_rule("A.test", &[("/x", "x"), ("/", "root")])
                    + &mk_rule("b.test", &[("/y", "first"), ("/z", "z")])),
            ),
            mk_ingress(
                "w",
                None,
                "nginx.ingress.kubernetes.io/ssl-passthrough: \"True\"",
                &mk_rule("*.w.test", &[("/", "wild")]),
            ),
            mk_ingress("plain", None, "", &mk_rule("plain.test", &[("/", "p")])),
            mk_ingress("off", None, "switchyard.dev/ssl-passthrough: \"false\"", &mk_rule("off.test", &[("/", "o")])),
        ]);
        assert_eq!(
            passed(&c),
            pairs(&[("*.w.test", "default/wild:443"), ("a.test", "default/root:443"), ("b.test", "default/first:443")])
        );
        assert_eq!(c.snapshot.passthrough.lookup("x.w.test"), c.snapshot.passthrough.lookup("y.w.test"));
        assert_eq!(reasons(&c), []);
        // The HTTP routes of a passthrough Ingress are compiled as usual.
        assert!(c.snapshot.router.route(Some("a.test"), "/x").is_some());
    }

    #[test]
    fn ours_wins_over_the_nginx_spelling_and_bad_values_mean_false() {
        let c = compiled(&[
            mk_ingress(
                "ours-off",
                None,
                "switchyard.dev/ssl-passthrough: \"false\", nginx.ingress.kubernetes.io/ssl-passthrough: \"true\"",
                &mk_rule("a.test", &[("/", "s")]),
            ),
            mk_ingress(
                "ours-on",
                None,
                "switchyard.dev/ssl-passthrough: \"true\", nginx.ingress.kubernetes.io/ssl-passthrough: \"false\"",
                &mk_rule("b.test", &[("/", "s")]),
            ),
            mk_ingress(
                "bad",
                None,
                "nginx.ingress.kubernetes.io/ssl-passthrough: \"yes\"",
                &mk_rule("c.test", &[("/", "s")]),
            ),
        ]);
        assert_eq!(passed(&c), pairs(&[("b.test", "default/s:443")]));
        assert_eq!(reasons(&c), [("default/bad".to_string(), Reason::InvalidAnnotation)]);
        let message = &c.diagnostics.iter().find(|d| d.reason == Reason::InvalidAnnotation).unwrap().message;
        assert!(
            message.contains("nginx.ingress.kubernetes.io/ssl-passthrough") && message.contains("yes"),
            "{message}"
        );
    }

    #[test]
    fn the_oldest_ingress_keeps_a_host_and_hostless_rules_are_reported() {
        let c = compiled(&[
            mk_ingress("newer", Some("2026-02-01T00:00:00Z"), ON, &mk_rule("a.test", &[("/n", "new")])),
            mk_ingress("older", Some("2026-01-01T00:00:00Z"), ON, &mk_rule("A.TEST", &[("/", "old")])),
            mk_ingress("nohost", None, ON, &(mk_rule("", &[("/", "s")]) + &mk_rule("ok.test", &[("/", "s")]))),
            mk_ingress(
                "twice",
                None,
                ON,
                &(mk_rule("t.test", &[("/", "one")])
                    + &mk_rule("t.test", &[("/a", "one")])
                    + &mk_rule("t.test", &[("/b", "two")])),
            ),
            mk_ingress("badhost", None, ON, &mk_rule("bad_host.test", &[("/", "s")])),
        ]);
        assert_eq!(
            passed(&c),
            pairs(&[("a.test", "default/old:443"), ("ok.test", "default/s:443"), ("t.test", "default/one:443")])
        );
        let mut got = reasons(&c);
        got.dedup();
        assert_eq!(
            got,
            [
                ("default/badhost".to_string(), Reason::InvalidHost),
                ("default/newer".to_string(), Reason::RouteConflict),
                ("default/nohost".to_string(), Reason::InvalidHost),
                ("default/twice".to_string(), Reason::RouteConflict),
            ]
        );
        let message = |name: &str| {
            let d = c.diagnostics.iter().find(|d| d.object.name == name && d.reason == Reason::RouteConflict);
            d.unwrap().message.clone()
        };
        assert!(message("newer").contains("Ingress default/older (older)"), "{}", message("newer"));
        assert!(message("twice").contains("an earlier rule of this Ingress"), "{}", message("twice"));
    }

    #[test]
    fn no_annotation_no_passthrough() {
        let c = compiled(&[mk_ingress("plain", None, "", &mk_rule("a.test", &[("/", "s")]))]);
        assert!(c.snapshot.passthrough.is_empty());
    }

    #[test]
    fn passthrough_cannot_take_a_host_an_older_ingress_serves_terminated() {
        let c = compiled(&[
            mk_ingress("shop", Some("2026-01-01T00:00:00Z"), "", &mk_rule("shop.test", &[("/", "shop")])),
            mk_ingress("under", Some("2026-01-01T00:00:00Z"), "", &mk_rule("a.wild.test", &[("/", "a")])),
            mk_ingress("thief", Some("2026-02-01T00:00:00Z"), ON, &mk_rule("shop.test", &[("/", "evil")])),
            mk_ingress("wide", Some("2026-02-01T00:00:00Z"), ON, &mk_rule("*.wild.test", &[("/", "evil")])),
            mk_ingress("first", Some("2026-01-01T00:00:00Z"), ON, &mk_rule("p.test", &[("/", "db")])),
            mk_ingress("late", Some("2026-03-01T00:00:00Z"), "", &mk_rule("p.test", &[("/", "web")])),
        ]);
        assert_eq!(passed(&c), pairs(&[("p.test", "default/db:443")]));
        let got = reasons(&c);
        for who in ["default/thief", "default/wide", "default/late"] {
            assert!(got.contains(&(who.to_string(), Reason::RouteConflict)), "{who}: {got:?}");
        }
        let thief = c.diagnostics.iter().find(|d| d.object.name == "thief").unwrap();
        assert!(thief.message.contains("default/shop"), "{}", thief.message);
    }
}
