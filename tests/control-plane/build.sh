#!/usr/bin/env bash
# Build (or reuse) the test control-plane binaries:
#   kube-apiserver, kube-scheduler, kubectl  (k8s.io/kubernetes, ./go.mod)
#   etcd                                     (go.etcd.io/etcd/server/v3, ./etcd/go.mod)
# and, with --kwok (or OSBUILD_CONTROL_PLANE_KWOK=1), for the control plane whose Deployments really run:
#   kube-controller-manager                  (k8s.io/kubernetes, ./go.mod)
#   kwok-<v>/kwok                            (sigs.k8s.io/kwok, ./kwok/go.mod)
#
# Binaries are cached outside the repository, keyed by version:
#   ${OSBUILD_CACHE_DIR:-$HOME/.cache/osbuild-controller}/control-plane/k8s-<v>-etcd-<v>/
# A binary is built only when it is missing there. Each is built to a temporary
# name, checked with --version, then renamed into place, so an interrupted build
# never leaves a half-written binary behind.
#
# Progress goes to stderr; the last line on stdout is the binary directory.
# Usage: tests/control-plane/build.sh [--force] [--kwok]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

force=
kwok=${OSBUILD_CONTROL_PLANE_KWOK:-}
[ "$kwok" = 0 ] && kwok=
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --kwok) kwok=1 ;;
    *) echo "usage: $0 [--force] [--kwok]" >&2; exit 2 ;;
  esac
done

cache_root=${OSBUILD_CACHE_DIR:-$HOME/.cache/osbuild-controller}
bindir="$cache_root/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
mkdir -p "$bindir"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

all_present() {
  local b
  for b in kube-apiserver kube-scheduler kubectl etcd; do
    [ -x "$bindir/$b" ] || return 1
  done
  if [ -n "$kwok" ]; then
    [ -x "$bindir/kube-controller-manager" ] && [ -x "$bindir/kwok-$KWOK_VERSION/kwok" ] \
      && [ -s "$bindir/kwok-$KWOK_VERSION/stages.yaml" ] || return 1
  fi
  return 0
}

if [ -z "$force" ] && all_present; then
  log "cached: $bindir"
  echo "$bindir"
  exit 0
fi

# Only one build at a time per cache dir (parallel `up`s, CI + developer).
exec 9>"$bindir/.build.lock"
if ! flock -n 9; then
  log "another build holds $bindir/.build.lock, waiting"
  flock 9
fi

export GOTOOLCHAIN=local      # never download a toolchain
export GOWORK=off
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"
command -v go >/dev/null || { echo "go not found in PATH" >&2; exit 1; }
# leftovers of a build that was killed hard (SIGKILL): never used, just removed
rm -f "$bindir"/.*.tmp.* "$bindir"/kwok-*/.*.tmp.*
log "$(go version); GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"

