package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/parallel"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"golang.org/x/sys/unix"
)

// hydrateWorkers bounds the directories built at once; the work is mostly
// metadata syscalls, so a few more workers than cores keeps the disk busy.
const hydrateWorkers = 8

// Want says for what a snapshot is materialised.
type Want struct {
	// VolumeID is the volume the snapshot is of; its home keeps the list of
	// nodes sharing the snapshot.
	VolumeID string
	// Sharing offers this node's copies to peers and fetches from theirs;
	// without it (no-sharing) the copies are private to this node.
	Sharing bool
}

// Materialize materialises the tree at root on this node and returns its
// directory: a tree of hard links into the local blob store, with metadata
// reproduced exactly. A snapshot already on the node is returned at once. The
// hydration runs on its own: if ctx ends first the caller gets ctx's error,
// the hydration goes on, and a later call picks it up where it is.
func (n *Node) Materialize(ctx context.Context, root cas.Digest, want Want) (string, error) {
	dir := n.snapPath(root)
	if _, err := os.Lstat(dir); err == nil {
		return dir, nil
	}
	c, mine := n.hydrations.Claim(root)
	if mine {
		if want.Sharing {
			n.sharing.Add(1)
		}
		go func() {
			start := time.Now()
			err := n.roomy(func() error { return n.hydrate(root, want) })
			if want.Sharing {
				n.sharing.Add(-1)
			}
			if err == nil {
				n.group.Metrics().HydrateSeconds.Observe(time.Since(start).Seconds())
			}
			n.hydrations.Done(root, c, err)
			n.settle() // what it wrote is no read (use.go)
		}()
	}
	if err := c.Wait(ctx); err != nil {
		return "", err
	}
	return dir, nil
}

// hydrating is the context of a hydration for want: one on its own (see
// Materialize) that tells Corrupt of the wrong copies it discards.
func (n *Node) hydrating(want Want) context.Context {
	return group.OnCorrupt(context.Background(), func(d cas.Digest, from string) {
		if n.Corrupt != nil {
			n.Corrupt(want.VolumeID, d, from)
		}
	})
}

// hydrate builds snapshot root in a work directory and renames it into place.
// Every step is idempotent, so a work directory left by a crash is resumed.
func (n *Node) hydrate(root cas.Digest, want Want) error {
	ctx := n.hydrating(want)
	h := &hydration{
		sourcing: sourcing{n: n, private: !want.Sharing},
		work:     filepath.Join(n.dir, "snaps", ".work-"+root.String()),
		trees:    map[cas.Digest]*tree.Tree{},
	}
	if want.Sharing {
		h.holders = n.group.Announce(ctx, want.VolumeID, root)
	}
	if err := os.MkdirAll(h.work, 0o755); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	if err := h.walk(ctx, root); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	if want.Sharing {
		// Again: nodes of a burst start together, and those that announced
		// after this one are sharers for the files too.
		h.holders = n.group.Announce(ctx, want.VolumeID, root)
	}
	if err := h.link(ctx); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	// Directory metadata last: creating entries would change the mtimes.
	for _, d := range h.dirs {
		if err := n.store.SetDirMeta(d.path, d.e.Meta()); err != nil {
			return fmt.Errorf("hydrate %s: %w", root, err)
		}
	}
	if err := os.Chmod(h.work, 0o755); err != nil {
		return err
	}
	if err := os.Rename(h.work, n.snapPath(root)); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	return nil
}

// hydration is one snapshot being built in its work directory. It runs in
// two passes: walk fetches the tree objects a level at a time and makes the
// directories and symlinks; link then puts every file in place, linking the
// blobs this node has and fetching the others in batches, each written
// straight to its first path with its metadata and linked into the store.
type hydration struct {
	sourcing
	work string

	mu    sync.Mutex                // guards what follows while walk runs in parallel
	trees map[cas.Digest]*tree.Tree // the tree objects walk fetched, decoded
	files []placed                  // the snapshot's files, found by walk
	dirs  []placed                  // its directories, whose metadata is set last
}

// placed is one entry of the snapshot and where it goes.
type placed struct {
	path string
	e    tree.Entry
}

// walk creates the snapshot's directories and symlinks, level by level, and
// lists its files. The tree objects of a level are fetched together.
func (h *hydration) walk(ctx context.Context, root cas.Digest) error {
	return h.walkFrom(ctx, []placed{{h.work, tree.Entry{Type: tree.TypeDir, Digest: root}}})
}

// walkFrom fills the directories of level, which exist, whole, as walk does.
func (h *hydration) walkFrom(ctx context.Context, level []placed) error {
	for len(level) > 0 {
		refs := make([]blobRef, len(level))
		for i, d := range level {
			refs[i] = blobRef{Ref: cas.Ref{Digest: d.e.Digest}}
		}
		if err := h.fetchAll(ctx, refs, h.putTree); err != nil {
			return err
		}
		var next []placed
		err := parallel.Do(level, hydrateWorkers, parallel.NoState, func(d placed, _ struct{}) error {
			sub, err := h.makeDir(d)
			h.mu.Lock()
			next = append(next, sub...)
			h.mu.Unlock()
			return err
		})
		if err != nil {
			return err
		}
		level = next
	}
	return nil
}

