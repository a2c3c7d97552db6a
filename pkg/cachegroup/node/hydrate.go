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
	"sync/atomic"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/parallel"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"golang.org/x/sys/unix"
)

const (
	// hydrateWorkers bounds the directories built at once; the work is
	// mostly metadata syscalls, so a few more workers than cores keeps the
	// disk busy.
	hydrateWorkers = 8
	// chunkDirs bounds the directories a hydration reads at once: their
	// tree objects are fetched together (one round of batches fills every
	// stream) and only their entries are in memory, so a snapshot of any
	// size stages in memory bounded by the chunk, not by the tree.
	chunkDirs = batchStreams * batchBlobs
	// reannounce is how often a sharing hydration asks again who shares
	// the snapshot: nodes of a burst start together, and those that
	// announced after this one are sharers for the rest of its files.
	reannounce = time.Second
)

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
		n.running.Go(func() {
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
		})
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
	h := n.newHydration(ctx, filepath.Join(n.dir, "snaps", ".work-"+root.String()), root, want)
	if err := os.MkdirAll(h.work, 0o755); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	if err := h.run(ctx, dirWork{path: h.work, new: root, top: true}); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	if err := os.Chmod(h.work, 0o755); err != nil {
		return err
	}
	if err := os.Rename(h.work, n.snapPath(root)); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	return nil
}

// newHydration starts the hydration of the tree at root (a snapshot or a
// thin layer) in work, telling the volume's home when it is shared.
func (n *Node) newHydration(ctx context.Context, work string, root cas.Digest, want Want) *hydration {
	h := &hydration{sourcing: sourcing{n: n, private: !want.Sharing}, work: work, root: root, volume: want.VolumeID,
		bigSlots: make(chan struct{}, batchStreams)}
	if want.Sharing {
		h.holders = &sharers{}
		h.holders.set(n.group.Announce(ctx, want.VolumeID, root))
	}
	return h
}

// hydration is one snapshot (or thin layer) being built in its work
// directory, a chunk of directories at a time, so that what it holds in
// memory is bounded by the chunk: walk reads the chunk's tree objects
// (fetching those not here in batches), makes its directories and symlinks
// and hands its files to link, which runs alongside on the chunk before:
// it links the blobs this node has and fetches the others in batches, each
// written straight to its first path with its metadata and linked into the
// store. A directory's metadata is set once its last entry is in (see
// dirDone); large blobs stream in the background meanwhile.
type hydration struct {
	sourcing
	work   string
	root   cas.Digest // the tree built, as announced to the volume's home
	volume string

	cancel    context.CancelCauseFunc // stops the hydration with its first failure
	announced time.Time               // when walk last asked who shares the snapshot
	changed   atomic.Int64            // entries of a thin layer (diffDir)

	mu    sync.Mutex                // guards trees
	trees map[cas.Digest]*tree.Tree // the tree objects of the chunk walk reads, decoded as fetched

	big      sync.WaitGroup // large blobs fetched in the background
	bigSlots chan struct{}  // bounds them to batchStreams at once
}

// dirWork is a directory that exists and is to be filled: whole from tree
// new, or, in a thin layer (old not zero), with what differs from tree old.
type dirWork struct {
	path     string
	old, new cas.Digest
	meta     cas.Meta
	top      bool // the work directory, whose metadata is not the tree's
}

// dirDone is a directory being filled. Its metadata is set once every entry
// of its own is in: creating an entry changes the mtime of the directory it
// is in and of no other, so this is the metadata-last pass of the whole
// tree, one directory at a time, with nothing to keep or read again after.
type dirDone struct {
	w    dirWork
	left atomic.Int32 // its files not yet in, and one while it is being read
}

// placed is one file of the snapshot, where it goes and the directory that
// waits for it.
type placed struct {
	path string
	e    tree.Entry
	dir  *dirDone
}

// entryIn counts one entry of d in, setting d's metadata after the last.
func (h *hydration) entryIn(d *dirDone) error {
	if d.left.Add(-1) > 0 || d.w.top {
		return nil
	}
	return h.n.store.SetDirMeta(d.w.path, d.w.meta)
}

// run fills the directories of top and everything below them. Each step is
// idempotent, so a work directory left by a failure is resumed. It returns
// the first failure, once nothing runs any more.
func (h *hydration) run(ctx context.Context, top ...dirWork) error {
	ctx, h.cancel = context.WithCancelCause(ctx)
	defer h.cancel(nil)
	// One chunk's files wait while link takes the one before: walk runs at
	// most a chunk ahead of the fetches.
	files := make(chan []placed, 1)
	linked := make(chan struct{})
	go func() {
		defer close(linked)
		for fs := range files {
			if err := h.link(ctx, fs); err != nil {
				h.cancel(err)
			}
		}
	}()
	if err := h.walk(ctx, top, files); err != nil {
		h.cancel(err)
	}
	close(files)
	<-linked
	h.big.Wait()
	return context.Cause(ctx)
}

