#!/usr/bin/env bash
# Stop a control plane started by up.sh: exactly the processes listed in
# DIR/pids (TERM, wait, then KILL), never anything found by name. A PID that
# now belongs to another program (PID reuse) is left alone. Then removes
# etcd's data dir. Logs, PKI and kubeconfigs stay in DIR for inspection.
# Safe to run twice.
#
# Usage: tests/cluster/down.sh DIR
#
# Environment: STOP_TIMEOUT (seconds to wait after TERM, default 15).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# == 1)) || {
  echo "usage: $0 DIR" >&2
  exit 2
}
[[ -d $1 ]] || die "no such directory: $1"
dir=$(cd "$1" && pwd)
: "${STOP_TIMEOUT:=15}"

# running PID: the process exists and is not a zombie.
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # fields after "(comm) "; the first is the state
  [[ ${stat%% *} != Z ]]
}

# wait_gone PID SECONDS: wait until PID is gone; false on timeout.
wait_gone() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    running "$1" || return 0
    sleep 0.2
  done
  ! running "$1"
}

# stop PID NAME EXE: TERM, then KILL, the process if it still runs EXE.
stop() {
  local pid=$1 name=$2 exe=$3 now_exe
  running "$pid" || {
    log "$name (pid $pid) already gone"
    return 0
  }
  now_exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  now_exe=${now_exe% (deleted)} # the binary may have been rebuilt meanwhile
  if [[ $now_exe != "$exe" ]]; then
    log "pid $pid runs '$now_exe', not $name ($exe): PID reused? leaving it alone"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  if wait_gone "$pid" "$STOP_TIMEOUT"; then
    log "$name (pid $pid) stopped"
    return 0
  fi
  log "$name (pid $pid) ignored TERM for ${STOP_TIMEOUT}s: KILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" 10 || {
    log "error: $name (pid $pid) survived KILL"
    return 1
  }
}

status=0
if [[ -f $dir/pids ]]; then
  # Reverse start order: the API server before its etcd.
  mapfile -t entries < <(tac "$dir/pids")
  for entry in "${entries[@]}"; do
    read -r pid name exe <<<"$entry"
    [[ $pid =~ ^[0-9]+$ ]] || continue
    stop "$pid" "$name" "$exe" || status=1
  done
  ((status)) || mv -f "$dir/pids" "$dir/pids.stopped"
else
  log "no $dir/pids: nothing to stop"
fi
rm -f "$dir/env"

# etcd's data: only a directory up.sh made (in /dev/shm or inside DIR).
if [[ -f $dir/etcd-data-dir ]]; then
  data=$(<"$dir/etcd-data-dir")
  case $data in
    /dev/shm/switchyard-etcd.* | "$dir"/etcd-data)
      if ((status == 0)); then
        rm -rf "$data"
        rm -f "$dir/etcd-data-dir"
      fi
      ;;
    *) log "not removing unexpected etcd data path '$data'" ;;
  esac
fi
exit "$status"
