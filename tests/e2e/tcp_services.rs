//! End-to-end: L4 TCP services (`--tcp-services-configmap`, the ConfigMap
//! read from the manifest directory) on the real binary, with real TCP
//! backends on loopback: balancing by the Service's BalancerPolicy,
//! a backend whose port closes, listeners opened and closed live, bytes
//! both ways and the metrics.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const NS: &str = "l4";

/// A TCP backend: greets each connection with `NAME\n`, then echoes every
/// line back as `NAME:LINE\n`. Dropping it closes its port.
struct TcpBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tcp_backend(name: &'static str) -> TcpBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                if write.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write.write_all(format!("{name}:{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    TcpBackend { addr, task }
}

fn backends_yaml(svc: &str, backends: &[(&str, &TcpBackend)]) -> String {
    let eps: Vec<(String, SocketAddr)> = backends.iter().map(|(n, b)| (n.to_string(), b.addr)).collect();
    service(NS, svc) + &endpoint_slice(NS, svc, &eps)
}

fn policy(svc: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: switchyard.dev/v1alpha1\nkind: BalancerPolicy\nmetadata: {{name: {svc}, namespace: {NS}}}\n\
         spec:\n  targetRef: {{kind: Service, name: {svc}}}\n{spec}"
    )
}

fn configmap(entries: &[(u16, &str)]) -> String {
    let mut yaml =
        format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: tcp-services, namespace: {NS}}}\ndata:\n");
    for (port, target) in entries {
        yaml += &format!("  \"{port}\": \"{target}\"\n");
    }
    yaml
}

/// Opens a connection through the proxy's TCP port and returns the
/// backend's greeting (its name) and the open stream.
async fn dial(port: u16) -> std::io::Result<(String, BufReader<TcpStream>)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut greeting)).await??;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the greeting"));
    }
    Ok((greeting.trim().to_string(), reader))
}

