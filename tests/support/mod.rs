//! Support for end-to-end tests: real `switchyard` processes, real echo
//! backends on loopback, real HTTP and WebSocket clients.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[allow(unused_imports)]
pub use switchyard_controller::demo::endpoint_slice;

pub mod backends;
pub mod cluster;
pub mod netns;
pub mod raw;
pub mod tls;

/// The `--workers` the tests give switchyard: 2 (a multi-thread runtime),
/// or `SWITCHYARD_TEST_WORKERS` (tests/run.sh runs the end-to-end tests a
/// second time with 1, the current-thread runtime).
pub fn workers() -> String {
    match std::env::var("SWITCHYARD_TEST_WORKERS") {
        Ok(n) => {
            assert!(n.parse::<u16>().is_ok_and(|n| n > 0), "SWITCHYARD_TEST_WORKERS={n:?}: want a number of threads");
            n
        }
        Err(_) => "2".to_string(),
    }
}

/// A free loopback port (bound then released).
pub fn free_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Starts an in-process echo backend named `name` on a free loopback port.
pub async fn start_echo(name: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(switchyard_controller::demo::echo::serve(listener, name.to_string()));
    addr
}

/// A `switchyard` process (standalone or run) on free ports, killed on drop.
pub struct Switchyard {
    pub child: Option<Child>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

/// The standalone-mode spelling of [`Switchyard`].
pub type Standalone = Switchyard;

impl Switchyard {
    /// Starts the binary on a fresh manifest directory holding `files`, and
    /// waits for `/readyz`.
    pub async fn start(files: &[(&str, &str)]) -> Self {
        Self::start_with(files, &[]).await
    }

    /// Like [`start`](Self::start), with extra command-line flags.
    pub async fn start_with(files: &[(&str, &str)], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut args = vec!["standalone".to_string(), "--manifests".to_string(), dir.path().display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(dir, args, &[], true).await
    }

    /// Starts `switchyard run` against the test cluster with `extra` flags.
    /// With `wait_ready`, returns once `/readyz` answers 200.
    pub async fn start_run(kubeconfig: &Path, extra: &[&str], wait_ready: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["run".to_string(), "--kubeconfig".to_string(), kubeconfig.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(dir, args, &[], wait_ready).await
    }

    /// Like [`start_run`](Self::start_run), with `flags` exactly as given
    /// (after `run --kubeconfig`; the test's own address, worker and log
    /// flags still come last) and extra environment variables, as a pod
    /// spec would pass them.
    pub async fn start_run_env(kubeconfig: &Path, flags: &[String], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["run".to_string(), "--kubeconfig".to_string(), kubeconfig.display().to_string()];
        args.extend(flags.iter().cloned());
        Self::spawn(dir, args, env, true).await
    }

    async fn spawn(dir: tempfile::TempDir, args: Vec<String>, env: &[(&str, &str)], wait_ready: bool) -> Self {
        let (http, admin) = (free_addr(), free_addr());
        let log = dir.path().join("switchyard.log.txt");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .envs(env.iter().copied())
            .args(["--http-addr", &http.to_string(), "--admin-addr", &admin.to_string(), "--workers", &workers()])
            .args(default_flag(&args, "--drain-timeout", "10s"))
            .args(default_flag(&args, "--shutdown-delay", "0s"))
            .args(["--log", "info,switchyard_controller=debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn switchyard");
        let me = Self { child: Some(child), http, admin, dir, log };
        if wait_ready {
            me.wait_ready().await;
        }
        me
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = get(self.admin, "admin", "/readyz").await
                && r.status == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "switchyard not ready in 20s; log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn write(&self, name: &str, text: &str) {
        // Write then rename, as editors and kubectl-like tools do.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit (at most `timeout`).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "switchyard did not exit in {timeout:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// `flag value`, unless `args` already set the flag (clap refuses a flag
/// given twice).
fn default_flag(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let given = args.iter().any(|a| a == flag || a.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')));
    if given { Vec::new() } else { vec![flag.to_string(), value.to_string()] }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- switchyard log ----\n{}", self.log_text());
        }
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `backend` field of an echo answer.
    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap_or("").to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http()
}

/// `GET http://{addr}{path}` with `Host: {host}`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Reply> {
    send(addr, Request::get(format!("http://{addr}{path}")).header("host", host).body(Full::default())?).await
}

pub async fn send(_addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
    let resp = tokio::time::timeout(Duration::from_secs(15), client().request(req)).await??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Polls until `check` holds for a GET (at most `timeout`), returning how
/// long it took.
pub async fn eventually(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    check: impl Fn(&Reply) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        if let Ok(r) = get(addr, host, path).await {
            if check(&r) {
                return start.elapsed();
            }
            last = Some(r);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within {timeout:?} for {host}{path}; last reply: {last:?}");
}

/// A Service manifest with one port `http` (80 → 8080).
pub fn service(namespace: &str, name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    )
}

/// The value of the first sample of `/metrics` on `admin` whose line starts
/// with `series` (metric name with its labels, e.g. `switchyard_leader`).
pub async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let text = get(admin, "admin", "/metrics").await.ok()?.body;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `check` every 50 ms until it returns `Some`, at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `switchyard echo` backend in its own process (so that killing it closes
/// every connection, pooled ones included), on a free loopback port.
pub struct EchoProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl EchoProcess {
    pub fn start(name: &str, delay_ms: u64) -> Self {
        let addr = free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["echo", "--addr", &addr.to_string(), "--name", name, "--delay-ms", &delay_ms.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn echo");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "echo {name} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { addr, child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
