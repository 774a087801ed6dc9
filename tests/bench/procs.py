"""Processes the suite starts, and what /proc says about them.

Every process is started here, remembered by PID, and stopped by that PID
in `stop_all` (SIGTERM, then SIGKILL for anything left, including the
children nginx forked). Nothing else is ever signalled.
"""

import os
import signal
import socket
import subprocess
import time

TICK = os.sysconf("SC_CLK_TCK")
_started = []  # Popen objects, in start order


def pin(core):
    """`taskset` prefix for `core` (empty on a single-core machine)."""
    if os.cpu_count() and os.cpu_count() >= 2:
        return ["taskset", "-c", str(core)]
    return []


def start(argv, log_path, core):
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(pin(core) + argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _started.append(proc)
    return proc


def children(pid):
    """PIDs whose parent is `pid` (nginx workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def stop_all():
    procs = list(reversed(_started))
    _started.clear()
    kids = []
    for p in procs:
        if p.poll() is None:
            kids += children(p.pid)
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cpu_seconds(pids):
    """utime + stime of `pids`, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_kb(pids):
    """Sum of VmRSS of `pids`, in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def tcp_passive_opens():
    """System-wide count of accepted TCP connections (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("PassiveOpens")])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, host, path="/bytes/64", timeout=60.0, tls=False):
    """Waits until GET `path` with `host` answers 200 on `port`."""
    import http.client
    import ssl

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ctx)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                return
            last = f"status {resp.status}"
        except OSError as err:
            last = str(err)
        time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port} (Host {host}) not serving after {timeout:.0f}s: {last}")


def stop(proc):
    """Stops one process started by `start`."""
    if proc in _started:
        _started.remove(proc)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
