//! HTTP/1.1 `Upgrade` (WebSocket and others): the client's and the
//! upstream's connections are joined byte for byte after a 101.

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::balance::InFlightGuard;

/// The protocol the client asks to switch to, if it asks (HTTP/1.1 with
/// `Connection: upgrade` and an `Upgrade` field).
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
    req.headers().get(header::UPGRADE).cloned()
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
