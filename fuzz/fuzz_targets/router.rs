//! The host/path router against a slow, obviously-correct model of the
//! Ingress v1 matching rules: any disagreement (or panic) is a finding.
//!
//! Routes and requests are drawn from small alphabets of hosts and path
//! segments so that prefixes, trailing slashes, wildcards and case collide
//! often; free-form strings cover hostile input.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::router::Router;
use switchyard_dataplane::snapshot::{PathKind, Route};

const HOSTS: &[&str] = &["a.example", "b.a.example", "*.a.example", "*.example", "example", "xn--bcher-kva.example"];
const REQUEST_HOSTS: &[&str] = &[
    "a.example",
    "A.EXAMPLE",
    "a.example.",
    "a.example:8080",
    "b.a.example",
    "c.b.a.example",
    ".a.example",
    "example",
    "z.example:1",
    "[::1]:80",
    "[::1",
    "",
    ":80",
];
const SEGMENTS: &[&str] = &["a", "b", "ab", "a.b", "%2F", "", "A"];

#[derive(Arbitrary, Debug)]
enum Text {
    /// An index into a table.
    Known(u8),
    /// Anything at all.
    Free(String),
}

#[derive(Arbitrary, Debug)]
struct Path {
    segments: Vec<u8>,
    trailing_slashes: u8,
    free: Option<String>,
}

impl Path {
    fn render(&self) -> String {
        if let Some(free) = &self.free {
            return free.clone();
        }
        let mut p = String::new();
        for s in self.segments.iter().take(6) {
            p.push('/');
            p.push_str(SEGMENTS[*s as usize % SEGMENTS.len()]);
        }
        if p.is_empty() {
            p.push('/');
        }
        for _ in 0..self.trailing_slashes % 3 {
            p.push('/');
        }
        p
    }
}

#[derive(Arbitrary, Debug)]
struct Rule {
    host: Option<Text>,
    exact: bool,
    path: Path,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<Rule>,
    default_backend: bool,
    requests: Vec<(Option<Text>, Path)>,
}

fn pick(text: &Text, table: &[&str]) -> String {
    match text {
        Text::Known(i) => table[*i as usize % table.len()].to_string(),
        Text::Free(s) => s.clone(),
    }
}

/// A route the model accepted: normalized host key (None = no host),
/// kind, path, backend index.
struct ModelRoute {
    host: Option<String>,
    kind: PathKind,
    path: String,
    backend: usize,
}

/// The host key a rule's host is stored under, or None if it is invalid.
fn model_host_key(host: &str) -> Option<String> {
    let lower = host.to_ascii_lowercase();
    let lower = lower.trim_end_matches('.');
    let name = lower.strip_prefix("*.").unwrap_or(lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (!name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)).then(|| lower.to_string())
}

fn prefix_key(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// Does a route's path match the request path?
fn path_matches(kind: PathKind, rule: &str, request: &str) -> bool {
    match kind {
        PathKind::Exact => rule == request,
        PathKind::Prefix => {
            let key = prefix_key(rule);
            let req = request.trim_end_matches('/');
            req == key || req.starts_with(&format!("{key}/"))
        }
    }
}

/// The model's answer: the routes of the most specific host, filtered by
/// path, then Exact first, then the longest prefix key, first added.
fn model(routes: &[ModelRoute], default: Option<usize>, host: Option<&str>, path: &str) -> Option<usize> {
    let normalized = host.and_then(|h| {
        let h = if h.starts_with('[') { &h[..=h.find(']')?] } else { h.rsplit_once(':').map_or(h, |(h, _)| h) };
        let h = h.strip_suffix('.').unwrap_or(h);
        (!h.is_empty() && h.len() <= 255).then(|| h.to_ascii_lowercase())
    });
    let has = |key: &str| routes.iter().any(|r| r.host.as_deref() == Some(key));
    let chosen: Option<Option<String>> = match &normalized {
        Some(h) if has(h) => Some(Some(h.clone())),
        Some(h) => match h.split_once('.') {
            Some((label, suffix)) if !label.is_empty() && has(&format!("*.{suffix}")) => {
                Some(Some(format!("*.{suffix}")))
            }
            _ => routes.iter().any(|r| r.host.is_none()).then_some(None),
        },
        None => routes.iter().any(|r| r.host.is_none()).then_some(None),
    };
    let Some(chosen) = chosen else { return default };
    let candidates: Vec<&ModelRoute> =
        routes.iter().filter(|r| r.host == chosen && path_matches(r.kind, &r.path, path)).collect();
    if let Some(exact) = candidates.iter().find(|r| r.kind == PathKind::Exact) {
        return Some(exact.backend);
    }
    let best = candidates.iter().filter(|r| r.kind == PathKind::Prefix).max_by(|a, b| {
        // Longest key; on a tie the first added (smaller backend index) wins.
        prefix_key(&a.path).len().cmp(&prefix_key(&b.path).len()).then(b.backend.cmp(&a.backend))
    });
    best.map(|r| r.backend).or(default)
}

fn route(host: &str, path: &str, kind: PathKind, backend: usize) -> Route {
    Route::new(host, path, kind, backend, format!("ns/ing-{backend}").into())
}

fuzz_target!(|input: Input| {
    let mut router = Router::default();
    let mut model_routes: Vec<ModelRoute> = Vec::new();
    for (i, rule) in input.rules.iter().take(32).enumerate() {
        let host = rule.host.as_ref().map(|h| pick(h, HOSTS));
        let path = rule.path.render();
        let kind = if rule.exact { PathKind::Exact } else { PathKind::Prefix };
        let added = router.add_route(host.as_deref(), route(host.as_deref().unwrap_or("*"), &path, kind, i)).is_ok();
        // The model's view of validity and conflicts.
        let host_key = match &host {
            None => Some(None),
            Some(h) => model_host_key(h).map(Some),
        };
        let expected = match host_key {
            Some(key) if path.starts_with('/') => {
                let key_of = |r: &ModelRoute| match r.kind {
                    PathKind::Exact => r.path.clone(),
                    PathKind::Prefix => prefix_key(&r.path).to_string(),
                };
                let mine = match kind {
                    PathKind::Exact => path.clone(),
                    PathKind::Prefix => prefix_key(&path).to_string(),
                };
                let conflict = model_routes.iter().any(|r| r.host == key && r.kind == kind && key_of(r) == mine);
                if !conflict {
                    model_routes.push(ModelRoute { host: key, kind, path: path.clone(), backend: i });
                }
                !conflict
            }
            _ => false,
        };
        assert_eq!(added, expected, "add_route({host:?}, {path:?}, {kind:?})");
    }
    let default = input.default_backend.then_some(usize::MAX);
    if default.is_some() {
        router.set_default_backend(route("*", "", PathKind::Prefix, usize::MAX)).unwrap();
    }
    router.finish();
    for (host, path) in input.requests.iter().take(32) {
        let host = host.as_ref().map(|h| pick(h, REQUEST_HOSTS));
        let path = path.render();
        let got = router.route(host.as_deref(), &path).map(|r| r.backend);
        let want = model(&model_routes, default, host.as_deref(), &path);
        assert_eq!(got, want, "route({host:?}, {path:?})");
    }
});
