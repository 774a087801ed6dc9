//! `switchyard demo`: echo backends on loopback, bundled manifests, and the
//! standalone proxy in front of them.

pub mod echo;

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

use clap::Parser as _;

use crate::cli::DemoArgs;

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
    // The standalone mode with its documented defaults: parsed like a
    // command line, so that every new flag's default applies here too.
    let (manifests, http, admin) = (dir.path().display().to_string(), http.to_string(), admin.to_string());
    let argv = ["switchyard", "standalone", "--manifests", &manifests, "--http-addr", &http, "--admin-addr", &admin];
    // Ctrl-C on a laptop: no load balancer to wait for.
    let quick_exit = ["--shutdown-delay", "0s", "--drain-timeout", "5s"];
    let cli = crate::cli::Cli::try_parse_from(argv.into_iter().chain(quick_exit))?;
    let crate::cli::Command::Standalone(standalone) = cli.command else { unreachable!("parsed a standalone command") };
    crate::standalone::run(*standalone).await
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
