//! The access log: one JSON line per request, off by default.
//!
//! The request path only fills a boxed [`Record`] (for sampled requests; an
//! inert [`Entry`] otherwise, which costs a `None` check) and hands it to a
//! bounded channel with `try_send`. A dedicated writer thread formats and
//! writes the lines, so a slow disk or a blocked stdout never stalls a
//! request: when the channel is full the line is dropped and counted in
//! `switchyard_access_log_dropped_total`. The writer works in batches: once
//! caught up it writes out and lets lines gather for [`GATHER`], so that
//! requests never wake it one line at a time; [`AccessLog::flush`] writes
//! out the rest at shutdown.
//!
//! A request is logged when its response body ends (or is dropped: the
//! client went away), so `bytes` is the body bytes actually handed to the
//! connection and `duration_ms` covers the whole streamed response. Local
//! answers (404, 502, 503…) are logged when they are produced.

use std::cell::Cell;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body::{Body as _, Frame};
use http_body_util::Either;
use prometheus::IntCounter;
use serde::Serialize;

use super::ProxyBody;

/// Lines that may wait for the writer before new ones are dropped.
pub const DEFAULT_BUFFER_LINES: usize = 8192;
/// How long the writer lets lines gather once it has caught up, before it
/// looks again. While lines keep coming it is then never asleep on the
/// channel, so a request never has to wake it: one wake-up per interval
/// instead of a context switch per line, which on a busy core cost more
/// than the rest of the request.
const GATHER: Duration = Duration::from_millis(10);

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// Appended to (created if missing).
    File(PathBuf),
}

impl AccessLogTarget {
    /// `-` is stdout; anything else a file path.
    pub fn parse(text: &str) -> Self {
        if text == "-" { Self::Stdout } else { Self::File(PathBuf::from(text)) }
    }
}

/// Handle to the access log writer; cheap to clone. The writer thread ends
/// once every handle (and every request still being logged) is gone.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    lines: SyncSender<Message>,
    /// The writer thread, woken early by [`AccessLog::flush`].
    writer: std::thread::Thread,
    /// A request is logged when a uniform `u64` falls below this;
    /// `u64::MAX` logs every request.
    threshold: u64,
    dropped: IntCounter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("threshold", &self.shared.threshold).finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens `target` and starts the writer thread. `sample` (clamped to
    /// 0..=1) is the fraction of requests logged; `dropped` counts lines
    /// lost to a full buffer or a failed write.
    pub fn start(target: &AccessLogTarget, sample: f64, dropped: IntCounter) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        Self::with_writer(out, DEFAULT_BUFFER_LINES, sample, dropped)
    }

    /// Like [`start`](Self::start), writing to `out` with room for
    /// `buffer` pending lines.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        buffer: usize,
        sample: f64,
        dropped: IntCounter,
    ) -> io::Result<Self> {
        let (lines, rx) = mpsc::sync_channel(buffer.max(1));
        let counter = dropped.clone();
        let writer =
            std::thread::Builder::new().name("access-log".into()).spawn(move || write_lines(rx, out, &counter))?;
        let writer = writer.thread().clone();
        Ok(Self { shared: Arc::new(Shared { lines, writer, threshold: threshold(sample), dropped }) })
    }

    /// Writes out every line submitted so far (lines otherwise wait up to
    /// [`GATHER`]), waiting at most `timeout` for a blocked output; for
    /// shutdown. Whether it finished in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack, done) = mpsc::sync_channel(1);
        let mut message = Message::Flush(ack);
        loop {
            match self.shared.lines.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        self.shared.writer.unpark();
        done.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok()
    }

    /// Whether this request is sampled.
    fn sampled(&self) -> bool {
        match self.shared.threshold {
            0 => false,
            u64::MAX => true,
            t => next_random() < t,
        }
    }

    /// The entry of a request that just arrived: inert unless sampled.
    /// `client` is only computed for a sampled request.
    pub(super) fn begin<B>(
        &self,
        req: &Request<B>,
        host: Option<&str>,
        client: impl FnOnce() -> IpAddr,
        start: Instant,
    ) -> Entry {
        let request = RequestLine { method: req.method(), path: req.uri().path(), protocol: req.version() };
        self.begin_parts(request, host, client, start)
    }

    /// [`begin`](Self::begin) for a request known by its parts (the fast
    /// path parses no `Request`).
    pub(super) fn begin_parts(
        &self,
        request: RequestLine<'_>,
        host: Option<&str>,
        client: impl FnOnce() -> IpAddr,
        start: Instant,
    ) -> Entry {
        if !self.sampled() {
            return Entry::default();
        }
        let record = Record {
            time: SystemTime::now(),
            start,
            client: client(),
            host: host.map(Box::from),
            method: request.method.clone(),
            path: request.path.into(),
            protocol: request.protocol,
            status: CLIENT_CLOSED,
            bytes: 0,
            duration: Duration::ZERO,
            upstream: None,
            attempts: 0,
            affinity: None,
            service: None,
            ingress: None,
        };
        Entry(Some(Pending { record: Box::new(record), log: self.clone() }))
    }

    fn submit(&self, record: Box<Record>) {
        match self.shared.lines.try_send(Message::Line(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.shared.dropped.inc(),
        }
    }
}

