"""S8: how long a new Ingress written into the standalone manifests
directory takes until its host is first served with 200, while other
traffic keeps flowing (its errors are counted).

The polling client, the keep-alive load and the summary are shared with
the variant through the API server (route_change_api.py).
"""

import http.client
import os
import re
import signal
import subprocess
import time

import procs
import targets


def poll_until_served(port, host, timeout_s):
    """GETs `host` on `port` every 0.5 ms (one keep-alive connection)
    until it answers 200; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        while time.monotonic() < deadline:
            try:
                conn.request("GET", "/bytes/64", headers={"Host": host})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            time.sleep(0.0005)
        return False
    finally:
        conn.close()


def start_load(url, seconds, host=targets.HOST):
    """wrk: 8 keep-alive connections on `host` for `seconds`, on the load core."""
    return subprocess.Popen(
        procs.pin(targets.LOAD_CORE) + ["wrk", "-t1", "-c8", f"-d{seconds}s", "--timeout=2s", "--latency",
                                        "-H", f"Host: {host}", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load_errors(wrk, timeout_s, stop=False):
    """Waits for `wrk` (after SIGINT, which makes it stop and report, when
    `stop`) and returns the failed requests it saw (non-2xx/3xx responses
    and socket errors) and the requests it completed (None if its output
    was not understood)."""
    if stop and wrk.poll() is None:
        wrk.send_signal(signal.SIGINT)
    try:
        out, _ = wrk.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        wrk.kill()
        wrk.communicate()
        raise RuntimeError(f"wrk did not finish in {timeout_s:.0f} s") from None
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    total = re.search(r"(\d+) requests in", out)
    return errors, int(total.group(1)) if total else None


def summary(trials, latencies, errors):
    latencies = sorted(latencies)
    return {
        "trials": trials,
        "served": len(latencies),
        "p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "max_ms": latencies[-1] if latencies else None,
        "latencies_ms": [round(x, 2) for x in latencies],
        "errors": errors,
    }


def measure(target, trials, timeout_s=10.0):
    """Adds `trials` Ingresses one by one; returns latencies (ms) and the
    errors seen meanwhile by 8 keep-alive connections on an existing host."""
    load_s = int(trials * 1.5 + 3)
    wrk = start_load(target.url("/bytes/64"), load_s)
    latencies, missing = [], 0
    try:
        time.sleep(0.5)
        for k in range(trials):
            host = f"new{k}-{os.getpid()}.{targets.HOST}"
            path = os.path.join(target.manifests, f"new-{k}.yaml")
            with open(path + ".tmp", "w") as f:
                f.write(targets.ingress(f"new-{k}", host))
            start = time.monotonic()
            os.rename(path + ".tmp", path)
            if poll_until_served(target.http_port, host, timeout_s):
                latencies.append((time.monotonic() - start) * 1000.0)
            else:
                missing += 1
            time.sleep(0.3)
    finally:
        errors, _ = load_errors(wrk, load_s + 30)
    return summary(trials, latencies, missing + errors)
