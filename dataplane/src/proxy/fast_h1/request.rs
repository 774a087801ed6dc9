//! The requests the fast path takes, and their head toward the upstream.
//!
//! Only the plainest request is taken: a complete HTTP/1.1 `GET` or `HEAD`
//! head in origin form, one valid `Host`, no body (no `Content-Length`, no
//! `Transfer-Encoding`), no `Upgrade` or `Expect`, and a `Connection` that
//! says at most `keep-alive` or `close`. Everything else goes to hyper, as
//! before: declining is always safe, because nothing has been read past the
//! head nor sent anywhere yet.
//!
//! The head sent upstream is the client's, rewritten as
//! `super::super::headers::prepare_request` does for hyper's path:
//! hop-by-hop fields removed (RFC 9110 §7.6.1), `Host` kept, and the
//! `X-Forwarded-*` set and `X-Real-IP` replaced by our own; behind a
//! trusted proxy (`--trusted-proxies`), the client's `X-Forwarded-For` is
//! kept with the peer appended, and `X-Real-IP` is the rightmost untrusted
//! hop ([`Forwarded`]).

use std::net::IpAddr;

use ipnet::IpNet;

/// Header fields parsed at most (more: hyper answers 431).
pub(super) const MAX_HEADERS: usize = 100;

/// A request head the fast path takes.
#[derive(Debug)]
pub(super) struct Head<'a> {
    /// Bytes of the head, its final CRLF included.
    pub len: usize,
    pub method: Method,
    /// The request target (origin form: path and query).
    pub target: &'a str,
    /// The path part of the target, for routing.
    pub path: &'a str,
    pub host: &'a str,
    /// The client asked to close after this response.
    pub close: bool,
    pub headers: &'a [httparse::Header<'a>],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
        }
    }
}

/// The head at the start of `input`, if the fast path takes it
/// (`max_headers`: the listener's limit, at most [`MAX_HEADERS`]).
pub(super) fn parse<'a>(
    input: &'a [u8],
    storage: &'a mut [httparse::Header<'a>; MAX_HEADERS],
    max_headers: usize,
) -> Option<Head<'a>> {
    let mut req = httparse::Request::new(storage);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) | Err(_) => return None,
    };
    if req.version != Some(1) || req.headers.len() > max_headers {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return None,
    };
    let target = req.path?;
    if !target.starts_with('/') || !target.bytes().all(plain_target_byte) {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let mut host = None;
    let mut close = false;
    for h in req.headers.iter() {
        match classify(h.name) {
            Field::Host => {
                if host.is_some() {
                    return None;
                }
                host = Some(std::str::from_utf8(h.value).ok().filter(|v| plain_host(v))?);
            }
            Field::Connection => close |= connection_close(h.value)?,
            Field::Refused => return None,
            Field::HopByHop | Field::Replaced | Field::Other => {}
        }
    }
    Some(Head { len, method, target, path, host: host?, close, headers: req.headers })
}

/// Who a request is from, as the head sent upstream tells it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Forwarded<'a> {
    /// The connection's peer.
    pub peer: IpAddr,
    /// The client (`X-Real-IP`, hashing, the access log): the peer, or
    /// behind a trusted proxy the rightmost untrusted hop.
    pub client: IpAddr,
    /// The first `X-Forwarded-For` as it came, kept (the peer appended)
    /// when the peer is a trusted proxy.
    pub chain: Option<&'a [u8]>,
}

impl<'a> Forwarded<'a> {
    /// As hyper's path has it (`super::super::client_ip` and
    /// `headers::prepare_request`).
    pub fn of(head: &Head<'a>, peer: IpAddr, trusted: &[IpNet]) -> Self {
        if trusted.is_empty() || !super::super::client_ip::is_trusted(peer, trusted) {
            return Self { peer, client: peer, chain: None };
        }
        let values = || {
            head.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                .filter_map(|h| field_text(h.value))
        };
        let client = super::super::client_ip::client_ip_of(values(), peer, trusted);
        // Only the first field is kept (`HeaderMap::get`), if it is text.
        let first = head.headers.iter().find(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"));
        Self { peer, client, chain: first.and_then(|h| field_text(h.value)).map(str::as_bytes) }
    }
}

/// A field value as `HeaderValue::to_str` takes it: visible ASCII, spaces
/// and tabs.
fn field_text(value: &[u8]) -> Option<&str> {
    value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)).then(|| std::str::from_utf8(value).ok()).flatten()
}

