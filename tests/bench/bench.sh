#!/usr/bin/env bash
# Benchmark scaffold: wrk against an echo backend directly and through
# `switchyard standalone`, side by side in one run, and the ratio.
#
#   bash tests/bench/bench.sh            # 3 interleaved rounds of 10 s each
#   ROUNDS=1 DURATION=3s bash tests/bench/bench.sh   # quick smoke run
#
# The proxy is pinned alone on core 0 with one worker; wrk and the backend
# share core 1. Proxy CPU per request comes from /proc/<pid>/stat (utime +
# stime), the most stable figure on a noisy machine. All traffic stays on
# loopback; every load run is bounded by DURATION.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/bytes/64}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian)" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq wrk >/dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null
    fi
fi
CORES=$(nproc)
# Core pinning prefixes (empty on a single-core machine). Arrays, not a
# shell function, so that `$!` is the PID of the process itself.
if [ "$CORES" -ge 2 ]; then PIN0=(taskset -c 0); PIN1=(taskset -c 1); else PIN0=(); PIN1=(); fi

(cd "$ROOT" && cargo build --release --bin switchyard -q)
BIN="$ROOT/target/release/switchyard"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=$(free_port); PROXY_PORT=$(free_port); ADMIN_PORT=$(free_port)

"${PIN1[@]}" "$BIN" echo --addr "127.0.0.1:$BACKEND_PORT" --name bench --workers 1 2>"$WORK/echo.log" &
PIDS+=($!)

mkdir -p "$WORK/manifests"
cat >"$WORK/manifests/bench.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: bench}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-1, namespace: bench, labels: {kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{name: http, port: $BACKEND_PORT}]
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bench, namespace: bench}
spec:
  ingressClassName: switchyard
  rules:
  - host: bench.local
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: bench, port: {number: 80}}}}]
YAML

"${PIN0[@]}" "$BIN" standalone --manifests "$WORK/manifests" --http-addr "127.0.0.1:$PROXY_PORT" \
    --admin-addr "127.0.0.1:$ADMIN_PORT" --workers 1 --log warn 2>"$WORK/proxy.log" &
PROXY_PID=$!
PIDS+=("$PROXY_PID")

for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs -H 'Host: bench.local' "http://127.0.0.1:$PROXY_PORT$PATH_UNDER_TEST" >/dev/null \
    || { echo "proxy not serving; log:" >&2; cat "$WORK/proxy.log" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# run NAME PORT -> appends "name rps p99_ms cpu_us_per_req" to results
run() {
    local name=$1 port=$2 before after out
    before=$(cpu_ticks "$PROXY_PID")
    out=$("${PIN1[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H 'Host: bench.local' \
        "http://127.0.0.1:$port$PATH_UNDER_TEST")
    after=$(cpu_ticks "$PROXY_PID")
    python3 - "$name" "$before" "$after" "$TICK" <<PY >>"$WORK/results"
import re, sys
name, before, after, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = """$out"""
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?timeout)\D+(\d+)", out))
cpu_us = (after - before) / tick * 1e6 / total if name == "switchyard" else 0.0
print(name, rps, p99, cpu_us, errors)
PY
}

echo "benchmark: $ROUNDS round(s) x $DURATION, $CONNECTIONS connections, GET $PATH_UNDER_TEST" >&2
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    run direct "$BACKEND_PORT"
    run switchyard "$PROXY_PORT"
done

python3 - "$WORK/results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
def med(name, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == name)
d_rps, s_rps = med("direct", 1), med("switchyard", 1)
d_p99, s_p99 = med("direct", 2), med("switchyard", 2)
cpu = med("switchyard", 3)
errors = sum(int(r[4]) for r in rows)
print(f"{'target':<12}{'req/s':>12}{'p99 ms':>10}{'proxy CPU us/req':>18}")
print(f"{'direct':<12}{d_rps:>12.0f}{d_p99:>10.2f}{'-':>18}")
print(f"{'switchyard':<12}{s_rps:>12.0f}{s_p99:>10.2f}{cpu:>18.1f}")
print(f"ratio switchyard/direct: req/s {s_rps / d_rps:.3f}, p99 {s_p99 / d_p99:.2f}x (medians of {len(rows)//2} rounds)")
if errors:
    print(f"ERRORS: {errors} non-2xx responses or timeouts")
    sys.exit(1)
PY
