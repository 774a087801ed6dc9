//! End-to-end: a corpus of raw-byte requests against the real `switchyard`
//! binary, each with the RFC rule it checks. A recording backend proves
//! that nothing smuggled reached it (no second request, no `SMUGGLED`
//! marker, exactly the expected requests and bodies); for every accepted
//! case a follow-up request on the same client connection proves that the
//! proxy and the client still agree on where messages end.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use support::raw::{RawClient, Recorded, Recorder};
use support::*;

/// What the proxy must do with a case.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Answer this status and close the connection; the backend receives no
    /// complete request.
    Refuse(u16),
    /// Forward one request per body, intact, answer each with 200, and keep
    /// the connection open.
    Forward(&'static [&'static [u8]]),
    /// Forward once, answer this status itself, keep the connection open.
    Answer(u16),
}

/// An extra check on the requests and raw bytes the backend received.
type Check = fn(&[Recorded], &[u8]);

struct Case {
    name: &'static str,
    rule: &'static str,
    bytes: &'static [u8],
    expect: Expect,
    /// Extra checks on what the backend received.
    check: Option<Check>,
}

const fn refuse(name: &'static str, rule: &'static str, bytes: &'static [u8]) -> Case {
    Case { name, rule, bytes, expect: Expect::Refuse(400), check: None }
}

const fn forward(
    name: &'static str,
    rule: &'static str,
    bytes: &'static [u8],
    bodies: &'static [&'static [u8]],
) -> Case {
    Case { name, rule, bytes, expect: Expect::Forward(bodies), check: None }
}