/// Writes the head toward the upstream into `out`: the client's fields but
/// the hop-by-hop ones and those we set, then ours.
pub(super) fn write_upstream_head(
    head: &Head<'_>,
    from: &Forwarded<'_>,
    local_port: u16,
    tls: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in head.headers {
        if matches!(classify(h.name), Field::Host | Field::Other) {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut ip = [0u8; 39];
    let peer = write_ip(from.peer, &mut ip);
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(chain) = from.chain {
        out.extend_from_slice(chain);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer);
    out.extend_from_slice(b"\r\nx-real-ip: ");
    if from.client == from.peer {
        out.extend_from_slice(peer);
    } else {
        let mut client = [0u8; 39];
        out.extend_from_slice(write_ip(from.client, &mut client));
    }
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(if tls { "https" } else { "http" }.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-port: ");
    out.extend_from_slice(itoa::Buffer::new().format(local_port).as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-host: ");
    out.extend_from_slice(head.host.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// What a request field is to the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Host,
    Connection,
    /// The request is left to hyper.
    Refused,
    /// Not forwarded (hop-by-hop).
    HopByHop,
    /// Not forwarded: the proxy sets its own.
    Replaced,
    /// Forwarded as it came.
    Other,
}

/// By length first, so that most fields are told apart by one comparison.
fn classify(name: &str) -> Field {
    let is = |other: &str| name.eq_ignore_ascii_case(other);
    match name.len() {
        2 if is("te") => Field::HopByHop,
        4 if is("host") => Field::Host,
        6 if is("expect") => Field::Refused,
        7 if is("upgrade") => Field::Refused,
        7 if is("trailer") => Field::HopByHop,
        9 if is("x-real-ip") => Field::Replaced,
        10 if is("connection") => Field::Connection,
        10 if is("keep-alive") => Field::HopByHop,
        14 if is("content-length") => Field::Refused,
        15 if is("x-forwarded-for") => Field::Replaced,
        16 if is("x-forwarded-host") || is("x-forwarded-port") => Field::Replaced,
        16 if is("proxy-connection") => Field::HopByHop,
        17 if is("x-forwarded-proto") => Field::Replaced,
        17 if is("transfer-encoding") => Field::Refused,
        _ => Field::Other,
    }
}

/// `Connection` naming only `keep-alive` and `close`: whether it says
/// close; `None` when it names other fields (hyper's path removes those).
fn connection_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
            return None;
        }
    }
    Some(close)
}

/// RFC 3986's unreserved, sub-delims, `:`, `@`, `/`, `?` and `%`: a
/// target made only of these is valid for every HTTP parser on the way.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

/// A DNS name or IPv4 address with an optional port (IPv6 literals and
/// anything unusual go to hyper's path, which checks them fully).
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && !host.starts_with([':', '.', '-'])
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        && host.bytes().filter(|&b| b == b':').count() <= 1
        && host.split_once(':').is_none_or(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// An IP address in its standard text form, without `fmt` for IPv4.
fn write_ip(ip: IpAddr, buf: &mut [u8; 39]) -> &[u8] {
    let IpAddr::V4(v4) = ip else {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cursor, "{ip}");
        let n = usize::try_from(cursor.position()).unwrap_or(0);
        return &buf[..n];
    };
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(octet).as_bytes();
        buf[n..n + digits.len()].copy_from_slice(digits);
        n += digits.len();
    }
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: &str) -> Option<(usize, Method, String, String, String, bool)> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse(input.as_bytes(), &mut storage, MAX_HEADERS)?;
        Some((head.len, head.method, head.target.to_string(), head.path.to_string(), head.host.to_string(), head.close))
    }

    fn upstream(input: &str, peer: &str) -> String {
        upstream_behind(input, peer, &[])
    }

    fn upstream_behind(input: &str, peer: &str, trusted: &[&str]) -> String {
        let trusted: Vec<IpNet> = trusted.iter().map(|n| n.parse().unwrap()).collect();
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse(input.as_bytes(), &mut storage, MAX_HEADERS).expect("taken");
        let mut out = Vec::new();
        let from = Forwarded::of(&head, peer.parse().unwrap(), &trusted);
        write_upstream_head(&head, &from, 8080, false, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The same cases as `client_ip`'s and `headers`' tests of hyper's path.
    #[test]
    fn behind_trusted_proxies_the_chain_is_kept_and_the_client_is_the_rightmost_untrusted_hop() {
        let forwarded = |input: &str, peer: &str, trusted: &[&str]| {
            let head = upstream_behind(input, peer, trusted);
            let field = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(str::to_string))
                    .unwrap_or_else(|| panic!("{name} in {head}"))
            };
            (field("x-forwarded-for: "), field("x-real-ip: "))
        };
        let get = |xff: &str| format!("GET / HTTP/1.1\r\nHost: a\r\n{xff}\r\n");
        let chain = get("X-Forwarded-For: 1.1.1.1, 203.0.113.9, 10.1.1.1\r\n");
        // Not trusted (or none configured): the header is replaced.
        assert_eq!(forwarded(&chain, "192.0.2.1", &["10.0.0.0/8"]), ("192.0.2.1".into(), "192.0.2.1".into()));
        assert_eq!(forwarded(&chain, "10.0.0.5", &[]), ("10.0.0.5".into(), "10.0.0.5".into()));
        // Trusted: kept with the peer appended; the rightmost untrusted hop.
        assert_eq!(
            forwarded(&chain, "10.0.0.5", &["10.0.0.0/8"]),
            ("1.1.1.1, 203.0.113.9, 10.1.1.1, 10.0.0.5".into(), "203.0.113.9".into())
        );
        // All hops trusted: the leftmost; no header: the peer.
        assert_eq!(
            forwarded(&get("x-forwarded-for: 10.9.9.9\r\nX-Forwarded-For: 10.1.1.1\r\n"), "10.0.0.5", &["10.0.0.0/8"]),
            ("10.9.9.9, 10.0.0.5".into(), "10.9.9.9".into())
        );
        assert_eq!(forwarded(&get(""), "10.0.0.5", &["10.0.0.0/8"]), ("10.0.0.5".into(), "10.0.0.5".into()));
        // A value that is not visible ASCII is not believed; when it is the
        // first field, no chain is kept (the second still names the client).
        let odd = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9, caf\u{e9}\r\n\r\n";
        assert_eq!(forwarded(odd, "10.0.0.5", &["10.0.0.0/8"]), ("10.0.0.5".into(), "10.0.0.5".into()));
        let two = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: caf\u{e9}\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n";
        assert_eq!(forwarded(two, "10.0.0.5", &["10.0.0.0/8"]), ("10.0.0.5".into(), "203.0.113.9".into()));
    }

    #[test]
    fn plain_requests_are_taken() {
        let get = "GET /a/b?x=1 HTTP/1.1\r\nHost: a.test\r\n\r\n";
        assert_eq!(
            parsed(get),
            Some((get.len(), Method::Get, "/a/b?x=1".into(), "/a/b".into(), "a.test".into(), false))
        );
        let head = "HEAD / HTTP/1.1\r\nhost: a.test:8080\r\nConnection: keep-alive, Close\r\n\r\nGET";
        let (len, method, _, _, host, close) = parsed(head).unwrap();
        assert_eq!((len, method, host.as_str(), close), (head.len() - 3, Method::Head, "a.test:8080", true));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for input in [
            "GET / HTTP/1.1\r\nHost: a.test\r\n",                                   // incomplete
            "GET / HTTP/1.0\r\nHost: a.test\r\n\r\n",                               // HTTP/1.0
            "POST / HTTP/1.1\r\nHost: a.test\r\n\r\n",                              // a method with a body
            "OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",                           // not origin form
            "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",                  // absolute form
            "GET /<x> HTTP/1.1\r\nHost: a.test\r\n\r\n",                            // unusual target bytes
            "GET / HTTP/1.1\r\n\r\n",                                               // no Host
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",               // two
            "GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",                          // not plain
            "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",                             // IPv6 literal
            "GET / HTTP/1.1\r\nHost: a.test:\r\n\r\n",                              // empty port
            "GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n",          // framing
            "GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n", // framing
            "GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n\r\n",         // upgrade
            "GET / HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\n\r\n",       // expect
            "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: x-secret\r\n\r\n",       // names a field
            "GET / HTTP/1.1\r\nHost: a.test\r\nX: a\r\n b\r\n\r\n",                 // obsolete folding
            "GET / HTTP/1.1\r\nHost : a.test\r\n\r\n",                              // space before colon
        ] {
            assert_eq!(parsed(input), None, "{input:?}");
        }
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(parsed(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")), None, "too many fields");
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let two = "GET / HTTP/1.1\r\nHost: a\r\nx: 1\r\n\r\n";
        assert!(parse(two.as_bytes(), &mut storage, 1).is_none(), "the listener's limit");
    }

    #[test]
    fn the_upstream_head_loses_hop_by_hop_fields_and_gets_ours() {
        let head = upstream(
            "GET /p?q HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: gzip\r\n\
             Proxy-Connection: x\r\nUser-Agent: curl/8\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
             X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\n\r\n",
            "192.0.2.7",
        );
        assert_eq!(
            head,
            "GET /p?q HTTP/1.1\r\nHost: a.test\r\nUser-Agent: curl/8\r\nx-forwarded-for: 192.0.2.7\r\n\
             x-real-ip: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-port: 8080\r\n\
             x-forwarded-host: a.test\r\n\r\n"
        );
        let v6 = upstream("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", "fd00::1:2");
        assert!(v6.starts_with("HEAD / HTTP/1.1\r\n"), "{v6}");
        assert!(v6.contains("x-forwarded-for: fd00::1:2\r\n"), "{v6}");
    }

    #[test]
    fn ip_text_is_the_standard_formatting() {
        for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "127.0.0.1", "::1", "fd00::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 39];
            assert_eq!(write_ip(ip, &mut buf), ip.to_string().as_bytes());
        }
    }
}
