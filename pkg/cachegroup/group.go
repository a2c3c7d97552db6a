package cachegroup

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// ErrUnavailable is returned when none of the members that could serve a
// request is live.
var ErrUnavailable = errors.New("no live member can serve this")

// Member is a peer with its placement weight (its capacity share).
type Member struct {
	Peer
	Weight float64
}

// Group is a named set of members. It picks, by weighted rendezvous hashing,
// the R homes of each volume and the R owners of each blob, and routes every
// operation to them, skipping members that are down. A group of one member
// routes everything to that member.
type Group struct {
	name       string
	local      *Local
	replicas   int
	weight     float64
	clientOnly bool
	metrics    *Metrics

	mu      sync.RWMutex
	members []Member
	down    map[string]bool // members whose last contact failed
	changed chan struct{}   // closed and replaced when membership changes
}

// NewGroup returns the group called name holding just local, this process's
// own member, with replicas (R) copies of everything; SetMembers adds others.
// A client-only group never counts local as a member: it owns nothing and is
// never a home, it only reads and commits.
func NewGroup(name string, local *Local, replicas int, m *Metrics, clientOnly bool) *Group {
	if m == nil {
		m = NewMetrics(local.Store())
	}
	g := &Group{name: name, local: local, replicas: max(replicas, 1), weight: 1, metrics: m,
		clientOnly: clientOnly, down: map[string]bool{}, changed: make(chan struct{})}
	if !clientOnly {
		g.members = []Member{{Peer: local, Weight: 1}}
	}
	local.replicate = g.replicate
	local.fetch = g.Fetch
	local.catchUp = g.catchUp
	return g
}

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Local returns this process's member.
func (g *Group) Local() *Local { return g.local }

// Metrics returns the member's metrics.
func (g *Group) Metrics() *Metrics { return g.metrics }

// SetWeight sets this member's placement weight (its capacity share).
func (g *Group) SetWeight(w float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.weight = w
	for i := range g.members {
		if g.members[i].Peer == Peer(g.local) {
			g.members[i].Weight = w
		}
	}
}

// Weight returns this member's placement weight.
func (g *Group) Weight() float64 {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return max(g.weight, 1e-9)
}

// ClientOnly reports whether this process is a client of the group only.
func (g *Group) ClientOnly() bool { return g.clientOnly }

// Replicas returns R.
func (g *Group) Replicas() int { return g.replicas }

// Members returns the group's members.
func (g *Group) Members() []Member {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return slices.Clone(g.members)
}

// SetMembers replaces the member list; this process's member is always in it.
func (g *Group) SetMembers(ms []Member) {
	has := false
	for _, m := range ms {
		has = has || m.Name() == g.local.Name()
	}
	if g.clientOnly {
		ms = slices.DeleteFunc(slices.Clone(ms), func(m Member) bool { return m.Name() == g.local.Name() })
	} else if !has {
		ms = append(ms, Member{Peer: g.local, Weight: 1})
	}
	for i := range ms {
		if ms[i].Name() == g.local.Name() {
			ms[i].Peer, ms[i].Weight = g.local, g.Weight()
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name() < ms[j].Name() })
	g.mu.Lock()
	same := len(ms) == len(g.members)
	for i := 0; same && i < len(ms); i++ {
		same = ms[i].Name() == g.members[i].Name() && ms[i].Weight == g.members[i].Weight
	}
	g.members = ms
	g.local.checkBlobs = len(ms) == 1 && !g.clientOnly
	if !same {
		close(g.changed)
		g.changed = make(chan struct{})
	}
	g.mu.Unlock()
	g.metrics.MembersSeen.Set(float64(len(ms)))
	if !same {
		names := make([]string, len(ms))
		for i, m := range ms {
			names[i] = m.Name()
		}
		klog.InfoS("Members changed", "group", g.name, "members", names)
	}
}

