//! Table tests: every row of the Kubernetes documentation's Ingress
//! "Examples" (path matching) table and "Hostname wildcards" table, plus
//! our own precedence rules.

use super::*;

fn mk_route(path: &str, kind: PathKind, backend: usize) -> Route {
    Route::new("", path, kind, backend, format!("default/ing-{backend}").into())
}

/// Builds a router with one host-less rule per `(kind, path)`; backend
/// index = position in `paths`.
fn mk_router(paths: &[(PathKind, &str)]) -> Router {
    let mut r = Router::default();
    for (i, (kind, path)) in paths.iter().enumerate() {
        r.add_route(None, mk_route(path, *kind, i)).unwrap();
    }
    r.finish();
    r
}

/// The backend that serves `path`; every host is also matched through
/// its hash index, which must agree (hosts with few routes are matched
/// without one).
fn routed(r: &Router, path: &str) -> Option<usize> {
    let found = r.route(Some("any.example"), path).map(|route| route.backend);
    for vhost in r.vhosts() {
        let index = PathIndex::build(vhost.routes());
        assert_eq!(
            index.lookup(path).map(|i| vhost.routes()[i].backend),
            scan(vhost.routes(), path).map(|i| vhost.routes()[i].backend),
            "scan and index disagree on {path:?}"
        );
    }
    found
}

use PathKind::{Exact, Prefix};

