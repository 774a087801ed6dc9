//! The Helm chart, with the real `helm` (built by tests/cluster/build.sh) on
//! the real control plane: lint, the checked-in render, the values schema,
//! install, the controller running with the chart's own ServiceAccount
//! identity (proving the RBAC sufficient and not excessive), upgrade and
//! uninstall.

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use support::cluster::*;
use support::*;
use switchyard_crds::BalancerPolicy;

const WAIT: Duration = Duration::from_secs(30);
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/switchyard");
const RENDERED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/switchyard.yaml");
/// The address the test's "cloud" assigns to the chart's LoadBalancer Service.
const LB_IP: &str = "198.18.254.7";

/// `helm` with its state in a private directory and the test cluster's
/// admin kubeconfig.
struct Helm {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new(c: &Cluster) -> Self {
        let bin =
            PathBuf::from(c.env.get("HELM").expect("HELM missing from the cluster env file (tests/cluster/up.sh)"));
        assert!(bin.exists(), "{} does not exist: run tests/cluster/build.sh helm", bin.display());
        Self { bin, kubeconfig: c.kubeconfig.clone(), home: tempfile::tempdir().unwrap() }
    }

    /// Runs helm; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let h = self.home.path();
        let out = Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_DATA_HOME", h.join("data"))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "helm {} failed:\n{out}\n{err}", args.join(" "));
        out
    }
}

