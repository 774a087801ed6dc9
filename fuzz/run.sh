#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time (CI: 60 s each).
#
# Usage: fuzz/run.sh [SECONDS]   (default 60; env FUZZ_TARGETS to pick targets)
#
# Needs the nightly toolchain (rustup) and cargo-fuzz (`cargo install
# cargo-fuzz --locked`). The corpus in fuzz/corpus/<target>/ is the starting
# point; new inputs found during the run are added there (minimize before
# committing: `cargo +nightly fuzz cmin <target>`). A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run: fix it and add the input to the
# target's regression seeds (fuzz/corpus/<target>/regression-*).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
targets=${FUZZ_TARGETS:-router manifest_compile}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

cargo +nightly fuzz build
for target in $targets; do
  echo "== fuzz $target for ${seconds}s"
  log=$(mktemp)
  # -max_len: manifests up to 64 KiB (the target ignores larger input).
  status=0
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done |SUMMARY)' "$log" || true
  if [[ $status -ne 0 ]]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target FAILED (exit $status); the input is in fuzz/artifacts/$target/" >&2
    rm -f "$log"
    exit "$status"
  fi
  rm -f "$log"
done
