#!/usr/bin/env bash
# End-to-end check of the test control plane, against real processes:
#   up -> /version -> create Nodes -> patch node status (status subresource)
#   -> Pod with nodeSelector is bound by kube-scheduler to the matching Node
#   -> no not-ready/unreachable taints -> down -> no process left.
# Usage: tests/control-plane/smoke.sh [--keep]   (--keep: leave it running)
# Prints "N passed, N failed" at the end; exit 0 only if all checks passed.
# Runs in its own state dir (and so on its own free ports) unless
# OSBUILD_CONTROL_PLANE_DIR is set, so its final `down` never stops a control
# plane that `scripts/test` or a developer started in the default state dir.
set -euo pipefail
export OSBUILD_CONTROL_PLANE_DIR=${OSBUILD_CONTROL_PLANE_DIR:-$HOME/.cache/osbuild-controller/smoke-run}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cp="$repo/scripts/control-plane"
keep=${1:-}
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

t0=$(date +%s.%N)
line=$("$cp" up | tail -n 1)
t1=$(date +%s.%N)
echo "up took $(python3 -c "print(round($t1-$t0,2))")s, printed: $line"
[[ $line == KUBECONFIG=* ]] || { echo "up did not print KUBECONFIG=..."; exit 1; }
export KUBECONFIG=${line#KUBECONFIG=}
# shellcheck disable=SC1090
. "$(dirname "$KUBECONFIG")/env"
k="$BINDIR/kubectl"

# second up reuses the running one and prints the same line
line2=$("$cp" up 2>/dev/null | tail -n 1)
check "second up reuses and prints the same KUBECONFIG line" [ "$line2" = "$line" ]
check "status exits 0" "$cp" status

ver=$("$k" get --raw /version)
echo "$ver" | jq -c .
check "/version gitVersion is v1.37.2" [ "$(echo "$ver" | jq -r .gitVersion)" = v1.37.2 ]
check "/version major/minor 1/37" [ "$(echo "$ver" | jq -r '.major + "/" + .minor')" = 1/37 ]
# an independently built kubectl, if the machine has one
sys=/usr/bin/kubectl
if [ -x "$sys" ]; then
  check "$sys get --raw /version" [ "$("$sys" get --raw /version | jq -r .gitVersion)" = v1.37.2 ]
  check "$sys get nodes" "$sys" get nodes
fi
check "kubectl get nodes (empty cluster)" "$k" get nodes

node() { # node NAME LABEL_VALUE
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $1
  labels:
    kubernetes.io/hostname: $1
    osbuild.example/arch: $2
EOF
}
node smoke-a x86_64 | "$k" apply -f - >/dev/null
node smoke-b aarch64 | "$k" apply -f - >/dev/null
check "nodes created" "$k" get node smoke-a smoke-b

# Minimal status the scheduler needs: allocatable (pods > 0, plus cpu/memory
# covering the pod's requests). Conditions are added for the benefit of
# readers (kubectl shows Ready), the scheduler does not look at them.
status='{"status":{"allocatable":{"cpu":"4","memory":"8Gi","pods":"110"},"capacity":{"cpu":"4","memory":"8Gi","pods":"110"},
  "conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"fake node for tests",
  "lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z"}],
  "nodeInfo":{"architecture":"amd64","operatingSystem":"linux","osImage":"Fedora","kernelVersion":"6.0.0",
  "kubeletVersion":"v1.37.2","kubeProxyVersion":"","containerRuntimeVersion":"fake://1","machineID":"m","systemUUID":"s","bootID":"b"}}}'
for n in smoke-a smoke-b; do
  check "patch $n status via --subresource=status" "$k" patch node "$n" --subresource=status --type=merge -p "$status"
done
check "nodeInfo.kubeletVersion stored" [ "$("$k" get node smoke-a -o jsonpath='{.status.nodeInfo.kubeletVersion}')" = v1.37.2 ]

"$k" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: smoke-pod
  namespace: default
spec:
  nodeSelector:
    osbuild.example/arch: aarch64
  containers:
  - name: c
    image: registry.invalid/none:latest
    resources:
      requests: {cpu: 100m, memory: 64Mi}
EOF
bound=
for _ in $(seq 1 100); do
  bound=$("$k" get pod smoke-pod -o jsonpath='{.spec.nodeName}')
  [ -n "$bound" ] && break
  sleep 0.1
done
check "scheduler bound smoke-pod to smoke-b (got '${bound}')" [ "$bound" = smoke-b ]
check "PodScheduled condition True" [ "$("$k" get pod smoke-pod -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].status}')" = True ]

"$k" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: smoke-unschedulable
  namespace: default
spec:
  nodeSelector:
    osbuild.example/arch: s390x
  containers:
  - name: c
    image: registry.invalid/none:latest
EOF
reason=
for _ in $(seq 1 100); do
  reason=$("$k" get pod smoke-unschedulable -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}')
  [ -n "$reason" ] && break
  sleep 0.1
done
check "pod without matching node stays Unschedulable (got '$reason')" [ "$reason" = Unschedulable ]

sleep "${SMOKE_TAINT_WAIT:-5}"
taints=$("$k" get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.spec.taints}{"\n"}{end}')
echo "$taints"
check "no not-ready/unreachable taints (no node lifecycle controller)" \
  bash -c '! grep -q "node.kubernetes.io/" <<<"$1"' _ "$taints"

if [ "$keep" = --keep ]; then
  echo "leaving the control plane running (--keep)"
else
  "$cp" down
  left=$(pgrep -a -f "$(dirname "$KUBECONFIG")/" || true)
  check "no control-plane process left after down" [ -z "$left" ]
  [ -z "$left" ] || echo "$left"
  check "status exits non-zero after down" bash -c '! "$1" status >/dev/null' _ "$cp"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
