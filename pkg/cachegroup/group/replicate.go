package group

import (
	"context"
	"errors"
	"os"
	"slices"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"k8s.io/klog/v2"
)

// Pass is what one reconciliation pass did.
type Pass struct {
	Heads   int // heads or snapshots taken from or given to other homes
	Checked int // blobs checked
	Pushed  int // blob copies pushed to members that should hold them
	Dropped int // blob copies dropped here after they moved elsewhere
	Owned   int // blobs this member owns
	Failed  int // checks or pushes that failed (retried next pass)
	BelowR  int // blobs held here with fewer than R copies known in the group
}

// sizesBatch is how many digests one sizes request asks about.
const sizesBatch = 2000

// Reconcile brings the group back to its placement after a membership
// change: heads and snapshots reach all their live homes, every blob this
// member holds reaches its R live owners, and copies this member no longer
// owns are dropped once the owners have them (unless a snapshot on this node
// links them). Only what placement moved is moved.
func (g *Group) Reconcile(ctx context.Context, inUse func(cas.Digest) bool) (Pass, error) {
	return g.reconcile(ctx, inUse, true)
}

// reconcile exchanges heads and, with blobs, checks every blob of the store.
func (g *Group) reconcile(ctx context.Context, inUse func(cas.Digest) bool, blobs bool) (Pass, error) {
	var p Pass
	if len(g.Members()) < 2 {
		return p, nil
	}
	p.Heads = g.reconcileHeads(ctx)
	if !blobs {
		return p, nil
	}
	err := g.reconcileBlobs(ctx, &p, inUse)
	return p, err
}

// reconcileHeads exchanges heads and snapshots with the other live members.
func (g *Group) reconcileHeads(ctx context.Context) int {
	n := 0
	self := g.self.Name()
	isHome := func(id string) bool {
		return slices.ContainsFunc(g.Homes(id), func(p Peer) bool { return p.Name() == self })
	}
	for _, m := range g.liveOnly(g.rank("")) {
		if m == Peer(g.self) {
			continue
		}
		vs, err := m.Volumes(ctx)
		if err != nil {
			g.Failed(m, err)
			continue
		}
		for _, v := range vs {
			if isHome(v.ID) {
				if cur, err := g.self.Volume(ctx, v.ID); err != nil && !v.Deleted || err == nil && volume.Newer(v, cur) {
					n++
				}
				g.self.PutHead(ctx, v)
			}
		}
		ss, err := m.Snapshots(ctx)
		if err != nil {
			continue
		}
		for _, s := range ss {
			if isHome(s.ID) {
				if _, err := g.self.Snapshot(ctx, s.ID); err != nil {
					n++
				}
				g.self.PutSnapshot(ctx, s)
			}
		}
	}
	// Give what is kept here to its live homes; let go of what is not ours.
	vs, _ := g.self.Volumes(ctx)
	for _, v := range vs {
		ok := true
		for _, h := range g.liveOnly(g.Homes(v.ID)) {
			if h != Peer(g.self) {
				if err := h.PutHead(ctx, v); err != nil {
					ok = false
				}
			}
		}
		if ok && !isHome(v.ID) {
			g.self.DropHead(v.ID)
		}
	}
	ss, _ := g.self.Snapshots(ctx)
	for _, s := range ss {
		ok := true
		for _, h := range g.liveOnly(g.Homes(s.ID)) {
			if h != Peer(g.self) {
				if err := h.PutSnapshot(ctx, s); err != nil && !errors.Is(err, volume.ErrExists) {
					ok = false
				}
			}
		}
		if ok && !isHome(s.ID) {
			g.self.DeleteSnapshot(ctx, s.ID)
		}
	}
	return n
}

// reconcileChunk is about how many blobs of the store one step of a pass
// holds: a pass over millions holds a few MB.
const reconcileChunk = 1 << 16

// reconcileBlobs walks the local store, a chunk at a time.
func (g *Group) reconcileBlobs(ctx context.Context, p *Pass, inUse func(cas.Digest) bool) error {
	down := 0
	for _, m := range g.Members() {
		if !g.Live(m.Name()) {
			down++
		}
	}
	r := &reconcile{g: g, p: p, inUse: inUse, failed: map[Peer]bool{}}
	g.metrics.ReplicationPending.Set(0)
	err := g.self.store.Chunks(reconcileChunk, func(ds []cas.Digest) error {
		r.chunk(ctx, ds)
		return ctx.Err()
	})
	if err != nil {
		return err
	}
	p.Owned = r.owned
	g.metrics.OwnedBlobs.Set(float64(r.owned))
	g.metrics.OwnedBytes.Set(float64(r.ownedBytes))
	g.metrics.ReplicationPending.Set(0)
	g.metrics.BelowR.Set(float64(r.below))
	g.metrics.PassDown.Set(float64(down))
	g.metrics.BlobPasses.Inc()
	p.BelowR = r.below
	return nil
}

// reconcile is one pass of reconcileBlobs: what it has counted so far.
type reconcile struct {
	g      *Group
	p      *Pass
	inUse  func(cas.Digest) bool
	failed map[Peer]bool // members that failed a request: not asked again this pass

	owned      int
	ownedBytes int64
	below      int
}

