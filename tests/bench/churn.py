"""S7: a Service with 10,000 endpoints, 10% of them replaced every second
while keep-alive load runs through switchyard standalone; errors and p99
against the same load without churn.

Endpoints are 127.0.0.1 on 10,000 distinct ports: two echo processes
(`switchyard echo --ports`) listen on 5,500 consecutive ports each, so the
1,000 spare ports that replace endpoints are live too (a replaced
endpoint's in-flight requests still finish, as a terminating pod's would).
The endpoints are written as 100 files of 100 EndpointSlices (one port per
slice); each second 10 files get a spare group of 100 ports, the way 10%
of a Deployment's pods would be replaced.
"""

import os
import random
import subprocess
import threading
import time

import load
import procs
import targets as tg

GROUP = 100          # endpoints per file
ACTIVE = 100         # files (groups) in the EndpointSlices at any time
SPARE = 10           # groups not listed, swapped in each second
CHURN_PER_S = 10     # groups replaced each second (10% of the endpoints)
HOST = "churn." + tg.HOST


def _free_base(count, avoid=()):
    """The first port of `count` consecutive free ports in 10000-60999
    (outside `avoid`), checked by binding each. Ports of the ephemeral
    range are fine: a bound port is not handed out to outgoing
    connections."""
    import socket
    for base in range(10000, 61000 - count, 250):
        if any(lo <= base + count and base <= hi for lo, hi in avoid):
            continue
        socks, ok = [], True
        try:
            for p in range(base, base + count):
                s = socket.socket()
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
                finally:
                    socks.append(s)
        finally:
            for s in socks:
                s.close()
        if ok:
            return base
    raise RuntimeError(f"no {count} consecutive free ports in 10000-60999")


def _group_yaml(group, ports):
    docs = []
    for i in range(GROUP):
        port = ports[group * GROUP + i]
        docs.append(f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: churn-{port}, namespace: bench, labels: {{kubernetes.io/service-name: churn}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
""")
    return "".join(docs)


def _write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def start(binary, work):
    """Starts the echo processes and a switchyard whose manifests list
    ACTIVE groups; returns (target, state) for `measure`."""
    total = (ACTIVE + SPARE) * GROUP
    half = total // 2
    # Two echo processes (each within the open-files limit), each on its
    # own run of consecutive ports.
    first = _free_base(half)
    second = _free_base(half, avoid=[(first, first + half)])
    ports = list(range(first, first + half)) + list(range(second, second + half))
    echoes = [
        procs.start([binary, "echo", "--addr", f"127.0.0.1:{start}", "--ports", str(half), "--name", f"churn-{k}"],
                    os.path.join(work, f"churn-echo-{k}.log"), tg.LOAD_CORE)
        for k, start in enumerate((first, second))
    ]
    directory = os.path.join(work, "manifests-churn")
    os.makedirs(directory, exist_ok=True)
    _write(os.path.join(directory, "service.yaml"), f"""apiVersion: v1
kind: Service
metadata: {{name: churn, namespace: bench}}
spec: {{ports: [{{name: http, port: 80}}]}}
{tg.ingress("churn", HOST).replace("name: bench, port", "name: churn, port")}""")
    slots = list(range(ACTIVE))          # file k lists group slots[k]
    spare = list(range(ACTIVE, ACTIVE + SPARE))
    for k, group in enumerate(slots):
        _write(os.path.join(directory, f"slices-{k:03}.yaml"), _group_yaml(group, ports))
    http_port, admin_port = procs.free_port(), procs.free_port()
    argv = [binary, "standalone", "--manifests", directory, "--http-addr", f"127.0.0.1:{http_port}",
            "--admin-addr", f"127.0.0.1:{admin_port}", "--workers", "1", "--log", "warn"]
    proc = procs.start(argv, os.path.join(work, "switchyard-churn.log"), tg.PROXY_CORE)
    target = tg.Target("switchyard-churn", http_port, None, proc)
    # Every port is listening before the proxy is asked to use them.
    deadline = time.monotonic() + 60
    while not all(_listening(p) for p in (first, first + half - 1, second, second + half - 1)):
        if time.monotonic() > deadline:
            raise RuntimeError("the churn echo backends did not start")
        time.sleep(0.2)
    procs.wait_http(http_port, HOST, timeout=120)
    return target, {"dir": directory, "ports": ports, "slots": slots, "spare": spare, "procs": [proc] + echoes}


def stop(state):
    for p in state["procs"]:
        procs.stop(p)


def _listening(port):
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _churn(state, stop, changes):
    rng = random.Random(7)
    while not stop.wait(1.0):
        files = rng.sample(range(ACTIVE), CHURN_PER_S)
        for k in files:
            new = state["spare"].pop(0)
            state["spare"].append(state["slots"][k])
            state["slots"][k] = new
            _write(os.path.join(state["dir"], f"slices-{k:03}.yaml"), _group_yaml(new, state["ports"]))
        changes.append(len(files) * GROUP)


def measure(target, state, duration_s, connections, churn):
    """One wrk run on the churn host, with or without the churn thread."""
    url = f"http://127.0.0.1:{target.http_port}/bytes/64"
    stop, changes = threading.Event(), []
    thread = threading.Thread(target=_churn, args=(state, stop, changes), daemon=True) if churn else None
    if thread:
        thread.start()
    try:
        r = load.measured(target.pids(), lambda: load.wrk(url, duration_s, connections, host=HOST))
    finally:
        stop.set()
        if thread:
            thread.join()
    r["endpoints_replaced"] = sum(changes)
    return r
