//! Ingress service backend → Service port → EndpointSlices → endpoints.
//!
//! Follows the EndpointSlice contract
//! (<https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/>):
//! slices belong to a Service by the `kubernetes.io/service-name` label,
//! their ports match the Service port by *name*, and an endpoint whose
//! `conditions.ready` is absent counts as ready. A not-ready endpoint that
//! is `terminating` but still `serving` is kept as *draining*: no new
//! requests, but its sticky sessions continue until it is removed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::IngressServiceBackend;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchyard_dataplane::pace::yield_point;
use switchyard_dataplane::{Backend, Endpoint};

use super::diagnostics::{Diagnostic, Reason};
use super::policy;
use crate::world::{ObjectKey, World};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Backends of one compile, deduplicated by `namespace/service:port`.
pub(super) struct Backends<'w> {
    world: &'w World,
    slices_by_service: HashMap<(&'w str, &'w str), Vec<&'w EndpointSlice>>,
    index: HashMap<Box<str>, usize>,
    /// The buffer `resolve_for` builds backend ids in.
    scratch: String,
    built: Vec<Backend>,
    /// Why a backend is unavailable, to report to every Ingress using it.
    failures: HashMap<usize, (Reason, String)>,
}

impl<'w> Backends<'w> {
    pub(super) fn new(world: &'w World) -> Self {
        let mut slices_by_service: HashMap<_, Vec<_>> = HashMap::new();
        for (key, slice) in &world.endpoint_slices {
            if let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                slices_by_service.entry((key.namespace.as_str(), svc.as_str())).or_default().push(&**slice);
            }
        }
        Self {
            world,
            slices_by_service,
            index: HashMap::new(),
            scratch: String::new(),
            built: Vec::new(),
            failures: HashMap::new(),
        }
    }

    /// The index of the backend for `svc` in `namespace`, building it on
    /// first use. Problems are reported against the Ingress `referrer`.
    pub(super) fn resolve(
        &mut self,
        referrer: &ObjectKey,
        namespace: &str,
        svc: &IngressServiceBackend,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> usize {
        self.resolve_for("Ingress", referrer, namespace, svc, diagnostics)
    }

    /// [`resolve`](Self::resolve), reporting against an object of `kind`.
    pub(super) fn resolve_for(
        &mut self,
        kind: &'static str,
        referrer: &ObjectKey,
        namespace: &str,
        svc: &IngressServiceBackend,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> usize {
        // `namespace/service:port`, written into a reused buffer: most
        // routes share a backend already built, and need no allocation.
        let port = svc.port.as_ref();
        let mut id = std::mem::take(&mut self.scratch);
        id.clear();
        id.push_str(namespace);
        id.push('/');
        id.push_str(&svc.name);
        id.push(':');
        let port_start = id.len();
        match (port.and_then(|p| p.number), port.and_then(|p| p.name.as_deref())) {
            (Some(n), _) => {
                let _ = write!(id, "{n}");
            }
            (None, Some(name)) => id.push_str(name),
            (None, None) => {}
        }
        if let Some(&i) = self.index.get(id.as_str()) {
            self.scratch = id;
            // Report the same problem for every Ingress that uses it.
            if let Some((reason, msg)) = self.failures.get(&i) {
                diagnostics.push(Diagnostic::new(kind, referrer, *reason, msg.clone()));
            }
            return i;
        }
        let port_label = id[port_start..].to_string();
        let service_label = id[..port_start - 1].to_string();
        let backend = match self.world.services.get(&ObjectKey::new(namespace, svc.name.clone())) {
            None => {
                let msg = format!("service {service_label} not found");
                self.fail(kind, referrer, Reason::ServiceNotFound, &msg, diagnostics);
                Backend::unavailable(id.as_str(), service_label, msg)
            }
            Some(service) => match find_service_port(service, svc) {
                None => {
                    let msg = format!("service {service_label} has no port {port_label:?}");
                    self.fail(kind, referrer, Reason::ServicePortNotFound, &msg, diagnostics);
                    Backend::unavailable(id.as_str(), service_label, msg)
                }
                Some(sp) => {
                    let slices = self.slices_by_service.get(&(namespace, svc.name.as_str()));
                    let mut endpoints = endpoints_for(sp, slices.map(Vec::as_slice).unwrap_or_default());
                    let policy = policy::for_service_port(self.world, namespace, &svc.name, sp.port);
                    let balance = policy.map(|p| policy::apply(p, &mut endpoints)).unwrap_or_default();
                    Backend::with_balance(id.as_str(), service_label, endpoints, balance)
                }
            },
        };
        self.built.push(backend);
        self.index.insert(id.as_str().into(), self.built.len() - 1);
        self.scratch = id;
        self.built.len() - 1
    }

    /// Records why the backend about to be built is unavailable.
    fn fail(
        &mut self,
        kind: &'static str,
        referrer: &ObjectKey,
        reason: Reason,
        msg: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        diagnostics.push(Diagnostic::new(kind, referrer, reason, msg));
        self.failures.insert(self.built.len(), (reason, msg.to_string()));
    }

    pub(super) fn into_vec(self) -> Vec<Backend> {
        self.built
    }
}

fn find_service_port<'s>(service: &'s Service, backend: &IngressServiceBackend) -> Option<&'s ServicePort> {
    let ports = service.spec.as_ref()?.ports.as_ref()?;
    let wanted = backend.port.as_ref();
    match (wanted.and_then(|p| p.number), wanted.and_then(|p| p.name.as_deref())) {
        (Some(n), _) => ports.iter().find(|p| p.port == n),
        (None, Some(name)) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
        // No port given: a single-port Service is unambiguous.
        (None, None) => (ports.len() == 1).then(|| &ports[0]),
    }
}

/// Ready endpoints of the slices, on the slice port whose name equals the
/// Service port's name.
fn endpoints_for(port: &ServicePort, slices: &[&EndpointSlice]) -> Vec<Endpoint> {
    let port_name = port.name.as_deref().unwrap_or("");
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let slice_port = match slice.ports.as_deref() {
            Some(ports) if !ports.is_empty() => {
                ports.iter().find(|p| p.name.as_deref().unwrap_or("") == port_name).and_then(|p| p.port)
            }
            // A slice without ports: fall back to a numeric targetPort.
            _ => match &port.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                None => Some(port.port),
                Some(IntOrString::String(_)) => None,
            },
        };
        let Some(number) = slice_port.and_then(|n| u16::try_from(n).ok()).filter(|&n| n != 0) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            // Terminating but still serving: keeps its sticky sessions,
            // gets no new requests.
            let draining = !ready
                && conditions.and_then(|c| c.terminating) == Some(true)
                && conditions.and_then(|c| c.serving) == Some(true);
            if !ready && !draining {
                continue;
            }
            let pod = ep.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name.clone());
            for address in &ep.addresses {
                yield_point();
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                let mut endpoint = Endpoint::new(SocketAddr::new(ip, number));
                endpoint.pod = pod.as_deref().map(Into::into);
                endpoint.zone = ep.zone.as_deref().map(Into::into);
                endpoint.draining = draining;
                out.push(endpoint);
            }
        }
    }
    out
}
