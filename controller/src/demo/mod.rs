//! `switchyard demo`: echo backends on loopback, bundled manifests, and the
//! standalone proxy in front of them.

pub mod echo;

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::cli::{ClassArgs, DataplaneArgs, DemoArgs, StandaloneArgs};

/// Ingresses, Services and the IngressClass of the demo.
const DEMO_MANIFESTS: &str = include_str!("../../../deploy/examples/demo/demo.yaml");

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut endpoints = String::new();
    for (service, names) in [("web", &["web-1", "web-2"][..]), ("api", &["api-1"][..])] {
        let mut addrs = Vec::new();
        for name in names {
            let listener = TcpListener::bind("127.0.0.1:0").await.context("binding an echo backend")?;
            addrs.push((name.to_string(), listener.local_addr()?));
            tokio::spawn(echo::serve(listener, name.to_string()));
        }
        endpoints.push_str(&endpoint_slice("demo", service, &addrs));
    }
    let dir = tempfile::Builder::new().prefix("switchyard-demo-").tempdir().context("creating the demo directory")?;
    std::fs::write(dir.path().join("demo.yaml"), DEMO_MANIFESTS)?;
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints)?;

    let http = args.http_addr;
    let admin = args.admin_addr;
    println!(
        "\nSwitchyard demo: proxy on http://{http}, admin on http://{admin}\n\
         Manifests in {dir} (edit them: changes are live within a second).\n\n\
         Try:\n\
         \x20 curl -s -H 'Host: demo.localhost' http://{http}/            # web-1, web-2 in turn (Prefix /)\n\
         \x20 curl -s -H 'Host: demo.localhost' http://{http}/api/users   # api-1 (Prefix /api)\n\
         \x20 curl -s -H 'Host: demo.localhost' http://{http}/api/version # web (Exact beats Prefix)\n\
         \x20 curl -s -H 'Host: shop.demo.localhost' http://{http}/       # web (wildcard host)\n\
         \x20 curl -s http://{http}/                                      # api-1 (defaultBackend)\n\
         \x20 curl -s -H 'Host: demo.localhost' http://{http}/sse         # server-sent events, streamed\n\
         \x20 curl -s http://{admin}/debug/snapshot                       # the routing table\n\
         \x20 curl -s http://{admin}/metrics | grep switchyard_requests_total\n\n\
         Ctrl-C to stop.\n",
        dir = dir.path().display(),
    );
    let standalone = StandaloneArgs {
        manifests: dir.path().to_path_buf(),
        dataplane: DataplaneArgs {
            http_addr: http,
            admin_addr: admin,
            workers: None,
            connect_timeout: std::time::Duration::from_secs(5),
            upstream_timeout: std::time::Duration::from_secs(60),
            header_read_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections: 16384,
            max_request_line: 8192,
            max_header_bytes: 32768,
            max_headers: 100,
            max_body_size: switchyard_dataplane::proxy::DEFAULT_MAX_BODY_SIZE,
            shutdown_delay: std::time::Duration::ZERO,
            trusted_proxies: Vec::new(),
            drain_timeout: std::time::Duration::from_secs(5),
        },
        classes: ClassArgs {
            ingress_class: "switchyard".into(),
            controller_name: "switchyard.dev/ingress-controller".into(),
            watch_ingress_without_class: false,
        },
    };
    crate::standalone::run(standalone).await
}

/// EndpointSlice manifests for `service` in `namespace` (port name `http`),
/// one slice with one ready endpoint per `(pod, addr)`.
pub fn endpoint_slice(namespace: &str, service: &str, endpoints: &[(String, SocketAddr)]) -> String {
    let mut yaml = String::new();
    for (pod, addr) in endpoints {
        let _ = write!(
            yaml,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{pod}\n  namespace: {namespace}\n  \
             labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\nports: [{{name: http, port: {port}, protocol: TCP}}]\n\
             endpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}\n",
            port = addr.port(),
            ip = addr.ip(),
            family = if addr.is_ipv4() { "IPv4" } else { "IPv6" },
        );
    }
    yaml
}
