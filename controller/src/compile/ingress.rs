//! Ingress rules and `defaultBackend` → routes.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use switchyard_dataplane::proxy::parse_size;
use switchyard_dataplane::router::{RouteError, Router};
use switchyard_dataplane::snapshot::UpstreamProtocol;
use switchyard_dataplane::tls::TlsCerts;
use switchyard_dataplane::{PathKind, Route};

use super::backend::Backends;
use super::diagnostics::{Diagnostic, Reason};
use crate::world::ObjectKey;

const KIND: &str = "Ingress";

/// Request body size limit of every route of the Ingress (nginx syntax).
pub const BODY_SIZE_ANNOTATION: &str = "switchyard.dev/proxy-body-size";
/// The ingress-nginx spelling, honoured so that manifests carry over; ours
/// wins when both are set.
pub const NGINX_BODY_SIZE_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-body-size";

pub(super) fn add_ingress(
    key: &ObjectKey,
    ing: &Ingress,
    tls: &TlsCerts,
    router: &mut Router,
    backends: &mut Backends<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let Some(spec) = &ing.spec else { return };
    let source: Arc<str> = key.text().into();
    let max_body_size = body_size(key, ing, diagnostics);
    let ssl_redirect = ssl_redirect(key, ing, diagnostics);
    let upstream = backend_protocol(key, ing, diagnostics);

    if let Some(default) = &spec.default_backend
        && let Some(backend) = resolve(key, default, backends, diagnostics)
    {
        let route = Route { max_body_size, upstream, ..Route::new("*", "", PathKind::Prefix, backend, source.clone()) };
        if let Err(existing) = router.set_default_backend(route) {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::DefaultBackendConflict,
                format!("defaultBackend ignored: Ingress {existing} (older) already sets one"),
            ));
        }
    }

    for rule in spec.rules.iter().flatten() {
        let host = rule.host.as_deref().filter(|h| !h.is_empty());
        let Some(http) = &rule.http else { continue };
        for p in &http.paths {
            let kind = match p.path_type.as_str() {
                "Exact" => PathKind::Exact,
                // ImplementationSpecific is documented to behave as Prefix.
                _ => PathKind::Prefix,
            };
            let path = p.path.as_deref().unwrap_or("/");
            let Some(backend) = resolve(key, &p.backend, backends, diagnostics) else {
                continue;
            };
            let has_tls = host.is_some_and(|h| tls.covers(h));
            let route = Route {
                max_body_size,
                https_redirect: has_tls && ssl_redirect,
                hsts: has_tls,
                upstream,
                ..Route::new("", path, kind, backend, source.clone())
            };
            if let Err(err) = router.add_route(host, route) {
                let reason = match err {
                    RouteError::InvalidHost { .. } => Reason::InvalidHost,
                    RouteError::InvalidPath { .. } => Reason::InvalidPath,
                    RouteError::Conflict { .. } => Reason::RouteConflict,
                };
                diagnostics.push(Diagnostic::new(KIND, key, reason, format!("rule ignored: {err}")));
            }
        }
    }
}

/// Plain HTTP to a host with TLS is redirected to HTTPS unless the Ingress
/// says `"false"`.
pub const SSL_REDIRECT_ANNOTATION: &str = "switchyard.dev/ssl-redirect";
/// The ingress-nginx spelling; ours wins when both are set.
pub const NGINX_SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/ssl-redirect";

/// The annotation named first in `names` that the Ingress sets (ours
/// first, then the ingress-nginx spelling), with its value.
fn annotation<'i>(ing: &'i Ingress, names: [&'static str; 2]) -> Option<(&'static str, &'i str)> {
    let annotations = ing.metadata.annotations.as_ref()?;
    names.into_iter().find_map(|name| annotations.get(name).map(|value| (name, value.as_str())))
}

/// How the proxy talks to the Ingress's backends.
pub const BACKEND_PROTOCOL_ANNOTATION: &str = "switchyard.dev/backend-protocol";
/// The ingress-nginx spelling; ours wins when both are set.
pub const NGINX_BACKEND_PROTOCOL_ANNOTATION: &str = "nginx.ingress.kubernetes.io/backend-protocol";

fn backend_protocol(key: &ObjectKey, ing: &Ingress, diagnostics: &mut Vec<Diagnostic>) -> UpstreamProtocol {
    let Some((name, value)) = annotation(ing, [BACKEND_PROTOCOL_ANNOTATION, NGINX_BACKEND_PROTOCOL_ANNOTATION]) else {
        return UpstreamProtocol::Http;
    };
    UpstreamProtocol::parse(value).unwrap_or_else(|| {
        diagnostics.push(Diagnostic::new(
            KIND,
            key,
            Reason::InvalidAnnotation,
            format!("{name}: {value:?} is not one of HTTP, HTTPS, H2C, GRPC, GRPCS; using HTTP"),
        ));
        UpstreamProtocol::Http
    })
}

fn ssl_redirect(key: &ObjectKey, ing: &Ingress, diagnostics: &mut Vec<Diagnostic>) -> bool {
    let names = [SSL_REDIRECT_ANNOTATION, NGINX_SSL_REDIRECT_ANNOTATION];
    bool_annotation(key, ing, names, (true, "redirecting"), diagnostics)
}

/// A `"true"`/`"false"` annotation (either spelling in `names`); absent:
/// `default.0`; any other value is reported (`default.1` says what the
/// default does) and reads as the default.
pub(super) fn bool_annotation(
    key: &ObjectKey,
    ing: &Ingress,
    names: [&'static str; 2],
    default: (bool, &str),
    diagnostics: &mut Vec<Diagnostic>,
) -> bool {
    let Some((name, value)) = annotation(ing, names) else { return default.0 };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => true,
        "false" => false,
        _ => {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::InvalidAnnotation,
                format!("{name}: {value:?} is not \"true\" or \"false\"; {} (the default)", default.1),
            ));
            default.0
        }
    }
}

/// The backend index for an Ingress backend, or `None` (with a diagnostic)
/// when it is not a Service backend.
fn resolve(
    key: &ObjectKey,
    backend: &IngressBackend,
    backends: &mut Backends<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<usize> {
    let Some(service) = &backend.service else {
        diagnostics.push(Diagnostic::new(
            KIND,
            key,
            Reason::UnsupportedBackend,
            "only Service backends are supported; `resource` backends are ignored",
        ));
        return None;
    };
    Some(backends.resolve(key, &key.namespace, service, diagnostics))
}

/// The Ingress's body size limit: `None` when it sets none (or an invalid
/// one, reported), `Some(u64::MAX)` for `0` (no limit).
fn body_size(key: &ObjectKey, ing: &Ingress, diagnostics: &mut Vec<Diagnostic>) -> Option<u64> {
    let (name, value) = annotation(ing, [BODY_SIZE_ANNOTATION, NGINX_BODY_SIZE_ANNOTATION])?;
    match parse_size(value) {
        Some(0) => Some(u64::MAX),
        Some(bytes) => Some(bytes),
        None => {
            diagnostics.push(Diagnostic::new(
                KIND,
                key,
                Reason::InvalidAnnotation,
                format!("{name}: {value:?} is not a size like 512k, 8m or 0 (no limit); using the default limit"),
            ));
            None
        }
    }
}
