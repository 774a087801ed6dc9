#!/usr/bin/env bash
# Regenerates the profile that release builds are optimised with
# (deploy/pgo/switchyard.profdata.xz; deploy/build.sh uses it):
#
# 1. builds `switchyard` instrumented (-Cprofile-generate, target/pgo-gen);
# 2. runs tests/bench/train.py: the instrumented binary as echo backend and
#    as `switchyard standalone`, under the suite's kinds of traffic (S1 to
#    S5) for about 25 seconds, on loopback;
# 3. merges what both processes wrote with llvm-profdata of rustc's LLVM
#    version (Debian llvm-N, installed when missing), keeps only functions
#    that ran (--sparse), and compresses it.
#
#   bash tests/bench/pgo.sh     # about 8 minutes on 2 cores; then commit deploy/pgo
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm" ] || { echo "pgo.sh: cannot tell rustc's LLVM version" >&2; exit 2; }
need=()
command -v "llvm-profdata-$llvm" >/dev/null || need+=("llvm-$llvm")
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
command -v xz >/dev/null || need+=(xz-utils)
# shellcheck source=install.sh
. "$ROOT/tests/bench/install.sh"
install_missing ${need[@]+"${need[@]}"}

raw=$ROOT/target/pgo-gen/profiles
rm -rf "$raw"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw" \
    cargo build --release --locked --bin switchyard --target-dir target/pgo-gen
# Build scripts are instrumented too and wrote their own profiles: only
# the training run's are wanted.
rm -rf "$raw"
PYTHONDONTWRITEBYTECODE=1 python3 tests/bench/train.py "$ROOT/target/pgo-gen/release/switchyard"
ls "$raw"/*.profraw >/dev/null || { echo "pgo.sh: the training run wrote no profile" >&2; exit 1; }

"llvm-profdata-$llvm" merge --sparse -o target/pgo-gen/switchyard.profdata "$raw"/*.profraw
mkdir -p deploy/pgo
xz -9 -c target/pgo-gen/switchyard.profdata >deploy/pgo/switchyard.profdata.xz
commit=$(git rev-parse --short HEAD)$( [ -z "$(git status --porcelain -- controller dataplane crds Cargo.lock)" ] || echo "-dirty")
cat >deploy/pgo/PROFILE <<ABOUT
# The profile in switchyard.profdata.xz: written by tests/bench/pgo.sh,
# read by deploy/build.sh. Regenerate it after large changes to the
# request path.
commit=$commit
rustc=$(rustc -V)
llvm_major=$llvm
date=$(date -u +%Y-%m-%d)
ABOUT
echo "pgo.sh: deploy/pgo/switchyard.profdata.xz ($(du -k deploy/pgo/switchyard.profdata.xz | cut -f1) KiB) from $commit" >&2
