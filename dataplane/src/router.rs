//! Host and path matching, Ingress v1 semantics.
//!
//! Implements the matching rules of the Kubernetes Ingress spec
//! (<https://kubernetes.io/docs/concepts/services-networking/ingress/>,
//! "Path types", "Examples" and "Hostname wildcards"):
//!
//! * hosts match exactly (ASCII case-insensitive) or by a `*.` wildcard that
//!   covers exactly one DNS label; a port in the Host header is ignored;
//! * the most specific host owns the request: exact, then wildcard, then the
//!   rules without a host; if none of its paths match, the default backend
//!   answers, else 404;
//! * `Exact` compares the whole path, case-sensitive; `Prefix` compares
//!   element-wise on `/` with the trailing slash ignored; the longest match
//!   wins and `Exact` beats `Prefix` of the same length.
//!
//! All work happens when the router is built. A lookup allocates nothing
//! and its cost is bounded by the configuration, never by how deep the
//! request path is: a host with a few routes (most have one) is matched by
//! comparing them in turn; a larger one by one hash-map probe per distinct
//! prefix length configured for it, on borrowed slices.

/// The router's maps: foldhash instead of SipHash (keys come from the
/// configuration; a lookup with a hostile key costs one hash either way).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use serde::Serialize;

use crate::snapshot::{PathKind, Route};

/// Longest host name we look up (RFC 1035: 253 characters, plus slack).
const MAX_HOST_LEN: usize = 255;

/// Hosts with at most this many routes are matched by comparing each
/// route: as fast as a hash probe at this size, and without the hash maps
/// (about 250 bytes per host, with 10,000 one-route hosts a third of the
/// router).
const SCAN_MAX: usize = 8;

/// The host → path → route table of one snapshot.
#[derive(Debug, Default, Serialize)]
pub struct Router {
    vhosts: Vec<VirtualHost>,
    #[serde(skip)]
    exact_hosts: HashMap<Box<str>, usize>,
    /// Keyed by the suffix after `*.`.
    #[serde(skip)]
    wildcard_hosts: HashMap<Box<str>, usize>,
    #[serde(skip)]
    catch_all: Option<usize>,
    default_backend: Option<Route>,
}

/// The routes of one host.
#[derive(Debug, Serialize)]
pub struct VirtualHost {
    pub host: Arc<str>,
    routes: Vec<Route>,
    /// Hash indexes over `routes`, built once a host has [`SCAN_MAX`]
    /// routes and another is added (kept from then on).
    #[serde(skip)]
    index: Option<Box<PathIndex>>,
}

/// Route positions by path.
#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<Box<str>, usize>,
    /// Keyed by the prefix with trailing slashes removed (`/` becomes ``).
    prefix: HashMap<Box<str>, usize>,
    /// The distinct byte lengths of `prefix` keys, longest first: a lookup
    /// probes only cut points of these lengths, so its cost is bounded by
    /// the configuration, not by how deep a (hostile) request path is.
    prefix_lens: Vec<usize>,
}

/// Why a route could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("host {host:?} is not a valid host name or `*.` wildcard")]
    InvalidHost { host: String },
    #[error("path {path:?} must start with '/'")]
    InvalidPath { path: String },
    /// Same host, path and type as a route already added; the existing one
    /// (added first, hence preferred) stays.
    #[error("host {host:?} path {path:?} ({kind:?}) is already routed by {existing}")]
    Conflict { host: String, path: String, kind: PathKind, existing: Arc<str> },
}

