//! The real control plane the cluster tests run against: started once per
//! run by `tests/run.sh` (tests/cluster/up.sh), found through
//! `SWITCHYARD_CLUSTER_ENV`, a fresh namespace per test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::get;
use super::netns::Netns;

pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub env: HashMap<String, String>,
}

/// Connects to the test control plane, or fails loudly when there is none.
pub async fn cluster() -> Cluster {
    let env_file = std::env::var("SWITCHYARD_CLUSTER_ENV").unwrap_or_else(|_| {
        panic!(
            "NO TEST CONTROL PLANE: the cluster end-to-end tests need a real kube-apiserver + etcd. \
             Run `bash tests/run.sh` (it builds and starts one), or start one with \
             `tests/cluster/up.sh DIR` and set SWITCHYARD_CLUSTER_ENV=DIR/env."
        )
    });
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| panic!("cannot read {env_file}: {e}"));
    let env: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    let kubeconfig = PathBuf::from(&env["KUBECONFIG"]);
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig).unwrap(), &KubeConfigOptions::default())
            .await
            .unwrap();
    Cluster { client: Client::try_from(config).unwrap(), kubeconfig, env }
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Creates a namespace no other test uses.
    pub async fn fresh_namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}-{}", std::process::id(), NEXT_NS.fetch_add(1, Ordering::Relaxed));
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        name
    }

    /// Server-side applies `object` (JSON with apiVersion, kind, metadata).
    pub async fn apply<K>(&self, namespace: Option<&str>, object: serde_json::Value) -> K
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace.unwrap());
        api.patch(&name, &PatchParams::apply("switchyard-e2e").force(), &Patch::Apply(&object)).await.unwrap()
    }
}

impl Cluster {
    /// Installs (server-side applies) the BalancerPolicy CRD and waits until
    /// it is Established. Idempotent: tests running at once may all call it.
    pub async fn install_crd(&self) {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crd: CustomResourceDefinition = serde_yaml::from_str(&switchyard_crds::crd_yaml()).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        api.patch(&name, &PatchParams::apply("switchyard-e2e").force(), &Patch::Apply(&crd)).await.unwrap();
        for _ in 0..200 {
            let crd = api.get(&name).await.unwrap();
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("CRD {name} not established in 10 s");
    }
}

// --- Shared fixtures: a Service, its EndpointSlice and an Ingress, as JSON ---

/// A Service `name` (port 80 → 8080), as JSON.
pub fn service_json(ns: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// An EndpointSlice as the endpoint controller would write it:
/// `(pod, address, ready)`.
pub fn slice(ns: &str, svc: &str, endpoints: &[(&str, std::net::SocketAddr, bool)]) -> serde_json::Value {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(pod, addr, ready)| {
            json!({"addresses": [addr.ip().to_string()], "conditions": {"ready": ready},
                   "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-abc"), "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps})
}

pub fn ingress(ns: &str, name: &str, class: Option<&str>, host: &str, svc: &str) -> serde_json::Value {
    let mut spec = json!({"rules": [{"host": host, "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]});
    if let Some(class) = class {
        spec["ingressClassName"] = json!(class);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A fresh namespace with Service `web` and `n` echo backends (`web-1`…)
/// in a new network namespace (kept alive by the returned value); the
/// EndpointSlice lists the first `listed` of them, ready.
pub async fn web_backends(
    c: &Cluster,
    prefix: &str,
    n: u8,
    listed: usize,
) -> (String, Netns, Vec<(String, SocketAddr)>) {
    let ns = c.fresh_namespace(prefix).await;
    let mut net = Netns::create(n);
    let eps: Vec<_> = (0..n)
        .map(|i| {
            (format!("web-{}", i + 1), net.start_echo(env!("CARGO_BIN_EXE_switchyard"), i, &format!("web-{}", i + 1)))
        })
        .collect();
    c.apply::<k8s_openapi::api::core::v1::Service>(Some(&ns), service_json(&ns, "web")).await;
    let ready: Vec<_> = eps.iter().take(listed).map(|(pod, a)| (pod.as_str(), *a, true)).collect();
    c.apply::<k8s_openapi::api::discovery::v1::EndpointSlice>(Some(&ns), slice(&ns, "web", &ready)).await;
    (ns, net, eps)
}

/// [`web_backends`] with one backend.
pub async fn one_backend(c: &Cluster, prefix: &str) -> (String, Netns) {
    let (ns, net, _) = web_backends(c, prefix, 1, 1).await;
    (ns, net)
}

pub async fn backend_of(p: std::net::SocketAddr, host: &str) -> Option<String> {
    get(p, host, "/").await.ok().filter(|r| r.status == http::StatusCode::OK).map(|r| r.backend())
}

pub async fn status_ips(c: &Cluster, ns: &str, name: &str) -> Vec<String> {
    let ing =
        Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(c.client.clone(), ns).get(name).await.unwrap();
    ing.status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

/// `kubectl` 1.33 where the image has it, else the default one.
pub fn kubectl(kubeconfig: &std::path::Path, cache_dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let versioned = std::path::Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.33");
    let program = if versioned.exists() { versioned } else { std::path::Path::new("/usr/bin/kubectl") };
    let out = std::process::Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache_dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The echo backend that answered a plain HTTP/1.1 request sent as raw
/// bytes over a TCP service port (`None` if the port refused or closed).
pub async fn backend_over_tcp(port: u16) -> Option<String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET / HTTP/1.1\r\nHost: tcp.test\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut reply = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut reply))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&reply);
    let body = text.split_once("\r\n\r\n")?.1;
    let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    json["backend"].as_str().map(String::from)
}
