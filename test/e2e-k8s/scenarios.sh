# The scenarios of the real-cluster test, sourced by run.sh once the driver is
# installed. Each asserts its outcome through pods: a pod that checks something
# exits 0 only if the check holds, and the scenario waits for it to succeed.
# Pods use busybox and run as build pods would (no host access).

BUSYBOX=localhost/cachegroup-e2e/busybox:e2e
DRIVER=cachegroup.csi.dev
OUTBOX=$E2E_WORK/store/node/outbox
EXAMPLES=$REPO/deploy/kubernetes/examples

# ns NAME: a test namespace (removed at teardown).
ns() {
	$K create namespace "$1" >/dev/null
	$K label namespace "$1" cachegroup-e2e=true >/dev/null
	for _ in $(seq 1 30); do
		$K -n "$1" get serviceaccount default >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	fail "namespace $1 has no default service account"
}

# podyaml NS NAME VOLUME MOUNTPATH READONLY SCRIPT [keep]: a busybox pod that
# runs SCRIPT (sh -e) with the volume (YAML of the volume source, indented by 4)
# at MOUNTPATH. With keep, the pod stays running after SCRIPT and turns Ready.
podyaml() {
	local ns=$1 name=$2 vol=$3 mnt=$4 ro=$5 script=$6 keep=${7:-}
	if [ -n "$keep" ]; then
		script="$script
touch /tmp/ready
trap 'exit 0' TERM
while :; do sleep 1; done"
	fi
	local b64 probe=""
	b64=$(printf '%s\n' "$script" | base64 -w0)
	[ -n "$keep" ] && probe='
      readinessProbe:
        exec:
          command: ["cat", "/tmp/ready"]
        periodSeconds: 1'

	cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: $ns
spec:
  restartPolicy: Never
  dnsPolicy: Default
  terminationGracePeriodSeconds: 5
  automountServiceAccountToken: false
  containers:
    - name: main
      image: $BUSYBOX
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "echo $b64 | base64 -d > /tmp/script && exec sh -e /tmp/script"]$probe
      volumeMounts:
        - name: cache
          mountPath: $mnt
          readOnly: $ro
  volumes:
    - name: cache
$vol
EOF
}

pvc_vol() { printf '      persistentVolumeClaim:\n        claimName: %s\n' "$1"; }
pvc_vol_ro() { printf '      persistentVolumeClaim:\n        claimName: %s\n        readOnly: true\n' "$1"; }
# inline_vol ATTR=VALUE...: a CSI inline ephemeral volume of the driver.
inline_vol() {
	printf '      csi:\n        driver: %s\n        volumeAttributes:\n' "$DRIVER"
	for a in "$@"; do printf '          %s: "%s"\n' "${a%%=*}" "${a#*=}"; done
}

# wait_phase NS NAME: until the pod has ended; fails the run if it failed.
wait_done() {
	local ns=$1 name=$2 phase=""
	for _ in $(seq 1 180); do
		phase=$($K -n "$ns" get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)
		case $phase in
		Succeeded) return 0 ;;
		Failed)
			$K -n "$ns" logs "$name" 2>&1 | tail -30
			fail "pod $ns/$name failed"
			;;
		esac
		sleep 1
	done
	$K -n "$ns" describe pod "$name" | tail -30
	fail "pod $ns/$name did not finish (phase $phase)"
}

# run_pod NS NAME VOLUME MOUNTPATH READONLY SCRIPT: runs the pod to success,
# then deletes it and waits until its writes are committed.
run_pod() {
	podyaml "$@" | $K apply -f - >/dev/null
	wait_done "$1" "$2"
	delete_pod "$1" "$2"
}

# start_pod NS NAME VOLUME MOUNTPATH READONLY SCRIPT: a pod that stays running
# once SCRIPT has succeeded.
start_pod() {
	podyaml "$@" keep | $K apply -f - >/dev/null
	if ! $K -n "$1" wait --for=condition=Ready "pod/$2" --timeout=180s >/dev/null; then
		$K -n "$1" describe pod "$2" | tail -30
		$K -n "$1" logs "$2" 2>&1 | tail -20
		fail "pod $1/$2 did not become Ready"
	fi
}

