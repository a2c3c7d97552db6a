package group

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/parallel"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"k8s.io/klog/v2"
)

// Sources returns where to fetch blob d from, best first: its live owners,
// then every other live member (one may hold a copy), excluding this one.
func (g *Group) Sources(d cas.Digest) []Peer {
	var live, down []Peer
	for _, p := range g.rank("blob/" + d.String()) {
		switch {
		case p == Peer(g.self):
		case g.Live(p.Name()):
			live = append(live, p)
		default:
			down = append(down, p) // last resort: it may be back already
		}
	}
	return append(live, down...)
}

type corruptKey struct{}

// OnCorrupt returns ctx with f to be told of every copy fetched under it
// that fails verification (and is discarded): the blob and the member that
// sent it. A node building a volume's snapshot says so on the volume.
func OnCorrupt(ctx context.Context, f func(d cas.Digest, from string)) context.Context {
	return context.WithValue(ctx, corruptKey{}, f)
}

// corrupt counts the copy of blob d that from sent and tells ctx's hook.
func (g *Group) corrupt(ctx context.Context, d cas.Digest, from Peer) {
	g.metrics.Corrupt.Inc()
	if f, ok := ctx.Value(corruptKey{}).(func(cas.Digest, string)); ok {
		f(d, from.Name())
	}
}

// Fetch makes sure blob d is in the local store, fetched from its sources.
func (g *Group) Fetch(ctx context.Context, d cas.Digest) error {
	_, err := g.FetchFrom(ctx, d, g.Sources(d))
	return err
}

// FetchFrom stores blob d in the local store from the first of sources that
// has it, verifying what arrives: a copy that fails verification is discarded
// and the next source tried. It returns the member that served it.
func (g *Group) FetchFrom(ctx context.Context, d cas.Digest, sources []Peer) (Peer, error) {
	st := g.self.store
	if st.Has(d) {
		return g.self, nil
	}
	var (
		errs []error
		bad  []Peer // sources that sent wrong bytes
	)
	defer func() {
		if len(bad) > 0 && st.Has(d) {
			go g.repair(context.WithoutCancel(ctx), d, bad)
		}
	}()
	for _, p := range sources {
		err := func() error {
			// A sharing peer, not an owner, may pull it through.
			r, err := p.Fetch(ctx, d, !slices.Contains(g.Owners(d), p))
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = st.Put(r, d)
			return err
		}()
		if err == nil {
			return p, nil
		}
		if errors.Is(err, cas.ErrCorrupt) {
			g.corrupt(ctx, d, p)
			bad = append(bad, p)
			klog.ErrorS(err, "Discarded a blob that failed verification", "blob", d, "from", p.Name())
		} else {
			g.Failed(p, err)
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("blob %s: %w", d, cas.ErrNotFound)
	}
	return nil, fmt.Errorf("fetch blob %s: %w", d, errors.Join(errs...))
}

// repair has each member that served wrong bytes of blob d check its copy
// (dropping it if bad) and gives it the good one this member now holds.
func (g *Group) repair(ctx context.Context, d cas.Digest, bad []Peer) {
	for _, p := range bad {
		if err := p.Verify(ctx, d); err != nil && !errors.Is(err, cas.ErrNotFound) {
			klog.ErrorS(err, "Ask member to verify blob", "member", p.Name(), "blob", d)
			continue
		}
		if err := g.pushTo(ctx, p, d); err != nil {
			klog.ErrorS(err, "Repair blob", "member", p.Name(), "blob", d)
			continue
		}
		klog.InfoS("Repaired a corrupt copy", "member", p.Name(), "blob", d)
	}
}

// pushWorkers bounds the blobs pushed at once.
const pushWorkers = 8

// PushAll sends blobs from the local store to the members that should hold
// them (see targets), in parallel.
func (g *Group) PushAll(ctx context.Context, ds []cas.Digest) error {
	return parallel.Do(ds, pushWorkers, parallel.NoState,
		func(d cas.Digest, _ struct{}) error { return g.Push(ctx, d) })
}

// Push sends blob d from the local store to those of its targets that are
// not this member. It fails if no copy other than the local one could be
// made while other members are live.
func (g *Group) Push(ctx context.Context, d cas.Digest) error {
	err := g.push(ctx, d)
	if err != nil {
		// A target that could not be reached is marked down now, so the
		// next member in rendezvous order stands in for it.
		err = g.push(ctx, d)
	}
	return err
}

func (g *Group) push(ctx context.Context, d cas.Digest) error {
	var errs []error
	for _, p := range g.targets(d) {
		if p == Peer(g.self) {
			continue
		}
		err := func() error {
			f, err := g.self.store.Open(d)
			if err != nil {
				return err
			}
			defer f.Close()
			return p.Push(ctx, d, f)
		}()
		if err != nil {
			g.Failed(p, err)
			errs = append(errs, fmt.Errorf("push blob %s to %s: %w", d, p.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// checkBlobs confirms that every blob of refs is held, with its size, by one
// of the members that should hold it now (see targets), as a home does before
// it applies a commit naming them. Each member is asked about its blobs in
// one request; a member that cannot be asked confirms nothing.
func (g *Group) checkBlobs(ctx context.Context, refs []cas.Ref) error {
	g.mu.RLock()
	alone := g.alone
	g.mu.RUnlock()
	if alone {
		return volume.CheckLocal(g.self.store, refs)
	}
	asks := map[Peer][]int{} // indexes of refs, by member asked
	for i, ref := range refs {
		for _, p := range g.targets(ref.Digest) {
			asks[p] = append(asks[p], i)
		}
	}
	confirmed := make([]bool, len(refs))
	wrong := map[int]error{} // refs whose size a member contradicts
	for p, idx := range asks {
		for start := 0; start < len(idx); start += sizesBatch {
			batch := idx[start:min(start+sizesBatch, len(idx))]
			ds := make([]cas.Digest, len(batch))
			for k, i := range batch {
				ds[k] = refs[i].Digest
			}
			sizes, err := p.Keep(ctx, ds) // kept from collection until the commit is applied
			if err != nil {
				g.Failed(p, err)
				break
			}
			for k, i := range batch {
				// One member with the claimed size confirms it; a wrong size
				// anywhere is a false claim, since blobs are verified.
				switch err := volume.CheckSize(refs[i], sizes[k]); {
				case err == nil:
					confirmed[i] = true
				case errors.Is(err, tree.ErrInvalid):
					wrong[i] = err
				}
			}
		}
	}
	// The refs that fail, the first few named, so that a commit of many
	// missing blobs answers with a message of bounded size; false sizes
	// first, since one of them makes the commit invalid, not just early.
	const named = 4
	var errs []error
	failed := 0
	fail := func(i int) {
		if failed++; failed > named {
			return
		}
		if err := wrong[i]; err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, fmt.Errorf("blob %s: %w", refs[i].Digest, volume.ErrMissingBlob))
		}
	}
	for i := range wrong {
		fail(i)
	}
	for i := range refs {
		if !confirmed[i] && wrong[i] == nil {
			fail(i)
		}
	}
	if failed > named {
		errs = append(errs, fmt.Errorf("and %d blobs more", failed-named))
	}
	return errors.Join(errs...)
}
