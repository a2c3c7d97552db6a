#!/bin/bash
# image-tools.sh ROOTFS_DIR
#
# Copies into the driver image's root the two programs it runs besides
# itself: mkfs.ext4, which makes each pod's quota filesystem, and e2fsck,
# which checks one a crash left unclean, with the libraries they load, from
# this machine (Debian's e2fsprogs). Without them the node plugin still
# mounts, but pods are not held to their quota while they write.
set -euo pipefail
root=$1
for bin in mkfs.ext4 e2fsck; do
	real=$(readlink -f "$(command -v "$bin")")
	install -D -m 0755 "$real" "$root/usr/sbin/$bin"
	ldd "$real" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
		install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
	done
done