# What hack/lib/version.sh stamps into a release build (k8s.io/component-base/version
# and k8s.io/client-go/pkg/version): gitVersion, gitMajor, gitMinor, gitCommit,
# gitTreeState, buildDate. The module zip carries no commit id, so gitCommit is
# left empty and the tree state is "archive" (source from an archive, not git).
# buildDate is the module's publication time from the proxy, so builds are
# reproducible.
k8s_ldflags() {
  local ver=$K8S_VERSION major minor date
  major=${ver#v}; major=${major%%.*}
  minor=${ver#v*.}; minor=${minor%%.*}
  date=$(cd "$here" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
  [ -n "$date" ] || date=1970-01-01T00:00:00Z
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X '$pkg.gitVersion=$ver' -X '$pkg.gitMajor=$major' -X '$pkg.gitMinor=$minor'"
    flags+=" -X '$pkg.gitCommit=' -X '$pkg.gitTreeState=archive' -X '$pkg.buildDate=$date'"
  done
  printf '%s' "$flags"
}

# build NAME MODULE_DIR PACKAGE LDFLAGS VERSION_CMD...   (NAME may be a path under $bindir: kwok-<v>/kwok)
build() {
  local name=$1 moddir=$2 pkg=$3 ldflags=$4; shift 4
  if [ -z "$force" ] && [ -x "$bindir/$name" ]; then
    log "$name: cached"
    return
  fi
  mkdir -p "$(dirname "$bindir/$name")"
  local tmp
  tmp="$(dirname "$bindir/$name")/.$(basename "$name").tmp.$$"
  rm -f "$tmp"
  log "$name: building $pkg"
  local start=$SECONDS
  (cd "$moddir" && exec go build -p "${BUILD_JOBS:-2}" -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") &
  local pid=$! next=30
  # interrupted (Ctrl-C, SIGTERM, session end): stop go build, drop the temp file
  # shellcheck disable=SC2064
  trap "kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f '$tmp'; log '$name: interrupted'; exit 130" INT TERM HUP
  # shellcheck disable=SC2064
  trap "rm -f '$tmp'" EXIT
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS - start >= next )) && kill -0 "$pid" 2>/dev/null; then
      log "$name: still building, $((SECONDS - start))s elapsed"
      next=$((next + 30))
    fi
  done
  if ! wait "$pid"; then
    log "$name: go build FAILED after $((SECONDS - start))s"
    exit 1
  fi
  local v
  v=$("$tmp" "$@" 2>&1 | tr '\n' ' ') || { log "$name: built binary does not run: $v"; exit 1; }
  mv -f "$tmp" "$bindir/$name"
  trap - EXIT INT TERM HUP
  log "$name: built in $((SECONDS - start))s ($(du -h "$bindir/$name" | cut -f1)): $v"
}

total=$SECONDS
kflags=$(k8s_ldflags)
build kube-apiserver "$here" k8s.io/kubernetes/cmd/kube-apiserver "$kflags" --version
build kube-scheduler "$here" k8s.io/kubernetes/cmd/kube-scheduler "$kflags" --version
build kubectl "$here" k8s.io/kubernetes/cmd/kubectl "$kflags" version --client
build etcd "$here/etcd" go.etcd.io/etcd/server/v3 \
  "-s -w -X 'go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION-module'" --version
if [ -n "$kwok" ]; then
  build kube-controller-manager "$here" k8s.io/kubernetes/cmd/kube-controller-manager "$kflags" --version
  build "kwok-$KWOK_VERSION/kwok" "$here/kwok" sigs.k8s.io/kwok/cmd/kwok "-s -w" --version
  # The kwok binary simulates nothing until it is given Stages. These are those kwokctl starts it with
  # (kwok's pkg/kwokctl/runtime/cluster.go) but pod-complete: nodes become Ready (keeping the nodeInfo they
  # were created with) and renew a Lease; pods become Running and Ready; deleted pods go away. A Job's pod
  # stays Running, as nothing runs in it: a test that needs a Job's work done runs it and sets the pod's
  # phase itself (tests/deployment.rs, the Helm uninstall hook). Read from the module this build used, so
  # they always match the binary.
  stages="$bindir/kwok-$KWOK_VERSION/stages.yaml"
  if [ -n "$force" ] || [ ! -s "$stages" ]; then
    # (download: the module cache may have been emptied since the binary was built)
    kwok_dir=$(cd "$here/kwok" && go mod download -json sigs.k8s.io/kwok | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$kwok_dir/kustomize/stage" ] || { log "kwok: no stages in the module ('$kwok_dir')"; exit 1; }
    {
      for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
               pod/fast/pod-ready pod/fast/pod-delete; do
        echo "---"
        cat "$kwok_dir/kustomize/stage/$f.yaml"
      done
    } > "$(dirname "$stages")/.stages.yaml.tmp.$$"
    mv -f "$(dirname "$stages")/.stages.yaml.tmp.$$" "$stages"
    log "kwok stages: $stages"
  fi
fi
{
  echo "k8s=$K8S_VERSION etcd=$ETCD_VERSION${kwok:+ kwok=$KWOK_VERSION}"
  go version
} > "$bindir/BUILDINFO"
log "all binaries ready in $bindir ($((SECONDS - total))s)"
echo "$bindir"
