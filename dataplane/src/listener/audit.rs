//! A second look at the raw bytes of an HTTP/1 connection, beside hyper's
//! parser, for what hyper accepts silently or cannot report.
//!
//! hyper rejects most malformed requests itself (RFC 9112 §5: whitespace
//! before the colon, obs-fold, control characters; §6.3: differing
//! `Content-Length`s, `Transfer-Encoding` not ending in `chunked`, HTTP/1.0
//! with `Transfer-Encoding`; §7.1: bad chunk sizes). Two framing ambiguities
//! it *repairs* instead, leaving no trace in the parsed head: a repeated
//! identical `Content-Length` is collapsed into one, and a `Content-Length`
//! beside `Transfer-Encoding` is dropped (RFC 9112 §6.3 ¶3). A request that a
//! front end and a back end could frame differently is a smuggling attempt,
//! so the proxy refuses it (400, connection closed) — it needs the raw head
//! to see it. The same raw view gives exact request-line (414) and
//! header-section (431) sizes, validates chunk extensions (RFC 9112
//! §7.1.1), and tells the connection's timers whether it is idle or in the
//! middle of a head.
//!
//! The audit follows the connection's framing (head, then a
//! `Content-Length` or chunked body, then the next head), so it reads every
//! head exactly where hyper does. It never changes the bytes. Head findings
//! are reported to the proxy, which answers the next request with them;
//! body findings fail the read, so that hyper abandons the request.

use http::StatusCode;

/// Size limits of a request head (RFC 9110 §15.5.15, RFC 6585 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest request line (method, target, version) → 414.
    pub max_request_line: usize,
    /// Largest header section (every field line with its CRLF) → 431.
    pub max_header_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self { max_request_line: 8 * 1024, max_header_bytes: 32 * 1024 }
    }
}

impl HeadLimits {
    /// The largest head worth buffering: past it hyper answers 431 itself.
    pub fn max_head(&self) -> usize {
        self.max_request_line + self.max_header_bytes + 1024
    }
}

/// Why a request is refused, and with which status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl Rejection {
    const fn bad(reason: &'static str) -> Self {
        Self { status: StatusCode::BAD_REQUEST, reason }
    }
}

/// What [`Audit::feed`] found in a run of bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// A head the proxy must refuse (first one only).
    pub head: Option<Rejection>,
    /// A body the proxy must not forward, and how many of the bytes fed
    /// may still be passed on (those before the bad line): the read after
    /// them fails.
    pub body: Option<(Rejection, usize)>,
}

/// Longest chunk-size line or trailer line kept (hyper allows 16 KiB of
/// chunk extensions per body; one line of that is plenty).
const MAX_CHUNK_LINE: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Reading a head into `line`.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line into `line`.
    ChunkSize,
    /// Skipping this many chunk-data bytes.
    ChunkData(u64),
    /// Reading the CRLF after chunk data into `line`.
    ChunkEnd,
    /// Reading trailer lines (until an empty one) into `line`.
    Trailers,
    /// Not HTTP/1 any more (HTTP/2 preface) or already refused: no audit.
    Off,
}

/// The audit of one connection.
#[derive(Debug)]
pub struct Audit {
    phase: Phase,
    /// The head or chunk line being read.
    line: Vec<u8>,
    /// Where the current line starts in `line` (heads span several lines).
    line_start: usize,
    limits: HeadLimits,
}

impl Audit {
    pub fn new(limits: HeadLimits) -> Self {
        Self { phase: Phase::Head, line: Vec::new(), line_start: 0, limits }
    }

    /// True between the first byte of a head and its end: the header read
    /// timeout runs.
    pub fn in_head(&self) -> bool {
        self.phase == Phase::Head && !self.line.is_empty()
    }

    /// True at a message boundary with nothing of the next head read: the
    /// idle timeout may run.
    pub fn between_messages(&self) -> bool {
        self.phase == Phase::Head && self.line.is_empty()
    }

    /// Stops auditing (after an upgrade: the bytes are not HTTP any more).
    pub fn turn_off(&mut self) {
        self.phase = Phase::Off;
        self.line = Vec::new();
    }

