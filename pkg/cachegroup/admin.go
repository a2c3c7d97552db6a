package cachegroup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// admin is what the member answers an operator's tool: it speaks for the
// group, routing to homes and owners, and passes on what is for another
// member (a warm, a verify) to it.
type admin struct {
	m *Member

	mu     sync.Mutex
	verify wire.VerifyState // the last or running re-hash of the store
}

var _ wire.Admin = (*admin)(nil)

// statusWait bounds how long the status of another member is waited for.
const statusWait = 5 * time.Second

// Status is this member's status and, with all, every other member's.
func (a *admin) Status(ctx context.Context, all bool) ([]wire.Status, error) {
	out := []wire.Status{a.self(ctx)}
	if !all {
		return out, nil
	}
	others := a.others()
	res := make([]wire.Status, len(others))
	var wg sync.WaitGroup
	for i, p := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, statusWait)
			defer cancel()
			st, err := p.AdminStatus(sctx, false)
			if err == nil && len(st) == 1 && st[0].Name == p.Name() {
				res[i] = st[0]
				return
			}
			if err == nil {
				err = errors.New("answered for another member")
			}
			res[i] = wire.Status{Health: wire.Health{Name: p.Name(), Group: a.m.group.Name()}, Error: err.Error()}
		}()
	}
	wg.Wait()
	return append(out, res...), nil
}

// self is this member's own status; a blob count left halfway when ctx ends
// goes unanswered anyway.
func (a *admin) self(ctx context.Context) wire.Status {
	m := a.m
	st := wire.Status{Health: m.Health(), Version: m.cfg.Version, Replicas: m.group.Replicas(),
		GraceSeconds: m.group.Grace().Seconds(), StoreUsed: m.store.Used(), CacheSize: m.cfg.CacheSize,
		Capacity: m.store.Capacity(), BelowR: int64(gauge(m.metrics.BelowR))}
	// Owned now, not as of the last pass: an import or a commit since
	// counts. One stat of each blob of the store.
	m.store.Each(ctx, func(d cas.Digest) {
		if m.group.IsOwner(d) {
			st.OwnedBlobs++
			st.OwnedBytes += max(m.store.Size(d), 0)
		}
	})
	for _, s := range m.group.MemberStates() {
		st.Members = append(st.Members, wire.MemberStatus{Name: s.Name, Weight: s.Weight, Live: s.Up, Gone: s.Gone,
			DownSeconds: s.DownFor.Seconds()})
	}
	if m.node != nil {
		n, oldest := m.node.Outbox()
		st.Outbox = n
		if n > 0 {
			st.OutboxOldestSeconds = time.Since(oldest).Seconds()
		}
	}
	return st
}

// gauge reads a gauge's value.
func gauge(g prometheus.Gauge) float64 {
	var d dto.Metric
	if g.Write(&d) != nil {
		return 0
	}
	return d.GetGauge().GetValue()
}

// others returns the other members of the group as peer clients.
func (a *admin) others() []*wire.Client {
	var out []*wire.Client
	for _, mb := range a.m.group.Members() {
		if c, ok := mb.Peer.(*wire.Client); ok {
			out = append(out, c)
		}
	}
	return out
}