# delete_pod NS NAME: deletes the pod, waits until the kubelet has unmounted its
# volumes (NodeUnpublishVolume) and the node's outbox is empty (its writes are
# committed, or dropped for good).
delete_pod() {
	local ns=$1 name=$2 uid
	uid=$($K -n "$ns" get pod "$name" -o jsonpath='{.metadata.uid}')
	$K -n "$ns" delete pod "$name" --timeout=90s >/dev/null
	for i in $(seq 1 120); do
		if ! grep -q "/pods/$uid/" /proc/mounts && [ ! -d "$E2E_WORK/kubelet/pods/$uid" ]; then
			break
		fi
		[ "$i" = 120 ] && fail "the volumes of pod $ns/$name were not unmounted"
		sleep 0.5
	done
	wait_outbox
}

wait_outbox() {
	for i in $(seq 1 120); do
		[ -z "$(ls -A "$OUTBOX" 2>/dev/null)" ] && return 0
		[ "$i" = 120 ] && fail "the node's outbox did not drain: $(ls "$OUTBOX")"
		sleep 0.5
	done
}

wait_bound() {
	local ns=$1 pvc=$2
	$K -n "$ns" wait --for=jsonpath='{.status.phase}'=Bound "pvc/$pvc" --timeout=120s >/dev/null ||
		{
			$K -n "$ns" describe pvc "$pvc" | tail -20
			fail "claim $ns/$pvc did not bind"
		}
}

# doc FILE KIND: the documents of KIND in a multi-document manifest.
doc() {
	awk -v kind="$2" 'BEGIN{RS="\n---\n"} $0 ~ "\nkind: " kind "\n" || $0 ~ "^kind: " kind "\n" {print "---"; print}' "$1"
}

# volume_file VOLUME_ID: the volume's head on the node's store, if it has one.
volume_file() { echo "$E2E_WORK/store/meta/volumes/$1.json"; }
# volume_live VOLUME_ID: the node's store has the volume's head, not a tombstone.
volume_live() { [ -f "$(volume_file "$1")" ] && jq -e '.deleted != true' "$(volume_file "$1")" >/dev/null; }

# A Maven-like repository: jars and poms in a deep tree plus many small files,
# and a manifest of their checksums.
MAVEN_WRITE='
cd /root/.m2/repository
for g in org/apache/commons com/google/guava io/netty; do
  for v in 1.0 1.1 2.0; do
    d=$g/lib/$v; mkdir -p $d
    head -c 262144 /dev/urandom > $d/lib-$v.jar
    echo "<project><version>$v</version></project>" > $d/lib-$v.pom
    for i in $(seq 1 40); do echo "$g $v $i" > $d/meta-$i.sha1; done
  done
done
ln -s org/apache/commons/lib/1.0/lib-1.0.jar latest.jar
find . -type f ! -name .e2e-manifest | sort | xargs sha256sum > .e2e-manifest
wc -l < .e2e-manifest'
MAVEN_CHECK='
cd /root/.m2/repository
test "$(wc -l < .e2e-manifest)" -eq 378
sha256sum -c -s .e2e-manifest
test "$(readlink latest.jar)" = org/apache/commons/lib/1.0/lib-1.0.jar
cmp latest.jar org/apache/commons/lib/1.0/lib-1.0.jar'

# --- A claim of the StorageClass binds through csi-provisioner; a build pod
# fills it, ends; a new pod sees every file (Jenkins).
ns e2e-jenkins
$K -n e2e-jenkins apply -f "$EXAMPLES/maven-cache-pvc.yaml" >/dev/null
wait_bound e2e-jenkins maven-cache
pv=$($K -n e2e-jenkins get pvc maven-cache -o jsonpath='{.spec.volumeName}')
[ "$($K get pv "$pv" -o jsonpath='{.spec.csi.driver}')" = $DRIVER ] || fail "PV $pv is not the driver's"
[ "$($K get pv "$pv" -o jsonpath='{.spec.mountOptions}')" = '["cache-group=ci","no-sharing"]' ] ||
	fail "PV $pv mount options: $($K get pv "$pv" -o jsonpath='{.spec.mountOptions}')"
