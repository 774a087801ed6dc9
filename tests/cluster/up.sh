#!/usr/bin/env bash
# Start a throwaway Kubernetes control plane (etcd + kube-apiserver, no
# kubelet/scheduler/controller-manager) on loopback, with state in DIR.
#
# Usage: tests/cluster/up.sh DIR
#
# Writes into DIR:
#   pki/          CA, API server serving cert, admin client cert, SA key pair
#   kubeconfig    admin (CN=admin, O=system:masters), certificates embedded
#   env           shell-sourceable: KUBECONFIG, KUBE_APISERVER_URL, ports, PIDs,
#                 HELM (the cached helm binary, built by build.sh)
#   pids          "<pid> <name> <executable>" per process, for down.sh
#   etcd.log, kube-apiserver.log
# etcd's data lives in /dev/shm (path in DIR/etcd-data-dir). Prints the path of
# DIR/env on stdout once GET /readyz answers 200. On failure it prints the
# tail of the logs, stops what it started and exits non-zero.
#
# Environment: READY_TIMEOUT (seconds, default 120); ETCD_BIN and
# KUBE_APISERVER_BIN to use other binaries (default: the ones build.sh
# caches, built first if missing).
# Needs: openssl, curl, base64, and the binaries from build.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
. "$here/common.sh"

