//! The downstream socket as hyper sees it: every byte read passes the
//! [`Audit`], and two timers close connections that hold a slot without
//! using it — a head that takes too long to arrive (slowloris) and a
//! keep-alive connection with no next request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::audit::Audit;
use crate::proxy::ConnState;

/// Connection timers (see [`super::ListenerConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct ConnTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

pub struct AuditedIo<S = TcpStream> {
    stream: S,
    audit: Audit,
    state: Arc<ConnState>,
    timeouts: ConnTimeouts,
    /// When the head being read started to arrive.
    head_started: Option<Instant>,
    /// Last byte read or written.
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    /// A malformed body: the next read fails with this.
    failed: Option<&'static str>,
}

impl<S> AuditedIo<S> {
    pub fn new(stream: S, audit: Audit, state: Arc<ConnState>, timeouts: ConnTimeouts) -> Self {
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(now + timeouts.idle));
        Self { stream, audit, state, timeouts, head_started: None, last_activity: now, timer, failed: None }
    }

    /// The deadline in force now, and whether passing it is a slow head (an
    /// error) rather than an idle connection (a clean close).
    fn deadline(&mut self) -> Option<(Instant, bool)> {
        if self.state.is_upgraded() {
            self.audit.turn_off();
            return None;
        }
        if self.audit.in_head() {
            let started = *self.head_started.get_or_insert(self.last_activity);
            return Some((started + self.timeouts.header_read, true));
        }
        self.head_started = None;
        (self.audit.between_messages() && !self.state.is_busy())
            .then(|| (self.last_activity + self.timeouts.idle, false))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuditedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(reason) = this.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, reason)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() || this.state.is_upgraded() {
                    // A tunnel's bytes are not HTTP: not audited.
                    return Poll::Ready(Ok(()));
                }
                let was_in_head = this.audit.in_head();
                this.last_activity = Instant::now();
                let findings = this.audit.feed(fresh);
                if !was_in_head && this.audit.in_head() {
                    this.head_started = Some(this.last_activity);
                }
                if let Some(rejection) = findings.head {
                    this.state.reject(rejection);
                }
                if let Some((rejection, usable)) = findings.body {
                    // hyper gets the bytes before the bad line, never the
                    // line: it cannot finish the body, the proxy answers 400.
                    this.state.reject(rejection);
                    this.failed = Some(rejection.reason);
                    buf.set_filled(before + usable);
                    if usable == 0 {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, rejection.reason)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some((deadline, slow_head)) = this.deadline() else { return Poll::Pending };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                ready!(this.timer.as_mut().poll(cx));
                if slow_head {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head read timeout")));
                }
                // Idle: end of stream, which hyper takes as a clean close.
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuditedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.stream).poll_write(cx, buf));
        this.last_activity = Instant::now();
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs));
        this.last_activity = Instant::now();
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
