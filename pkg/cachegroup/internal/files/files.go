// Package files reads and writes whole files for the member's layers: by
// descriptor with the fewest system calls (os.File registers every file with
// the poller, five calls more), and atomically for records that must survive
// a crash. It imports nothing of the project.
package files

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ReadFile reads a whole regular file. With the size it is expected to have,
// it needs no stat: one read of size+1 bytes comes back short at the end (a
// file of another size is read as it is, for the caller's verification to
// reject). size 0 means not known.
func ReadFile(path string, size int64) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	want := size + 1
	if size <= 0 {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, err
		}
		want = st.Size // blobs never change; the caller verifies
	}
	b := make([]byte, want)
	n, err := ReadFull(fd, b)
	return b[:n], err
}

// ReadFull reads from fd until b is full or a read comes back short, which
// for a regular file means its end.
func ReadFull(fd int, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := unix.Read(fd, b[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return n, err
		}
		n += k
		if k == 0 || n < len(b) {
			break
		}
	}
	return n, nil
}

// OpenNew creates the file at path for writing, replacing what a hydration
// that stopped halfway may have left there; a symlink there is replaced,
// never followed.
func OpenNew(path string, mode uint32) (int, error) {
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC | unix.O_NOFOLLOW
	fd, err := unix.Open(path, flags, mode&0o777)
	if errors.Is(err, unix.EEXIST) {
		if err = unix.Unlink(path); err == nil {
			fd, err = unix.Open(path, flags, mode&0o777)
		}
	}
	if err != nil {
		return -1, fmt.Errorf("create %s: %w", path, err)
	}
	return fd, nil
}

// WriteAll writes b to fd, however many writes it takes.
func WriteAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// Writer writes to a file descriptor; a plain io.Writer, so that
// io.CopyBuffer uses the buffer it is given.
type Writer int

func (w Writer) Write(b []byte) (int, error) {
	if err := WriteAll(int(w), b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Reader reads from a file descriptor.
type Reader int

func (r Reader) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(b) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// WriteJSON writes v to path atomically and durably.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return WriteAtomic(path, b)
}

// WriteAtomic writes b to a temporary file, fsyncs it, renames it over path
// and fsyncs the directory.
func WriteAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return Sync(filepath.Dir(path))
}

// Sync makes the file at path durable: its data, or a directory's entries.
func Sync(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// DiskUsage returns the bytes the files below dir take on their disk
// (allocated blocks, not apparent sizes: sparse files count what they use),
// 0 if dir is missing.
func DiskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		var st unix.Stat_t
		if err == nil && unix.Lstat(p, &st) == nil {
			n += st.Blocks * 512
		}
		return nil
	})
	return n
}