const CASES: &[Case] = &[
    // --- Message framing: RFC 9112 §6 -----------------------------------
    refuse(
        "CL.TE: Content-Length then Transfer-Encoding",
        "RFC 9112 §6.3 ¶3: CL+TE",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    ),
    refuse(
        "TE.CL: Transfer-Encoding then Content-Length",
        "RFC 9112 §6.3 ¶3: CL+TE",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST /SMUGGLED HTTP/1.1\r\nHost: a.test\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
    ),
    refuse(
        "duplicate identical Content-Length",
        "RFC 9112 §6.3 ¶5 / RFC 9110 §8.6: duplicate CL",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    refuse(
        "conflicting Content-Length",
        "RFC 9112 §6.3 ¶5: conflicting CL",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhelloGET /SMUGGLED HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ),
    refuse(
        "Content-Length list",
        "RFC 9110 §8.6: CL = 1*DIGIT",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 5\r\n\r\nhello",
    ),
    refuse(
        "Content-Length with a sign",
        "RFC 9110 §8.6: CL = 1*DIGIT",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: +5\r\n\r\nhello",
    ),
    refuse(
        "Content-Length not a number",
        "RFC 9110 §8.6: CL = 1*DIGIT",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: five\r\n\r\nhello",
    ),
    refuse(
        "Content-Length in hex",
        "RFC 9110 §8.6: CL = 1*DIGIT",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0x5\r\n\r\nhello",
    ),
    refuse(
        "Content-Length overflowing 64 bits",
        "RFC 9112 §6.3 ¶5: invalid CL",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
    ),
    refuse(
        "Transfer-Encoding without chunked",
        "RFC 9112 §6.3 ¶4: TE other than a final chunked",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    ),
    refuse(
        "chunked not the final coding",
        "RFC 9112 §6.3 ¶4: chunked must be final",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    refuse(
        "a coding before chunked",
        "RFC 9112 §6.1: only chunked is forwarded",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    refuse(
        "Transfer-Encoding: identity",
        "RFC 9112 §6.1: identity is not a transfer coding",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
    ),
    refuse(
        "two Transfer-Encoding fields",
        "RFC 9112 §6.1: one chunked",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    refuse(
        "Transfer-Encoding: xchunked",
        "RFC 9112 §6.3 ¶4: TE other than chunked",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    refuse(
        "HTTP/1.0 with Transfer-Encoding",
        "RFC 9112 §6.1 ¶16: TE in HTTP/1.0",
        b"POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    // --- Field syntax: RFC 9112 §5 --------------------------------------
    refuse(
        "whitespace before the colon",
        "RFC 9112 §5.1 ¶2: no whitespace between name and colon",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
    ),
    refuse(
        "tab before the colon",
        "RFC 9112 §5.1 ¶2: no whitespace between name and colon",
        b"GET / HTTP/1.1\r\nHost\t: a.test\r\n\r\n",
    ),
    refuse(
        "obsolete line folding",
        "RFC 9112 §5.2: obs-fold in a request",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Folded: one\r\n two\r\n\r\n",
    ),
    refuse(
        "folded Transfer-Encoding",
        "RFC 9112 §5.2: obs-fold in a request",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello",
    ),
    refuse(
        "space in a field name",
        "RFC 9110 §5.1: field-name = token",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX Bad: 1\r\n\r\n",
    ),
    refuse(
        "bare CR in a field value",
        "RFC 9112 §2.2 ¶4: bare CR",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: one\rX-B: two\r\n\r\n",
    ),
    refuse("NUL in a field value", "RFC 9110 §5.5: CTLs in values", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\0b\r\n\r\n"),
    refuse(
        "vertical tab before chunked",
        "RFC 9110 §5.5: CTLs in values",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    ),
    refuse("DEL in a field name", "RFC 9110 §5.6.2: tchar", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-\x7fA: 1\r\n\r\n"),
    refuse(
        "control character in a field name",
        "RFC 9110 §5.6.2: tchar",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-\x01: 1\r\n\r\n",
    ),
    // --- Chunked coding: RFC 9112 §7.1 ----------------------------------
    refuse(
        "chunk size not hex",
        "RFC 9112 §7.1: chunk-size = 1*HEXDIG",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\ng\r\nhello\r\n0\r\n\r\n",
    ),
    refuse(
        "chunk size overflowing 64 bits",
        "RFC 9112 §7.1 ¶3: overflow",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
    ),
    refuse(
        "negative chunk size",
        "RFC 9112 §7.1: chunk-size = 1*HEXDIG",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    ),
    refuse(
        "chunk extension without a name",
        "RFC 9112 §7.1.1: chunk-ext = *( BWS \";\" BWS ext-name ... )",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
    ),
    refuse(
        "chunk extension value with a space",
        "RFC 9112 §7.1.1: ext-val = token / quoted-string",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b c\r\nhello\r\n0\r\n\r\n",
    ),
    refuse(
        "chunk extension with an unterminated quote",
        "RFC 9112 §7.1.1: quoted-string",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n",
    ),
    refuse(
        "chunk extension ended by a bare LF",
        "RFC 9112 §7.1: chunk lines end in CRLF",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nhello\r\n0\r\n\r\n",
    ),
    refuse(
        "chunk data longer than its size",
        "RFC 9112 §7.1: chunk-data = 1*OCTET of chunk-size",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    ),
    refuse(
        "chunk size line ended by a bare LF",
        "RFC 9112 §7.1: chunk lines end in CRLF",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ),
    // --- Request target and Host: RFC 9112 §3, RFC 9110 §7.2 ------------
    refuse("HTTP/1.1 without Host", "RFC 9112 §3.2 ¶6: missing Host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"),
    refuse(
        "two Host fields",
        "RFC 9112 §3.2 ¶6: more than one Host",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    ),
    refuse(
        "two identical Host fields",
        "RFC 9112 §3.2 ¶6: more than one Host",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
    ),
    refuse("Host with user information", "RFC 9110 §7.2: Host = uri-host [ \":\" port ]", b"GET / HTTP/1.1\r\nHost: evil@a.test\r\n\r\n"),
    refuse("Host with a path", "RFC 9110 §7.2: Host = uri-host [ \":\" port ]", b"GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n"),
    refuse("Host with a space", "RFC 9110 §7.2: Host = uri-host [ \":\" port ]", b"GET / HTTP/1.1\r\nHost: a.test b.test\r\n\r\n"),
    refuse(
        "absolute-form naming another host",
        "RFC 9112 §3.2.2 ¶8: absolute-form vs Host",
        b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ),
    refuse("two spaces in the request line", "RFC 9112 §3: request-line = method SP target SP version", b"GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    refuse("space in the request target", "RFC 9112 §3.2: no whitespace in the target", b"GET /a b HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    refuse("lower-case protocol name", "RFC 9112 §2.3: HTTP-name is case-sensitive", b"GET / http/1.1\r\nHost: a.test\r\n\r\n"),
    Case {
        name: "CONNECT",
        rule: "RFC 9110 §9.3.6: a reverse proxy is not a tunnel",
        bytes: b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
        expect: Expect::Refuse(405),
        check: None,
    },
    // --- Accepted, forwarded intact -------------------------------------
    forward("plain GET", "RFC 9112 §3: baseline", b"GET /plain HTTP/1.1\r\nHost: a.test\r\n\r\n", &[b""]),
    forward(
        "Content-Length body",
        "RFC 9112 §6.3 ¶6: CL frames the body",
        b"POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello world",
        &[b"hello world"],
    ),
    Case {
        name: "chunked body with extensions and trailers",
        rule: "RFC 9112 §7.1.1-§7.1.2: extensions ignored; RFC 9110 §6.5.1: framing/routing trailers never forwarded",
        bytes: b"POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5;name=value;q=\"a \\\"b\\\"\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\n\
                 Content-Length: 999\r\nHost: evil.test\r\nTransfer-Encoding: gzip\r\nX-Trailer: t\r\n\r\n",
        expect: Expect::Forward(&[b"hello world"]),
        check: Some(|requests, bytes| {
            // `: 999\r\n`, not `999`: the proxy's port, in X-Forwarded-Port,
            // may contain 999.
            for leaked in [&b"evil.test"[..], b": 999\r\n", b"X-Trailer", b"x-trailer", b"gzip"] {
                assert!(!contains(bytes, leaked), "trailer bytes {:?} reached the backend", String::from_utf8_lossy(leaked));
            }
            assert_eq!(requests[0].header("host"), Some(&b"a.test"[..]));
        }),
    },
    forward(
        "upper-case chunk size and coding name",
        "RFC 9112 §7.1: HEXDIG; RFC 9110 §10.1.4: codings are case-insensitive",
        b"POST /hex HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
        &[b"0123456789"],
    ),
    forward(
        "empty line before the request line",
        "RFC 9112 §2.2 ¶6: leading empty line ignored",
        b"\r\nGET /leading HTTP/1.1\r\nHost: a.test\r\n\r\n",
        &[b""],
    ),
    forward(
        "absolute-form matching Host",
        "RFC 9112 §3.2.2: absolute-form",
        b"GET http://a.test/abs?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        &[b""],
    ),
    forward(
        "pipelined requests in one write",
        "RFC 9112 §9.3.2: pipelining",
        b"POST /one HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabcPOST /two HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ndef\r\n0\r\n\r\n",
        &[b"abc", b"def"],
    ),
    forward(
        "HTTP/1.0 keep-alive with a body",
        "RFC 9112 §9.3: HTTP/1.0 persistence",
        b"POST /ten HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nten!",
        &[b"ten!"],
    ),
    forward(
        "tab and obs-text in a field value",
        "RFC 9110 §5.5: field-vchar / obs-text",
        b"GET /text HTTP/1.1\r\nHost: a.test\r\nX-Text: a\tb \xe9\r\n\r\n",
        &[b""],
    ),
    Case {
        name: "hop-by-hop fields, including those Connection names",
        rule: "RFC 9110 §7.6.1: hop-by-hop fields are not forwarded",
        bytes: b"GET /hop HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\
                 Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nX-Kept: k\r\n\r\n",
        expect: Expect::Forward(&[b""]),
        check: Some(|requests, _| {
            let r = &requests[0];
            for gone in ["x-secret", "keep-alive", "te", "proxy-connection", "trailer"] {
                assert!(r.header(gone).is_none(), "{gone} was forwarded");
            }
            assert_eq!(r.header("x-kept"), Some(&b"k"[..]));
        }),
    },
    Case {
        name: "h2c upgrade is not honoured",
        rule: "RFC 9110 §7.8: Upgrade is hop-by-hop; h2c would bypass routing",
        bytes: b"GET /h2c HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        expect: Expect::Forward(&[b""]),
        check: Some(|requests, _| {
            let r = &requests[0];
            assert!(r.header("upgrade").is_none() && r.header("http2-settings").is_none(), "{r:?}");
        }),
    },
    Case {
        name: "a backend's 101 without an upgrade requested",
        rule: "RFC 9110 §15.2.2: 101 only for a requested upgrade",
        bytes: b"GET /switch-to-websocket HTTP/1.1\r\nHost: a.test\r\n\r\n",
        expect: Expect::Answer(502),
        check: None,
    },
    Case {
        name: "a backend's 101 to another protocol than requested",
        rule: "RFC 9110 §7.8: switch only to a requested protocol",
        bytes: b"GET /switch-to-websocket HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket-other\r\n\r\n",
        expect: Expect::Answer(502),
        check: None,
    },
    Case {
        name: "a backend's 101 to h2c when WebSocket was requested",
        rule: "RFC 9110 §7.8: switch only to a requested protocol",
        bytes: b"GET /switch-to-h2c HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        expect: Expect::Answer(502),
        check: None,
    },
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const FOLLOW_UP: &[u8] = b"GET /follow-up HTTP/1.1\r\nHost: a.test\r\n\r\n";

/// Runs one case; returns what went wrong, if anything.
async fn run_case(proxy: &Standalone, backend: &Recorder, case: &Case) -> Result<(), String> {
    backend.clear();
    let mut client = RawClient::connect(proxy.http).await;
    client.send(case.bytes).await;
    match case.expect {
        Expect::Refuse(status) => {
            let resp = client.response().await.ok_or("no response")?;
            if resp.status != status {
                return Err(format!("status {} instead of {status}: {}", resp.status, resp.body_text()));
            }
            // Whatever the client sends next is not read as a request.
            client.send(b"GET /SMUGGLED HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
            if !client.closed_within(Duration::from_secs(3)).await {
                return Err("connection left open after the refusal".into());
            }
            // Let anything in flight arrive before looking.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let reached = backend.requests();
            if !reached.is_empty() {
                return Err(format!("the backend received {} request(s): {reached:?}", reached.len()));
            }
        }
        Expect::Forward(bodies) => {
            for (i, body) in bodies.iter().enumerate() {
                let resp = client.response().await.ok_or(format!("no response {i}"))?;
                if resp.status != 200 {
                    return Err(format!("response {i}: status {} ({})", resp.status, resp.body_text()));
                }
                if !resp.body_text().ends_with(&format!(" {}\n", body.len())) {
                    return Err(format!("response {i} is not the backend's for this request: {}", resp.body_text()));
                }
            }
            let reached = backend.requests();
            let got: Vec<&[u8]> = reached.iter().map(|r| r.body.as_slice()).collect();
            if got != bodies {
                return Err(format!("the backend received bodies {got:?}, expected {bodies:?}"));
            }
        }
        Expect::Answer(status) => {
            let resp = client.response().await.ok_or("no response")?;
            if resp.status != status {
                return Err(format!("status {} instead of {status}: {}", resp.status, resp.body_text()));
            }
        }
    }
    if !matches!(case.expect, Expect::Refuse(_)) {
        let before = backend.requests().len();
        client.send(FOLLOW_UP).await;
        let resp = client.response().await.ok_or("no response to the follow-up request")?;
        if resp.status != 200 || resp.body_text() != "GET /follow-up 0\n" {
            return Err(format!("follow-up desynchronised: {} {:?}", resp.status, resp.body_text()));
        }
        let after = backend.requests();
        if after.len() != before + 1 {
            return Err(format!("follow-up: the backend received {} request(s) instead of 1", after.len() - before));
        }
        if let Some(check) = case.check {
            check(&after, &backend.bytes());
        }
    }
    let bytes = backend.bytes();
    for marker in [&b"SMUGGLED"[..], b"GPOST"] {
        if contains(&bytes, marker) {
            return Err(format!("{:?} reached the backend", String::from_utf8_lossy(marker)));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_byte_corpus() {
    assert!(CASES.len() >= 40, "the corpus has {} cases", CASES.len());
    let backend = Recorder::start().await;
    let manifests = format!(
        "{}{}---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: rec, namespace: smuggling}}\n\
         spec:\n  ingressClassName: switchyard\n  rules:\n  - host: a.test\n    http:\n      paths:\n      \
         - {{path: /, pathType: Prefix, backend: {{service: {{name: rec, port: {{number: 80}}}}}}}}\n",
        service("smuggling", "rec"),
        endpoint_slice("smuggling", "rec", &[("rec-1".to_string(), backend.addr)]),
    );
    let proxy = Standalone::start(&[("rec.yaml", &manifests)]).await;
    let mut failures = Vec::new();
    for case in CASES {
        if let Err(why) = run_case(&proxy, &backend, case).await {
            failures.push(format!("{} [{}]: {why}", case.name, case.rule));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}
