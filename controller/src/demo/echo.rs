//! A small HTTP echo backend for the demo, tests and benchmarks.
//!
//! * `GET /ws` with a WebSocket upgrade: echoes each message as
//!   `<name>:<message>`;
//! * `GET /sse?events=N&interval_ms=M`: a `text/event-stream` of N events;
//! * `/bytes/N`: N bytes of `x` (benchmarks);
//! * `/status/CODE`: answers that status;
//! * `GET /healthz`: 200, or the status last set by `PUT /healthz?status=N`
//!   (to make a backend fail its health check while it keeps serving);
//! * anything else: JSON describing the request (backend name, method, URI,
//!   HTTP version, headers), after `?delay_ms=N` if given.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

type EchoBody = BoxBody<Bytes, Infallible>;

/// Serves the echo backend named `name` on `listener` forever.
pub async fn serve(listener: TcpListener, name: impl Into<Arc<str>>) {
    serve_with_delay(listener, name, Duration::ZERO).await;
}

/// Like [`serve`], delaying every answer by `delay` (a slow backend).
pub async fn serve_with_delay(listener: TcpListener, name: impl Into<Arc<str>>, delay: Duration) {
    let name: Arc<str> = name.into();
    let health = Arc::new(AtomicU16::new(200));
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let health = health.clone();
        let service = service_fn(move |req| {
            let (name, health) = (name.clone(), health.clone());
            async move {
                if req.uri().path() == "/healthz" {
                    return Ok(healthz(&name, &health, &req));
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                handle(name, req).await
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn handle(name: Arc<str>, mut req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok()) {
        return Ok(plain(StatusCode::OK, Bytes::from(vec![b'x'; n.min(64 << 20)])));
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(plain(status, Bytes::from(format!("{name}: status {code}\n"))));
    }
    if path == "/ws" && req.headers().contains_key(header::SEC_WEBSOCKET_KEY) {
        return Ok(websocket(name, &mut req));
    }
    if path == "/sse" {
        let events = query_param(&query, "events").unwrap_or(5);
        let interval = Duration::from_millis(query_param(&query, "interval_ms").unwrap_or(100));
        return Ok(sse(name, events, interval));
    }
    if let Some(ms) = query_param(&query, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned().into()))
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let echo = serde_json::json!({
        "backend": &*name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_len": body.len(),
    });
    let mut resp = plain(StatusCode::OK, Bytes::from(echo.to_string() + "\n"));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("x-backend", HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("?")));
    Ok(resp)
}

fn healthz(name: &str, health: &AtomicU16, req: &Request<Incoming>) -> Response<EchoBody> {
    if req.method() == http::Method::PUT
        && let Some(code) = query_param(req.uri().query().unwrap_or(""), "status")
    {
        health.store(u16::try_from(code).unwrap_or(500), Ordering::Relaxed);
    }
    let code = health.load(Ordering::Relaxed);
    plain(StatusCode::from_u16(code).unwrap_or(StatusCode::OK), Bytes::from(format!("{name}: health {code}\n")))
}

fn query_param(query: &str, key: &str) -> Option<u64> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok())
}

fn plain(status: StatusCode, body: Bytes) -> Response<EchoBody> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn sse(name: Arc<str>, events: u64, interval: Duration) -> Response<EchoBody> {
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let name = name.clone();
        async move {
            if i >= events {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let frame = Frame::data(Bytes::from(format!("id: {i}\ndata: {name} event {i}\n\n")));
            Some((Ok::<_, Infallible>(frame), i + 1))
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn websocket(name: Arc<str>, req: &mut Request<Incoming>) -> Response<EchoBody> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::text(format!("{name}:{}", t.as_str())),
                Message::Binary(b) => Message::Binary(b),
                Message::Ping(p) => Message::Pong(p),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(accept) = key.and_then(|k| HeaderValue::from_str(&k).ok()) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}