// chunk reconciles the blobs ds.
func (r *reconcile) chunk(ctx context.Context, ds []cas.Digest) {
	g, p := r.g, r.p
	// Group the blobs by the remote members that should hold them, and ask
	// each member in batches which it has.
	want := map[Peer][]cas.Digest{}
	for _, d := range ds {
		if g.Garbage(d) {
			continue // not pushed anywhere: a member back from away resurrects nothing
		}
		for _, t := range g.placed(d) {
			// An owner down within the grace period is neither given
			// copies nor replaced: it keeps its place until it is gone.
			if t != Peer(g.self) && g.Live(t.Name()) {
				want[t] = append(want[t], d)
			}
		}
		if g.IsOwner(d) {
			r.owned++
			if fi, err := os.Lstat(g.self.store.Path(d)); err == nil {
				r.ownedBytes += fi.Size()
			}
		}
	}
	for _, ws := range want {
		g.metrics.ReplicationPending.Add(float64(len(ws))) // checks of copies still to make
	}
	confirmed := map[cas.Digest]int{}
	for t, ws := range want {
		for i := 0; i < len(ws); i += sizesBatch {
			batch := ws[i:min(i+sizesBatch, len(ws))]
			if r.failed[t] {
				p.Failed += len(batch)
				g.metrics.ReplicationPending.Sub(float64(len(batch)))
				continue
			}
			sizes, err := t.Sizes(ctx, batch)
			if err != nil {
				g.Failed(t, err)
				r.failed[t] = true
				p.Failed += len(batch)
				g.metrics.ReplicationPending.Sub(float64(len(batch)))
				continue
			}
			var missing []cas.Digest
			for j, d := range batch {
				if sizes[j] >= 0 {
					confirmed[d]++
				} else {
					missing = append(missing, d)
				}
			}
			for _, d := range missing {
				if err := g.pushTo(ctx, t, d); err != nil {
					p.Failed++
					continue
				}
				p.Pushed++
				confirmed[d]++
				g.metrics.Replicated.WithLabelValues("pushed").Inc()
			}
			p.Checked += len(batch)
			g.metrics.ReplicationPending.Sub(float64(len(batch)))
		}
	}
	// Drop copies this member no longer should hold, once every target has
	// one; count the blobs with fewer than R copies known.
	for _, d := range ds {
		ts := g.placed(d)
		mine := slices.Contains(ts, Peer(g.self))
		if copies := confirmed[d]; mine && copies+1 < g.replicas || !mine && copies < g.replicas {
			r.below++
		}
		if mine || confirmed[d] < len(ts) || len(ts) < g.replicas {
			continue
		}
		if r.inUse != nil && r.inUse(d) {
			continue
		}
		if g.self.store.Linked(d) {
			continue // linked into a snapshot on this node
		}
		g.self.store.Remove(d)
		p.Dropped++
		g.metrics.Replicated.WithLabelValues("dropped").Inc()
	}
}

func (g *Group) pushTo(ctx context.Context, t Peer, d cas.Digest) error {
	f, err := g.self.store.Open(d)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := t.Push(ctx, d, f); err != nil {
		g.Failed(t, err)
		return err
	}
	return nil
}

// fullPass is how often the blobs of the store are checked against
// placement when nothing changed: every blob a commit makes reaches its
// owners when it is made, so between membership changes the check only
// catches what went wrong unseen. Checking every blob with every owner each
// interval would keep the disks and the network of a large group busy.
const fullPass = 10 * time.Minute

// markWait is how long the reconciler waits for a first collection.
const markWait = 30 * time.Second

// RunReconciler reconciles until ctx ends: heads every interval, and the
// blobs of the store after every membership change, after a pass that
// failed somewhere, and every fullPass.
func (g *Group) RunReconciler(ctx context.Context, interval time.Duration, inUse func(cas.Digest) bool) {
	// The first blob pass waits a while for a collection to tell garbage
	// apart, so that what became garbage while this member was away is not
	// pushed back to the others.
	select {
	case <-g.gc.marked:
	case <-time.After(markWait):
	case <-ctx.Done():
		return
	}
	var lastFull time.Time
	blobs := true
	for {
		changed := g.Changed()
		start := time.Now()
		full := blobs || start.Sub(lastFull) >= fullPass
		if full {
			lastFull = start
		}
		p, err := g.reconcile(ctx, inUse, full)
		if err != nil {
			klog.ErrorS(err, "Reconcile")
		} else if p.Pushed+p.Dropped+p.Heads+p.Failed > 0 {
			klog.InfoS("Reconciled", "heads", p.Heads, "checked", p.Checked, "pushed", p.Pushed,
				"dropped", p.Dropped, "owned", p.Owned, "failed", p.Failed, "duration", time.Since(start))
		}
		blobs = err != nil || p.Failed > 0
		wait := interval
		if blobs {
			wait = min(interval, 5*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
			blobs = true
			// Let a burst of changes settle before the next pass.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		case <-time.After(wait):
		}
	}
}
