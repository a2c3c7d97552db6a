package cachegroup

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNotFound is returned when a blob, volume or snapshot does not exist.
var ErrNotFound = errors.New("not found")

// ErrCorrupt is returned when content does not match its digest.
var ErrCorrupt = errors.New("content does not match its digest")

// ErrNoSpace is returned when a write would pass the cache size or the disk's
// free-space floor.
var ErrNoSpace = errors.New("cache store is full")

// Limits bound what a store may write to its disk.
type Limits struct {
	// CacheSize is the most bytes of blobs the store keeps; 0 means no limit
	// besides the floor.
	CacheSize int64
	// FreeFloor is the free space the store always leaves on its disk.
	FreeFloor int64
}

// Store is a content-addressed blob store on one disk. A blob lives at
// blobs/<first two hex digits>/<digest>; it is written to a temporary file and
// renamed into place, so a blob that exists is complete. Blob files are
// immutable in content; their metadata is that of the first file tree entry
// linked to them (see Node.Snapshot), so a tree can be built from hard links.
//
// Writes are not fsynced one by one: callers that acknowledge data call Sync
// once, which flushes the whole filesystem (one syncfs instead of thousands of
// fsyncs).
type Store struct {
	dir    string
	limits Limits
	used   atomic.Int64 // bytes of blobs, approximate across crashes
	locks  [64]sync.Mutex
	mask   uint32       // permission bits file creation may clear (see createMask)
	seq    atomic.Int64 // names temporary files

	freeMu    sync.Mutex // guards the cached free-space reading
	lastFree  int64
	sinceStat int64
	statAt    time.Time
}

// OpenStore opens (creating if needed) the store under dir.
func OpenStore(dir string, limits Limits) (*Store, error) {
	s := &Store{dir: dir, limits: limits}
	for _, d := range []string{s.blobDir(), s.variantDir(), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	s.mask = createMask(dir)
	// Temporary files are partial writes of a previous process: drop them.
	if ents, err := os.ReadDir(s.tmpDir()); err == nil {
		for _, e := range ents {
			os.RemoveAll(filepath.Join(s.tmpDir(), e.Name()))
		}
	}
	var used int64
	filepath.WalkDir(s.blobDir(), func(_ string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				used += fi.Size()
			}
		}
		return nil
	})
	s.used.Store(used)
	return s, nil
}

// Dir returns the store's root directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) blobDir() string    { return filepath.Join(s.dir, "blobs") }
func (s *Store) variantDir() string { return filepath.Join(s.dir, "variants") }
func (s *Store) tmpDir() string     { return filepath.Join(s.dir, "tmp") }

// Path returns where blob d lives (whether or not it exists).
func (s *Store) Path(d Digest) string {
	h := d.String()
	return filepath.Join(s.blobDir(), h[:2], h)
}

// lock returns the mutex that serialises metadata changes of blob d.
func (s *Store) lock(d Digest) *sync.Mutex { return &s.locks[d[0]%64] }

// Has reports whether blob d is in the store.
func (s *Store) Has(d Digest) bool {
	_, err := os.Lstat(s.Path(d))
	return err == nil
}

// Open opens blob d for reading.
func (s *Store) Open(d Digest) (*os.File, error) {
	f, err := os.Open(s.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return f, err
}

// ReadAll returns the content of blob d, verified against its digest; small
// blobs only (tree objects).
func (s *Store) ReadAll(d Digest) ([]byte, error) {
	b, err := readFile(s.Path(d), 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	if Sum(b) != d {
		s.Remove(d)
		return nil, fmt.Errorf("blob %s: %w (removed)", d, ErrCorrupt)
	}
	return b, nil
}

// readFile reads a whole regular file with the fewest system calls (os
// functions would also register it with the poller, five calls more). With
// the size it is expected to have, it needs no stat: one read of size+1
// bytes comes back short at the end (a file of another size is read as it
// is, for the caller's verification to reject). size 0 means not known.
func readFile(path string, size int64) ([]byte, error) {
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
	n, err := readFull(fd, b)
	return b[:n], err
}

// copyBufs holds the buffers of Put: large, because Put takes blobs of any
// size and every read of the source also feeds the hash.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// Put stores the content read from r and returns its digest. If want is not
// zero the content must hash to it, or nothing is stored and ErrCorrupt is
// returned.
func (s *Store) Put(r io.Reader, want Digest) (Digest, error) {
	tmp := s.tempPath()
	fd, err := openNew(tmp, 0o600)
	if err != nil {
		return Digest{}, err
	}
	placed := false
	defer func() {
		if !placed {
			unix.Unlink(tmp)
		}
	}()
	h := sha256.New()
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	n, err := io.CopyBuffer(fdWriter(fd), io.TeeReader(r, h), *buf)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return Digest{}, fmt.Errorf("store blob: %w", err)
	}
	var d Digest
	h.Sum(d[:0])
	if !want.IsZero() && d != want {
		return Digest{}, fmt.Errorf("blob %s: got %s: %w", want, d, ErrCorrupt)
	}
	if err := s.place(tmp, d, n); err != nil {
		return Digest{}, err
	}
	placed = true
	return d, nil
}

// tempPath returns a new name for a temporary file in the store.
func (s *Store) tempPath() string {
	return filepath.Join(s.tmpDir(), fmt.Sprintf("put-%d", s.seq.Add(1)))
}

// PutBytes stores b and returns its digest.
func (s *Store) PutBytes(b []byte) (Digest, error) {
	d := Sum(b)
	if s.Has(d) {
		return d, nil
	}
	tmp := s.tempPath()
	fd, err := openNew(tmp, 0o600)
	if err != nil {
		return Digest{}, err
	}
	err = writeAll(fd, b)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.place(tmp, d, int64(len(b)))
	}
	if err != nil {
		unix.Unlink(tmp)
		return Digest{}, fmt.Errorf("store blob: %w", err)
	}
	return d, nil
}

