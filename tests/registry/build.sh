#!/usr/bin/env bash
# Build (or reuse) the test registry tools from Go modules (./go.mod):
#   registry   github.com/distribution/distribution/v3/cmd/registry  (TLS, htpasswd auth)
#   crane      github.com/google/go-containerregistry/cmd/crane       (pushes the test images)
#   htpasswd   ./htpasswd: one bcrypt htpasswd line (no apache2-utils needed)
#
# Binaries are cached outside the repository, keyed by version:
#   ${OSBUILD_CACHE_DIR:-$HOME/.cache/osbuild-controller}/registry-<distribution>-crane-<ggcr>/bin/
# A binary is built only when it is missing there; each is built to a temporary name, checked to run,
# then renamed into place, so an interrupted build never leaves a half-written binary behind.
#
# Progress goes to stderr; the last line on stdout is the bin directory.
# Usage: tests/registry/build.sh [--force]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

force=
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

cache_root=${OSBUILD_CACHE_DIR:-$HOME/.cache/osbuild-controller}
bindir="$cache_root/registry-$DISTRIBUTION_VERSION-crane-$GGCR_VERSION/bin"
mkdir -p "$bindir"

log() { printf '[registry-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

all_present() {
  local b
  for b in registry crane htpasswd; do [ -x "$bindir/$b" ] || return 1; done
}

if [ -z "$force" ] && all_present; then
  log "cached: $bindir"
  echo "$bindir"
  exit 0
fi

# One build at a time per cache dir (parallel test binaries, CI + developer).
exec 9>"$bindir/.build.lock"
if ! flock -n 9; then
  log "another build holds $bindir/.build.lock, waiting"
  flock 9
fi

export GOTOOLCHAIN=local      # never download a toolchain
export GOWORK=off
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"
command -v go >/dev/null || { echo "go not found in PATH: install Go (see docs/control-plane.md)" >&2; exit 1; }
rm -f "$bindir"/.*.tmp.*
log "$(go version); GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"

# build NAME PACKAGE LDFLAGS CHECK_ARGS...
build() {
  local name=$1 pkg=$2 ldflags=$3; shift 3
  if [ -z "$force" ] && [ -x "$bindir/$name" ]; then
    log "$name: cached"
    return
  fi
  local tmp="$bindir/.$name.tmp.$$" start=$SECONDS
  # shellcheck disable=SC2064
  trap "rm -f '$tmp'" EXIT INT TERM HUP
  log "$name: building $pkg"
  (cd "$here" && go build -p "${BUILD_JOBS:-2}" -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") \
    || { log "$name: go build FAILED after $((SECONDS - start))s"; exit 1; }
  local v
  v=$("$tmp" "$@" 2>&1 <<<check) || { log "$name: built binary does not run: $v"; exit 1; }
  v=${v%%$'\n'*}
  mv -f "$tmp" "$bindir/$name"
  trap - EXIT INT TERM HUP
  log "$name: built in $((SECONDS - start))s ($(du -h "$bindir/$name" | cut -f1)): $v"
}

total=$SECONDS
build registry github.com/distribution/distribution/v3/cmd/registry \
  "-s -w -X 'github.com/distribution/distribution/v3/version.version=$DISTRIBUTION_VERSION'" --version
build crane github.com/google/go-containerregistry/cmd/crane \
  "-s -w -X 'github.com/google/go-containerregistry/cmd/crane/cmd.Version=$GGCR_VERSION'" version
build htpasswd ./htpasswd "-s -w" check-user
{
  echo "distribution=$DISTRIBUTION_VERSION go-containerregistry=$GGCR_VERSION"
  go version
} > "$bindir/BUILDINFO"
log "all binaries ready in $bindir ($((SECONDS - total))s)"
echo "$bindir"
