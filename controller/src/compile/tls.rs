//! `spec.tls` of the served Ingresses → the snapshot's certificate table.
//!
//! Only Secrets that served Ingresses reference (and the
//! `--default-ssl-certificate`) are parsed and held. A Secret that is
//! missing, of the wrong type, malformed, or whose key does not match its
//! certificate is rejected alone: its hosts get the default certificate and
//! a diagnostic (log line, Event) says why; everything else keeps serving.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use switchyard_dataplane::tls::{ParsedCert, TlsCerts, parse_pem_pair};

use super::diagnostics::{Diagnostic, Reason};
use crate::world::{ObjectKey, World};

const KIND: &str = "Ingress";
const TLS_TYPE: &str = "kubernetes.io/tls";

/// Parses each referenced Secret once per compile.
struct Secrets<'w> {
    world: &'w World,
    parsed: HashMap<ObjectKey, Result<ParsedCert, String>>,
}

impl Secrets<'_> {
    fn get(&mut self, key: &ObjectKey) -> &Result<ParsedCert, String> {
        let world = self.world;
        self.parsed.entry(key.clone()).or_insert_with(|| match world.secrets.get(key) {
            None => Err(format!("Secret {key} not found")),
            Some(secret) => parse_secret(key, secret),
        })
    }
}

fn parse_secret(key: &ObjectKey, secret: &Secret) -> Result<ParsedCert, String> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != TLS_TYPE {
        return Err(format!("Secret {key} has type {kind:?}, not {TLS_TYPE:?}"));
    }
    // `stringData` is what a hand-written manifest may use (the API server
    // folds it into `data`).
    let field = |name: &str| {
        let data = secret.data.as_ref().and_then(|d| d.get(name)).map(|b| b.0.as_slice());
        let string_data = || secret.string_data.as_ref().and_then(|d| d.get(name)).map(String::as_bytes);
        data.or_else(string_data).filter(|b| !b.is_empty()).ok_or_else(|| format!("Secret {key} has no {name}"))
    };
    parse_pem_pair(field("tls.crt")?, field("tls.key")?).map_err(|e| format!("Secret {key}: {e}"))
}

/// The certificate table: `ingresses` in precedence order (older first wins
/// a host), then the default certificate.
pub(super) fn build(
    world: &World,
    ingresses: &[(&ObjectKey, &Ingress)],
    default_certificate: Option<&ObjectKey>,
    diagnostics: &mut Vec<Diagnostic>,
) -> TlsCerts {
    let mut secrets = Secrets { world, parsed: HashMap::new() };
    let mut table = TlsCerts::default();
    for (key, ing) in ingresses {
        let Some(spec) = &ing.spec else { continue };
        for (i, entry) in spec.tls.iter().flatten().enumerate() {
            // No secretName: the hosts use the default certificate.
            let Some(name) = entry.secret_name.as_deref().filter(|n| !n.is_empty()) else { continue };
            let secret_key = ObjectKey::new(&key.namespace, name);
            let mut hosts: Vec<&str> = entry.hosts.iter().flatten().map(String::as_str).collect();
            if hosts.is_empty() {
                // Like the API's examples: the TLS entry covers the rules' hosts.
                hosts = spec.rules.iter().flatten().filter_map(|r| r.host.as_deref()).collect();
            }
            let index = match secrets.get(&secret_key) {
                Ok(cert) => table.insert(&secret_key.to_string(), cert),
                Err(why) => {
                    let reason = if world.secrets.contains_key(&secret_key) {
                        Reason::InvalidTLSSecret
                    } else {
                        Reason::TLSSecretNotFound
                    };
                    diagnostics.push(Diagnostic::new(
                        KIND,
                        key,
                        reason,
                        format!("spec.tls[{i}]: {why}; hosts {hosts:?} get the default certificate"),
                    ));
                    continue;
                }
            };
            for host in hosts {
                if let Err(existing) = table.bind(host, index) {
                    diagnostics.push(Diagnostic::new(
                        KIND,
                        key,
                        Reason::TLSHostConflict,
                        format!(
                            "spec.tls[{i}]: host {host:?} keeps the certificate of Secret {existing} (older Ingress)"
                        ),
                    ));
                }
            }
        }
    }
    if let Some(default_key) = default_certificate {
        match secrets.get(default_key) {
            Ok(cert) => {
                let index = table.insert(&default_key.to_string(), cert);
                table.set_default(index);
            }
            Err(why) => diagnostics.push(Diagnostic::new(
                "Secret",
                default_key,
                Reason::InvalidTLSSecret,
                format!("--default-ssl-certificate: {why}; a self-signed certificate is served instead"),
            )),
        }
    }
    table
}
