//! The standalone manifest path end to end: bytes → YAML/JSON documents →
//! typed objects → compile → a routing snapshot, then lookups in it. Any
//! panic is a finding; a bad document must come back as an error or a
//! diagnostic, never bring the process down.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_controller::compile::{ClassConfig, compile};
use switchyard_controller::source::manifest;
use switchyard_controller::world::World;

fuzz_target!(|data: &[u8]| {
    // Bounded like a real manifest file would be in practice.
    if data.len() > 64 * 1024 {
        return;
    }
    let text = String::from_utf8_lossy(data);
    let Ok(parsed) = manifest::parse(&text) else { return };
    let mut world = World::default();
    for object in parsed.objects {
        world.insert(object);
    }
    let classes = ClassConfig {
        ingress_class: "switchyard".into(),
        controller_name: "switchyard.dev/ingress-controller".into(),
        watch_without_class: true,
        // A ConfigMap named so in the input is compiled as TCP services.
        tcp_services: Some(switchyard_controller::world::ObjectKey::new("default", "tcp-services")),
        ..ClassConfig::default()
    };
    let compiled = compile(&world, &classes);
    // Every route points at a backend that exists.
    for vhost in compiled.snapshot.router.vhosts() {
        for route in vhost.routes() {
            assert!(route.backend < compiled.snapshot.backends.len(), "dangling backend index in {route:?}");
        }
    }
    // Every TCP service and passthrough host points at a backend too.
    for service in &compiled.snapshot.tcp_services {
        assert!(service.backend < compiled.snapshot.backends.len(), "dangling backend in {service:?}");
    }
    for host in compiled.snapshot.passthrough.hosts() {
        assert!(host.backend < compiled.snapshot.backends.len(), "dangling backend in {host:?}");
        if !host.host.starts_with("*.") {
            assert_eq!(compiled.snapshot.passthrough.lookup(&host.host), Some(host.backend), "{host:?}");
        }
    }
    for host in [None, Some("a.example"), Some("x.a.example:80")] {
        for path in ["/", "/a", "/a/b/", "//"] {
            if let Some(route) = compiled.snapshot.router.route(host, path) {
                assert!(route.backend < compiled.snapshot.backends.len());
            }
        }
    }
    // The debug view serializes whatever was compiled.
    let _ = serde_json::to_string(&compiled.snapshot.router);
});
