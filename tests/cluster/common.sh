# shellcheck shell=bash
# Shared by the scripts in tests/cluster/ (sourced, never run): pinned
# versions, where binaries are cached, and small helpers.
#
# Every value can be overridden from the environment.

# Pinned versions. k8s.io/kubernetes v1.37+ needs Go 1.27; 1.36.x is the
# newest line the machine's Go 1.26 can build. Its staging modules
# (k8s.io/api, k8s.io/apiserver, ...) are tagged v0.36.x.
: "${KUBE_VERSION:=v1.36.3}"
# etcd 3.6 has the watch-progress feature the API server needs for
# streaming-list watches (3.4/3.5 do not).
: "${ETCD_VERSION:=v3.6.16}"
: "${HELM_VERSION:=v3.19.5}"

# Binaries are cached by version, outside the repository.
: "${SWITCHYARD_CACHE:=${HOME:?HOME must be set}/.cache/switchyard}"

# bin_path COMPONENT: the cached binary of a component at its pinned version.
bin_path() {
  case $1 in
    kube-apiserver) printf '%s\n' "$SWITCHYARD_CACHE/bin/kube-apiserver-$KUBE_VERSION/kube-apiserver" ;;
    etcd) printf '%s\n' "$SWITCHYARD_CACHE/bin/etcd-$ETCD_VERSION/etcd" ;;
    helm) printf '%s\n' "$SWITCHYARD_CACHE/bin/helm-$HELM_VERSION/helm" ;;
    *) die "unknown component: $1 (expected kube-apiserver, etcd or helm)" ;;
  esac
}

# log/die write to stderr, prefixed with the running script's name, so that
# stdout stays free for values callers capture (paths).
log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# now: wall-clock seconds with sub-second precision.
now() { date +%s.%N; }
# since START: seconds elapsed since START (a value from now), one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- PKI (openssl) ----------------------------------------------------------

# subj_escape VALUE: VALUE escaped for openssl's -subj syntax (/ and \).
subj_escape() {
  local v=${1//\\/\\\\}
  printf '%s' "${v//\//\\/}"
}

# new_key FILE: a fresh 2048-bit RSA private key (PKCS#8 PEM), mode 0600.
new_key() {
  (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null)
}

# issue_cert CA_DIR OUT_PREFIX SUBJECT EXTENSIONS: write OUT_PREFIX.key and
# OUT_PREFIX.crt, a certificate for SUBJECT (openssl -subj form) signed by
# CA_DIR/ca.crt + ca.key, with the given X.509v3 extension lines. A random
# serial (no serial file) lets several callers sign at once.
issue_cert() {
  local ca=$1 out=$2 subj=$3 ext=$4
  new_key "$out.key"
  openssl req -new -key "$out.key" -subj "$subj" -out "$out.csr"
  openssl x509 -req -in "$out.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 \
    -extfile <(printf '%s\n' "$ext") -out "$out.crt" 2>/dev/null
  rm -f "$out.csr"
}

# issue_client_cert CA_DIR OUT_PREFIX USER [GROUP...]: a client certificate
# as the API server reads it: CN = user name, one O per group.
issue_client_cert() {
  local ca=$1 out=$2 user=$3 subj g
  shift 3
  subj="/CN=$(subj_escape "$user")"
  for g in "$@"; do subj+="/O=$(subj_escape "$g")"; done
  issue_cert "$ca" "$out" "$subj" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
}

# write_kubeconfig OUT SERVER CA_CRT CLIENT_CRT CLIENT_KEY: a kubeconfig with
# everything embedded (no paths), written atomically, mode 0600.
write_kubeconfig() {
  local out=$1 server=$2 ca=$3 crt=$4 key=$5
  (
    umask 077
    cat >"$out.tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: switchyard-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: switchyard-test-user
  user:
    client-certificate-data: $(base64 -w0 <"$crt")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: switchyard-test
  context:
    cluster: switchyard-test
    user: switchyard-test-user
current-context: switchyard-test
KUBECONFIG
  )
  mv -f "$out.tmp" "$out"
}