// Changed returns a channel closed at the next membership change.
func (g *Group) Changed() <-chan struct{} {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.changed
}

// SetLive records whether a member answered.
func (g *Group) SetLive(name string, live bool) {
	g.mu.Lock()
	was := !g.down[name]
	if live {
		delete(g.down, name)
	} else if name != g.local.Name() {
		g.down[name] = true
	}
	n := 0
	for _, m := range g.members {
		if !g.down[m.Name()] {
			n++
		}
	}
	if was != live && name != g.local.Name() {
		close(g.changed)
		g.changed = make(chan struct{})
	}
	g.mu.Unlock()
	g.metrics.MembersLive.Set(float64(n))
	if was != live {
		klog.InfoS("Member liveness changed", "member", name, "live", live)
	}
}

// Live reports whether member name is thought to be up.
func (g *Group) Live(name string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return !g.down[name]
}

// failed marks p down if err says it could not be reached.
func (g *Group) failed(p Peer, err error) {
	var re *errRemote
	if err != nil && !errors.As(err, &re) && !errors.Is(err, context.Canceled) {
		g.SetLive(p.Name(), false)
	}
}

// rank returns every member in rendezvous order for key: each scores
// -weight/ln(u), u a uniform hash of (key, member name); highest first. A
// member joining or leaving moves only the keys it wins or held.
func (g *Group) rank(key string) []Peer {
	g.mu.RLock()
	ms := g.members
	g.mu.RUnlock()
	return rank(key, ms)
}

func rank(key string, ms []Member) []Peer {
	type scored struct {
		p Peer
		s float64
	}
	ss := make([]scored, len(ms))
	for i, m := range ms {
		ss[i] = scored{m.Peer, Score(key, m.Name(), m.Weight)}
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].s > ss[j].s })
	out := make([]Peer, len(ss))
	for i, s := range ss {
		out[i] = s.p
	}
	return out
}

// Score is the weighted rendezvous score of member for key.
func Score(key, member string, weight float64) float64 {
	h := sha256.Sum256([]byte(key + "\x00" + member))
	u := (float64(binary.BigEndian.Uint64(h[:8])>>11) + 0.5) / (1 << 53)
	if weight <= 0 {
		weight = 1
	}
	return -weight / math.Log(u)
}

func (g *Group) liveOnly(ps []Peer) []Peer {
	live, _ := g.byLiveness(ps)
	return live
}

// byLiveness splits ps, in order, into the members thought up and those
// thought down.
func (g *Group) byLiveness(ps []Peer) (live, down []Peer) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	for _, p := range ps {
		if g.down[p.Name()] {
			down = append(down, p)
		} else {
			live = append(live, p)
		}
	}
	return live, down
}

// liveFirst returns ps with the members thought down moved to the end.
func (g *Group) liveFirst(ps []Peer) []Peer {
	live, down := g.byLiveness(ps)
	return append(live, down...)
}

// inTurn calls ask on each of ps thought up and then, unless settled (if
// given) says that was enough, on each thought down. Liveness is a probe's
// view a few seconds old (a member started with the others may still think
// them down), so requests fall back on the members thought down; background
// passes skip them (liveOnly).
func (g *Group) inTurn(ps []Peer, settled func() bool, ask func(p Peer, thoughtDown bool)) {
	live, down := g.byLiveness(ps)
	for _, p := range live {
		ask(p, false)
	}
	if settled != nil && settled() {
		return
	}
	for _, p := range down {
		ask(p, true)
	}
}

// answered records that p, thought down, answered a request.
func (g *Group) answered(p Peer) {
	if !g.Live(p.Name()) {
		g.SetLive(p.Name(), true)
	}
}

// Homes returns the R members that keep volume (or snapshot) id's head,
// primary first.
func (g *Group) Homes(id string) []Peer {
	r := g.rank("volume/" + id)
	return r[:min(g.replicas, len(r))]
}