impl Router {
    /// Finds the route for a request. `host` is the Host header or the
    /// `:authority` (port allowed); `path` is the request path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let vhost = host.and_then(|h| self.vhost_for(h)).or_else(|| self.catch_all.map(|i| &self.vhosts[i]));
        match vhost {
            Some(vh) => vh.match_path(path).or(self.default_backend.as_ref()),
            None => self.default_backend.as_ref(),
        }
    }

    fn vhost_for(&self, host: &str) -> Option<&VirtualHost> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = normalize_host(host, &mut buf)?;
        if let Some(&i) = self.exact_hosts.get(host) {
            return Some(&self.vhosts[i]);
        }
        let (label, suffix) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard_hosts.get(suffix).map(|&i| &self.vhosts[i])
    }

    pub fn vhosts(&self) -> &[VirtualHost] {
        &self.vhosts
    }

    pub fn default_backend(&self) -> Option<&Route> {
        self.default_backend.as_ref()
    }

    /// Adds a route. `host` is `None` for rules without a host. Routes added
    /// earlier win conflicts, so add them in precedence order.
    pub fn add_route(&mut self, host: Option<&str>, route: Route) -> Result<(), RouteError> {
        if !route.path.starts_with('/') {
            return Err(RouteError::InvalidPath { path: route.path.to_string() });
        }
        let idx = match host {
            None => match self.catch_all {
                Some(i) => i,
                None => {
                    self.vhosts.push(VirtualHost::new("*"));
                    self.catch_all = Some(self.vhosts.len() - 1);
                    self.vhosts.len() - 1
                }
            },
            Some(host) => self.vhost_index(host)?,
        };
        self.vhosts[idx].add(route)
    }

    /// Sets the default backend unless one is already set; returns the
    /// source of the one already in force when it is.
    pub fn set_default_backend(&mut self, route: Route) -> Result<(), Arc<str>> {
        match &self.default_backend {
            Some(existing) => Err(existing.source.clone()),
            None => {
                self.default_backend = Some(route);
                Ok(())
            }
        }
    }

    fn vhost_index(&mut self, host: &str) -> Result<usize, RouteError> {
        let lower: std::borrow::Cow<'_, str> =
            if host.bytes().any(|b| b.is_ascii_uppercase()) { host.to_ascii_lowercase().into() } else { host.into() };
        let lower = lower.trim_end_matches('.');
        let invalid = || RouteError::InvalidHost { host: host.to_string() };
        let (map, key) = match lower.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard_hosts, suffix),
            None => (&mut self.exact_hosts, lower),
        };
        if !valid_dns_name(key) {
            return Err(invalid());
        }
        Ok(match map.entry(key.into()) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                self.vhosts.push(VirtualHost::new(lower));
                *e.insert(self.vhosts.len() - 1)
            }
        })
    }

    /// Sorts hosts and routes for stable output (debug views, diffs), and
    /// trims spare capacity. Call once after the last `add_route`.
    pub fn finish(&mut self) {
        let mut order: Vec<usize> = (0..self.vhosts.len()).collect();
        order.sort_by(|&a, &b| self.vhosts[a].host.cmp(&self.vhosts[b].host));
        let mut remap = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old] = new;
        }
        let mut vhosts: Vec<Option<VirtualHost>> = std::mem::take(&mut self.vhosts).into_iter().map(Some).collect();
        self.vhosts = order.iter().map(|&old| vhosts[old].take().expect("each index once")).collect();
        for i in self.exact_hosts.values_mut().chain(self.wildcard_hosts.values_mut()) {
            *i = remap[*i];
        }
        self.catch_all = self.catch_all.map(|i| remap[i]);
        // The snapshot is immutable from here: give back what growing left
        // unused (hosts with more routes than SCAN_MAX).
        for vhost in &mut self.vhosts {
            vhost.routes.shrink_to_fit();
            if let Some(index) = &mut vhost.index {
                index.prefix_lens.shrink_to_fit();
            }
        }
    }
}

// === impl VirtualHost ===

impl VirtualHost {
    fn new(host: &str) -> Self {
        Self { host: host.into(), routes: Vec::new(), index: None }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    fn add(&mut self, mut route: Route) -> Result<(), RouteError> {
        route.host = self.host.clone();
        // A small host is checked by comparing its routes and gets no
        // index; it is built once the host outgrows SCAN_MAX.
        let taken = if self.index.is_none() && self.routes.len() < SCAN_MAX {
            self.routes.iter().position(|r| same_key(r, &route))
        } else {
            let index = self.index.get_or_insert_with(|| Box::new(PathIndex::build(&self.routes)));
            index.insert(&route, self.routes.len()).err()
        };
        if let Some(existing) = taken {
            return Err(RouteError::Conflict {
                host: self.host.to_string(),
                path: route.path.to_string(),
                kind: route.kind,
                existing: self.routes[existing].source.clone(),
            });
        }
        if self.routes.len() < SCAN_MAX {
            // Most hosts have one route: no room for more to trim later.
            self.routes.reserve_exact(1);
        }
        self.routes.push(route);
        Ok(())
    }

    /// Longest match wins; `Exact` beats `Prefix` of equal length.
    pub fn match_path(&self, path: &str) -> Option<&Route> {
        let found = match &self.index {
            Some(index) => index.lookup(path),
            None => scan(&self.routes, path),
        };
        found.map(|i| &self.routes[i])
    }
}

// === impl PathIndex ===

impl PathIndex {
    fn build(routes: &[Route]) -> Self {
        let mut index = Self::default();
        for (i, route) in routes.iter().enumerate() {
            // Routes already in place were checked when they were added.
            let _ = index.insert(route, i);
        }
        index
    }

