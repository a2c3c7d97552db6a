#!/bin/bash
# cluster.sh up|down: a real single-node Kubernetes on this machine, every
# process started here and recorded by PID, every address on loopback.
#
#   up    etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#         containerd and kubelet, with the images of $E2E_WORK/images imported;
#   down  stops them by PID (containers first), unmounts, removes what they made.
#
# Needs Debian's containerd, runc, etcd-server, etcd-client,
# containernetworking-plugins, jq, openssl and iproute2, and the binaries that
# build.sh makes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"

RUN=$E2E_WORK/run
LOGS=$E2E_WORK/logs
PKI=$E2E_WORK/pki
BRIDGE=cgbr0 # in the cluster's network namespace

# bg NAME CMD...: starts CMD in the background in the cluster's network
# namespace, logging to $LOGS/NAME.log.
bg() {
	local name=$1
	shift
	nohup $IN_NS "$@" >"$LOGS/$name.log" 2>&1 &
	echo "$! $(basename "$1")" >"$RUN/$name.pid"
}

# waitfor WHAT SECONDS CMD...: until CMD succeeds.
waitfor() {
	local what=$1 n=$2
	shift 2
	for _ in $(seq 1 "$n"); do
		if "$@" >/dev/null 2>&1; then
			log "$what ready"
			return 0
		fi
		sleep 1
	done
	log "TIMEOUT waiting for $what"
	return 1
}

