#!/usr/bin/env bash
# Push the test images to a running registry (scripts/registry up), assembled from scratch: a tiny tar
# layer made here, `crane append --oci-empty-base`, `crane mutate --set-platform`, `crane index append`;
# shapes that crane does not write (an index entry without os.version, attestation entries, a malformed
# manifest) are PUT as raw JSON, as a registry client would. No base image comes from the internet.
#
# Each shape copies one seen on public registries (sources in tests/registry/FIXTURES.md).
#
# Usage: tests/registry/fixtures.sh plain|secure
#   plain           every public case, on $REGISTRY_PLAIN (plain HTTP, anonymous)
#   secure          private/ltsc2019 on $REGISTRY_SECURE (TLS + htpasswd: every image there is private)
# Needs the env of `scripts/registry env` (REGISTRY_*). Prints nothing on stdout.
set -euo pipefail
target=${1:-}
: "${REGISTRY_BIN:?run with the env of scripts/registry env}"
crane=$REGISTRY_BIN/crane
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log() { printf '[fixtures %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case "$target" in
  plain)
    reg=$REGISTRY_PLAIN
    flags=(--insecure)
    curl_args=()
    url=http://$reg
    ;;
  secure)
    reg=$REGISTRY_SECURE
    flags=()
    # crane (Go) trusts the test CA through SSL_CERT_FILE; its credentials live in a private DOCKER_CONFIG.
    export SSL_CERT_FILE=$REGISTRY_CA DOCKER_CONFIG=$work/docker
    "$crane" auth login "$reg" -u "$REGISTRY_USER" --password-stdin <<<"$REGISTRY_PASSWORD" 2>/dev/null
    curl_args=(--cacert "$REGISTRY_CA" -u "$REGISTRY_USER:$REGISTRY_PASSWORD")
    url=https://$reg
    ;;
  *) echo "usage: $0 plain|secure" >&2; exit 2 ;;
esac

c() { "$crane" "${flags[@]}" "$@" 2>"$work/crane.err" || { cat "$work/crane.err" >&2; return 1; }; }

