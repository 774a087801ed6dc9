#!/usr/bin/env bash
# The project's test command (README "Test"; .ci/run runs exactly this).
#
# Format and lint gates, then every unit, compile-table and end-to-end test
# of the workspace. End-to-end tests start the real `switchyard` binary and
# real backends on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
