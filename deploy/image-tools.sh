#!/bin/bash
# image-tools.sh ROOTFS_DIR
#
# Copies into the driver image's root the two programs it runs besides
# itself: mkfs.ext4, which makes each pod's quota filesystem (a pod's write
# past its volume's quota gets ENOSPC, and df shows the quota), and e2fsck,
# which checks one a crash left unclean; with the libraries they load and
# mke2fs.conf, from this machine's Debian e2fsprogs (the Dockerfile's build
# stage installs it with apt-get). Without them the node plugin still mounts,
# but pods are held to their quota only when their writes are committed.
set -euo pipefail
root=$1
for bin in mkfs.ext4 e2fsck; do
	path=$(command -v "$bin" || PATH=/usr/sbin:/sbin:$PATH command -v "$bin") || {
		echo "image-tools.sh: no $bin here: install e2fsprogs (apt-get install e2fsprogs)" >&2
		exit 1
	}
	real=$(readlink -f "$path")
	# mke2fs takes the filesystem type from the name it runs under.
	install -D -m 0755 "$real" "$root/usr/sbin/$bin"
	ldd "$real" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
		install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
	done
done
# The same filesystem defaults as mkfs.ext4 on a Debian host.
[ -f /etc/mke2fs.conf ] && install -D -m 0644 /etc/mke2fs.conf "$root/etc/mke2fs.conf"
exit 0