MAVEN_VOL=$($K get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')
pass "a claim of StorageClass cachegroup-ci (examples/maven-cache-pvc.yaml) binds through csi-provisioner: PV $pv, volume $MAVEN_VOL, mount options cache-group=ci,no-sharing"

run_pod e2e-jenkins maven-build-1 "$(pvc_vol maven-cache)" /root/.m2/repository false "$MAVEN_WRITE"
run_pod e2e-jenkins maven-build-2 "$(pvc_vol maven-cache)" /root/.m2/repository false "$MAVEN_CHECK"
pass "Jenkins: a build pod writes a Maven repository (378 files and a symlink) into the claim and is deleted; a new pod sees every file, byte for byte"

# --- Kaniko: a workspace pod writes a build context and ends; while a second
# workspace pod holds the volume with uncommitted writes, a Kaniko-like pod
# mounting it read-only reads the committed context, not the uncommitted
# writes, and cannot write. A pod mounted after the second one ended sees its
# writes.
ns e2e-kaniko
cat <<EOF | $K apply -f - >/dev/null
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: build-context, namespace: e2e-kaniko}
spec:
  storageClassName: cachegroup-ci
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 64Mi}}
EOF
wait_bound e2e-kaniko build-context
run_pod e2e-kaniko workspace-1 "$(pvc_vol build-context)" /workspace false '
mkdir -p /workspace/app/src
printf "FROM scratch\nCOPY src /src\n" > /workspace/app/Dockerfile
head -c 100000 /dev/urandom > /workspace/app/src/blob.bin
sha256sum /workspace/app/Dockerfile /workspace/app/src/blob.bin > /workspace/app/SHA256SUMS'
start_pod e2e-kaniko workspace-2 "$(pvc_vol build-context)" /workspace false '
echo second > /workspace/app/src/uncommitted.txt'
run_pod e2e-kaniko kaniko-1 "$(pvc_vol_ro build-context)" /workspace true '
sha256sum -c -s /workspace/app/SHA256SUMS
test ! -e /workspace/app/src/uncommitted.txt
if touch /workspace/app/kaniko-was-here 2>/dev/null; then echo "read-only mount is writable"; exit 1; fi'
delete_pod e2e-kaniko workspace-2
run_pod e2e-kaniko kaniko-2 "$(pvc_vol_ro build-context)" /workspace true '
sha256sum -c -s /workspace/app/SHA256SUMS
test "$(cat /workspace/app/src/uncommitted.txt)" = second'
pass "Kaniko: a read-only pod reads the context another pod committed, not the writes of a pod still running, and cannot write; once that pod ends its writes reach later pods"

# --- Inline ephemeral volumes: created on first use, named per namespace;
# commit: never discards a pod's writes.
ns e2e-team-a
ns e2e-team-b
run_pod e2e-team-a inline-a1 "$(inline_vol volume=tools size=64Mi no-sharing=true)" /cache false '
echo team-a > /cache/owner.txt'
run_pod e2e-team-a inline-a2 "$(inline_vol volume=tools)" /cache false '
test "$(cat /cache/owner.txt)" = team-a'
run_pod e2e-team-b inline-b1 "$(inline_vol volume=tools)" /cache false '
test ! -e /cache/owner.txt
echo team-b > /cache/owner.txt'
run_pod e2e-team-a inline-a3 "$(inline_vol volume=tools commit=never)" /cache false '
test "$(cat /cache/owner.txt)" = team-a
echo poisoned > /cache/owner.txt'
run_pod e2e-team-a inline-a4 "$(inline_vol volume=tools readonly=true)" /cache false '
test "$(cat /cache/owner.txt)" = team-a
if touch /cache/x 2>/dev/null; then echo "readonly attribute ignored"; exit 1; fi'
run_pod e2e-team-b inline-b2 "$(inline_vol volume=tools)" /cache false '
test "$(cat /cache/owner.txt)" = team-b'
pass "inline ephemeral volume: created on first use and seen by the next pod; the same name in another namespace is another cache; commit: never discards writes; readonly: true cannot write"

