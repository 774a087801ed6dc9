//! Parsing Kubernetes manifests (multi-document YAML or JSON, `List`s
//! included) into typed objects.

use serde::de::DeserializeOwned;

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
    Invalid { document: usize, kind: String, name: String, source: serde_json::Error },
}

/// Parses every document of `text`.
pub fn parse(text: &str) -> Result<Parsed, ManifestError> {
    let mut parsed = Parsed::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        switchyard_dataplane::pace::yield_point();
        let document = i + 1;
        let value: serde_yaml::Value =
            serde::Deserialize::deserialize(doc).map_err(|source| ManifestError::Syntax { document, source })?;
        if value.is_null() {
            continue; // empty document (`---` at the end, comments only)
        }
        let value: serde_json::Value =
            serde_json::to_value(&value).map_err(|_| ManifestError::NotAnObject { document })?;
        collect(value, document, &mut parsed)?;
    }
    Ok(parsed)
}

fn collect(value: serde_json::Value, document: usize, parsed: &mut Parsed) -> Result<(), ManifestError> {
    let Some(kind) = value.get("kind").and_then(|k| k.as_str()).map(str::to_string) else {
        return Err(ManifestError::NotAnObject { document });
    };
    let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .map(|n| match value.pointer("/metadata/namespace").and_then(|n| n.as_str()) {
            Some(ns) => format!("{ns}/{n}"),
            None => n.to_string(),
        })
        .unwrap_or_else(|| "<unnamed>".to_string());
    fn typed<T: DeserializeOwned>(
        v: serde_json::Value,
        document: usize,
        kind: &str,
        name: &str,
    ) -> Result<std::sync::Arc<T>, ManifestError> {
        serde_json::from_value(v).map(std::sync::Arc::new).map_err(|source| ManifestError::Invalid {
            document,
            kind: kind.to_string(),
            name: name.to_string(),
            source,
        })
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        (_, "List") => {
            let items = match value.get("items") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                _ => Vec::new(),
            };
            for item in items {
                collect(item, document, parsed)?;
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
    fn unquoted_numeric_keys_are_strings() {
        // The ingress-nginx tcp-services ConfigMap is often written with
        // bare port numbers as keys; kubectl accepts it, so do we.
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: tcp-services, namespace: infra}\ndata: {5432: \"db/postgres:5432\"}\n";
        let parsed = parse(text).unwrap();
        let [Object::ConfigMap(map)] = &parsed.objects[..] else { panic!("{:?}", parsed.objects) };
        assert_eq!(map.data.as_ref().and_then(|d| d.get("5432")).map(String::as_str), Some("db/postgres:5432"));
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