// Owners returns the R members that own blob d.
func (g *Group) Owners(d Digest) []Peer {
	r := g.rank("blob/" + d.String())
	return r[:min(g.replicas, len(r))]
}

// IsOwner reports whether this member is one of blob d's owners.
func (g *Group) IsOwner(d Digest) bool {
	return slices.ContainsFunc(g.Owners(d), func(p Peer) bool { return p == Peer(g.local) })
}

// targets returns the R live members that should hold blob d now: its owners,
// or the next members in rendezvous order standing in for owners that are
// down (re-replication moves the copy back when they return).
func (g *Group) targets(d Digest) []Peer {
	r := g.liveOnly(g.rank("blob/" + d.String()))
	return r[:min(g.replicas, len(r))]
}

// onPrimary runs fn on the first live home of id, falling over to the next
// home if a home cannot be reached.
func (g *Group) onPrimary(ctx context.Context, id string, fn func(Home) error) error {
	var errs []error
	for _, h := range g.liveFirst(g.Homes(id)) {
		err := fn(h)
		if err == nil {
			g.answered(h)
			return nil
		}
		var re *errRemote
		if errors.As(err, &re) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) || errors.Is(err, ErrTooLarge) || ctx.Err() != nil {
			return err
		}
		if _, local := h.(*Local); local {
			return err
		}
		g.failed(h.(Peer), err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("%s: %w", id, ErrUnavailable)
	}
	return fmt.Errorf("%s: %w: %w", id, ErrUnavailable, errors.Join(errs...))
}

// Volume returns volume id's newest head among its homes: those thought up
// first, the others only if none of those has it. It is ErrNotFound only if
// every home asked answered and none has it, since a committer drops the
// layers of volumes that are gone; ErrUnavailable if a home could not be
// asked.
func (g *Group) Volume(ctx context.Context, id string) (Volume, error) {
	best, answered, errs := g.newestHead(ctx, id, nil, false)
	switch {
	case best != nil:
		return *best, nil
	case len(errs) > 0 || !answered:
		return Volume{}, fmt.Errorf("volume %s: %w: %w", id, ErrUnavailable, errors.Join(errs...))
	}
	return Volume{}, fmt.Errorf("volume %s: %w", id, ErrNotFound)
}

