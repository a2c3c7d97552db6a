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

// flight is one hydration in progress; concurrent and retried callers wait on
// the same one.
type flight struct {
	done chan struct{}
	from Peer
	err  error
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
	src := sourcing{n: n, private: !want.Sharing}
	if want.Sharing {
		src.holders = n.announce(ctx, want.VolumeID, root)
	}
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
		t, err := src.tree(ctx, j.tree)
		if err != nil {
			fail(err)
			return
		}
		fetched := src.prefetch(ctx, t)
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
				if err := src.linkFile(ctx, e, p, fetched[e.Digest]); err != nil {
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

// sourcing is where one hydration fetches from.
type sourcing struct {
	n       *Node
	holders []Peer // other nodes sharing the snapshot
	private bool   // copies are for a no-sharing mount
}

// tree returns the directory object d, fetching it if needed.
func (s sourcing) tree(ctx context.Context, d Digest) (*Tree, error) {
	if err := s.fetch(ctx, d, 0); err != nil {
		return nil, err
	}
	return loadTree(s.n.store, d)
}

// fetch makes sure blob d (of size bytes, if known) is in the local store.
func (s sourcing) fetch(ctx context.Context, d Digest, size int64) error {
	g := s.n.group
	if s.n.store.Has(d) {
		g.metrics.FetchBlobs.WithLabelValues("local").Inc()
		g.metrics.FetchBytes.WithLabelValues("local").Add(float64(size))
		return nil
	}
	from, err := s.n.fetch(ctx, d, s.sources(d))
	if err != nil {
		return err
	}
	label := "peer"
	if from == nil || slices.Contains(g.Owners(d), from) {
		label = "owner"
	}
	g.metrics.FetchBlobs.WithLabelValues(label).Inc()
	g.metrics.FetchBytes.WithLabelValues(label).Add(float64(size))
	if s.private && !g.IsOwner(d) {
		s.n.markPrivate(d)
	}
	return nil
}

// batchMax is the largest blob fetched in batches; bigger ones stream alone.
const batchMax = 1 << 20

// prefetch fetches the missing small files of directory t in one batch per
// source, so a directory of a thousand small files costs a few round trips.
// It returns the blobs it fetched; the rest are left to fetch.
func (s sourcing) prefetch(ctx context.Context, t *Tree) map[Digest]bool {
	fetched := map[Digest]bool{}
	g := s.n.group
	if len(g.Members()) == 1 && !g.clientOnly {
		return fetched // a group of one has every blob here
	}
	bySource := map[Peer][]Digest{}
	sizes := map[Digest]int64{}
	for _, e := range t.Entries {
		if e.Type != TypeFile || e.Size > batchMax || sizes[e.Digest] != 0 || s.n.store.Has(e.Digest) {
			continue
		}
		sizes[e.Digest] = e.Size + 1
		if src := s.sources(e.Digest); len(src) > 0 {
			if _, ok := src[0].(*Remote); ok {
				bySource[src[0]] = append(bySource[src[0]], e.Digest)
			}
		}
	}
	for p, ds := range bySource {
		r := p.(*Remote)
		through := !slices.Contains(g.Owners(ds[0]), p)
		for i := 0; i < len(ds); i += maxBatch {
			batch := ds[i:min(i+maxBatch, len(ds))]
			_, err := r.FetchBatch(ctx, batch, through, func(d Digest, rd io.Reader) error {
				// A copy that fails verification is left to the one-by-one
				// fetch below, which counts it, tries the next source and
				// repairs the bad copy.
				_, err := s.n.store.Put(rd, d)
				if err == nil {
					fetched[d] = true
					label := "peer"
					if slices.Contains(g.Owners(d), p) {
						label = "owner"
					}
					g.metrics.FetchBlobs.WithLabelValues(label).Inc()
					g.metrics.FetchBytes.WithLabelValues(label).Add(float64(sizes[d] - 1))
					if s.private && !g.IsOwner(d) {
						s.n.markPrivate(d)
					}
				}
				return err
			})
			if err != nil {
				g.failed(p, err)
				break // what is still missing is fetched one by one with fallback
			}
		}
	}
	return fetched
}

// sources orders where blob d is fetched from. With sharing nodes, the
// owners and the sharers are ranked together by rendezvous on the blob, so a
// burst of nodes asks one member for each blob, which fetches it once from
// the owners and serves the rest; the owners follow as fallbacks.
func (s sourcing) sources(d Digest) []Peer {
	g := s.n.group
	base := g.Sources(d)
	if len(s.holders) == 0 {
		return base
	}
	key := "blob/" + d.String()
	// This node ranks too: of two sharers, only the lower one asks the
	// higher, so requests never go round in a circle.
	cand := append(append(slices.Clone(g.Owners(d)), g.local), s.holders...)
	best, bestScore := Peer(nil), -1.0
	seen := map[string]bool{}
	for _, p := range cand {
		if seen[p.Name()] || !g.Live(p.Name()) {
			continue
		}
		seen[p.Name()] = true
		if sc := Score(key, p.Name(), 1); sc > bestScore {
			best, bestScore = p, sc
		}
	}
	if best == nil || best == Peer(g.local) {
		return base // this node is the one the others ask: straight to the owners
	}
	out := []Peer{best}
	for _, p := range base {
		if p != best {
			out = append(out, p)
		}
	}
	return out
}

// fetch makes sure blob d is in the local store; concurrent misses of one
// blob on this node become one fetch. It returns the member that served it.
func (n *Node) fetch(ctx context.Context, d Digest, sources []Peer) (Peer, error) {
	if n.store.Has(d) {
		return nil, nil
	}
	n.mu.Lock()
	f, ok := n.fetches[d]
	if !ok {
		f = &flight{done: make(chan struct{})}
		n.fetches[d] = f
		go func() {
			f.from, f.err = n.group.FetchFrom(ctx, d, sources)
			n.mu.Lock()
			delete(n.fetches, d)
			n.mu.Unlock()
			close(f.done)
		}()
	}
	n.mu.Unlock()
	<-f.done
	return f.from, f.err
}

// announce tells volume id's home that this node shares snapshot root and
// returns the other nodes that do.
func (n *Node) announce(ctx context.Context, id string, root Digest) []Peer {
	g := n.group
	if len(g.Members()) < 2 || id == "" {
		return nil
	}
	var names []string
	for _, h := range g.liveOnly(g.Homes(id)) {
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
// with this node, if this node is hydrating a shared snapshot now.
func (n *Node) Through(ctx context.Context, d Digest) bool {
	if n.sharing.Load() == 0 {
		return false
	}
	// Straight from the owners, never by joining this node's own fetch,
	// which may be waiting on the very peer asking.
	var owners []Peer
	for _, p := range n.group.Owners(d) {
		if p != Peer(n.group.local) {
			owners = append(owners, p)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, throughTimeout)
	defer cancel()
	_, err := n.group.FetchFrom(ctx, d, owners)
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
// metadata, fetching the blob first if this node lacks it. Hard links share
// one inode, so the blob's metadata must be e's: a blob no tree uses yet is
// given it; otherwise a copy with e's metadata (a variant, kept in the store
// for reuse) is linked instead. This is the inner loop of hydration: two
// system calls for a file whose blob is here.
func (s sourcing) linkFile(ctx context.Context, e Entry, path string, fetched bool) error {
	n := s.n
	src := n.store.Path(e.Digest)
	var st unix.Stat_t
	err := unix.Lstat(src, &st)
	if errors.Is(err, unix.ENOENT) {
		if err := s.fetch(ctx, e.Digest, e.Size); err != nil {
			return err
		}
		err = unix.Lstat(src, &st)
	} else if err == nil && !fetched {
		n.group.metrics.FetchBlobs.WithLabelValues("local").Inc()
		n.group.metrics.FetchBytes.WithLabelValues("local").Add(float64(e.Size))
	}
	if err != nil {
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
	err = unix.Link(src, path)
	switch {
	case errors.Is(err, unix.EEXIST):
		return nil // made before a restart
	case errors.Is(err, unix.EMLINK):
		// The inode has as many links as the filesystem allows: a private copy.
		return copyWithMeta(src, path, e)
	case err != nil:
		return fmt.Errorf("link %s: %w", path, err)
	}
	return nil
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
