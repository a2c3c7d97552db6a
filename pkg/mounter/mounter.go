// Package mounter provides the overlay and bind mounts that present cache
// volumes to pods, and mount-point checks.
//
// A read-write publish is an overlay whose lower layers are a snapshot on
// the node (a flat one, or thin layers stacked over one, newest first) and
// whose upper layer is private to the pod; the upper layer is later read
// back as plain files, whiteouts (character devices 0/0), opaque directories
// (xattr trusted.overlay.opaque=y) and renamed directories (xattr
// trusted.overlay.redirect) by the committer. A read-only publish is a
// read-only bind mount of a flat snapshot, or a read-only overlay of a stack
// with no upper layer. All mounts are nosuid and nodev. The functions are
// safe for concurrent use on distinct paths.
package mounter

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// maxStacked bounds how many mounts stacked on one target Unmount removes
// before it gives up.
const maxStacked = 16

// Unmount unmounts target, including any mounts stacked on it. A target that
// is not mounted, or does not exist, is not an error, so Unmount is
// idempotent. It never detaches lazily: if the mount is busy the error
// (wrapping EBUSY) is returned and the mount stays in place. A symlink at
// target is not followed.
func Unmount(target string) error {
	for i := 0; ; i++ {
		err := ignoringEINTR(func() error { return unix.Unmount(target, unix.UMOUNT_NOFOLLOW) })
		switch {
		case err == nil:
			if i+1 >= maxStacked {
				return fmt.Errorf("unmount %s: still mounted after %d unmounts", target, maxStacked)
			}
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			// EINVAL: target is not (or no longer) a mount point.
			return nil
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
}

// IsMountPoint reports whether path is a mount point. It is correct for bind
// mounts of a directory on the same filesystem (it asks the kernel whether
// crossing into path crosses a mount, falling back to /proc/self/mountinfo),
// not only for mounts of another device. A path that does not exist is not a
// mount point and not an error. A symlink at path is resolved first.
func IsMountPoint(path string) (bool, error) {
	mounted, err := mountinfo.Mounted(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check mount point %s: %w", path, err)
	}
	return mounted, nil
}

// SyncFS flushes the whole filesystem that holds path to stable storage
// (syncfs(2)) and reports write-back errors seen on it. After unmounting a
// volatile overlay, SyncFS on its upper directory makes the pod's writes
// durable.
func SyncFS(path string) error {
	var fd int
	err := ignoringEINTR(func() error {
		var err error
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("syncfs %s: %w", path, &fs.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}

// ignoringEINTR calls fn until it returns something other than EINTR.
func ignoringEINTR(fn func() error) error {
	for {
		err := fn()
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
