//! HTTP/1.1 `Upgrade` (WebSocket and others): the client's and the
//! upstream's connections are joined byte for byte after a 101.
//!
//! Every tunnel is registered in [`Tunnels`], so that shutdown can wait for
//! them and, at the drain deadline, end them politely: the upstream→client
//! direction tracks WebSocket frame headers (RFC 6455 §5.2) as bytes pass,
//! so a Close frame (1001, going away; §7.4.1) can be injected at a frame
//! boundary, never inside a frame. Control frames may sit between the
//! fragments of a message (§5.4), so any boundary will do.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::balance::InFlightGuard;
use crate::listener::conn_io::AuditedIo;

/// Either side of a tunnel that could not be unboxed.
trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}

/// How long a tunnel told to go away may take to reach a frame boundary,
/// and then for the client to answer the Close, before it is cut.
pub const GOING_AWAY_GRACE: Duration = Duration::from_secs(1);

/// The frame the proxy sends a WebSocket client at the drain deadline:
/// FIN + Close, unmasked (server to client), status 1001 and a reason.
const CLOSE_GOING_AWAY: &[u8] = b"\x88\x15\x03\xe9proxy shutting down";

/// The protocol the client asks to switch to, if it asks (HTTP/1.1 with
/// `Connection: upgrade` and an `Upgrade` field) and it is WebSocket. Other
/// upgrades (notably `h2c`, which would hand the client a raw HTTP/2
/// connection to the backend past our routing) are not honoured: the
/// request is forwarded without its hop-by-hop `Upgrade`.
pub(super) fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !wants {
        return None;
    }
    req.headers().get(header::UPGRADE).filter(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")).cloned()
}

/// Spawns the byte pump between the two upgraded connections. It ends when
/// both sides have closed, on an error, or when `tunnels` go away.
pub(super) fn tunnel(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    endpoint: SocketAddr,
    guard: Option<InFlightGuard>,
    tunnels: &Tunnels,
) {
    let (open, going_away) = tunnels.register();
    tokio::spawn(async move {
        let _open = open;
        let _guard = guard;
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(%endpoint, error = %err, "upgrade failed");
                return;
            }
        };
        // Cleartext sockets are pumped bare, out of the boxes hyper made
        // for the upgrade: the upstream's has room for TLS (about 1 KiB),
        // the client's holds the listener's audit and timers, which a
        // tunnel does not use. Every idle WebSocket would hold them. Other
        // combinations are pumped boxed.
        let down = match down.downcast::<TokioIo<AuditedIo<TcpStream>>>() {
            Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
                let (stream, unread) = io.into_inner().into_parts();
                Ok((stream, [read_buf, unread].concat().into()))
            }
            Err(down) => Err(TokioIo::new(down)),
        };
        let up = match up.downcast::<MaybeHttpsStream<TokioIo<TcpStream>>>() {
            Ok(hyper::upgrade::Parts { io: MaybeHttpsStream::Http(io), read_buf, .. }) => {
                Ok((io.into_inner(), read_buf))
            }
            Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
                Err((TokioIo::new(Box::new(io) as Box<dyn Io>), read_buf))
            }
            Err(up) => Err((TokioIo::new(Box::new(up) as Box<dyn Io>), Bytes::new())),
        };
        let pumped = match (down, up) {
            (Ok((down, down_early)), Ok((up, up_early))) => pump(down, up, down_early, up_early, going_away).await,
            (Ok((down, down_early)), Err((up, up_early))) => {
                Box::pin(pump(down, up, down_early, up_early, going_away)).await
            }
            (Err(down), Ok((up, up_early))) => Box::pin(pump(down, up, Bytes::new(), up_early, going_away)).await,
            (Err(down), Err((up, up_early))) => Box::pin(pump(down, up, Bytes::new(), up_early, going_away)).await,
        };
        match pumped {
            Ok(Ended::Closed) => tracing::trace!(%endpoint, "upgraded connection closed"),
            Ok(Ended::WentAway) => tracing::debug!(%endpoint, "upgraded connection closed: going away"),
            Err(err) => tracing::debug!(%endpoint, error = %err, "upgraded connection ended with error"),
        }
    });
}

// === impl Tunnels ===

/// The open tunnels of a proxy, and the signal that ends them.
#[derive(Clone, Debug)]
pub struct Tunnels {
    shared: Arc<TunnelsShared>,
}

#[derive(Debug)]
struct TunnelsShared {
    open: watch::Sender<usize>,
    going_away: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        let shared = TunnelsShared { open: watch::Sender::new(0), going_away: watch::Sender::new(false) };
        Self { shared: Arc::new(shared) }
    }
}

