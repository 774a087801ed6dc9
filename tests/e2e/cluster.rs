//! End-to-end on a real kube-apiserver + etcd (started by `tests/run.sh`):
//! the controller watches the API, serves real traffic to backends in a
//! network namespace, writes Ingress status as the elected leader, and
//! records Events. Each test uses a fresh namespace.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::StatusCode;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use support::cluster::*;
use support::*;

const PUBLISHED: &str = "198.18.255.1";
const WAIT: Duration = Duration::from_secs(20);

fn run_args<'a>(ns: &'a str, lease: &'a str) -> Vec<&'a str> {
    vec!["--watch-namespace", ns, "--election-namespace", ns, "--publish-address", PUBLISHED, "--lease-duration", lease]
}

/// The distinct backends seen over `n` requests.
async fn spread(p: std::net::SocketAddr, host: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        if let Some(b) = backend_of(p, host).await {
            seen.insert(b);
        }
    }
    seen
}

/// Prints p50/p99 of `switchyard_config_propagation_seconds` (bucket upper
/// bounds) for the README's figures.
async fn report_propagation(admin: std::net::SocketAddr) {
    let text = get(admin, "x", "/metrics").await.unwrap().body;
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("switchyard_config_propagation_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once('"')?;
            Some((le.parse().unwrap_or(f64::INFINITY), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let quantile = |q: f64| buckets.iter().find(|(_, n)| *n >= q * total).map_or(f64::NAN, |b| b.0);
    eprintln!(
        "config propagation over {total} changes: p50 <= {} s, p99 <= {} s (histogram bucket bounds)",
        quantile(0.5),
        quantile(0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_lifecycle_endpoint_scaling_and_readiness() {
    let c = cluster().await;
    let (ns, mut net, eps) = web_backends(&c, "lifecycle", 3, 1).await;
    let ctl = Switchyard::start_run(&c.kubeconfig, &run_args(&ns, "15s"), true).await;
    let p = ctl.http;

    // Create → routed.
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "web", Some("switchyard"), "a.test", "web")).await;
    wait_for("a.test routed", WAIT, || async { backend_of(p, "a.test").await.filter(|b| b == "web-1") }).await;
    // Status written by the (only) leader.
    wait_for("Ingress status", WAIT, || async {
        let ips = status_ips(&c, &ns, "web").await;
        (ips == [PUBLISHED]).then_some(())
    })
    .await;

    // Change the host → new routing, old host gone.
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "web", Some("switchyard"), "b.test", "web")).await;
    wait_for("b.test routed", WAIT, || async { backend_of(p, "b.test").await }).await;
    assert_eq!(get(p, "a.test", "/").await.unwrap().status, StatusCode::NOT_FOUND);

    // Scale up: traffic spreads over all three.
    let all: Vec<_> = eps.iter().map(|(pod, a)| (pod.as_str(), *a, true)).collect();
    c.apply::<EndpointSlice>(Some(&ns), slice(&ns, "web", &all)).await;
    wait_for("spread over 3", WAIT, || async { (spread(p, "b.test", 6).await.len() == 3).then_some(()) }).await;

    // web-2 turns not ready: it gets no more traffic.
    let mut degraded = all.clone();
    degraded[1].2 = false;
    c.apply::<EndpointSlice>(Some(&ns), slice(&ns, "web", &degraded)).await;
    wait_for("web-2 out", WAIT, || async { (!spread(p, "b.test", 4).await.contains("web-2")).then_some(()) }).await;
    let seen = spread(p, "b.test", 30).await;
    assert_eq!(seen, BTreeSet::from(["web-1".to_string(), "web-3".to_string()]));

    // Scale down to one.
    c.apply::<EndpointSlice>(Some(&ns), slice(&ns, "web", &[("web-3", eps[2].1, true)])).await;
    wait_for("only web-3", WAIT, || async {
        (spread(p, "b.test", 6).await == BTreeSet::from(["web-3".to_string()])).then_some(())
    })
    .await;

    // Delete → 404.
    Api::<Ingress>::namespaced(c.client.clone(), &ns).delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("404 after delete", WAIT, || async {
        (get(p, "b.test", "/").await.ok()?.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    net.stop_echo("web-1");
    let propagation = metric(ctl.admin, "switchyard_config_propagation_seconds_count").await.unwrap_or(0.0);
    assert!(propagation >= 5.0, "propagation histogram counts each applied change, got {propagation}");
    report_propagation(ctl.admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_class_filtering() {
    let c = cluster().await;
    let (ns, _net) = one_backend(&c, "classes").await;
    let classes = Api::<IngressClass>::all(c.client.clone());
    let ours = format!("ours-{ns}");
    let theirs = format!("theirs-{ns}");
    for (name, controller) in [(&ours, "switchyard.dev/ingress-controller"), (&theirs, "example.com/other")] {
        let class = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": name},
                           "spec": {"controller": controller}});
        classes.patch(name, &PatchParams::apply("switchyard-e2e").force(), &Patch::Apply(&class)).await.unwrap();
    }
    let ctl = Switchyard::start_run(&c.kubeconfig, &run_args(&ns, "15s"), true).await;
    let p = ctl.http;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "by-class", Some(&ours), "ours.test", "web")).await;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "theirs", Some(&theirs), "theirs.test", "web")).await;
    let mut annotated = ingress(&ns, "annotated", None, "annotated.test", "web");
    annotated["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": "switchyard"});
    c.apply::<Ingress>(Some(&ns), annotated).await;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "classless", None, "none.test", "web")).await;

    wait_for("ours.test", WAIT, || async { backend_of(p, "ours.test").await }).await;
    wait_for("annotated.test", WAIT, || async { backend_of(p, "annotated.test").await }).await;
    wait_for("status on ours", WAIT, || async { (status_ips(&c, &ns, "by-class").await == [PUBLISHED]).then_some(()) })
        .await;
    wait_for("status on annotated", WAIT, || async {
        (status_ips(&c, &ns, "annotated").await == [PUBLISHED]).then_some(())
    })
    .await;
    assert_eq!(get(p, "theirs.test", "/").await.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(get(p, "none.test", "/").await.unwrap().status, StatusCode::NOT_FOUND);
    assert!(status_ips(&c, &ns, "theirs").await.is_empty(), "another controller's Ingress gets no status from us");

    // Our class becomes the default: the class-less Ingress is now ours.
    let default = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": ours, "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "switchyard.dev/ingress-controller"}});
    classes.patch(&ours, &PatchParams::apply("switchyard-e2e").force(), &Patch::Apply(&default)).await.unwrap();
    wait_for("none.test via default class", WAIT, || async { backend_of(p, "none.test").await }).await;
    assert_eq!(get(p, "theirs.test", "/").await.unwrap().status, StatusCode::NOT_FOUND);
    for name in [&ours, &theirs] {
        classes.delete(name, &DeleteParams::default()).await.unwrap();
    }
    // With the class gone, only the annotation (naming --ingress-class) still routes.
    wait_for("by-class unrouted", WAIT, || async {
        (get(p, "ours.test", "/").await.ok()?.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(backend_of(p, "annotated.test").await.is_some());
    wait_for("status cleared when no longer ours", WAIT, || async {
        status_ips(&c, &ns, "by-class").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_failover_takes_over() {
    let c = cluster().await;
    let (ns, _net) = one_backend(&c, "leader").await;
    let args = run_args(&ns, "3s");
    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b"] {
        replicas.push((
            name,
            Switchyard::start_run(&c.kubeconfig, &[&args[..], &["--pod-name", name]].concat(), true).await,
        ));
    }
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "one", Some("switchyard"), "one.test", "web")).await;
    // A broken Ingress: the leader records an Event for it.
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "broken", Some("switchyard"), "broken.test", "missing")).await;

    // Both replicas serve traffic.
    for (_, r) in &replicas {
        wait_for("served by each replica", WAIT, || async { backend_of(r.http, "one.test").await }).await;
    }
    wait_for("status", WAIT, || async { (status_ips(&c, &ns, "one").await == [PUBLISHED]).then_some(()) }).await;
    let leader = wait_for("exactly one leader", WAIT, || async {
        let mut flags = Vec::new();
        for (_, r) in &replicas {
            flags.push(metric(r.admin, "switchyard_leader").await?);
        }
        (flags.iter().sum::<f64>() == 1.0).then(|| flags.iter().position(|f| *f == 1.0).unwrap())
    })
    .await;
    let follower = 1 - leader;
    let lease = Api::<Lease>::namespaced(c.client.clone(), &ns).get("switchyard-leader").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(replicas[leader].0));
    let writes = |admin| async move {
        metric(admin, r#"switchyard_status_writes_total{kind="Ingress",result="ok"}"#).await.unwrap_or(0.0)
    };
    assert!(writes(replicas[leader].1.admin).await >= 1.0, "the leader wrote status");
    assert_eq!(writes(replicas[follower].1.admin).await, 0.0, "the follower never writes status");
    let event = wait_for("Event for the broken Ingress", WAIT, || async {
        let list = Api::<Event>::namespaced(c.client.clone(), &ns).list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken"))
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("ServiceNotFound"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    // Kill the leader outright (no chance to release the Lease).
    replicas[leader].1.signal("KILL");
    let _ = replicas[leader].1.wait_exit(Duration::from_secs(5)).await;
    let survivor = &replicas[follower].1;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "two", Some("switchyard"), "two.test", "web")).await;
    wait_for("survivor leads", WAIT, || async {
        (metric(survivor.admin, "switchyard_leader").await? == 1.0).then_some(())
    })
    .await;
    wait_for("survivor writes status", WAIT, || async {
        (status_ips(&c, &ns, "two").await == [PUBLISHED]).then_some(())
    })
    .await;
    let lease = Api::<Lease>::namespaced(c.client.clone(), &ns).get("switchyard-leader").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(replicas[follower].0));
    assert!(backend_of(survivor.http, "two.test").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_service_load_balancer_address_is_written() {
    let c = cluster().await;
    let ns = c.fresh_namespace("publish").await;
    // The controller's own LoadBalancer Service, as a cloud controller would
    // have filled its status.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "switchyard", "namespace": ns},
                     "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    c.apply::<k8s_openapi::api::core::v1::Service>(Some(&ns), svc).await;
    let lb = |ip: &str| json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}, {"hostname": "lb.example.test"}]}}});
    let services = Api::<k8s_openapi::api::core::v1::Service>::namespaced(c.client.clone(), &ns);
    let merge = PatchParams::default();
    services.patch_status("switchyard", &merge, &Patch::Merge(&lb("198.18.254.7"))).await.unwrap();
    let publish = format!("{ns}/switchyard");
    let ctl = Switchyard::start_run(
        &c.kubeconfig,
        &[
            "--watch-namespace",
            &ns,
            "--election-namespace",
            &ns,
            "--publish-service",
            &publish,
            "--lease-duration",
            "3s",
        ],
        true,
    )
    .await;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "web", Some("switchyard"), "a.test", "web")).await;
    let read = || async {
        let ing = Api::<Ingress>::namespaced(c.client.clone(), &ns).get("web").await.ok()?;
        let list = ing.status?.load_balancer?.ingress?;
        Some(list.into_iter().map(|i| i.ip.or(i.hostname).unwrap_or_default()).collect::<Vec<_>>())
    };
    wait_for("status from the publish Service", WAIT, || async {
        read().await.filter(|l| l == &["198.18.254.7".to_string(), "lb.example.test".to_string()])
    })
    .await;
    // The cloud changes the address: the Ingress follows.
    services.patch_status("switchyard", &merge, &Patch::Merge(&lb("198.18.254.8"))).await.unwrap();
    wait_for("status follows the publish Service", WAIT, || async {
        read().await.filter(|l| l.first().map(String::as_str) == Some("198.18.254.8"))
    })
    .await;
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_policy_is_applied_and_its_status_written_by_the_leader() {
    use switchyard_crds::BalancerPolicy;
    let c = cluster().await;
    let (ns, mut net, _) = web_backends(&c, "policy", 2, 2).await;
    let ctl = Switchyard::start_run(&c.kubeconfig, &run_args(&ns, "15s"), true).await;
    // Installed while the controller runs: its policy watch picks it up.
    c.install_crd().await;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "web", Some("switchyard"), "a.test", "web")).await;
    let bp = |name: &str, target: &str, body: serde_json::Value| {
        let mut spec = json!({"targetRef": {"kind": "Service", "name": target}});
        spec.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "BalancerPolicy",
               "metadata": {"name": name, "namespace": ns}, "spec": spec})
    };
    c.apply::<BalancerPolicy>(
        Some(&ns),
        bp(
            "sticky",
            "web",
            json!({"algorithm": "RoundRobin", "sessionAffinity": {"type": "Cookie", "cookie": {"name": "SY"}}}),
        ),
    )
    .await;
    // The policy applies: the first answer sets the affinity cookie, and the cookie pins.
    let cookie = wait_for("affinity cookie", WAIT, || async {
        let r = get(ctl.http, "a.test", "/").await.ok()?;
        r.headers.get("set-cookie").map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
    })
    .await;
    let pinned = {
        let req =
            http::Request::get(format!("http://{}/", ctl.http)).header("host", "a.test").header("cookie", &cookie);
        send(ctl.http, req.body(Default::default()).unwrap()).await.unwrap().backend()
    };
    for _ in 0..10 {
        let req =
            http::Request::get(format!("http://{}/", ctl.http)).header("host", "a.test").header("cookie", &cookie);
        assert_eq!(send(ctl.http, req.body(Default::default()).unwrap()).await.unwrap().backend(), pinned);
    }
    // A second policy on the same Service is rejected; one with a missing target is unresolved.
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has 1 s resolution
    c.apply::<BalancerPolicy>(Some(&ns), bp("rival", "web", json!({"algorithm": "LeastConnections"}))).await;
    c.apply::<BalancerPolicy>(Some(&ns), bp("orphan", "missing", json!({"algorithm": "IPHash"}))).await;
    let api = Api::<BalancerPolicy>::namespaced(c.client.clone(), &ns);
    let condition = |name: &'static str, kind: &'static str| {
        let api = api.clone();
        async move {
            let p = api.get(name).await.ok()?;
            let status = p.status?;
            let c = status.conditions.into_iter().find(|c| c.type_ == kind)?;
            Some((c.status, c.reason, c.observed_generation))
        }
    };
    let got = wait_for("sticky accepted", WAIT, || condition("sticky", "Accepted")).await;
    assert_eq!(got, ("True".into(), "Accepted".into(), Some(1)));
    let got = wait_for("rival conflicted", WAIT, || async {
        condition("rival", "Accepted").await.filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(got.1, "PolicyConflict");
    let got = wait_for("orphan unresolved", WAIT, || async {
        condition("orphan", "ResolvedRefs").await.filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(got.1, "TargetNotFound");
    assert_eq!(condition("sticky", "ResolvedRefs").await.unwrap().0, "True");
    net.stop_echo("web-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_and_terminating_endpoints_stop_new_traffic_but_keep_sticky_sessions() {
    use switchyard_crds::BalancerPolicy;
    let c = cluster().await;
    let (ns, _net, eps) = web_backends(&c, "drain", 3, 3).await;
    let with = |conditions: &[serde_json::Value]| {
        let mut s = slice(&ns, "web", &eps.iter().map(|(p, a)| (p.as_str(), *a, true)).collect::<Vec<_>>());
        for (ep, cond) in s["endpoints"].as_array_mut().unwrap().iter_mut().zip(conditions) {
            ep["conditions"] = cond.clone();
        }
        s
    };
    let ready = json!({"ready": true});
    let ctl = Switchyard::start_run(&c.kubeconfig, &run_args(&ns, "15s"), true).await;
    c.install_crd().await;
    c.apply::<BalancerPolicy>(
        Some(&ns),
        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "BalancerPolicy", "metadata": {"name": "web", "namespace": ns},
               "spec": {"targetRef": {"kind": "Service", "name": "web"}, "sessionAffinity": {"type": "Cookie"}}}),
    )
    .await;
    c.apply::<Ingress>(Some(&ns), ingress(&ns, "web", Some("switchyard"), "a.test", "web")).await;
    // A client pinned to some endpoint.
    let (cookie, pinned) = wait_for("affinity cookie", WAIT, || async {
        let r = get(ctl.http, "a.test", "/").await.ok()?;
        let cookie = r.headers.get("set-cookie")?.to_str().unwrap().split(';').next().unwrap().to_string();
        Some((cookie, r.backend()))
    })
    .await;
    let pinned_index = eps.iter().position(|(p, _)| *p == pinned).unwrap();
    let other = (pinned_index + 1) % 3;
    // The pinned endpoint starts terminating but still serves; another turns not ready.
    let mut conditions = vec![ready.clone(), ready.clone(), ready.clone()];
    conditions[pinned_index] = json!({"ready": false, "serving": true, "terminating": true});
    conditions[other] = json!({"ready": false});
    c.apply::<EndpointSlice>(Some(&ns), with(&conditions)).await;
    let remaining = &eps[3 - pinned_index - other].0;
    wait_for("new traffic only to the ready endpoint", WAIT, || async {
        (spread(ctl.http, "a.test", 6).await == BTreeSet::from([remaining.clone()])).then_some(())
    })
    .await;
    let with_cookie = || async {
        let req =
            http::Request::get(format!("http://{}/", ctl.http)).header("host", "a.test").header("cookie", &cookie);
        send(ctl.http, req.body(Default::default()).unwrap()).await.unwrap().backend()
    };
    for _ in 0..10 {
        assert_eq!(with_cookie().await, pinned, "the session on the terminating endpoint keeps working");
    }
    // Removed from the slice: the session moves.
    let mut s = with(&conditions);
    s["endpoints"].as_array_mut().unwrap().remove(pinned_index);
    c.apply::<EndpointSlice>(Some(&ns), s).await;
    wait_for("session re-pinned after removal", WAIT, || async { (with_cookie().await == *remaining).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_secrets_from_the_api_serve_rotate_and_a_broken_one_gets_an_event() {
    use k8s_openapi::api::core::v1::Secret;
    use support::tls::{Ca, served_cert, tls_secret_json};
    let c = cluster().await;
    let (ns, _net) = one_backend(&c, "tls").await;
    let https = free_addr();
    let https_flag = https.to_string();
    let ctl = Switchyard::start_run(
        &c.kubeconfig,
        &[&run_args(&ns, "15s")[..], &["--https-addr", &https_flag]].concat(),
        true,
    )
    .await;
    let ca = Ca::new();
    let (a, a2, stranger) = (ca.leaf(&["a.test"]), ca.leaf(&["a.test"]), ca.leaf(&["b.test"]));
    c.apply::<Secret>(Some(&ns), tls_secret_json(&ns, "a-tls", &a.cert_pem, &a.key_pem)).await;
    // b-tls's key belongs to another certificate.
    c.apply::<Secret>(Some(&ns), tls_secret_json(&ns, "b-tls", &stranger.cert_pem, &a.key_pem)).await;
    for (name, host, secret) in [("a", "a.test", "a-tls"), ("b", "b.test", "b-tls")] {
        let mut ing = ingress(&ns, name, Some("switchyard"), host, "web");
        ing["spec"]["tls"] = json!([{"hosts": [host], "secretName": secret}]);
        c.apply::<Ingress>(Some(&ns), ing).await;
    }
    wait_for("a.test's certificate", WAIT, || async {
        (served_cert(https, Some("a.test")).await == a.der).then_some(())
    })
    .await;
    let default = served_cert(https, Some("b.test")).await;
    assert_ne!(default, stranger.der, "the broken Secret is not served");
    let event = wait_for("Event for the broken TLS Secret", WAIT, || async {
        let list = Api::<Event>::namespaced(c.client.clone(), &ns).list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("b"))
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("InvalidTLSSecret"));
    assert!(event.note.as_deref().unwrap_or("").contains("does not match"), "{event:?}");
    // Plain HTTP to a.test is redirected; b.test (no usable certificate) is served.
    let r = get(ctl.http, "a.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(get(ctl.http, "b.test", "/").await.unwrap().status, StatusCode::OK);

    // Rotation through the API: the next handshake gets the new certificate.
    let changed = Instant::now();
    c.apply::<Secret>(Some(&ns), tls_secret_json(&ns, "a-tls", &a2.cert_pem, &a2.key_pem)).await;
    wait_for("rotated certificate", WAIT, || async {
        (served_cert(https, Some("a.test")).await == a2.der).then_some(())
    })
    .await;
    eprintln!("rotated Secret served {:?} after the API write", changed.elapsed());
}