# --- Snapshots: a VolumeSnapshot of the Maven cache, then a claim restored from
# it (examples/untrusted-build.yaml: class cachegroup-ci-untrusted, commit=never)
# holds the snapshot's files, not later commits, and never commits.
doc "$EXAMPLES/untrusted-build.yaml" VolumeSnapshot | $K -n e2e-jenkins apply -f - >/dev/null
if ! $K -n e2e-jenkins wait --for=jsonpath='{.status.readyToUse}'=true volumesnapshot/maven-cache-nightly --timeout=120s >/dev/null; then
	$K -n e2e-jenkins describe volumesnapshot maven-cache-nightly | tail -20
	fail "VolumeSnapshot maven-cache-nightly is not ready"
fi
snap=$($K -n e2e-jenkins get volumesnapshot maven-cache-nightly -o jsonpath='{.status.boundVolumeSnapshotContentName}')
snaphandle=$($K get volumesnapshotcontent "$snap" -o jsonpath='{.status.snapshotHandle}')
run_pod e2e-jenkins maven-after-snapshot "$(pvc_vol maven-cache)" /root/.m2/repository false '
echo later > /root/.m2/repository/after-snapshot.txt'
doc "$EXAMPLES/untrusted-build.yaml" PersistentVolumeClaim | $K -n e2e-jenkins apply -f - >/dev/null
wait_bound e2e-jenkins maven-cache-untrusted
run_pod e2e-jenkins untrusted-1 "$(pvc_vol maven-cache-untrusted)" /root/.m2/repository false "$MAVEN_CHECK
test ! -e /root/.m2/repository/after-snapshot.txt
echo poisoned > /root/.m2/repository/lib-poison.txt"
run_pod e2e-jenkins untrusted-2 "$(pvc_vol maven-cache-untrusted)" /root/.m2/repository false "$MAVEN_CHECK
test ! -e /root/.m2/repository/lib-poison.txt"
run_pod e2e-jenkins maven-build-3 "$(pvc_vol maven-cache)" /root/.m2/repository false "$MAVEN_CHECK
test -e /root/.m2/repository/after-snapshot.txt"
pass "VolumeSnapshot (csi-snapshotter, snapshot $snaphandle) and a claim restored from it (examples/untrusted-build.yaml) hold the snapshot's files and not later commits; its class's commit=never keeps the pod's writes out"

# --- Quota and expansion: the quota is the claim's size. A pod sees it in df
# and gets ENOSPC at the write that goes past it; what it kept is committed.
# After the claim grows (csi-resizer), the same write fits and is kept, the
# next pod's df shows the new quota, and the kubelet's volume stats
# (NodeGetVolumeStats) report the new capacity.
ns e2e-quota
cat <<EOF | $K apply -f - >/dev/null
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: small, namespace: e2e-quota}
spec:
  storageClassName: cachegroup-ci
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Mi}}
EOF
wait_bound e2e-quota small
QUOTA_VOL=$($K get pv "$($K -n e2e-quota get pvc small -o jsonpath='{.spec.volumeName}')" -o jsonpath='{.spec.csi.volumeHandle}')
# df_is KIB, in a pod: df shows the volume's size as KIB (less the up to 3%
# its filesystem's own metadata takes).
DF_IS='df_is() {
  size=$(df -k /cache | awk "NR == 2 {print \$2}")
  if [ "$size" -lt $(($1 * 97 / 100)) ] || [ "$size" -gt "$1" ]; then
    echo "df shows $size KiB, want the quota, $1 KiB"; df -k /cache; exit 1
  fi
}'
# busybox dd names the error of a failed write (its head and cat print "I/O
# error" whatever the error was).
run_pod e2e-quota big-1 "$(pvc_vol small)" /cache false "$DF_IS"'
df_is 1024
if dd if=/dev/urandom of=/cache/big.bin bs=65536 count=32 2>/tmp/dd.err; then
  echo "2 MiB written into a 1 MiB quota"; exit 1
