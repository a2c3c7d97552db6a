package cas

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Meta is what a file of a snapshot carries besides its bytes. Hard links
// share one inode, so a blob linked into a snapshot has its entry's Meta.
type Meta struct {
	Mode  uint32 // permission bits and sticky
	UID   uint32
	GID   uint32
	Mtime int64 // nanoseconds since the Unix epoch
}

// ModeMask is what a snapshot keeps of a file's mode: permissions and sticky;
// setuid and setgid are never kept.
const ModeMask = 0o1777

// creator is the owner of the files this process creates.
var creator = struct{ uid, gid uint32 }{uint32(os.Geteuid()), uint32(os.Getegid())}

// createMask returns the permission bits that creating a file below dir may
// clear: the process's umask, read from /proc because setting it to read it
// would race with threads creating files; all bits if dir has a default ACL
// (which then decides instead of the umask) or the umask is unknown.
func createMask(dir string) uint32 {
	if _, err := unix.Getxattr(dir, "system.posix_acl_default", nil); err == nil {
		return 0o777
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o777
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return uint32(m)
			}
		}
	}
	return 0o777
}

// fdMeta gives the file open as fd the metadata m. The file was created by
// this process with mode m.Mode&0o777 in a directory without the setgid bit,
// so owner and mode are changed only where they differ from what creating it
// gave.
func (s *Store) fdMeta(fd int, m Meta) error {
	if m.UID != creator.uid || m.GID != creator.gid {
		if err := unix.Fchown(fd, int(m.UID), int(m.GID)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if m.Mode&^0o777 != 0 || m.Mode&s.mask != 0 {
		if err := unix.Fchmod(fd, m.Mode); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	ts := [2]unix.Timespec{unix.NsecToTimespec(m.Mtime), unix.NsecToTimespec(m.Mtime)}
	// futimens: utimensat on the descriptor itself (a NULL path).
	if _, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0); errno != 0 {
		return fmt.Errorf("set times: %w", errno)
	}
	return nil
}

// DirMode is the mode a snapshot's directory with metadata m is created with:
// its own with the owner's bits added, so that its entries can be made in it.
func DirMode(m Meta) uint32 { return (m.Mode | 0o700) & 0o777 }

// SetDirMeta gives directory path, made with DirMode(m) by this process and
// now filled, the metadata m, changing owner and mode only where creating it
// did not already give them.
func (s *Store) SetDirMeta(path string, m Meta) error {
	return changeMeta(path, m, m.UID != creator.uid || m.GID != creator.gid, DirMode(m)&^s.mask != m.Mode)
}

func metaMatches(st *unix.Stat_t, m Meta) bool {
	return st.Mode&ModeMask == m.Mode && st.Uid == m.UID && st.Gid == m.GID && st.Mtim.Nano() == m.Mtime
}

// SetMeta gives path the metadata m, never following a symlink (whose mode
// is left alone).
func SetMeta(path string, m Meta, symlink bool) error {
	return changeMeta(path, m, true, !symlink)
}

// changeMeta gives path m's mtime and, as asked, its owner and mode, never
// following a symlink.
func changeMeta(path string, m Meta, chown, chmod bool) error {
	if chown {
		if err := unix.Lchown(path, int(m.UID), int(m.GID)); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	if chmod {
		// After chown, which clears setuid/setgid bits anyway.
		if err := unix.Chmod(path, m.Mode); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(m.Mtime), unix.NsecToTimespec(m.Mtime)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("utimes %s: %w", path, err)
	}
	return nil
}

// copyWithMeta copies regular file src to dst (in-kernel where possible) and
// gives dst the metadata m.
func copyWithMeta(src, dst string, m Meta) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in) // copy_file_range on Linux
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = SetMeta(dst, m, false)
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}
