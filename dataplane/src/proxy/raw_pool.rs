//! Idle cleartext HTTP/1.1 connections to endpoints, as bare sockets: the
//! pool of the fast path (see `fast_h1`), which speaks HTTP/1.1 to the
//! upstream itself instead of through hyper's client.
//!
//! Connections are kept per endpoint address, shared by every worker
//! thread, handed out most recently used first (so that surplus ones age
//! out), at most [`MAX_IDLE_PER_ENDPOINT`] per endpoint and for at most the
//! pool's idle timeout. A connection the endpoint closed while it was idle
//! is noticed when taken, without a system call in the common case: tokio
//! knows whether the socket became readable since its last read (an idle
//! HTTP/1.1 connection has nothing to say until asked). A request that
//! still meets a connection closed in between is sent again on a new one by
//! the fast path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per endpoint at most; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// See the module documentation.
#[derive(Clone, Debug)]
pub(super) struct RawPool {
    inner: Arc<Inner>,
}

type IdleMap = HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>;

struct Inner {
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<IdleMap>,
    /// Whether the task that closes expired idle connections runs.
    reaper: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPool")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// Why no connection could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnectFailed;

impl RawPool {
    pub(super) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let inner = Inner {
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(HashMap::default()),
            reaper: AtomicBool::new(false),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The most recently used live idle connection to `addr`, if any.
    pub(super) fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.inner.lock();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        let found = std::iter::from_fn(|| list.pop())
            .find(|c| now.duration_since(c.since) < self.inner.idle_timeout && still_idle(&c.stream))
            .map(|c| c.stream);
        if list.is_empty() {
            idle.remove(&addr);
        }
        found
    }

    /// Puts back a connection whose last response was read to its end.
    pub(super) fn put(&self, addr: SocketAddr, stream: TcpStream) {
        {
            let mut idle = self.inner.lock();
            let list = idle.entry(addr).or_default();
            if list.len() >= MAX_IDLE_PER_ENDPOINT {
                return;
            }
            list.push(Idle { stream, since: Instant::now() });
        }
        if !self.inner.reaper.swap(true, Ordering::Relaxed) {
            Inner::start_reaper(&self.inner);
        }
    }

    /// A new connection to `addr`, within the connect timeout.
    pub(super) async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ConnectFailed> {
        match tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(addr)).await {
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
                tracing::debug!(%addr, timeout = ?self.inner.connect_timeout, "upstream connect timed out");
                Err(ConnectFailed)
            }
        }
    }

    /// Idle connections held for `addr` (tests).
    #[cfg(test)]
    pub(super) fn idle_count(&self, addr: SocketAddr) -> usize {
        self.inner.lock().get(&addr).map_or(0, Vec::len)
    }
}

/// Whether an idle connection has stayed silent: no bytes, no end of
/// stream, no error. Without a readiness event since its last read, tokio
/// answers this without a system call.
fn still_idle(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes expired and closed idle connections now and then, for as
    /// long as the pool exists.
    fn start_reaper(this: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            this.reaper.store(false, Ordering::Relaxed);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(this);
        let period = (this.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                pool.lock().retain(|_, list| {
                    list.retain(|c| now.duration_since(c.since) < pool.idle_timeout && still_idle(&c.stream));
                    !list.is_empty()
                });
            }
        });
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
