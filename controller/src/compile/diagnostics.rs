//! What compile says about the objects it rejected in whole or in part.
//! Each diagnostic becomes a log line (and, in a cluster, a status
//! condition and an Event): never a silent drop.

use serde::Serialize;

use crate::world::ObjectKey;

/// Why (part of) an object was rejected or degraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Reason {
    /// A host that is not a DNS name or a one-label `*.` wildcard.
    InvalidHost,
    /// A path that does not start with `/`.
    InvalidPath,
    /// Same host, path and type as a route of an older Ingress.
    RouteConflict,
    /// A second `defaultBackend` when an older Ingress already has one.
    DefaultBackendConflict,
    /// A backend that is not a Service (e.g. `resource`).
    UnsupportedBackend,
    /// The backend Service does not exist (requests get 503).
    ServiceNotFound,
    /// The backend Service has no such port (requests get 503).
    ServicePortNotFound,
    /// A policy field the dataplane does not implement yet.
    NotImplemented,
    /// A policy whose target Service does not exist.
    TargetNotFound,
    /// A second policy on a Service port an older policy already targets.
    PolicyConflict,
    /// A policy whose fields contradict each other.
    InvalidPolicy,
    /// An annotation whose value does not parse (the default applies).
    InvalidAnnotation,
    /// A `spec.tls` Secret that does not exist (the default certificate
    /// serves its hosts).
    TLSSecretNotFound,
    /// A `spec.tls` Secret that is not a usable `kubernetes.io/tls` Secret:
    /// wrong type, missing or malformed data, key not matching.
    InvalidTLSSecret,
    /// A TLS host an older Ingress already has a certificate for.
    TLSHostConflict,
    /// An entry of the TCP services ConfigMap that does not parse (port,
    /// or `NAMESPACE/SERVICE:PORT`), or the ConfigMap is missing.
    InvalidTCPService,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidHost => "InvalidHost",
            Self::InvalidPath => "InvalidPath",
            Self::RouteConflict => "RouteConflict",
            Self::DefaultBackendConflict => "DefaultBackendConflict",
            Self::UnsupportedBackend => "UnsupportedBackend",
            Self::ServiceNotFound => "ServiceNotFound",
            Self::ServicePortNotFound => "ServicePortNotFound",
            Self::NotImplemented => "NotImplemented",
            Self::TargetNotFound => "TargetNotFound",
            Self::PolicyConflict => "PolicyConflict",
            Self::InvalidPolicy => "InvalidPolicy",
            Self::InvalidAnnotation => "InvalidAnnotation",
            Self::TLSSecretNotFound => "TLSSecretNotFound",
            Self::InvalidTLSSecret => "InvalidTLSSecret",
            Self::TLSHostConflict => "TLSHostConflict",
            Self::InvalidTCPService => "InvalidTCPService",
        }
    }
}

/// One finding about one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    pub kind: &'static str,
    pub object: ObjectKey,
    pub reason: Reason,
    pub message: String,
}

impl Diagnostic {
    pub fn new(kind: &'static str, object: &ObjectKey, reason: Reason, message: impl Into<String>) -> Self {
        Self { kind, object: object.clone(), reason, message: message.into() }
    }
}
