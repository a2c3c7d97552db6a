#!/bin/bash
# driver-image.sh OUT.tar [IMAGE_REF] [VERSION]
#
# Builds the driver's image as an OCI archive without a container engine: the
# same static binary, and mkfs.ext4 and e2fsck with their libraries
# (deploy/image-tools.sh, from this machine's e2fsprogs), as the Dockerfile
# (FROM scratch, ENTRYPOINT /cachegroup-csi). Load it with `ctr images
# import`, `docker load` or `podman load`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=$(realpath -m "$1")
ref=${2:-ghcr.io/cachegroup/cachegroup-csi:dev}
version=${3:-dev}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath \
	-ldflags "-s -w -X github.com/cachegroup/cachegroup/pkg/driver.Version=$version" \
	-o "$root/cachegroup-csi" ./cmd/cachegroup-csi)
bash "$here/../../../deploy/image-tools.sh" "$root"
bash "$here/mkoci.sh" "$root" "$ref" "$out" '["/cachegroup-csi"]' \
	"$(jq -cn --arg v "$version" '{"org.opencontainers.image.title":"cachegroup-csi","org.opencontainers.image.source":"https://github.com/cachegroup/cachegroup","org.opencontainers.image.version":$v}')"