fi
cat /tmp/dd.err
grep -q "No space left on device" /tmp/dd.err
test "$(stat -c %s /cache/big.bin)" -le 1048576
truncate -s 524288 /cache/big.bin
sha256sum /cache/big.bin > /cache/big.sha256'
run_pod e2e-quota check-1 "$(pvc_vol small)" /cache false '
sha256sum -c -s /cache/big.sha256
test "$(stat -c %s /cache/big.bin)" = 524288'
$K -n e2e-quota patch pvc small --type=merge -p '{"spec":{"resources":{"requests":{"storage":"8Mi"}}}}' >/dev/null
if ! $K -n e2e-quota wait --for=jsonpath='{.status.capacity.storage}'=8Mi pvc/small --timeout=120s >/dev/null; then
	$K -n e2e-quota describe pvc small | tail -20
	fail "claim e2e-quota/small was not expanded"
fi
grep -q '"quota": 8388608' "$(volume_file "$QUOTA_VOL")" || fail "volume $QUOTA_VOL: quota not raised on the node: $(cat "$(volume_file "$QUOTA_VOL")")"
run_pod e2e-quota big-2 "$(pvc_vol small)" /cache false "$DF_IS"'
df_is 8192
head -c 2097152 /dev/urandom > /cache/big.bin
sha256sum /cache/big.bin > /cache/big.sha256'
start_pod e2e-quota check-2 "$(pvc_vol small)" /cache false '
sha256sum -c -s /cache/big.sha256'
cap=""
for _ in $(seq 1 60); do
	cap=$($K get --raw "/api/v1/nodes/$NODE/proxy/stats/summary" |
		jq -r '.pods[] | select(.podRef.name=="check-2") | .volume[]? | select(.name=="cache") | .capacityBytes')
	[ "$cap" = 8388608 ] && break
	sleep 1
done
[ "$cap" = 8388608 ] || fail "kubelet volume stats capacity $cap, want 8388608"
delete_pod e2e-quota check-2
pass "quota: a pod of a 1 Mi claim sees 1 MiB in df and gets ENOSPC writing 2 MiB, and what it kept is committed; after the claim grows to 8Mi (csi-resizer, ControllerExpandVolume) a pod sees 8 MiB in df, its 2 MiB write is kept, and the kubelet reports capacity 8 MiB (NodeGetVolumeStats)"

# --- Reclaim Delete: deleting the claim deletes the PV and the volume.
qpv=$($K -n e2e-quota get pvc small -o jsonpath='{.spec.volumeName}')
volume_live "$QUOTA_VOL" || fail "volume $QUOTA_VOL has no head on the node before deletion"
$K -n e2e-quota delete pvc small --timeout=60s >/dev/null
for i in $(seq 1 60); do
	! $K get pv "$qpv" >/dev/null 2>&1 && ! volume_live "$QUOTA_VOL" && break
	[ "$i" = 60 ] && fail "PV $qpv or volume $QUOTA_VOL remains after the claim was deleted"
	sleep 1
done
pass "deleting a claim (reclaimPolicy Delete) deletes its PV and the volume: its head on the node is gone (a tombstone) after DeleteVolume through csi-provisioner"

# --- The node plugin restarts while a pod has the cache mounted: the pod's
# files stay readable throughout, and its writes are committed through the new
# plugin when it ends.
start_pod e2e-jenkins long-build "$(pvc_vol maven-cache)" /root/.m2/repository false "$MAVEN_CHECK"
old=$($K -n cachegroup-system get pods -l cachegroup.io/role=member -o jsonpath='{.items[0].metadata.name}')
$K -n cachegroup-system delete pod "$old" --timeout=120s >/dev/null
$K -n e2e-jenkins exec long-build -- sh -ec "$MAVEN_CHECK" || fail "the pod's files are not readable while the node plugin is down"
$K -n cachegroup-system rollout status ds/cachegroup-member --timeout=180s >/dev/null
new=$($K -n cachegroup-system get pods -l cachegroup.io/role=member -o jsonpath='{.items[0].metadata.name}')
[ "$new" != "$old" ] || fail "the node plugin pod was not replaced"
$K -n e2e-jenkins exec long-build -- sh -ec "$MAVEN_CHECK
echo after-restart > /root/.m2/repository/after-restart.txt" || fail "the pod's files are not readable after the node plugin restarted"
delete_pod e2e-jenkins long-build
run_pod e2e-jenkins maven-build-4 "$(pvc_vol maven-cache)" /root/.m2/repository false "$MAVEN_CHECK
test \"\$(cat /root/.m2/repository/after-restart.txt)\" = after-restart"
pass "node plugin pod $old deleted and replaced by $new while a pod had the cache mounted: the pod read every file while the plugin was down and after; its writes were committed through the new plugin"

