#!/usr/bin/env bash
# Mint a client certificate for any identity, signed by the CA of a cluster
# started with up.sh, and write a kubeconfig for it.
#
# Usage: tests/cluster/mkcert.sh DIR USER [GROUP...]
#
# The API server takes the certificate's CN as the user name and each O as a
# group. To act as a ServiceAccount (e.g. to check the Helm chart's RBAC):
#   tests/cluster/mkcert.sh DIR system:serviceaccount:NS:NAME system:serviceaccounts system:serviceaccounts:NS
# (the API server also adds system:authenticated itself).
#
# Prints the kubeconfig's path: DIR/users/<user[@groups], sanitised>/kubeconfig.
# Needs: openssl, base64; DIR/pki and DIR/env from up.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
. "$here/common.sh"

(($# >= 2)) || {
  echo "usage: $0 DIR USER [GROUP...]" >&2
  exit 2
}
dir=$(cd "$1" && pwd)
user=$2
shift 2
[[ -f $dir/pki/ca.key && -f $dir/env ]] || die "$dir has no running cluster (run up.sh $dir)"

# The server URL comes from up.sh's env file (in a subshell: it exports).
# shellcheck source=/dev/null
server=$(. "$dir/env" && printf '%s' "${KUBE_APISERVER_URL:?}")

# One directory per identity; its name keeps only filename-safe characters.
name=$user
if (($#)); then name+="@$(
  IFS=,
  echo "$*"
)"; fi
name=${name//[^A-Za-z0-9@,._-]/_}
out=$dir/users/$name
mkdir -p "$out"

issue_client_cert "$dir/pki" "$out/client" "$user" "$@"
write_kubeconfig "$out/kubeconfig" "$server" "$dir/pki/ca.crt" "$out/client.crt" "$out/client.key"
printf '%s\n' "$out/kubeconfig"