// peer returns the member called name, or an error if it is none of the
// group's (a client-only node serves no peers).
func (a *admin) peer(name string) (*wire.Client, error) {
	for _, c := range a.others() {
		if c.Name() == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("member %s: %w (client-only nodes serve no peers: reach them with kubectl exec)", name, cas.ErrNotFound)
}

// Volumes lists the group's volumes and snapshots.
func (a *admin) Volumes(ctx context.Context) (wire.VolumeList, error) {
	vs, err := a.m.group.Volumes(ctx)
	if err != nil {
		return wire.VolumeList{}, err
	}
	ss, err := a.m.group.Snapshots(ctx)
	return wire.VolumeList{Volumes: vs, Snapshots: ss}, err
}

// Volume returns volume id's newest head in the group.
func (a *admin) Volume(ctx context.Context, id string) (volume.Volume, error) {
	return a.m.group.Volume(ctx, id)
}

// Commit applies c at volume id's primary home.
func (a *admin) Commit(ctx context.Context, id string, c *tree.Commit) (volume.CommitResult, error) {
	return a.m.group.Commit(ctx, id, c)
}

// PutBlob stores blob d here, pushes it to its owners, and lets go of the
// copy here unless this member is one of them or a snapshot on its node
// links it.
func (a *admin) PutBlob(ctx context.Context, d cas.Digest, r io.Reader) error {
	st := a.m.store
	if !st.Has(d) {
		if _, err := st.Put(r, d); err != nil {
			return err
		}
	}
	if err := a.m.group.Push(ctx, d); err != nil {
		return err
	}
	if !a.m.group.IsOwner(d) && !st.Linked(d) && (a.m.node == nil || !a.m.node.Pinned(d)) {
		st.Remove(d)
	}
	return nil
}

// OpenBlob streams blob d from this member's store or, lacking it, from the
// first of its sources that has it; nothing is stored here.
func (a *admin) OpenBlob(ctx context.Context, d cas.Digest) (io.ReadCloser, error) {
	if f, err := a.m.store.Open(d); err == nil {
		return f, nil
	}
	var errs []error
	for _, p := range a.m.group.Sources(d) {
		rc, err := p.Fetch(ctx, d, false)
		if err == nil {
			return rc, nil
		}
		a.m.group.Failed(p, err)
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("blob %s: %w: %w", d, cas.ErrNotFound, errors.Join(errs...))
}

// Warm hydrates volume q.Volume's head on member q.Node's node tier, passing
// the request on if that is another member.
func (a *admin) Warm(ctx context.Context, q wire.WarmRequest) (wire.WarmResult, error) {
	if q.Node != a.m.cfg.NodeID {
		p, err := a.peer(q.Node)
		if err != nil {
			return wire.WarmResult{}, err
		}
		q.Forwarded = true
		return p.AdminWarm(ctx, q)
	}
	if a.m.node == nil {
		return wire.WarmResult{}, fmt.Errorf("member %s has no node tier: %w", q.Node, volume.ErrUnavailable)
	}
	v, err := a.m.group.Volume(ctx, q.Volume)
	if err != nil {
		return wire.WarmResult{}, err
	}
	res := wire.WarmResult{Node: q.Node, Volume: v.ID, Generation: v.Generation, Root: v.Root, Files: v.Count, Bytes: v.Size}
	start := time.Now()
	// Private to this node, as a no-sharing mount's would be; the
	// hydration goes on if ctx ends first.
	_, err = a.m.node.Materialize(ctx, v.Root, node.Want{VolumeID: v.ID})
	res.Seconds = time.Since(start).Seconds()
	switch {
	case err == nil:
		res.Done = true
	case ctx.Err() != nil:
	default:
		return res, err
	}
	klog.InfoS("Warmed a volume on this node", "volume", v.ID, "generation", v.Generation, "done", res.Done, "duration", time.Since(start))
	return res, nil
}

// Verify reports on the re-hashing of member's store, passing the request
// on if that is another member; with start, one is started unless one runs.
func (a *admin) Verify(ctx context.Context, member string, start bool) (wire.VerifyState, error) {
	if member != a.m.cfg.NodeID {
		p, err := a.peer(member)
		if err != nil {
			return wire.VerifyState{}, err
		}
		return p.AdminVerify(ctx, member, start)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if start && !a.verify.Running {
		a.verify = wire.VerifyState{Member: member, Running: true, Started: time.Now().UTC()}
		go a.runVerify(a.m.ctx)
	}
	st := a.verify
	st.Member = member
	st.Corrupt = append([]cas.Digest(nil), st.Corrupt...)
	st.Errors = append([]string(nil), st.Errors...)
	return st, nil
}

// runVerify re-hashes every blob of the store. A corrupt copy is dropped
// (the store does that) and, if this member should hold the blob, fetched
// again from the other members that have it.
func (a *admin) runVerify(ctx context.Context) {
	record := func(f func(st *wire.VerifyState)) {
		a.mu.Lock()
		defer a.mu.Unlock()
		f(&a.verify)
	}
	defer record(func(st *wire.VerifyState) { st.Running, st.Finished = false, time.Now().UTC() })
	err := a.m.store.Chunks(verifyChunk, func(ds []cas.Digest) error {
		for _, d := range ds {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			a.verifyBlob(ctx, d, record)
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		record(func(st *wire.VerifyState) { st.Errors = append(st.Errors, err.Error()) })
	}
}

// verifyChunk is how many blobs a verification lists at a time.
const verifyChunk = 4096

// verifyBlob verifies blob d, drops it if corrupt (fetching it again if
// this member owns it), and records what it found.
func (a *admin) verifyBlob(ctx context.Context, d cas.Digest, record func(func(*wire.VerifyState))) {
	size := a.m.store.Size(d)
	err := a.m.store.Verify(d)
	var repairErr error
	corrupt := errors.Is(err, cas.ErrCorrupt)
	if corrupt {
		a.m.metrics.Corrupt.Inc()
		klog.ErrorS(err, "Verify found a corrupt copy; dropped it", "blob", d)
		if a.m.group.IsOwner(d) {
			repairErr = a.m.group.Fetch(ctx, d)
		}
	}
	record(func(st *wire.VerifyState) {
		st.Checked++
		st.Bytes += max(size, 0)
		switch {
		case corrupt:
			st.CorruptCount++
			if len(st.Corrupt) < wire.MaxVerifyReport {
				st.Corrupt = append(st.Corrupt, d)
			}
			switch {
			case !a.m.group.IsOwner(d):
				st.Dropped++
			case repairErr == nil:
				st.Repaired++
			case len(st.Errors) < wire.MaxVerifyReport:
				st.Errors = append(st.Errors, fmt.Sprintf("repair blob %s: %v", d, repairErr))
			}
		case err != nil && !errors.Is(err, cas.ErrNotFound) && len(st.Errors) < wire.MaxVerifyReport:
			st.Errors = append(st.Errors, fmt.Sprintf("blob %s: %v", d, err))
		}
	})
}

// Collect collects the garbage of member q.Member's store now, passing the
// request on if that is another member: a collection under pressure, which
// deletes garbage at once (but what a commit in flight may name).
func (a *admin) Collect(ctx context.Context, q wire.CollectRequest) (wire.Collection, error) {
	if q.Member != a.m.cfg.NodeID {
		p, err := a.peer(q.Member)
		if err != nil {
			return wire.Collection{}, err
		}
		return p.AdminCollect(ctx, q)
	}
	opt := a.m.collectOptions(true)
	opt.DryRun = q.DryRun
	res, err := a.m.group.Collect(ctx, opt)
	if err != nil {
		return wire.Collection{}, err
	}
	klog.InfoS("Collected garbage for an operator", "garbage", res.Garbage, "deleted", res.Deleted, "freed", res.Freed, "dryRun", q.DryRun)
	return wire.Collection{Member: q.Member, DryRun: q.DryRun, Roots: res.Roots, Trees: res.Trees, Held: res.Held,
		Garbage: res.Garbage, Bytes: res.Bytes, Deleted: res.Deleted, Freed: res.Freed}, nil
}
