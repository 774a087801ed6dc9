//! The PROXY protocol header a load balancer puts in front of a connection
//! it relays, carrying the client's address (HAProxy's
//! `proxy-protocol.txt`: §2.1 the human-readable v1, §2.2 the binary v2;
//! both are accepted, told apart by their first bytes, §2.3).
//!
//! The header is read from the socket exactly, never a byte past its end:
//! what follows (a TLS ClientHello, an HTTP request) is left for the
//! connection's next reader. Bytes are *peeked* until the header is
//! complete; every peeked byte of an incomplete header belongs to it, so it
//! is consumed before peeking again (a second peek then waits for new data
//! instead of returning the same bytes). Parsing is `ppp`'s.
//!
//! A v2 `LOCAL` header (§2.2: the balancer's own health checks), a v1
//! `UNKNOWN` one, or an address family other than IPv4/IPv6 (unix,
//! unspecified) keeps the socket's peer address.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ppp::HeaderResult;
use ppp::{v1, v2};
use tokio::net::TcpStream;

/// The longest v2 payload (addresses and TLVs) accepted. The format allows
/// 64 KiB; balancers send a few dozen bytes of TLVs.
pub const MAX_V2_PAYLOAD: usize = 4096;

/// The v2 fixed part: signature (12), version and command, family and
/// protocol, payload length (2).
const V2_FIXED: usize = 16;

/// How many bytes one peek looks at (a longer header takes several).
const PEEK_WINDOW: usize = 512;

/// Why a connection's header was refused (the connection is then closed).
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("PROXY v2 payload of {0} bytes (at most {MAX_V2_PAYLOAD})")]
    TooLarge(usize),
    #[error("not a PROXY header: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the PROXY header at the start of `stream`, within `timeout`.
/// `Some(source)`: the client's address as the balancer saw it; `None`:
/// keep the socket's peer (`LOCAL`, `UNKNOWN`, non-IP families).
pub async fn read_header(stream: &mut TcpStream, timeout: Duration) -> Result<Option<SocketAddr>, HeaderError> {
    tokio::time::timeout(timeout, read_header_untimed(stream)).await.map_err(|_| HeaderError::Timeout(timeout))?
}

async fn read_header_untimed(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    use tokio::io::AsyncReadExt;

    // Bytes seen so far; `consumed` of them already read off the socket.
    let mut seen = Vec::new();
    let mut window = [0u8; PEEK_WINDOW];
    loop {
        let peeked = stream.peek(&mut window).await?;
        if peeked == 0 {
            return Err(HeaderError::Closed);
        }
        let consumed = seen.len();
        seen.extend_from_slice(&window[..peeked]);
        match parse(&seen)? {
            Parsed::Complete { len, source } => {
                stream.read_exact(&mut seen[consumed..len]).await?;
                return Ok(source);
            }
            // Everything peeked belongs to the header: take it off the
            // socket, so that the next peek waits for more.
            Parsed::Incomplete => {
                stream.read_exact(&mut seen[consumed..]).await?;
            }
        }
    }
}

/// What the bytes at the start of a connection hold so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A header of `len` bytes.
    Complete { len: usize, source: Option<SocketAddr> },
    /// The start of a header (every byte of `bytes` belongs to it).
    Incomplete,
}

/// Parses the start of a connection (v1 and v2 autodetected, §2.3).
fn parse(bytes: &[u8]) -> Result<Parsed, HeaderError> {
    // The v2 payload length is checked before the payload is read.
    if bytes.len() >= V2_FIXED && bytes.starts_with(v2::PROTOCOL_PREFIX) {
        let payload = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if payload > MAX_V2_PAYLOAD {
            return Err(HeaderError::TooLarge(payload));
        }
    }
    match HeaderResult::parse(bytes) {
        HeaderResult::V1(Ok(header)) => Ok(Parsed::Complete { len: header.header.len(), source: v1_source(&header) }),
        HeaderResult::V2(Ok(header)) => Ok(Parsed::Complete { len: header.len(), source: v2_source(&header) }),
        result if ppp::PartialResult::is_incomplete(&result) => Ok(Parsed::Incomplete),
        HeaderResult::V1(Err(err)) => Err(HeaderError::Invalid(err.to_string())),
        HeaderResult::V2(Err(err)) => Err(HeaderError::Invalid(err.to_string())),
    }
}

