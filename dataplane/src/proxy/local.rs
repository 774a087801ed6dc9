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