// Adopt moves the regular file at path into the store as blob d of size n, by
// rename: the caller has hashed it. The file keeps its metadata. If the blob
// already exists the file is left where it is and Adopt reports false.
func (s *Store) Adopt(path string, d Digest, n int64) (bool, error) {
	if s.Has(d) {
		return false, nil
	}
	if err := s.place(path, d, n); err != nil {
		return false, err
	}
	return true, nil
}

// place renames the file at src to blob d's path, reserving n bytes.
func (s *Store) place(src string, d Digest, n int64) error {
	if err := s.reserve(n); err != nil {
		return err
	}
	dst := s.Path(d)
	if err := os.Rename(src, dst); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		err = os.Rename(src, dst)
		if err != nil {
			s.used.Add(-n)
			return fmt.Errorf("store blob %s: %w", d, err)
		}
	} else if err != nil {
		s.used.Add(-n)
		return fmt.Errorf("store blob %s: %w", d, err)
	}
	return nil
}

// reserve accounts n more bytes, refusing past the cache size or the floor.
func (s *Store) reserve(n int64) error {
	if s.limits.CacheSize > 0 && s.used.Load()+n > s.limits.CacheSize {
		return fmt.Errorf("%w: %d bytes used of %d", ErrNoSpace, s.used.Load(), s.limits.CacheSize)
	}
	if s.limits.FreeFloor > 0 {
		free, err := s.free(n)
		if err == nil && free-n < s.limits.FreeFloor {
			return fmt.Errorf("%w: %d bytes free, floor %d", ErrNoSpace, free, s.limits.FreeFloor)
		}
	}
	s.used.Add(n)
	return nil
}

// free returns the disk's free bytes, asking the kernel again only after
// 64 MiB were written or 100 ms passed: one statfs per blob is too many.
func (s *Store) free(n int64) (int64, error) {
	s.freeMu.Lock()
	defer s.freeMu.Unlock()
	if s.sinceStat+n > 64<<20 || time.Since(s.statAt) > 100*time.Millisecond {
		f, err := s.Free()
		if err != nil {
			return 0, err
		}
		s.lastFree, s.sinceStat, s.statAt = f, 0, time.Now()
	}
	s.sinceStat += n
	return s.lastFree - s.sinceStat, nil
}

// Free returns the bytes available on the store's disk.
func (s *Store) Free() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// Capacity returns how many more bytes of blobs the store may take.
func (s *Store) Capacity() int64 {
	free, err := s.Free()
	if err != nil {
		return 0
	}
	c := free - s.limits.FreeFloor
	if s.limits.CacheSize > 0 {
		c = min(c, s.limits.CacheSize-s.used.Load())
	}
	return max(c, 0)
}

// Used returns the bytes of blobs in the store.
func (s *Store) Used() int64 { return s.used.Load() }

// Remove deletes blob d.
func (s *Store) Remove(d Digest) {
	if fi, err := os.Lstat(s.Path(d)); err == nil && os.Remove(s.Path(d)) == nil {
		s.used.Add(-fi.Size())
	}
}

