#!/bin/bash
# mkoci.sh ROOTFS_DIR IMAGE_REF OUT.tar ENTRYPOINT_JSON [LABELS_JSON]
#
# Writes a one-layer linux/amd64 OCI image archive of ROOTFS_DIR, named
# IMAGE_REF, that `ctr images import` (containerd) and `docker load` / `podman
# load` accept. Reproducible: files are sorted, owned by root, dated at the epoch.
# Needs tar, gzip, sha256sum and jq.
set -euo pipefail
rootfs=$1 ref=$2 out=$3 ep=${4:-null} labels=${5:-'{}'}
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
mkdir -p "$w/blobs/sha256"
digest() { sha256sum "$1" | cut -d' ' -f1; }
blob() { # blob FILE: moves FILE into blobs/ and prints its digest and size
	local d s
	d=$(digest "$1")
	s=$(stat -c %s "$1")
	mv "$1" "$w/blobs/sha256/$d"
	echo "$d $s"
}
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$w/layer.tar" .
diffid=$(digest "$w/layer.tar")
gzip -1 -n -c "$w/layer.tar" >"$w/layer.tgz"
rm "$w/layer.tar"
read -r ld ls < <(blob "$w/layer.tgz")
jq -cn --arg d "sha256:$diffid" --argjson ep "$ep" --argjson labels "$labels" \
	'{architecture:"amd64",os:"linux",created:"1970-01-01T00:00:00Z",
	  config:{Entrypoint:$ep,Env:["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],Labels:$labels},
	  rootfs:{type:"layers",diff_ids:[$d]},history:[{created:"1970-01-01T00:00:00Z",created_by:"mkoci.sh"}]}' >"$w/config.json"
read -r cd cs < <(blob "$w/config.json")
jq -cn --arg c "sha256:$cd" --argjson cs "$cs" --arg l "sha256:$ld" --argjson ls "$ls" \
	'{schemaVersion:2,mediaType:"application/vnd.oci.image.manifest.v1+json",
	  config:{mediaType:"application/vnd.oci.image.config.v1+json",digest:$c,size:$cs},
	  layers:[{mediaType:"application/vnd.oci.image.layer.v1.tar+gzip",digest:$l,size:$ls}]}' >"$w/manifest.json"
read -r md ms < <(blob "$w/manifest.json")
jq -cn --arg m "sha256:$md" --argjson ms "$ms" --arg ref "$ref" \
	'{schemaVersion:2,mediaType:"application/vnd.oci.image.index.v1+json",
	  manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$m,size:$ms,
	    platform:{architecture:"amd64",os:"linux"},
	    annotations:{"io.containerd.image.name":$ref,"org.opencontainers.image.ref.name":$ref}}]}' >"$w/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$w/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$w" -cf "$out" oci-layout index.json blobs
echo "built $out ($ref)"
