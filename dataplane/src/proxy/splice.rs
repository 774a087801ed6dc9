//! Moving a response body from the upstream socket to a cleartext client
//! socket inside the kernel: `splice(2)` from the upstream into a pipe,
//! then from the pipe into the client. The bytes are never copied into
//! the proxy's memory and back (two copies of every byte saved, which is
//! most of what a large response costs a proxy). Used by the fast path
//! for bodies with a known length of at least [`MIN_BODY`] still to come;
//! TLS clients need the bytes in user space and never take it.
//!
//! Pipes are kept per worker thread, empty, for the next body: a pipe costs
//! two descriptors and three system calls to make, and holds no memory
//! while empty. At most [`KEPT_PER_THREAD`] are kept.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A body shorter than this is copied: below it, setting up the pipe
/// costs about what the copy does.
pub(crate) const MIN_BODY: u64 = 16 * 1024;
/// Empty pipes kept per thread for the next body.
const KEPT_PER_THREAD: usize = 16;
/// The most asked of one `splice` (a pipe's default capacity).
const CHUNK: usize = 64 * 1024;

/// A pipe, empty when it is kept.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    static KEPT: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    fn take() -> io::Result<Self> {
        if let Some(pipe) = KEPT.with_borrow_mut(Vec::pop) {
            return Ok(pipe);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        Ok(Self { read, write })
    }

    /// Keeps an empty pipe for the next body (one still holding bytes is
    /// closed: they belong to a body that did not finish).
    fn keep(self) {
        KEPT.with_borrow_mut(|kept| {
            if kept.len() < KEPT_PER_THREAD {
                kept.push(self);
            }
        });
    }
}

/// How a spliced body ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spliced {
    /// All of it reached the client.
    Whole,
    /// Nothing was moved: no pipe could be had (descriptors exhausted),
    /// or the first `splice` failed (not allowed here, or the upstream
    /// failed: copying will find out). The caller copies instead.
    NotMoved,
    /// The upstream closed or failed before the end of the body.
    UpstreamFailed,
    /// Writing to the client failed.
    ClientGone,
}

/// Moves exactly `len` bytes from `upstream` to `client`, counting those
/// that reached the client in `delivered` (however it ends). Never reads
/// past `len`: the upstream connection stays in step for its next request.
pub(crate) async fn body(upstream: &TcpStream, client: &TcpStream, len: u64, delivered: &mut u64) -> Spliced {
    let Ok(pipe) = Pipe::take() else { return Spliced::NotMoved };
    let mut left = len;
    // Bytes in the pipe, not yet written to the client.
    let mut held = 0usize;
    loop {
        if left > 0 {
            let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK - held);
            let moved = if held == 0 {
                // The pipe is empty, so "would block" can only be the
                // socket's: tokio learns it and waits for the next edge.
                upstream.try_io(Interest::READABLE, || splice(upstream, &pipe.write, want))
            } else if want > 0 {
                // The pipe may be full: its "would block" must not clear
                // the socket's readiness. Whatever this finds, the pipe is
                // drained next.
                splice(upstream, &pipe.write, want)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
            match moved {
                Ok(0) => return Spliced::UpstreamFailed,
                Ok(n) => {
                    left -= n as u64;
                    held += n;
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if held == 0 {
                        if upstream.readable().await.is_err() {
                            return Spliced::UpstreamFailed;
                        }
                        continue;
                    }
                }
                Err(_) if left == len => return Spliced::NotMoved,
                Err(_) => return Spliced::UpstreamFailed,
            }
        }
        if held == 0 {
            pipe.keep();
            return Spliced::Whole;
        }
        match client.try_io(Interest::WRITABLE, || splice(&pipe.read, client, held)) {
            Ok(0) => return Spliced::ClientGone,
            Ok(n) => {
                held -= n;
                *delivered += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if client.writable().await.is_err() {
                    return Spliced::ClientGone;
                }
            }
            Err(_) => return Spliced::ClientGone,
        }
    }
}

fn splice(from: impl std::os::fd::AsFd, to: impl std::os::fd::AsFd, len: usize) -> io::Result<usize> {
    rustix::pipe::splice(from, None, to, None, len, SpliceFlags::MOVE | SpliceFlags::NONBLOCK).map_err(io::Error::from)
}
