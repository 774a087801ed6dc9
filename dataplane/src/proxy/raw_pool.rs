//! Idle cleartext HTTP/1.1 connections to endpoints, as bare sockets: the
//! pool of the fast path (see `fast_h1`), which speaks HTTP/1.1 to the
//! upstream itself instead of through hyper's client.
//!
//! Connections are kept as `super::idle` keeps them (per endpoint, most
//! recently used first, bounded in number and age). A connection the
//! endpoint closed while it was idle is noticed when taken, without a
//! system call in the common case: tokio knows whether the socket became
//! readable since its last read (an idle HTTP/1.1 connection has nothing to
//! say until asked). A request that still meets a connection closed in
//! between is sent again on a new one by the fast path.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::idle::{IdleConnections, Reusable};

/// See the module documentation.
#[derive(Clone, Debug)]
pub(super) struct RawPool {
    connect_timeout: Duration,
    idle: IdleConnections<TcpStream>,
}

/// Why no connection could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnectFailed;

impl RawPool {
    pub(super) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self { connect_timeout, idle: IdleConnections::new(idle_timeout) }
    }

    /// The most recently used live idle connection to `addr`, if any.
    pub(super) fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        self.idle.take(addr)
    }

    /// Puts back a connection whose last response was read to its end.
    pub(super) fn put(&self, addr: SocketAddr, stream: TcpStream) {
        self.idle.put(addr, stream);
    }

    /// A new connection to `addr`, within the connect timeout.
    pub(super) async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ConnectFailed> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%addr, error = %err, "TCP_NODELAY not set");
                }
                Ok(stream)
            }
            Ok(Err(err)) => {
                tracing::debug!(%addr, error = %err, "upstream connect failed");
                Err(ConnectFailed)
            }
            Err(_elapsed) => {
                tracing::debug!(%addr, timeout = ?self.connect_timeout, "upstream connect timed out");
                Err(ConnectFailed)
            }
        }
    }

    /// Idle connections held for `addr` (tests).
    #[cfg(test)]
    pub(super) fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle.count(addr)
    }
}

/// An idle connection can serve again while it has stayed silent: no
/// bytes, no end of stream, no error. Without a readiness event since its
/// last read, tokio answers this without a system call.
impl Reusable for TcpStream {
    fn reusable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.try_read(&mut probe), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_connection_put_back_is_taken_again_until_the_peer_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = RawPool::new(Duration::from_secs(1), Duration::from_secs(60));
        let client = pool.connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        pool.put(addr, client);
        assert_eq!(pool.idle_count(addr), 1);
        let client = pool.take(addr).expect("a silent idle connection is taken");
        pool.put(addr, client);
        // The peer closes it while idle: never handed out again.
        server.shutdown().await.unwrap();
        let mut buf = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(100), server.read(&mut buf)).await;
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(addr).is_none(), "a connection closed by its peer was handed out");
        assert_eq!(pool.idle_count(addr), 0);
    }

    #[tokio::test]
    async fn expired_idle_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = RawPool::new(Duration::from_secs(1), Duration::from_millis(200));
        let client = pool.connect(addr).await.unwrap();
        let (_server, _) = listener.accept().await.unwrap();
        pool.put(addr, client);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.idle_count(addr), 0, "the reaper closes it");
    }

    #[tokio::test]
    async fn a_refused_connect_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = RawPool::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(pool.connect(addr).await.unwrap_err(), ConnectFailed);
    }
}
