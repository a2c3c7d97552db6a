#!/bin/bash
# The end-to-end test on a real single-node Kubernetes (make e2e-k8s): builds
# (or takes from $E2E_CACHE) Kubernetes and the CSI sidecars, brings the cluster
# up, installs the driver through the Helm chart deploy/helm/cachegroup
# (test/e2e-k8s/values.yaml swaps only images and paths), runs every scenario, and tears everything down; on a
# failure it prints the logs first. Each phase's time is printed and appended to
# $E2E_CACHE/timings.log. With E2E_KEEP=1, a failed run leaves the cluster up
# for inspection (then: bash test/e2e-k8s/cluster.sh down).
#
# Needs root, Debian's containerd runc etcd-server etcd-client
# containernetworking-plugins jq e2fsprogs (installed with apt-get when
# missing; e2fsprogs goes into the driver's image), Go, and
# the Go module proxy on a cold cache.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"

[ "$(id -u)" = 0 ] || {
	echo "e2e-k8s needs root (mounts, containers)" >&2
	exit 1
}
mkdir -p "$E2E_CACHE"
exec 9>"$E2E_CACHE/.lock"
flock -n 9 || {
	echo "another e2e-k8s run holds $E2E_CACHE/.lock" >&2
	exit 1
}

START=$SECONDS
PHASES=()
PHASE_NAME="" PHASE_START=$SECONDS
phase() {
	[ -n "$PHASE_NAME" ] && PHASES+=("$PHASE_NAME=$((SECONDS - PHASE_START))s")
	PHASE_NAME=$1 PHASE_START=$SECONDS
	[ -n "$1" ] && log "=== $1"
	return 0
}
PASSED=() NOTRUN=()
pass() {
	PASSED+=("$1")
	log "PASS: $1"
}
notrun() {
	NOTRUN+=("$1")
	log "NOT RUNNABLE HERE: $1"
}
fail() {
	log "FAIL: $*"
	exit 1
}