// newestHead asks volume id's homes, but skip, for its head and returns the
// newest, whether any home answered and the errors of those that could not
// be asked. Homes thought down are asked within a second each, and only if
// those thought up have no head, unless all is set.
func (g *Group) newestHead(ctx context.Context, id string, skip Peer, all bool) (best *Volume, answered bool, errs []error) {
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
			if best == nil || newer(v, *best) {
				best = &v
			}
		case !errors.Is(err, ErrNotFound):
			g.failed(h, err)
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
func (g *Group) CreateVolume(ctx context.Context, spec VolumeSpec, source string) (Volume, error) {
	if source != "" {
		s, err := g.Snapshot(ctx, source)
		if err != nil {
			return Volume{}, err
		}
		spec.From = &s
	}
	var v Volume
	err := g.onPrimary(ctx, VolumeID(spec.Name), func(h Home) (err error) {
		v, err = h.CreateVolume(ctx, spec)
		return err
	})
	return v, err
}

// DeleteVolume deletes a volume at its primary home.
func (g *Group) DeleteVolume(ctx context.Context, id string) error {
	return g.onPrimary(ctx, id, func(h Home) error { return h.DeleteVolume(ctx, id) })
}

// ExpandVolume raises a volume's quota at its primary home.
func (g *Group) ExpandVolume(ctx context.Context, id string, quota int64) (Volume, error) {
	var v Volume
	err := g.onPrimary(ctx, id, func(h Home) (err error) {
		v, err = h.ExpandVolume(ctx, id, quota)
		return err
	})
	return v, err
}

// Commit applies c at volume id's primary home. Every blob it names must be
// at its owners already (see Push).
func (g *Group) Commit(ctx context.Context, id string, c *Commit) (CommitResult, error) {
	var res CommitResult
	err := g.onPrimary(ctx, id, func(h Home) (err error) {
		res, err = h.Commit(ctx, id, c)
		return err
	})
	return res, err
}

// replicate pushes a changed head's new tree objects to their owners and the
// head to the volume's other live homes; a home that cannot be reached
// catches up by anti-entropy when it is back.
func (g *Group) replicate(ctx context.Context, v Volume, trees []Digest) error {
	if err := g.PushAll(ctx, trees); err != nil {
		return err
	}
	for _, h := range g.liveOnly(g.Homes(v.ID)) {
		if h == Peer(g.local) {
			continue
		}
		if err := h.PutHead(ctx, v); err != nil {
			g.failed(h, err)
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
	best, _, errs := g.newestHead(ctx, id, g.local, true)
	if best != nil {
		if err := g.local.PutHead(ctx, *best); err != nil {
			klog.ErrorS(err, "Catch up with another home's head", "volume", id)
		}
	}
	return len(errs) == 0
}

// Volumes lists the group's live volumes, the newest head of each.
func (g *Group) Volumes(ctx context.Context) ([]Volume, error) {
	byID := map[string]Volume{}
	for _, m := range g.liveOnly(g.rank("")) {
		vs, err := m.Volumes(ctx)
		if err != nil {
			g.failed(m, err)
			continue
		}
		for _, v := range vs {
			if cur, ok := byID[v.ID]; !ok || newer(v, cur) {
				byID[v.ID] = v
			}
		}
	}
	var all []Volume
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
func (g *Group) Snapshot(ctx context.Context, id string) (Snapshot, error) {
	var (
		errs     []error
		answered bool
	)
	for _, h := range g.liveFirst(g.Homes(id)) {
		s, err := h.Snapshot(ctx, id)
		if err != nil && !errors.Is(err, ErrNotFound) {
			g.failed(h, err)
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
		return Snapshot{}, fmt.Errorf("snapshot %s: %w: %w", id, ErrUnavailable, errors.Join(errs...))
	}
	return Snapshot{}, fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
}

// CreateSnapshot pins volume volumeID's current generation as snapshot name,
// kept at the snapshot's homes; idempotent on name.
func (g *Group) CreateSnapshot(ctx context.Context, name, volumeID string) (Snapshot, error) {
	id := SnapshotID(name)
	if s, err := g.Snapshot(ctx, id); err == nil {
		if s.VolumeID != volumeID {
			return Snapshot{}, fmt.Errorf("snapshot %q: %w (of volume %s)", name, ErrExists, s.VolumeID)
		}
		return s, nil
	} else if !errors.Is(err, ErrNotFound) {
		return Snapshot{}, err
	}
	v, err := g.Volume(ctx, volumeID)
	if err != nil {
		return Snapshot{}, err
	}
	s := Snapshot{ID: id, Name: name, VolumeID: volumeID, Root: v.Root, Size: v.Size, Count: v.Count, Created: time.Now().UTC()}
	stored := 0
	var exists error
	// A home thought down catches up by anti-entropy once a home has it.
	g.inTurn(g.Homes(id), func() bool { return stored > 0 || exists != nil }, func(h Peer, _ bool) {
		if exists != nil {
			return
		}
		err := h.PutSnapshot(ctx, s)
		switch {
		case errors.Is(err, ErrExists):
			exists = err
		case err != nil:
			g.failed(h, err)
		default:
			g.answered(h)
			stored++
		}
	})
	if exists != nil {
		return Snapshot{}, exists
	}
	if stored == 0 {
		return Snapshot{}, fmt.Errorf("snapshot %q: %w", name, ErrUnavailable)
	}
	return s, nil
}

// DeleteSnapshot removes snapshot id from its homes.
func (g *Group) DeleteSnapshot(ctx context.Context, id string) error {
	for _, h := range g.liveOnly(g.Homes(id)) {
		if err := h.DeleteSnapshot(ctx, id); err != nil {
			g.failed(h, err)
			return err
		}
	}
	return nil
}

// Snapshots lists the snapshots of every live member, each once.
func (g *Group) Snapshots(ctx context.Context) ([]Snapshot, error) {
	seen := map[string]bool{}
	var all []Snapshot
	for _, m := range g.liveOnly(g.rank("")) {
		ss, err := m.Snapshots(ctx)
		if err != nil {
			g.failed(m, err)
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

// Sources returns where to fetch blob d from, best first: its live owners,
// then every other live member (one may hold a copy), excluding this one.
func (g *Group) Sources(d Digest) []Peer {
	var live, down []Peer
	for _, p := range g.rank("blob/" + d.String()) {
		switch {
		case p == Peer(g.local):
		case g.Live(p.Name()):
			live = append(live, p)
		default:
			down = append(down, p) // last resort: it may be back already
		}
	}
	return append(live, down...)
}

// Fetch makes sure blob d is in the local store, fetched from its sources.
func (g *Group) Fetch(ctx context.Context, d Digest) error {
	_, err := g.FetchFrom(ctx, d, g.Sources(d))
	return err
}

// FetchFrom stores blob d in the local store from the first of sources that
// has it, verifying what arrives: a copy that fails verification is discarded
// and the next source tried. It returns the member that served it.
func (g *Group) FetchFrom(ctx context.Context, d Digest, sources []Peer) (Peer, error) {
	st := g.local.Store()
	if st.Has(d) {
		return g.local, nil
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
			var (
				r   io.ReadCloser
				err error
			)
			if rp, ok := p.(*Remote); ok && !slices.Contains(g.Owners(d), p) {
				r, err = rp.FetchThrough(ctx, d) // a sharing peer may pull it through
			} else {
				r, err = p.Fetch(ctx, d)
			}
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
		if errors.Is(err, ErrCorrupt) {
			g.metrics.Corrupt.Inc()
			bad = append(bad, p)
			klog.ErrorS(err, "Discarded a blob that failed verification", "blob", d, "from", p.Name())
		} else {
			g.failed(p, err)
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return nil, fmt.Errorf("fetch blob %s: %w", d, errors.Join(errs...))
}

// repair has each member that served wrong bytes of blob d check its copy
// (dropping it if bad) and gives it the good one this member now holds.
func (g *Group) repair(ctx context.Context, d Digest, bad []Peer) {
	for _, p := range bad {
		r, ok := p.(*Remote)
		if !ok {
			continue
		}
		if err := r.Verify(ctx, d); err != nil && !errors.Is(err, ErrNotFound) {
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
func (g *Group) PushAll(ctx context.Context, ds []Digest) error {
	return parallel(ds, pushWorkers, func() struct{} { return struct{}{} },
		func(d Digest, _ struct{}) error { return g.Push(ctx, d) })
}

// Push sends blob d from the local store to those of its targets that are
// not this member. It fails if no copy other than the local one could be
// made while other members are live.
func (g *Group) Push(ctx context.Context, d Digest) error {
	err := g.push(ctx, d)
	if err != nil {
		// A target that could not be reached is marked down now, so the
		// next member in rendezvous order stands in for it.
		err = g.push(ctx, d)
	}
	return err
}

func (g *Group) push(ctx context.Context, d Digest) error {
	var errs []error
	for _, p := range g.targets(d) {
		if p == Peer(g.local) {
			continue
		}
		err := func() error {
			f, err := g.local.Store().Open(d)
			if err != nil {
				return err
			}
			defer f.Close()
			return p.Push(ctx, d, f)
		}()
		if err != nil {
			g.failed(p, err)
			errs = append(errs, fmt.Errorf("push blob %s to %s: %w", d, p.Name(), err))
		}
	}
	return errors.Join(errs...)
}
