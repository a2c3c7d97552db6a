package group

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
	"k8s.io/klog/v2"
)

// Routing: every volume and snapshot operation goes to the volume's homes,
// the first live one (the primary) for changes.

// onPrimary runs fn on the first live home of id, falling over to the next
// home if a home cannot be reached.
func (g *Group) onPrimary(ctx context.Context, id string, fn func(volume.Service) error) error {
	var errs []error
	for _, h := range g.liveFirst(g.Homes(id)) {
		err := fn(h)
		if err == nil {
			g.answered(h)
			return nil
		}
		if wire.IsAnswer(err) || errors.Is(err, cas.ErrNotFound) || errors.Is(err, volume.ErrExists) || errors.Is(err, tree.ErrTooLarge) || ctx.Err() != nil {
			return err
		}
		if h == Peer(g.self) {
			return err // its own failure, not a member out of reach
		}
		g.Failed(h, err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("%s: %w", id, volume.ErrUnavailable)
	}
	return fmt.Errorf("%s: %w: %w", id, volume.ErrUnavailable, errors.Join(errs...))
}

// Volume returns volume id's newest head among its homes: those thought up
// first, the others only if none of those has it. It is ErrNotFound only if
// every home asked answered and none has it, since a committer drops the
// layers of volumes that are gone; ErrUnavailable if a home could not be
// asked.
func (g *Group) Volume(ctx context.Context, id string) (volume.Volume, error) {
	best, answered, errs := g.newestHead(ctx, id, nil, false)
	switch {
	case best != nil:
		return *best, nil
	case len(errs) > 0 || !answered:
		return volume.Volume{}, fmt.Errorf("volume %s: %w: %w", id, volume.ErrUnavailable, errors.Join(errs...))
	}
	return volume.Volume{}, fmt.Errorf("volume %s: %w", id, cas.ErrNotFound)
}

// newestHead asks volume id's homes, but skip, for its head and returns the
// newest, whether any home answered and the errors of those that could not
// be asked. Homes thought down are asked within a second each, and only if
// those thought up have no head, unless all is set.
func (g *Group) newestHead(ctx context.Context, id string, skip Peer, all bool) (best *volume.Volume, answered bool, errs []error) {
	g.inTurn(g.Homes(id), func() bool { return !all && best != nil }, func(h Peer, thoughtDown bool) {
		if h == skip {
			return
		}
		limit := time.Minute
		if thoughtDown {
			limit = time.Second
		}
		hctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		v, err := h.Volume(hctx, id)
		switch {
		case err == nil:
			if best == nil || volume.Newer(v, *best) {
				best = &v
			}
		case !errors.Is(err, cas.ErrNotFound):
			g.Failed(h, err)
			errs = append(errs, err)
			return
		}
		answered = true
		g.answered(h)
	})
	return best, answered, errs
}

// CreateVolume creates a volume at its primary home; from a snapshot, the
// snapshot is looked up first, wherever it lives.
func (g *Group) CreateVolume(ctx context.Context, spec volume.Spec, source string) (volume.Volume, error) {
	if source != "" {
		s, err := g.Snapshot(ctx, source)
		if err != nil {
			return volume.Volume{}, err
		}
		spec.From = &s
	}
	var v volume.Volume
	err := g.onPrimary(ctx, volume.ID(spec.Name), func(h volume.Service) (err error) {
		v, err = h.CreateVolume(ctx, spec)
		return err
	})
	return v, err
}

// DeleteVolume deletes a volume at its primary home.
func (g *Group) DeleteVolume(ctx context.Context, id string) error {
	defer g.KickCollector() // its blobs are garbage from now on
	return g.onPrimary(ctx, id, func(h volume.Service) error { return h.DeleteVolume(ctx, id) })
}

// ExpandVolume raises a volume's quota at its primary home.
func (g *Group) ExpandVolume(ctx context.Context, id string, quota int64) (volume.Volume, error) {
	var v volume.Volume
	err := g.onPrimary(ctx, id, func(h volume.Service) (err error) {
		v, err = h.ExpandVolume(ctx, id, quota)
		return err
	})
	return v, err
}

// Commit applies c at volume id's primary home. Every blob it names must be
// at its owners already (see Push).
func (g *Group) Commit(ctx context.Context, id string, c *tree.Commit) (volume.CommitResult, error) {
	var res volume.CommitResult
	err := g.onPrimary(ctx, id, func(h volume.Service) (err error) {
		res, err = h.Commit(ctx, id, c)
		return err
	})
	return res, err
}

// homeHooks is the group as this member's home sees it.
type homeHooks struct{ g *Group }

func (h homeHooks) Replicate(ctx context.Context, v volume.Volume, trees []cas.Digest) error {
	return h.g.replicate(ctx, v, trees)
}
func (h homeHooks) Fetch(ctx context.Context, d cas.Digest) error { return h.g.Fetch(ctx, d) }
func (h homeHooks) CatchUp(ctx context.Context, id string) bool   { return h.g.catchUp(ctx, id) }
func (h homeHooks) CheckBlobs(ctx context.Context, refs []cas.Ref) error {
	return h.g.checkBlobs(ctx, refs)
}

// replicate pushes a changed head's new tree objects to their owners and the
// head to the volume's other live homes; a home that cannot be reached
// catches up by anti-entropy when it is back.
func (g *Group) replicate(ctx context.Context, v volume.Volume, trees []cas.Digest) error {
	if err := g.PushAll(ctx, trees); err != nil {
		return err
	}
	for _, h := range g.liveOnly(g.Homes(v.ID)) {
		if h == Peer(g.self) {
			continue
		}
		if err := h.PutHead(ctx, v); err != nil {
			g.Failed(h, err)
			klog.ErrorS(err, "Replicate head", "volume", v.ID, "home", h.Name())
		}
	}
	return nil
}

// catchUp stores here the newest head of volume id that another home keeps,
// if it is newer than this member's: a primary back from an outage must not
// build on the head it had while the next home took commits, nor a member
// that just became a home answer "not found" before anti-entropy brings it
// the head. Homes thought down are asked too, briefly: a wrong "down" would
// lose a commit, a right one costs a second. It reports whether every other
// home answered: if not, the head here is only the newest it can know.
func (g *Group) catchUp(ctx context.Context, id string) (complete bool) {
	best, _, errs := g.newestHead(ctx, id, g.self, true)
	if best != nil {
		if err := g.self.PutHead(ctx, *best); err != nil {
			klog.ErrorS(err, "Catch up with another home's head", "volume", id)
		}
	}
	return len(errs) == 0
}

// Volumes lists the group's live volumes, the newest head of each.
func (g *Group) Volumes(ctx context.Context) ([]volume.Volume, error) {
	byID := map[string]volume.Volume{}
	for _, m := range g.liveOnly(g.rank("")) {
		vs, err := m.Volumes(ctx)
		if err != nil {
			g.Failed(m, err)
			continue
		}
		for _, v := range vs {
			if cur, ok := byID[v.ID]; !ok || volume.Newer(v, cur) {
				byID[v.ID] = v
			}
		}
	}
	var all []volume.Volume
	for _, v := range byID {
		if !v.Deleted {
			all = append(all, v)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	return all, nil
}

// Snapshot returns snapshot id from its homes, those thought up first. It is
// ErrNotFound if a home answered and none has it, ErrUnavailable if no home
// answered.
func (g *Group) Snapshot(ctx context.Context, id string) (volume.Snapshot, error) {
	var (
		errs     []error
		answered bool
	)
	for _, h := range g.liveFirst(g.Homes(id)) {
		s, err := h.Snapshot(ctx, id)
		if err != nil && !errors.Is(err, cas.ErrNotFound) {
			g.Failed(h, err)
			errs = append(errs, err)
			continue
		}
		answered = true
		g.answered(h)
		if err == nil {
			return s, nil
		}
	}
	if !answered {
		return volume.Snapshot{}, fmt.Errorf("snapshot %s: %w: %w", id, volume.ErrUnavailable, errors.Join(errs...))
	}
	return volume.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, cas.ErrNotFound)
}

// CreateSnapshot pins volume volumeID's current generation as snapshot name,
// kept at the snapshot's homes; idempotent on name.
func (g *Group) CreateSnapshot(ctx context.Context, name, volumeID string) (volume.Snapshot, error) {
	id := volume.SnapshotID(name)
	if s, err := g.Snapshot(ctx, id); err == nil {
		if s.VolumeID != volumeID {
			return volume.Snapshot{}, fmt.Errorf("snapshot %q: %w (of volume %s)", name, volume.ErrExists, s.VolumeID)
		}
		return s, nil
	} else if !errors.Is(err, cas.ErrNotFound) {
		return volume.Snapshot{}, err
	}
	v, err := g.Volume(ctx, volumeID)
	if err != nil {
		return volume.Snapshot{}, err
	}
	s := volume.Snapshot{ID: id, Name: name, VolumeID: volumeID, Root: v.Root, Size: v.Size, Count: v.Count, Created: time.Now().UTC()}
	stored := 0
	var exists error
	// A home thought down catches up by anti-entropy once a home has it.
	g.inTurn(g.Homes(id), func() bool { return stored > 0 || exists != nil }, func(h Peer, _ bool) {
		if exists != nil {
			return
		}
		err := h.PutSnapshot(ctx, s)
		switch {
		case errors.Is(err, volume.ErrExists):
			exists = err
		case err != nil:
			g.Failed(h, err)
		default:
			g.answered(h)
			stored++
		}
	})
	if exists != nil {
		return volume.Snapshot{}, exists
	}
	if stored == 0 {
		return volume.Snapshot{}, fmt.Errorf("snapshot %q: %w", name, volume.ErrUnavailable)
	}
	return s, nil
}

// DeleteSnapshot removes snapshot id from its homes.
func (g *Group) DeleteSnapshot(ctx context.Context, id string) error {
	defer g.KickCollector()
	for _, h := range g.liveOnly(g.Homes(id)) {
		if err := h.DeleteSnapshot(ctx, id); err != nil {
			g.Failed(h, err)
			return err
		}
	}
	return nil
}

// Snapshots lists the snapshots of every live member, each once.
func (g *Group) Snapshots(ctx context.Context) ([]volume.Snapshot, error) {
	seen := map[string]bool{}
	var all []volume.Snapshot
	for _, m := range g.liveOnly(g.rank("")) {
		ss, err := m.Snapshots(ctx)
		if err != nil {
			g.Failed(m, err)
			continue
		}
		for _, s := range ss {
			if !seen[s.ID] {
				seen[s.ID] = true
				all = append(all, s)
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	return all, nil
}
