//! The upstream's response on the fast path: its head, rewritten for the
//! client, and its body's framing (RFC 9112 §6.3), with a decoder that
//! re-encodes a chunked body as it passes.
//!
//! The head keeps the upstream's status, reason and fields, but the
//! hop-by-hop ones (and those named in its `Connection`), as hyper's path
//! does. A chunked body is re-encoded canonically: chunk extensions and
//! trailer fields are dropped (a recipient may discard trailers, RFC 9110
//! §6.5.1), so nothing the upstream frames oddly reaches the client as is.
//! A body with a length gets a `Content-Length` written by the proxy from
//! the length it checked, never the upstream's field copied. As hyper's
//! client, it refuses (502) what it cannot frame with certainty: a status
//! below 100, conflicting lengths, `Transfer-Encoding` in an HTTP/1.0
//! response, a malformed chunk-size line (strictly per RFC 9112 §7.1, as the
//! listener's audit checks clients' chunks).

/// Header fields parsed at most in a response head (more: 502).
const MAX_HEADERS: usize = 100;

/// How the response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// After this many bytes (0: no body, as for `HEAD`, 204 and 304).
    Length(u64),
    Chunked,
    /// When the upstream closes the connection.
    UntilClose,
}

/// A response head, parsed and rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ResponseHead {
    /// Bytes of the upstream's head.
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub reusable: bool,
    /// The upstream sent a `Date`.
    pub has_date: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// More bytes are needed.
    Partial,
    /// An interim (1xx) response of this many bytes, not passed on (as
    /// hyper's client does not either).
    Interim(usize),
    /// 101 to a request that asked for no upgrade.
    Switching,
    /// Not HTTP/1.x, or framed ambiguously: a 502.
    Invalid,
    Complete(ResponseHead),
}

/// What the proxy adds to a response head, whatever the upstream said.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Additions<'a> {
    /// `Strict-Transport-Security`, unless the upstream set one.
    pub hsts: Option<&'a [u8]>,
}