// makeDir fills directory d with its subdirectories (returned, to be filled
// next) and symlinks, and lists its files.
func (h *hydration) makeDir(d placed) ([]placed, error) {
	h.mu.Lock()
	t := h.trees[d.e.Digest]
	h.mu.Unlock()
	if t == nil {
		var err error
		if t, err = tree.Load(h.n.store, d.e.Digest); err != nil {
			return nil, err
		}
	}
	var sub, files []placed
	for _, e := range t.Entries {
		p := filepath.Join(d.path, e.Name)
		switch e.Type {
		case tree.TypeDir:
			if err := unix.Mkdir(p, cas.DirMode(e.Meta())); err != nil && !errors.Is(err, unix.EEXIST) {
				return sub, fmt.Errorf("mkdir %s: %w", p, err)
			}
			sub = append(sub, placed{p, e})
		case tree.TypeFile:
			files = append(files, placed{p, e})
		case tree.TypeSymlink:
			if err := makeSymlink(e, p); err != nil {
				return sub, err
			}
		}
	}
	h.mu.Lock()
	h.dirs = append(h.dirs, sub...)
	h.files = append(h.files, files...)
	h.mu.Unlock()
	return sub, nil
}

// putTree stores a fetched tree object and keeps it decoded for makeDir.
func (h *hydration) putTree(ref blobRef, n int64, r io.Reader, _ []byte) error {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("tree %s: %w", ref.Digest, err)
	}
	if cas.Sum(b) != ref.Digest {
		return fmt.Errorf("tree %s: %w", ref.Digest, cas.ErrCorrupt)
	}
	t, err := tree.Decode(b)
	if err != nil {
		return fmt.Errorf("tree %s: %w", ref.Digest, err)
	}
	if _, err := h.n.store.PutBytes(b); err != nil {
		return err
	}
	h.mu.Lock()
	h.trees[ref.Digest] = t
	h.mu.Unlock()
	return nil
}

// link puts every file of the snapshot in place: files whose blob is here
// are linked to it at once; the missing blobs are fetched, large ones alone
// and at the same time as batches of the small ones.
func (h *hydration) link(ctx context.Context) error {
	byBlob := map[cas.Digest][]placed{}
	var blobs []cas.Digest
	for _, f := range h.files {
		if _, ok := byBlob[f.e.Digest]; !ok {
			blobs = append(blobs, f.e.Digest)
		}
		byBlob[f.e.Digest] = append(byBlob[f.e.Digest], f)
	}
	var (
		mu      sync.Mutex
		missing []cas.Digest
	)
	err := parallel.Do(blobs, hydrateWorkers, parallel.NoState, func(d cas.Digest, _ struct{}) error {
		fs := byBlob[d]
		err := h.n.store.Link(d, fs[0].e.Meta(), fs[0].path)
		if errors.Is(err, cas.ErrNotFound) {
			mu.Lock()
			missing = append(missing, d)
			mu.Unlock()
			return nil
		}
		if err != nil {
			return err
		}
		h.n.group.Metrics().FetchBlobs.WithLabelValues("local").Add(float64(len(fs)))
		h.n.group.Metrics().FetchBytes.WithLabelValues("local").Add(float64(len(fs)) * float64(fs[0].e.Size))
		return h.linkAll(fs[1:])
	})
	if err != nil || len(missing) == 0 {
		return err
	}
	refs := make([]blobRef, len(missing))
	for i, d := range missing {
		refs[i] = blobRef{Ref: cas.Ref{Digest: d, Size: byBlob[d][0].e.Size}, files: byBlob[d]}
	}
	return h.fetchAll(ctx, refs, h.putFile)
}

// putFile writes a fetched blob as the first file that has it, with that
// file's metadata, links it into the store and links the other files that
// have it.
func (h *hydration) putFile(ref blobRef, n int64, r io.Reader, buf []byte) error {
	f := ref.files[0]
	if n != f.e.Size {
		return fmt.Errorf("blob %s: %d bytes, want %d: %w", ref.Digest, n, f.e.Size, cas.ErrCorrupt)
	}
	if err := h.n.store.Create(f.path, ref.Ref, f.e.Meta(), r, buf); err != nil {
		return err
	}
	return h.linkAll(ref.files[1:])
}

// linkAll links every file of fs to its blob, which is here.
func (h *hydration) linkAll(fs []placed) error {
	for _, f := range fs {
		if err := h.n.store.Link(f.e.Digest, f.e.Meta(), f.path); err != nil {
			return err
		}
	}
	return nil
}

// makeSymlink creates symlink entry e at path.
func makeSymlink(e tree.Entry, path string) error {
	if err := os.Symlink(e.Target, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	return cas.SetMeta(path, e.Meta(), true)
}
