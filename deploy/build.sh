#!/usr/bin/env bash
# The release build of the `switchyard` binary, as shipped (deploy/Dockerfile)
# and as benchmarked (tests/bench/bench.sh): optimised with the profile in
# deploy/pgo/ (profile-guided optimisation, about 20% fewer instructions per
# request; docs/performance.md) when this rustc can read it, a plain
# release build otherwise. Prints the binary's path on stdout, and what was
# built on stderr.
#
#   bash deploy/build.sh             # target/pgo/release/switchyard
#   PGO=0 bash deploy/build.sh       # plain: target/release/switchyard
#
# The profile is regenerated with `bash tests/bench/pgo.sh` (when the hot
# path changes a lot: functions changed since the profile was taken are
# optimised as if it had none).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
profile=$ROOT/deploy/pgo/switchyard.profdata.xz
about=$ROOT/deploy/pgo/PROFILE

# The profile's format is LLVM's: rustc's LLVM must be as new as the one
# that wrote it.
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
wrote=$(sed -n 's/^llvm_major=//p' "$about" 2>/dev/null || true)
why=""
if [ "${PGO:-1}" = 0 ]; then
    why="PGO=0"
elif [ ! -f "$profile" ] || [ -z "$wrote" ]; then
    why="no profile in deploy/pgo"
elif [ -z "$llvm" ] || [ "$llvm" -lt "$wrote" ]; then
    why="rustc's LLVM (${llvm:-unknown}) is older than the profile's ($wrote)"
elif ! command -v xz >/dev/null; then
    why="xz is missing (Debian: xz-utils)"
fi

cd "$ROOT"
if [ -n "$why" ]; then
    echo "deploy/build.sh: plain release build ($why)" >&2
    cargo build --release --locked --bin switchyard -q
    echo "$ROOT/target/release/switchyard"
    exit 0
fi
# A target directory of its own: other flags would otherwise rebuild
# target/release from scratch each time one switches between the two.
mkdir -p target/pgo
# Rewritten only when it changed: cargo rebuilds every crate when the
# profile file is newer than its last build.
xz -dc "$profile" >target/pgo/switchyard.profdata.new
if cmp -s target/pgo/switchyard.profdata.new target/pgo/switchyard.profdata; then
    rm target/pgo/switchyard.profdata.new
else
    mv target/pgo/switchyard.profdata.new target/pgo/switchyard.profdata
fi
echo "deploy/build.sh: release build with the profile of $(sed -n 's/^commit=//p' "$about") (PGO)" >&2
# Functions changed since the profile was taken are built without it;
# LLVM's warning for each would only be noise.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$ROOT/target/pgo/switchyard.profdata -Cllvm-args=-no-pgo-warn-mismatch" \
    cargo build --release --locked --bin switchyard --target-dir target/pgo -q
echo "$ROOT/target/pgo/release/switchyard"
