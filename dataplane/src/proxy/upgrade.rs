//! HTTP/1.1 `Upgrade` (WebSocket and others): the client's and the
//! upstream's connections are joined byte for byte after a 101.

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::balance::InFlightGuard;

/// The protocol the client asks to switch to, if it asks (HTTP/1.1 with
/// `Connection: upgrade` and an `Upgrade` field) and it is WebSocket. Other
/// upgrades (notably `h2c`, which would hand the client a raw HTTP/2
/// connection to the backend past our routing) are not honoured: the
/// request is forwarded without its hop-by-hop `Upgrade`.
pub(super) fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !wants {
        return None;
    }
    req.headers().get(header::UPGRADE).filter(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")).cloned()
}

/// Spawns the byte pump between the two upgraded connections. It ends when
/// either side closes.
pub(super) fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade, endpoint: SocketAddr, guard: Option<InFlightGuard>) {
    tokio::spawn(async move {
        let _guard = guard;
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(%endpoint, error = %err, "upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((to_upstream, to_client)) => {
                tracing::trace!(%endpoint, to_upstream, to_client, "upgraded connection closed")
            }
            Err(err) => {
                tracing::debug!(%endpoint, error = %err, "upgraded connection ended with error")
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(upgrade: &str) -> Request<()> {
        Request::get("/").header("connection", "keep-alive, Upgrade").header("upgrade", upgrade).body(()).unwrap()
    }

    #[test]
    fn only_websocket_upgrades_are_honoured() {
        assert_eq!(requested(&mk("websocket")).unwrap(), "websocket");
        assert_eq!(requested(&mk("WebSocket")).unwrap(), "WebSocket");
        assert!(requested(&mk("h2c")).is_none());
        assert!(requested(&mk("TLS/1.2")).is_none());
        let no_connection = Request::get("/").header("upgrade", "websocket").body(()).unwrap();
        assert!(requested(&no_connection).is_none());
    }
}
