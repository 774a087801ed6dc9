#!/usr/bin/env bash
# The project's test command (README "Test"; .ci/run runs exactly this).
#
# 1. Format and lint gates.
# 2. A real Kubernetes control plane (kube-apiserver + etcd, built from the Go
#    module proxy and cached; see tests/cluster/README.md), started once for
#    the run and stopped at the end.
# 3. Every unit, compile-table and end-to-end test of the workspace:
#    standalone end-to-end tests on loopback, cluster end-to-end tests on the
#    control plane with backends in test-made network namespaces (root).
# 4. The end-to-end tests a second time with one dataplane worker.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Build the Rust tests first: the Go build of the control plane and cargo
# would crawl side by side on two cores.
cargo test --workspace --locked --no-run

start=$(date +%s)
bash tests/cluster/build.sh >&2
echo "control plane binaries ready in $(($(date +%s) - start)) s" >&2
cluster_dir=$(mktemp -d /tmp/switchyard-e2e-cluster.XXXXXX)
cleanup() { bash tests/cluster/down.sh "$cluster_dir" >&2 || true; rm -rf "$cluster_dir"; }
trap cleanup EXIT
SWITCHYARD_CLUSTER_ENV=$(bash tests/cluster/up.sh "$cluster_dir")
export SWITCHYARD_CLUSTER_ENV

cargo test --workspace --locked

# The end-to-end tests again with one dataplane worker: switchyard then serves
# on tokio's current-thread runtime (the default on one CPU, and what the
# benchmarks run), where the run above gives it two workers.
SWITCHYARD_TEST_WORKERS=1 cargo test -p switchyard-controller --locked --test '*'
