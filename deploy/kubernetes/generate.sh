#!/bin/bash
# Renders deploy/kubernetes/base and deploy/kubernetes/classes from the Helm
# chart (deploy/helm/cachegroup) with values.yaml beside this script: the chart
# is the one source of the manifests; these files exist so that
# `kubectl apply -k` works without Helm. Run it after changing the chart:
#
#   bash deploy/kubernetes/generate.sh [OUT_DIR]
#
# OUT_DIR (default: this directory) gets base/ and classes/; test/manifests
# renders into a temporary directory and fails when the files here differ.
# HELM (default: helm on the PATH, else $(go env GOPATH)/bin/helm) is the
# helm binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
helm=${HELM:-$(command -v helm || echo "$(go env GOPATH)/bin/helm")}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The kube version only satisfies the chart's kubeVersion: nothing in the
# templates depends on it.
"$helm" template cachegroup "$here/../helm/cachegroup" --namespace cachegroup-system \
	--kube-version 1.34.0 -f "$here/values.yaml" --output-dir "$tmp" >/dev/null

header='# Generated from deploy/helm/cachegroup by deploy/kubernetes/generate.sh: edit the chart, not this file.'
mkdir -p "$out/base" "$out/classes"
rm -f "$out"/base/*.yaml "$out"/classes/*.yaml
base=() classes=()
for f in "$tmp"/cachegroup/templates/*.yaml; do
	name=$(basename "$f")
	case $name in
	storageclasses.yaml | volumesnapshotclass.yaml) dir=classes ;;
	*) dir=base ;;
	esac
	# Helm starts every document with "---" and a "# Source:" line; the
	# header says where the file comes from instead.
	{
		echo "$header"
		sed -e '/^# Source: /d' "$f" | sed -e '1{/^---$/d}'
	} >"$out/$dir/$name"
	if [ "$dir" = base ]; then base+=("$name"); else classes+=("$name"); fi
done

{
	echo "$header"
	cat <<'EOT'
# The cachegroup CSI driver: member node plugins (a DaemonSet on the nodes
# labelled cachegroup.io/member=true, which form the cache group), client-only
# node plugins (every other Linux node), the controller (a Deployment with the
# provisioner, snapshotter and resizer sidecars), their RBAC, Services and the
# CSIDriver object.
#
# Before applying, create the Secret the members authenticate each other with,
# and label the member nodes:
#   kubectl create namespace cachegroup-system
#   kubectl -n cachegroup-system create secret generic cachegroup-peer \
#     --from-literal=secret="$(head -c 32 /dev/urandom | base64)"
#   kubectl label node NODE cachegroup.io/member=true
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
EOT
	printf '  - %s\n' "${base[@]}"
} >"$out/base/kustomization.yaml"
{
	echo "$header"
	cat <<'EOT'
# The StorageClasses and VolumeSnapshotClass build pipelines use. The
# VolumeSnapshotClass needs the snapshot CRDs and snapshot-controller of
# kubernetes-csi/external-snapshotter installed in the cluster.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
EOT
	printf '  - %s\n' "${classes[@]}"
} >"$out/classes/kustomization.yaml"