impl Tunnels {
    /// Tunnels open now.
    pub fn open(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// Completes once no tunnel is open.
    pub async fn all_closed(&self) {
        let mut open = self.shared.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Tells every tunnel, open or still to come, to close: WebSocket
    /// clients get a Close frame (1001) at the next frame boundary.
    pub fn go_away(&self) {
        self.shared.going_away.send_replace(true);
    }

    fn register(&self) -> (OpenTunnel, watch::Receiver<bool>) {
        self.shared.open.send_modify(|n| *n += 1);
        (OpenTunnel(self.shared.clone()), self.shared.going_away.subscribe())
    }
}

/// Counts one tunnel in [`Tunnels`] until dropped.
struct OpenTunnel(Arc<TunnelsShared>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

// === the pump ===

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Both sides closed (or the upstream did, after the client).
    Closed,
    /// Told to go away: the client got a Close frame, or was cut off.
    WentAway,
}

/// Copies both ways. Client→upstream bytes are copied as they are; the
/// other direction goes through [`to_client`], which watches for frame
/// boundaries. After going away, the client's answer (its Close frame) is
/// still passed upstream for [`GOING_AWAY_GRACE`]. `down_early` and
/// `up_early` were read from each side past the upgrade's request and 101.
async fn pump<D, U>(
    down: D,
    up: U,
    down_early: Bytes,
    up_early: Bytes,
    going_away: watch::Receiver<bool>,
) -> io::Result<Ended>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_read, mut down_write) = tokio::io::split(down);
    let (mut up_read, mut up_write) = tokio::io::split(up);
    let to_upstream = async {
        if !down_early.is_empty() {
            up_write.write_all(&down_early).await?;
        }
        drop(down_early);
        loop {
            let (read, rest) = relay(&mut down_read, &mut up_write, <[u8]>::len).await?;
            if read == 0 {
                break;
            }
            up_write.write_all(&rest).await?;
        }
        up_write.shutdown().await
    };
    let to_client = to_client(&mut up_read, &mut down_write, up_early, going_away);
    tokio::pin!(to_upstream, to_client);
    tokio::select! {
        sent = &mut to_upstream => {
            sent?;
            to_client.await
        }
        ended = &mut to_client => match ended? {
            Ended::Closed => to_upstream.await.map(|()| Ended::Closed),
            Ended::WentAway => {
                let _ = tokio::time::timeout(GOING_AWAY_GRACE, to_upstream).await;
                Ok(Ended::WentAway)
            }
        },
    }
}

/// Upstream → client. Once `going_away` turns true, forwards up to the end
/// of the frame in progress, sends [`CLOSE_GOING_AWAY`] and shuts the
/// client's side down. `already` (bytes read before) goes first.
async fn to_client<R, W>(
    up: &mut R,
    down: &mut W,
    already: Bytes,
    mut going_away: watch::Receiver<bool>,
) -> io::Result<Ended>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FrameBoundaries::default();
    if !already.is_empty() {
        frames.advance(&already, false);
        down.write_all(&already).await?;
    }
    drop(already);
    let mut closing = *going_away.borrow_and_update();
    let mut signal_gone = false;
    let mut deadline = None;
    loop {
        if closing && frames.at_boundary() {
            down.write_all(CLOSE_GOING_AWAY).await?;
            down.shutdown().await?;
            return Ok(Ended::WentAway);
        }
        let (read, rest) = tokio::select! {
            biased;
            changed = going_away.changed(), if !closing && !signal_gone => {
                match changed {
                    Ok(()) => closing = *going_away.borrow_and_update(),
                    Err(_) => signal_gone = true,
                }
                if closing {
                    deadline = Some(tokio::time::Instant::now() + GOING_AWAY_GRACE);
                }
                continue;
            }
            () = sleep_until(deadline) => {
                // Stuck inside a frame: no clean close possible.
                down.shutdown().await?;
                return Ok(Ended::WentAway);
            }
            relayed = relay(up, down, |chunk| frames.advance(chunk, closing)) => relayed?,
        };
        if read == 0 {
            down.shutdown().await?;
            return Ok(Ended::Closed);
        }
        down.write_all(&rest).await?;
    }
}

