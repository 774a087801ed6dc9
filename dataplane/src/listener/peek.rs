//! The SNI of a TLS connection, read without consuming anything: the
//! HTTPS listener decides from it between terminating the connection and
//! passing it through, and either way the next reader (rustls, or the
//! passthrough backend) gets the ClientHello from its first byte.
//!
//! `TcpStream::peek` returns what the socket holds so far; a ClientHello
//! can span several TCP segments (post-quantum key shares make it ~1.8 KB
//! or more), so it is peeked again, with a short pause, until rustls's
//! [`Acceptor`] finds it complete, up to [`MAX_CLIENT_HELLO`] bytes. The
//! caller bounds the time.

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

/// The most bytes peeked for one ClientHello (records included); a bigger
/// one is left to the terminating path.
pub(super) const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The first peek buffer; grown (to [`MAX_CLIENT_HELLO`]) when filled.
const FIRST_PEEK: usize = 2048;

/// Pauses between peeks that found nothing new, doubling from the first
/// (a peek returns at once while unread bytes wait, so this bounds what a
/// stalled ClientHello costs: after half a second, four peeks a second).
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// What the first bytes of a connection hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hello {
    /// A complete ClientHello, with its SNI if it sends one.
    Complete(Option<String>),
    /// A ClientHello (or nothing yet) that needs more bytes.
    Partial,
    /// Not a ClientHello rustls would accept.
    Invalid,
}

/// Peeks until the ClientHello is complete and returns its SNI. `None`
/// when it has none, is not a valid ClientHello, is larger than
/// [`MAX_CLIENT_HELLO`], or the connection ended or failed first: the
/// terminating path then reads it and reports the failure.
pub(super) async fn server_name(stream: &TcpStream) -> Option<String> {
    let mut buf = vec![0; FIRST_PEEK];
    let mut seen = 0;
    let mut pause = FIRST_PAUSE;
    loop {
        // Waits for a first byte; afterwards returns at once.
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if n > seen {
            seen = n;
            pause = FIRST_PAUSE;
            match parse(&buf[..n]) {
                Hello::Complete(sni) => return sni,
                Hello::Invalid => return None,
                Hello::Partial if n < buf.len() => {}
                Hello::Partial if buf.len() < MAX_CLIENT_HELLO => {
                    buf.resize((buf.len() * 4).min(MAX_CLIENT_HELLO), 0);
                    continue;
                }
                Hello::Partial => return None,
            }
        }
        // Nothing new (or not enough): the rest is on its way, or never
        // comes (the caller's deadline ends the wait).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Reads `bytes` (a connection's first bytes) as a ClientHello.
pub(super) fn parse(bytes: &[u8]) -> Hello {
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Hello::Complete(accepted.client_hello().server_name().map(str::to_string)),
        Ok(None) => Hello::Partial,
        Err(_) => Hello::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a rustls client for `sni` (none: an IP address).
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = match sni {
            Some(sni) => rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap(),
            None => rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_complete_hello_gives_its_sni_and_a_partial_one_asks_for_more() {
        let hello = client_hello(Some("Pass.Test"));
        assert_eq!(parse(&hello), Hello::Complete(Some("pass.test".into())));
        for cut in [0, 1, 4, 5, 40, hello.len() - 1] {
            assert_eq!(parse(&hello[..cut]), Hello::Partial, "first {cut} bytes");
        }
        // Bytes past the hello (the client's next flight) change nothing.
        let mut more = hello.clone();
        more.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
        assert_eq!(parse(&more), Hello::Complete(Some("pass.test".into())));
        assert_eq!(parse(&client_hello(None)), Hello::Complete(None));
    }

    #[test]
    fn other_protocols_are_invalid() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Hello::Invalid);
        assert_eq!(parse(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"), Hello::Invalid, "a ServerHello");
    }

    #[tokio::test]
    async fn peeks_a_hello_sent_in_pieces_and_leaves_it_unread() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let hello = client_hello(Some("split.test"));
        let (first, second) = hello.split_at(hello.len() / 2);
        client.write_all(first).await.unwrap();
        let sent = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(second).await.unwrap();
        };
        let (sni, ()) = tokio::join!(server_name(&server), sent);
        assert_eq!(sni.as_deref(), Some("split.test"));
        let mut read = vec![0; hello.len()];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(read, hello, "the ClientHello is still there, whole");
        // A connection that closes before a hello: no SNI.
        drop(client);
        assert_eq!(server_name(&server).await, None);
    }
}