/// What the writer is sent.
enum Message {
    Line(Box<Record>),
    /// Write everything out, then acknowledge.
    Flush(SyncSender<()>),
}

/// What a line says of the request itself.
pub(super) struct RequestLine<'a> {
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    pub protocol: Version,
}

/// nginx's "client closed request": the client left before the response
/// head was ready.
const CLIENT_CLOSED: u16 = 499;

/// What one line says, filled in along the request path.
#[derive(Debug)]
struct Record {
    time: SystemTime,
    start: Instant,
    client: IpAddr,
    host: Option<Box<str>>,
    method: Method,
    path: Box<str>,
    protocol: Version,
    status: u16,
    bytes: u64,
    duration: Duration,
    upstream: Option<SocketAddr>,
    attempts: u32,
    affinity: Option<&'static str>,
    service: Option<Arc<str>>,
    ingress: Option<Arc<str>>,
}

#[derive(Debug)]
struct Pending {
    record: Box<Record>,
    log: AccessLog,
}

// === impl Entry ===

/// The access-log line of one request in progress, sent when dropped.
/// `Entry::default()` is inert: every method is a no-op.
#[derive(Debug, Default)]
pub struct Entry(Option<Pending>);

impl Entry {
    /// The route matched: its Ingress and backend service.
    pub(super) fn route(&mut self, ingress: &Arc<str>, service: &Arc<str>) {
        if let Some(p) = &mut self.0 {
            p.record.ingress = Some(ingress.clone());
            p.record.service = Some(service.clone());
        }
    }

    /// The endpoint that answered last, after `attempts` tries.
    pub(super) fn upstream(&mut self, addr: SocketAddr, attempts: usize) {
        if let Some(p) = &mut self.0 {
            p.record.upstream = Some(addr);
            p.record.attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        }
    }

    /// How session affinity was resolved (`hit`, `new`, `repinned`).
    pub(super) fn affinity(&mut self, outcome: &'static str) {
        if let Some(p) = &mut self.0 {
            p.record.affinity = Some(outcome);
        }
    }

    /// The response's status (the fast path: no `Response` is built).
    pub(super) fn status(&mut self, status: u16) {
        if let Some(p) = &mut self.0 {
            p.record.status = status;
        }
    }

    /// Body bytes handed to the connection (the fast path); the line is
    /// sent when the entry is dropped.
    pub(super) fn body_bytes(&mut self, bytes: u64) {
        if let Some(p) = &mut self.0 {
            p.record.bytes += bytes;
        }
    }

    /// Records the response's status and arranges for the line to be sent
    /// when its body ends: a streamed body carries the entry and counts its
    /// bytes; a local answer is complete now.
    pub(super) fn attach(mut self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        let Some(p) = &mut self.0 else { return response };
        p.record.status = response.status().as_u16();
        match response.body_mut() {
            Either::Left(streamed) => streamed.log_on_end(self),
            // Hyper sends no body in answer to HEAD.
            Either::Right(_) if p.record.method == Method::HEAD => {}
            Either::Right(local) => p.record.bytes = local.size_hint().exact().unwrap_or(0),
        }
        response
    }

    /// Counts a frame of the response body; the end of the body (or an
    /// error) completes the line.
    pub(super) fn frame<E>(&mut self, frame: &Option<Result<Frame<Bytes>, E>>) {
        let Some(p) = &mut self.0 else { return };
        match frame {
            Some(Ok(frame)) => p.record.bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            None | Some(Err(_)) => self.send(),
        }
    }

