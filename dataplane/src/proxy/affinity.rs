//! Cookie session affinity. The cookie names its endpoint by a digest of
//! `ip:port` ([`affinity_digest`]), so any replica, with no shared state,
//! sends the client to the same endpoint, before and after scale-out. When
//! the pinned endpoint is gone, the request is balanced as usual and the
//! cookie is reissued; a draining endpoint keeps its sessions.

use http::Request;
use http::header::{self, HeaderMap, HeaderValue};

use crate::snapshot::AffinityCookie;
#[cfg(doc)]
use crate::snapshot::affinity_digest;

/// How a request's affinity was resolved (`switchyard_affinity_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The cookie's endpoint served it.
    Hit,
    /// No cookie: a new session.
    New,
    /// The cookie's endpoint was gone or failed: pinned anew.
    Repinned,
}

impl Outcome {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::New => "new",
            Self::Repinned => "repinned",
        }
    }
}

/// The endpoint digest the request's affinity cookie carries, if any.
pub(super) fn presented<B>(req: &Request<B>, cookie: &AffinityCookie) -> Option<u64> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == &*cookie.name)
        .and_then(|(_, v)| u64::from_str_radix(v.trim_matches('"'), 16).ok())
}

/// `served_by`: the serving endpoint's [`affinity_digest`].
pub(super) fn outcome(presented: Option<u64>, served_by: u64) -> Outcome {
    match presented {
        None => Outcome::New,
        Some(d) if d == served_by => Outcome::Hit,
        Some(_) => Outcome::Repinned,
    }
}

/// Appends `Set-Cookie` pinning the client to the endpoint whose
/// [`affinity_digest`] is `digest`.
pub(super) fn set_cookie(headers: &mut HeaderMap, cookie: &AffinityCookie, digest: u64, tls: bool) {
    let secure = if tls || cookie.secure { "; Secure" } else { "" };
    let value = format!("{}={digest:016x}{}{secure}", cookie.name, cookie.attributes);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::affinity_digest;
    use std::net::SocketAddr;

    fn mk_cookie() -> AffinityCookie {
        AffinityCookie { name: "SY".into(), attributes: "; Path=/; HttpOnly; SameSite=Lax".into(), secure: false }
    }

    #[test]
    fn cookie_round_trip_and_outcomes() {
        let ep: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let mut headers = HeaderMap::new();
        set_cookie(&mut headers, &mk_cookie(), affinity_digest(ep), true);
        let set = headers[header::SET_COOKIE].to_str().unwrap().to_string();
        assert!(set.starts_with("SY=") && set.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure"), "{set}");
        let value = set.trim_start_matches("SY=").split(';').next().unwrap();
        let req = Request::get("/").header("cookie", format!("a=1; SY={value}; b=2")).body(()).unwrap();
        let digest = presented(&req, &mk_cookie());
        assert_eq!(digest, Some(affinity_digest(ep)));
        assert_eq!(outcome(digest, affinity_digest(ep)), Outcome::Hit);
        assert_eq!(outcome(digest, affinity_digest("10.0.0.8:8080".parse().unwrap())), Outcome::Repinned);
        assert_eq!(outcome(None, affinity_digest(ep)), Outcome::New);
        let junk = Request::get("/").header("cookie", "SY=zz").body(()).unwrap();
        assert_eq!(presented(&junk, &mk_cookie()), None);
    }
}