/// Each worker thread's copy buffer for tunnels. A tunnel reads into it
/// only once bytes are there and writes them on in the same poll, so an
/// idle tunnel holds no buffer at all; only what a slow reader has not
/// taken yet is kept, in a buffer of its own.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Reads what `from` has, passes the first `forward(bytes)` of it to `to`
/// as far as `to` takes it at once, and completes with the number of bytes
/// read (0: end of stream) and the part `to` has not taken yet, which the
/// caller writes before reading again. Cancel-safe: nothing is read unless
/// it completes.
async fn relay<R, W, F>(from: &mut R, to: &mut W, mut forward: F) -> io::Result<(usize, Vec<u8>)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(&[u8]) -> usize,
{
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            ready!(Pin::new(&mut *from).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            let chunk = &read[..forward(read)];
            let mut written = 0;
            while written < chunk.len() {
                match Pin::new(&mut *to).poll_write(cx, &chunk[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Pending => break,
                }
            }
            Poll::Ready(Ok((read.len(), chunk[written..].to_vec())))
        })
    })
    .await
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// === impl FrameBoundaries ===

/// Where WebSocket frames begin and end in one direction of a tunnel,
/// from their headers alone (RFC 6455 §5.2): two bytes, an extended length
/// of 0, 2 or 8 bytes, a 4-byte masking key when the MASK bit is set, then
/// the payload, which is skipped by counting.
#[derive(Debug, Default)]
struct FrameBoundaries {
    /// The header being read.
    head: [u8; 14],
    /// Header bytes read so far (0: at a boundary, or in a payload).
    have: usize,
    /// Payload bytes still to pass.
    payload_left: u64,
}