/// The YAML documents of a multi-document stream, as JSON values.
fn documents(text: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_renders_the_checked_in_manifest_and_its_schema_rejects_bad_values() {
    let c = cluster().await;
    let helm = Helm::new(&c);
    let lint = helm.ok(&["lint", "--strict", CHART]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    // deploy/switchyard.yaml is the default render (regenerate with UPDATE_DEPLOY=1).
    let rendered = helm.ok(&["template", "switchyard", CHART, "--namespace", "switchyard", "--include-crds"]);
    if std::env::var_os("UPDATE_DEPLOY").is_some() {
        std::fs::write(RENDERED, &rendered).unwrap();
    }
    let checked_in = std::fs::read_to_string(RENDERED).unwrap();
    assert!(
        checked_in == rendered,
        "deploy/switchyard.yaml differs from `helm template switchyard charts/switchyard --namespace switchyard \
         --include-crds`: regenerate it with UPDATE_DEPLOY=1 cargo test --test chart"
    );

    // The defaults run safely: a restricted pod, probes on the admin port, a drain window.
    let docs = documents(&rendered);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "IngressClass",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in the default render: {kinds:?}");
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap() > 0);
    let ports: Vec<u64> =
        container["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_u64().unwrap()).collect();
    assert!(ports.iter().all(|p| *p >= 1024), "no privileged port needed: {ports:?}");
    let lb_svc = docs.iter().find(|d| d["kind"] == "Service" && d["spec"]["type"] == "LoadBalancer").unwrap();
    let service_ports: Vec<u64> =
        lb_svc["spec"]["ports"].as_array().unwrap().iter().map(|p| p["port"].as_u64().unwrap()).collect();
    assert_eq!(service_ports, [80, 443]);
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--publish-service=switchyard/switchyard"), "{args:?}");
    assert!(args.contains(&"--tls-session-cache=10000"), "{args:?}");
    // The chart's crds/ holds the generated CRD byte for byte.
    assert_eq!(
        std::fs::read_to_string(Path::new(CHART).join("crds/balancerpolicies.switchyard.dev.yaml")).unwrap(),
        switchyard_crds::crd_yaml()
    );

    // values.schema.json rejects wrong types, bad enums, bad durations and unknown keys.
    for (set, complaint) in [
        ("replicaCount=two", "/replicaCount"),
        ("controller.leaseDuration=15", "/controller/leaseDuration"),
        ("controller.drainTimeout=soon", "/controller/drainTimeout"),
        ("service.type=Ingress", "/service/type"),
        ("service.externalTrafficPolicy=Everywhere", "/service/externalTrafficPolicy"),
        ("containerPorts.http=70000", "/containerPorts/http"),
        ("podAntiAffinity=always", "/podAntiAffinity"),
        ("controller.logFormat=xml", "/controller/logFormat"),
        ("controller.tlsMinVersion=1.1", "/controller/tlsMinVersion"),
        ("controller.tlsSessionCache=-1", "/controller/tlsSessionCache"),
        ("controller.defaultSSLCertificate=no-slash", "/controller/defaultSSLCertificate"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        ("tcpServices.99999=db/pg:5432", "99999"),
        ("tcpServices.5432=no-namespace:5432", "/tcpServices/5432"),
        ("controller.proxyProtocol=maybe", "/controller/proxyProtocol"),
    ] {
        let (ok, _, err) = helm.run(&["template", "x", CHART, "--set", set]);
        assert!(!ok && err.contains(complaint), "--set {set} must be rejected naming {complaint}; stderr:\n{err}");
    }
}

/// A kubeconfig for the API server that authenticates with `token`.
fn token_kubeconfig(c: &Cluster, dir: &Path, token: &str) -> PathBuf {
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "test", "cluster": {"server": c.env["KUBE_APISERVER_URL"],
                                                  "certificate-authority": c.env["KUBE_CA_FILE"]}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
    });
    let path = dir.join("sa.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

async fn client_for(kubeconfig: &Path) -> Client {
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(kubeconfig).unwrap(), &KubeConfigOptions::default())
            .await
            .unwrap();
    Client::try_from(config).unwrap()
}

/// The result is a 403 from the API server.
fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden for the chart's identity, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_and_its_service_account_runs_the_controller() {
    let c = cluster().await;
    let helm = Helm::new(&c);
    let release_ns = c.fresh_namespace("chart").await;
    let (app_ns, _net) = one_backend(&c, "chart-app").await;
    // Cluster-scoped names (ClusterRole, IngressClass) are unique to this run.
    let release = release_ns.clone();
    let class = format!("{release_ns}-class");
    // A TCP service: its port is bound by the test's controller process.
    let tcp_port = free_addr().port();
    let values = [
        format!("ingressClass.name={class}"),
        format!("controller.watchNamespace={app_ns}"),
        "controller.leaseDuration=5s".to_string(),
        format!("tcpServices.{tcp_port}={app_ns}/web:80"),
    ];
    let mut install = vec!["install", &release, CHART, "--namespace", &release_ns];
    for v in &values {
        install.extend(["--set", v]);
    }
    let out = helm.ok(&install);
    eprintln!("$ helm {}\n{out}", install.join(" "));
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("kubectl get service"), "NOTES.txt tells how to find the address:\n{out}");

    // Every object of the release exists; the CRD is established and explained.
    let manifest = helm.ok(&["get", "manifest", &release, "--namespace", &release_ns]);
    let manifest_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(manifest_file.path(), &manifest).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (ok, listed) =
        kubectl(&c.kubeconfig, cache.path(), &["get", "-f", manifest_file.path().to_str().unwrap(), "-o", "name"]);
    assert!(ok, "{listed}");
    let names: Vec<&str> = listed.lines().collect();
    assert_eq!(names.len(), documents(&manifest).len(), "{listed}");
    for expected in [
        format!("deployment.apps/{release}-switchyard"),
        format!("service/{release}-switchyard"),
        format!("service/{release}-switchyard-metrics"),
        format!("serviceaccount/{release}-switchyard"),
        format!("clusterrole.rbac.authorization.k8s.io/{release}-switchyard"),
        format!("role.rbac.authorization.k8s.io/{release}-switchyard"),
        format!("ingressclass.networking.k8s.io/{class}"),
        format!("poddisruptionbudget.policy/{release}-switchyard"),
        format!("configmap/{release}-switchyard-tcp-services"),
    ] {
        assert!(names.contains(&expected.as_str()), "{expected} not installed:\n{listed}");
    }
    let crds = Api::<CustomResourceDefinition>::all(c.client.clone());
    let crd = crds.get("balancerpolicies.switchyard.dev").await.unwrap();
    assert!(crd.status.unwrap().conditions.unwrap().iter().any(|c| c.type_ == "Established" && c.status == "True"));
    let explained = wait_for("kubectl explain balancerpolicy.spec", WAIT, || async {
        let fresh = tempfile::tempdir().unwrap();
        let (ok, text) = kubectl(&c.kubeconfig, fresh.path(), &["explain", "balancerpolicy.spec"]);
        (ok && text.contains("targetRef")).then_some(text)
    })
    .await;
    assert!(explained.contains("algorithm"), "{explained}");

    // The first-application example is accepted as written.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/web-app.yaml");
    let (ok, applied) = kubectl(&c.kubeconfig, cache.path(), &["apply", "-n", &release_ns, "-f", example]);
    assert!(ok && applied.matches(" created").count() == 3, "{applied}");

    // The controller, with the installed Deployment's flags and environment,
    // authenticated as the chart's ServiceAccount (a bound token), not admin.
    let fullname = format!("{release}-switchyard");
    let deployment = Api::<Deployment>::namespaced(c.client.clone(), &release_ns).get(&fullname).await.unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(fullname.as_str()));
    let container = &pod.containers[0];
    let https = free_addr().to_string();
    let flags: Vec<String> = container
        .args
        .clone()
        .unwrap()
        .into_iter()
        .skip(1) // `run`
        // The test's own listener, worker and log flags replace the pod's.
        .filter(|a| {
            !["--http-addr=", "--admin-addr=", "--workers=", "--drain-timeout=", "--log="]
                .iter()
                .any(|p| a.starts_with(p))
        })
        .map(|a| if a.starts_with("--https-addr=") { format!("--https-addr={https}") } else { a })
        .collect();
    assert!(flags.contains(&format!("--publish-service={release_ns}/{fullname}")), "{flags:?}");
    let token = Api::<ServiceAccount>::namespaced(c.client.clone(), &release_ns)
        .create_token_request(
            &fullname,
            &PostParams::default(),
            &serde_json::from_value::<TokenRequest>(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
                .unwrap(),
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .expect("a token");
    let dir = tempfile::tempdir().unwrap();
    let sa_kubeconfig = token_kubeconfig(&c, dir.path(), &token);
    let pod_name = format!("{fullname}-7d9f-abcde");
    let env = [("POD_NAMESPACE", release_ns.as_str()), ("POD_NAME", pod_name.as_str())];
    // The "cloud" assigns the LoadBalancer an address.
    let svc = Api::<Service>::namespaced(c.client.clone(), &release_ns);
    let lb = json!({"status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}});
    svc.patch_status(&fullname, &PatchParams::default(), &Patch::Merge(&lb)).await.unwrap();
    c.install_crd().await;

    let ctl = Switchyard::start_run_env(&sa_kubeconfig, &flags, &env).await;
    c.apply::<Ingress>(Some(&app_ns), ingress(&app_ns, "web", Some(&class), "chart.test", "web")).await;
    c.apply::<Ingress>(Some(&app_ns), ingress(&app_ns, "broken", Some(&class), "broken.test", "missing")).await;
    let policy = json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "BalancerPolicy",
        "metadata": {"name": "web", "namespace": app_ns},
        "spec": {"targetRef": {"kind": "Service", "name": "web"}, "algorithm": "LeastConnections"}});
    c.apply::<BalancerPolicy>(Some(&app_ns), policy).await;

    // Watches and serves, the TCP service too (the chart's ConfigMap, read
    // by the ServiceAccount).
    let backend = wait_for("traffic served", WAIT, || async { backend_of(ctl.http, "chart.test").await }).await;
    assert_eq!(backend, "web-1");
    let backend = wait_for("TCP service served", WAIT, || backend_over_tcp(tcp_port)).await;
    assert_eq!(backend, "web-1");
    let service = svc.get(&fullname).await.unwrap();
    let ports: Vec<i32> = service.spec.unwrap().ports.unwrap().iter().map(|p| p.port).collect();
    assert!(ports.contains(&i32::from(tcp_port)), "the Service exposes the TCP service port: {ports:?}");
    // Takes the Lease in its own namespace.
    let holder = wait_for("Lease held", WAIT, || async {
        let lease =
            Api::<Lease>::namespaced(c.client.clone(), &release_ns).get_opt("switchyard-leader").await.ok()??;
        lease.spec?.holder_identity
    })
    .await;
    assert_eq!(holder, pod_name);
    // Writes Ingress status (from its own Service) and BalancerPolicy status.
    wait_for("Ingress status", WAIT, || async { (status_ips(&c, &app_ns, "web").await == [LB_IP]).then_some(()) })
        .await;
    let policies = Api::<BalancerPolicy>::namespaced(c.client.clone(), &app_ns);
    wait_for("BalancerPolicy Accepted", WAIT, || async {
        let status = policies.get("web").await.ok()?.status?;
        status.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "True").then_some(())
    })
    .await;
    // Records Events.
    let event = wait_for("Event for the broken Ingress", WAIT, || async {
        let list = Api::<Event>::namespaced(c.client.clone(), &app_ns).list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken"))
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("ServiceNotFound"));
    let log = ctl.log_text();
    // (API errors read "... is forbidden: User ...", reason Forbidden.)
    assert!(!log.to_lowercase().contains("forbidden"), "permission errors in the log:\n{log}");

    // ... and no more than that.
    let sa = client_for(&sa_kubeconfig).await;
    forbidden("list ConfigMaps cluster-wide", Api::<ConfigMap>::all(sa.clone()).list(&ListParams::default()).await);
    forbidden(
        "list ConfigMaps in its namespace",
        Api::<ConfigMap>::namespaced(sa.clone(), &release_ns).list(&ListParams::default()).await,
    );
    forbidden(
        "read another ConfigMap in its namespace",
        Api::<ConfigMap>::namespaced(sa.clone(), &release_ns).get("kube-root-ca.crt").await,
    );
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "stolen"}, "stringData": {"k": "v"}})).unwrap();
    forbidden(
        "create a Secret",
        Api::<Secret>::namespaced(sa.clone(), &app_ns).create(&PostParams::default(), &secret).await,
    );
    let ingresses = Api::<Ingress>::namespaced(sa.clone(), &app_ns);
    let spec_change = json!({"spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
    forbidden(
        "patch an Ingress spec",
        ingresses.patch("web", &PatchParams::default(), &Patch::Merge(&spec_change)).await,
    );
    forbidden("delete an Ingress", ingresses.delete("web", &Default::default()).await);
    let other_lease: Lease = serde_json::from_value(json!({"metadata": {"name": "switchyard-leader"}})).unwrap();
    forbidden(
        "create a Lease outside its namespace",
        Api::<Lease>::namespaced(sa.clone(), &app_ns).create(&PostParams::default(), &other_lease).await,
    );
    forbidden("read another Lease", Api::<Lease>::namespaced(sa.clone(), &release_ns).get("someone-else").await);
    forbidden("list Pods", Api::<k8s_openapi::api::core::v1::Pod>::all(sa.clone()).list(&ListParams::default()).await);
    forbidden("edit its own ClusterRole", {
        let grab = json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
        Api::<ClusterRole>::all(sa.clone()).patch(&fullname, &PatchParams::default(), &Patch::Merge(&grab)).await
    });
    drop(ctl);

    // Upgrade with changed values: applied; a bad value is refused and changes nothing.
    let mut upgrade = vec!["upgrade", &release, CHART, "--namespace", &release_ns, "--reuse-values"];
    upgrade.extend(["--set", "replicaCount=3", "--set", "controller.shutdownDelay=7s"]);
    helm.ok(&upgrade);
    let deployments = Api::<Deployment>::namespaced(c.client.clone(), &release_ns);
    let upgraded = deployments.get(&fullname).await.unwrap();
    assert_eq!(upgraded.spec.as_ref().unwrap().replicas, Some(3));
    let args = upgraded.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(args.contains(&"--shutdown-delay=7s".to_string()), "{args:?}");
    assert!(
        args.contains(&format!("--watch-namespace={app_ns}")),
        "--reuse-values kept the install's values: {args:?}"
    );
    let (ok, _, err) = helm.run(&[
        "upgrade",
        &release,
        CHART,
        "--namespace",
        &release_ns,
        "--reuse-values",
        "--set",
        "replicaCount=-1",
    ]);
    assert!(!ok && err.contains("/replicaCount"), "{err}");
    let history = helm.ok(&["history", &release, "--namespace", &release_ns]);
    assert_eq!(history.lines().count(), 3, "header + 2 revisions:\n{history}");
    assert_eq!(deployments.get(&fullname).await.unwrap().spec.unwrap().replicas, Some(3));

    // Uninstall removes the release's objects, cluster-scoped ones included, and keeps the CRD.
    helm.ok(&["uninstall", &release, "--namespace", &release_ns]);
    assert!(deployments.get_opt(&fullname).await.unwrap().is_none());
    assert!(svc.get_opt(&fullname).await.unwrap().is_none());
    assert!(Api::<ClusterRole>::all(c.client.clone()).get_opt(&fullname).await.unwrap().is_none());
    assert!(Api::<IngressClass>::all(c.client.clone()).get_opt(&class).await.unwrap().is_none());
    assert!(crds.get_opt("balancerpolicies.switchyard.dev").await.unwrap().is_some(), "CRDs stay on uninstall");
}
