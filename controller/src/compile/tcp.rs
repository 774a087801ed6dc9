//! The `--tcp-services-configmap` ConfigMap → the snapshot's L4 TCP
//! services.
//!
//! The ingress-nginx convention: each `data` entry maps a port the proxy
//! listens on to a Service port, `"9000": "default/db:5432"` (the Service
//! port by number or name). Each bad entry is rejected alone with
//! `InvalidTCPService`; the others are served.

use k8s_openapi::api::networking::v1::{IngressServiceBackend, ServiceBackendPort};
use switchyard_dataplane::TcpService;
use switchyard_dataplane::router::valid_dns_label;

use super::backend::Backends;
use super::diagnostics::{Diagnostic, Reason};
use crate::world::{ObjectKey, World};

const KIND: &str = "ConfigMap";

pub(super) fn build(
    world: &World,
    configmap: Option<&ObjectKey>,
    backends: &mut Backends<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<TcpService> {
    let Some(key) = configmap else { return Vec::new() };
    let Some(cm) = world.config_maps.get(key) else {
        diagnostics.push(Diagnostic::new(
            KIND,
            key,
            Reason::InvalidTCPService,
            format!("TCP services ConfigMap {key} not found: no TCP services are served"),
        ));
        return Vec::new();
    };
    let mut services: Vec<TcpService> = Vec::new();
    // `data` is a BTreeMap: entries come in a stable order.
    for (port_text, target) in cm.data.iter().flatten() {
        match parse_entry(port_text, target) {
            Ok((port, _)) if services.iter().any(|s| s.port == port) => diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::InvalidTCPService,
                format!("entry {port_text:?}: {target:?} ignored: port {port} is already listed"),
            )),
            Ok((port, entry)) => {
                let backend = IngressServiceBackend { name: entry.service.clone(), port: Some(entry.port.clone()) };
                let index = backends.resolve_for(KIND, key, &entry.namespace, &backend, diagnostics);
                services.push(TcpService { port, backend: index, target: target.trim().into() });
            }
            Err(why) => diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::InvalidTCPService,
                format!("entry {port_text:?}: {target:?} ignored: {why}"),
            )),
        }
    }
    services.sort_by_key(|s| s.port);
    services
}

/// A parsed `NAMESPACE/SERVICE:PORT`.
#[derive(Debug, PartialEq)]
struct Entry {
    namespace: String,
    service: String,
    port: ServiceBackendPort,
}

fn parse_entry(port: &str, target: &str) -> Result<(u16, Entry), String> {
    let listen = match port.trim().parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("{port:?} is not a port number (1-65535)")),
        Ok(p) => p,
    };
    let target = target.trim();
    let (service_ref, service_port) =
        target.split_once(':').ok_or("expected NAMESPACE/SERVICE:PORT (the port is missing)")?;
    if service_port.contains(':') {
        // ingress-nginx's `:PROXY` suffixes (PROXY protocol per service).
        return Err("per-service PROXY protocol options are not supported; use NAMESPACE/SERVICE:PORT".into());
    }
    let (namespace, service) =
        service_ref.split_once('/').ok_or("expected NAMESPACE/SERVICE:PORT (the namespace is missing)")?;
    if !valid_dns_label(namespace) || !valid_dns_label(service) {
        return Err(format!("{service_ref:?} is not NAMESPACE/SERVICE (DNS labels)"));
    }
    let port = match service_port.parse::<i32>() {
        Ok(n) if (1..=65535).contains(&n) => ServiceBackendPort { number: Some(n), name: None },
        Ok(_) => return Err(format!("service port {service_port} is out of range")),
        Err(_) if valid_dns_label(service_port) => ServiceBackendPort { number: None, name: Some(service_port.into()) },
        Err(_) => return Err(format!("{service_port:?} is not a port number or name")),
    };
    Ok((listen, Entry { namespace: namespace.into(), service: service.into(), port }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_the_ingress_nginx_way() {
        let (port, entry) = parse_entry("9000", "default/db:5432").unwrap();
        assert_eq!(port, 9000);
        assert_eq!(entry.namespace, "default");
        assert_eq!(entry.service, "db");
        assert_eq!(entry.port, ServiceBackendPort { number: Some(5432), name: None });
        let (_, named) = parse_entry(" 53 ", " kube-system/dns:dns-tcp ").unwrap();
        assert_eq!(named.port, ServiceBackendPort { number: None, name: Some("dns-tcp".into()) });
        for (port, target) in [
            ("0", "default/db:5432"),
            ("70000", "default/db:5432"),
            ("http", "default/db:5432"),
            ("9000", "default/db"),
            ("9000", "db:5432"),
            ("9000", "default/db:0"),
            ("9000", "default/db:5432:PROXY"),
            ("9000", "Default/db:5432"),
            ("9000", "default/db:some_port"),
            ("9000", ""),
        ] {
            assert!(parse_entry(port, target).is_err(), "{port:?}: {target:?} must be refused");
        }
    }
}