impl FrameBoundaries {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Passes `data` and returns how many of its bytes were taken: all of
    /// them, or, with `stop_at_boundary`, those up to the end of the first
    /// frame that ends within it.
    fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            if self.payload_left > 0 {
                let take = self.payload_left.min((data.len() - pos) as u64);
                self.payload_left -= take;
                pos += take as usize; // at most data.len()
            } else {
                self.head[self.have] = data[pos];
                self.have += 1;
                pos += 1;
                if self.header_len() != Some(self.have) {
                    continue;
                }
                self.payload_left = self.payload_len();
                self.have = 0;
            }
            if stop_at_boundary && self.at_boundary() {
                return pos;
            }
        }
        pos
    }

    /// The full header length, once its first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let extended = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }

    fn payload_len(&self) -> u64 {
        match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes(self.head[2..10].try_into().expect("eight bytes")),
            n => u64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;
    use tokio::io::AsyncReadExt;

    /// A writer that takes at most `take` bytes per call, then none.
    struct Slow {
        got: Vec<u8>,
        take: usize,
    }

    impl AsyncWrite for Slow {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            if self.take == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(self.take);
            self.take -= n;
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn relay_writes_what_the_writer_takes_and_hands_back_the_rest() {
        let mut from: &[u8] = b"0123456789";
        let mut to = Slow { got: Vec::new(), take: 4 };
        let (read, rest) = relay(&mut from, &mut to, |chunk| chunk.len() - 2).await.unwrap();
        assert_eq!(read, 10, "everything available is read");
        assert_eq!(to.got, b"0123", "the writer's share is written at once");
        assert_eq!(rest, b"4567", "the rest of the forwarded part is handed back; the last 2 are dropped");
        let (read, rest) = relay(&mut from, &mut to, |chunk| chunk.len()).await.unwrap();
        assert_eq!((read, rest.len()), (0, 0), "end of stream");
    }

    fn mk(upgrade: &str) -> Request<()> {
        Request::get("/").header("connection", "keep-alive, Upgrade").header("upgrade", upgrade).body(()).unwrap()
    }

    #[test]
    fn only_websocket_upgrades_are_honoured() {
        assert_eq!(requested(&mk("websocket")).unwrap(), "websocket");
        assert_eq!(requested(&mk("WebSocket")).unwrap(), "WebSocket");
        assert!(requested(&mk("h2c")).is_none());
        assert!(requested(&mk("TLS/1.2")).is_none());
        let no_connection = Request::get("/").header("upgrade", "websocket").body(()).unwrap();
        assert!(requested(&no_connection).is_none());
    }

    /// A frame: `masked` adds a key, as clients send.
    fn mk_frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut f = vec![0x80 | opcode];
        match len {
            0..=125 => f.push(mask_bit | len as u8),
            126..=0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'p', len));
        f
    }

    /// Three frames covering every length encoding, with or without masks.
    fn mk_stream(masked: bool) -> (Vec<u8>, Vec<usize>) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (opcode, len) in [(0x1, 5), (0x9, 0), (0x2, 300), (0x2, 70_000), (0x0, 125)] {
            stream.extend(mk_frame(opcode, len, masked));
            ends.push(stream.len());
        }
        (stream, ends)
    }

    #[test]
    fn boundaries_are_found_whatever_the_chunking() {
        for masked in [false, true] {
            let (stream, ends) = mk_stream(masked);
            for chunk in [1, 2, 3, 7, 13, 1000, stream.len()] {
                // Without stopping: every chunk is taken whole, and the
                // tracker is at a boundary exactly at frame ends.
                let mut frames = FrameBoundaries::default();
                let mut pos = 0;
                for piece in stream.chunks(chunk) {
                    assert_eq!(frames.advance(piece, false), piece.len());
                    pos += piece.len();
                    assert_eq!(frames.at_boundary(), ends.contains(&pos), "chunk {chunk}, at {pos}");
                }
                // Stopping at boundaries finds each frame end in turn.
                let mut frames = FrameBoundaries::default();
                let (mut pos, mut found) = (0, Vec::new());
                while pos < stream.len() {
                    let end = (pos + chunk).min(stream.len());
                    pos += frames.advance(&stream[pos..end], true);
                    if frames.at_boundary() {
                        found.push(pos);
                    }
                }
                assert_eq!(found, ends, "chunk {chunk}, masked {masked}");
            }
        }
    }

    #[tokio::test]
    async fn going_away_closes_at_the_next_frame_boundary() {
        let (stream, ends) = mk_stream(false);
        let (tx, rx) = watch::channel(false);
        let (mut server, mut up) = tokio::io::duplex(1 << 20);
        let (mut down, mut client) = tokio::io::duplex(1 << 20);
        let pump = tokio::spawn(async move { to_client(&mut up, &mut down, Bytes::new(), rx).await });
        // Part of the 70 000-byte frame, then the signal, then the rest.
        let cut = ends[2] + 1000;
        server.write_all(&stream[..cut]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(true);
        server.write_all(&stream[cut..]).await.unwrap();
        assert_eq!(pump.await.unwrap().unwrap(), Ended::WentAway);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut expected = stream[..ends[3]].to_vec();
        expected.extend_from_slice(CLOSE_GOING_AWAY);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the Close frame follows the frame in progress");
        assert_eq!(CLOSE_GOING_AWAY.len(), 2 + usize::from(CLOSE_GOING_AWAY[1]));
    }

    #[tokio::test]
    async fn bytes_read_past_the_101_go_first_and_count_as_frames() {
        // The upstream sent its first frame with its 101 and half of the
        // 300-byte one; going away waits for the rest of that frame.
        let (stream, ends) = mk_stream(false);
        let (tx, rx) = watch::channel(false);
        let (mut server, mut up) = tokio::io::duplex(1 << 20);
        let (mut down, mut client) = tokio::io::duplex(1 << 20);
        let early = Bytes::copy_from_slice(&stream[..ends[1] + 100]);
        tx.send_replace(true);
        let pump = tokio::spawn(async move { to_client(&mut up, &mut down, early, rx).await });
        server.write_all(&stream[ends[1] + 100..]).await.unwrap();
        assert_eq!(pump.await.unwrap().unwrap(), Ended::WentAway);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut expected = stream[..ends[2]].to_vec();
        expected.extend_from_slice(CLOSE_GOING_AWAY);
        assert!(got == expected, "early bytes first, then up to the frame's end, then the Close frame");
    }

    #[tokio::test]
    async fn bytes_the_client_sent_with_its_upgrade_go_upstream_first() {
        let (_tx, rx) = watch::channel(false);
        let (mut client, down) = tokio::io::duplex(1024);
        let (up, mut server) = tokio::io::duplex(1024);
        let pump = tokio::spawn(pump(down, up, Bytes::from_static(b"early "), Bytes::new(), rx));
        client.write_all(b"later").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early later");
        drop(server);
        assert_eq!(pump.await.unwrap().unwrap(), Ended::Closed);
    }

    #[tokio::test]
    async fn an_idle_tunnel_closes_at_once_and_the_count_follows() {
        let tunnels = Tunnels::default();
        let (open, rx) = tunnels.register();
        assert_eq!(tunnels.open(), 1);
        let (_server, mut up) = tokio::io::duplex(64);
        let (mut down, mut client) = tokio::io::duplex(64);
        tunnels.go_away();
        assert_eq!(to_client(&mut up, &mut down, Bytes::new(), rx).await.unwrap(), Ended::WentAway);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, CLOSE_GOING_AWAY);
        drop(open);
        tokio::time::timeout(Duration::from_secs(1), tunnels.all_closed()).await.unwrap();
    }
}
