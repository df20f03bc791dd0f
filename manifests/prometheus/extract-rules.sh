#!/usr/bin/env bash
# Prints the rule groups of a PrometheusRule as a plain Prometheus rules file (`groups:` at the top), for
# promtool (scripts/test-alerts) and for a Prometheus without the Operator:
#
#   manifests/prometheus/extract-rules.sh [prometheusrule.yaml] > osbuild-controller-rules.yaml
#
# No YAML tool needed: the PrometheusRule keeps `spec:` as its last top-level key with everything under it
# indented by two spaces, so the rules file is those lines, dedented. Anything else is refused (and promtool
# then parses the result, so a mistake cannot pass silently).
set -euo pipefail
file=${1:-$(dirname "${BASH_SOURCE[0]}")/prometheusrule.yaml}

awk -v file="$file" '
  function fail(msg) { printf "%s:%d: %s\n", file, NR, msg > "/dev/stderr"; failed = 1; exit 1 }
  /^---[[:space:]]*$/ { if (seen_kind) fail("more than one document"); next }
  /^kind:[[:space:]]*PrometheusRule[[:space:]]*$/ { seen_kind = 1 }
  in_spec {
    if ($0 ~ /^[[:space:]]*$/ || $0 ~ /^[[:space:]]*#/) { print ""; next }
    if ($0 !~ /^  /) fail("a top-level key after spec: (spec must be last)")
    line = substr($0, 3)
    if (!started && line !~ /^groups:/) fail("spec must start with groups:")
    if (line ~ /^[^ ]/ && line !~ /^groups:/) fail("spec must hold only groups:")
    started = 1
    print line
    next
  }
  /^spec:[[:space:]]*$/ { in_spec = 1; next }
  END {
    if (failed) exit 1
    if (!seen_kind) { printf "%s: not a PrometheusRule\n", file > "/dev/stderr"; exit 1 }
    if (!started) { printf "%s: no spec.groups\n", file > "/dev/stderr"; exit 1 }
  }
' "$file"
