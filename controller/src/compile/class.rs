//! Which Ingresses are ours: `spec.ingressClassName`, the deprecated
//! `kubernetes.io/ingress.class` annotation, and the default IngressClass
//! (<https://kubernetes.io/docs/concepts/services-networking/ingress/#ingress-class>).

use k8s_openapi::api::networking::v1::Ingress;

use crate::world::World;

/// The deprecated annotation that names a class.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation that marks an IngressClass as the cluster default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// How this controller recognises its Ingresses.
#[derive(Clone, Debug)]
pub struct ClassConfig {
    /// `--ingress-class`: the IngressClass name we serve.
    pub ingress_class: String,
    /// `--controller-name`: the `spec.controller` of IngressClasses we own.
    pub controller_name: String,
    /// `--watch-ingress-without-class`.
    pub watch_without_class: bool,
    /// `--default-ssl-certificate`: the Secret served for unknown or
    /// missing SNI (else a self-signed certificate made at start).
    pub default_certificate: Option<crate::world::ObjectKey>,
    /// `--tcp-services-configmap`: the ConfigMap listing L4 TCP services.
    pub tcp_services: Option<crate::world::ObjectKey>,
}

impl Default for ClassConfig {
    fn default() -> Self {
        Self {
            ingress_class: "switchyard".to_string(),
            controller_name: "switchyard.dev/ingress-controller".to_string(),
            watch_without_class: false,
            default_certificate: None,
            tcp_services: None,
        }
    }
}

impl ClassConfig {
    /// True when `ingress` should be served by us.
    pub fn is_ours(&self, ingress: &Ingress, world: &World) -> bool {
        let named = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).or_else(|| {
            ingress.metadata.annotations.as_ref().and_then(|a| a.get(CLASS_ANNOTATION)).map(String::as_str)
        });
        match named {
            Some(name) => self.class_is_ours(name, world),
            None => self.watch_without_class || self.default_class_is_ours(world),
        }
    }

    /// A named class is ours when its IngressClass names our controller, or,
    /// when no IngressClass of that name exists, when it is `--ingress-class`.
    fn class_is_ours(&self, name: &str, world: &World) -> bool {
        match world.ingress_classes.get(name) {
            Some(class) => class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(&*self.controller_name),
            None => name == self.ingress_class,
        }
    }

    fn default_class_is_ours(&self, world: &World) -> bool {
        world.ingress_classes.values().any(|class| {
            let is_default = class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
            is_default && class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(&*self.controller_name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec, IngressSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn mk_ingress(class: Option<&str>, annotation: Option<&str>) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some("i".into()),
                annotations: annotation.map(|a| [(CLASS_ANNOTATION.to_string(), a.to_string())].into()),
                ..Default::default()
            },
            spec: Some(IngressSpec { ingress_class_name: class.map(Into::into), ..Default::default() }),
            ..Default::default()
        }
    }

    fn mk_class(name: &str, controller: &str, default: bool) -> IngressClass {
        IngressClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: default.then(|| [(DEFAULT_CLASS_ANNOTATION.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            spec: Some(IngressClassSpec { controller: Some(controller.into()), ..Default::default() }),
        }
    }

    #[test]
    fn class_rules() {
        let cfg = ClassConfig::default();
        let mut world = World::default();
        // No IngressClass objects: the configured name is ours.
        assert!(cfg.is_ours(&mk_ingress(Some("switchyard"), None), &world));
        assert!(cfg.is_ours(&mk_ingress(None, Some("switchyard")), &world));
        assert!(!cfg.is_ours(&mk_ingress(Some("nginx"), None), &world));
        assert!(!cfg.is_ours(&mk_ingress(None, None), &world));
        // A class of another name that names our controller is ours too.
        world
            .ingress_classes
            .insert("edge".into(), mk_class("edge", "switchyard.dev/ingress-controller", false).into());
        world.ingress_classes.insert("nginx".into(), mk_class("nginx", "k8s.io/ingress-nginx", true).into());
        assert!(cfg.is_ours(&mk_ingress(Some("edge"), None), &world));
        assert!(!cfg.is_ours(&mk_ingress(Some("nginx"), None), &world));
        // The default class is someone else's.
        assert!(!cfg.is_ours(&mk_ingress(None, None), &world));
        world.ingress_classes.insert("edge".into(), mk_class("edge", "switchyard.dev/ingress-controller", true).into());
        assert!(cfg.is_ours(&mk_ingress(None, None), &world));
        // --watch-ingress-without-class
        let cfg = ClassConfig { watch_without_class: true, ..ClassConfig::default() };
        assert!(cfg.is_ours(&mk_ingress(None, None), &World::default()));
        // A class named like ours but owned by another controller is not ours.
        let mut world = World::default();
        world.ingress_classes.insert("switchyard".into(), mk_class("switchyard", "other.io/ctrl", false).into());
        assert!(!cfg.is_ours(&mk_ingress(Some("switchyard"), None), &world));
    }
}
