#!/usr/bin/env bash
# Build the control-plane binaries the cluster tests need from the Go module
# proxy, once per version, and cache them outside the repository:
#
#   ${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}/bin/<component>-<version>/<component>
#
# Usage: tests/cluster/build.sh [kube-apiserver] [etcd] [helm]   (default: all)
#
# A component whose cached binary exists is skipped. Prints each binary's path
# on stdout and the wall time of each step on stderr. Every `go` command runs
# under `nice -n 19` so that it never competes with foreground work.
#
# Versions (see common.sh): KUBE_VERSION, ETCD_VERSION, HELM_VERSION.
# KUBE_GIT_COMMIT / ETCD_GIT_COMMIT / HELM_GIT_COMMIT: commit to stamp (the
# module proxy does not say which commit a tag is; default: all zeros).
# Needs: go (1.26 for kube-apiserver v1.36), network access to the module proxy.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${KUBE_GIT_COMMIT:=0000000000000000000000000000000000000000}"
: "${ETCD_GIT_COMMIT:=0000000000000000000000000000000000000000}"
: "${HELM_GIT_COMMIT:=0000000000000000000000000000000000000000}"

# go_ ARGS...: the go command, at lowest CPU priority, with a fixed setup:
# static binaries, the installed toolchain only (no toolchain download), no
# go.work from a parent directory, and a module cache that `rm -rf` can clean.
go_() {
  nice -n 19 env CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off GOFLAGS=-modcacherw go "$@"
}

# json_field NAME: the string value of "NAME" in go's indented JSON on stdin.
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p"; }

# module_info MODULE@VERSION: JSON (Time, GoMod, ...) from the module proxy.
module_info() { (cd "$SWITCHYARD_CACHE/tmp" && go_ list -m -json "$1"); }

# new_workdir NAME: a fresh throwaway directory (removed after a good build,
# kept for inspection after a failed one).
new_workdir() { mktemp -d "$SWITCHYARD_CACHE/tmp/$1.XXXXXX"; }

# consumer_gomod NAME UPSTREAM_GOMOD: print a go.mod for a throwaway consumer
# module, with the `go` and `godebug` directives copied from the upstream
# module, so that the binary gets the GODEBUG defaults upstream builds with.
consumer_gomod() {
  printf 'module switchyard.test/%s\n\n' "$1"
  grep -E '^go[[:space:]]' "$2"
  # godebug may be one line or a parenthesised block.
  awk '/^godebug[[:space:]]*\(/ { block = 1 }
       block || /^godebug[[:space:]]/ { print }
       block && /^\)/ { block = 0 }' "$2"
}

# build_kube_apiserver OUT: build k8s.io/kubernetes/cmd/kube-apiserver.
#
# k8s.io/kubernetes requires its ~30 staging modules at a fake v0.0.0 and
# replaces them with ./staging/src/..., so `go install ...@version` refuses
# it. A consumer module replaces each with its published v0.<minor>.<patch>
# tag instead; the list comes from the served go.mod, never typed by hand.
build_kube_apiserver() {
  local out=$1 work info gomod build_date major minor staging ldflags pkg
  work=$(new_workdir kube-apiserver)
  info=$(module_info "k8s.io/kubernetes@$KUBE_VERSION")
  gomod=$(json_field GoMod <<<"$info")
  build_date=$(json_field Time <<<"$info")
  [[ -f $gomod ]] || die "no go.mod for k8s.io/kubernetes@$KUBE_VERSION"

  major=${KUBE_VERSION#v}
  major=${major%%.*}
  minor=${KUBE_VERSION#v*.}
  minor=${minor%%.*}
  staging="v0.${KUBE_VERSION#v*.}" # v1.36.3 -> v0.36.3

  {
    consumer_gomod kube-apiserver-build "$gomod"
    echo
    # Lines `k8s.io/X [v0.0.0] => ./staging/src/k8s.io/X`, inside a
    # `replace (...)` block or as single `replace` lines.
    awk -v v="$staging" '
      /=>[[:space:]]*\.\/staging\/src\// {
        sub(/^[[:space:]]*replace[[:space:]]+/, "")
        sub(/^[[:space:]]+/, "")
        print "replace " $1 " => " $1 " " v
      }' "$gomod"
  } >"$work/go.mod"
  local n
  n=$(grep -c '^replace ' "$work/go.mod" || true)
  ((n >= 20)) || die "found only $n staging replaces in $gomod; has its layout changed?"
  log "kube-apiserver: consumer module in $work ($n staging replaces -> $staging)"

  (cd "$work" && go_ get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION")

  # Version stamps: without them /version says v0.0.0-master+$Format:%H$ and
  # Helm rejects charts with a kubeVersion constraint.
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=$KUBE_GIT_COMMIT -X $pkg.buildDate=$build_date"
  done
  (cd "$work" && go_ build -trimpath -ldflags "$ldflags" -o "$out" k8s.io/kubernetes/cmd/kube-apiserver)
  rm -rf "$work"
}

# build_etcd OUT: build the etcd server (main package at the root of
# go.etcd.io/etcd/server/v3). It cannot be `go install`ed (it has relative
# replaces), but a consumer module needs no replaces. It is kept apart from
# the API server's module so the two dependency graphs stay independent.
build_etcd() {
  local out=$1 work gomod
  work=$(new_workdir etcd)
  gomod=$(module_info "go.etcd.io/etcd/server/v3@$ETCD_VERSION" | json_field GoMod)
  [[ -f $gomod ]] || die "no go.mod for go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  consumer_gomod etcd-build "$gomod" >"$work/go.mod"
  log "etcd: consumer module in $work"
  (cd "$work" && go_ get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  (cd "$work" && go_ build -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_GIT_COMMIT:0:7}" \
    -o "$out" go.etcd.io/etcd/server/v3)
  rm -rf "$work"
}

# build_helm OUT: helm.sh/helm/v3 has no replaces, so plain `go install`.
# k8sVersionMajor/Minor set the Kubernetes version `helm template` and
# `helm lint` assume (default 1.20) to the API server's.
build_helm() {
  local out=$1 work minor ldflags pkg
  work=$(new_workdir helm)
  minor=${KUBE_VERSION#v*.}
  minor=${minor%%.*}
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitCommit=$HELM_GIT_COMMIT"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  (cd "$work" && GOBIN="$work/bin" go_ install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  mv "$work/bin/helm" "$out"
  rm -rf "$work"
}

# build COMPONENT: build one component unless its binary is cached.
build() {
  local component=$1 out start tmp
  out=$(bin_path "$component")
  start=$(now)
  if [[ -x $out ]]; then
    log "$component: cached ($(since "$start") s)"
  else
    log "$component: building $out"
    mkdir -p "$(dirname "$out")"
    # Build next to the final path and rename, so an interrupted build never
    # leaves a binary that a later run would take as cached.
    tmp="$out.partial.$$"
    "build_${component//-/_}" "$tmp"
    mv -f "$tmp" "$out"
    log "$component: built in $(since "$start") s"
  fi
  printf '%s\n' "$out"
}

main() {
  local components=("$@") c
  ((${#components[@]})) || components=(kube-apiserver etcd helm)
  for c in "${components[@]}"; do bin_path "$c" >/dev/null; done # validate names

  command -v go >/dev/null || die "go is not on PATH"
  mkdir -p "$SWITCHYARD_CACHE/tmp"
  # One build at a time per cache (parallel test runs may all call this).
  if command -v flock >/dev/null; then
    exec 9>"$SWITCHYARD_CACHE/.build.lock"
    flock 9
  fi
  for c in "${components[@]}"; do build "$c"; done
}

main "$@"
