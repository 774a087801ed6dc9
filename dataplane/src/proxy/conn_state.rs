//! What the listener's raw-byte audit and the proxy share about one
//! downstream connection.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

pub use crate::listener::audit::Rejection;

/// Shared by a connection's I/O wrapper and every request served on it.
#[derive(Debug, Default)]
pub struct ConnState {
    /// The first head the audit refused: this request and every later one
    /// on the connection are answered with it, and the connection closes.
    rejection: OnceLock<Rejection>,
    /// A 101 was passed on: the bytes are a tunnel now, not HTTP.
    upgraded: AtomicBool,
    /// Requests whose response has not been fully sent.
    in_flight: AtomicUsize,
    /// Releasing an idle keep-alive connection's HTTP machinery (see
    /// `listener::h1`): [`PARK_NONE`], [`PARK_WANTED`] or [`PARK_UNDER_WAY`].
    park: AtomicU8,
    /// A request has started since the connection was last released:
    /// hyper's connection has left its initial state, so stopping it when
    /// idle cannot add `Connection: close` to a response.
    served: AtomicBool,
}

const PARK_NONE: u8 = 0;
/// Idle long enough: the connection's buffers should be released.
const PARK_WANTED: u8 = 1;
/// hyper was told to stop after its idle state: the socket stays open.
const PARK_UNDER_WAY: u8 = 2;

impl ConnState {
    pub fn reject(&self, rejection: Rejection) {
        let _ = self.rejection.set(rejection);
    }

    pub fn rejection(&self) -> Option<Rejection> {
        self.rejection.get().copied()
    }

    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    pub fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// The socket has been idle between requests long enough for its
    /// connection to release hyper's buffers.
    pub fn want_park(&self) {
        self.park.store(PARK_WANTED, Ordering::Release);
    }

    pub fn park_wanted(&self) -> bool {
        self.park.load(Ordering::Acquire) == PARK_WANTED
    }

    /// hyper is being stopped to release its buffers: its shutdown of the
    /// socket must not reach the socket.
    pub fn begin_park(&self) {
        self.park.store(PARK_UNDER_WAY, Ordering::Release);
    }

    pub fn is_parking(&self) -> bool {
        self.park.load(Ordering::Acquire) == PARK_UNDER_WAY
    }

    /// Serving again: a new request has arrived on a released connection.
    pub fn end_park(&self) {
        self.park.store(PARK_NONE, Ordering::Release);
        self.served.store(false, Ordering::Release);
    }

    /// A request was served without hyper (the fast path): the
    /// connection holds no HTTP buffers, and its next idle spell is counted
    /// as a release again.
    pub fn served_without_hyper(&self) {
        self.park.store(PARK_NONE, Ordering::Release);
        self.served.store(true, Ordering::Release);
    }

    pub fn has_served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// Counts a request until the returned guard (kept in the response
    /// body) is dropped.
    pub fn start_request(self: &std::sync::Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        RequestGuard(self.clone())
    }
}

/// Keeps a request counted in [`ConnState`] while its response streams.
#[derive(Debug)]
pub struct RequestGuard(std::sync::Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