# put_manifest REPO:TAG MEDIATYPE FILE: a raw PUT, as `docker manifest push` or buildx would send it.
put_manifest() {
  local repo=${1%%:*} tag=${1##*:} code
  code=$(curl -sS -o "$work/put.out" -w '%{http_code}' "${curl_args[@]}" -X PUT -H "Content-Type: $2" \
    --data-binary "@$3" "$url/v2/$repo/manifests/$tag")
  [ "$code" = 201 ] || { log "PUT $1: HTTP $code: $(cat "$work/put.out")"; return 1; }
}

# descriptor REF MEDIATYPE PLATFORM_JSON [ANNOTATIONS_JSON]: an index entry for an already pushed manifest.
descriptor() {
  local digest size
  digest=$(c digest "$1")
  size=$(c manifest "$1" | wc -c)
  printf '{"mediaType":"%s","digest":"%s","size":%s,"platform":%s%s}' "$2" "$digest" "$size" "$3" \
    "${4:+,\"annotations\":$4}"
}

OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
OCI_INDEX=application/vnd.oci.image.index.v1+json

echo "osbuild-controller test layer" > "$work/hello.txt"
tar -C "$work" -cf "$work/layer.tar" hello.txt

# One single-platform image per version: OCI (--oci-empty-base) and Docker schema 2 (the default base).
c append --oci-empty-base -f "$work/layer.tar" -t "$reg/base/oci:scratch" >/dev/null
c append -f "$work/layer.tar" -t "$reg/base/docker:scratch" >/dev/null
image() { # image NAME PLATFORM [docker]
  local base=$reg/base/oci:scratch
  [ "${3:-}" = docker ] && base=$reg/base/docker:scratch
  c mutate "$base" --set-platform "$2" -t "$reg/images/$1" >/dev/null
}
image ltsc2019 windows/amd64:10.0.17763.6293
if [ "$target" = secure ]; then
  # Behind htpasswd every image is private; one is enough, and bcrypt on every request makes more slow.
  c index append -m "$reg/images/ltsc2019" -t "$reg/private/ltsc2019" >/dev/null
  log "pushed the private image to $reg"
  exit 0
fi
image ltsc2022 windows/amd64:10.0.20348.2655
image ltsc2025 windows/amd64:10.0.26100.1742
image ws2016 windows/amd64:10.0.14393.1715
image linux linux/amd64
image ltsc2019-docker windows/amd64:10.0.17763.6293 docker
image ltsc2022-docker windows/amd64:10.0.20348.2655 docker
image attestation unknown/unknown

index() { # index TAG IMAGE... : an OCI index whose entries' platforms crane copies from each config
  local tag=$1 args=() i; shift
  for i in "$@"; do args+=(-m "$reg/images/$i"); done
  c index append "${args[@]}" -t "$reg/windows/$tag" >/dev/null
}
index ltsc2019 ltsc2019
index ltsc2022 ltsc2022
index ltsc2025 ltsc2025
index multi ltsc2019 ltsc2022
index ws2016 ws2016
# Read only by the cache test, so its request count in the access log is its own.
index cached ltsc2025
c index append -m "$reg/images/linux" -t "$reg/linux/app:latest" >/dev/null
# A Docker manifest list (v2 schema 2 media types throughout).
c index append --docker-empty-base -m "$reg/images/ltsc2019-docker" -m "$reg/images/ltsc2022-docker" \
  -t "$reg/windows/dockerlist" >/dev/null
# A single manifest: only its config says os.version.
c copy "$reg/images/ltsc2022" "$reg/windows/single" >/dev/null

# A registry keeps an index's entries in the index's own repository: copy them there first.
for repo in noversion attested; do
  for i in ltsc2019 ltsc2022 attestation; do c copy "$reg/images/$i" "$reg/windows/$repo:entry-$i" >/dev/null; done
done

# An index entry without os.version (its config has 10.0.17763.6293), beside a 20348 entry.
printf '{"schemaVersion":2,"mediaType":"%s","manifests":[%s,%s]}' "$OCI_INDEX" \
  "$(descriptor "$reg/windows/noversion:entry-ltsc2022" "$OCI_MANIFEST" '{"architecture":"amd64","os":"windows","os.version":"10.0.20348.2655"}')" \
  "$(descriptor "$reg/windows/noversion:entry-ltsc2019" "$OCI_MANIFEST" '{"architecture":"amd64","os":"windows"}')" \
  > "$work/noversion.json"
put_manifest windows/noversion:latest "$OCI_INDEX" "$work/noversion.json"

# BuildKit's shape: the image, then an attestation manifest for it (unknown/unknown, annotated).
win_digest=$(c digest "$reg/images/ltsc2022")
printf '{"schemaVersion":2,"mediaType":"%s","manifests":[%s,%s]}' "$OCI_INDEX" \
  "$(descriptor "$reg/windows/attested:entry-ltsc2022" "$OCI_MANIFEST" '{"architecture":"amd64","os":"windows","os.version":"10.0.20348.2655"}')" \
  "$(descriptor "$reg/windows/attested:entry-attestation" "$OCI_MANIFEST" '{"architecture":"unknown","os":"unknown"}' \
    "{\"vnd.docker.reference.digest\":\"$win_digest\",\"vnd.docker.reference.type\":\"attestation-manifest\"}")" \
  > "$work/attested.json"
put_manifest windows/attested:latest "$OCI_INDEX" "$work/attested.json"

# A malformed manifest: JSON cut short. The distribution registry validates what it stores and refuses
# it (400 MANIFEST_INVALID); crane's registry stores the bytes as given, like a broken or hostile one.
if [ "$target" = plain ]; then
  printf '{"schemaVersion":2,"mediaType":"%s","config":' "$OCI_MANIFEST" > "$work/broken.json"
  put_manifest broken/manifest:latest "$OCI_MANIFEST" "$work/broken.json"
fi
log "pushed the test images to $reg ($target)"
