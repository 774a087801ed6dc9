//! The upstream response body, carrying the endpoint's in-flight guard so
//! that a streamed response (SSE, downloads) counts as in flight until its
//! last byte, not until its headers. It also carries the request's
//! access-log entry, which counts the bytes and is sent at the end, and,
//! for pooled HTTP/1.1 upstreams, the connection, which goes back to the
//! pool once the body has been read to its end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::access_log;
use super::h1pool::Lent;
use crate::balance::InFlightGuard;

#[derive(Debug)]
pub struct GuardedBody {
    inner: Incoming,
    _guard: Option<InFlightGuard>,
    access_log: access_log::Entry,
    lent: Option<Lent>,
}

impl GuardedBody {
    pub(super) fn new(inner: Incoming, guard: Option<InFlightGuard>, lent: Option<Lent>) -> Self {
        Self { inner, _guard: guard, access_log: access_log::Entry::default(), lent }
    }

    /// Returns the pooled connection once the body has ended (`ended`, or
    /// the body says so); a failed body closes it.
    fn settle_connection(&mut self, ended: bool, failed: bool) {
        if failed {
            self.lent = None;
        } else if (ended || self.inner.is_end_stream())
            && let Some(lent) = self.lent.take()
        {
            lent.release();
        }
    }

    /// The access-log line is sent when this body ends or is dropped.
    pub(super) fn log_on_end(&mut self, entry: access_log::Entry) {
        self.access_log = entry;
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &mut frame
            && let Some(trailers) = f.trailers_mut()
        {
            super::headers::sanitize_trailers(trailers);
        }
        this.access_log.frame(&frame);
        // hyper's server drops the body after trailers without asking for
        // more: they end the response, as `None` does.
        let ended = frame.as_ref().is_none_or(|f| f.as_ref().is_ok_and(Frame::is_trailers));
        this.settle_connection(ended, matches!(frame, Some(Err(_))));
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuardedBody {
    /// hyper drops a body without polling it again once it reports its end.
    fn drop(&mut self) {
        self.settle_connection(false, false);
    }
}

// === impl ClientBody ===

/// Why the client's request body stopped short of the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyFailure {
    /// Longer than the route's body size limit (413).
    TooLarge,
    /// Malformed (bad chunk) or cut off by the client (400).
    Client,
}

/// The client's request body on its way upstream, cut off when it passes
/// the route's size limit. What went wrong is left in `failure`, so that
/// the proxy can answer 413 or 400 instead of blaming the upstream.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    /// Bytes still allowed (`u64::MAX`: no limit).
    allowed: u64,
    failure: std::sync::Arc<std::sync::OnceLock<BodyFailure>>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the size limit")]
struct TooLarge;

impl ClientBody {
    pub(super) fn new(inner: Incoming, limit: u64) -> (Self, std::sync::Arc<std::sync::OnceLock<BodyFailure>>) {
        let failure = std::sync::Arc::default();
        (Self { inner, allowed: limit, failure: std::sync::Arc::clone(&failure) }, failure)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    super::headers::sanitize_trailers(trailers);
                }
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.allowed {
                    let _ = this.failure.set(BodyFailure::TooLarge);
                    return Poll::Ready(Some(Err(Box::new(TooLarge))));
                }
                this.allowed -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                let _ = this.failure.set(BodyFailure::Client);
                Poll::Ready(Some(Err(Box::new(err))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