// walk fills the directories of stack and all below them but for their
// files, which it sends to link, a chunk at a time. The directories found
// are filled first (depth first, a chunk at a time), so that those waiting
// stay few: about a chunk's subdirectories for each level down.
func (h *hydration) walk(ctx context.Context, stack []dirWork, files chan<- []placed) error {
	for len(stack) > 0 {
		k := max(0, len(stack)-chunkDirs)
		sub, fs, err := h.fill(ctx, stack[k:])
		if err != nil {
			return err
		}
		clear(stack[k:]) // their paths are not kept for the rest of the walk
		stack = append(stack[:k], sub...)
		if len(fs) == 0 {
			continue
		}
		if h.holders != nil && time.Since(h.announced) >= reannounce {
			h.holders.set(h.n.group.Announce(ctx, h.volume, h.root))
			h.announced = time.Now()
		}
		select {
		case files <- fs:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// fill reads the tree objects of chunk and fills each of its directories
// but for their files. The directories whose tree objects are here are
// filled at once, reading them as they go (a stat of each first would be
// a third more system calls on a node that has them all); those lacking
// one are filled once the lacking are fetched together. It returns the
// directories found, to be filled next, and the files.
func (h *hydration) fill(ctx context.Context, chunk []dirWork) (next []dirWork, files []placed, err error) {
	h.mu.Lock()
	h.trees = map[cas.Digest]*tree.Tree{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.trees = nil
		h.mu.Unlock()
	}()
	var (
		mu      sync.Mutex
		lacking []dirWork
	)
	fillAll := func(chunk []dirWork, here bool) error {
		return parallel.Do(chunk, hydrateWorkers, parallel.NoState, func(w dirWork, _ struct{}) error {
			var (
				sub []dirWork
				fs  []placed
				err error
			)
			if w.old.IsZero() {
				sub, fs, err = h.makeDir(w)
			} else {
				sub, fs, err = h.diffDir(w)
			}
			mu.Lock()
			defer mu.Unlock()
			// Nothing is made before both tree objects are read.
			if here && (errors.Is(err, cas.ErrNotFound) || errors.Is(err, cas.ErrCorrupt)) {
				lacking = append(lacking, w)
				return nil
			}
			next = append(next, sub...)
			files = append(files, fs...)
			return err
		})
	}
	if err := fillAll(chunk, true); err != nil || len(lacking) == 0 {
		return next, files, err
	}
	refs := make([]blobRef, 0, len(lacking))
	for _, w := range lacking {
		refs = append(refs, blobRef{Ref: cas.Ref{Digest: w.new}})
		if !w.old.IsZero() {
			refs = append(refs, blobRef{Ref: cas.Ref{Digest: w.old}})
		}
	}
	if err := h.fetchAll(ctx, refs, h.putTree); err != nil {
		return nil, nil, err
	}
	return next, files, fillAll(lacking, false)
}

// makeDir fills directory w with its subdirectories (returned, to be
// filled next) and symlinks, and returns its files.
func (h *hydration) makeDir(w dirWork) ([]dirWork, []placed, error) {
	t, err := h.tree(w.new)
	if err != nil {
		return nil, nil, err
	}
	d := &dirDone{w: w}
	var (
		sub   []dirWork
		files []placed
	)
	for _, e := range t.Entries {
		p := filepath.Join(w.path, e.Name)
		switch e.Type {
		case tree.TypeDir:
			if err := unix.Mkdir(p, cas.DirMode(e.Meta())); err != nil && !errors.Is(err, unix.EEXIST) {
				return nil, nil, fmt.Errorf("mkdir %s: %w", p, err)
			}
			sub = append(sub, dirWork{path: p, new: e.Digest, meta: e.Meta()})
		case tree.TypeFile:
			files = append(files, placed{p, e, d})
		case tree.TypeSymlink:
			if err := makeSymlink(e, p); err != nil {
				return nil, nil, err
			}
		}
	}
	d.left.Store(int32(len(files)) + 1)
	return sub, files, h.entryIn(d)
}

// tree returns tree object d, decoded: as fetched for the chunk, or read
// from the store.
func (h *hydration) tree(d cas.Digest) (*tree.Tree, error) {
	h.mu.Lock()
	t := h.trees[d]
	h.mu.Unlock()
	if t != nil {
		return t, nil
	}
	return tree.Load(h.n.store, d)
}

// putTree stores a fetched tree object and keeps it decoded for the chunk.
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
	if h.trees != nil {
		h.trees[ref.Digest] = t
	}
	h.mu.Unlock()
	return nil
}

// link puts files in place: those whose blob is here are linked to it at
// once; the missing blobs are fetched, large ones in the background and
// batches of the small ones now.
func (h *hydration) link(ctx context.Context, files []placed) error {
	byBlob := map[cas.Digest][]placed{}
	var blobs []cas.Digest
	for _, f := range files {
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
		if err == nil {
			err = h.entryIn(fs[0].dir)
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
	if err := h.entryIn(f.dir); err != nil {
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
		if err := h.entryIn(f.dir); err != nil {
			return err
		}
	}
	return nil
}

// makeSymlink creates symlink entry e at path; one there already (made
// before a restart, maybe without its metadata) is given the metadata.
func makeSymlink(e tree.Entry, path string) error {
	if err := os.Symlink(e.Target, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return cas.SetMeta(path, e.Meta(), true)
}
