//! The `switchyard` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::compile::ClassConfig;

#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about = "Kubernetes ingress controller and load balancer")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,switchyard=debug`.
    #[arg(long, global = true, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic from Ingress/Service/EndpointSlice manifests in a
    /// directory, watched for changes (no Kubernetes API needed).
    Standalone(Box<StandaloneArgs>),
    /// Run in a cluster: watch the Kubernetes API, serve traffic, and (as
    /// the elected leader) write Ingress status and Events.
    Run(Box<RunArgs>),
    /// Start the proxy with bundled example manifests and built-in echo
    /// backends on loopback, and print curl commands to try.
    Demo(DemoArgs),
    /// Run an HTTP echo backend (used by the demo, tests and benchmarks).
    Echo(EchoArgs),
    /// Print the BalancerPolicy CustomResourceDefinition as YAML.
    Crd,
}

/// Flags of the dataplane, shared by every serving mode.
#[derive(Clone, Debug, Args)]
pub struct DataplaneArgs {
    /// Plain-HTTP listener address.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Admin listener (/healthz, /readyz, /metrics, /debug/snapshot).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// Dataplane worker threads (default: number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Added to the nice value of the controller's own threads (watching,
    /// parsing manifests, compiling snapshots, and in `run` also leader
    /// election and status writes). Above 0, threads serving requests come
    /// first on a busy CPU, and on a saturated core config changes apply
    /// later (at 10, 5 to 17 times later, measured); keep the Lease
    /// renewals in mind at high values. 0: the dataplane's priority.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub controller_nice: u8,
    /// TCP connect timeout toward endpoints (502 when exceeded).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time allowed for an upstream's response headers (504 when exceeded).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Time allowed for a client to send a request head, from its first
    /// byte (slowloris guard: the connection is closed).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Connections served at once per listener; more wait in the accept
    /// queue until one closes. 0: no limit.
    #[arg(long, default_value_t = 16384)]
    pub max_connections: usize,
    /// Longest request line in bytes (414 beyond it).
    #[arg(long, default_value_t = 8192)]
    pub max_request_line: usize,
    /// Largest request header section in bytes (431 beyond it).
    #[arg(long, default_value_t = 32768)]
    pub max_header_bytes: usize,
    /// Most request header fields (431 beyond it).
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// Request body size limit of Ingresses without a `proxy-body-size`
    /// annotation (413 beyond it), nginx syntax: `1m`, `512k`, `0` (none).
    #[arg(long, default_value = "1m", value_parser = parse_body_size)]
    pub max_body_size: u64,
    /// On SIGTERM: how long /readyz reports 503 (and HTTP/1 responses say
    /// `Connection: close`) while listeners still accept, so that the
    /// Service's endpoints and load balancers stop sending new connections
    /// first. Delay + drain timeout must fit the pod's grace period (30s by
    /// default in Kubernetes).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Proxies (CIDRs, comma-separated) whose X-Forwarded-For is believed:
    /// the client address is then the rightmost untrusted hop (for
    /// X-Real-IP, IPHash and logs). Default: none.
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// After the shutdown delay: how long in-flight requests and WebSockets
    /// may still run (WebSockets then get a Close frame, 1001).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Access log, one JSON line per request: a file path (appended to)
    /// or `-` for stdout. Default: off.
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<String>,
    /// Fraction of requests written to the access log, 0 to 1.
    #[arg(long, default_value_t = 1.0, value_name = "RATE", value_parser = parse_rate)]
    pub access_log_sample: f64,
    /// HTTPS listener address (TLS termination; certificates from the
    /// served Ingresses' `spec.tls`). Default: no HTTPS listener.
    #[arg(long)]
    pub https_addr: Option<SocketAddr>,
    /// Lowest TLS version accepted: 1.2 or 1.3.
    #[arg(long, default_value = "1.2")]
    pub tls_min_version: switchyard_dataplane::tls::MinVersion,
    /// TLS sessions remembered for resumption, which spares a returning
    /// client the certificate and its signature: TLS 1.3 tickets (two per
    /// handshake, each usable once) and TLS 1.2 session IDs, for 10 minutes
    /// each, the oldest forgotten first when full; a few hundred bytes
    /// each. 0: no resumption, every handshake is a full one.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(..=1_000_000))]
    pub tls_session_cache: u32,
    /// `Strict-Transport-Security` value on HTTPS responses for hosts with
    /// TLS; empty: no header.
    #[arg(long, default_value = "max-age=31536000; includeSubDomains")]
    pub hsts: String,
    /// Require a PROXY protocol header (v1 or v2, autodetected) at the
    /// start of every connection, on the HTTP and HTTPS listeners alike:
    /// its source address becomes the client's (X-Forwarded-For, X-Real-IP,
    /// IPHash, access log). Connections without one are closed. Turn it on
    /// only behind a load balancer that sends the header and when clients
    /// cannot reach these ports directly: anyone who can could otherwise
    /// forge their address.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// CA certificates (PEM) that backends' certificates must chain to, for
    /// Ingresses with `backend-protocol` HTTPS or GRPCS. The name is not
    /// checked (backends are addressed by pod IP). Default: backends'
    /// certificates are not verified, as nginx and HAProxy do by default.
    #[arg(long, value_name = "PATH")]
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Serve plain HTTP/1.1 GET and HEAD requests (cleartext or TLS) to
    /// cleartext HTTP/1.1 backends on the fast path: parsed once and forwarded on
    /// bare pooled connections, without hyper (counted in
    /// `switchyard_h1_fast_path_requests_total`). Requests it does not
    /// take are served by hyper as before. `false` turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub h1_fast_path: bool,
    /// On the fast path, move the rest of a response body of 16 KiB or more
    /// with a known length from the backend to a cleartext client with
    /// splice(2), inside the kernel, instead of copying it through the
    /// proxy (counted in `switchyard_spliced_body_bytes_total`). `false`
    /// copies every body.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub splice_bodies: bool,
}

