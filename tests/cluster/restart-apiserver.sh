#!/usr/bin/env bash
# Stop the kube-apiserver that up.sh started in DIR, keep it down for
# DOWNTIME seconds, start it again with the same flags, and wait for /readyz.
# Updates DIR/pids and DIR/env with the new PID. etcd keeps running, so no
# state is lost: this is an API server restart, as in a control-plane upgrade.
#
# Usage: tests/cluster/restart-apiserver.sh DIR [DOWNTIME]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

(($# >= 1)) || {
  echo "usage: $0 DIR [DOWNTIME]" >&2
  exit 2
}
dir=$(cd "$1" && pwd)
downtime=${2:-5}
[[ -s $dir/apiserver.cmd ]] || die "$dir/apiserver.cmd missing: was the cluster started by up.sh?"
# shellcheck disable=SC1091
. "$dir/env"
old=$KUBE_APISERVER_PID

kill -TERM "$old" 2>/dev/null || true
for _ in $(seq 150); do
  kill -0 "$old" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$old" 2>/dev/null; then
  kill -KILL "$old" 2>/dev/null || true
fi
log "kube-apiserver (pid $old) stopped; down for ${downtime}s"
sleep "$downtime"

# The saved command line (printf %q words) back into an array, so that the
# server itself is the background job and $! is its PID (with `eval … &`
# the PID would be a subshell's, and stopping it would orphan the server).
eval "cmd=($(cat "$dir/apiserver.cmd"))"
"${cmd[@]}" </dev/null >>"$dir/kube-apiserver.log" 2>&1 &
new=$!
exe=$(readlink "/proc/$new/exe" 2>/dev/null || true)
sed -i "s|^$old kube-apiserver .*|$new kube-apiserver ${exe:-kube-apiserver}|" "$dir/pids"
sed -i "s|^export KUBE_APISERVER_PID=.*|export KUBE_APISERVER_PID=$new|" "$dir/env"
log "kube-apiserver restarted: pid $new"

deadline=$(($(date +%s) + 120))
until [[ $(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$KUBE_CA_FILE" \
  --cert "$SWITCHYARD_CLUSTER_DIR/pki/admin.crt" --key "$SWITCHYARD_CLUSTER_DIR/pki/admin.key" \
  "$KUBE_APISERVER_URL/readyz" || true) == 200 ]]; do
  kill -0 "$new" 2>/dev/null || die "kube-apiserver exited on restart; see $dir/kube-apiserver.log"
  (($(date +%s) < deadline)) || die "kube-apiserver not ready 120s after restart"
  sleep 0.3
done
log "kube-apiserver ready again"