# --- A pod's writes are larger than its claim once committed, though they
# fit in its layer (a sparse file takes no room there; a write past the quota
# gets ENOSPC, see above): the commit is refused, and both the claim and the
# pod are told so with a Warning Event.
ns e2e-lost
cat <<EOF | $K apply -f - >/dev/null
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: small
  namespace: e2e-lost
spec:
  storageClassName: cachegroup-ci
  accessModes: [ReadWriteMany]
  resources:
    requests:
      storage: 1Mi
EOF
wait_bound e2e-lost small
run_pod e2e-lost too-big "$(pvc_vol small)" /cache false '
truncate -s 2097152 /cache/big
test "$(stat -c %s /cache/big)" = 2097152'
# not_committed KIND NAME: waits for the WritesNotCommitted Event on the
# object and sets EVENT_MSG to its message (no subshell, so fail ends the run).
not_committed() {
	EVENT_MSG=
	for i in $(seq 1 60); do
		EVENT_MSG=$($K -n e2e-lost get events -o json | jq -r --arg k "$1" --arg n "$2" \
			'[.items[] | select(.reason == "WritesNotCommitted" and .type == "Warning" and .involvedObject.kind == $k and .involvedObject.name == $n)][0].message // empty')
		[ -n "$EVENT_MSG" ] && return 0
		[ "$i" = 60 ] && { $K -n e2e-lost get events >&2; fail "no WritesNotCommitted Event on $1 e2e-lost/$2"; }
		sleep 1
	done
}
not_committed PersistentVolumeClaim small
case $EVENT_MSG in *"larger than the volume quota"*) ;; *) fail "the claim's Event does not say why: $EVENT_MSG" ;; esac
not_committed Pod too-big
pass "a pod whose writes (a 2 MiB sparse file) are larger than its 1 Mi claim once committed: the commit is refused, and the claim and the pod each get a Warning Event WritesNotCommitted that says why"

# --- The sidecars never hit a permission they lack.
ctrl=$($K -n cachegroup-system get pods -l app.kubernetes.io/component=controller -o jsonpath='{.items[0].metadata.name}')
for c in csi-provisioner csi-snapshotter csi-resizer; do
	if $K -n cachegroup-system logs "$ctrl" -c $c | grep -i 'forbidden'; then
		fail "$c was refused by RBAC"
	fi
done
for c in cachegroup node-driver-registrar liveness-probe; do
	if $K -n cachegroup-system logs "$new" -c $c | grep -i 'forbidden'; then
		fail "node plugin $c was refused by RBAC"
	fi
done
pass "RBAC: the provisioner, snapshotter and resizer (and the node plugin) logged no forbidden request"

# --- Nothing crashed: every container of the driver and snapshot-controller
# is ready and never restarted (the node plugin's pod is the one started after
# the restart scenario).
bad=$($K get pods -n cachegroup-system -o json | jq -r '.items[] | .metadata.name as $p | .status.containerStatuses[] | select(.ready != true or .restartCount != 0) | "\($p)/\(.name) ready=\(.ready) restarts=\(.restartCount)"')
bad+=$($K get pods -n kube-system -l app.kubernetes.io/name=snapshot-controller -o json | jq -r '.items[] | .metadata.name as $p | .status.containerStatuses[] | select(.ready != true or .restartCount != 0) | "\($p)/\(.name) ready=\(.ready) restarts=\(.restartCount)"')
[ -z "$bad" ] || fail "containers not ready or restarted: $bad"
pass "every container of the node plugin, the controller and snapshot-controller is ready and never restarted"

notrun "node-driver-registrar and livenessprobe are stand-ins (test/e2e-k8s/standins): the Go module proxy refuses kubernetes-csi/node-driver-registrar and kubernetes-csi/livenessprobe, and images cannot be pulled here; the official images' flags as deploy/kubernetes passes them are what the stand-ins take"
