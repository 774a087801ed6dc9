//! Idle upstream connections kept for reuse, per endpoint address: what
//! both of our HTTP/1.1 pools keep (`h1pool`'s hyper connections, the fast
//! path's bare sockets in `raw_pool`).
//!
//! Shared by every worker thread; handed out most recently used first (so
//! that surplus ones age out); at most [`MAX_IDLE_PER_ENDPOINT`] per
//! endpoint, each for at most the idle timeout. A connection that is no
//! longer [`Reusable`] is never handed out, and a task closes expired and
//! dead ones now and then, for as long as the store exists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Idle connections kept per endpoint at most; more are closed.
pub(super) const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// A pooled connection's own judgement of whether it can serve again.
pub(super) trait Reusable: Send + 'static {
    fn reusable(&self) -> bool;
}

/// See the module documentation.
pub(super) struct IdleConnections<C> {
    inner: Arc<Inner<C>>,
}

/// A handle that does not keep the store alive (for connections lent out).
pub(super) struct WeakIdle<C>(Weak<Inner<C>>);

type IdleMap<C> = HashMap<SocketAddr, Vec<Idle<C>>, foldhash::fast::RandomState>;

struct Inner<C> {
    idle_timeout: Duration,
    idle: Mutex<IdleMap<C>>,
    /// Whether the task that closes expired idle connections runs.
    reaper: AtomicBool,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

impl<C> Clone for IdleConnections<C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<C> std::fmt::Debug for IdleConnections<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections").field("idle_timeout", &self.inner.idle_timeout).finish_non_exhaustive()
    }
}

impl<C: Reusable> IdleConnections<C> {
    pub(super) fn new(idle_timeout: Duration) -> Self {
        let inner = Inner { idle_timeout, idle: Mutex::new(HashMap::default()), reaper: AtomicBool::new(false) };
        Self { inner: Arc::new(inner) }
    }

    /// The most recently used reusable connection to `addr`, if any.
    pub(super) fn take(&self, addr: SocketAddr) -> Option<C> {
        let mut idle = self.inner.lock();
        let list = idle.get_mut(&addr)?;
        let now = crate::clock::coarse_now();
        let found = std::iter::from_fn(|| list.pop())
            .find(|c| now.duration_since(c.since) < self.inner.idle_timeout && c.conn.reusable())
            .map(|c| c.conn);
        if list.is_empty() {
            idle.remove(&addr);
        }
        found
    }

    /// Keeps `conn` for the next request to `addr`, if it can serve one.
    pub(super) fn put(&self, addr: SocketAddr, conn: C) {
        if !conn.reusable() {
            return;
        }
        {
            let mut idle = self.inner.lock();
            let list = idle.entry(addr).or_default();
            if list.len() >= MAX_IDLE_PER_ENDPOINT {
                return;
            }
            list.push(Idle { conn, since: crate::clock::coarse_now() });
        }
        if !self.inner.reaper.swap(true, Ordering::Relaxed) {
            Inner::start_reaper(&self.inner);
        }
    }

    pub(super) fn downgrade(&self) -> WeakIdle<C> {
        WeakIdle(Arc::downgrade(&self.inner))
    }

    /// Idle connections held for `addr` (tests).
    #[cfg(test)]
    pub(super) fn count(&self, addr: SocketAddr) -> usize {
        self.inner.lock().get(&addr).map_or(0, Vec::len)
    }
}

impl<C: Reusable> WeakIdle<C> {
    /// The store, if it still exists.
    pub(super) fn upgrade(&self) -> Option<IdleConnections<C>> {
        self.0.upgrade().map(|inner| IdleConnections { inner })
    }
}

impl<C: Reusable> Inner<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap<C>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_reaper(this: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            this.reaper.store(false, Ordering::Relaxed);
            return;
        };
        let weak = Arc::downgrade(this);
        let period = (this.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                let now = crate::clock::coarse_now();
                store.lock().retain(|_, list| {
                    list.retain(|c| now.duration_since(c.since) < store.idle_timeout && c.conn.reusable());
                    !list.is_empty()
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A connection whose reusability the test sets.
    struct Fake(Arc<AtomicBool>);

    impl Reusable for Fake {
        fn reusable(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn fake() -> (Fake, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(true));
        (Fake(flag.clone()), flag)
    }

    #[tokio::test]
    async fn most_recent_first_and_dead_ones_skipped() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let store = IdleConnections::new(Duration::from_secs(60));
        let (older, _) = fake();
        let (newer, newer_alive) = fake();
        store.put(addr, older);
        store.put(addr, newer);
        assert_eq!(store.count(addr), 2);
        newer_alive.store(false, Ordering::SeqCst);
        let got = store.take(addr).expect("the older one");
        assert!(got.reusable());
        assert_eq!(store.count(addr), 0, "the dead one was dropped on the way");
        let (dead, alive) = fake();
        alive.store(false, Ordering::SeqCst);
        store.put(addr, dead);
        assert_eq!(store.count(addr), 0, "a dead connection is not kept");
    }

    #[tokio::test]
    async fn expired_connections_are_closed_by_the_reaper() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let store = IdleConnections::new(Duration::from_millis(200));
        store.put(addr, fake().0);
        assert_eq!(store.count(addr), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(store.count(addr), 0);
        let weak = store.downgrade();
        assert!(weak.upgrade().is_some());
        drop(store);
        assert!(weak.upgrade().is_none(), "a lent connection does not keep the store alive");
    }
}
