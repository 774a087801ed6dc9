//! `World`: everything the controller knows about the outside, as typed
//! Kubernetes objects indexed by key. Sources (a manifest directory, or kube
//! reflectors in a cluster) fill it; `compile` reads it.
//!
//! Objects are shared (`Arc`), never copied: the sources keep what they
//! parsed or cached, and a world built from them holds references (a
//! k8s-openapi object is about 1 KiB before its strings, and a world of
//! 10,000 Ingresses is built on every change).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::Serialize;
use switchyard_crds::BalancerPolicy;

/// `namespace/name` of a namespaced object (cluster-scoped: empty namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// The key of an object's metadata; objects without a namespace are in
    /// `default`, as `kubectl apply` would put them.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_string()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The [`Display`](fmt::Display) text, built without the formatting
    /// machinery (compile makes one per Ingress).
    pub fn text(&self) -> String {
        if self.namespace.is_empty() {
            return self.name.clone();
        }
        let mut out = String::with_capacity(self.namespace.len() + 1 + self.name.len());
        out.push_str(&self.namespace);
        out.push('/');
        out.push_str(&self.name);
        out
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() { f.write_str(&self.name) } else { write!(f, "{}/{}", self.namespace, self.name) }
    }
}

/// The typed objects compile reads, each map sorted by key.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub ingresses: BTreeMap<ObjectKey, Arc<Ingress>>,
    /// Cluster-scoped: keyed by name.
    pub ingress_classes: BTreeMap<String, Arc<IngressClass>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub secrets: BTreeMap<ObjectKey, Arc<Secret>>,
    pub config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
    pub policies: BTreeMap<ObjectKey, Arc<BalancerPolicy>>,
}

/// One object of a kind compile reads (shared: cloning is cheap).
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Secret(Arc<Secret>),
    ConfigMap(Arc<ConfigMap>),
    BalancerPolicy(Arc<BalancerPolicy>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ingress(_) => "Ingress",
            Self::IngressClass(_) => "IngressClass",
            Self::Service(_) => "Service",
            Self::EndpointSlice(_) => "EndpointSlice",
            Self::Secret(_) => "Secret",
            Self::ConfigMap(_) => "ConfigMap",
            Self::BalancerPolicy(_) => "BalancerPolicy",
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Self::Ingress(o) => ObjectKey::of(&o.metadata),
            Self::IngressClass(o) => ObjectKey::new("", o.metadata.name.clone().unwrap_or_default()),
            Self::Service(o) => ObjectKey::of(&o.metadata),
            Self::EndpointSlice(o) => ObjectKey::of(&o.metadata),
            Self::Secret(o) => ObjectKey::of(&o.metadata),
            Self::ConfigMap(o) => ObjectKey::of(&o.metadata),
            Self::BalancerPolicy(o) => ObjectKey::of(&o.metadata),
        }
    }
}

impl World {
    /// Inserts (or replaces) an object; returns false if one with the same
    /// kind and key was already present.
    pub fn insert(&mut self, object: Object) -> bool {
        let key = object.key();
        match object {
            Object::Ingress(o) => self.ingresses.insert(key, o).is_none(),
            Object::IngressClass(o) => self.ingress_classes.insert(key.name, o).is_none(),
            Object::Service(o) => self.services.insert(key, o).is_none(),
            Object::EndpointSlice(o) => self.endpoint_slices.insert(key, o).is_none(),
            Object::Secret(o) => self.secrets.insert(key, o).is_none(),
            Object::ConfigMap(o) => self.config_maps.insert(key, o).is_none(),
            Object::BalancerPolicy(o) => self.policies.insert(key, o).is_none(),
        }
    }

    /// Removes the object of `kind` (as [`Object::kind`] names it) and
    /// `key`; returns whether it was present.
    pub fn remove(&mut self, kind: &str, key: &ObjectKey) -> bool {
        match kind {
            "Ingress" => self.ingresses.remove(key).is_some(),
            "IngressClass" => self.ingress_classes.remove(&key.name).is_some(),
            "Service" => self.services.remove(key).is_some(),
            "EndpointSlice" => self.endpoint_slices.remove(key).is_some(),
            "Secret" => self.secrets.remove(key).is_some(),
            "ConfigMap" => self.config_maps.remove(key).is_some(),
            "BalancerPolicy" => self.policies.remove(key).is_some(),
            _ => false,
        }
    }
}
