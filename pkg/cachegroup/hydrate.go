package cachegroup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// hydrateWorkers bounds the directories built at once; the work is mostly
// metadata syscalls, so a few more workers than cores keeps the disk busy.
const hydrateWorkers = 8

// flight is one hydration or blob fetch in progress; concurrent and retried
// callers wait on the same one.
type flight struct {
	done chan struct{}
	err  error // the hydration's; a blob fetch's waiters look at the store
}

// Want says for what a snapshot is materialised.
type Want struct {
	// VolumeID is the volume the snapshot is of; its home keeps the list of
	// nodes sharing the snapshot.
	VolumeID string
	// Sharing offers this node's copies to peers and fetches from theirs;
	// without it (no-sharing) the copies are private to this node.
	Sharing bool
}

// Snapshot materialises the tree at root on this node and returns its
// directory: a tree of hard links into the local blob store, with metadata
// reproduced exactly. A snapshot already on the node is returned at once. The
// hydration runs on its own: if ctx ends first the caller gets ctx's error,
// the hydration goes on, and a later call picks it up where it is.
func (n *Node) Snapshot(ctx context.Context, root Digest, want Want) (string, error) {
	dir := n.snapPath(root)
	if _, err := os.Lstat(dir); err == nil {
		return dir, nil
	}
	n.mu.Lock()
	f, ok := n.flights[root]
	if !ok {
		f = &flight{done: make(chan struct{})}
		n.flights[root] = f
		if want.Sharing {
			n.sharing.Add(1)
		}
		go func() {
			start := time.Now()
			f.err = n.hydrate(root, want)
			if want.Sharing {
				n.sharing.Add(-1)
			}
			if f.err == nil {
				n.group.metrics.HydrateSeconds.Observe(time.Since(start).Seconds())
			}
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
func (n *Node) hydrate(root Digest, want Want) error {
	ctx := context.Background()
	h := &hydration{
		sourcing: sourcing{n: n, private: !want.Sharing},
		work:     filepath.Join(n.dir, "snaps", ".work-"+root.String()),
		trees:    map[Digest]*Tree{},
	}
	if want.Sharing {
		h.holders = n.announce(ctx, want.VolumeID, root)
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
		h.holders = n.announce(ctx, want.VolumeID, root)
	}
	if err := h.link(ctx); err != nil {
		return fmt.Errorf("hydrate %s: %w", root, err)
	}
	// Directory metadata last: creating entries would change the mtimes.
	for _, d := range h.dirs {
		if err := n.store.setDirMeta(d.path, d.e); err != nil {
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

	mu    sync.Mutex       // guards what follows while walk runs in parallel
	trees map[Digest]*Tree // the tree objects walk fetched, decoded
	files []placed         // the snapshot's files, found by walk
	dirs  []placed         // its directories, whose metadata is set last
}

// placed is one entry of the snapshot and where it goes.
type placed struct {
	path string
	e    Entry
}

// walk creates the snapshot's directories and symlinks, level by level, and
// lists its files. The tree objects of a level are fetched together.
func (h *hydration) walk(ctx context.Context, root Digest) error {
	level := []placed{{h.work, Entry{Type: TypeDir, Digest: root}}}
	for len(level) > 0 {
		refs := make([]blobRef, len(level))
		for i, d := range level {
			refs[i] = blobRef{Digest: d.e.Digest}
		}
		if err := h.fetchAll(ctx, refs, h.putTree); err != nil {
			return err
		}
		var next []placed
		err := parallel(level, hydrateWorkers, noState, func(d placed, _ struct{}) error {
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
		if t, err = loadTree(h.n.store, d.e.Digest); err != nil {
			return nil, err
		}
	}
	var sub, files []placed
	for _, e := range t.Entries {
		p := filepath.Join(d.path, e.Name)
		switch e.Type {
		case TypeDir:
			if err := unix.Mkdir(p, dirMode(e)); err != nil && !errors.Is(err, unix.EEXIST) {
				return sub, fmt.Errorf("mkdir %s: %w", p, err)
			}
			sub = append(sub, placed{p, e})
		case TypeFile:
			files = append(files, placed{p, e})
		case TypeSymlink:
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
	if Sum(b) != ref.Digest {
		return fmt.Errorf("tree %s: %w", ref.Digest, ErrCorrupt)
	}
	t, err := DecodeTree(b)
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
	byBlob := map[Digest][]placed{}
	var blobs []Digest
	for _, f := range h.files {
		if _, ok := byBlob[f.e.Digest]; !ok {
			blobs = append(blobs, f.e.Digest)
		}
		byBlob[f.e.Digest] = append(byBlob[f.e.Digest], f)
	}
	var (
		mu      sync.Mutex
		missing []Digest
	)
	err := parallel(blobs, hydrateWorkers, noState, func(d Digest, _ struct{}) error {
		fs := byBlob[d]
		err := h.linkFile(fs[0].e, fs[0].path)
		if errors.Is(err, ErrNotFound) {
			mu.Lock()
			missing = append(missing, d)
			mu.Unlock()
			return nil
		}
		if err != nil {
			return err
		}
		h.n.group.metrics.FetchBlobs.WithLabelValues("local").Add(float64(len(fs)))
		h.n.group.metrics.FetchBytes.WithLabelValues("local").Add(float64(len(fs)) * float64(fs[0].e.Size))
		return h.linkAll(fs[1:])
	})
	if err != nil || len(missing) == 0 {
		return err
	}
	refs := make([]blobRef, len(missing))
	for i, d := range missing {
		refs[i] = blobRef{Digest: d, Size: byBlob[d][0].e.Size, files: byBlob[d]}
	}
	return h.fetchAll(ctx, refs, h.putFile)
}

// putFile writes a fetched blob as the first file that has it, with that
// file's metadata, links it into the store and links the other files that
// have it.
func (h *hydration) putFile(ref blobRef, n int64, r io.Reader, buf []byte) error {
	f := ref.files[0]
	if n != f.e.Size {
		return fmt.Errorf("blob %s: %d bytes, want %d: %w", ref.Digest, n, f.e.Size, ErrCorrupt)
	}
	if err := h.n.store.create(f.path, f.e, r, buf); err != nil {
		return err
	}
	return h.linkAll(ref.files[1:])
}

// linkAll links every file of fs to its blob, which is here.
func (h *hydration) linkAll(fs []placed) error {
	for _, f := range fs {
		if err := h.linkFile(f.e, f.path); err != nil {
			return err
		}
	}
	return nil
}

func noState() struct{} { return struct{}{} }

// sourcing is where one hydration fetches from.
type sourcing struct {
	n       *Node
	holders []Peer // other nodes sharing the snapshot
	private bool   // copies are for a no-sharing mount
}

// fetch makes sure blob d (of size bytes, if known) is in the local store,
// fetching it alone along its sources.
func (s sourcing) fetch(ctx context.Context, d Digest, size int64) error {
	from, err := s.n.fetch(ctx, d, size, s.sources(d))
	if err != nil {
		return err
	}
	s.fetched(d, size, from)
	return nil
}

// fetched counts blob d, of size bytes, as fetched from member from (nil: it
// was here after all) and keeps a no-sharing mount's copy private.
func (s sourcing) fetched(d Digest, size int64, from Peer) {
	g := s.n.group
	label := "local"
	if from != nil {
		owners := g.Owners(d)
		label = "peer"
		if slices.Contains(owners, from) {
			label = "owner"
		}
		if s.private && !slices.Contains(owners, Peer(g.local)) {
			s.n.markPrivate(d)
		}
	}
	g.metrics.FetchBlobs.WithLabelValues(label).Inc()
	g.metrics.FetchBytes.WithLabelValues(label).Add(float64(size))
}

// sources orders where blob d is fetched from. With other nodes sharing the
// snapshot, the sharers (this node included) are ranked by rendezvous on the
// blob: the first fetches it from the owners, and the others ask it, so a
// burst of nodes costs the owners about one copy of each blob instead of
// one per node. A node asks only a sharer that ranks above itself, which
// asks the owners or one ranking higher still: requests never go round in
// a circle. The owners follow as fallbacks.
func (s sourcing) sources(d Digest) []Peer {
	g := s.n.group
	base := g.Sources(d)
	if len(s.holders) == 0 {
		return base
	}
	key := "blob/" + d.String()
	best, bestScore := Peer(g.local), Score(key, g.local.Name(), 1)
	for _, p := range s.holders {
		if sc := Score(key, p.Name(), 1); sc > bestScore && g.Live(p.Name()) {
			best, bestScore = p, sc
		}
	}
	if best == Peer(g.local) {
		return base // this node is the one the others ask: straight to the owners
	}
	return append([]Peer{best}, slices.DeleteFunc(base, func(p Peer) bool { return p == best })...)
}

// fetch makes sure blob d, of size bytes (0 if not known), is in the local
// store; concurrent misses of one blob on this node become one fetch. It returns the member that served it,
// nil if the blob was here or another fetch brought it.
func (n *Node) fetch(ctx context.Context, d Digest, size int64, sources []Peer) (Peer, error) {
	for !n.store.Has(d) {
		f, mine := n.claim(d)
		if !mine {
			select {
			case <-f.done: // then look again: that fetch may have failed
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		from, err := n.group.fetchLarge(ctx, d, size, sources)
		n.release(d, f)
		return from, err
	}
	return nil, nil
}

// claim makes this caller the one fetching blob d, unless a fetch of it is
// in progress: then it returns that fetch's flight and false.
func (n *Node) claim(d Digest) (*flight, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if f, ok := n.fetches[d]; ok {
		return f, false
	}
	f := &flight{done: make(chan struct{})}
	n.fetches[d] = f
	return f, true
}

// release ends the fetch of blob d claimed as f.
func (n *Node) release(d Digest, f *flight) {
	n.mu.Lock()
	delete(n.fetches, d)
	n.mu.Unlock()
	close(f.done)
}

// announce tells volume id's home that this node shares snapshot root and
// returns the other nodes that do.
func (n *Node) announce(ctx context.Context, id string, root Digest) []Peer {
	g := n.group
	if len(g.Members()) < 2 || id == "" {
		return nil
	}
	var names []string
	for _, h := range g.liveFirst(g.Homes(id)) {
		var err error
		switch h := h.(type) {
		case *Local:
			h.holders.add(root.String(), g.local.Name())
			names = h.holders.list(root.String())
		case *Remote:
			if err = h.AddHolder(ctx, root, g.local.Name()); err == nil {
				names, err = h.Holders(ctx, root)
			}
		}
		if err == nil {
			break
		}
		g.failed(h, err)
	}
	byName := map[string]Peer{}
	for _, m := range g.Members() {
		byName[m.Name()] = m.Peer
	}
	var out []Peer
	for _, name := range names {
		if p, ok := byName[name]; ok && name != g.local.Name() {
			out = append(out, p)
		}
	}
	return out
}

// Offer reports whether this member may serve blob d to peers: every blob
// but the private node copies of no-sharing mounts.
func (n *Node) Offer(d Digest) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.private[d]
}

// Through fetches blob d from its owners for a peer that shares a snapshot
// with this node, if this node is hydrating a shared snapshot now. A fetch
// of d already under way here is joined: it goes to the owners, since the
// peer asked this node only because it ranks first among the sharers.
func (n *Node) Through(ctx context.Context, d Digest) bool {
	if n.sharing.Load() == 0 {
		return false
	}
	var owners []Peer
	for _, p := range n.group.Owners(d) {
		if p != Peer(n.group.local) {
			owners = append(owners, p)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, throughTimeout)
	defer cancel()
	_, err := n.fetch(ctx, d, 0, owners)
	return err == nil
}

// throughTimeout bounds a pull-through fetch made for a peer.
const throughTimeout = 2 * time.Minute

func (n *Node) markPrivate(d Digest) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.private[d] = true
}

// linkFile makes path a hard link to the blob of file entry e, with e's
// metadata; an error wrapping ErrNotFound says this node lacks the blob. Hard
// links share one inode, so the blob's metadata must be e's: a blob no tree
// uses yet is given it; otherwise a copy with e's metadata (a variant, kept in
// the store for reuse) is linked instead. This is the inner loop of staging a
// snapshot whose blobs are here: two system calls a file.
func (s sourcing) linkFile(e Entry, path string) error {
	n := s.n
	src := n.store.Path(e.Digest)
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("blob %s: %w", e.Digest, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("blob %s: %w", e.Digest, err)
	}
	// Held from the check to the link: a blob's metadata changes only under it.
	mu := n.store.lock(e.Digest)
	mu.Lock()
	defer mu.Unlock()
	if !metaMatches(&st, e) {
		if err := unix.Lstat(src, &st); err != nil { // again, under the lock
			return fmt.Errorf("blob %s: %w", e.Digest, err)
		}
		var err error
		switch {
		case metaMatches(&st, e):
		case st.Nlink == 1:
			if err := setMeta(src, e, false); err != nil {
				return err
			}
		default:
			if src, err = n.variant(src, e); err != nil {
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
		return copyWithMeta(src, path, e)
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
	return changeMeta(path, e, true, !symlink)
}

// changeMeta gives path e's mtime and, as asked, its owner and mode, never
// following a symlink.
func changeMeta(path string, e Entry, chown, chmod bool) error {
	if chown {
		if err := unix.Lchown(path, int(e.UID), int(e.GID)); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	if chmod {
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
