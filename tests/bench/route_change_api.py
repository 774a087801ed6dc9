#!/usr/bin/env python3
"""S8 through the API server: how long a new Ingress created with a POST
to a real kube-apiserver takes until its host is first served with 200 by
`switchyard run`, with 10 and with 5,000 Ingresses already served, while 8
keep-alive connections load an existing host (their errors are counted).

A throwaway control plane (etcd + kube-apiserver on loopback,
tests/cluster/up.sh) is started for the phase and stopped with down.sh,
whatever happens. EndpointSlice validation rejects loopback addresses, so
the echo backend runs as the cluster tests' backends do: in a network
namespace of its own, joined to the host by a veth pair, on an address of
198.19.0.0/16 (RFC 2544 benchmarking range; needs root). Per size N, a
fresh namespace gets the Service `bench` (its EndpointSlice names that
echo backend), N Ingresses with one host each (created by several
threads, each on its own keep-alive HTTPS connection) and its own
`switchyard run --watch-namespace` (core 0, one worker, writing Ingress
status as the leader with `--publish-address`). Trials start once every host is served and every
status is written. A trial: POST one Ingress for a new host, then poll
that host through switchyard every 0.5 ms; latency = from just before the
POST to the first 200. Recorded with it: how long the POST took and the
controller's own `switchyard_config_propagation_seconds` for that change
(watch event received to snapshot live, 20 ms debounce included), so
that the rest is the API server's watch delivery and the polling.

Only the standard library talks to the API server (http.client + ssl,
the admin client certificate up.sh made). Traffic stays on this machine:
loopback, and the veth pair into the backend's namespace.

    python3 tests/bench/route_change_api.py --binary target/release/switchyard --sizes 10,5000 --trials 7
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import procs
import route_change
import targets as tg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER_SCRIPTS = os.path.join(ROOT, "tests", "cluster")
PUBLISHED = "198.18.255.1"  # written into Ingress status only (benchmarking range; never dialled)
CLASS = "switchyard"
CONTROLLER = "switchyard.dev/ingress-controller"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# === the backend: an echo server that an EndpointSlice may name ===

def _ip(*args):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


class Netns:
    """A network namespace `198.19.S.0/24` joined to the host by a veth pair
    (host side `.1`, the namespace `.10`), as tests/support/netns.rs makes
    for the cluster tests (which use 198.18.0.0/16), with `switchyard echo`
    inside it on port 8080 (pinned on the load core)."""

    def __init__(self):
        if os.geteuid() != 0:
            raise RuntimeError("S8 through the API server needs root: its backend lives in a network namespace "
                               "(EndpointSlices may not name loopback addresses)")
        pid = os.getpid()
        self.name = f"sy-bench-{pid}"
        self.host_if = f"sybench{pid % 10_000_000}"
        self.subnet = 20 + pid % 200
        self.addr = f"198.19.{self.subnet}.10"
        self.port = 8080
        self.made = False
        self.echo = None

    def create(self):
        _ip("netns", "add", self.name)
        self.made = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.name)
        _ip("addr", "add", f"198.19.{self.subnet}.1/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        _ip("netns", "exec", self.name, "ip", "link", "set", "eth0", "up")
        _ip("netns", "exec", self.name, "ip", "addr", "add", f"{self.addr}/24", "dev", "eth0")
        return self

    def start_echo(self, binary, work):
        # `ip netns exec` execs the command: the PID is the echo server's.
        self.echo = procs.start(["ip", "netns", "exec", self.name, binary, "echo", "--addr",
                                 f"{self.addr}:{self.port}", "--name", "bench", "--workers", "1"],
                                os.path.join(work, "echo-netns.log"), tg.LOAD_CORE)
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection(self.addr, self.port, timeout=1)
                conn.request("GET", "/bytes/64", headers={"Host": tg.HOST})
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    return
            except OSError:
                pass
            if self.echo.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"echo backend on {self.addr}:{self.port} (namespace {self.name}) did not start")
            time.sleep(0.05)

    def delete(self):
        if self.echo is not None:
            procs.stop(self.echo)
            self.echo = None
        if self.made:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)  # gone with the peer
            self.made = False


# === the control plane ===

class ControlPlane:
    """tests/cluster/up.sh DIR ... down.sh DIR."""

    def __init__(self, directory):
        self.dir = directory
        self.env = {}

    def up(self, timeout_s=1800):
        """Starts etcd + kube-apiserver (on the load core; up.sh builds the
        binaries first if they are not cached, which takes many minutes).
        Raises with up.sh's output when the cluster does not come up."""
        started = time.monotonic()
        try:
            r = subprocess.run(procs.pin(tg.LOAD_CORE) + ["bash", os.path.join(CLUSTER_SCRIPTS, "up.sh"), self.dir],
                               capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            out = (err.stderr or b"")[-3000:]
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise RuntimeError(f"tests/cluster/up.sh did not finish in {timeout_s} s:\n{out}") from None
        if r.returncode != 0:
            raise RuntimeError(f"the test control plane did not start (tests/cluster/up.sh exited "
                               f"{r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        env_file = os.path.join(self.dir, "env")
        with open(env_file) as f:
            for line in f:
                m = re.match(r"export (\w+)=(.*)$", line.strip())
                if m:
                    self.env[m.group(1)] = m.group(2).strip("'")
        log(f"  control plane up in {time.monotonic() - started:.1f} s: {self.env['KUBE_APISERVER_URL']}")
        return self

    def down(self):
        """Stops exactly what up.sh started (down.sh reads DIR/pids)."""
        r = subprocess.run(["bash", os.path.join(CLUSTER_SCRIPTS, "down.sh"), self.dir],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            log(f"  WARNING: tests/cluster/down.sh exited {r.returncode}:\n{(r.stdout + r.stderr)[-2000:]}")


class ApiError(RuntimeError):
    pass


class Api:
    """A minimal client of the API server: JSON (or YAML) over one
    keep-alive HTTPS connection per thread, as the admin (client
    certificate from up.sh's PKI)."""

    def __init__(self, url, pki):
        m = re.match(r"https://([^:/]+):(\d+)$", url)
        self.host, self.port = m.group(1), int(m.group(2))
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.local = threading.local()

    def _conn(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
            self.local.conn = conn
        return conn

    def close(self):
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None

    def request(self, method, path, body=None, content_type="application/json", ok=(200, 201)):
        """Returns the decoded JSON answer. Retries a broken connection and
        throttling (429) a few times; raises ApiError on any other status."""
        data = body if isinstance(body, (bytes, type(None))) else (
            body.encode() if isinstance(body, str) else json.dumps(body).encode())
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(5):
            try:
                conn = self._conn()
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read()
            except (OSError, http.client.HTTPException) as err:
                self.close()
                if attempt == 4:
                    raise ApiError(f"{method} {path}: {err!r}") from None
                time.sleep(0.05 * (attempt + 1))
                continue
            if resp.status == 429 and attempt < 4:
                time.sleep(float(resp.getheader("Retry-After") or 0.1))
                continue
            if resp.status not in ok:
                raise ApiError(f"{method} {path}: HTTP {resp.status}: {text[:500].decode(errors='replace')}")
            return json.loads(text) if text else None
        raise ApiError(f"{method} {path}: throttled")

    def create(self, path, obj, content_type="application/json"):
        return self.request("POST", path, obj, content_type=content_type, ok=(201,))


def ingress_path(ns):
    return f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses"


def ingress(ns, name, host):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": ns},
            "spec": {"ingressClassName": CLASS, "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "bench", "port": {"number": 80}}}}]}}]}}


def install_cluster_objects(api, binary):
    """The BalancerPolicy CRD (from `switchyard crd`, posted as YAML) and
    our IngressClass, as a Helm install would leave them."""
    crd_yaml = subprocess.run([binary, "crd"], capture_output=True, text=True, check=True, timeout=30).stdout
    crd = api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd_yaml,
                     content_type="application/yaml")
    name = crd["metadata"]["name"]
    deadline = time.monotonic() + 30
    while True:
        got = api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = (got.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"CRD {name} not Established after 30 s")
        time.sleep(0.05)
    api.create("/apis/networking.k8s.io/v1/ingressclasses",
               {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": CLASS},
                "spec": {"controller": CONTROLLER}})


def install_namespace(api, ns, backend):
    """Namespace, Service `bench` and its EndpointSlice: the echo backend, ready."""
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.create(f"/api/v1/namespaces/{ns}/services",
               {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench", "namespace": ns},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backend.port}]}})
    api.create(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
               {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "bench-1", "namespace": ns, "labels": {"kubernetes.io/service-name": "bench"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": backend.port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [backend.addr], "conditions": {"ready": True},
                               "targetRef": {"kind": "Pod", "name": "bench-echo", "namespace": ns}}]})


def create_ingresses(api, ns, hosts, threads, timeout_s=600):
    """Creates one Ingress per host, `threads` POSTs at a time. Returns
    the seconds it took and the host whose POST was answered last."""
    next_item = [0]
    lock = threading.Lock()
    stop = threading.Event()
    errors = []
    last = [None]
    deadline = time.monotonic() + timeout_s

    def worker():
        try:
            while not stop.is_set():
                with lock:
                    i = next_item[0]
                    if i >= len(hosts):
                        return
                    next_item[0] += 1
                host = hosts[i]
                if time.monotonic() > deadline:
                    raise RuntimeError(f"creating {len(hosts)} Ingresses took over {timeout_s} s")
                api.create(ingress_path(ns), ingress(ns, f"bench-{i}", host))
                with lock:
                    last[0] = host
        except Exception as err:  # reported by the caller
            errors.append(err)
            stop.set()
        finally:
            api.close()

    started = time.monotonic()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    try:
        for t in pool:
            t.start()
        for t in pool:
            t.join(max(1.0, deadline + 60 - time.monotonic()))
    finally:
        stop.set()  # on an interrupt: the workers finish their current POST and stop
        for t in pool:
            t.join(35)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in pool):
        raise RuntimeError("Ingress creation threads did not finish")
    return time.monotonic() - started, last[0]


# === switchyard run ===

def start_switchyard(binary, work, kubeconfig, ns, name, status=True):
    http_port, admin_port = procs.free_port(), procs.free_port()
    argv = [binary, "run", "--kubeconfig", kubeconfig, "--watch-namespace", ns, "--election-namespace", ns,
            "--http-addr", f"127.0.0.1:{http_port}", "--admin-addr", f"127.0.0.1:{admin_port}", "--workers", "1",
            "--shutdown-delay", "0s", "--drain-timeout", "2s", "--log", "info"]
    if status:
        argv += ["--publish-address", PUBLISHED]
    log_path = os.path.join(work, f"{name}.log")
    proc = procs.start(argv, log_path, tg.PROXY_CORE)
    t = tg.Target(name, http_port, None, proc)
    t.admin_port = admin_port
    t.log = log_path
    return t


def log_tail(t, n=3000):
    try:
        with open(t.log) as f:
            return f.read()[-n:]
    except OSError:
        return ""


def admin_get(t, path):
    conn = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def wait_ready(t, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if t.proc.poll() is not None:
            raise RuntimeError(f"{t.name} exited with {t.proc.returncode}:\n{log_tail(t)}")
        try:
            if admin_get(t, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{t.name}: /readyz not 200 after {timeout_s} s:\n{log_tail(t)}")


def metrics(t):
    """Propagation histogram sum (s) and count, and the Ingress status writes (ok, error)."""
    _, text = admin_get(t, "/metrics")

    def value(pattern):
        m = re.search(r"^" + pattern + r"\s+(\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    return {
        "prop_sum": value(r"switchyard_config_propagation_seconds_sum"),
        "prop_count": value(r"switchyard_config_propagation_seconds_count"),
        "status_ok": value(r'switchyard_status_writes_total\{kind="Ingress",result="ok"\}'),
        "status_error": value(r'switchyard_status_writes_total\{kind="Ingress",result="error"\}'),
    }


def wait_all_served(t, hosts, last, timeout_s=300):
    """Waits until `last` answers 200 (the seconds it took), then checks
    every one of `hosts` over one keep-alive connection, retrying any that
    does not answer 200 yet (the seconds the sweep took)."""
    started = time.monotonic()
    if not route_change.poll_until_served(t.http_port, last, timeout_s):
        raise RuntimeError(f"{t.name}: {last} not served after {timeout_s} s:\n{log_tail(t)}")
    served_s = time.monotonic() - started
    deadline = time.monotonic() + timeout_s
    pending = list(hosts)
    conn = http.client.HTTPConnection("127.0.0.1", t.http_port, timeout=5)
    try:
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{t.name}: {len(pending)} hosts (e.g. {pending[0]}) not served after "
                                   f"{timeout_s} s:\n{log_tail(t)}")
            retry = []
            for host in pending:
                try:
                    conn.request("GET", "/bytes/64", headers={"Host": host})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        retry.append(host)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", t.http_port, timeout=5)
                    retry.append(host)
            pending = retry
            if pending:
                time.sleep(0.05)
    finally:
        conn.close()
    return served_s, time.monotonic() - started - served_s


def wait_status(t, want, timeout_s):
    """Waits until `want` Ingress status writes succeeded; the seconds it took, or None."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        m = metrics(t)
        if m["status_ok"] >= want:
            return time.monotonic() - started
        time.sleep(0.002 if timeout_s <= 10 else 0.1)
    return None


# === one size ===

def measure_size(api, binary, work, kubeconfig, n, trials, backend, threads=8, status=True, timeout_s=10.0):
    ns = f"s8api-{n}"
    install_namespace(api, ns, backend)
    t = start_switchyard(binary, work, kubeconfig, ns, f"switchyard-run-{n}-ingresses", status)
    try:
        wait_ready(t)
        hosts = tg.route_hosts(n)
        create_s, last = create_ingresses(api, ns, hosts, threads)
        log(f"  S8-API {n} Ingresses: created in {create_s:.1f} s ({n / create_s:.0f}/s, {threads} connections)")
        served_s, sweep_s = wait_all_served(t, hosts, last)
        log(f"  S8-API {n} Ingresses: the last one served {served_s:.2f} s after its POST; "
            f"all {n} hosts checked (200) in {sweep_s:.1f} s more")
        status_s = None
        if status:
            status_s = wait_status(t, n, 600)
            if status_s is None:
                log(f"  WARNING: {t.name}: fewer than {n} Ingress status writes after 600 s: {metrics(t)}")
            else:
                status_s += served_s + sweep_s
                log(f"  S8-API {n} Ingresses: every status written {status_s:.1f} s after the last POST")
        time.sleep(0.5)  # let the last status-triggered recompile pass

        latencies, per_trial, missing = [], [], 0
        # wrk runs until stopped (SIGINT) after the trials; its own limit
        # only bounds it if this process dies without stopping it.
        wrk = route_change.start_load(t.url("/bytes/64"), int(trials * (timeout_s + 12) + 60))
        try:
            time.sleep(0.5)
            for k in range(trials):
                host = f"new{k}-{os.getpid()}.{tg.HOST}"
                before = metrics(t)
                start = time.monotonic()
                api.create(ingress_path(ns), ingress(ns, f"new-{k}", host))
                posted = time.monotonic()
                trial = {"post_ms": round((posted - start) * 1000.0, 2)}
                if route_change.poll_until_served(t.http_port, host, timeout_s):
                    latency = (time.monotonic() - start) * 1000.0
                    latencies.append(latency)
                    trial["latency_ms"] = round(latency, 2)
                else:
                    missing += 1
                    log(f"  S8-API {n}: {host} not served after {timeout_s} s")
                after = metrics(t)
                # One recompile for this change: its watch-event-to-live time.
                if after["prop_count"] - before["prop_count"] == 1:
                    trial["propagation_ms"] = round((after["prop_sum"] - before["prop_sum"]) * 1000.0, 2)
                if status and wait_status(t, before["status_ok"] + 1, 10) is not None:
                    trial["status_ms"] = round((time.monotonic() - start) * 1000.0, 1)
                per_trial.append(trial)
                time.sleep(0.3)
        finally:
            errors, requests = route_change.load_errors(wrk, 30, stop=True)
        if requests is None:
            raise RuntimeError("wrk (the load during the trials) did not report")
        r = route_change.summary(trials, latencies, missing + errors)
        r.update(create_s=round(create_s, 2), served_s=round(served_s, 3), sweep_s=round(sweep_s, 2),
                 status_s=round(status_s, 2) if status_s is not None else None,
                 per_trial=per_trial, load_requests=requests,
                 rss_kb=procs.rss_kb(t.pids()))
        return r
    finally:
        procs.stop(t.proc)


def measure(binary, work, sizes, trials, threads=8, status=True, keep=False):
    """The whole phase: backend and control plane up, each size, all down.
    Returns {n: result} and the phase's wall time in seconds."""
    started = time.monotonic()
    cluster_dir = tempfile.mkdtemp(prefix="cluster.", dir=work)
    cp = ControlPlane(cluster_dir)
    backend = Netns()
    out = {}
    try:
        backend.create().start_echo(binary, work)
        cp.up()
        api = Api(cp.env["KUBE_APISERVER_URL"], os.path.join(cluster_dir, "pki"))
        install_cluster_objects(api, binary)
        for n in sizes:
            out[n] = measure_size(api, binary, work, cp.env["KUBECONFIG"], n, trials, backend, threads, status)
            r = out[n]
            log(f"  S8-API {n} Ingresses: {r['latencies_ms']} ms, {r['errors']} errors")
            for k, tr in enumerate(r["per_trial"]):
                log(f"    trial {k + 1}: first 200 after {tr.get('latency_ms')} ms; POST answered after "
                    f"{tr['post_ms']} ms; watch event to snapshot live {tr.get('propagation_ms')} ms; "
                    f"status written after {tr.get('status_ms')} ms")
        api.close()
    finally:
        try:
            backend.delete()
        finally:
            cp.down()
            if keep:
                log(f"  cluster directory kept: {cluster_dir}")
            else:
                shutil.rmtree(cluster_dir, ignore_errors=True)
    return out, time.monotonic() - started


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--sizes", default="10,5000", help="existing Ingresses, comma-separated")
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--threads", type=int, default=8, help="concurrent connections creating the Ingresses")
    p.add_argument("--no-status", action="store_true", help="no --publish-address: switchyard writes no status")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, cluster PKI)")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",") if s]
    binary = os.path.abspath(a.binary)
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {tg.LOAD_CORE})
    work = tempfile.mkdtemp(prefix="switchyard-bench-api.")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        out, wall = measure(binary, work, sizes, a.trials, threads=a.threads, status=not a.no_status, keep=a.keep)
    finally:
        procs.stop_all()
        if a.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"S8-API": out, "S8-API-elapsed_s": round(wall, 1)}, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"S8-API": out, "S8-API-elapsed_s": round(wall, 1)}, f, indent=1)
    log(f"phase took {wall:.1f} s")
    return 1 if any(r["errors"] for r in out.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
