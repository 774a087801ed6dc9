//! The upstream response body, carrying the endpoint's in-flight guard so
//! that a streamed response (SSE, downloads) counts as in flight until its
//! last byte, not until its headers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::InFlightGuard;

#[derive(Debug)]
pub struct GuardedBody {
    inner: Incoming,
    _guard: Option<InFlightGuard>,
}

impl GuardedBody {
    pub(super) fn new(inner: Incoming, guard: Option<InFlightGuard>) -> Self {
        Self { inner, _guard: guard }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