    /// Follows `bytes`, just read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Findings {
        let mut findings = Findings::default();
        let mut offset = 0;
        while !bytes.is_empty() {
            let used = match self.phase {
                Phase::Off => return findings,
                Phase::Body(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.phase = if n == left { Phase::Head } else { Phase::Body(left - n) };
                    n as usize
                }
                Phase::ChunkData(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.phase = if n == left { Phase::ChunkEnd } else { Phase::ChunkData(left - n) };
                    n as usize
                }
                Phase::Head => {
                    let (used, outcome) = self.feed_head(bytes);
                    if let Some(rejection) = outcome {
                        findings.head.get_or_insert(rejection);
                    }
                    used
                }
                Phase::ChunkSize | Phase::ChunkEnd | Phase::Trailers => {
                    let (used, outcome) = self.feed_chunk_line(bytes);
                    if let Some(rejection) = outcome {
                        findings.body = Some((rejection, offset));
                        self.turn_off();
                        return findings;
                    }
                    used
                }
            };
            bytes = &bytes[used..];
            offset += used;
        }
        findings
    }

    /// Reads head bytes up to the end of the head; returns how many were
    /// used and what is wrong with the head, once complete.
    fn feed_head(&mut self, bytes: &[u8]) -> (usize, Option<Rejection>) {
        // The common case: a whole head in one read is checked where it
        // lies, without copying it line by line (a new connection's copy
        // grew its buffer four times).
        if self.line.is_empty()
            && let Some((start, end)) = whole_head(bytes)
        {
            self.line_start = 0;
            return (end, self.check_head(&bytes[start..end]));
        }
        let mut used = 0;
        while used < bytes.len() {
            let rest = &bytes[used..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                self.line.extend_from_slice(rest);
                used = bytes.len();
                break;
            };
            self.line.extend_from_slice(&rest[..=lf]);
            used += lf + 1;
            let line = trim_eol(&self.line[self.line_start..]);
            if line.is_empty() && self.line_start == 0 {
                // Empty lines before a request line are ignored (RFC 9112 §2.2).
                self.line.clear();
                continue;
            }
            if line.is_empty() {
                let outcome = self.end_head();
                return (used, outcome);
            }
            self.line_start = self.line.len();
        }
        if self.line.len() > self.limits.max_head() {
            // hyper answers 431 for this head; nothing more to follow.
            let rejection = Rejection { status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, reason: "head too large" };
            self.turn_off();
            return (used, Some(rejection));
        }
        (used, None)
    }

    /// A complete head is in `line`: checks it and sets the body phase.
    fn end_head(&mut self) -> Option<Rejection> {
        let mut head = std::mem::take(&mut self.line);
        let rejection = self.check_head(&head);
        // Keep the allocation for the next head.
        head.clear();
        if self.phase != Phase::Off {
            self.line = head;
        }
        self.line_start = 0;
        rejection
    }

    /// Checks a complete head and sets the body phase.
    fn check_head(&mut self, head: &[u8]) -> Option<Rejection> {
        let mut start = 0;
        let mut lines = memchr::memchr_iter(b'\n', head).chain(std::iter::once(head.len())).map(|end| {
            let line = trim_eol(&head[start..end]);
            start = end + 1;
            line
        });
        let request_line = lines.next().unwrap_or_default();
        if request_line.starts_with(b"PRI * HTTP/2.0") {
            self.turn_off();
            return None;
        }
        let mut rejection = None;
        let mut reject = |r: Rejection| {
            rejection.get_or_insert(r);
        };
        if request_line.len() > self.limits.max_request_line {
            reject(Rejection { status: StatusCode::URI_TOO_LONG, reason: "request line too long" });
        }
        let header_bytes = head.len() - request_line.len();
        if header_bytes > self.limits.max_header_bytes {
            reject(Rejection {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: "header section too large",
            });
        }
        let (mut content_lengths, mut length) = (0, None);
        let (mut transfer_encodings, mut chunked) = (0, false);
        for field in lines.filter(|l| !l.is_empty()) {
            let Some(colon) = memchr::memchr(b':', field) else { continue };
            let (name, value) = (&field[..colon], trim_ows(&field[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                content_lengths += 1;
                length = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                transfer_encodings += 1;
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = trim_ows(last).eq_ignore_ascii_case(b"chunked");
            }
        }
        if content_lengths > 1 {
            reject(Rejection::bad("more than one Content-Length field"));
        }
        if content_lengths > 0 && transfer_encodings > 0 {
            reject(Rejection::bad("Content-Length together with Transfer-Encoding"));
        }
        // Frame the body as hyper does: Transfer-Encoding wins.
        self.phase = match (transfer_encodings > 0, chunked, length) {
            (true, true, _) => Phase::ChunkSize,
            // hyper refuses these; whatever follows is not read.
            (true, false, _) => Phase::Off,
            (false, _, None) if content_lengths > 0 => Phase::Off,
            (false, _, Some(n)) if n > 0 => Phase::Body(n),
            (false, _, _) => Phase::Head,
        };
        rejection
    }

    /// Reads one chunk-size, chunk-end or trailer line.
    fn feed_chunk_line(&mut self, bytes: &[u8]) -> (usize, Option<Rejection>) {
        let Some(lf) = memchr::memchr(b'\n', bytes) else {
            self.line.extend_from_slice(bytes);
            let too_long = self.line.len() > MAX_CHUNK_LINE;
            return (bytes.len(), too_long.then_some(Rejection::bad("chunk line too long")));
        };
        self.line.extend_from_slice(&bytes[..lf]);
        let mut taken = std::mem::take(&mut self.line);
        let outcome = self.end_chunk_line(&taken);
        taken.clear();
        self.line = taken;
        (lf + 1, outcome)
    }

    /// Acts on one complete chunk-size, chunk-end or trailer line (LF
    /// removed).
    fn end_chunk_line(&mut self, line: &[u8]) -> Option<Rejection> {
        let Some(line) = line.strip_suffix(b"\r") else {
            return Some(Rejection::bad("chunk line not ended by CRLF"));
        };
        match self.phase {
            Phase::ChunkSize => match chunk_size(line) {
                Ok(0) => {
                    self.phase = Phase::Trailers;
                    None
                }
                Ok(size) => {
                    self.phase = Phase::ChunkData(size);
                    None
                }
                Err(rejection) => Some(rejection),
            },
            Phase::ChunkEnd if line.is_empty() => {
                self.phase = Phase::ChunkSize;
                None
            }
            Phase::ChunkEnd => Some(Rejection::bad("chunk data longer than its size")),
            _ if line.is_empty() => {
                self.phase = Phase::Head;
                None
            }
            // A trailer field: hyper parses it; it is never forwarded.
            _ => None,
        }
    }
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1, §7.1.1). Also the fast
/// path's check of an upstream's chunked response.
pub(crate) fn chunk_size(line: &[u8]) -> Result<u64, Rejection> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Rejection::bad("invalid chunk size"));
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| Rejection::bad("invalid chunk size"))?;
    let size = u64::from_str_radix(text, 16).map_err(|_| Rejection::bad("invalid chunk size"))?;
    if !valid_chunk_ext(&line[digits..]) {
        return Err(Rejection::bad("invalid chunk extension"));
    }
    Ok(size)
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, where `ext-val` is
/// a token or a quoted-string.
fn valid_chunk_ext(mut ext: &[u8]) -> bool {
    loop {
        ext = skip_ws(ext);
        let Some(rest) = ext.strip_prefix(b";") else { return ext.is_empty() };
        let rest = skip_ws(rest);
        let name = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name == 0 {
            return false;
        }
        ext = skip_ws(&rest[name..]);
        if let Some(rest) = ext.strip_prefix(b"=") {
            let rest = skip_ws(rest);
            let value = match rest.first() {
                Some(b'"') => quoted_string_len(rest),
                _ => Some(rest.iter().take_while(|&&b| is_tchar(b)).count()).filter(|&n| n > 0),
            };
            let Some(value) = value else { return false };
            ext = &rest[value..];
        }
    }
}

