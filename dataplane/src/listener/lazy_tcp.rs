//! Accepted sockets that join tokio's reactor only once they must wait.
//!
//! Adding a socket to epoll (`EPOLL_CTL_ADD`) and taking it out before
//! it is closed (`EPOLL_CTL_DEL`, as tokio does) costs about 1.4 µs a
//! connection on the benchmark machine, where any system call costs about
//! 0.35 µs. A connection whose request is there when it is accepted, is
//! answered at once and then closed (`Connection: close`, a new connection
//! per request) never has to wait on its socket. [`LazyTcp`] reads and
//! writes the bare non-blocking socket until a read or a write would block,
//! or until something must watch the socket (the client going away while
//! the upstream is slow, a body spliced into it); only then is the socket
//! registered, and from then on it is tokio's `TcpStream`.
//!
//! The accept loop takes connections with `accept4` itself for the same
//! reason ([`Acceptor`]): tokio's `TcpListener::accept` registers every
//! connection it returns.

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustix::net::{RecvFlags, SocketFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The most a read of a bare socket takes at once: a connection's first
/// read (the parked read's buffer is as big).
const BARE_READ: usize = 8192;

thread_local! {
    /// Where a bare socket's bytes land before they are copied into the
    /// reader's buffer (which may be uninitialised memory, which safe code
    /// cannot hand to `recv`).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(BARE_READ));
}

/// See the module documentation.
#[derive(Debug)]
pub struct LazyTcp {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Not registered: every read and write is tried directly.
    Bare(std::net::TcpStream),
    Registered(TcpStream),
    /// Registering failed; the socket is closed.
    Failed,
}

impl LazyTcp {
    /// Wraps a non-blocking socket, not registered yet.
    pub fn new(stream: std::net::TcpStream) -> Self {
        Self { state: State::Bare(stream) }
    }

    /// Whether the socket is registered with the reactor (its readiness is
    /// then known without a system call).
    pub fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered(_))
    }

    /// The socket, registered now if it was not yet.
    pub fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if matches!(self.state, State::Bare(_)) {
            self.state = match std::mem::replace(&mut self.state, State::Failed) {
                State::Bare(bare) => State::Registered(TcpStream::from_std(bare)?),
                other => other,
            };
        }
        match &mut self.state {
            State::Registered(stream) => Ok(stream),
            _ => Err(io::Error::other("the socket could not be registered with the reactor")),
        }
    }

    /// The socket as tokio's, registered now if it was not yet.
    pub fn into_registered(mut self) -> io::Result<TcpStream> {
        self.registered()?;
        match self.state {
            State::Registered(stream) => Ok(stream),
            _ => Err(io::Error::other("the socket could not be registered with the reactor")),
        }
    }
}

/// One read of a bare socket into `buf`.
fn read_bare(bare: &std::net::TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        scratch.reserve(BARE_READ);
        let room = buf.remaining().min(scratch.capacity());
        let spare = &mut scratch.spare_capacity_mut()[..room];
        let ((filled, _), _) = rustix::net::recv(bare, spare, RecvFlags::empty())?;
        buf.put_slice(filled);
        Ok(())
    })
}

/// Runs `io` on the bare socket; `None` if it would block (the socket must
/// be registered and the operation polled there).
fn try_bare<T>(state: &State, io: impl FnOnce(&std::net::TcpStream) -> io::Result<T>) -> Option<io::Result<T>> {
    let State::Bare(bare) = state else { return None };
    match io(bare) {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => None,
        done => Some(done),
    }
}

impl AsyncRead for LazyTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() > 0
            && let Some(done) = try_bare(&this.state, |bare| read_bare(bare, buf))
        {
            return Poll::Ready(done);
        }
        match this.registered() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for LazyTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(done) = try_bare(&this.state, |mut bare| bare.write(buf)) {
            return Poll::Ready(done);
        }
        match this.registered() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(done) = try_bare(&this.state, |mut bare| bare.write_vectored(bufs)) {
            return Poll::Ready(done);
        }
        match this.registered() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Registered(stream) => Pin::new(stream).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Bare(bare) => Poll::Ready(bare.shutdown(std::net::Shutdown::Write)),
            State::Registered(stream) => Pin::new(stream).poll_shutdown(cx),
            State::Failed => Poll::Ready(Ok(())),
        }
    }
}