/// Flags that decide which Ingresses are ours.
#[derive(Clone, Debug, Args)]
pub struct ClassArgs {
    /// IngressClass name served by this controller.
    #[arg(long, default_value = "switchyard")]
    pub ingress_class: String,
    /// `spec.controller` value of IngressClasses owned by this controller.
    #[arg(long, default_value = "switchyard.dev/ingress-controller")]
    pub controller_name: String,
    /// Also serve Ingresses that name no class.
    #[arg(long)]
    pub watch_ingress_without_class: bool,
    /// `kubernetes.io/tls` Secret served for unknown or missing SNI
    /// (default: a self-signed certificate made at start).
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_object_key)]
    pub default_ssl_certificate: Option<crate::world::ObjectKey>,
    /// ConfigMap of L4 TCP services, the ingress-nginx convention: each
    /// entry `"PORT": "NAMESPACE/SERVICE:SERVICE_PORT"` opens a TCP listener
    /// on PORT that relays connections to the Service's endpoints. In
    /// standalone mode the ConfigMap is read from the manifest directory.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_object_key)]
    pub tcp_services_configmap: Option<crate::world::ObjectKey>,
}

impl ClassArgs {
    pub fn to_config(&self) -> ClassConfig {
        ClassConfig {
            ingress_class: self.ingress_class.clone(),
            controller_name: self.controller_name.clone(),
            watch_without_class: self.watch_ingress_without_class,
            default_certificate: self.default_ssl_certificate.clone(),
            tcp_services: self.tcp_services_configmap.clone(),
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct StandaloneArgs {
    /// Directory of *.yaml, *.yml and *.json manifests.
    #[arg(long)]
    pub manifests: PathBuf,
    #[command(flatten)]
    pub dataplane: DataplaneArgs,
    #[command(flatten)]
    pub classes: ClassArgs,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then in-cluster config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Only watch this namespace (default: all namespaces).
    #[arg(long)]
    pub watch_namespace: Option<String>,
    /// Service whose load-balancer address is written into Ingress status.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "publish_address")]
    pub publish_service: Option<String>,
    /// Address(es) written into Ingress status instead (IPs or host names,
    /// comma-separated).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub publish_address: Vec<String>,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "switchyard-leader")]
    pub election_id: String,
    /// This replica's identity in the Lease (default: host name and PID).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// How long a Lease is valid without renewal (failover time).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Coalescing window for bursts of watch events: a change after a quiet
    /// spell compiles at once; later ones wait until this long after the
    /// previous compile ended, and are compiled together.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub debounce: Duration,
    #[command(flatten)]
    pub dataplane: DataplaneArgs,
    #[command(flatten)]
    pub classes: ClassArgs,
}

#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Plain-HTTP listener address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Admin listener address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
}

#[derive(Clone, Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub addr: SocketAddr,
    /// Name reported in every answer.
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Delay every answer by this many milliseconds (a slow backend).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Listen on this many consecutive ports, from `--addr`'s port on (many
    /// endpoints from one process, for benchmarks).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: u16,
}

/// nginx size syntax; `0` means no limit (`u64::MAX`).
fn parse_body_size(text: &str) -> Result<u64, String> {
    match switchyard_dataplane::proxy::parse_size(text) {
        Some(0) => Ok(u64::MAX),
        Some(n) => Ok(n),
        None => Err(format!("{text:?} is not a size like 512k, 8m or 0")),
    }
}

fn parse_object_key(text: &str) -> Result<crate::world::ObjectKey, String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(crate::world::ObjectKey::new(ns, name))
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{text:?} is not a rate between 0 and 1")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    switchyard_crds::parse_duration(text)
}