/// The paths of one table row.
type Paths<'a> = &'a [(PathKind, &'a str)];

/// Kubernetes docs, Ingress, "Examples" table. `want` is the index of the
/// path in `paths` that must serve the request, or `None` for no match.
#[test]
fn kubernetes_path_examples_table() {
    #[rustfmt::skip]
    let table: &[(Paths<'_>, &str, Option<usize>)] = &[
        // Prefix / matches all paths
        (&[(Prefix, "/")], "/", Some(0)),
        (&[(Prefix, "/")], "/anything/at/all", Some(0)),
        // Exact /foo
        (&[(Exact, "/foo")], "/foo", Some(0)),
        (&[(Exact, "/foo")], "/bar", None),
        (&[(Exact, "/foo")], "/foo/", None),
        (&[(Exact, "/foo/")], "/foo", None),
        // Prefix /foo matches /foo and /foo/
        (&[(Prefix, "/foo")], "/foo", Some(0)),
        (&[(Prefix, "/foo")], "/foo/", Some(0)),
        (&[(Prefix, "/foo/")], "/foo", Some(0)),
        (&[(Prefix, "/foo/")], "/foo/", Some(0)),
        // Last element appears as a substring in the request path
        (&[(Prefix, "/aaa/bb")], "/aaa/bbb", None),
        (&[(Prefix, "/aaa/bbb")], "/aaa/bbb", Some(0)),
        // Ignores trailing slash
        (&[(Prefix, "/aaa/bbb/")], "/aaa/bbb", Some(0)),
        // Matches trailing slash
        (&[(Prefix, "/aaa/bbb")], "/aaa/bbb/", Some(0)),
        // Matches subpath
        (&[(Prefix, "/aaa/bbb")], "/aaa/bbb/ccc", Some(0)),
        // Does not match string prefix
        (&[(Prefix, "/aaa/bbb")], "/aaa/bbbxyz", None),
        // Matches /aaa prefix
        (&[(Prefix, "/"), (Prefix, "/aaa")], "/aaa/ccc", Some(1)),
        // Matches /aaa/bbb prefix
        (&[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")], "/aaa/bbb", Some(2)),
        // Matches / prefix
        (&[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")], "/ccc", Some(0)),
        // Uses default backend (no match)
        (&[(Prefix, "/aaa")], "/ccc", None),
        // Mixed: prefers Exact
        (&[(Prefix, "/foo"), (Exact, "/foo")], "/foo", Some(1)),
    ];
    for (paths, request, want) in table {
        let r = mk_router(paths);
        assert_eq!(routed(&r, request), *want, "paths {paths:?}, request {request:?}");
    }
}

#[test]
fn exact_is_case_sensitive() {
    let r = mk_router(&[(Exact, "/Foo")]);
    assert_eq!(routed(&r, "/Foo"), Some(0));
    assert_eq!(routed(&r, "/foo"), None);
}

#[test]
fn longest_match_wins_regardless_of_insertion_order() {
    let r = mk_router(&[(Prefix, "/a/b/c"), (Prefix, "/a"), (Exact, "/a/b"), (Prefix, "/a/b")]);
    assert_eq!(routed(&r, "/a/b/c/d"), Some(0));
    assert_eq!(routed(&r, "/a/b"), Some(2));
    assert_eq!(routed(&r, "/a/b/"), Some(3));
    assert_eq!(routed(&r, "/a/x"), Some(1));
}

fn mk_host_router(hosts: &[&str]) -> Router {
    let mut r = Router::default();
    for (i, host) in hosts.iter().enumerate() {
        r.add_route(Some(host), mk_route("/", Prefix, i)).unwrap();
    }
    r.finish();
    r
}

/// Kubernetes docs, Ingress, "Hostname wildcards" table.
#[test]
fn kubernetes_hostname_wildcards_table() {
    let r = mk_host_router(&["*.foo.com"]);
    // Matches based on shared suffix
    assert_eq!(r.route(Some("bar.foo.com"), "/").map(|x| x.backend), Some(0));
    // No match, wildcard only covers a single DNS label
    assert!(r.route(Some("baz.bar.foo.com"), "/").is_none());
    // No match, wildcard only covers a single DNS label
    assert!(r.route(Some("foo.com"), "/").is_none());
}

#[test]
fn host_match_ignores_case_port_and_trailing_dot() {
    let r = mk_host_router(&["Example.COM", "*.wild.test"]);
    for host in ["example.com", "EXAMPLE.com:8080", "example.com.", "Example.Com.:80"] {
        assert_eq!(r.route(Some(host), "/").map(|x| x.backend), Some(0), "{host}");
    }
    assert_eq!(r.route(Some("A.Wild.Test:443"), "/").map(|x| x.backend), Some(1));
    assert!(r.route(Some(".wild.test"), "/").is_none());
}

#[test]
fn exact_host_beats_wildcard_and_catch_all() {
    let mut r = Router::default();
    r.add_route(None, mk_route("/", Prefix, 0)).unwrap();
    r.add_route(Some("*.example.com"), mk_route("/", Prefix, 1)).unwrap();
    r.add_route(Some("api.example.com"), mk_route("/", Prefix, 2)).unwrap();
    r.finish();
    let b = |h: Option<&str>| r.route(h, "/x").map(|x| x.backend);
    assert_eq!(b(Some("api.example.com")), Some(2));
    assert_eq!(b(Some("web.example.com")), Some(1));
    assert_eq!(b(Some("other.test")), Some(0));
    assert_eq!(b(None), Some(0));
    assert_eq!(b(Some("[::1]:8080")), Some(0));
}

#[test]
fn unmatched_path_falls_to_default_backend_then_none() {
    let mut r = Router::default();
    r.add_route(Some("a.test"), mk_route("/api", Prefix, 0)).unwrap();
    r.finish();
    assert!(r.route(Some("a.test"), "/other").is_none());
    assert!(r.route(Some("b.test"), "/api").is_none());
    r.set_default_backend(mk_route("/", Prefix, 9)).unwrap();
    assert_eq!(r.route(Some("a.test"), "/other").map(|x| x.backend), Some(9));
    assert_eq!(r.route(Some("b.test"), "/api").map(|x| x.backend), Some(9));
    assert_eq!(r.set_default_backend(mk_route("/", Prefix, 10)), Err("default/ing-9".into()));
}

#[test]
fn same_host_path_and_type_conflicts_first_wins() {
    let mut r = Router::default();
    r.add_route(Some("a.test"), mk_route("/x", Prefix, 0)).unwrap();
    let err = r.add_route(Some("A.test"), mk_route("/x/", Prefix, 1)).unwrap_err();
    assert!(matches!(err, RouteError::Conflict { ref existing, .. } if &**existing == "default/ing-0"), "{err:?}");
    // Same path, other type: no conflict.
    r.add_route(Some("a.test"), mk_route("/x", Exact, 2)).unwrap();
    r.finish();
    assert_eq!(r.route(Some("a.test"), "/x/y").map(|x| x.backend), Some(0));
}

#[test]
fn invalid_hosts_and_paths_are_rejected() {
    let mut r = Router::default();
    for host in ["", "*", "a.*.test", "foo_bar.test", "-a.test", "*.", "a..b"] {
        assert!(
            matches!(r.add_route(Some(host), mk_route("/", Prefix, 0)), Err(RouteError::InvalidHost { .. })),
            "{host:?}"
        );
    }
    assert!(matches!(r.add_route(None, mk_route("foo", Prefix, 0)), Err(RouteError::InvalidPath { .. })));
}

#[test]
fn deep_paths_match_with_a_bounded_number_of_probes() {
    let r = mk_router(&[(Prefix, "/"), (Prefix, "/a"), (Prefix, "/a/a/b")]);
    let deep = "/a".repeat(30_000);
    assert_eq!(routed(&r, &deep), Some(1));
    assert_eq!(routed(&r, &format!("/a/a/b{deep}")), Some(2));
    assert_eq!(routed(&r, &format!("/x{deep}")), Some(0));
    let index = PathIndex::build(r.vhosts()[0].routes());
    assert_eq!(index.prefix_lens, [6, 2, 0], "one probe per distinct configured prefix length");
}

#[test]
fn large_hosts_keep_their_index_and_match_like_small_ones() {
    let paths: Vec<String> = (0..20).map(|i| format!("/p{i}")).collect();
    let mut table: Vec<(PathKind, &str)> = vec![(Prefix, "/"), (Exact, "/p3/x")];
    table.extend(paths.iter().map(|p| (Prefix, p.as_str())));
    let r = mk_router(&table);
    assert!(r.vhosts()[0].index.is_some(), "more than SCAN_MAX routes: indexed");
    assert_eq!(routed(&r, "/p3/x"), Some(1));
    assert_eq!(routed(&r, "/p3/y"), Some(5));
    assert_eq!(routed(&r, "/p19"), Some(21));
    assert_eq!(routed(&r, "/p190"), Some(0));
    let small = mk_router(&table[..SCAN_MAX]);
    assert!(small.vhosts()[0].index.is_none(), "SCAN_MAX routes or fewer: scanned");
    // Adding after finish() still finds conflicts: on a host with
    // SCAN_MAX routes (the index is built then), and on a smaller one (by
    // comparing routes).
    let mut r = small;
    assert!(matches!(r.add_route(None, mk_route("/p0/", Prefix, 99)), Err(RouteError::Conflict { .. })));
    let mut r = mk_router(&table[..3]);
    assert!(matches!(r.add_route(None, mk_route("/p0/", Prefix, 99)), Err(RouteError::Conflict { .. })));
    assert!(matches!(r.add_route(None, mk_route("/p3/x", Exact, 99)), Err(RouteError::Conflict { .. })));
    assert!(r.add_route(None, mk_route("/p3/x", Prefix, 99)).is_ok(), "same path, other type: no conflict");
}
