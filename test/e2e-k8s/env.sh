# Settings of the real-cluster test, sourced by its scripts. Each may be set in the
# environment instead.

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
E2E_DIR=$REPO/test/e2e-k8s

# Builds kept between runs on one machine (Kubernetes and sidecar binaries).
E2E_CACHE=${E2E_CACHE:-/var/cache/cachegroup-e2e}
# One run's state: cluster data, kubelet root, the driver's store, images, logs.
# Fixed, because the test overlay names paths below it; removed at teardown.
E2E_WORK=/var/lib/cachegroup-e2e
# Where the logs of the last run are copied at teardown.
E2E_LOGS=${E2E_LOGS:-$E2E_CACHE/last-run-logs}

KUBE_VERSION=${KUBE_VERSION:-1.34.4}
KUBE_COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
PROVISIONER_VERSION=${PROVISIONER_VERSION:-v6.3.0}
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.7.0}
RESIZER_VERSION=${RESIZER_VERSION:-v2.3.0}
# Installs the chart; the same version as .ci/run installs for test/manifests.
HELM_VERSION=${HELM_VERSION:-v3.19.5}

# The cluster runs in a network namespace of its own: every process of it, and
# so every pod on the host network, and every address it uses, is in there. The
# node's address is on a dummy interface in that namespace (EndpointSlices
# refuse loopback addresses, and node plugins are members by their host's
# address); nothing in the namespace routes anywhere else.
NETNS=cachegroup-e2e
NODE=localhost
NODE_IP=10.250.0.1
# The API server listens on the first address of a loopback service range, port
# 443, so that in-cluster clients (KUBERNETES_SERVICE_HOST) reach it without a
# service proxy.
SERVICE_CIDR=127.0.100.0/24
APISERVER_IP=127.0.100.1
# IN_NS CMD...: runs CMD in the cluster's network namespace (only the network
# namespace: mounts are the host's).
IN_NS="nsenter --net=/run/netns/$NETNS"

KBIN=$E2E_CACHE/kubernetes-v$KUBE_VERSION/bin
KUBECONFIG_ADMIN=$E2E_WORK/pki/admin.kubeconfig
K="$IN_NS $KBIN/kubectl --kubeconfig=$KUBECONFIG_ADMIN"
# helm, in the cluster's network namespace (it reaches the API server there).
HELM="$IN_NS $E2E_CACHE/helm-$HELM_VERSION/bin/helm"
CTR="timeout 120 ctr -a $E2E_WORK/containerd/containerd.sock -n k8s.io"

log() { echo "[e2e-k8s $(date +%H:%M:%S)] $*"; }
