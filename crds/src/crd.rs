//! The CustomResourceDefinition as checked-in YAML: generated from the
//! types, with descriptions reflowed for `kubectl explain`.
//!
//! Doc comments are wrapped at the source's line width; `kubectl explain`
//! wraps to the terminal, so hard line breaks in the middle of sentences read
//! badly there. A description is therefore reflowed like Markdown: lines of a
//! paragraph are joined with spaces, a blank line separates paragraphs, and a
//! line starting with `- ` (a list item) starts a new line.

use kube::CustomResourceExt as _;

use crate::BalancerPolicy;

/// The first line of the generated YAML.
const GENERATED_HEADER: &str = "# Generated from crds/src by `switchyard crd`; do not edit. \
                                Regenerate: UPDATE_CRDS=1 cargo test -p switchyard-crds\n";

/// The BalancerPolicy CustomResourceDefinition as YAML (what `switchyard crd`
/// prints, and what `crds/` and the Helm chart hold).
pub fn crd_yaml() -> String {
    let mut crd = serde_json::to_value(BalancerPolicy::crd()).expect("the CRD serializes");
    reflow_descriptions(&mut crd);
    let yaml = serde_yaml::to_string(&crd).expect("the CRD serializes");
    format!("{GENERATED_HEADER}{yaml}")
}

/// Reflows every `description` string in a schema, at any depth.
fn reflow_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => *text = reflow(text),
                    _ => reflow_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

/// Joins the lines of each paragraph; keeps paragraph breaks and list items.
fn reflow(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_blank = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            after_blank = true;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if after_blank {
                "\n\n"
            } else if line.starts_with("- ") {
                "\n"
            } else {
                " "
            });
        }
        out.push_str(line);
        after_blank = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflow_joins_paragraph_lines_and_keeps_list_items() {
        let doc = "How a request picks\nan endpoint. One of:\n- A: first\n  wrapped.\n- B: second.\n\nNext paragraph.";
        assert_eq!(
            reflow(doc),
            "How a request picks an endpoint. One of:\n- A: first wrapped.\n- B: second.\n\nNext paragraph."
        );
        assert_eq!(reflow("one line"), "one line");
    }

    #[test]
    fn the_yaml_is_a_crd_and_starts_with_the_header() {
        let yaml = crd_yaml();
        assert!(yaml.starts_with("# Generated"), "{yaml}");
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(crd.metadata.name.as_deref(), Some("balancerpolicies.switchyard.dev"));
    }
}
