//! Table tests of compile over small worlds written as manifests.

use super::*;
use crate::source::manifest;

fn mk_world(yaml: &str) -> World {
    let mut world = World::default();
    for object in manifest::parse(yaml).unwrap().objects {
        world.insert(object);
    }
    world
}

fn compiled(yaml: &str) -> Compiled {
    compile(&mk_world(yaml), &ClassConfig::default())
}

/// `(backend id, endpoint addresses)` a request would reach.
fn target(c: &Compiled, host: &str, path: &str) -> Option<(String, Vec<String>)> {
    let route = c.snapshot.router.route(Some(host), path)?;
    let b = &c.snapshot.backends[route.backend];
    Some((b.id.to_string(), b.endpoints.iter().map(|e| e.addr.to_string()).collect()))
}

fn reasons(c: &Compiled) -> Vec<(String, Reason)> {
    c.diagnostics.iter().map(|d| (d.object.to_string(), d.reason)).collect()
}

const SERVICE_AND_SLICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports:
  - {name: http, port: 80, targetPort: web-http}
  - {name: metrics, port: 9100, targetPort: 9100}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: metrics, port: 9100}]
endpoints:
- addresses: ["10.0.0.1"]
  conditions: {ready: true}
- addresses: ["10.0.0.2"]
  conditions: {ready: false}
- addresses: ["10.0.0.3"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8081}]
endpoints:
- addresses: ["fd00::1"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: shop, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{name: http, port: 1}]
endpoints: [{addresses: ["10.9.9.9"]}]
"#;

#[test]
fn resolves_service_port_to_ready_endpoints_by_port_name() {
    let c = compiled(&format!(
        "{SERVICE_AND_SLICES}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: switchyard
  rules:
  - host: shop.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /metrics, pathType: Exact, backend: {service: {name: web, port: {name: metrics}}}}
"#
    ));
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    assert_eq!(
        target(&c, "shop.test", "/cart"),
        Some(("shop/web:80".into(), vec!["10.0.0.1:8080".into(), "10.0.0.3:8080".into(), "[fd00::1]:8081".into()]))
    );
    assert_eq!(
        target(&c, "shop.test", "/metrics"),
        Some(("shop/web:metrics".into(), vec!["10.0.0.1:9100".into(), "10.0.0.3:9100".into()]))
    );
    assert_eq!(c.served_ingresses, [ObjectKey::new("shop", "shop")]);
}

#[test]
fn missing_service_or_port_is_a_503_backend_with_a_diagnostic() {
    let c = compiled(&format!(
        "{SERVICE_AND_SLICES}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: broken, namespace: shop}
spec:
  ingressClassName: switchyard
  rules:
  - http:
      paths:
      - {path: /nosvc, pathType: Prefix, backend: {service: {name: nope, port: {number: 80}}}}
      - {path: /noport, pathType: Prefix, backend: {service: {name: web, port: {number: 81}}}}
      - {path: /ok, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"#
    ));
    let nosvc = c.snapshot.router.route(None, "/nosvc").unwrap();
    assert_eq!(c.snapshot.backends[nosvc.backend].unavailable.as_deref(), Some("service shop/nope not found"));
    let noport = c.snapshot.router.route(None, "/noport").unwrap();
    assert!(c.snapshot.backends[noport.backend].unavailable.as_deref().unwrap().contains("has no port \"81\""));
    assert_eq!(target(&c, "x", "/ok").unwrap().1.len(), 3);
    assert_eq!(
        reasons(&c),
        [
            ("shop/broken".to_string(), Reason::ServiceNotFound),
            ("shop/broken".to_string(), Reason::ServicePortNotFound)
        ]
    );
}

fn mk_ingress(name: &str, created: Option<&str>, host: &str, path: &str, svc: &str) -> String {
    let ts = created.map(|t| format!(", creationTimestamp: \"{t}\"")).unwrap_or_default();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default{ts}}}\n\
         spec:\n  ingressClassName: switchyard\n  rules:\n  - host: {host}\n    http:\n      paths:\n      \
         - {{path: {path}, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
    )
}

