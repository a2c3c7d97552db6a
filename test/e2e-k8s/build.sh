#!/bin/bash
# Builds what the real-cluster test runs, from the Go module proxy only:
#   - Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#     kubectl) at $KUBE_VERSION;
#   - the CSI sidecars the proxy serves: csi-provisioner, csi-snapshotter and
#     snapshot-controller, csi-resizer;
#   - helm at $HELM_VERSION, which installs the driver's chart;
# each into $E2E_CACHE (kept between runs on one machine; a build is redone only
# when its recipe changes). Also builds, every run, into $E2E_WORK/bin the
# stand-ins for the sidecars the proxy refuses (node-driver-registrar,
# livenessprobe) and for the pause image. Settings: env.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
timed() { local s=$SECONDS; "$@"; log "  built in $((SECONDS - s))s: $*" | cut -c1-160; }

# cached NAME RECIPE FUNC: run FUNC in $E2E_CACHE/NAME unless a build with the same
# recipe is complete there.
cached() {
	local name=$1 recipe=$2 fn=$3 dir=$E2E_CACHE/$1
	if [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "$recipe" ]; then
		log "cached: $name"
		return 0
	fi
	log "building: $name (cold)"
	echo "$name" >>"$E2E_WORK/built-cold"
	rm -rf "$dir"
	mkdir -p "$dir/bin"
	(cd "$dir" && $fn)
	echo "$recipe" >"$dir/.complete"
}

# Kubernetes: a scratch module requiring k8s.io/kubernetes, with each ./staging
# replace of its go.mod rewritten to the published k8s.io/X module of the same release.
build_kubernetes() {
	local mod minor sv
	minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
	sv=0.${KUBE_VERSION#1.}
	mod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | jq -r .GoMod)
	{
		printf 'module cachegroup.e2e/kubernetes\n\ngo 1.24.0\n\ngodebug default=go1.24\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "$KUBE_VERSION"
		grep -oE '^\s+k8s.io/[a-z0-9-]+ => \./staging' "$mod" | awk -v sv="$sv" '{print "\t"$1" => "$1" v"sv}'
		echo ")"
	} >go.mod
	{
		printf '//go:build tools\n\npackage tools\n\nimport (\n'
		for c in $KUBE_COMMANDS; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
		echo ")"
	} >tools.go
	timed go mod tidy
	local ld="-s -w -X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
	local pkgs=()
	for c in $KUBE_COMMANDS; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
	timed go build -trimpath -ldflags "$ld" -o bin/ "${pkgs[@]}"
}

# sidecar MODULE VERSION CMD...: a scratch module requiring MODULE with MODULE's own
# replace directives (relative ones pointed at the published module of the same
# version), building each CMD under MODULE/cmd.
sidecar() {
	local module=$1 version=$2
	shift 2
	local gomod
	gomod=$(go mod download -json "$module@$version" | jq -r .GoMod)
	{
		printf 'module cachegroup.e2e/sidecar\n\ngo 1.26.0\n\nrequire %s %s\n\n' "$module" "$version"
		grep -E '^replace ' "$gomod" |
			sed -E "s#^replace (github.com/kubernetes-csi/external-snapshotter/client/v8) => \./client\$#replace \1 => \1 $version#" |
			grep -v ' => \./' || true
	} >go.mod
	{
		printf '//go:build tools\n\npackage tools\n\nimport (\n'
		for c in "$@"; do printf '\t_ "%s/cmd/%s"\n' "$module" "$c"; done
		echo ")"
	} >tools.go
	timed go mod tidy
	local pkgs=()
	for c in "$@"; do pkgs+=("$module/cmd/$c"); done
	timed go build -trimpath -ldflags "-s -w -X main.version=$version" -o bin/ "${pkgs[@]}"
}
build_provisioner() { sidecar github.com/kubernetes-csi/external-provisioner/v6 "$PROVISIONER_VERSION" csi-provisioner; }
build_snapshotter() { sidecar github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION" csi-snapshotter snapshot-controller; }
build_helm() { GOBIN=$PWD/bin timed go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; }
build_resizer() { sidecar github.com/kubernetes-csi/external-resizer/v2 "$RESIZER_VERSION" csi-resizer; }

# The recipe of a cached build: what it is built from. Bump RECIPE when changing
# how something is built, to rebuild it.
RECIPE=1
recipe() { echo "recipe-$RECIPE $* $(go env GOVERSION)"; }

mkdir -p "$E2E_CACHE" "$E2E_WORK/bin"
cached "kubernetes-v$KUBE_VERSION" "$(recipe "$KUBE_VERSION" "$KUBE_COMMANDS")" build_kubernetes
cached "csi-provisioner-$PROVISIONER_VERSION" "$(recipe "$PROVISIONER_VERSION")" build_provisioner
cached "csi-snapshotter-$SNAPSHOTTER_VERSION" "$(recipe "$SNAPSHOTTER_VERSION")" build_snapshotter
cached "csi-resizer-$RESIZER_VERSION" "$(recipe "$RESIZER_VERSION")" build_resizer
cached "helm-$HELM_VERSION" "$(recipe "$HELM_VERSION")" build_helm

# Every run: the stand-ins (the driver is built by images.sh, as its image).
log "building: stand-ins"
(cd "$HERE/standins" && timed go build -trimpath -ldflags "-s -w" -o "$E2E_WORK/bin/" ./registrar ./livenessprobe ./pause)
