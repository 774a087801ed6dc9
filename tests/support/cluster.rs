//! The real control plane the cluster tests run against: started once per
//! run by `tests/run.sh` (tests/cluster/up.sh), found through
//! `SWITCHYARD_CLUSTER_ENV`, a fresh namespace per test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
