package group

import (
	"context"
	"errors"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/metrics"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
	"k8s.io/klog/v2"
)

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
	self       *self
	replicas   int
	weight     float64
	clientOnly bool
	metrics    *metrics.Set
	grace      time.Duration // how long a member may be down and keep its blobs

	mu      sync.RWMutex
	members []Member
	down    map[string]time.Time // members whose last contact failed, since when
	gone    map[string]bool      // of those, the ones down past the grace period
	alone   bool                 // this member is the whole group
	changed chan struct{}        // closed and replaced when membership changes

	gc *collector
}

// Config is what a group is made of on this member.
type Config struct {
	Name     string       // the group's name
	Member   string       // this member's name, its node name
	Home     *volume.Home // this member's home
	Store    *cas.Store   // this member's blob store
	Replicas int          // R, copies of every blob and head
	Metrics  *metrics.Set // new ones if nil
	// ClientOnly never counts this member as a member: it owns nothing and
	// is never a home, it only reads and commits.
	ClientOnly bool
	// Grace is how long a member may be down (unreachable, or missing from
	// the member source) and keep its place: its blobs are not copied to
	// stand-ins meanwhile, so a restart or a rollout moves no data. Reads and
	// commits fall back along the rendezvous order all the same. Zero: a
	// member counts as gone as soon as it is down.
	Grace time.Duration
}

// New returns the group c.Name holding just this member, with R copies of
// everything; SetMembers adds others. The member's home joins the group.
func New(c Config) *Group {
	if c.Metrics == nil {
		c.Metrics = metrics.New(c.Store)
	}
	g := &Group{name: c.Name, self: &self{Home: c.Home, name: c.Member, store: c.Store, sharers: newSharers()},
		replicas: max(c.Replicas, 1), weight: 1, metrics: c.Metrics, clientOnly: c.ClientOnly, grace: max(c.Grace, 0),
		down: map[string]time.Time{}, gone: map[string]bool{}, changed: make(chan struct{}), alone: !c.ClientOnly, gc: newCollector()}
	if !c.ClientOnly {
		g.members = []Member{{Peer: g.self, Weight: 1}}
	}
	c.Home.Join(homeHooks{g})
	c.Metrics.WatchMembers(g.memberStates, g.grace)
	return g
}

// Grace returns how long a member may be down and keep its place.
func (g *Group) Grace() time.Duration { return g.grace }

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Self returns this member as a peer of the group.
func (g *Group) Self() Peer { return g.self }

// Store returns this member's blob store.
func (g *Group) Store() *cas.Store { return g.self.store }

// Metrics returns the member's metrics.
func (g *Group) Metrics() *metrics.Set { return g.metrics }

