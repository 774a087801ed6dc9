//! Parsing Kubernetes manifests (multi-document YAML or JSON, `List`s
//! included) into typed objects.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::world::Object;

/// What a file held: the objects of the kinds we read, and the kinds we
/// skipped (logged by the caller).
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Object>,
    pub ignored: Vec<String>,
}

/// Why a manifest file was refused (the whole file keeps its last good
/// version).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document}: invalid YAML/JSON: {source}")]
    Syntax { document: usize, source: serde_yaml::Error },
    #[error("document {document}: not an object with `apiVersion` and `kind`")]
    NotAnObject { document: usize },
    #[error("document {document}: {kind} {name}: {source}")]
    Invalid { document: usize, kind: String, name: String, source: serde_yaml::Error },
}

/// Parses every document of `text`. Each document is read into one YAML
/// tree, and the typed object is then built from that tree, taking its
/// strings over (JSON is YAML, so both parse here).
pub fn parse(text: &str) -> Result<Parsed, ManifestError> {
    let mut parsed = Parsed::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value: Value =
            serde::Deserialize::deserialize(doc).map_err(|source| ManifestError::Syntax { document, source })?;
        if value.is_null() {
            continue; // empty document (`---` at the end, comments only)
        }
        collect(value, document, &mut parsed)?;
    }
    parsed.objects.shrink_to_fit();
    Ok(parsed)
}

fn collect(value: Value, document: usize, parsed: &mut Parsed) -> Result<(), ManifestError> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let Some(kind) = text(&value, "kind") else {
        return Err(ManifestError::NotAnObject { document });
    };
    let api_version = text(&value, "apiVersion").unwrap_or_default();
    let metadata = value.get("metadata");
    let name = match (metadata.and_then(|m| text(m, "namespace")), metadata.and_then(|m| text(m, "name"))) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n,
        (_, None) => "<unnamed>".to_string(),
    };
    fn typed<T: DeserializeOwned>(
        v: Value,
        document: usize,
        kind: &str,
        name: &str,
    ) -> Result<std::sync::Arc<T>, ManifestError> {
        serde_yaml::from_value(v).map(std::sync::Arc::new).map_err(|source| ManifestError::Invalid {
            document,
            kind: kind.to_string(),
            name: name.to_string(),
            source,
        })
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        (_, "List") => {
            let items = match value {
                Value::Mapping(mut map) => map.remove("items"),
                _ => None,
            };
            if let Some(Value::Sequence(items)) = items {
                for item in items {
                    collect(item, document, parsed)?;
                }
            }
            return Ok(());
        }
        ("networking.k8s.io/v1", "Ingress") => Object::Ingress(typed(value, document, &kind, &name)?),
        ("networking.k8s.io/v1", "IngressClass") => Object::IngressClass(typed(value, document, &kind, &name)?),
        ("v1", "Service") => Object::Service(typed(value, document, &kind, &name)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(typed(value, document, &kind, &name)?),
        ("v1", "Secret") => Object::Secret(typed(value, document, &kind, &name)?),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(value, document, &kind, &name)?),
        ("switchyard.dev/v1alpha1", "BalancerPolicy") => Object::BalancerPolicy(typed(value, document, &kind, &name)?),
        _ => {
            parsed.ignored.push(format!("{api_version}/{kind} {name}"));
            return Ok(());
        }
    };
    if object.key().name.is_empty() {
        return Err(ManifestError::NotAnObject { document });
    }
    parsed.objects.push(object);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_with_lists_and_ignored_kinds() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
# comment-only document
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "switchyard"},
   "spec": {"controller": "switchyard.dev/ingress-controller"}}]}
"#;
        let parsed = parse(text).unwrap();
        let kinds: Vec<_> = parsed.objects.iter().map(|o| (o.kind(), o.key().to_string())).collect();
        assert_eq!(kinds, [("Service", "default/web".to_string()), ("IngressClass", "switchyard".to_string())]);
        assert_eq!(parsed.ignored, ["apps/v1/Deployment web"]);
    }

    #[test]
    fn errors_name_the_document_and_object() {
        let err = parse("kind: [unclosed").unwrap_err();
        assert!(matches!(err, ManifestError::Syntax { document: 1, .. }), "{err}");
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad, namespace: x}\nspec: {rules: 7}\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("document 2") && err.contains("Ingress x/bad"), "{err}");
        assert!(matches!(parse("just a string").unwrap_err(), ManifestError::NotAnObject { document: 1 }));
    }
}
