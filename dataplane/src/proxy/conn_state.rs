//! What the listener's raw-byte audit and the proxy share about one
//! downstream connection.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
}

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

    /// Counts a request until the returned guard (kept in the response
    /// body) is dropped.
    pub fn start_request(self: &std::sync::Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
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