    /// Indexes `route` as route `i`; `Err` with the position of the route
    /// that already has its path and type.
    fn insert(&mut self, route: &Route, i: usize) -> Result<(), usize> {
        let (map, key) = match route.kind {
            PathKind::Exact => (&mut self.exact, &*route.path),
            PathKind::Prefix => (&mut self.prefix, prefix_key(&route.path)),
        };
        match map.entry(key.into()) {
            Entry::Occupied(e) => Err(*e.get()),
            Entry::Vacant(e) => {
                let len = e.key().len();
                e.insert(i);
                if route.kind == PathKind::Prefix && !self.prefix_lens.contains(&len) {
                    self.prefix_lens.push(len);
                    self.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
                }
                Ok(())
            }
        }
    }

    fn lookup(&self, path: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(path) {
            return Some(i);
        }
        let trimmed = path.trim_end_matches('/');
        self.prefix_lens
            .iter()
            .filter(|&&n| at_boundary(trimmed, n))
            .find_map(|&n| self.prefix.get(&trimmed[..n]))
            .copied()
    }
}

/// [`PathIndex::lookup`] without the index: the exact route for `path`,
/// else the longest prefix that matches.
fn scan(routes: &[Route], path: &str) -> Option<usize> {
    let trimmed = path.trim_end_matches('/');
    let mut best: Option<(usize, usize)> = None;
    for (i, route) in routes.iter().enumerate() {
        match route.kind {
            PathKind::Exact if *route.path == *path => return Some(i),
            PathKind::Exact => {}
            PathKind::Prefix => {
                let key = prefix_key(&route.path);
                let longer = best.is_none_or(|(len, _)| key.len() > len);
                if longer && at_boundary(trimmed, key.len()) && trimmed.as_bytes()[..key.len()] == *key.as_bytes() {
                    best = Some((key.len(), i));
                }
            }
        }
    }
    best.map(|(_, i)| i)
}

/// Whether two routes have the same type and the same path as matched.
fn same_key(a: &Route, b: &Route) -> bool {
    a.kind == b.kind
        && match a.kind {
            PathKind::Exact => a.path == b.path,
            PathKind::Prefix => prefix_key(&a.path) == prefix_key(&b.path),
        }
}

/// A `Prefix` path as it is matched: trailing slashes removed (`/` becomes
/// ``).
fn prefix_key(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// A prefix key of length `n` can match `trimmed` (a path with trailing
/// slashes removed) when `trimmed` has an element boundary at `n`: `/a/b`
/// and `/a/b/` match `/a/b`, `/a` and `` (the `/` prefix), never `/a/bc`.
fn at_boundary(trimmed: &str, n: usize) -> bool {
    let bytes = trimmed.as_bytes();
    n == bytes.len() || (n < bytes.len() && bytes[n] == b'/')
}

/// Strips the port and a trailing dot and lowercases into `buf`, returning
/// the normalized host; `None` when it is empty or too long.
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    let host = strip_port(host)?;
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// `host[:port]` or `[v6][:port]` without the port; `None` for an
/// unterminated IPv6 literal.
pub fn strip_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        // IPv6 literal: keep up to and including the bracket.
        return Some(&host[..=host.find(']')?]);
    }
    Some(host.rsplit_once(':').map_or(host, |(h, _port)| h))
}

/// Lowercase RFC 1123 labels separated by dots (no wildcard).
pub(crate) fn valid_dns_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.as_bytes().split(|&b| b == b'.').all(valid_label_bytes)
}

/// One lowercase RFC 1123 label: 1 to 63 letters, digits and inner
/// hyphens (also the shape of a namespace or Service name).
pub fn valid_dns_label(label: &str) -> bool {
    valid_label_bytes(label.as_bytes())
}

fn valid_label_bytes(label: &[u8]) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

#[cfg(test)]
mod tests;
