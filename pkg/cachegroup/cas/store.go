package cas

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"golang.org/x/sys/unix"
)

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
// linked to them (see Link), so a tree can be built from hard links.
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
	fresh  fresh        // blobs written or kept lately: see Sweep

	full    atomic.Pointer[func()]       // told when a write is refused (see OnFull)
	written atomic.Pointer[func(Digest)] // told of each blob written (see OnWrite)

	// Bytes others keep on the store's disk, by account (see Charge).
	chargeMu sync.Mutex
	charges  map[string]int64
	charged  atomic.Int64 // their sum

	freeMu    sync.Mutex // guards the cached free-space reading
	lastFree  int64
	sinceStat int64
	statAt    time.Time
}

// OpenStore opens (creating if needed) the store under dir.
func OpenStore(dir string, limits Limits) (*Store, error) {
	s := &Store{dir: dir, limits: limits, charges: map[string]int64{}}
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

// Size returns the size of blob d, or -1 if the store lacks it.
func (s *Store) Size(d Digest) int64 {
	var st unix.Stat_t
	if unix.Lstat(s.Path(d), &st) != nil {
		return -1
	}
	return st.Size
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
	b, err := files.ReadFile(s.Path(d), 0)
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

// copyBufs holds the buffers of Put: large, because Put takes blobs of any
// size and every read of the source also feeds the hash.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// Put stores the content read from r and returns its digest. If want is not
// zero the content must hash to it, or nothing is stored and ErrCorrupt is
// returned.
func (s *Store) Put(r io.Reader, want Digest) (Digest, error) {
	tmp := s.tempPath()
	fd, err := files.OpenNew(tmp, 0o600)
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
	n, err := io.CopyBuffer(files.Writer(fd), io.TeeReader(r, h), *buf)
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
	fd, err := files.OpenNew(tmp, 0o600)
	if err != nil {
		return Digest{}, err
	}
	err = files.WriteAll(fd, b)
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
	s.wrote(d)
	return nil
}

// reserve accounts n more bytes, refusing past the cache size (blobs and
// charges together) or the floor.
func (s *Store) reserve(n int64) error {
	if used := s.used.Load() + s.charged.Load(); s.limits.CacheSize > 0 && used+n > s.limits.CacheSize {
		s.onFull()
		return fmt.Errorf("%w: %d bytes used of %d (%d of them outside blobs)", ErrNoSpace, used, s.limits.CacheSize, s.charged.Load())
	}
	if s.limits.FreeFloor > 0 {
		free, err := s.free(n)
		if err == nil && free-n < s.limits.FreeFloor {
			s.onFull()
			return fmt.Errorf("%w: %d bytes free, floor %d", ErrNoSpace, free, s.limits.FreeFloor)
		}
	}
	s.used.Add(n)
	return nil
}

// OnFull sets f to be called each time the store refuses a write for want
// of space, so the member starts making room; f must not block.
func (s *Store) OnFull(f func()) { s.full.Store(&f) }

// OnWrite sets f to be called with each blob written into the store (not
// one only kept, or already there); f must not block.
func (s *Store) OnWrite(f func(Digest)) { s.written.Store(&f) }

// wrote marks d written lately and tells OnWrite's function.
func (s *Store) wrote(d Digest) {
	s.fresh.touch(d)
	s.tell(d)
}

// tell tells OnWrite's function that d was written.
func (s *Store) tell(d Digest) {
	if f := s.written.Load(); f != nil {
		(*f)(d)
	}
}

func (s *Store) onFull() {
	if f := s.full.Load(); f != nil {
		(*f)()
	}
}

// Limits returns the store's bounds.
func (s *Store) Limits() Limits { return s.limits }

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
		c = min(c, s.limits.CacheSize-s.used.Load()-s.charged.Load())
	}
	return max(c, 0)
}

// Linked reports whether blob d is linked into a snapshot on this node (or
// cannot be checked): such a copy stays while the snapshot does.
func (s *Store) Linked(d Digest) bool {
	var st unix.Stat_t
	return unix.Lstat(s.Path(d), &st) != nil || st.Nlink > 1
}

// CreateTemp creates a new temporary file in the store, for a blob to be
// placed with Adopt once it is complete and verified.
func (s *Store) CreateTemp() (*os.File, error) { return os.CreateTemp(s.tmpDir(), "part-") }

