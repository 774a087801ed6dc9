//! TLS passthrough: which SNI hosts are relayed, unterminated, to a
//! backend.
//!
//! The HTTPS listener peeks each connection's ClientHello (only while this
//! table is not empty) and looks its SNI up here: a match is relayed as
//! bytes to the backend (see [`crate::tcp`]), anything else is terminated
//! as usual. Hosts are exact or `*.` wildcards covering one label, ASCII
//! case-insensitive; an exact host wins over a wildcard. Lowercased at
//! build time, so a lowercase SNI is looked up without allocating.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use serde::Serialize;

/// The passthrough hosts of a snapshot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassthroughHosts {
    /// For the debug view, sorted by host.
    hosts: Vec<PassthroughHost>,
    /// Exact host → backend.
    #[serde(skip)]
    exact: HashMap<Box<str>, usize>,
    /// The suffix after `*.` → backend.
    #[serde(skip)]
    wildcard: HashMap<Box<str>, usize>,
}

/// One host passed through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassthroughHost {
    /// Lowercase; `*.example.com` for a wildcard.
    pub host: Arc<str>,
    /// Index into [`Snapshot::backends`](crate::Snapshot::backends).
    pub backend: usize,
}

/// Why a host was not added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("{0:?} is not a DNS name or a one-label `*.` wildcard")]
    InvalidHost(String),
    /// The host is already passed through to the backend given.
    #[error("host {host:?} is already passed through")]
    Taken { host: String, backend: usize },
}

/// What an SNI matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Index into [`Snapshot::backends`](crate::Snapshot::backends).
    pub backend: usize,
    /// Through a `*.` wildcard rather than the exact host.
    pub wildcard: bool,
}

impl PassthroughHosts {
    /// Passes `host` (exact or `*.` wildcard, any case, a trailing dot
    /// ignored) through to `backend`. A host already present keeps its
    /// backend: add in precedence order.
    pub fn insert(&mut self, host: &str, backend: usize) -> Result<(), InsertError> {
        let lower = host.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (map, key) = match lower.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, lower),
        };
        if !crate::router::valid_dns_name(key) {
            return Err(InsertError::InvalidHost(host.to_string()));
        }
        match map.entry(key.into()) {
            Entry::Occupied(e) => Err(InsertError::Taken { host: lower.to_string(), backend: *e.get() }),
            Entry::Vacant(e) => {
                e.insert(backend);
                let entry = PassthroughHost { host: lower.into(), backend };
                let at = self.hosts.partition_point(|h| h.host < entry.host);
                self.hosts.insert(at, entry);
                Ok(())
            }
        }
    }

    /// The backend a ClientHello's SNI is passed through to, if any.
    pub fn lookup(&self, sni: &str) -> Option<usize> {
        self.matched(sni).map(|m| m.backend)
    }

    /// Like [`lookup`](Self::lookup), saying whether a wildcard matched.
    pub fn matched(&self, sni: &str) -> Option<Matched> {
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.matched(&sni.to_ascii_lowercase());
        }
        if let Some(&backend) = self.exact.get(sni) {
            return Some(Matched { backend, wildcard: false });
        }
        let (label, suffix) = sni.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(suffix).map(|&backend| Matched { backend, wildcard: true })
    }

    /// The hosts passed through, sorted.
    pub fn hosts(&self) -> &[PassthroughHost] {
        &self.hosts
    }

    /// True when no host is passed through: the HTTPS listener then skips
    /// the ClientHello peek.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_hosts(entries: &[(&str, usize)]) -> PassthroughHosts {
        let mut hosts = PassthroughHosts::default();
        for (host, backend) in entries {
            hosts.insert(host, *backend).unwrap();
        }
        hosts
    }

    #[test]
    fn exact_wins_over_a_one_label_wildcard_case_insensitively() {
        let hosts = mk_hosts(&[("*.example.com", 1), ("A.example.com", 2), ("other.test.", 3)]);
        let cases: &[(&str, Option<usize>)] = &[
            ("a.example.com", Some(2)),
            ("A.EXAMPLE.COM", Some(2)),
            ("b.example.com", Some(1)),
            ("B.Example.Com.", Some(1)),
            ("c.b.example.com", None),
            ("example.com", None),
            (".example.com", None),
            ("other.test", Some(3)),
            ("other.test.", Some(3)),
            ("x.other.test", None),
            ("", None),
        ];
        for (sni, expected) in cases {
            assert_eq!(hosts.lookup(sni), *expected, "{sni:?}");
        }
        assert_eq!(hosts.matched("a.example.com"), Some(Matched { backend: 2, wildcard: false }));
        assert_eq!(hosts.matched("z.example.com"), Some(Matched { backend: 1, wildcard: true }));
    }

    #[test]
    fn the_first_insert_keeps_a_host_and_bad_hosts_are_refused() {
        let mut hosts = mk_hosts(&[("a.test", 0)]);
        assert_eq!(hosts.insert("A.Test", 5), Err(InsertError::Taken { host: "a.test".into(), backend: 0 }));
        assert_eq!(hosts.lookup("a.test"), Some(0));
        for bad in ["", "*", "*.", "a..test", "-a.test", "a_b.test", "*.*.test", "a.*.test", "a b.test"] {
            assert!(matches!(hosts.insert(bad, 1), Err(InsertError::InvalidHost(_))), "{bad:?}");
        }
        assert_eq!(hosts.hosts().len(), 1);
    }

    #[test]
    fn empty_until_a_host_is_added_and_the_debug_view_is_sorted() {
        let mut hosts = PassthroughHosts::default();
        assert!(hosts.is_empty());
        assert_eq!(hosts.lookup("a.test"), None);
        hosts.insert("b.test", 1).unwrap();
        hosts.insert("*.a.test", 0).unwrap();
        assert!(!hosts.is_empty());
        let json = serde_json::to_value(&hosts).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"hosts": [{"host": "*.a.test", "backend": 0}, {"host": "b.test", "backend": 1}]})
        );
    }
}