async fn spread(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (name, _) = dial(port).await.expect("a connection through the TCP service");
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_services_balance_by_policy_survive_a_closed_port_and_follow_the_configmap() {
    let (a, b, c) = (tcp_backend("db-1").await, tcp_backend("db-2").await, tcp_backend("db-3").await);
    let (rr_port, hash_port, lc_port, later_port) =
        (free_addr().port(), free_addr().port(), free_addr().port(), free_addr().port());
    let files = {
        let three = [("db-1", &a), ("db-2", &b), ("db-3", &c)];
        backends_yaml("rr", &three) + &backends_yaml("hash", &three) + &backends_yaml("lc", &three)
    } + &policy("hash", "  algorithm: IPHash\n")
        + &policy("lc", "  algorithm: LeastConnections\n")
        + &policy(
            "rr",
            "  healthCheck:\n    active: {type: TCP, interval: 500ms, timeout: 2s, unhealthyThreshold: 2}\n",
        );
    let cm = configmap(&[
        (rr_port, &format!("{NS}/rr:80")),
        (hash_port, &format!("{NS}/hash:http")),
        (lc_port, &format!("{NS}/lc:80")),
        (9, "not-a-service-reference"),
    ]);
    let flag = format!("{NS}/tcp-services");
    let proxy =
        Switchyard::start_with(&[("backends.yaml", &files), ("tcp.yaml", &cm)], &["--tcp-services-configmap", &flag])
            .await;
    let listening = |port: u16| async move { TcpStream::connect(("127.0.0.1", port)).await.is_ok() };
    wait_for("the TCP service ports to open", Duration::from_secs(10), || async {
        (listening(rr_port).await && listening(hash_port).await && listening(lc_port).await).then_some(())
    })
    .await;
    assert!(proxy.log_text().contains("InvalidTCPService"), "the bad entry is reported");
    // The probes above were proxied connections too: let the proxy finish
    // picking their endpoints, or one pick can land among the next nine
    // (CI once saw 4/3/2).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // RoundRobin (no algorithm set): connections go round the three.
    let rr = spread(rr_port, 9).await;
    assert_eq!(rr.values().copied().collect::<Vec<_>>(), [3, 3, 3], "{rr:?}");
    // IPHash: every connection from 127.0.0.1 lands on one backend.
    let hashed = spread(hash_port, 9).await;
    assert_eq!(hashed.len(), 1, "{hashed:?}");
    // LeastConnections: three connections held open spread one per backend.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(dial(lc_port).await.unwrap());
    }
    let mut names: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["db-1", "db-2", "db-3"]);

    // Bytes both ways, and a half-close passed on: the backend answers
    // what was sent, then the client sees the end after closing its side.
    let (name, mut conn) = dial(rr_port).await.unwrap();
    conn.get_mut().write_all(b"hello\nworld\n").await.unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    assert_eq!(line, format!("{name}:hello\n"));
    line.clear();
    conn.read_line(&mut line).await.unwrap();
    assert_eq!(line, format!("{name}:world\n"));
    conn.get_mut().shutdown().await.unwrap();
    line.clear();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read_line(&mut line)).await.unwrap().unwrap();
    assert_eq!(n, 0, "the backend's end reaches the client");

    // db-2's port closes: no client connection fails (a refused connect is
    // tried on another endpoint), and once the TCP check has seen it,
    // db-2 gets nothing.
    let b_addr = b.addr;
    drop(b);
    // Dropped means closing: wait until the port refuses (a connection
    // the dying backend still accepted would end without its greeting).
    wait_for("db-2's port to refuse connections", Duration::from_secs(5), || async {
        TcpStream::connect(b_addr).await.is_err().then_some(())
    })
    .await;
    let mut after = BTreeMap::new();
    for _ in 0..12 {
        let (name, _) = dial(rr_port).await.expect("connections keep succeeding while a backend is gone");
        *after.entry(name).or_insert(0) += 1;
    }
    assert!(!after.contains_key("db-2"), "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 12);
    let series = format!(r#"switchyard_endpoint_healthy{{endpoint="{b_addr}",service="{NS}/rr"}}"#);
    wait_for("the TCP health check to mark db-2 down", Duration::from_secs(5), || async {
        (metric(proxy.admin, &series).await == Some(0.0)).then_some(())
    })
    .await;

    // The metrics count connections and bytes per service.
    let rr_label = format!(r#"{{service="{NS}/rr"}}"#);
    let conns = metric(proxy.admin, &format!("switchyard_tcp_connections_total{rr_label}")).await.unwrap();
    assert!(conns >= 22.0, "{conns} connections counted");
    let received = metric(proxy.admin, &format!("switchyard_tcp_received_bytes_total{rr_label}")).await.unwrap();
    assert_eq!(received, 12.0, "hello\\nworld\\n from the client");
    let sent = metric(proxy.admin, &format!("switchyard_tcp_sent_bytes_total{rr_label}")).await.unwrap();
    assert!(sent >= 22.0 * 5.0, "{sent} bytes to clients");
    drop(held);

    // The ConfigMap changes: a new port opens, a removed one closes.
    let cm = configmap(&[(hash_port, &format!("{NS}/hash:80")), (later_port, &format!("{NS}/lc:80"))]);
    proxy.write("tcp.yaml", &cm);
    wait_for("the new port to open and the removed ones to close", Duration::from_secs(10), || async {
        (listening(later_port).await && !listening(rr_port).await && !listening(lc_port).await).then_some(())
    })
    .await;
    let (name, _) = dial(later_port).await.unwrap();
    assert!(name.starts_with("db-"), "{name}");
    assert!(dial(hash_port).await.is_ok(), "an unchanged entry keeps serving");
    proxy.write("tcp.yaml", "");
    wait_for("every port to close with the ConfigMap gone", Duration::from_secs(10), || async {
        (!listening(later_port).await && !listening(hash_port).await).then_some(())
    })
    .await;
    drop((a, c));
}