#[test]
fn rules_of_several_ingresses_merge_and_the_oldest_wins_a_conflict() {
    let yaml = [
        mk_ingress("zeta", Some("2026-01-01T00:00:00Z"), "a.test", "/x", "old"),
        mk_ingress("alpha", Some("2026-02-01T00:00:00Z"), "a.test", "/x/", "new"),
        mk_ingress("beta", Some("2026-02-01T00:00:00Z"), "a.test", "/y", "y"),
        mk_ingress("gamma", None, "A.TEST", "/z", "z"),
    ]
    .concat();
    let c = compiled(&yaml);
    assert_eq!(target(&c, "a.test", "/x/1").unwrap().0, "default/old:80");
    assert_eq!(target(&c, "a.test", "/y").unwrap().0, "default/y:80");
    assert_eq!(target(&c, "a.test", "/z").unwrap().0, "default/z:80");
    let conflicts: Vec<_> = reasons(&c).into_iter().filter(|(_, r)| *r == Reason::RouteConflict).collect();
    assert_eq!(conflicts, [("default/alpha".to_string(), Reason::RouteConflict)]);
    // Equal timestamps: namespace/name decides.
    let yaml = [
        mk_ingress("b", Some("2026-01-01T00:00:00Z"), "a.test", "/", "from-b"),
        mk_ingress("a", Some("2026-01-01T00:00:00Z"), "a.test", "/", "from-a"),
    ]
    .concat();
    assert_eq!(target(&compiled(&yaml), "a.test", "/").unwrap().0, "default/from-a:80");
}

#[test]
fn other_classes_are_ignored_and_invalid_rules_rejected_alone() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: theirs}
spec:
  ingressClassName: nginx
  rules: [{host: a.test, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: s, port: {number: 80}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: mixed}
spec:
  ingressClassName: switchyard
  defaultBackend: {service: {name: d, port: {number: 80}}}
  rules:
  - host: bad_host.test
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: s, port: {number: 80}}}}]}
  - host: b.test
    http:
      paths:
      - {path: relative, pathType: Exact, backend: {service: {name: s, port: {number: 80}}}}
      - {path: /good, pathType: ImplementationSpecific, backend: {service: {name: s, port: {number: 80}}}}
      - {path: /r, pathType: Prefix, backend: {resource: {kind: Bucket, name: b}}}
"#;
    let c = compiled(yaml);
    assert_eq!(c.served_ingresses, [ObjectKey::new("default", "mixed")]);
    assert!(c.snapshot.router.route(Some("a.test"), "/").is_some_and(|r| r.source.as_ref() == "default/mixed"));
    assert_eq!(target(&c, "b.test", "/good/x").unwrap().0, "default/s:80");
    let mut got: Vec<_> = reasons(&c).into_iter().map(|(_, r)| r).collect();
    got.dedup();
    assert_eq!(got, [Reason::InvalidHost, Reason::InvalidPath, Reason::UnsupportedBackend, Reason::ServiceNotFound]);
}

#[test]
fn compile_is_deterministic() {
    let yaml = [
        SERVICE_AND_SLICES,
        &mk_ingress("a", None, "a.test", "/", "web"),
        &mk_ingress("b", None, "b.test", "/", "web"),
    ]
    .concat();
    let world = mk_world(&yaml);
    let one = serde_json::to_string(&compile(&world, &ClassConfig::default()).snapshot).unwrap();
    let two = serde_json::to_string(&compile(&world, &ClassConfig::default()).snapshot).unwrap();
    assert_eq!(one, two);
}

