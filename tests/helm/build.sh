#!/usr/bin/env bash
# Build (or reuse) the helm CLI for the chart tests, from the Go module pinned in ./go.mod
# (helm.sh/helm/v3/cmd/helm). Cached outside the repository, keyed by version:
#   ${OSBUILD_CACHE_DIR:-$HOME/.cache/osbuild-controller}/helm/<version>/helm
# Built to a temporary name, checked with `helm version`, then renamed into place, so an interrupted build
# never leaves a half-written binary. Progress goes to stderr; the last stdout line is the binary's path.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
log() { printf '[helm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v go >/dev/null || { log "go not found in PATH"; exit 1; }

version=$(cd "$here" && go list -m -f '{{.Version}}' helm.sh/helm/v3)
cache=${OSBUILD_CACHE_DIR:-$HOME/.cache/osbuild-controller}/helm/$version
bin="$cache/helm"
if [ -x "$bin" ]; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

# What helm's Makefile stamps: its version, and the Kubernetes version its client libraries speak (the
# default for `helm template`'s .Capabilities and for lint's deprecation checks).
k8s_minor=$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=archive"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
tmp="$cache/.helm.tmp.$$"
trap 'rm -f "$tmp"' EXIT
log "building helm.sh/helm/v3/cmd/helm $version ($(go version))"
start=$SECONDS
(cd "$here" && go build -p "${BUILD_JOBS:-2}" -trimpath -ldflags "$ldflags" -o "$tmp" helm.sh/helm/v3/cmd/helm)
"$tmp" version --short >&2 || { log "the built helm does not run"; exit 1; }
mv -f "$tmp" "$bin"
log "built in $((SECONDS - start))s ($(du -h "$bin" | cut -f1)): $bin"
echo "$bin"