/// Parses the response head at the start of `input`; when complete, the
/// head for the client is appended to `out` but for its end, which
/// [`finish_head`] writes once the proxy knows whether the connection
/// closes after it.
pub(super) fn parse(input: &[u8], head_request: bool, add: Additions<'_>, out: &mut Vec<u8>) -> Parsed {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else { return Parsed::Invalid };
    match status {
        0..=99 => return Parsed::Invalid,
        101 => return Parsed::Switching,
        100..=199 => return Parsed::Interim(len),
        _ => {}
    }
    let headers = &*resp.headers;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut upstream_close = version == 0;
    let (mut has_hsts, mut has_date) = (false, false);
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = parse_length(h.value) else { return Parsed::Invalid };
            if length.is_some_and(|l| l != n) {
                return Parsed::Invalid;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            // The final coding decides: chunked, or the body runs to the close.
            chunked =
                h.value.rsplit(|&b| b == b',').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("strict-transport-security") {
            has_hsts = true;
        } else if h.name.eq_ignore_ascii_case("date") {
            has_date = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    upstream_close = true;
                } else if version == 0 && token.eq_ignore_ascii_case(b"keep-alive") {
                    upstream_close = false;
                }
            }
        }
    }
    // RFC 9112 §6.1: an HTTP/1.0 message with a transfer coding is faulty.
    if coded && version == 0 {
        return Parsed::Invalid;
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Length(0)
    } else if coded {
        if chunked { Framing::Chunked } else { Framing::UntilClose }
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let named: Vec<&[u8]> = connection_named(headers);
    for h in headers {
        let name = h.name;
        let skip = is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("content-length")
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()));
        if !skip {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // The length checked above (a HEAD or 304 answer's is the one the
        // upstream declared for the full response); 204 has none.
        Framing::Length(_) if status != 204 && !coded => {
            if let Some(n) = length {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        Framing::Length(_) | Framing::UntilClose => {}
    }
    if let Some(hsts) = add.hsts.filter(|_| !has_hsts) {
        out.extend_from_slice(b"strict-transport-security: ");
        out.extend_from_slice(hsts);
        out.extend_from_slice(b"\r\n");
    }
    let reusable = !upstream_close && framing != Framing::UntilClose;
    Parsed::Complete(ResponseHead { len, status, framing, reusable, has_date })
}

/// Ends a head [`parse`] wrote: `Date` when the upstream sent none (RFC
/// 9110 §6.6.1), `Connection: close` when the connection closes after
/// this response (always, for a body that runs to the upstream's close).
pub(super) fn finish_head(out: &mut Vec<u8>, head: &ResponseHead, close: bool) {
    if !head.has_date {
        out.extend_from_slice(b"date: ");
        super::date::now(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
    if close || head.framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Digits only (a list, even of equal values, is refused).
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 19 {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// RFC 9110 §7.6.1 and the de-facto `Keep-Alive` and `Proxy-Connection`.
/// `Transfer-Encoding` is set again by the proxy for a chunked body.
fn is_hop_by_hop(name: &str) -> bool {
    let is = |other: &str| name.eq_ignore_ascii_case(other);
    match name.len() {
        2 => is("te"),
        7 => is("upgrade") || is("trailer"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        _ => false,
    }
}

/// The fields a response's `Connection` names (other than its own
/// options), to be removed with it. Allocates only when there are some.
fn connection_named<'h>(headers: &'h [httparse::Header<'_>]) -> Vec<&'h [u8]> {
    let mut named = Vec::new();
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        for token in h.value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if !token.is_empty() && !token.eq_ignore_ascii_case(b"close") && !token.eq_ignore_ascii_case(b"keep-alive")
            {
                named.push(token);
            }
        }
    }
    named
}

// === impl Chunked ===

/// Longest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Decodes a chunked body as it arrives and writes it out again,
/// canonically (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: ChunkState,
    trailer_bytes: usize,
    /// Body bytes decoded so far (the chunks' data, not their framing).
    data_bytes: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// The upstream's chunked framing is broken.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadChunk;

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Body bytes decoded so far, framing excluded.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Decodes what it can of `input`, appending the re-encoded body to
    /// `out`; returns how many bytes it used (the rest must be given again
    /// with more after it). Stops at the end of the body.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BadChunk> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => {
                    let Some(lf) = memchr::memchr(b'\n', rest) else {
                        return if rest.len() < MAX_CHUNK_LINE { Ok(pos) } else { Err(BadChunk) };
                    };
                    // CRLF only; the line checked as clients' chunks are.
                    let line = rest[..lf].strip_suffix(b"\r").ok_or(BadChunk)?;
                    let size = crate::listener::audit::chunk_size(line).map_err(|_| BadChunk)?;
                    pos += lf + 1;
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else {
                        write_hex(size, out);
                        out.extend_from_slice(b"\r\n");
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.data_bytes += take as u64;
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(BadChunk);
                    }
                    pos += 2;
                    out.extend_from_slice(b"\r\n");
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(end) = memchr::memmem::find(rest, b"\r\n") else {
                        return if self.trailer_bytes + rest.len() < MAX_TRAILERS { Ok(pos) } else { Err(BadChunk) };
                    };
                    pos += end + 2;
                    if end == 0 {
                        out.extend_from_slice(b"0\r\n\r\n");
                        self.state = ChunkState::Done;
                    } else {
                        // A trailer field: dropped.
                        self.trailer_bytes += end + 2;
                        if self.trailer_bytes > MAX_TRAILERS {
                            return Err(BadChunk);
                        }
                    }
                }
            }
        }
    }
}