dump_logs() {
	set +e
	log "----- failure: cluster state and logs -----"
	if [ -f "$E2E_WORK/run/apiserver.pid" ]; then
		$K get pods,pvc,pv -A -o wide 2>&1
		$K get volumesnapshots,volumesnapshotcontents -A 2>&1
		$K get events -A --sort-by=.lastTimestamp 2>&1 | tail -60
		for p in $($K -n cachegroup-system get pods -o name 2>/dev/null); do
			for c in $($K -n cachegroup-system get "$p" -o jsonpath='{.spec.containers[*].name}'); do
				echo "----- $p $c"
				$K -n cachegroup-system logs "$p" -c "$c" --tail=80 2>&1
				$K -n cachegroup-system logs "$p" -c "$c" --previous --tail=40 2>/dev/null
			done
		done
	fi
	# The cluster's own logs: errors and warnings only (the kubelet's about
	# volumes), without the noise of a cluster with no front proxy.
	for f in "$E2E_WORK"/logs/*.log; do
		[ -f "$f" ] || continue
		echo "----- $(basename "$f") (errors and warnings, last 25)"
		case $(basename "$f") in
		kubelet.log) grep -E '^[EW][0-9]{4} ' "$f" | grep -iE 'csi|volume|mount|cachegroup' | tail -25 ;;
		*) grep -E '^[EW][0-9]{4} |level=(error|warning)' "$f" | grep -v 'extension-apiserver-authentication' | tail -25 ;;
		esac
	done
	log "----- full logs are copied to $E2E_LOGS"
}

finish() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	[ $rc -ne 0 ] && dump_logs
	if [ $rc -ne 0 ] && [ -n "${E2E_KEEP:-}" ]; then
		log "E2E_KEEP: the cluster stays up; kubectl: $K; tear down with: bash $HERE/cluster.sh down"
		exit $rc
	fi
	# cold: some Kubernetes or sidecar build was not in $E2E_CACHE.
	local kind=warm
	[ -s "$E2E_WORK/built-cold" ] && kind=cold
	phase teardown
	bash "$HERE/cluster.sh" down
	phase ""
	local total=$((SECONDS - START))
	log "timings ($kind): ${PHASES[*]} total=${total}s"
	echo "$(date -u +%FT%TZ) $kind rc=$rc ${PHASES[*]} total=${total}s" >>"$E2E_CACHE/timings.log"
	for p in "${PASSED[@]}"; do echo "PASS $p"; done
	for n in "${NOTRUN[@]}"; do echo "NOT RUNNABLE HERE: $n"; done
	if [ $rc -eq 0 ]; then
		echo "e2e-k8s: ${#PASSED[@]} passed, 0 failed"
	else
		echo "e2e-k8s: ${#PASSED[@]} passed, 1 failed"
	fi
	exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

phase prepare
if [ -d "$E2E_WORK/run" ]; then
	log "a previous run was not torn down: tearing it down"
	bash "$HERE/cluster.sh" down
fi
rm -rf --one-file-system "$E2E_WORK"
mkdir -p "$E2E_WORK"
: >"$E2E_WORK/built-cold"
missing=()
for c in containerd runc etcd etcdctl ctr jq openssl ip flock mkfs.ext4 e2fsck; do command -v $c >/dev/null || missing+=("$c"); done
[ -x /usr/lib/cni/bridge ] || missing+=(cni)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
	log "installing Debian packages (missing: ${missing[*]})"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		containerd runc etcd-server etcd-client busybox-static containernetworking-plugins jq openssl iproute2 util-linux e2fsprogs >/dev/null
fi
# The Debian packages may start their services; this test runs its own.
for svc in containerd etcd; do
	[ -x /etc/init.d/$svc ] && /etc/init.d/$svc status >/dev/null 2>&1 && log "note: a system $svc service is running; the test uses its own"
done

phase build
bash "$HERE/build.sh"
phase images
bash "$HERE/images.sh"
phase cluster-up
bash "$HERE/cluster.sh" up

phase install
# The snapshot CRDs and snapshot-controller, as a cluster provides them
# (kubernetes-csi/external-snapshotter at the version of csi-snapshotter).
snapdir=$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/v8@$SNAPSHOTTER_VERSION" | jq -r .Dir)
crddir=$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION" | jq -r .Dir)
$K apply -k "$crddir/config/crd" >/dev/null
$K wait --for=condition=Established --timeout=60s \
	crd/volumesnapshots.snapshot.storage.k8s.io crd/volumesnapshotcontents.snapshot.storage.k8s.io \
	crd/volumesnapshotclasses.snapshot.storage.k8s.io >/dev/null
sc=$E2E_WORK/snapshot-controller
mkdir -p "$sc"
cp "$snapdir"/deploy/kubernetes/snapshot-controller/{rbac-snapshot-controller.yaml,setup-snapshot-controller.yaml} "$sc/"
chmod u+w "$sc"/*.yaml
cat >"$sc/kustomization.yaml" <<EOF
resources: [rbac-snapshot-controller.yaml, setup-snapshot-controller.yaml]
images:
  - {name: registry.k8s.io/sig-storage/snapshot-controller, newName: localhost/cachegroup-e2e/snapshot-controller, newTag: $SNAPSHOTTER_VERSION}
patches:
  - patch: |
      {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "snapshot-controller", "namespace": "kube-system"},
       "spec": {"replicas": 1, "minReadySeconds": 0, "template": {"spec": {"hostNetwork": true}}}}
EOF
$K apply -k "$sc" >/dev/null

# The driver, as the README installs it: the member node labelled, then the
# chart (its peer Secret made at install).
$K label node "$NODE" cachegroup.io/member=true >/dev/null
$HELM install cachegroup "$REPO/deploy/helm/cachegroup" --kubeconfig "$KUBECONFIG_ADMIN" \
	--namespace cachegroup-system --create-namespace -f "$E2E_DIR/values.yaml" --wait=false >/dev/null
$K -n cachegroup-system rollout status ds/cachegroup-member --timeout=180s
$K -n cachegroup-system rollout status deploy/cachegroup-controller --timeout=180s
$K -n kube-system rollout status deploy/snapshot-controller --timeout=180s
for i in $(seq 1 60); do
	$K get csinode "$NODE" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grep -qw cachegroup.csi.dev && break
	[ "$i" = 60 ] && fail "the kubelet did not register cachegroup.csi.dev (CSINode)"
	sleep 1
done
# The member node is a member, not also a client: the client DaemonSet
# schedules nowhere on a cluster whose only node is a member.
clients=$($K -n cachegroup-system get ds/cachegroup-client -o jsonpath='{.status.desiredNumberScheduled}')
[ "$clients" = 0 ] || fail "the client DaemonSet wants $clients pods on a cluster of members only"
# An upgrade keeps the peer secret the chart made at install (lookup), and
# so the running members.
peer=$($K -n cachegroup-system get secret cachegroup-peer -o jsonpath='{.data.secret}')
[ "${#peer}" -ge 32 ] || fail "helm install made no peer secret"
gen=$($K -n cachegroup-system get ds/cachegroup-member -o jsonpath='{.metadata.generation}')
$HELM upgrade cachegroup "$REPO/deploy/helm/cachegroup" --kubeconfig "$KUBECONFIG_ADMIN" \
	--namespace cachegroup-system -f "$E2E_DIR/values.yaml" >/dev/null
[ "$($K -n cachegroup-system get secret cachegroup-peer -o jsonpath='{.data.secret}')" = "$peer" ] ||
	fail "helm upgrade replaced the peer secret"
[ "$($K -n cachegroup-system get ds/cachegroup-member -o jsonpath='{.metadata.generation}')" = "$gen" ] ||
	fail "helm upgrade with the same values changed the members' DaemonSet"
# The kustomize manifests, generated from the chart, build with kubectl's
# kustomize as users apply them.
for k in deploy/kubernetes/base deploy/kubernetes/classes deploy/kubernetes/overlays/example; do
	$KBIN/kubectl kustomize "$REPO/$k" >"$E2E_WORK/kustomize-$(basename "$k").yaml" || fail "kubectl kustomize $k"
done
grep -q 'value: 150Gi' "$E2E_WORK/kustomize-example.yaml" || fail "the example overlay does not size the members"
pass "install: helm install of deploy/helm/cachegroup (test/e2e-k8s/values.yaml); member node plugin Ready (CSI Probe through the liveness-probe sidecar), registered with the kubelet (CSINode), controller Ready; no client-only pod on a member node; helm upgrade keeps the generated peer secret and the members; deploy/kubernetes base, classes and example overlay build with kubectl kustomize"

phase scenarios
. "$HERE/scenarios.sh"

phase ""
