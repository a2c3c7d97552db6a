package cas

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Link makes path a hard link to blob d with metadata m; an error wrapping
// ErrNotFound says the store lacks the blob. Hard links share one inode, so
// the blob's metadata must be m: a blob no snapshot uses yet is given it;
// otherwise a copy with m (a variant, kept in the store for reuse) is linked
// instead. This is the inner loop of staging a snapshot whose blobs are
// here: two system calls a file.
func (s *Store) Link(d Digest, m Meta, path string) error {
	src := s.Path(d)
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("blob %s: %w", d, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	// Held from the check to the link: a blob's metadata changes only under it.
	mu := s.lock(d)
	mu.Lock()
	defer mu.Unlock()
	if !metaMatches(&st, m) {
		if err := unix.Lstat(src, &st); err != nil { // again, under the lock
			return fmt.Errorf("blob %s: %w", d, err)
		}
		var err error
		switch {
		case metaMatches(&st, m):
		case st.Nlink == 1:
			if err := SetMeta(src, m, false); err != nil {
				return err
			}
		default:
			if src, err = s.variant(d, m); err != nil {
				return err
			}
		}
	}
	err := unix.Link(src, path)
	if errors.Is(err, unix.EEXIST) && !sameFile(src, path) {
		// Left by a hydration that stopped halfway, maybe mid-write.
		if err = unix.Unlink(path); err == nil {
			err = unix.Link(src, path)
		}
	}
	switch {
	case errors.Is(err, unix.EEXIST):
		return nil // linked before a restart
	case errors.Is(err, unix.EMLINK):
		// The inode has as many links as the filesystem allows: a private copy.
		return copyWithMeta(src, path, m)
	case err != nil:
		return fmt.Errorf("link %s: %w", path, err)
	}
	return nil
}

// sameFile reports whether paths a and b are links to one inode.
func sameFile(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Lstat(a, &sa) == nil && unix.Lstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// variant returns a copy of blob d carrying metadata m, making it once.
func (s *Store) variant(d Digest, m Meta) (string, error) {
	h := d.String()
	v := filepath.Join(s.variantDir(), h[:2], fmt.Sprintf("%s-%o-%d-%d-%d", h, m.Mode, m.UID, m.GID, m.Mtime))
	if _, err := os.Lstat(v); err == nil {
		return v, nil
	}
	if err := os.MkdirAll(filepath.Dir(v), 0o700); err != nil {
		return "", err
	}
	tmp := filepath.Join(s.tmpDir(), "variant-"+filepath.Base(v))
	if err := copyWithMeta(s.Path(d), tmp, m); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, v); err != nil {
		return "", err
	}
	return v, nil
}
