//! Request and response header rewriting (RFC 9110 §7.6.1 hop-by-hop
//! fields; the de-facto `X-Forwarded-*` set).

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
pub(super) fn prepare_request(parts: &mut Parts, upgrade: Option<HeaderValue>, client: ClientInfo) {
    let conn = client.conn;
    let headers = &mut parts.headers;
    // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need Host.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, v);
    }
    let forwarded_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    // X-Forwarded-For from the client is kept (and our peer appended) only
    // when the peer is a trusted proxy; otherwise it is replaced by the peer.
    let peer = conn.peer.ip().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(chain) if client.via_trusted_proxy => format!("{chain}, {peer}"),
        _ => peer,
    };
    let ip_value = |s: &str| HeaderValue::from_str(s).expect("IP addresses are valid header values");
    headers.insert(X_FORWARDED_FOR.clone(), ip_value(&forwarded_for));
    headers.insert(X_REAL_IP.clone(), ip_value(&client.ip.to_string()));
    let proto = if conn.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    headers.insert(X_FORWARDED_PORT.clone(), HeaderValue::from(conn.local.port()));
    match forwarded_host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// Removes the hop-by-hop fields and every field named in `Connection`.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn conn() -> ClientInfo {
        let conn = super::super::ConnInfo {
            peer: "192.0.2.7:5555".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
        };
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
        prepare_request(&mut parts, None, conn());
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
        prepare_request(&mut parts, Some(HeaderValue::from_static("websocket")), conn());
        assert_eq!(parts.headers["connection"], "upgrade");
        assert_eq!(parts.headers["upgrade"], "websocket");
    }
}
