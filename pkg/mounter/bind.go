package mounter

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// readOnlyFlags are the statfs flags a read-only publish must carry.
const readOnlyFlags = unix.ST_RDONLY | unix.ST_NOSUID | unix.ST_NODEV

// stNoSymfollow is ST_NOSYMFOLLOW from <sys/statvfs.h> (Linux 5.10).
const stNoSymfollow = 0x2000

// BindReadOnly bind-mounts source at target read-only, nosuid,nodev. Source
// and target must be of the same kind (both directories or both files);
// mounts below source are not carried over.
//
// Where the kernel has the new mount API (Linux 5.12) the bind is made
// read-only before it is attached, so target is never writable, not even
// for an instant; otherwise it is a bind followed by a read-only remount. In
// both cases the flags are checked on the mounted target, and a mount that
// does not carry them is unmounted again and reported.
func BindReadOnly(target, source string) error {
	err := bindReadOnlyDetached(target, source)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		// No new mount API (old kernel, or a seccomp filter that refuses it).
		err = bindReadOnlyRemount(target, source)
	}
	if err != nil {
		return fmt.Errorf("bind %s read-only at %s: %w", source, target, err)
	}
	if err := checkFlags(target, readOnlyFlags); err != nil {
		if uerr := unmountOnce(target); uerr != nil {
			err = fmt.Errorf("%w (and unmount: %v)", err, uerr)
		}
		return fmt.Errorf("bind %s read-only at %s: %w", source, target, err)
	}
	return nil
}

// bindReadOnlyDetached clones source as a detached mount, makes it read-only,
// nosuid and nodev, and only then attaches it at target.
func bindReadOnlyDetached(target, source string) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, source, unix.OPEN_TREE_CLONE|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree: %w", err)
	}
	// Closing the descriptor drops the clone if it was never attached.
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("mount_setattr: %w", err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

// bindReadOnlyRemount binds source at target, then remounts the bind
// read-only, nosuid and nodev, keeping the other per-mount flags of source
// (a remount that dropped a locked flag such as noexec would be refused).
func bindReadOnlyRemount(target, source string) error {
	err := ignoringEINTR(func() error { return unix.Mount(source, target, "", unix.MS_BIND, "") })
	if err != nil {
		return fmt.Errorf("bind mount: %w", err)
	}
	var st unix.Statfs_t
	err = ignoringEINTR(func() error { return unix.Statfs(target, &st) })
	if err == nil {
		flags := uintptr(unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV) | keptFlags(st.Flags)
		err = ignoringEINTR(func() error { return unix.Mount("", target, "", flags, "") })
	}
	if err != nil {
		if uerr := unmountOnce(target); uerr != nil {
			return fmt.Errorf("remount read-only: %w (and unmount: %v)", err, uerr)
		}
		return fmt.Errorf("remount read-only: %w", err)
	}
	return nil
}

// keptFlags maps the per-mount statfs flags of a bind mount to the mount(2)
// flags a bind remount must repeat to keep them.
func keptFlags(st int64) uintptr {
	var ms uintptr
	for _, f := range [...]struct {
		st int64
		ms uintptr
	}{
		{unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME},
		{unix.ST_NODIRATIME, unix.MS_NODIRATIME},
		{unix.ST_RELATIME, unix.MS_RELATIME},
		{stNoSymfollow, unix.MS_NOSYMFOLLOW},
	} {
		if st&f.st != 0 {
			ms |= f.ms
		}
	}
	return ms
}

// checkFlags verifies that the mount at path carries every statfs flag in want.
func checkFlags(path string, want int64) error {
	var st unix.Statfs_t
	if err := ignoringEINTR(func() error { return unix.Statfs(path, &st) }); err != nil {
		return fmt.Errorf("statfs: %w", err)
	}
	if missing := want &^ st.Flags; missing != 0 {
		return fmt.Errorf("mount flags %#x requested but %#x missing on the mount", want, missing)
	}
	return nil
}

// unmountOnce removes the top mount at target.
func unmountOnce(target string) error {
	return ignoringEINTR(func() error { return unix.Unmount(target, unix.UMOUNT_NOFOLLOW) })
}
