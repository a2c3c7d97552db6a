package group

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/shortmap"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"k8s.io/klog/v2"
)

// Collection is what one garbage collection found and did.
type Collection struct {
	Roots   int   // live roots walked
	Trees   int   // tree objects read
	Held    int   // blobs in the store
	Garbage int   // blobs in the store no live root references
	Bytes   int64 // bytes of garbage
	Deleted int   // blobs deleted
	Freed   int64 // bytes deleted
}

// Collect options.
type CollectOptions struct {
	// Grace is how long garbage is left before it is deleted, and how long
	// a head stays a live root after a newer one replaced it (a node may be
	// hydrating it), and how long a blob written or kept is left.
	Grace time.Duration
	// Pressure deletes garbage at once: the store is full. Blobs of roots
	// replaced lately are garbage then, and only blobs written or kept for
	// a commit less than Window ago are left.
	Pressure bool
	// Window is that time under pressure (default 10s): long enough for a
	// commit to be checked by its home after its blobs were pushed.
	Window time.Duration
	// DryRun finds the garbage and deletes nothing.
	DryRun bool
	// Roots are further live roots: the snapshots materialised on this node.
	Roots []cas.Digest
	// InUse, if set, says which blobs a commit of this node holds.
	InUse func(cas.Digest) bool
}

// pressureWindow is the default Window.
const pressureWindow = 10 * time.Second

// maxTreeObject bounds the tree objects a collection reads from other
// members into memory.
const maxTreeObject = 64 << 20

// collector is the state collections share: one at a time, each finding the
// garbage of the last.
type collector struct {
	mu     sync.Mutex
	recent map[cas.Digest]time.Time // roots live lately, with when last seen

	// seen is the garbage the last complete collection found, by Short,
	// with when it was first found (Unix ns): for the next collection,
	// and for the reconciler, which neither pushes nor asks about it. A
	// live blob sharing a Short with garbage waits for a pass after the
	// garbage is gone. A collection reads it and replaces it whole.
	gmu    sync.RWMutex
	seen   *shortmap.Map[int64]
	marked chan struct{} // closed once a collection has completed

	kick chan struct{} // asks for a collection soon
}