    fn send(&mut self) {
        if let Some(Pending { mut record, log }) = self.0.take() {
            record.duration = record.start.elapsed();
            log.submit(record);
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.send();
    }
}

// === writer side ===

fn write_lines(rx: Receiver<Message>, out: Box<dyn Write + Send>, dropped: &IntCounter) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    let mut warned = false;
    let mut acks = Vec::new();
    // Asleep on the channel only when nothing came during the last gather.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut failed = None;
        while let Some(message) = next {
            match message {
                Message::Line(record) => {
                    line.clear();
                    format_line(&record, &mut line);
                    if let Err(err) = out.write_all(&line) {
                        dropped.inc();
                        failed = Some(err);
                    }
                }
                Message::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        // Caught up: push the batch out.
        if let Err(err) = out.flush() {
            dropped.inc();
            failed = Some(err);
        }
        if let Some(err) = failed
            && !std::mem::replace(&mut warned, true)
        {
            tracing::warn!(error = %err, "cannot write the access log; lines are dropped");
        }
        if acks.is_empty() {
            std::thread::park_timeout(GATHER);
        }
        for ack in acks.drain(..) {
            let _ = ack.try_send(());
        }
    }
    let _ = out.flush();
}

/// The JSON line (with its newline) of `record`.
fn format_line(record: &Record, buf: &mut Vec<u8>) {
    #[derive(Serialize)]
    struct Line<'a> {
        time: &'a str,
        client: IpAddr,
        host: Option<&'a str>,
        method: &'a str,
        path: &'a str,
        protocol: &'static str,
        status: u16,
        bytes: u64,
        duration_ms: f64,
        upstream: Option<SocketAddr>,
        attempts: u32,
        affinity: Option<&'static str>,
        service: Option<&'a str>,
        ingress: Option<&'a str>,
    }
    let time = rfc3339_millis(record.time);
    let line = Line {
        time: &time,
        client: record.client,
        host: record.host.as_deref(),
        method: record.method.as_str(),
        path: &record.path,
        protocol: protocol(record.protocol),
        status: record.status,
        bytes: record.bytes,
        duration_ms: record.duration.as_micros() as f64 / 1000.0,
        upstream: record.upstream,
        attempts: record.attempts,
        affinity: record.affinity,
        service: record.service.as_deref(),
        ingress: record.ingress.as_deref(),
    };
    serde_json::to_writer(&mut *buf, &line).expect("serializing to a Vec cannot fail");
    buf.push(b'\n');
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

/// `2024-05-01T12:34:56.789Z` (UTC).
fn rfc3339_millis(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_date(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01, computed in
/// 400-year eras (146 097 days) of years that start on March 1st, so that
/// the leap day is the last day of its year.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // 0000-03-01 → 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 { march_month + 3 } else { march_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

// === sampling ===

fn threshold(sample: f64) -> u64 {
    if sample.is_nan() || sample <= 0.0 {
        0
    } else if sample >= 1.0 {
        u64::MAX
    } else {
        (sample * u64::MAX as f64) as u64
    }
}

thread_local! {
    static RANDOM: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1
    });
}

/// xorshift64*: a fast per-thread generator, plenty for sampling.
fn next_random() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Mutex;