(($# == 1)) || {
  echo "usage: $0 DIR" >&2
  exit 2
}
mkdir -p "$1"
dir=$(cd "$1" && pwd)
: "${READY_TIMEOUT:=120}"

[[ ! -s $dir/pids ]] || die "$dir/pids exists: a cluster may be running there; run down.sh $dir first"
for tool in openssl curl base64; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

# --- binaries ---------------------------------------------------------------
etcd_bin=${ETCD_BIN:-$(bin_path etcd)}
apiserver_bin=${KUBE_APISERVER_BIN:-$(bin_path kube-apiserver)}
missing=()
if [[ ! -x $etcd_bin ]]; then
  [[ -z ${ETCD_BIN:-} ]] || die "ETCD_BIN=$ETCD_BIN is not executable"
  missing+=(etcd)
fi
if [[ ! -x $apiserver_bin ]]; then
  [[ -z ${KUBE_APISERVER_BIN:-} ]] || die "KUBE_APISERVER_BIN=$KUBE_APISERVER_BIN is not executable"
  missing+=(kube-apiserver)
fi
if ((${#missing[@]})); then
  log "building ${missing[*]} first (a cold kube-apiserver build takes many minutes)"
  "$here/build.sh" "${missing[@]}" >/dev/null
fi
etcd_bin=$(readlink -f "$etcd_bin")
apiserver_bin=$(readlink -f "$apiserver_bin")

# --- cleanup on failure -----------------------------------------------------
ok=0
on_exit() {
  if ((ok == 0)); then
    log "failed; stopping whatever was started"
    "$here/down.sh" "$dir" || true
  fi
}
trap on_exit EXIT

# --- ports ------------------------------------------------------------------
# port_in_use PORT: something accepts connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_port TAKEN...: a random free loopback port, below Linux's ephemeral
# range and away from etcd's well-known 2379/2380.
pick_port() {
  local p i
  for i in $(seq 100); do
    p=$((20000 + RANDOM % 12000))
    [[ " $* " == *" $p "* ]] && continue
    port_in_use "$p" || {
      echo "$p"
      return 0
    }
  done
  die "no free port found (tried $i)"
}
etcd_port=$(pick_port)
etcd_peer_port=$(pick_port "$etcd_port")
apiserver_port=$(pick_port "$etcd_port" "$etcd_peer_port")
apiserver_url=https://127.0.0.1:$apiserver_port

# --- PKI --------------------------------------------------------------------
start=$(now)
pki=$dir/pki
rm -rf "$pki"
mkdir -p "$pki"
new_key "$pki/ca.key"
openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=switchyard-test-ca" -days 365 -sha256 \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -out "$pki/ca.crt"
issue_cert "$pki" "$pki/apiserver" "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
issue_client_cert "$pki" "$pki/admin" admin system:masters
# Service-account token signing pair.
new_key "$pki/sa.key"
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
write_kubeconfig "$dir/kubeconfig" "$apiserver_url" "$pki/ca.crt" "$pki/admin.crt" "$pki/admin.key"
log "PKI and kubeconfig ready in $(since "$start") s"

# --- etcd -------------------------------------------------------------------
# RAM-backed data dir: tests are I/O bound on fsync otherwise.
if [[ -d /dev/shm && -w /dev/shm ]]; then
  etcd_data=$(mktemp -d /dev/shm/switchyard-etcd.XXXXXX)
else
  etcd_data=$dir/etcd-data
  rm -rf "$etcd_data"
  mkdir -m 700 "$etcd_data"
fi
printf '%s\n' "$etcd_data" >"$dir/etcd-data-dir"
etcd_args=(
  --name=switchyard
  --data-dir="$etcd_data"
  --listen-client-urls="http://127.0.0.1:$etcd_port"
  --advertise-client-urls="http://127.0.0.1:$etcd_port"
  --listen-peer-urls="http://127.0.0.1:$etcd_peer_port"
  --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port"
  --initial-cluster="switchyard=http://127.0.0.1:$etcd_peer_port"
  --initial-cluster-state=new
)
# (captured first: `etcd --help | grep -q` could die of SIGPIPE under pipefail)
etcd_help=$("$etcd_bin" --help 2>&1 || true)
[[ $etcd_help != *--unsafe-no-fsync* ]] || etcd_args+=(--unsafe-no-fsync)

start=$(now)
"$etcd_bin" "${etcd_args[@]}" </dev/null >"$dir/etcd.log" 2>&1 &
etcd_pid=$!
echo "$etcd_pid etcd $etcd_bin" >>"$dir/pids"
log "etcd started: pid $etcd_pid, http://127.0.0.1:$etcd_port, data $etcd_data"

# --- readiness --------------------------------------------------------------
deadline=$(($(date +%s) + READY_TIMEOUT))
# fail MESSAGE: report with the logs' tails and exit (the trap cleans up).
fail() {
  local f n
  log "error: $*"
  for f in etcd.log:15 kube-apiserver.log:40; do
    n=${f#*:}
    f=$dir/${f%:*}
    [[ -f $f ]] || continue
    printf '\n----- last %s lines of %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2
  done
  exit 1
}
# check_alive NAME PID: fail if the process has exited.
check_alive() { kill -0 "$2" 2>/dev/null || fail "$1 (pid $2) exited during startup"; }
# curl_ ARGS...: curl for loopback, never through a proxy from the environment.
curl_() { curl --noproxy '*' --silent --max-time 5 "$@"; }

until [[ $(curl_ "http://127.0.0.1:$etcd_port/health" || true) == *'"health":"true"'* ]]; do
  check_alive etcd "$etcd_pid"
  (($(date +%s) < deadline)) || fail "etcd not healthy after ${READY_TIMEOUT}s"
  sleep 0.2
done
log "etcd healthy in $(since "$start") s"

# --- kube-apiserver ---------------------------------------------------------
# The flags envtest uses, plus --advertise-address (no default route needed)
# and --endpoint-reconciler-type=none (a loopback address cannot be
# published for the `kubernetes` Service).
apiserver_args=(
  --etcd-servers="http://127.0.0.1:$etcd_port"
  --bind-address=127.0.0.1
  --advertise-address=127.0.0.1
  --secure-port="$apiserver_port"
  --cert-dir="$pki"
  --tls-cert-file="$pki/apiserver.crt"
  --tls-private-key-file="$pki/apiserver.key"
  --client-ca-file="$pki/ca.crt"
  --service-account-issuer="$apiserver_url/"
  --service-account-key-file="$pki/sa.pub"
  --service-account-signing-key-file="$pki/sa.key"
  --service-cluster-ip-range=10.0.0.0/16
  --authorization-mode=RBAC
  --allow-privileged=true
  --disable-admission-plugins=ServiceAccount
  --endpoint-reconciler-type=none
)
# Saved so that restart-apiserver.sh can start the same server again.
printf '%q ' "$apiserver_bin" "${apiserver_args[@]}" >"$dir/apiserver.cmd"
start=$(now)
"$apiserver_bin" "${apiserver_args[@]}" </dev/null >"$dir/kube-apiserver.log" 2>&1 &
apiserver_pid=$!
echo "$apiserver_pid kube-apiserver $apiserver_bin" >>"$dir/pids"
log "kube-apiserver started: pid $apiserver_pid, $apiserver_url"

readyz() {
  curl_ --output /dev/null --write-out '%{http_code}' --cacert "$pki/ca.crt" \
    --cert "$pki/admin.crt" --key "$pki/admin.key" "$apiserver_url/readyz" || true
}
until [[ $(readyz) == 200 ]]; do
  check_alive etcd "$etcd_pid"
  check_alive kube-apiserver "$apiserver_pid"
  (($(date +%s) < deadline)) || fail "kube-apiserver not ready (GET /readyz != 200) after ${READY_TIMEOUT}s"
  sleep 0.5
done
ready_secs=$(since "$start")

# --- env --------------------------------------------------------------------
{
  echo "# Written by tests/cluster/up.sh; source it. Stop with tests/cluster/down.sh $(printf %q "$dir")."
  for var in \
    "SWITCHYARD_CLUSTER_DIR=$dir" \
    "KUBECONFIG=$dir/kubeconfig" \
    "KUBE_APISERVER_URL=$apiserver_url" \
    "KUBE_APISERVER_PORT=$apiserver_port" \
    "KUBE_APISERVER_PID=$apiserver_pid" \
    "KUBE_CA_FILE=$pki/ca.crt" \
    "ETCD_URL=http://127.0.0.1:$etcd_port" \
    "ETCD_PORT=$etcd_port" \
    "ETCD_PEER_PORT=$etcd_peer_port" \
    "ETCD_PID=$etcd_pid" \
    "ETCD_DATA_DIR=$etcd_data" \
    "HELM=$(bin_path helm)"; do
    printf 'export %s=%q\n' "${var%%=*}" "${var#*=}"
  done
} >"$dir/env.tmp"
mv -f "$dir/env.tmp" "$dir/env"

ok=1
log "kube-apiserver ready in $ready_secs s; source $dir/env"
printf '%s\n' "$dir/env"
