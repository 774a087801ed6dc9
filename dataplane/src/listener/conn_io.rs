//! The downstream socket as hyper sees it: every byte read passes the
//! [`Audit`], and two timers close connections that hold a slot without
//! using it — a head that takes too long to arrive (slowloris) and a
//! keep-alive connection with no next request. A third, where the
//! listener asks for it, marks a connection idle long enough to release
//! hyper's buffers (see `super::h1`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};

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
    /// Idle this long between requests, the connection is marked for
    /// release ([`ConnState::want_park`]); `None`: never.
    pub release_after: Option<Duration>,
}

/// What passing the deadline in force means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lapse {
    /// A head arrives too slowly: an error.
    SlowHead,
    /// Idle long enough to release the connection's buffers.
    Release,
    /// Idle too long: a clean close.
    Idle,
    /// Busy: nothing to do but look again.
    Recheck,
}

/// A connection's timestamps need milliseconds: see [`crate::clock`].
fn coarse_now() -> Instant {
    Instant::from_std(crate::clock::coarse_now())
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
    /// Bytes already read and audited, given to the next reads first (a
    /// released connection's unparsed input, or a parked one's first read).
    replay: Bytes,
}

impl<S> AuditedIo<S> {
    pub fn new(stream: S, audit: Audit, state: Arc<ConnState>, timeouts: ConnTimeouts) -> Self {
        let now = coarse_now();
        let timer = Box::pin(tokio::time::sleep_until(now + timeouts.idle));
        Self {
            stream,
            audit,
            state,
            timeouts,
            head_started: None,
            last_activity: now,
            timer,
            failed: None,
            replay: Bytes::new(),
        }
    }

    /// When the connection, idle since its last byte, is closed.
    pub fn idle_deadline(&self) -> Instant {
        self.last_activity + self.timeouts.idle
    }

    /// Gives `bytes` (already audited) to the next reads, before the
    /// socket's. They are copied: `bytes` may be a view into a much larger
    /// buffer (hyper's read buffer), which must not stay allocated.
    pub fn replay(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.replay = [bytes, &self.replay[..]].concat().into();
        }
    }

    /// The socket, with the bytes to be read before its own.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.stream, self.replay)
    }

    pub fn has_replay(&self) -> bool {
        !self.replay.is_empty()
    }

    /// The deadline in force now, and what passing it means.
    fn deadline(&mut self) -> Option<(Instant, Lapse)> {
        if self.state.is_upgraded() {
            self.audit.turn_off();
            return None;
        }
        if self.audit.in_head() {
            let started = *self.head_started.get_or_insert(self.last_activity);
            return Some((started + self.timeouts.header_read, Lapse::SlowHead));
        }
        self.head_started = None;
        if !self.audit.between_messages() || self.state.is_busy() {
            // A request is in flight. With releasing on, look again every
            // `release_after`: hyper may not read again once the response
            // is done, and the idle timers must start then.
            return self.timeouts.release_after.map(|after| (coarse_now() + after, Lapse::Recheck));
        }
        match self.timeouts.release_after {
            // Only once hyper has served a request: a connection stopped
            // before that would answer its first one with `Connection: close`.
            // Not while parked either: it is released already.
            Some(after) if !self.state.park_wanted() && !self.state.is_parking() && self.state.has_served() => {
                Some((self.last_activity + after, Lapse::Release))
            }
            _ => Some((self.idle_deadline(), Lapse::Idle)),
        }
    }
}

/// A socket that `super::h1` serves and parks on: reading it gives the
/// connection's bytes in order, whatever is already buffered first. A bare
/// TCP socket, or TLS over one (rustls hands out the records it decrypted
/// during the handshake, a client's first request among them, before
/// reading the socket again).
pub trait Parkable {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
    /// The TCP socket, if what is written to the stream goes to it as it is.
    fn plain(&self) -> Option<&TcpStream>;
}

impl Parkable for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn plain(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Parkable for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn plain(&self) -> Option<&TcpStream> {
        None
    }
}

impl<S: Parkable + AsyncWrite + Unpin> crate::proxy::ClientIo for AuditedIo<S> {
    /// Peeks at the TCP socket: no system call unless it became readable.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if !self.replay.is_empty() {
            return Poll::Ready(false);
        }
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut byte);
        match self.stream.tcp().poll_peek(cx, &mut buf) {
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(true),
            Poll::Ready(Ok(_)) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes pass straight through (see `poll_write`): a cleartext
    /// stream's socket can take spliced bytes.
    fn plain_tcp(&self) -> Option<&TcpStream> {
        self.stream.plain()
    }

    fn touch(&mut self) {
        self.last_activity = coarse_now();
    }
}

/// The most a parked connection's first read takes (hyper's first read
/// buffer is as big). It lives on the stack only during the read.
const PARKED_READ: usize = 8192;

impl<S: Parkable + AsyncRead + Unpin> AuditedIo<S> {
    /// For a parked connection: ready with `true` once input has arrived,
    /// read, audited and kept to be replayed (see [`AuditedIo::pending_input`]),
    /// or with `false` at end of stream, on an error or at the idle
    /// deadline. Reading instead of peeking saves hyper a system call:
    /// its first read is served from the replay.
    pub fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); PARKED_READ];
        let mut buf = ReadBuf::uninit(&mut space);
        match ready!(Pin::new(&mut *self).poll_read(cx, &mut buf)) {
            Ok(()) if buf.filled().is_empty() => Poll::Ready(false),
            Ok(()) => {
                self.replay(buf.filled());
                Poll::Ready(true)
            }
            // A malformed first line: hyper reads the error and the
            // connection ends as it would have.
            Err(_) if self.failed.is_some() => Poll::Ready(true),
            Err(_) => Poll::Ready(false),
        }
    }
}

impl<S> AuditedIo<S> {
    /// The input read but not yet given to hyper.
    pub fn pending_input(&self) -> &[u8] {
        &self.replay
    }

    /// Drops the first `n` bytes of the pending input (a head the fast
    /// path took).
    pub fn consume_input(&mut self, n: usize) {
        self.replay.advance(n.min(self.replay.len()));
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuditedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Bytes read before a malformed body line are still given out.
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
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
                this.last_activity = coarse_now();
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
            Poll::Pending => loop {
                let Some((deadline, lapse)) = this.deadline() else { return Poll::Pending };
                // A recheck already armed stands (no reset on every poll).
                let armed = lapse == Lapse::Recheck && this.timer.deadline() <= deadline && !this.timer.is_elapsed();
                if !armed && this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                ready!(this.timer.as_mut().poll(cx));
                match lapse {
                    Lapse::SlowHead => {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head read timeout")));
                    }
                    // The listener sees the mark once hyper's poll
                    // returns; the idle deadline is armed meanwhile.
                    Lapse::Release => this.state.want_park(),
                    Lapse::Recheck => {}
                    // Idle: end of stream, which hyper takes as a clean close.
                    Lapse::Idle => return Poll::Ready(Ok(())),
                }
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuditedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.stream).poll_write(cx, buf));
        this.last_activity = coarse_now();
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs));
        this.last_activity = coarse_now();
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.is_parking() {
            // hyper stops to release its buffers; the client stays connected.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
