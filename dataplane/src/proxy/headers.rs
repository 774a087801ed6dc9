//! Request and response header rewriting (RFC 9110 §7.6.1 hop-by-hop
//! fields; the de-facto `X-Forwarded-*` set).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use super::ClientInfo;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Rewrites a downstream request's head for the upstream: hop-by-hop fields
/// removed (an upgrade is re-declared), Host kept, `X-Forwarded-*` set.
/// Toward an HTTP/2 upstream, the client's `TE: trailers` is kept (gRPC
/// needs it; it is the only TE value HTTP/2 allows).
pub(super) fn prepare_request(parts: &mut Parts, upgrade: Option<HeaderValue>, client: ClientInfo, http2: bool) {
    let conn = client.conn;
    let headers = &mut parts.headers;
    // Room for the fields added below at once (hyper sizes the map for the
    // fields it parsed; growing it field by field rehashes it twice).
    headers.reserve(6);
    let te_trailers = http2
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need Host.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, v);
    }
    let forwarded_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // HTTP/2 carries the authority as `:authority` (the endpoint's): a
    // `Host` that disagrees with it is not allowed (RFC 9113 §8.3.1). The
    // client's host still travels in X-Forwarded-Host.
    if http2 {
        headers.remove(header::HOST);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    // X-Forwarded-For from the client is kept (and our peer appended) only
    // when the peer is a trusted proxy; otherwise it is replaced by the peer.
    let peer = ip_value(conn.peer.ip());
    let real_ip = if client.ip == conn.peer.ip() { peer.clone() } else { ip_value(client.ip) };
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(chain) if client.via_trusted_proxy => {
            let appended = format!("{chain}, {}", conn.peer.ip());
            HeaderValue::from_str(&appended).expect("a valid field value with an IP address appended")
        }
        _ => peer,
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_REAL_IP.clone(), real_ip);
    let proto = if conn.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    headers.insert(X_FORWARDED_PORT.clone(), HeaderValue::from(conn.local_port));
    match forwarded_host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// An IP address as a field value. IPv4 is written digit by digit: going
/// through `fmt` cost more than the rest of the request's header rewrite.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).expect("IP addresses are valid field values");
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).expect("digits and dots are valid field values")
}

/// Whether `name` is a hop-by-hop field (RFC 9110 §7.6.1, and the
/// de-facto `Keep-Alive` and `Proxy-Connection`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes the hop-by-hop fields and every field named in `Connection`.
/// One pass over the fields first: most messages have none, and then
/// nothing is looked up.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Removes from trailers the fields that must not be taken from them
/// (RFC 9110 §6.5.1): framing, routing, connection control,
/// authentication and cookies. gRPC's `grpc-status` and `grpc-message`
/// pass.
pub(super) fn sanitize_trailers(trailers: &mut HeaderMap) {
    strip_hop_by_hop(trailers);
    for name in [
        &header::CONTENT_LENGTH,
        &header::CONTENT_RANGE,
        &header::CONTENT_TYPE,
        &header::CONTENT_ENCODING,
        &header::HOST,
        &header::AUTHORIZATION,
        &header::PROXY_AUTHORIZATION,
        &header::WWW_AUTHENTICATE,
        &header::PROXY_AUTHENTICATE,
        &header::COOKIE,
        &header::SET_COOKIE,
        &header::CACHE_CONTROL,
        &header::EXPECT,
        &header::LOCATION,
    ] {
        trailers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_values_read_as_the_standard_formatting() {
        for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "127.0.0.1", "192.168.10.99", "::1", "fd00::1:2"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(super::ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    use super::*;
    use http::Request;

    fn conn() -> ClientInfo {
        let conn = super::super::ConnInfo { peer: "192.0.2.7:5555".parse().unwrap(), local_port: 8080, tls: false };
        ClientInfo { conn, ip: conn.peer.ip(), via_trusted_proxy: false }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_fields() {
        let req = Request::get("/x")
            .header("host", "a.test")
            .header("connection", "keep-alive, X-Secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "gzip")
            .header("upgrade", "h2c")
            .header("user-agent", "curl/8")
            .header("x-forwarded-for", "10.9.9.9")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        prepare_request(&mut parts, None, conn(), false);
        let h = &parts.headers;
        for gone in ["connection", "x-secret", "keep-alive", "te", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} must be removed");
        }
        assert_eq!(h["host"], "a.test");
        assert_eq!(h["user-agent"], "curl/8");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-port"], "8080");
    }

    #[test]
    fn upgrade_is_redeclared() {
        let (mut parts, ()) = Request::get("/ws")
            .header("host", "a.test")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap()
            .into_parts();
        prepare_request(&mut parts, Some(HeaderValue::from_static("websocket")), conn(), false);
        assert_eq!(parts.headers["connection"], "upgrade");
        assert_eq!(parts.headers["upgrade"], "websocket");
    }

    #[test]
    fn te_trailers_is_kept_toward_http2_only() {
        for (http2, kept) in [(true, true), (false, false)] {
            let (mut parts, ()) = Request::post("/pkg.Svc/Call")
                .header("host", "a.test")
                .header("te", "trailers")
                .body(())
                .unwrap()
                .into_parts();
            prepare_request(&mut parts, None, conn(), http2);
            assert_eq!(parts.headers.get("te").is_some(), kept, "http2 upstream: {http2}");
        }
        let (mut parts, ()) = Request::post("/x").header("te", "gzip").body(()).unwrap().into_parts();
        prepare_request(&mut parts, None, conn(), true);
        assert!(parts.headers.get("te").is_none(), "only `trailers` passes");
    }

    #[test]
    fn trailers_lose_framing_and_routing_fields() {
        let mut t = HeaderMap::new();
        for (name, value) in [
            ("grpc-status", "0"),
            ("grpc-message", "ok"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("host", "evil.test"),
            ("set-cookie", "a=b"),
            ("authorization", "x"),
        ] {
            t.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        sanitize_trailers(&mut t);
        let mut left: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-message", "grpc-status"]);
    }
}