fn write_hex(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parse, and the head written (its `date:` line, when the proxy
    /// added one, replaced by `date: *`).
    fn head(input: &str, head_request: bool, close: bool) -> (Parsed, String) {
        let mut out = Vec::new();
        let parsed = parse(input.as_bytes(), head_request, Additions::default(), &mut out);
        if let Parsed::Complete(h) = &parsed {
            finish_head(&mut out, h, close);
        }
        let text = String::from_utf8(out).unwrap();
        let text =
            text.split_inclusive("\r\n").map(|l| if l.starts_with("date: ") { "date: *\r\n" } else { l }).collect();
        (parsed, text)
    }

    fn complete(input: &str) -> (ResponseHead, String) {
        match head(input, false, false) {
            (Parsed::Complete(h), out) => (h, out),
            other => panic!("{input:?}: {other:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (h, out) = complete("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello");
        assert_eq!((h.status, h.framing, h.reusable, h.len), (200, Framing::Length(5), true, 44));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: y\r\ncontent-length: 5\r\ndate: *\r\n\r\n");
        let (h, out) = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked, "Transfer-Encoding wins");
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n");
        let (h, out) = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nDate: d\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nDate: d\r\nconnection: close\r\n\r\n", "the upstream's Date kept");
        let (h, _) = complete("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let (h, out) = complete("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(0));
        assert!(!out.contains("content-length"), "204 has no length: {out}");
        let (h, out) = complete("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(0));
        assert!(out.contains("content-length: 7\r\n"), "{out}");
        let (Parsed::Complete(h), out) = head("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true, false) else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Length(0), "a HEAD response has no body");
        assert!(out.contains("content-length: 7\r\n"), "its length is passed on: {out}");
    }

    #[test]
    fn connection_reuse() {
        assert!(!complete("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").0.reusable);
        assert!(!complete("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").0.reusable);
        assert!(complete("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").0.reusable);
    }

    #[test]
    fn hop_by_hop_fields_and_those_named_are_removed() {
        let (_, out) = complete(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret, Content-Length\r\nX-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nUpgrade: h2c\r\nTrailer: x\r\nProxy-Connection: x\r\nSet-Cookie: a=b\r\n\
             Content-Length: 2\r\nDate: d\r\n\r\nok",
        );
        // The length is the proxy's own, even when Connection names it.
        assert_eq!(out, "HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nDate: d\r\ncontent-length: 2\r\n\r\n");
        let (_, out) = head("HTTP/1.1 404 \r\nContent-Length: 0\r\nDate: d\r\n\r\n", false, true);
        assert_eq!(out, "HTTP/1.1 404 \r\nDate: d\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    }

    #[test]
    fn hsts_is_added_unless_the_upstream_set_it() {
        let add = Additions { hsts: Some(b"max-age=60") };
        let mut out = Vec::new();
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, add, &mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("strict-transport-security: max-age=60\r\n"));
        out.clear();
        parse(b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=1\r\n\r\n", false, add, &mut out);
        assert_eq!(String::from_utf8_lossy(&out).matches("max-age").count(), 1, "the upstream's kept");
    }

    #[test]
    fn interim_upgrades_and_garbage() {
        assert_eq!(head("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false, false).0, Parsed::Interim(40));
        assert_eq!(head("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, false).0, Parsed::Switching);
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Le", false, false).0, Parsed::Partial);
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 000 Zero\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(head(bad, false, false).0, Parsed::Invalid, "{bad:?}");
        }
        let (h, out) = complete("HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5), "the same length twice");
        assert_eq!(out.matches("content-length").count(), 1, "written once: {out}");
    }

    fn decode(pieces: &[&str]) -> Result<(String, bool), BadChunk> {
        let mut chunked = Chunked::default();
        let (mut pending, mut out) = (Vec::new(), Vec::new());
        for piece in pieces {
            pending.extend_from_slice(piece.as_bytes());
            let used = chunked.feed(&pending, &mut out)?;
            pending.drain(..used);
        }
        Ok((String::from_utf8(out).unwrap(), chunked.is_done()))
    }

    #[test]
    fn chunked_bodies_are_reencoded_canonically() {
        let whole = "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        let expected = "5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n".to_string();
        assert_eq!(decode(&[whole]), Ok((expected.clone(), true)));
        // Byte by byte: the same.
        let bytes: Vec<String> = whole.chars().map(String::from).collect();
        let pieces: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(decode(&pieces), Ok((expected, true)));
        assert_eq!(decode(&["5\r\nhel"]), Ok(("5\r\nhel".into(), false)));
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        assert_eq!(decode(&["5\r\nhelloXX"]), Err(BadChunk));
        assert_eq!(decode(&["\r\n"]), Err(BadChunk), "no size digits");
        assert_eq!(decode(&[";x\r\n"]), Err(BadChunk), "no size digits");
        assert_eq!(decode(&["5\nhello\r\n"]), Err(BadChunk), "bare LF");
        assert_eq!(decode(&["5;a\nb\r\nhello\r\n"]), Err(BadChunk), "LF in an extension");
        assert_eq!(decode(&["zz\r\n"]), Err(BadChunk));
        assert_eq!(decode(&[&"1".repeat(MAX_CHUNK_LINE + 1)]), Err(BadChunk));
        assert_eq!(decode(&["ffffffffffffffffff\r\n"]), Err(BadChunk));
    }
}
