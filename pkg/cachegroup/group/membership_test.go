package group

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// source is a member source whose list the test changes.
type source struct{ eps []Endpoint }

func (s *source) Endpoints(context.Context) ([]Endpoint, error) { return s.eps, nil }

// nowhere returns an address nobody listens on.
func nowhere(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func newTestGroup(t *testing.T, grace time.Duration) *Group {
	s, err := cas.OpenStore(t.TempDir(), cas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := volume.Open(s, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{Name: "g", Member: "self", Home: h, Store: s, Replicas: 2, Grace: grace})
}

// A member the source stops listing (a pod restarting leaves the ready
// endpoints at once) keeps its place, down, within the grace period; without
// one it leaves at once.
func TestAMemberLeavingTheSourceKeepsItsPlaceWithinTheGracePeriod(t *testing.T) {
	for _, grace := range []time.Duration{time.Hour, 0} {
		t.Run(fmt.Sprint(grace), func(t *testing.T) {
			g := newTestGroup(t, grace)
			src := &source{eps: []Endpoint{{Name: "self", Addr: "127.0.0.1:1"}, {Name: "other", Addr: nowhere(t)}}}
			m := NewMembership(g, src, wire.NewSecretAuth([]byte("0123456789abcdef-group")), time.Second)
			m.Refresh(context.Background())
			src.eps = src.eps[:1]
			m.Refresh(context.Background())
			has := slices.ContainsFunc(g.Members(), func(mb Member) bool { return mb.Name() == "other" })
			if has != (grace > 0) {
				t.Fatalf("grace %v: the member the source dropped is a member: %v", grace, has)
			}
			if has && (g.Live("other") || g.Gone("other")) {
				t.Fatalf("within the grace period: live %v, gone %v; want down, not gone", g.Live("other"), g.Gone("other"))
			}
		})
	}
}

// Within the grace period a down owner keeps its blobs' placement (nothing
// is copied to a stand-in), while new blobs go to the live members in
// rendezvous order; past it, a stand-in takes its place.
func TestADownOwnerKeepsItsPlaceUntilGone(t *testing.T) {
	g := newTestGroup(t, time.Hour)
	ms := []Member{{Peer: g.self, Weight: 1}}
	for _, n := range []string{"m1", "m2", "m3"} {
		ms = append(ms, Member{Peer: namedPeer{name: n}, Weight: 1})
	}
	g.SetMembers(ms)
	// A blob that "self" does not own: both owners are others.
	var d cas.Digest
	for i := 0; ; i++ {
		d = cas.Sum([]byte(fmt.Sprint(i)))
		if !g.IsOwner(d) {
			break
		}
	}
	owners := g.Owners(d)
	down := owners[0].Name()
	g.SetLive(down, false)
	names := func(ps []Peer) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name())
		}
		return out
	}
	if got := names(g.placed(d)); !slices.Equal(got, names(owners)) {
		t.Fatalf("within the grace period blob placed at %v, want its owners %v", got, names(owners))
	}
	if got := names(g.targets(d)); slices.Contains(got, down) || len(got) != 2 {
		t.Fatalf("new copies go to %v, want two live members, not %s", got, down)
	}
	g.ExpireGrace() // not yet past an hour: nothing changes
	if g.Gone(down) {
		t.Fatal("gone within the grace period")
	}
	g.grace = 0
	g.ExpireGrace()
	if !g.Gone(down) || slices.Contains(names(g.placed(d)), down) {
		t.Fatalf("past the grace period: gone %v, placed at %v", g.Gone(down), names(g.placed(d)))
	}
	g.SetLive(down, true)
	if g.Gone(down) || !slices.Equal(names(g.placed(d)), names(owners)) {
		t.Fatal("back: the member does not take its place again")
	}
}
