package cachegroup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// hydrateWorkers bounds the directories built at once; the work is mostly
// metadata syscalls, so a few more workers than cores keeps the disk busy.
const hydrateWorkers = 8

// flight is one hydration in progress; concurrent and retried callers wait on
// the same one.
type flight struct {
	done chan struct{}
	err  error
}

// Snapshot materialises the tree at root on this node and returns its
// directory: a tree of hard links into the local blob store, with metadata
// reproduced exactly. A snapshot already on the node is returned at once. The
// hydration runs on its own: if ctx ends first the caller gets ctx's error,
// the hydration goes on, and a later call picks it up where it is.
func (n *Node) Snapshot(ctx context.Context, root Digest) (string, error) {
	dir := n.snapPath(root)
	if _, err := os.Lstat(dir); err == nil {
		return dir, nil
	}
	n.mu.Lock()
	f, ok := n.flights[root]
	if !ok {
		f = &flight{done: make(chan struct{})}
		n.flights[root] = f
		go func() {
			f.err = n.hydrate(root)
			n.mu.Lock()
			delete(n.flights, root)
			n.mu.Unlock()
			close(f.done)
		}()
	}
	n.mu.Unlock()
	select {
	case <-f.done:
		if f.err != nil {
			return "", f.err
		}
		return dir, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// hydrate builds snapshot root in a work directory and renames it into place.
// Every step is idempotent, so a work directory left by a crash is resumed.
func (n *Node) hydrate(root Digest) error {
	ctx := context.Background()
	work := filepath.Join(n.dir, "snaps", ".work-"+root.String())
	if err := os.MkdirAll(work, 0o755); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	type job struct {
		tree Digest
		path string
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		dirs     []dirMeta
	)
	jobs := make(chan job, 1024)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	var visit func(j job)
	visit = func(j job) {
		defer wg.Done()
		t, err := n.tree(ctx, j.tree)
		if err != nil {
			fail(err)
			return
		}
		for _, e := range t.Entries {
			p := filepath.Join(j.path, e.Name)
			switch e.Type {
			case TypeDir:
				if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
					fail(err)
					return
				}
				mu.Lock()
				dirs = append(dirs, dirMeta{p, e})
				mu.Unlock()
				wg.Add(1)
				select {
				case jobs <- job{e.Digest, p}:
				default:
					visit(job{e.Digest, p}) // queue full: do it here rather than block
				}
			case TypeFile:
				if err := n.linkFile(ctx, e, p); err != nil {
					fail(err)
					return
				}
			case TypeSymlink:
				if err := makeSymlink(e, p); err != nil {
					fail(err)
					return
				}
			}
		}
	}
	for range hydrateWorkers {
		go func() {
			for j := range jobs {
				visit(j)
			}
		}()
	}
	wg.Add(1)
	jobs <- job{root, work}
	wg.Wait()
	close(jobs)
	if firstErr != nil {
		return fmt.Errorf("hydrate %s: %w", root, firstErr)
	}
	// Directory metadata last: creating entries would change the mtimes.
	for _, d := range dirs {
		if err := setMeta(d.path, d.e, false); err != nil {
			return fmt.Errorf("hydrate %s: %w", root, err)
		}
	}
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	if err := os.Rename(work, n.snapPath(root)); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	return nil
}

type dirMeta struct {
	path string
	e    Entry
}

// tree returns the directory object d, fetching it from the group if needed.
func (n *Node) tree(ctx context.Context, d Digest) (*Tree, error) {
	if err := n.fetch(ctx, d); err != nil {
		return nil, err
	}
	return loadTree(n.store, d)
}

// fetch makes sure blob d is in the local store; concurrent misses of one
// blob on this node become one fetch.
func (n *Node) fetch(ctx context.Context, d Digest) error {
	if n.store.Has(d) {
		return nil
	}
	n.mu.Lock()
	f, ok := n.fetches[d]
	if !ok {
		f = &flight{done: make(chan struct{})}
		n.fetches[d] = f
		go func() {
			f.err = n.group.Fetch(ctx, d)
			n.mu.Lock()
			delete(n.fetches, d)
			n.mu.Unlock()
			close(f.done)
		}()
	}
	n.mu.Unlock()
	<-f.done
	return f.err
}

// linkFile makes path a hard link to the blob of file entry e, with e's
// metadata. Hard links share one inode, so the blob's metadata must be e's:
// a blob no tree uses yet is given it; otherwise a copy with e's metadata (a
// variant, kept in the store for reuse) is linked instead.
func (n *Node) linkFile(ctx context.Context, e Entry, path string) error {
	if _, err := os.Lstat(path); err == nil {
		return nil // made before a restart
	}
	if err := n.fetch(ctx, e.Digest); err != nil {
		return err
	}
	src := n.store.Path(e.Digest)
	mu := n.store.lock(e.Digest)
	mu.Lock()
	defer mu.Unlock()
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("blob %s: %w", e.Digest, err)
	}
	if !metaMatches(&st, e) {
		if st.Nlink == 1 {
			if err := setMeta(src, e, false); err != nil {
				return err
			}
		} else {
			v, err := n.variant(src, e)
			if err != nil {
				return err
			}
			src = v
		}
	}
	err := os.Link(src, path)
	if errors.Is(err, unix.EMLINK) {
		// The inode has as many links as the filesystem allows: a private copy.
		return copyWithMeta(src, path, e)
	}
	return err
}

// variant returns a copy of blob src carrying e's metadata, making it once.
func (n *Node) variant(src string, e Entry) (string, error) {
	h := e.Digest.String()
	v := filepath.Join(n.store.variantDir(), h[:2], fmt.Sprintf("%s-%o-%d-%d-%d", h, e.Mode, e.UID, e.GID, e.Mtime))
	if _, err := os.Lstat(v); err == nil {
		return v, nil
	}
	if err := os.MkdirAll(filepath.Dir(v), 0o700); err != nil {
		return "", err
	}
	tmp := filepath.Join(n.store.tmpDir(), "variant-"+filepath.Base(v))
	if err := copyWithMeta(src, tmp, e); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, v); err != nil {
		return "", err
	}
	return v, nil
}

// copyWithMeta copies regular file src to dst (in-kernel where possible) and
// gives dst e's metadata.
func copyWithMeta(src, dst string, e Entry) error {
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
		err = setMeta(dst, e, false)
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// makeSymlink creates symlink entry e at path.
func makeSymlink(e Entry, path string) error {
	if err := os.Symlink(e.Target, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	return setMeta(path, e, true)
}

func metaMatches(st *unix.Stat_t, e Entry) bool {
	return st.Mode&modeMask == e.Mode && st.Uid == e.UID && st.Gid == e.GID &&
		st.Mtim.Nano() == e.Mtime
}

// setMeta gives path e's owner, mode and mtime, never following a symlink.
func setMeta(path string, e Entry, symlink bool) error {
	if err := unix.Lchown(path, int(e.UID), int(e.GID)); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	if !symlink {
		// After chown, which clears setuid/setgid bits anyway.
		if err := unix.Chmod(path, e.Mode); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(e.Mtime), unix.NsecToTimespec(e.Mtime)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("utimes %s: %w", path, err)
	}
	return nil
}
