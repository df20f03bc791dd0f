#!/usr/bin/env bash
# Generate (or reuse) the Prometheus Operator's ServiceMonitor and PrometheusRule CRDs for the chart tests,
# from the operator's Go API types with controller-gen, both pinned in ./crds/go.mod: the CRD schemas are
# the real ones, so the API server validates the chart's ServiceMonitor and PrometheusRule as a cluster with
# the Operator would. Cached under ${OSBUILD_CACHE_DIR:-$HOME/.cache/osbuild-controller}/monitoring-crds/,
# keyed by both versions. Progress goes to stderr; the last stdout line is the directory of the CRD files.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/crds" && pwd)
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
log() { printf '[crds %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v go >/dev/null || { log "go not found in PATH"; exit 1; }

api=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
api_version=$(cd "$here" && go list -m -f '{{.Version}}' "$api")
gen_version=$(cd "$here" && go list -m -f '{{.Version}}' sigs.k8s.io/controller-tools)
cache=${OSBUILD_CACHE_DIR:-$HOME/.cache/osbuild-controller}/monitoring-crds/$api_version-controller-tools-$gen_version
want=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
done_already() { local f; for f in "${want[@]}"; do [ -s "$cache/$f" ] || return 1; done; }
if done_already; then log "cached: $cache"; echo "$cache"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if done_already; then echo "$cache"; exit 0; fi

start=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "building controller-gen $gen_version"
(cd "$here" && go build -trimpath -ldflags "-s -w" -o "$tmp/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen)
log "generating the CRDs of $api/v1 $api_version"
# maxDescLen=0: no field descriptions (they make the CRDs several MB; validation does not need them).
(cd "$here" && "$tmp/controller-gen" crd:crdVersions=v1,maxDescLen=0 paths="$api/v1" output:crd:dir="$tmp/out")
for f in "${want[@]}"; do
  [ -s "$tmp/out/$f" ] || { log "controller-gen made no $f (made: $(find "$tmp/out" -name '*.yaml' -printf '%f '))"; exit 1; }
  mv -f "$tmp/out/$f" "$cache/$f"
done
log "CRDs ready in $cache ($((SECONDS - start))s)"
echo "$cache"
