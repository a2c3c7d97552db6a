package driver

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// checkPath refuses a path that is not absolute and clean: the kubelet only
// gives such paths, and a path with "..", "." or "//" in it names the place
// of another path than the one the driver records its layer under.
func checkPath(what, p string) error {
	if p == "" {
		return status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
	if !cleanPath(p) {
		return status.Errorf(codes.InvalidArgument, "%s %.200q is not an absolute, clean path (no \"..\", \".\" or \"//\")", what, p)
	}
	return nil
}

// cleanPath reports whether p is absolute and clean, without NUL bytes.
func cleanPath(p string) bool {
	return filepath.IsAbs(p) && filepath.Clean(p) == p && !strings.ContainsRune(p, 0)
}

// errSymlink is a component of a path that is a symbolic link.
var errSymlink = errors.New("is a symbolic link, which the driver never follows")

// openDir opens the directory at the absolute, clean path p one component
// at a time from the root, never following a symbolic link, and returns an
// O_PATH descriptor of it. With create, missing components are created
// (mode 0750), each in the directory just opened, so none is made through a
// link either.
func openDir(p string, create bool) (int, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	at := "/"
	for name := range strings.SplitSeq(strings.TrimPrefix(p, "/"), "/") {
		if name == "" {
			continue // p is "/"
		}
		at = filepath.Join(at, name)
		next, err := openComponent(fd, name, create)
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("%s: %w", at, err)
		}
		fd = next
	}
	return fd, nil
}

// openComponent opens directory name in dirfd without following a link,
// creating it first if it is missing and create is set.
func openComponent(dirfd int, name string, create bool) (int, error) {
	const flags = unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dirfd, name, flags, 0)
	if errors.Is(err, unix.ENOENT) && create {
		if err := unix.Mkdirat(dirfd, name, 0o750); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, err
		}
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		// O_NOFOLLOW with O_DIRECTORY: a link fails as ELOOP or ENOTDIR.
		if isSymlinkAt(dirfd, name) {
			return -1, errSymlink
		}
	}
	return fd, err
}

func isSymlinkAt(dirfd int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}

// makeTarget creates the directory target (and its missing parents) with
// no symbolic link anywhere on its path, or says which component is one.
//
// The mount itself is then made by path: mount(2) resolves the path again,
// so a component swapped for a link between this check and the mount would
// still redirect it. Only who can write to the kubelet's pod directories
// (root on the node or the kubelet, never a pod) can make that swap.
func makeTarget(target string) error {
	fd, err := openDir(target, true)
	if err != nil {
		return pathStatus("target", target, err)
	}
	unix.Close(fd)
	return nil
}

// checkNoSymlinks confirms that no component of path is a symbolic link; a
// path that does not exist is not an error, and says so with false.
func checkNoSymlinks(what, path string) (exists bool, err error) {
	fd, err := openDir(filepath.Dir(path), false)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, pathStatus(what, path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	switch err := unix.Fstatat(fd, filepath.Base(path), &st, unix.AT_SYMLINK_NOFOLLOW); {
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case err != nil:
		return false, pathStatus(what, path, err)
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return false, pathStatus(what, path, fmt.Errorf("%s: %w", path, errSymlink))
	}
	return true, nil
}

// removeTarget removes the directory (or file) target, through its parent
// opened without following a link.
func removeTarget(target string) error {
	fd, err := openDir(filepath.Dir(target), false)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return pathStatus("target", target, err)
	}
	defer unix.Close(fd)
	name := filepath.Base(target)
	err = unix.Unlinkat(fd, name, unix.AT_REMOVEDIR)
	if errors.Is(err, unix.ENOTDIR) {
		err = unix.Unlinkat(fd, name, 0)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return status.Errorf(codes.Internal, "remove target %s: %v", target, err)
	}
	return nil
}

// pathStatus is the gRPC status of a path the driver could not open safely.
func pathStatus(what, path string, err error) error {
	if errors.Is(err, errSymlink) {
		return status.Errorf(codes.InvalidArgument, "%s %s: %v", what, path, err)
	}
	return status.Errorf(codes.Internal, "%s %s: %v", what, path, err)
}