/// A listening socket watched by tokio's reactor, from which connections
/// are taken unregistered.
#[derive(Debug)]
pub struct Acceptor {
    /// The listening socket, held as tokio's `TcpStream` only for its
    /// readiness API (`readable`, `try_io`): tokio's `TcpListener` has none,
    /// and `AsyncFd` is `unsafe` to build. It is never read or written.
    socket: TcpStream,
}

impl Acceptor {
    pub fn new(listener: tokio::net::TcpListener) -> io::Result<Self> {
        let fd = OwnedFd::from(listener.into_std()?);
        Ok(Self { socket: TcpStream::from_std(std::net::TcpStream::from(fd))? })
    }

    /// The next connection, once there is one.
    pub async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            self.socket.readable().await?;
            // Would block: the readiness is cleared, and the loop waits again.
            match self.socket.try_io(Interest::READABLE, || accept(&self.socket)) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                accepted => return accepted,
            }
        }
    }

    /// A connection already in the queue, without waiting.
    pub fn accept_now(&self) -> Option<(std::net::TcpStream, SocketAddr)> {
        accept(&self.socket).ok()
    }
}

/// Takes a connection from a listening socket's queue, non-blocking and
/// not registered: `WouldBlock` when the queue is empty.
fn accept(listener: impl AsFd) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (fd, peer) = rustix::net::acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let stream = std::net::TcpStream::from(fd);
    let peer = match peer.map(SocketAddr::try_from) {
        Some(Ok(peer)) => peer,
        // Not an IP peer (cannot happen on a TCP listener): asked the socket.
        _ => stream.peer_addr()?,
    };
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair() -> (LazyTcp, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(listener).unwrap();
        assert!(acceptor.accept_now().is_none(), "an empty queue");
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) =
            tokio::time::timeout(std::time::Duration::from_secs(5), acceptor.accept()).await.unwrap().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        (LazyTcp::new(server), client)
    }

    #[tokio::test]
    async fn an_exchange_that_never_waits_stays_unregistered() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"ping").await.unwrap();
        // Let the bytes arrive (loopback: at once).
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut got = [0u8; 16];
        let n = server.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"ping");
        server.write_all(b"pong").await.unwrap();
        assert!(!server.is_registered(), "a read that found bytes and a write with room registered the socket");
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
    }

    #[tokio::test]
    async fn a_read_that_would_block_registers_and_waits() {
        let (mut server, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut got = [0u8; 16];
            let n = server.read(&mut got).await.unwrap();
            (got[..n].to_vec(), server.is_registered())
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client.write_all(b"late").await.unwrap();
        let (got, registered) =
            tokio::time::timeout(std::time::Duration::from_secs(5), reader).await.expect("the read was woken").unwrap();
        assert_eq!(got, b"late");
        assert!(registered);
    }

    #[tokio::test]
    async fn a_write_that_would_block_registers_and_finishes_once_the_peer_reads() {
        let (mut server, mut client) = pair().await;
        // More than loopback's socket buffers hold: the write must wait.
        let body = vec![7u8; 32 << 20];
        let len = body.len();
        let writer = tokio::spawn(async move {
            server.write_all(&body).await.unwrap();
            server.shutdown().await.unwrap();
            server.is_registered()
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), len);
        assert!(writer.await.unwrap(), "a write that blocked left the socket unregistered");
    }

    #[tokio::test]
    async fn end_of_stream_on_a_bare_socket_reads_as_zero_bytes() {
        let (mut server, client) = pair().await;
        drop(client);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut got = [0u8; 4];
        assert_eq!(server.read(&mut got).await.unwrap(), 0);
    }
}
