//! The pool of cleartext HTTP/1.1 connections to backends: the common
//! case (`backend-protocol: HTTP`, no upgrade), kept off hyper-util's
//! general client, whose per-request path builds a connector future even
//! when a pooled connection is used and spawns a task per request to put
//! the connection back.
//!
//! Connections are kept per endpoint address, shared by every worker
//! thread, and handed out most recently used first (so that surplus ones
//! age out; see `super::idle`). A connection goes back to the pool when its response body has
//! been read to the end; one whose body was abandoned is closed, as HTTP/1
//! cannot resume it. A request that never left a stale pooled connection
//! is sent again on another one.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::UpstreamBody;
use super::idle::{IdleConnections, Reusable, WeakIdle};

/// Why a request could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendError {
    /// No connection could be opened (refused, unreachable, timed out).
    Connect,
    /// The connection failed while the request was under way.
    Upstream,
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub(super) struct H1Pool {
    connect_timeout: Duration,
    idle: IdleConnections<Sender>,
}

type Sender = SendRequest<UpstreamBody>;

/// Only connections ready for a request are kept; one that is not ready
/// any more is closing.
impl Reusable for Sender {
    fn reusable(&self) -> bool {
        self.is_ready()
    }
}

/// A connection lent to one request: it goes back to the pool by
/// [`Lent::release`] once the response body has ended; dropped otherwise,
/// which closes it.
pub(crate) struct Lent {
    pool: WeakIdle<Sender>,
    addr: SocketAddr,
    sender: Sender,
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Lent {
    /// Puts the connection back: to be called only when its response has
    /// been read completely. Usually it is ready for the next request by
    /// then; when it is not (a backend that answered before reading the
    /// whole request body, which is still being sent), it goes back once
    /// it is, so that no request waits behind it.
    pub(crate) fn release(self) {
        let Lent { pool, addr, mut sender } = self;
        if sender.is_ready() {
            if let Some(pool) = pool.upgrade() {
                pool.put(addr, sender);
            }
            return;
        }
        if sender.is_closed() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                pool.put(addr, sender);
            }
        });
    }
}

