#!/usr/bin/env bash
# Builds every binary the local cluster and the signing tests need, from Go modules,
# into a cache outside the repository so fresh clones on this machine reuse it.
# Each component lands in its own versioned folder; a finished folder is never rebuilt.
#
#   e2e/cluster/build.sh            build what is missing, print the bin folder
#   e2e/cluster/build.sh --print    print the bin folder only
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${TRAINGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainguard}
bin="$cache/bin"
if [[ "${1:-}" == "--print" ]]; then echo "$bin"; exit 0; fi
mkdir -p "$bin" "$cache/stamps"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--trimpath}"
buildlog="$cache/build.log"
log() { printf '[build] %s\n' "$*" >&2; }

# build_component NAME VERSION FUNCTION: runs FUNCTION into a staging folder once per version.
build_component() {
  local name=$1 version=$2 fn=$3 stamp="$cache/stamps/$1-$2"
  [[ -f "$stamp" ]] && return 0
  local start=$SECONDS stage
  stage=$(mktemp -d "$cache/stage.XXXXXX")
  log "$name $version: building (first time only; full log in $buildlog)"
  if ! { echo "=== $name $version"; "$fn" "$stage" "$version"; } >> "$buildlog" 2>&1; then
    log "$name $version: FAILED after $((SECONDS - start)) s; the last lines of $buildlog:"
    tail -n 25 "$buildlog" >&2
    rm -rf "$stage"
    exit 1
  fi
  mv -f "$stage"/* "$bin/"
  rmdir "$stage"
  echo "$((SECONDS - start))" > "$stamp"
  log "$name $version: built in $((SECONDS - start)) s"
}

k8s() {
  local out=$1 v=$2 minor
  minor=$(echo "$v" | cut -d. -f2)
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  local ldc="-s -w -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  (cd "$here/k8s" && go build -ldflags "$ld $ldc" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}
etcd() { (cd "$here/etcd" && go build -ldflags "-s -w" -o "$1/etcd" .); }
goinstall() { # goinstall OUT PACKAGE@VERSION
  GOBIN="$1" go install -ldflags "-s -w" "$2"
}
kwok() { goinstall "$1" "sigs.k8s.io/kwok/cmd/kwok@$2"; }
helm() { GOBIN="$1" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$2" "helm.sh/helm/v3/cmd/helm@$2"; }
cosign() { goinstall "$1" "github.com/sigstore/cosign/v3/cmd/cosign@$2"; }
crane() { goinstall "$1" "github.com/google/go-containerregistry/cmd/crane@$2"; }
registry() { goinstall "$1" "github.com/distribution/distribution/v3/cmd/registry@$2"; }
kueue() { # the manager, and the CRDs of the same module (the local cluster applies them)
  goinstall "$1" "sigs.k8s.io/kueue/cmd/kueue@$2"
  cp -r "$(go env GOMODCACHE)/sigs.k8s.io/kueue@$2/config/components/crd/bases" "$1/kueue-crds"
  chmod -R u+w "$1/kueue-crds"
}

prometheus() { # the server and promtool (rule checks and rule unit tests); the UI is not embedded, the API is all tests use
  local ld="-s -w -X github.com/prometheus/common/version.Version=${2#v}"
  GOBIN="$1" go install -ldflags "$ld" "github.com/prometheus/prometheus/cmd/prometheus@$2" \
    "github.com/prometheus/prometheus/cmd/promtool@$2"
}

only=${1:-all}
want() { [[ "$only" == all || ",$only," == *",$1,"* ]]; }
want etcd && build_component etcd "$ETCD_VERSION" etcd
want kwok && build_component kwok "$KWOK_VERSION" kwok
want k8s && build_component k8s "$K8S_VERSION" k8s
want helm && build_component helm "$HELM_VERSION" helm
want crane && build_component crane "$CRANE_VERSION" crane
want registry && build_component registry "$REGISTRY_VERSION" registry
want cosign && build_component cosign "$COSIGN_VERSION" cosign
want kueue && build_component kueue "$KUEUE_VERSION" kueue
want prometheus && build_component prometheus "$PROMETHEUS_VERSION" prometheus
echo "$bin"