/// The length of the quoted-string at the start of `s`, if well formed.
fn quoted_string_len(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' if i + 1 < s.len() && is_quoted_char(s[i + 1]) => i += 2,
            b if is_quoted_char(b) && b != b'\\' => i += 1,
            _ => return None,
        }
    }
    None
}

/// qdtext and quoted-pair characters: HTAB, SP, VCHAR, obs-text.
fn is_quoted_char(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let s = skip_ws(s);
    let n = s.iter().rev().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[..s.len() - n]
}

/// A complete head at the start of `bytes`, after the empty lines that may
/// precede a request line (RFC 9112 §2.2): where it starts, and where it
/// ends (after its empty line), as `feed_head` would have collected it.
fn whole_head(bytes: &[u8]) -> Option<(usize, usize)> {
    let (mut start, mut pos) = (0, 0);
    loop {
        let lf = pos + memchr::memchr(b'\n', &bytes[pos..])?;
        let line_start = pos;
        pos = lf + 1;
        if trim_eol(&bytes[line_start..pos]).is_empty() {
            if line_start == start {
                start = pos;
                continue;
            }
            return Some((start, pos));
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(bytes: &[u8]) -> (Audit, Findings) {
        let mut audit = Audit::new(HeadLimits::default());
        let findings = audit.feed(bytes);
        (audit, findings)
    }

    /// The same bytes one at a time, to exercise every split point.
    fn audit_bytewise(bytes: &[u8]) -> Findings {
        let mut audit = Audit::new(HeadLimits::default());
        let mut all = Findings::default();
        for b in bytes {
            let f = audit.feed(std::slice::from_ref(b));
            all.head = all.head.or(f.head);
            all.body = all.body.or(f.body);
        }
        all
    }

    #[test]
    fn clean_requests_pass_and_return_to_a_boundary() {
        let bytes = b"\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n\
                      POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b;c=\"d e\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        let (audit, findings) = audit(bytes);
        assert_eq!(findings, Findings::default());
        assert!(audit.between_messages());
        assert_eq!(audit_bytewise(bytes), Findings::default());
    }

    #[test]
    fn framing_ambiguities_hyper_repairs_are_found() {
        let dup = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(audit(dup).1.head.unwrap().reason, "more than one Content-Length field");
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        assert_eq!(audit_bytewise(both).head.unwrap().reason, "Content-Length together with Transfer-Encoding");
    }

    #[test]
    fn bad_chunk_lines_fail_the_body() {
        for line in ["5;\r\n", "5 ;a=\"x\r\n", "5;a=b c\r\n", "5\n", "x\r\n", "11111111111111111\r\n", "5;=b\r\n"] {
            let bytes =
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{line}hello\r\n0\r\n\r\n");
            let (_, findings) = audit(bytes.as_bytes());
            assert!(findings.body.is_some(), "{line:?} must be refused");
        }
        let long = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n";
        let (rejection, cut) = audit(long).1.body.unwrap();
        assert_eq!(rejection.reason, "chunk data longer than its size");
        assert_eq!(&long[..cut], b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe");
    }

    /// A head read whole is checked where it lies (`whole_head`); one that
    /// arrives in pieces is collected first. Both must find the same.
    #[test]
    fn whole_and_piecewise_heads_agree() {
        let limits = HeadLimits { max_request_line: 30, max_header_bytes: 60 };
        let cases: [&[u8]; 10] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\n\r\n",
            b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
        ];
        for bytes in cases {
            let mut whole = Audit::new(limits);
            let found = whole.feed(bytes);
            let mut piecewise = Audit::new(limits);
            let mut pieces = Findings::default();
            for b in bytes {
                let f = piecewise.feed(std::slice::from_ref(b));
                pieces.head = pieces.head.or(f.head);
                pieces.body = pieces.body.or(f.body);
            }
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(found.head, pieces.head, "{text:?}");
            assert_eq!(found.body.is_some(), pieces.body.is_some(), "{text:?}");
            assert_eq!(whole.phase, piecewise.phase, "{text:?}");
            assert_eq!(whole.in_head(), piecewise.in_head(), "{text:?}");
            assert_eq!(whole.between_messages(), piecewise.between_messages(), "{text:?}");
        }
    }

    #[test]
    fn head_limits_give_414_and_431() {
        let limits = HeadLimits { max_request_line: 20, max_header_bytes: 30 };
        let mut a = Audit::new(limits);
        let f = a.feed(b"GET /aaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(f.head.unwrap().status, StatusCode::URI_TOO_LONG);
        let mut a = Audit::new(limits);
        let f = a.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: bbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n");
        assert_eq!(f.head.unwrap().status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn timers_see_the_phase() {
        let mut a = Audit::new(HeadLimits::default());
        assert!(a.between_messages());
        a.feed(b"GET / HT");
        assert!(a.in_head());
        a.feed(b"TP/1.1\r\nHost: a\r\n\r\n");
        assert!(a.between_messages());
        a.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(!a.between_messages() && !a.in_head());
    }
}
