"""Load generators, all pinned on the load core and bounded in time:
wrk (closed loop, latency distribution), h2load (fixed request rate,
per-request log) and small asyncio clients for WebSockets and idle
keep-alive connections.
"""

import asyncio
import os
import re
import subprocess
import tempfile
import time

import procs
from targets import HOST, LOAD_CORE

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def measured(pids, fn):
    """Runs `fn()` and adds the CPU seconds `pids` spent meanwhile."""
    before = procs.cpu_seconds(pids)
    result = fn()
    result["cpu_s"] = procs.cpu_seconds(pids) - before
    result["rss_kb"] = procs.rss_kb(pids)
    return result


def wrk(url, duration_s, connections, headers=(), timeout_s=5, host=HOST):
    argv = procs.pin(LOAD_CORE) + ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", f"--timeout={timeout_s}s",
                                   "--latency", "-H", f"Host: {host}"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=duration_s + 30).stdout
    total = re.search(r"(\d+) requests in", out)
    if not total:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return {
        "requests": int(total.group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(dist["50"]),
        "p99_ms": _ms(dist["99"]),
        "errors": errors,
    }


def h2load_rate(url, duration_s, connections, rate):
    """HTTP/1.1 at a fixed total request rate; p50/p99 from the per-request log."""
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        argv = procs.pin(LOAD_CORE) + ["h2load", "--h1", "-t1", f"-c{connections}", f"-D{duration_s}",
                                       f"--rps={max(1.0, rate / connections):.2f}", f"--log-file={log.name}",
                                       "-H", f":authority: {HOST}", url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30).stdout
        rows = [line.split("\t") for line in open(log.name) if line.strip()]
    if not rows:
        raise RuntimeError(f"h2load made no requests:\n{out}")
    lat = sorted(int(r[2]) / 1000.0 for r in rows)
    errors = sum(1 for r in rows if not r[1].startswith("2"))
    m = re.search(r"(\d+) failed", out)
    errors += int(m.group(1)) if m else 0
    return {
        "requests": len(rows),
        "rps": len(rows) / duration_s,
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "errors": errors,
    }


# === WebSocket ===

WS_PAYLOAD = b"m" * 32
# Client frames must be masked; a zero masking key leaves the payload as is,
# so one frame is built once and sent many times.
WS_FRAME = bytes([0x81, 0x80 | len(WS_PAYLOAD)]) + b"\0\0\0\0" + WS_PAYLOAD
WS_REPLY_LEN = 2 + len(b"bench:") + len(WS_PAYLOAD)  # unmasked text frame `bench:<payload>`


async def _ws_open(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"WebSocket upgrade refused: {head[:80]!r}")
    return reader, writer


async def _ws_echo(port, duration_s, connections, window):
    deadline = time.monotonic() + duration_s
    batch = WS_FRAME * window
    counts = [0] * connections

    async def one(i):
        reader, writer = await _ws_open(port)
        first = True
        while time.monotonic() < deadline:
            writer.write(batch)
            data = await asyncio.wait_for(reader.readexactly(WS_REPLY_LEN * window), 10)
            if first and data[2:WS_REPLY_LEN] != b"bench:" + WS_PAYLOAD:
                raise RuntimeError(f"unexpected WebSocket echo {data[:WS_REPLY_LEN]!r}")
            first = False
            counts[i] += window
        writer.close()

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(connections)))
    return sum(counts), time.monotonic() - start


def ws_echo(port, duration_s, connections=16, window=32):
    msgs, elapsed = asyncio.run(_ws_echo(port, duration_s, connections, window))
    return {"requests": msgs, "rps": msgs / elapsed, "errors": 0}


# === idle connections ===

async def _hold(port, count, opener, measure, settle_s):
    sem = asyncio.Semaphore(256)
    conns = []

    async def open_one():
        async with sem:
            conns.append(await opener(port))

    await asyncio.gather(*(open_one() for _ in range(count)))
    await asyncio.sleep(settle_s)
    result = measure()
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(0.5)
    return result


async def _keepalive_open(port):
    """A connection that has served one small request and is now idle."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /bytes/64 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200") or not m:
        raise RuntimeError(f"unexpected response {head[:80]!r}")
    await reader.readexactly(int(m.group(1)))
    return reader, writer


def hold_idle(port, count, measure, websocket=False, settle_s=1.0):
    """Opens `count` idle connections (keep-alive after one request, or
    WebSockets), waits, returns `measure()` taken while they are open."""
    return asyncio.run(_hold(port, count, _ws_open if websocket else _keepalive_open, measure, settle_s))


def raise_nofile(n):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard) if hard != resource.RLIM_INFINITY else n
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