fn v1_source(header: &v1::Header<'_>) -> Option<SocketAddr> {
    match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Version};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_secs(5);
    const NEXT: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

    fn v2_header(command: Command, addresses: impl Into<v2::Addresses>) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
            .write_tlv(v2::Type::NoOp, b"tlv")
            .unwrap()
            .build()
            .unwrap()
    }

    fn v2_ipv4() -> Vec<u8> {
        v2_header(Command::Proxy, v2::IPv4::new([198, 18, 0, 7], [198, 18, 0, 1], 40000, 443))
    }

    /// A loopback connection pair: the client's half and the server's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Sends `chunks` (pausing between them), then reads the header on the
    /// server side; returns the result and the bytes left unread.
    async fn exchange(chunks: &[&[u8]]) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let (mut client, mut server) = pair().await;
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client.shutdown().await.unwrap();
            client
        });
        let result = read_header(&mut server, TIMEOUT).await;
        let _client = writer.await.unwrap();
        let mut rest = Vec::new();
        if result.is_ok() {
            server.read_to_end(&mut rest).await.unwrap();
        }
        (result, rest)
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6_give_the_source_and_leave_the_rest_unread() {
        let (got, rest) = exchange(&[&[b"PROXY TCP4 198.18.0.7 198.18.0.1 40000 80\r\n", NEXT].concat()]).await;
        assert_eq!(got.unwrap(), addr("198.18.0.7:40000"));
        assert_eq!(rest, NEXT);

        let (got, rest) = exchange(&[&[b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n", NEXT].concat()]).await;
        assert_eq!(got.unwrap(), addr("[2001:db8::7]:40000"));
        assert_eq!(rest, NEXT);
    }

    #[tokio::test]
    async fn v1_unknown_keeps_the_peer() {
        let (got, rest) = exchange(&[&[b"PROXY UNKNOWN\r\n", NEXT].concat()]).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, NEXT);
        let (got, _) = exchange(&[b"PROXY UNKNOWN 198.18.0.7 198.18.0.1 1 2\r\n"]).await;
        assert_eq!(got.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_proxy_gives_the_source_and_local_keeps_the_peer() {
        let (got, rest) = exchange(&[&[v2_ipv4().as_slice(), NEXT].concat()]).await;
        assert_eq!(got.unwrap(), addr("198.18.0.7:40000"));
        assert_eq!(rest, NEXT);

        let ip = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let v6 = v2::IPv6::new(ip("2001:db8::7"), ip("2001:db8::1"), 40000, 443);
        let (got, _) = exchange(&[&v2_header(Command::Proxy, v6)]).await;
        assert_eq!(got.unwrap(), addr("[2001:db8::7]:40000"));

        let local = v2_header(Command::Local, v2::IPv4::new([198, 18, 0, 7], [198, 18, 0, 1], 40000, 443));
        let (got, rest) = exchange(&[&[local.as_slice(), NEXT].concat()]).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, NEXT);

        let unix = v2::Unix::new([1; 108], [2; 108]);
        let (got, _) = exchange(&[&v2_header(Command::Proxy, unix)]).await;
        assert_eq!(got.unwrap(), None, "a unix source keeps the peer");
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_read_exactly() {
        let v1 = b"PROXY TCP4 198.18.0.7 198.18.0.1 40000 80\r\n";
        // Split inside the prefix, inside an address and between CR and LF.
        let (got, rest) =
            exchange(&[&v1[..3], &v1[3..20], &v1[20..v1.len() - 1], &[b"\n".as_slice(), NEXT].concat()]).await;
        assert_eq!(got.unwrap(), addr("198.18.0.7:40000"));
        assert_eq!(rest, NEXT);

        let v2 = v2_ipv4();
        let (got, rest) = exchange(&[&v2[..5], &v2[5..18], &[&v2[18..], NEXT].concat()]).await;
        assert_eq!(got.unwrap(), addr("198.18.0.7:40000"));
        assert_eq!(rest, NEXT);
    }

    #[tokio::test]
    async fn garbage_truncated_and_oversized_headers_are_refused() {
        let (got, _) = exchange(&[NEXT]).await;
        assert!(matches!(got, Err(HeaderError::Invalid(_))), "{got:?}");
        let (got, _) = exchange(&[b"PROXY TCP4 198.18.0.999 198.18.0.1 1 2\r\n"]).await;
        assert!(matches!(got, Err(HeaderError::Invalid(_))), "{got:?}");
        let (got, _) = exchange(&[b"PROXY TCP4 198.18.0.7"]).await;
        assert!(matches!(got, Err(HeaderError::Closed)), "{got:?}");

        // v1: no CRLF within 107 bytes.
        let long = [b"PROXY TCP6 ".as_slice(), &[b'1'; 120]].concat();
        let (got, _) = exchange(&[&long]).await;
        assert!(matches!(got, Err(HeaderError::Invalid(_))), "{got:?}");
        // v2: a payload over the cap is refused from its length alone.
        let mut big = v2_ipv4()[..V2_FIXED].to_vec();
        big[14..16].copy_from_slice(&u16::try_from(MAX_V2_PAYLOAD + 1).unwrap().to_be_bytes());
        let (got, _) = exchange(&[&big]).await;
        assert!(matches!(got, Err(HeaderError::TooLarge(4097))), "{got:?}");
        // ...while one at the cap is read whole.
        let tlv = vec![0u8; MAX_V2_PAYLOAD - 12 - 3];
        let at_cap = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            v2::IPv4::new([198, 18, 0, 7], [198, 18, 0, 1], 40000, 443),
        )
        .write_tlv(v2::Type::NoOp, &tlv)
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(at_cap.len(), V2_FIXED + MAX_V2_PAYLOAD);
        let (got, rest) = exchange(&[&[at_cap.as_slice(), NEXT].concat()]).await;
        assert_eq!(got.unwrap(), addr("198.18.0.7:40000"));
        assert_eq!(rest, NEXT);
    }

    #[tokio::test]
    async fn a_slow_header_times_out() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 ").await.unwrap();
        let got = read_header(&mut server, Duration::from_millis(100)).await;
        assert!(matches!(got, Err(HeaderError::Timeout(_))), "{got:?}");
    }
}
