//! Requests refused before routing, from their parsed head (RFC 9110,
//! RFC 9112). hyper has already refused what does not parse; the raw-byte
//! checks are the listener's [`audit`](crate::listener::audit).

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, StatusCode, Version};

use super::Rejection;

pub(super) const TOO_LARGE: Rejection =
    Rejection { status: StatusCode::PAYLOAD_TOO_LARGE, reason: "request body exceeds the size limit" };
pub(super) const BAD_BODY: Rejection =
    Rejection { status: StatusCode::BAD_REQUEST, reason: "malformed or incomplete request body" };

const fn bad(reason: &'static str) -> Rejection {
    Rejection { status: StatusCode::BAD_REQUEST, reason }
}

/// Why `req` must not be forwarded, if it must not.
pub(super) fn request_problem<B>(req: &Request<B>) -> Option<Rejection> {
    if req.method() == Method::CONNECT {
        // A reverse proxy is not a tunnel; a 2xx would turn the
        // connection into one.
        return Some(Rejection { status: StatusCode::METHOD_NOT_ALLOWED, reason: "CONNECT is not served" });
    }
    host_problem(req).or_else(|| transfer_encoding_problem(req))
}

/// The declared body length, if any.
pub(super) fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// RFC 9112 §3.2 and RFC 9110 §7.2: an HTTP/1.1 request has exactly one
/// valid Host; an absolute-form target or `:authority` names the same host
/// (routing on one and forwarding the other would let a client reach a
/// virtual host that no Ingress exposes).
fn host_problem<B>(req: &Request<B>) -> Option<Rejection> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(bad("more than one Host header"));
    }
    if let Some(host) = host
        && !valid_host(host)
    {
        return Some(bad("invalid Host header"));
    }
    match (req.uri().authority(), host) {
        (None, None) if req.version() == Version::HTTP_11 => Some(bad("missing Host header")),
        (Some(authority), Some(host)) if !authority.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()) => {
            Some(bad("the request target's host and the Host header disagree"))
        }
        _ => None,
    }
}

/// `uri-host [ ":" port ]`: an authority without user information.
fn valid_host(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty() || (!bytes.contains(&b'@') && Authority::try_from(bytes).is_ok())
}

/// RFC 9112 §6.1: the only transfer coding forwarded is a single
/// `chunked` (hyper refuses codings that do not end in `chunked`, and
/// HTTP/1.0 with any). Anything else — `gzip, chunked`, two fields — could
/// be decoded differently downstream, or not at all.
fn transfer_encoding_problem<B>(req: &Request<B>) -> Option<Rejection> {
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    let first = codings.next()?;
    let single_chunked = first.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    (!single_chunked || codings.next().is_some()).then_some(bad("unsupported Transfer-Encoding"))
}

/// nginx's size syntax: digits with an optional `k`, `m` or `g` suffix
/// (binary multiples, any case).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 1 << 10),
        b'm' | b'M' => (&text[..text.len() - 1], 1 << 20),
        b'g' | b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(build: impl FnOnce(http::request::Builder) -> http::request::Builder) -> Request<()> {
        build(Request::builder().uri("/")).body(()).unwrap()
    }

    #[test]
    fn hosts() {
        assert_eq!(request_problem(&req(|b| b.header("host", "a.test"))), None);
        assert_eq!(request_problem(&req(|b| b.header("host", "a.test:8080"))), None);
        assert!(request_problem(&req(|b| b)).is_some(), "HTTP/1.1 without Host");
        assert_eq!(request_problem(&req(|b| b.version(Version::HTTP_10))), None);
        assert!(request_problem(&req(|b| b.header("host", "a.test").header("host", "a.test"))).is_some());
        assert!(request_problem(&req(|b| b.header("host", "user@a.test"))).is_some());
        assert!(request_problem(&req(|b| b.header("host", "a.test/x"))).is_some());
        assert!(request_problem(&req(|b| b.uri("http://b.test/").header("host", "a.test"))).is_some());
        assert_eq!(request_problem(&req(|b| b.uri("http://A.test/").header("host", "a.TEST"))), None);
    }

    #[test]
    fn transfer_codings() {
        let te = |v: &'static str| req(move |b| b.header("host", "a").header("transfer-encoding", v));
        assert_eq!(request_problem(&te("chunked")), None);
        assert_eq!(request_problem(&te(" Chunked ")), None);
        assert!(request_problem(&te("gzip, chunked")).is_some());
        assert!(request_problem(&te("identity")).is_some());
        let two = req(|b| {
            b.header("host", "a").header("transfer-encoding", "chunked").header("transfer-encoding", "chunked")
        });
        assert!(request_problem(&two).is_some());
        let connect = req(|b| b.method("CONNECT").uri("a.test:443").header("host", "a.test:443"));
        assert_eq!(request_problem(&connect).unwrap().status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("8m"), Some(8 << 20));
        assert_eq!(parse_size("8M"), Some(8 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        for bad in ["", "m", "1.5m", "-1", "1 m", "1mb", "ten", "99999999999999999999g", "+1"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