// OpenUnnamed opens a new file in the store that has no name yet (an
// O_TMPFILE) with the permission bits of m, for a blob to be linked into
// place with LinkUnnamed once it is complete; closed unlinked, it is gone. A
// blob made so costs one directory entry, not the three of a named
// temporary file renamed.
func (s *Store) OpenUnnamed(m Meta) (*os.File, error) {
	fd, err := unix.Open(s.tmpDir(), unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, m.Mode&0o777)
	if err != nil {
		return nil, fmt.Errorf("open an unnamed file in the store: %w", err)
	}
	return os.NewFile(uintptr(fd), s.tmpDir()), nil
}

// LinkUnnamed gives the file f opened by OpenUnnamed(m) the metadata m and
// links it into the store as blob d of size n, reserving n bytes; the caller
// has hashed it. If the blob already exists it reports false and the store
// is unchanged.
func (s *Store) LinkUnnamed(f *os.File, d Digest, n int64, m Meta) (bool, error) {
	fd := int(f.Fd())
	if err := s.fdMeta(fd, m); err != nil {
		return false, fmt.Errorf("store blob %s: %w", d, err)
	}
	if err := s.reserve(n); err != nil {
		return false, err
	}
	dst := s.Path(d)
	// AT_EMPTY_PATH links the descriptor itself (the store runs as root).
	err := unix.Linkat(fd, "", unix.AT_FDCWD, dst, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) {
		if err = os.MkdirAll(filepath.Dir(dst), 0o700); err == nil {
			err = unix.Linkat(fd, "", unix.AT_FDCWD, dst, unix.AT_EMPTY_PATH)
		}
	}
	if err != nil {
		s.used.Add(-n)
		if errors.Is(err, unix.EEXIST) {
			return false, nil // stored meanwhile
		}
		return false, fmt.Errorf("store blob %s: %w", d, err)
	}
	// Not marked fresh: a copy fetched for a snapshot is held by its links,
	// and Evict must take it once they go, however soon (see Evict).
	s.tell(d)
	return true, nil
}

// Used returns the bytes of blobs in the store.
func (s *Store) Used() int64 { return s.used.Load() }

// Charge sets the bytes account keeps on the store's disk besides blobs
// (the node tier's layer images, by their allocated blocks): they count
// against the cache size with the blobs, so the store takes fewer. Each
// call replaces the account's figure; 0 closes it. The floor needs no
// charge: it is read from the disk, which holds them already.
func (s *Store) Charge(account string, bytes int64) {
	s.chargeMu.Lock()
	defer s.chargeMu.Unlock()
	s.charged.Add(bytes - s.charges[account])
	if bytes == 0 {
		delete(s.charges, account)
	} else {
		s.charges[account] = bytes
	}
}

// Charged returns the bytes every account keeps on the store's disk besides
// blobs (see Charge).
func (s *Store) Charged() int64 { return s.charged.Load() }

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

// Create writes blob ref, ref.Size bytes read from r, as a new file at path
// with metadata m, and links it into the store: the file is both a
// snapshot's entry and the store's copy. The bytes are
// verified before the file is linked anywhere; a blob that fits buf is
// verified before anything is written. Owner, mode and times are set on the
// open file, and only where creating it did not already give them.
func (s *Store) Create(path string, ref Ref, m Meta, r io.Reader, buf []byte) error {
	d := ref.Digest
	var small []byte
	if ref.Size <= int64(len(buf)) {
		small = buf[:ref.Size]
		if _, err := io.ReadFull(r, small); err != nil {
			return fmt.Errorf("blob %s: %w", d, err)
		}
		if Sum(small) != d {
			return fmt.Errorf("blob %s: %w", d, ErrCorrupt)
		}
	}
	if err := s.reserve(ref.Size); err != nil {
		return err
	}
	linked := false
	defer func() {
		if !linked {
			s.used.Add(-ref.Size)
		}
	}()
	fd, err := files.OpenNew(path, m.Mode)
	if err != nil {
		return err
	}
	if small != nil {
		err = files.WriteAll(fd, small)
	} else {
		h := sha256.New()
		_, err = io.CopyBuffer(files.Writer(fd), io.TeeReader(io.LimitReader(r, ref.Size), h), buf)
		if err == nil && Digest(h.Sum(nil)) != d {
			err = fmt.Errorf("blob %s: %w", d, ErrCorrupt)
		}
	}
	if err == nil {
		err = s.fdMeta(fd, m)
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
		s.wrote(d)
	case errors.Is(err, unix.EEXIST):
		// Stored meanwhile by another way in (a commit): the file keeps its
		// own inode, with the same verified bytes.
	default:
		unix.Unlink(path)
		return fmt.Errorf("store blob %s: %w", d, err)
	}
	return nil
}