impl H1Pool {
    pub(super) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self { connect_timeout, idle: IdleConnections::new(idle_timeout) }
    }

    /// Sends `req` (origin-form URI, Host set) to `addr` on a pooled
    /// connection or a new one.
    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lent), SendError> {
        while let Some(mut sender) = self.idle.take(addr) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lend(addr, sender))),
                Err(mut err) => match err.take_message() {
                    // It never left: the connection closed in between.
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Upstream),
                },
            }
        }
        // Boxed: the connect and handshake states would otherwise make
        // every request's future larger, and futures are moved.
        let mut sender = Box::pin(self.connect(addr)).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, self.lend(addr, sender))),
            Err(_) => Err(SendError::Upstream),
        }
    }

    fn lend(&self, addr: SocketAddr, sender: Sender) -> Lent {
        Lent { pool: self.idle.downgrade(), addr, sender }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, SendError> {
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%addr, error = %err, "upstream connect failed");
                return Err(SendError::Connect);
            }
            Err(_elapsed) => {
                tracing::debug!(%addr, timeout = ?self.connect_timeout, "upstream connect timed out");
                return Err(SendError::Connect);
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%addr, error = %err, "TCP_NODELAY not set");
        }
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|err| {
            tracing::debug!(%addr, error = %err, "upstream handshake failed");
            SendError::Connect
        })?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%addr, error = %err, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Idle connections held for `addr` (tests).
    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle.count(addr)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Empty};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::*;

    /// A backend on a real socket that counts the connections it accepts
    /// and answers `hello`; `close` makes it close each connection after
    /// one response.
    async fn backend(close: bool) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        let mut resp = Response::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
                        if close {
                            resp.headers_mut().insert("connection", "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        (addr, accepted)
    }

    fn get(addr: SocketAddr) -> Request<UpstreamBody> {
        Request::builder().uri("/").header("host", addr.to_string()).body(Either::Right(Empty::new())).unwrap()
    }

    async fn read_all(resp: Response<Incoming>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    /// A GET through the pool, read to the end; the connection goes back.
    async fn fetch(pool: &H1Pool, addr: SocketAddr) -> Bytes {
        let (resp, lent) = pool.send(addr, get(addr)).await.unwrap();
        let body = read_all(resp).await;
        lent.release();
        body
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_was_read() {
        let (addr, accepted) = backend(false).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(fetch(&pool, addr).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(addr), 1);
    }

    #[tokio::test]
    async fn an_abandoned_response_does_not_return_its_connection() {
        let (addr, accepted) = backend(false).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        let (resp, lent) = pool.send(addr, get(addr)).await.unwrap();
        drop((resp, lent));
        assert_eq!(fetch(&pool, addr).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_backend_closed_are_not_used() {
        let (addr, accepted) = backend(true).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(fetch(&pool, addr).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn expired_idle_connections_are_closed() {
        let (addr, accepted) = backend(false).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_millis(200));
        assert_eq!(fetch(&pool, addr).await, "hello");
        assert_eq!(pool.idle_count(addr), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.idle_count(addr), 0, "the reaper closes it");
        assert_eq!(fetch(&pool, addr).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A backend that answers as soon as it has a request head, reads the
    /// body afterwards, and keeps the connection: the response can end
    /// while the request body is still being sent.
    async fn early_answering_backend() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = Vec::new();
                    // One answer per request head; body bytes are read and ignored.
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        if seen.len() > 8 * 1024 {
                            seen.clear(); // body bytes
                        }
                    }
                });
            }
        });
        addr
    }

    /// The response ends while the request body is still being uploaded:
    /// the connection is not handed to the next request (which would wait
    /// for the upload) but opened anew.
    #[tokio::test]
    async fn a_connection_still_sending_its_request_is_not_lent_again() {
        let backend = early_answering_backend().await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        // The request body must be a client's (`ClientBody` over hyper's
        // `Incoming`): a front server hands the pool what a client sends it.
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let (incoming_tx, mut incoming_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, _) = front.accept().await.unwrap();
            let svc = service_fn(move |req: Request<Incoming>| {
                let tx = incoming_tx.clone();
                async move {
                    let (body, _failure) = super::super::ClientBody::new(req.into_body(), u64::MAX);
                    let _ = tx.send(body);
                    // Keep the front request open while the test runs.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
        // A client whose upload never finishes.
        let (mut client, conn) = hyper::client::conn::http1::handshake::<_, ChannelBody>(TokioIo::new(
            tokio::net::TcpStream::connect(front_addr).await.unwrap(),
        ))
        .await
        .unwrap();
        tokio::spawn(conn);
        let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let upload = Request::post("/").header("host", "front").header("content-length", "1000000");
        tokio::spawn(client.send_request(upload.body(ChannelBody(chunks_rx)).unwrap()));
        chunks_tx.send(Bytes::from(vec![b'x'; 1000])).await.unwrap();
        let body = tokio::time::timeout(Duration::from_secs(5), incoming_rx.recv()).await.unwrap().unwrap();

        let upload = Request::post("/")
            .header("host", backend.to_string())
            .header("content-length", "1000000")
            .body(Either::Left(body))
            .unwrap();
        let (resp, lent) = pool.send(backend, upload).await.unwrap();
        assert_eq!(read_all(resp).await, "early");
        lent.release();
        // The next request must not queue behind the unfinished upload.
        let next = tokio::time::timeout(Duration::from_secs(3), pool.send(backend, get(backend))).await;
        let (resp, lent) = next.expect("the next request waited for the upload").unwrap();
        assert_eq!(read_all(resp).await, "early");
        lent.release();
        drop(chunks_tx);
    }

    /// A request body fed from a channel: it ends when the sender is
    /// dropped.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
        }
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(pool.send(addr, get(addr)).await.unwrap_err(), SendError::Connect);
    }
}
