#!/usr/bin/env bash
# Benchmark suite (issue 8): switchyard standalone against nginx and
# HAProxy as one-worker reverse proxies, and the backend directly,
# scenario by scenario, interleaved, in ROUNDS rounds.
#
#   bash tests/bench/bench.sh                         # 3 rounds x 5 s (~10 min + builds)
#   ROUNDS=1 DURATION=2s bash tests/bench/bench.sh    # smoke run (a few minutes)
#
# Installs nginx, HAProxy, wrk and h2load from Debian when missing, builds
# the release binary once (deploy/build.sh: as shipped, with the profile in
# deploy/pgo; PGO=0 for a plain build) and, alongside it, the control plane
# for S8 through the API server unless cached (tests/cluster/build.sh), then
# runs tests/bench/suite.py: proxies pinned
# on core 0, load generators and the echo backend on core 1, traffic on
# loopback, plus (S8 through the API server, root) a veth pair into a
# network namespace the suite creates and deletes. Prints a table and writes tests/bench/results/latest.json
# (BENCH_OUT overrides). Exits non-zero on errors (failed requests, a
# target that does not start), never on missed performance targets.
# Method and latest figures: docs/performance.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
command -v xz >/dev/null || need+=(xz-utils)
# shellcheck source=install.sh
. "$ROOT/tests/bench/install.sh"
install_missing ${need[@]+"${need[@]}"}

# The control plane for S8 through the API server (kube-apiserver and etcd,
# built from the Go module proxy on first use and cached; about 5 minutes
# of both cores) builds alongside switchyard, at the lowest CPU priority, so
# that one build's downloads overlap the other's work (on a cold machine
# this bought little: both builds keep both cores busy). The suite starts
# once both are done, so no build runs during a measurement. Should this
# build fail, the suite still runs, and its S8-through-the-API-server phase
# reports the failure.
cp_pid="" cp_log=""
case ${BENCH_SKIP_API:-} in
"" | 0)
    if command -v go >/dev/null && command -v setsid >/dev/null; then
        cp_log=$(mktemp)
        # A session of its own: should this script stop early, its go
        # processes are stopped with it.
        setsid bash "$ROOT/tests/cluster/build.sh" kube-apiserver etcd >/dev/null 2>"$cp_log" &
        cp_pid=$!
        trap 'kill -- -"$cp_pid" 2>/dev/null || true; rm -f "$cp_log"' EXIT
    fi
    ;;
esac

# The release build as shipped: with the profile in deploy/pgo (PGO=0: a
# plain release build).
BINARY=$(bash "$ROOT/deploy/build.sh")
if [ -n "$cp_pid" ]; then
    if wait "$cp_pid"; then
        grep -E 'cached|built in' "$cp_log" >&2 || true
    else
        cat "$cp_log" >&2
        echo "bench.sh: building the control plane (tests/cluster/build.sh) failed; S8 through the API server will report it" >&2
    fi
    trap - EXIT
    rm -f "$cp_log"
fi
if [[ $BINARY == */target/pgo/* ]]; then
    SWITCHYARD_BUILD="release, profile-guided ($(sed -n 's/^commit=//p' "$ROOT/deploy/pgo/PROFILE")'s profile)"
else
    SWITCHYARD_BUILD="release, no profile"
fi
export SWITCHYARD_BUILD

# Room for 10,000 idle connections through each proxy (and their clients).
# HAProxy reserves two descriptors per connection; root may raise the limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PYTHONDONTWRITEBYTECODE=1 python3 "$ROOT/tests/bench/suite.py" --binary "$BINARY" &
SUITE=$!
trap 'kill "$SUITE" 2>/dev/null; wait "$SUITE" 2>/dev/null' INT TERM
wait "$SUITE"