pki() {
	mkdir -p "$PKI"
	cd "$PKI"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=cachegroup-e2e-ca" 2>/dev/null
	printf '[req]\ndistinguished_name=dn\n[dn]\n[ext]\nsubjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth,clientAuth\n' "$APISERVER_IP" "$NODE_IP" >san.cnf
	openssl req -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr -subj "/CN=kube-apiserver" 2>/dev/null
	openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out serving.crt -days 2 -extfile san.cnf -extensions ext 2>/dev/null
	openssl genrsa -out sa.key 2048 2>/dev/null
	openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	local admin kubelet
	admin=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
	kubelet=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
	printf '%s,admin,admin-uid,system:masters\n%s,system:node:%s,kubelet-uid,system:nodes\n' "$admin" "$kubelet" "$NODE" >tokens.csv
	for who in admin kubelet; do
		local tok=$admin
		[ $who = kubelet ] && tok=$kubelet
		cat >$who.kubeconfig <<KC
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://$APISERVER_IP:443", certificate-authority: $PKI/ca.crt}}]
users: [{name: $who, user: {token: $tok}}]
contexts: [{name: e2e, context: {cluster: e2e, user: $who}}]
current-context: e2e
KC
	done
	chmod 600 ./*.key tokens.csv ./*.kubeconfig
	cd - >/dev/null
}

up() {
	if [ -d "$RUN" ]; then
		log "$RUN exists: a cluster is up or was not torn down; run $0 down first"
		return 1
	fi
	mkdir -p "$RUN" "$LOGS" "$E2E_WORK"/{cni/net.d,cni/ipam,containerd,kubelet/plugins_registry,pod-logs,store,volume-plugins}
	ip netns list 2>/dev/null | awk '{print $1}' | sort >"$RUN/netns-before"
	ip netns add "$NETNS"
	ip -n "$NETNS" link set lo up
	ip -n "$NETNS" addr add "$NODE_IP/32" dev lo
	pki
	log "pki done"

	# containerd (Debian 1.6) with a bridge network, in the cluster's network
	# namespace, for pods that have a network of their own.
	cat >"$E2E_WORK/containerd/config.toml" <<CT
version = 2
root = "$E2E_WORK/containerd/root"
state = "$E2E_WORK/containerd/state"
[grpc]
  address = "$E2E_WORK/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/cachegroup-e2e/pause:e2e"
  # No CAP_SYS_RESOURCE here: a negative oom_score_adj is refused.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$E2E_WORK/cni/net.d"
CT
	cat >"$E2E_WORK/cni/net.d/10-cachegroup-e2e.conflist" <<CN
{"cniVersion": "0.4.0", "name": "cachegroup-e2e", "plugins": [
 {"type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false,
  "ipam": {"type": "host-local", "dataDir": "$E2E_WORK/cni/ipam", "ranges": [[{"subnet": "10.244.77.0/24"}]]}},
 {"type": "loopback"}]}
CN
	bg containerd containerd --config "$E2E_WORK/containerd/config.toml"
	waitfor containerd 30 $CTR version
	for img in "$E2E_WORK"/images/*.tar; do
		$CTR images import "$img" >/dev/null
	done
	log "images imported"

	bg etcd etcd --name e2e --data-dir "$E2E_WORK/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster e2e=http://127.0.0.1:2380 --unsafe-no-fsync
	waitfor etcd 30 $IN_NS env ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 endpoint health

	# The API server listens on the "kubernetes" Service's cluster IP (the first
	# address of a loopback service range), port 443: in-cluster clients on the
	# host network reach it without a service proxy.
	bg apiserver "$KBIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
		--bind-address="$APISERVER_IP" --advertise-address="$APISERVER_IP" --secure-port=443 \
		--tls-cert-file="$PKI/serving.crt" --tls-private-key-file="$PKI/serving.key" \
		--client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc \
		--service-cluster-ip-range="$SERVICE_CIDR" --endpoint-reconciler-type=none \
		--kubelet-client-certificate="$PKI/serving.crt" --kubelet-client-key="$PKI/serving.key" \
		--kubelet-preferred-address-types=InternalIP \
		--authorization-mode=Node,RBAC --allow-privileged=true --cert-dir="$E2E_WORK/apiserver-certs"
	waitfor apiserver 90 $K get --raw /readyz

	bg kcm "$KBIN/kube-controller-manager" --kubeconfig="$KUBECONFIG_ADMIN" \
		--authentication-kubeconfig="$KUBECONFIG_ADMIN" --authorization-kubeconfig="$KUBECONFIG_ADMIN" \
		--leader-elect=false --bind-address=127.0.0.1 --secure-port=10257 \
		--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
		--use-service-account-credentials=true --flex-volume-plugin-dir="$E2E_WORK/volume-plugins"
	bg scheduler "$KBIN/kube-scheduler" --kubeconfig="$KUBECONFIG_ADMIN" \
		--authentication-kubeconfig="$KUBECONFIG_ADMIN" --authorization-kubeconfig="$KUBECONFIG_ADMIN" \
		--leader-elect=false --bind-address=127.0.0.1 --secure-port=10259

	cat >"$E2E_WORK/kubelet-config.yaml" <<KL
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: $PKI/ca.crt}}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$E2E_WORK/containerd/containerd.sock
podLogsDir: $E2E_WORK/pod-logs
volumePluginDir: $E2E_WORK/volume-plugins
tlsCertFile: $PKI/serving.crt
tlsPrivateKeyFile: $PKI/serving.key
resolvConf: ""
# Do not touch the host's iptables.
makeIPTablesUtilChains: false
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Volume usage (NodeGetVolumeStats) is collected often, for the quota check.
volumeStatsAggPeriod: 2s
KL
	bg kubelet "$KBIN/kubelet" --config="$E2E_WORK/kubelet-config.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
		--root-dir="$E2E_WORK/kubelet" --hostname-override="$NODE" --node-ip="$NODE_IP" --v=2
	waitfor "node Ready" 120 $K wait --for=condition=Ready "node/$NODE" --timeout=1s
	waitfor "default service account" 60 $K get serviceaccount default
	log "cluster up"
}

# stop NAME: SIGTERM to the recorded PID, SIGKILL after 20 s; only if that
# PID still runs the program it was started with.
stop() {
	local f=$RUN/$1.pid pid prog
	[ -f "$f" ] || return 0
	read -r pid prog <"$f"
	if [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" != "$prog" ]; then
		rm -f "$f"
		return 0
	fi
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 100); do
		local st
		st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
		[ -z "$st" ] || [ "$st" = Z ] && break
		sleep 0.2
	done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$f"
}

down() {
	set +e
	if [ -f "$RUN/apiserver.pid" ] && [ -f "$RUN/kubelet.pid" ]; then
		# Workloads first, while the driver still runs, so that their volumes are
		# unpublished through it.
		$K delete ns -l cachegroup-e2e=true --timeout=90s >/dev/null 2>&1
		$K delete pods --all --all-namespaces --grace-period=2 --timeout=60s >/dev/null 2>&1
	fi
	for p in kubelet scheduler kcm apiserver etcd; do stop $p; done
	if [ -f "$RUN/containerd.pid" ]; then
		for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
		sleep 1
		for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks rm -f "$t" >/dev/null 2>&1; done
		for c in $($CTR containers ls -q 2>/dev/null); do $CTR containers rm "$c" >/dev/null 2>&1; done
		stop containerd
	fi
	# A containerd-shim that outlived its task: ours are those serving this
	# run's containerd socket.
	for d in /proc/[0-9]*; do
		case $(basename "$(readlink "$d/exe" 2>/dev/null)") in containerd-shim*) ;; *) continue ;; esac
		if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -qF "$E2E_WORK/containerd/containerd.sock"; then
			kill -9 "${d#/proc/}" 2>/dev/null
		fi
	done
	# Mounts: deepest first, then again for any revealed below.
	for _ in 1 2 3; do
		awk -v w="$E2E_WORK" '$2 == w || index($2, w "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
		done
	done
	if [ -f "$RUN/netns-before" ]; then
		for n in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do
			grep -qx "$n" "$RUN/netns-before" || ip netns del "$n" 2>/dev/null
		done
	fi
	ip netns del "$NETNS" 2>/dev/null
	# The kubelet's cgroups (cgroupfs driver).
	for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
	done
	if [ -d "$E2E_WORK" ]; then
		if [ -d "$LOGS" ]; then
			rm -rf "$E2E_LOGS"
			mkdir -p "$(dirname "$E2E_LOGS")"
			cp -r "$LOGS" "$E2E_LOGS"
			[ -d "$E2E_WORK/pod-logs" ] && cp -r "$E2E_WORK/pod-logs" "$E2E_LOGS/pods"
		fi
		if awk -v w="$E2E_WORK" 'index($2, w) == 1' /proc/mounts | grep -q .; then
			log "mounts remain below $E2E_WORK; removing only what is on its own filesystem"
		fi
		rm -rf --one-file-system "$E2E_WORK"
	fi
	set -e
	log "cluster down"
}

case ${1:-} in
up) up ;;
down) down ;;
*)
	echo "usage: $0 up|down" >&2
	exit 2
	;;
esac
