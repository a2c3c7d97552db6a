#!/bin/bash
# Builds the OCI archives of every image the test cluster runs into
# $E2E_WORK/images: the driver (as the Dockerfile builds it), the sidecars built
# from the Go module proxy, the stand-ins, busybox for test pods, and pause.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"
IMG=$E2E_WORK/images
mkdir -p "$IMG"

# image NAME TAG BINARY...: an image of the binaries, the first the entrypoint.
image() {
	local name=$1 tag=$2 bin=$3 root=$IMG/rootfs-$1
	shift 2
	rm -rf "$root"
	mkdir -p "$root"
	for b in "$@"; do cp "$b" "$root/"; done
	bash "$HERE/images/mkoci.sh" "$root" "localhost/cachegroup-e2e/$name:$tag" "$IMG/$name.tar" "[\"/$(basename "$bin")\"]" >/dev/null
	rm -rf "$root"
}

bash "$HERE/images/driver-image.sh" "$IMG/cachegroup-csi.tar" localhost/cachegroup-e2e/cachegroup-csi:e2e e2e >/dev/null
image node-driver-registrar-standin e2e "$E2E_WORK/bin/registrar"
image livenessprobe-standin e2e "$E2E_WORK/bin/livenessprobe"
image pause e2e "$E2E_WORK/bin/pause"
image csi-provisioner "$PROVISIONER_VERSION" "$E2E_CACHE/csi-provisioner-$PROVISIONER_VERSION/bin/csi-provisioner"
image csi-snapshotter "$SNAPSHOTTER_VERSION" "$E2E_CACHE/csi-snapshotter-$SNAPSHOTTER_VERSION/bin/csi-snapshotter"
image snapshot-controller "$SNAPSHOTTER_VERSION" "$E2E_CACHE/csi-snapshotter-$SNAPSHOTTER_VERSION/bin/snapshot-controller"
image csi-resizer "$RESIZER_VERSION" "$E2E_CACHE/csi-resizer-$RESIZER_VERSION/bin/csi-resizer"

# busybox: Debian's static busybox with its applets linked in /bin.
root=$IMG/rootfs-busybox
rm -rf "$root"
mkdir -p "$root/bin" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
"$root/bin/busybox" --install -s "$root/bin"
for l in "$root"/bin/*; do [ -L "$l" ] && ln -sf busybox "$l"; done
bash "$HERE/images/mkoci.sh" "$root" localhost/cachegroup-e2e/busybox:e2e "$IMG/busybox.tar" '["/bin/sh"]' >/dev/null
rm -rf "$root"
log "images: $(cd "$IMG" && ls *.tar | tr '\n' ' ')"
