//! Raw HTTP/1.1 on both sides of the proxy: a *recording backend* that
//! keeps every byte it receives and every request it could frame, and a
//! raw client that writes exact bytes and reads responses by hand. Every
//! read is bounded by a timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single read may wait.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One request as the backend framed it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Field lines as received (name lowercased).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

#[derive(Default)]
struct Log {
    bytes: Vec<u8>,
    requests: Vec<Recorded>,
}

/// A backend on loopback that records and answers `200` with
/// `<method> <target> <body length>` (or `101` to `<protocol>` for
/// `/switch-to-<protocol>`, for the upgrade cases).
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Self { addr, log }
    }

    /// Every byte received so far, on every connection.
    pub fn bytes(&self) -> Vec<u8> {
        self.log.lock().unwrap().bytes.clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().requests.clone()
    }

    pub fn clear(&self) {
        *self.log.lock().unwrap() = Log::default();
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Log>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Frame every complete request in the buffer.
        while let Some((request, used)) = frame(&buf) {
            buf.drain(..used);
            let answer = if let Some(protocol) = request.target.strip_prefix("/switch-to-") {
                format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n")
            } else {
                let text = format!("{} {} {}\n", request.method, request.target, request.body.len());
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len())
            };
            log.lock().unwrap().requests.push(request);
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                log.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A complete request at the start of `buf` and its length in bytes.
fn frame(buf: &[u8]) -> Option<(Recorded, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut lines = buf[..end - 4].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = String::from_utf8_lossy(lines.next()?).into_owned();
    let mut request_line = request_line.split(' ');
    let (method, target) = (request_line.next()?.to_string(), request_line.next()?.to_string());
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
            Some((name, l[colon + 1..].trim_ascii().to_vec()))
        })
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    let mut at = end;
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        loop {
            let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = std::str::from_utf8(&buf[at..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailers, up to an empty line.
                let rest = &buf[at..];
                let trailers_end =
                    if rest.starts_with(b"\r\n") { 2 } else { rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4 };
                at += trailers_end;
                break;
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = std::str::from_utf8(&len).ok()?.parse().ok()?;
        if buf.len() < at + len {
            return None;
        }
        body.extend_from_slice(&buf[at..at + len]);
        at += len;
    }
    Some((Recorded { method, target, headers, body }, at))
}

/// A response as read by [`RawClient`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn closes(&self) -> bool {
        self.head.to_ascii_lowercase().contains("\r\nconnection: close")
    }
}

/// A client that writes exact bytes.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr)).await.unwrap().unwrap();
        stream.set_nodelay(true).unwrap();
        Self { stream, buf: Vec::new() }
    }

    /// Writes `bytes`; a peer that already closed is not an error here
    /// (the next read says so).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads more bytes; `false` on end of stream, error or timeout.
    async fn fill(&mut self, timeout: Duration) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(timeout, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next response (1xx skipped), or `None` if the connection ended
    /// or nothing came within `timeout`. Bodies are framed by
    /// Content-Length (what the proxy's and the recorder's answers use) or
    /// chunked.
    pub async fn response_within(&mut self, timeout: Duration) -> Option<RawResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(resp) = self.take_response() {
                if (100..200).contains(&resp.status) && resp.status != 101 {
                    continue;
                }
                return Some(resp);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.fill(left).await {
                return None;
            }
        }
    }

    pub async fn response(&mut self) -> Option<RawResponse> {
        self.response_within(READ_TIMEOUT).await
    }

    fn take_response(&mut self) -> Option<RawResponse> {
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let lower = head.to_ascii_lowercase();
        let field = |name: &str| {
            lower.split("\r\n").find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_string()))
        };
        let mut body = Vec::new();
        let mut at = end;
        if field("transfer-encoding").is_some_and(|v| v == "chunked") {
            loop {
                let line_end = self.buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[at..line_end]).ok()?.trim(), 16).ok()?;
                at = line_end + 2;
                if self.buf.len() < at + size + 2 {
                    return None;
                }
                body.extend_from_slice(&self.buf[at..at + size]);
                at += size + 2;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if self.buf.len() < at + len {
                return None;
            }
            body.extend_from_slice(&self.buf[at..at + len]);
            at += len;
        }
        self.buf.drain(..at);
        Some(RawResponse { status, head, body })
    }

    /// True when the peer closes (end of stream or reset) within `timeout`
    /// without sending anything more.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(timeout, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => self.buf.is_empty(),
            Ok(Ok(_)) | Err(_) => false,
        }
    }
}

/// A v2 `PROXY` header for a TCP connection from `source` (IPv4 or IPv6;
/// the destination is of the same family).
pub fn proxy_v2_header(source: SocketAddr) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    let addresses = match source {
        SocketAddr::V4(s) => {
            header.push(0x11); // IPv4, stream
            [s.ip().octets().as_slice(), &[198, 18, 0, 1], &s.port().to_be_bytes(), &80u16.to_be_bytes()].concat()
        }
        SocketAddr::V6(s) => {
            header.push(0x21); // IPv6, stream
            let dst: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
            [s.ip().octets().as_slice(), &dst.octets(), &s.port().to_be_bytes(), &80u16.to_be_bytes()].concat()
        }
    };
    // A TLV (type 0x04, NOOP) such as balancers add; it is skipped.
    let tlv = [0x04, 0x00, 0x02, 0xAB, 0xCD];
    header.extend_from_slice(&u16::try_from(addresses.len() + tlv.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&addresses);
    header.extend_from_slice(&tlv);
    header
}