// Verify re-hashes blob d and removes it if it does not match.
func (s *Store) Verify(d Digest) error {
	f, err := s.Open(d)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if Digest(h.Sum(nil)) != d {
		s.Remove(d)
		return fmt.Errorf("blob %s: %w (removed)", d, ErrCorrupt)
	}
	return nil
}

// Sync flushes the store's filesystem: everything written or renamed into the
// store before it is durable when it returns.
func (s *Store) Sync() error {
	f, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", s.dir, err)
	}
	return nil
}

// create writes blob e.Digest, n = e.Size bytes read from r, as a new file
// at path with e's owner, mode and mtime, and links it into the store: the
// file is both a snapshot's entry and the store's copy. The bytes are
// verified before the file is linked anywhere; a blob that fits buf is
// verified before anything is written. Owner, mode and times are set on the
// open file, and only where creating it did not already give them.
func (s *Store) create(path string, e Entry, r io.Reader, buf []byte) error {
	d := e.Digest
	var small []byte
	if e.Size <= int64(len(buf)) {
		small = buf[:e.Size]
		if _, err := io.ReadFull(r, small); err != nil {
			return fmt.Errorf("blob %s: %w", d, err)
		}
		if Sum(small) != d {
			return fmt.Errorf("blob %s: %w", d, ErrCorrupt)
		}
	}
	if err := s.reserve(e.Size); err != nil {
		return err
	}
	linked := false
	defer func() {
		if !linked {
			s.used.Add(-e.Size)
		}
	}()
	fd, err := openNew(path, e.Mode)
	if err != nil {
		return err
	}
	if small != nil {
		err = writeAll(fd, small)
	} else {
		h := sha256.New()
		_, err = io.CopyBuffer(fdWriter(fd), io.TeeReader(io.LimitReader(r, e.Size), h), buf)
		if err == nil && Digest(h.Sum(nil)) != d {
			err = fmt.Errorf("blob %s: %w", d, ErrCorrupt)
		}
	}
	if err == nil {
		err = s.fdMeta(fd, e)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlink(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	dst := s.Path(d)
	err = unix.Link(path, dst)
	if errors.Is(err, unix.ENOENT) {
		if err = os.MkdirAll(filepath.Dir(dst), 0o700); err == nil {
			err = unix.Link(path, dst)
		}
	}
	switch {
	case err == nil:
		linked = true
	case errors.Is(err, unix.EEXIST):
		// Stored meanwhile by another way in (a commit): the file keeps its
		// own inode, with the same verified bytes.
	default:
		unix.Unlink(path)
		return fmt.Errorf("store blob %s: %w", d, err)
	}
	return nil
}

// openNew creates the file at path for writing, replacing what a hydration
// that stopped halfway may have left there.
func openNew(path string, mode uint32) (int, error) {
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

// writeAll writes b to fd, however many writes it takes.
func writeAll(fd int, b []byte) error {
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

// fdWriter writes to a file descriptor; a plain io.Writer, so that
// io.CopyBuffer uses the buffer it is given.
type fdWriter int

func (w fdWriter) Write(b []byte) (int, error) {
	if err := writeAll(int(w), b); err != nil {
		return 0, err
	}
	return len(b), nil
}

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

// fdMeta gives the file open as fd e's owner, mode and mtime. The file was
// created by this process with mode e.Mode&0o777 in a directory without the
// setgid bit, so owner and mode are changed only where they differ from what
// creating it gave.
func (s *Store) fdMeta(fd int, e Entry) error {
	if e.UID != creator.uid || e.GID != creator.gid {
		if err := unix.Fchown(fd, int(e.UID), int(e.GID)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if e.Mode&^0o777 != 0 || e.Mode&s.mask != 0 {
		if err := unix.Fchmod(fd, e.Mode); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	ts := [2]unix.Timespec{unix.NsecToTimespec(e.Mtime), unix.NsecToTimespec(e.Mtime)}
	// futimens: utimensat on the descriptor itself (a NULL path).
	if _, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0); errno != 0 {
		return fmt.Errorf("set times: %w", errno)
	}
	return nil
}

// dirMode is the mode a snapshot's directory is created with: its own with
// the owner's bits added, so that its entries can be made in it.
func dirMode(e Entry) uint32 { return (e.Mode | 0o700) & 0o777 }

// setDirMeta gives directory path, made with dirMode(e) by this process and
// now filled, e's owner, mode and mtime, changing owner and mode only where
// creating it did not already give them.
func (s *Store) setDirMeta(path string, e Entry) error {
	return changeMeta(path, e, e.UID != creator.uid || e.GID != creator.gid, dirMode(e)&^s.mask != e.Mode)
}