    #[test]
    fn civil_dates_and_timestamps() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(11_017), (2000, 3, 1));
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339_millis(t), "2023-11-14T22:13:20.123Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(4_107_542_399);
        assert_eq!(rfc3339_millis(t), "2100-02-28T23:59:59.000Z");
    }

    #[test]
    fn sampling_rates() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(f64::NAN), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        let quarter = threshold(0.25);
        let hits = (0..100_000).filter(|_| next_random() < quarter).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
    }

    /// A writer that blocks until opened, then keeps what it got.
    #[derive(Clone, Default)]
    struct Gate(Arc<GateState>);

    #[derive(Default)]
    struct GateState {
        /// (entered, open)
        state: Mutex<(bool, bool)>,
        changed: std::sync::Condvar,
        got: Mutex<Vec<u8>>,
    }

    impl Gate {
        fn open(&self) {
            self.0.state.lock().unwrap().1 = true;
            self.0.changed.notify_all();
        }

        fn wait_entered(&self) {
            let mut s = self.0.state.lock().unwrap();
            while !s.0 {
                s = self.0.changed.wait(s).unwrap();
            }
        }

        fn lines(&self) -> Vec<serde_json::Value> {
            let got = self.0.got.lock().unwrap();
            got.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut s = self.0.state.lock().unwrap();
            s.0 = true;
            self.0.changed.notify_all();
            while !s.1 {
                s = self.0.changed.wait(s).unwrap();
            }
            self.0.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn mk_entry(log: &AccessLog, path: &str) -> Entry {
        let req = Request::get(path).body(()).unwrap();
        log.begin(&req, Some("a.test"), || "192.0.2.7".parse().unwrap(), Instant::now())
    }

    fn wait_lines(gate: &Gate, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = gate.lines();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_requests_lines_are_dropped_and_counted() {
        let gate = Gate::default();
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log = AccessLog::with_writer(Box::new(gate.clone()), 2, 1.0, dropped.clone()).unwrap();
        drop(mk_entry(&log, "/first"));
        gate.wait_entered(); // the writer is stuck flushing the first line
        let start = Instant::now();
        for i in 0..200 {
            drop(mk_entry(&log, &format!("/{i}")));
        }
        assert!(start.elapsed() < Duration::from_secs(1), "never blocks");
        assert_eq!(dropped.get(), 198, "two fit in the buffer, the rest are dropped and counted");
        gate.open();
        let lines = wait_lines(&gate, 3);
        let paths: Vec<_> = lines.iter().map(|l| l["path"].as_str().unwrap().to_string()).collect();
        assert_eq!(paths, ["/first", "/0", "/1"]);
        assert_eq!(lines[0]["status"], CLIENT_CLOSED, "dropped before any response: 499");
    }

    #[test]
    fn lines_gather_between_writes_and_flush_writes_them_out() {
        let gate = Gate::default();
        gate.open();
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log = AccessLog::with_writer(Box::new(gate.clone()), 16, 1.0, dropped).unwrap();
        // The first line wakes the idle writer and is written at once.
        drop(mk_entry(&log, "/first"));
        assert_eq!(wait_lines(&gate, 1).len(), 1);
        // The next ones arrive while it gathers: written at the end of the
        // interval, or at once by a flush.
        drop(mk_entry(&log, "/second"));
        drop(mk_entry(&log, "/third"));
        assert!(log.flush(Duration::from_secs(5)), "flushed in time");
        let paths: Vec<_> = gate.lines().iter().map(|l| l["path"].as_str().unwrap().to_string()).collect();
        assert_eq!(paths, ["/first", "/second", "/third"], "all written when flush returns");
    }

    #[test]
    fn unsampled_requests_are_inert() {
        let gate = Gate::default();
        gate.open();
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log = AccessLog::with_writer(Box::new(gate.clone()), 16, 0.0, dropped.clone()).unwrap();
        let entry = mk_entry(&log, "/");
        assert!(entry.0.is_none());
        drop(entry);
        let sampled = AccessLog::with_writer(Box::new(gate.clone()), 16, 1.0, dropped).unwrap();
        let mut entry = mk_entry(&sampled, "/x");
        entry.frame::<Infallible>(&Some(Ok(Frame::data(Bytes::from_static(b"hello")))));
        entry.frame::<Infallible>(&None);
        let lines = wait_lines(&gate, 1);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["path"], "/x");
        assert_eq!(lines[0]["bytes"], 5);
        drop(entry);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(gate.lines().len(), 1, "sent once, at the end of the body, not again on drop");
    }

    #[test]
    fn line_fields_and_escaping() {
        let mut record = Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            start: Instant::now(),
            client: "2001:db8::1".parse().unwrap(),
            host: Some("evil\"\n.test".into()),
            method: Method::PUT,
            path: "/a b".into(),
            protocol: Version::HTTP_11,
            status: 200,
            bytes: 42,
            duration: Duration::from_micros(1500),
            upstream: Some("10.0.0.1:8080".parse().unwrap()),
            attempts: 2,
            affinity: Some("hit"),
            service: Some("shop/web".into()),
            ingress: Some("shop/main".into()),
        };
        let mut buf = Vec::new();
        format_line(&record, &mut buf);
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1, "exactly one line");
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "2001:db8::1");
        assert_eq!(v["host"], "evil\"\n.test");
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "10.0.0.1:8080");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["affinity"], "hit");
        assert_eq!(v["ingress"], "shop/main");
        record.upstream = None;
        record.host = None;
        buf.clear();
        format_line(&record, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert!(v["upstream"].is_null() && v["host"].is_null());
    }
}
