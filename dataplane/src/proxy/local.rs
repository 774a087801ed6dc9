//! Responses the proxy answers itself (404, 502, 503, 504…).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use super::ProxyBody;

/// A short plain-text answer: `<code> <reason>: <detail>`.
pub fn local_response(status: StatusCode, detail: &str) -> Response<ProxyBody> {
    let text = format!("{} {}: {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""), detail);
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 308 to the same host (port dropped: HTTPS on its default port) and
/// request target over `https://`. Without a usable host: 400.
pub fn https_redirect(host: Option<&str>, uri: &http::Uri) -> Response<ProxyBody> {
    let host = host.and_then(crate::router::strip_port);
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Some(location) = host.and_then(|h| HeaderValue::try_from(format!("https://{h}{target}")).ok()) else {
        return local_response(StatusCode::BAD_REQUEST, "no valid Host to redirect to HTTPS");
    };
    let mut resp = local_response(StatusCode::PERMANENT_REDIRECT, "this host is served over HTTPS");
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_redirect_keeps_host_and_target_and_drops_the_port() {
        let location = |host, uri: &str| {
            let resp = https_redirect(host, &uri.parse().unwrap());
            (resp.status().as_u16(), resp.headers().get(header::LOCATION).map(|v| v.to_str().unwrap().to_string()))
        };
        assert_eq!(location(Some("a.test:8080"), "/x?y=1"), (308, Some("https://a.test/x?y=1".into())));
        assert_eq!(location(Some("a.test"), "/"), (308, Some("https://a.test/".into())));
        assert_eq!(location(Some("[::1]:80"), "/p"), (308, Some("https://[::1]/p".into())));
        assert_eq!(location(None, "/p"), (400, None));
    }
}