#[test]
fn backend_protocol_annotation_sets_the_routes_upstream_protocol() {
    use switchyard_dataplane::snapshot::UpstreamProtocol;
    let with = |name: &str, host: &str, annotations: &str| {
        mk_ingress(name, None, host, "/", "s").replace(
            &format!("name: {name}, namespace: default"),
            &format!("name: {name}, namespace: default, annotations: {{{annotations}}}"),
        )
    };
    let yaml = [
        with("g", "g.test", "switchyard.dev/backend-protocol: GRPC"),
        with("n", "n.test", "nginx.ingress.kubernetes.io/backend-protocol: https"),
        // Ours wins over the nginx spelling.
        with(
            "both",
            "both.test",
            "switchyard.dev/backend-protocol: H2C, nginx.ingress.kubernetes.io/backend-protocol: HTTP",
        ),
        with("bad", "bad.test", "switchyard.dev/backend-protocol: FCGI"),
        mk_ingress("plain", None, "plain.test", "/", "s"),
    ]
    .concat();
    let c = compiled(&yaml);
    let upstream = |host: &str| c.snapshot.router.route(Some(host), "/").unwrap().upstream;
    assert_eq!(upstream("g.test"), UpstreamProtocol::Grpc);
    assert_eq!(upstream("n.test"), UpstreamProtocol::Https);
    assert_eq!(upstream("both.test"), UpstreamProtocol::H2c);
    assert_eq!(upstream("bad.test"), UpstreamProtocol::Http, "an invalid value falls back to HTTP");
    assert_eq!(upstream("plain.test"), UpstreamProtocol::Http);
    let bad: Vec<_> = c.diagnostics.iter().filter(|d| d.reason == Reason::InvalidAnnotation).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].object.to_string(), "default/bad");
    assert!(bad[0].message.contains("FCGI"), "{}", bad[0].message);
}

#[test]
fn tcp_services_configmap_entries_become_tcp_services() {
    let yaml = format!(
        "{SERVICE_AND_SLICES}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: tcp, namespace: infra}}
data:
  \"9000\": shop/web:80
  \"9001\": shop/web:metrics
  \"9002\": shop/missing:80
  \"9003\": not-a-target
  \"09000\": shop/web:80
"
    );
    let classes = ClassConfig { tcp_services: Some(ObjectKey::new("infra", "tcp")), ..ClassConfig::default() };
    let c = compile(&mk_world(&yaml), &classes);
    let by_port: Vec<(u16, String, Vec<String>)> = c
        .snapshot
        .tcp_services
        .iter()
        .map(|s| {
            let b = &c.snapshot.backends[s.backend];
            (s.port, b.id.to_string(), b.endpoints.iter().map(|e| e.addr.to_string()).collect())
        })
        .collect();
    assert_eq!(
        by_port,
        [
            (9000, "shop/web:80".into(), vec!["10.0.0.1:8080".into(), "10.0.0.3:8080".into(), "[fd00::1]:8081".into()]),
            (9001, "shop/web:metrics".into(), vec!["10.0.0.1:9100".into(), "10.0.0.3:9100".into()]),
            (9002, "shop/missing:80".into(), vec![]),
        ]
    );
    assert!(c.snapshot.backends[c.snapshot.tcp_services[2].backend].unavailable.is_some());
    let invalid = ("infra/tcp".to_string(), Reason::InvalidTCPService);
    assert_eq!(reasons(&c), [("infra/tcp".to_string(), Reason::ServiceNotFound), invalid.clone(), invalid]);
    assert!(c.diagnostics.iter().any(|d| d.message.contains("already listed")), "{:?}", c.diagnostics);
    assert!(c.diagnostics.iter().all(|d| d.kind == "ConfigMap"));

    // The flag names a ConfigMap that does not exist: reported, nothing served.
    let classes = ClassConfig { tcp_services: Some(ObjectKey::new("infra", "nope")), ..ClassConfig::default() };
    let c = compile(&mk_world(SERVICE_AND_SLICES), &classes);
    assert!(c.snapshot.tcp_services.is_empty());
    assert_eq!(reasons(&c), [("infra/nope".to_string(), Reason::InvalidTCPService)]);
}