// SetWeight sets this member's placement weight (its capacity share).
func (g *Group) SetWeight(w float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.weight = w
	for i := range g.members {
		if g.members[i].Peer == Peer(g.self) {
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
		has = has || m.Name() == g.self.name
	}
	if g.clientOnly {
		ms = slices.DeleteFunc(slices.Clone(ms), func(m Member) bool { return m.Name() == g.self.name })
	} else if !has {
		ms = append(ms, Member{Peer: g.self, Weight: 1})
	}
	for i := range ms {
		if ms[i].Name() == g.self.name {
			ms[i].Peer, ms[i].Weight = g.self, g.Weight()
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name() < ms[j].Name() })
	g.mu.Lock()
	listed := map[string]bool{}
	for _, m := range ms {
		listed[m.Name()] = true
	}
	for name := range g.down {
		if !listed[name] { // left the list: its liveness is forgotten with it
			delete(g.down, name)
			delete(g.gone, name)
		}
	}
	same := len(ms) == len(g.members)
	for i := 0; same && i < len(ms); i++ {
		same = ms[i].Name() == g.members[i].Name() && ms[i].Weight == g.members[i].Weight
	}
	g.members = ms
	g.alone = len(ms) == 1 && !g.clientOnly
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
	_, wasDown := g.down[name]
	was := !wasDown
	switch {
	case live:
		delete(g.down, name)
		delete(g.gone, name)
	case name != g.self.name && wasDown:
	case name != g.self.name:
		g.down[name] = time.Now()
		g.gone[name] = g.grace == 0
	}
	n := 0
	for _, m := range g.members {
		if _, d := g.down[m.Name()]; !d {
			n++
		}
	}
	if was != live && name != g.self.name {
		close(g.changed)
		g.changed = make(chan struct{})
	}
	g.mu.Unlock()
	g.metrics.MembersLive.Set(float64(n))
	if was != live {
		klog.InfoS("Member liveness changed", "member", name, "live", live)
	}
}

// ExpireGrace counts as gone the members down past the grace period, and
// wakes re-replication if it finds any: their blobs go to stand-ins now.
// Membership calls it on every refresh.
func (g *Group) ExpireGrace() {
	g.mu.Lock()
	var expired []string
	for name, since := range g.down {
		if !g.gone[name] && time.Since(since) >= g.grace {
			g.gone[name] = true
			expired = append(expired, name)
		}
	}
	if len(expired) > 0 {
		close(g.changed)
		g.changed = make(chan struct{})
	}
	g.mu.Unlock()
	for _, name := range expired {
		klog.InfoS("Member down past the grace period; its blobs are re-replicated", "member", name, "grace", g.grace)
	}
}

// Live reports whether member name is thought to be up.
func (g *Group) Live(name string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	_, down := g.down[name]
	return !down
}

// Gone reports whether member name has been down past the grace period.
func (g *Group) Gone(name string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.gone[name]
}

// memberStates is what the metrics and the admin status say of each member.
func (g *Group) memberStates() []metrics.MemberState {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := make([]metrics.MemberState, len(g.members))
	for i, m := range g.members {
		out[i] = metrics.MemberState{Name: m.Name(), Weight: m.Weight, Up: true}
		if since, down := g.down[m.Name()]; down {
			out[i].Up, out[i].DownFor, out[i].Gone = false, time.Since(since), g.gone[m.Name()]
		}
	}
	return out
}

// MemberStates returns each member's name, weight and liveness.
func (g *Group) MemberStates() []metrics.MemberState { return g.memberStates() }

// Failed marks p down if err says it could not be reached.
func (g *Group) Failed(p Peer, err error) {
	if err != nil && !wire.IsAnswer(err) && !errors.Is(err, context.Canceled) {
		g.SetLive(p.Name(), false)
	}
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
		if _, d := g.down[p.Name()]; d {
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
func (g *Group) Owners(d cas.Digest) []Peer {
	r := g.rank("blob/" + d.String())
	return r[:min(g.replicas, len(r))]
}

// IsOwner reports whether this member is one of blob d's owners.
func (g *Group) IsOwner(d cas.Digest) bool {
	return slices.ContainsFunc(g.Owners(d), func(p Peer) bool { return p == Peer(g.self) })
}

// targets returns the R live members that should take blob d now: its owners,
// or the next members in rendezvous order standing in for owners that are
// down (re-replication moves the copy back when they return). New blobs go
// there, so that a commit never waits for a member to come back.
func (g *Group) targets(d cas.Digest) []Peer {
	r := g.liveOnly(g.rank("blob/" + d.String()))
	return r[:min(g.replicas, len(r))]
}

// placed returns the R members that should keep blob d: its owners, or the
// next members in rendezvous order standing in for owners gone past the grace
// period. An owner down within it keeps its place: re-replication neither
// copies its blobs to stand-ins nor drops copies it would have to confirm.
func (g *Group) placed(d cas.Digest) []Peer {
	r := g.rank("blob/" + d.String())
	g.mu.RLock()
	r = slices.DeleteFunc(r, func(p Peer) bool { return g.gone[p.Name()] })
	g.mu.RUnlock()
	return r[:min(g.replicas, len(r))]
}
