#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind
# (callgrind), for switchyard standalone and nginx: a figure that does not
# move with the machine's load, unlike CPU time. Not part of the suite run.
#
#   bash tests/bench/instructions.sh [BINARY]
#   KEEP=DIR bash tests/bench/instructions.sh   # keeps the callgrind files
#                                               # (callgrind_annotate them)
#   CLOSE=1 bash tests/bench/instructions.sh    # a new connection per request
#                                               # (S2's pattern)
#   SIM=1 bash tests/bench/instructions.sh      # also simulated cache misses
#                                               # and branch mispredictions
#                                               # (slower: about 5 minutes)
#
# Each proxy runs under callgrind in front of `switchyard echo` and serves
# two h2load runs of keep-alive HTTP/1.1 requests (32 connections, GET
# /bytes/64) in two separate processes, N1 and N2 requests; instructions
# per request = (total(N2) - total(N1)) / (N2 - N1), so that start-up and
# shutdown cancel out. Kernel time is not counted: this is the part of the
# cost that the proxy's own code decides. Takes about two minutes.
# Needs valgrind, h2load and nginx (Debian: valgrind, nghttp2-client, nginx).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# Default: the build the suite runs (deploy/build.sh), else the plain one.
BIN=${1:-}
if [ -z "$BIN" ]; then
    BIN=$ROOT/target/pgo/release/switchyard
    [ -x "$BIN" ] || BIN=$ROOT/target/release/switchyard
fi
echo "instructions.sh: $BIN" >&2
N1=${N1:-2000}
N2=${N2:-12000}
for tool in valgrind h2load nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is required" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "instructions.sh: $BIN is not executable (bash deploy/build.sh first)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/switchyard-instructions.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(free_port)
"$BIN" echo --addr "127.0.0.1:$BACKEND" --name bench --workers 1 >"$WORK/echo.log" 2>&1 &
PIDS+=($!)

mkdir -p "$WORK/manifests"
cat >"$WORK/manifests/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: bench}
spec: {ports: [{name: http, port: 80, targetPort: $BACKEND}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-1, namespace: bench, labels: {kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{name: http, port: $BACKEND}]
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
EOF

# count TARGET N: total instructions of one proxy process that served N requests.
count() {
    local target=$1 n=$2 port out pid
    port=$(free_port)
    out="$WORK/callgrind.$target.$n"
    if [ "$target" = switchyard ]; then
        valgrind --tool=callgrind "${SIMFLAGS[@]}" --callgrind-out-file="$out" "$BIN" standalone --manifests "$WORK/manifests" \
            --http-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$(free_port)" --workers 1 --log warn \
            >"$WORK/$target.log" 2>&1 &
    else
        cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$port; keepalive_requests 1000000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
        valgrind --tool=callgrind "${SIMFLAGS[@]}" --callgrind-out-file="$out" nginx -c "$WORK/nginx.conf" -p "$WORK" \
            >"$WORK/$target.log" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    local up=0
    for _ in $(seq 300); do
        if curl -sf -o /dev/null -H 'Host: bench.local' "http://127.0.0.1:$port/bytes/64"; then up=1; break; fi
        sleep 0.2
    done
    [ "$up" = 1 ] || { echo "instructions.sh: $target did not start; log:" >&2; cat "$WORK/$target.log" >&2; exit 1; }
    local done
    local close=()
    if [ -n "${CLOSE:-}" ]; then close=(-H 'connection: close'); fi
    done=$(h2load --h1 -n "$n" -c 32 -H ':authority: bench.local' "${close[@]}" "http://127.0.0.1:$port/bytes/64" |
        awk '/^requests:/ {print $8}')
    [ "$done" = "$n" ] || { echo "instructions.sh: $target answered $done of $n requests with 2xx" >&2; exit 1; }
    if [ "$target" = switchyard ]; then kill -INT "$pid"; else kill -QUIT "$pid"; fi
    wait "$pid" || true
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/"; fi
    # The events line names the columns of the summary line.
    awk '/^events:/ {for (i = 2; i <= NF; i++) name[i] = $i}
         /^summary:/ {for (i = 2; i <= NF; i++) printf "%s=%s ", name[i], $i; print ""}' "$out"
}

# per_request A B EVENT: the event's count per request between the two runs.
per_request() {
    local a b
    a=$(tr ' ' '\n' <<<"$1" | awk -F= -v e="$3" '$1 == e {print $2}')
    b=$(tr ' ' '\n' <<<"$2" | awk -F= -v e="$3" '$1 == e {print $2}')
    echo $(((b - a) / (N2 - N1)))
}

SIMFLAGS=()
EVENTS=(Ir)
if [ -n "${SIM:-}" ]; then
    # D1mr/D1mw: first-level data cache read/write misses; DLmr/DLmw:
    # last-level ones; Bcm/Bim: mispredicted conditional/indirect branches
    # (valgrind's simulated caches and predictor, not this CPU's).
    SIMFLAGS=(--cache-sim=yes --branch-sim=yes)
    EVENTS=(Ir I1mr D1mr D1mw DLmr DLmw Bcm Bim)
fi
printf '%-12s' target
for e in "${EVENTS[@]}"; do printf ' %10s' "$e/req"; done
echo
for target in ${TARGETS:-switchyard nginx}; do
    a=$(count "$target" "$N1")
    b=$(count "$target" "$N2")
    printf '%-12s' "$target"
    for e in "${EVENTS[@]}"; do printf ' %10d' "$(per_request "$a" "$b" "$e")"; done
    echo
done
