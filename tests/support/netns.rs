//! Backends in a network namespace the test creates itself.
//!
//! EndpointSlice validation rejects loopback addresses, so backends that the
//! proxy must really reach in cluster tests live in a namespace joined to the
//! host by a veth pair, with addresses from 198.18.0.0/15 (reserved for
//! benchmarking, RFC 2544). Traffic goes only to that namespace. Needs root
//! (CI runs as root); without it, the test fails loudly, never passes
//! quietly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

static NEXT_SUBNET: AtomicU8 = AtomicU8::new(1);

/// A network namespace `198.18.X.0/24`: the host is `.1`, backends `.10+`.
pub struct Netns {
    name: String,
    host_if: String,
    subnet: u8,
    backends: Vec<(String, Child)>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run `ip` (iproute2)");
    assert!(out.status.success(), "`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

impl Netns {
    /// Creates the namespace with `addresses` backend addresses.
    pub fn create(addresses: u8) -> Self {
        let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert_eq!(
            uid.as_deref().unwrap_or(""),
            "0",
            "THIS TEST NEEDS ROOT: it creates a network namespace (ip netns) for backends that EndpointSlices can name. \
             Run the end-to-end suite as root (CI does)."
        );
        let subnet = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        assert!(subnet < 250, "too many test namespaces");
        let pid = std::process::id() % 100_000;
        let name = format!("sy-e2e-{pid}-{subnet}");
        let host_if = format!("sy{pid}h{subnet}");
        let me = Self { name, host_if, subnet, backends: Vec::new() };
        ip(&["netns", "add", &me.name]);
        ip(&["link", "add", &me.host_if, "type", "veth", "peer", "name", "eth0", "netns", &me.name]);
        ip(&["addr", "add", &format!("198.18.{subnet}.1/24"), "dev", &me.host_if]);
        ip(&["link", "set", &me.host_if, "up"]);
        ip(&["netns", "exec", &me.name, "ip", "link", "set", "lo", "up"]);
        ip(&["netns", "exec", &me.name, "ip", "link", "set", "eth0", "up"]);
        for i in 0..addresses {
            ip(&[
                "netns",
                "exec",
                &me.name,
                "ip",
                "addr",
                "add",
                &format!("198.18.{subnet}.{}/24", 10 + i),
                "dev",
                "eth0",
            ]);
        }
        me
    }

    /// The `i`-th backend address.
    pub fn addr(&self, i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, self.subnet, 10 + i))
    }

    /// Starts `switchyard echo` named `name` on address `i`, port 8080,
    /// inside the namespace; waits until it accepts connections.
    pub fn start_echo(&mut self, bin: &str, i: u8, name: &str) -> SocketAddr {
        let addr = SocketAddr::new(self.addr(i), 8080);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, bin, "echo", "--addr", &addr.to_string(), "--name", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn echo in netns");
        self.backends.push((name.to_string(), child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "echo backend {name} on {addr} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        addr
    }

    /// A TCP listener bound to `addr` inside the namespace, for a backend
    /// served in this process (a socket stays in the namespace it was made
    /// in; only the binding thread enters it).
    pub fn bind(&self, addr: SocketAddr) -> std::net::TcpListener {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    use std::os::fd::AsFd;
                    let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    rustix::thread::move_into_link_name_space(
                        ns.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
                    let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                    listener.set_nonblocking(true).unwrap();
                    listener
                })
                .join()
                .expect("the binding thread")
        })
    }

    /// Kills the backend `name` (its port then refuses connections).
    pub fn stop_echo(&mut self, name: &str) {
        if let Some(pos) = self.backends.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.backends.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (_, child) in &mut self.backends {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).stderr(Stdio::null()).status();
    }
}