func newCollector() *collector {
	return &collector{recent: map[cas.Digest]time.Time{}, seen: &shortmap.Map[int64]{},
		marked: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// Garbage reports whether the last complete collection found blob d
// unreferenced.
func (g *Group) Garbage(d cas.Digest) bool {
	c := g.gc
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	_, ok := c.seen.Get(d.Short())
	return ok
}

// KickCollector asks for a collection soon (after a volume or snapshot is
// deleted); it never blocks.
func (g *Group) KickCollector() {
	select {
	case g.gc.kick <- struct{}{}:
	default:
	}
}

// Collect deletes the blobs of the local store that no live root references:
// every volume head and snapshot any member keeps, the heads replaced less
// than the grace ago, and opt.Roots. It deletes nothing unless every member
// answered, since a member that did not may keep the only head of a volume.
// Garbage is deleted once it has been garbage for the grace (at once under
// pressure), and never while written or kept lately or linked into a
// snapshot on this node.
func (g *Group) Collect(ctx context.Context, opt CollectOptions) (Collection, error) {
	c := g.gc
	c.mu.Lock()
	defer c.mu.Unlock()
	g.self.store.Forget(time.Now().Add(-opt.Grace))
	var res Collection
	heldAt := time.Now() // before the store is listed: see Settle
	keys, err := g.self.store.Shorts(ctx)
	if err != nil {
		return res, err
	}
	h := newHeld(keys)
	res.Held = len(keys)
	h.mark(cas.Sum(tree.Empty()))
	w := &walk{g: g, ctx: ctx, held: h, visited: map[cas.Digest]bool{}}
	distinct := map[cas.Digest]bool{}
	// Roots are listed twice: a commit applied while the first were walked
	// adds a root the second listing has, so only the instant between the
	// second listing and the sweep is left, which Keep covers.
	var listed time.Time // of the last listing
	for range 2 {
		listed = time.Now()
		roots, err := g.liveRoots(ctx)
		if err != nil {
			return res, fmt.Errorf("collect: %w: nothing collected", err)
		}
		now := time.Now()
		for _, r := range roots {
			c.recent[r] = now
		}
		// A head or snapshot whose tree cannot be read stops the collection:
		// what is below it is unknown. The roots besides (replaced heads,
		// this node's snapshots) are kept as far as their trees are still
		// somewhere; the group may have collected the rest, and a node's
		// snapshot holds its own links.
		for _, r := range roots {
			if err := w.tree(r); err != nil {
				return res, fmt.Errorf("collect: root %s: %w: nothing collected", r, err)
			}
			distinct[r] = true
		}
		besides := slices.Clone(opt.Roots)
		for r, t := range c.recent {
			switch {
			case now.Sub(t) >= opt.Grace:
				delete(c.recent, r)
			case !opt.Pressure:
				besides = append(besides, r)
			}
		}
		for _, r := range besides {
			if err := w.tree(r); err == nil {
				distinct[r] = true
			}
		}
	}
	res.Roots = len(distinct)
	res.Trees = len(w.visited)
	g.self.store.Settle(h.keys, h.live, heldAt)
	// A blob kept for a commit after since is left: the commit, if it was
	// not applied before the last listing, is applied within the window.
	window := opt.Grace
	if opt.Pressure {
		window = cmp.Or(opt.Window, pressureWindow)
	}
	since := listed.Add(-window)
	now := time.Now()
	// What was found garbage, by Short, with when it was first found: a
	// commit of a million files in flight is a million blobs of garbage.
	seen := &shortmap.Map[int64]{}
	var doomed []cas.Digest // deleted a batch at a time
	sweep := func() {
		if !opt.DryRun {
			n, freed := g.self.store.Sweep(doomed, since)
			res.Deleted += n
			res.Freed += freed
		}
		doomed = doomed[:0]
	}
	// The store is walked again for the digests of what was not marked.
	err = g.self.store.Each(ctx, func(d cas.Digest) {
		if live, listed := h.held(d); live || !listed { // not listed: stored since
			return
		}
		if opt.InUse != nil && opt.InUse(d) {
			return
		}
		k := d.Short()
		first, ok := c.seen.Get(k)
		if !ok {
			first = now.UnixNano()
		}
		seen.Set(k, first)
		res.Garbage++
		res.Bytes += max(g.self.store.Size(d), 0)
		if opt.Pressure || now.Sub(time.Unix(0, first)) >= opt.Grace {
			doomed = append(doomed, d)
			if len(doomed) == sweepBatch {
				sweep()
			}
		}
	})
	sweep()
	if err != nil {
		return res, err
	}
	g.self.store.Forget(time.Now().Add(-opt.Grace))
	c.gmu.Lock()
	c.seen = seen
	c.gmu.Unlock()
	select {
	case <-c.marked:
	default:
		close(c.marked)
	}
	g.metrics.Garbage.Set(float64(res.Garbage))
	g.metrics.CollectedBlobs.Add(float64(res.Deleted))
	g.metrics.CollectedBytes.Add(float64(res.Freed))
	return res, nil
}

// sweepBatch is how many blobs of garbage a collection deletes at a time, as
// it walks the store.
const sweepBatch = 4096

// liveRoots lists the root of every head and snapshot every member keeps.
func (g *Group) liveRoots(ctx context.Context) ([]cas.Digest, error) {
	var roots []cas.Digest
	for _, p := range g.rank("") {
		vs, err := p.Volumes(ctx)
		if err != nil {
			return nil, fmt.Errorf("member %s did not list its volumes: %w", p.Name(), err)
		}
		for _, v := range vs {
			if !v.Deleted {
				roots = append(roots, v.Root)
			}
		}
		ss, err := p.Snapshots(ctx)
		if err != nil {
			return nil, fmt.Errorf("member %s did not list its snapshots: %w", p.Name(), err)
		}
		for _, s := range ss {
			roots = append(roots, s.Root)
		}
	}
	return roots, nil
}

// held is the store's blobs as one collection listed them, by Short,
// sorted, with those a live root references marked: 8 bytes and a bit a
// blob rather than a map entry, as a store may hold millions. Blobs that
// share a Short share its mark (the first of its run), so a blob is kept
// if another of its Short is referenced, never collected for it.
type held struct {
	keys   []uint64
	marked []uint64 // bit i: a blob of Short keys[i] is referenced
}

func newHeld(keys []uint64) *held {
	return &held{keys: keys, marked: make([]uint64, (len(keys)+63)/64)}
}

// mark records that a live root references d, if the store holds it.
func (h *held) mark(d cas.Digest) {
	if i, ok := slices.BinarySearch(h.keys, d.Short()); ok {
		h.marked[i/64] |= 1 << (i % 64)
	}
}

// live reports whether keys[i] is marked.
func (h *held) live(i int) bool { return h.marked[i/64]&(1<<(i%64)) != 0 }

// held reports whether d is marked, and whether it was listed at all.
func (h *held) held(d cas.Digest) (live, listed bool) {
	i, ok := slices.BinarySearch(h.keys, d.Short())
	return ok && h.live(i), ok
}

// walk marks in held what live roots reference.
type walk struct {
	g       *Group
	ctx     context.Context
	held    *held
	visited map[cas.Digest]bool // tree objects walked: shared subtrees once
}

// tree walks the tree object d and everything below it.
func (w *walk) tree(d cas.Digest) error {
	stack := []cas.Digest{d}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if w.visited[d] {
			continue
		}
		// A walk of a million directories takes seconds: a process
		// stopping does not wait for it.
		if err := w.ctx.Err(); err != nil {
			return err
		}
		w.held.mark(d)
		t, err := w.g.readTree(w.ctx, d)
		if err != nil {
			return err
		}
		w.visited[d] = true
		for _, e := range t.Entries {
			switch e.Type {
			case tree.TypeFile:
				w.held.mark(e.Digest)
			case tree.TypeDir:
				stack = append(stack, e.Digest)
			}
		}
	}
	return nil
}

// readTree reads tree object d from the store, or from the group into
// memory (a collection walks trees it does not own, which it need not keep).
func (g *Group) readTree(ctx context.Context, d cas.Digest) (*tree.Tree, error) {
	b, err := g.self.store.ReadAll(d)
	if err == nil {
		return tree.Decode(b)
	}
	var errs []error
	for _, p := range g.Sources(d) {
		b, err := func() ([]byte, error) {
			r, err := p.Fetch(ctx, d, false)
			if err != nil {
				return nil, err
			}
			defer r.Close()
			return io.ReadAll(io.LimitReader(r, maxTreeObject))
		}()
		if err == nil && cas.Sum(b) != d {
			err = fmt.Errorf("tree %s from %s: %w", d, p.Name(), cas.ErrCorrupt)
		}
		if err == nil {
			return tree.Decode(b)
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("tree %s: not at this member nor at any other: %w", d, joinOr(errs, cas.ErrNotFound))
}

// joinOr returns the first of errs, or def if there are none.
func joinOr(errs []error, def error) error {
	if len(errs) == 0 {
		return def
	}
	return errs[0]
}

// RunCollector collects every interval, and soon after KickCollector, until
// ctx ends; opt returns the options of each collection. (Collections under
// pressure are the member's to start, when its store fills.)
func (g *Group) RunCollector(ctx context.Context, interval time.Duration, opt func() CollectOptions) {
	for {
		start := time.Now()
		res, err := g.Collect(ctx, opt())
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			g.metrics.Collections.WithLabelValues("incomplete").Inc()
			klog.InfoS("Garbage collection incomplete", "err", err)
		default:
			g.metrics.Collections.WithLabelValues("complete").Inc()
			if res.Deleted > 0 || res.Garbage > 0 {
				klog.InfoS("Collected garbage", "roots", res.Roots, "trees", res.Trees, "held", res.Held,
					"garbage", res.Garbage, "deleted", res.Deleted, "freed", res.Freed,
					"duration", time.Since(start))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-g.gc.kick:
			// At most one collection a second, however often it is asked.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(start.Add(time.Second))):
			}
		case <-time.After(interval):
		}
	}
}

// Used tells the homes of the volumes ids that this node's pods read the
// blobs ds lately, each home once; a home that cannot be told misses it.
func (g *Group) Used(ctx context.Context, ids []string, ds []cas.Digest) {
	told := map[string]bool{}
	for _, id := range ids {
		for _, h := range g.liveOnly(g.Homes(id)) {
			if told[h.Name()] {
				continue
			}
			told[h.Name()] = true
			for i := 0; i < len(ds); i += sizesBatch {
				if err := h.Used(ctx, ds[i:min(i+sizesBatch, len(ds))]); err != nil {
					g.Failed(h, err)
					break
				}
			}
		}
	}
}
