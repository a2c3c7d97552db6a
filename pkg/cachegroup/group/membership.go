package group

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
	"k8s.io/klog/v2"
)

// Endpoint is where a member can be reached. Name is its identity when the
// source knows it (static lists, EndpointSlices); otherwise (DNS) the member
// says it in its health answer.
type Endpoint struct {
	Name string
	Addr string // host:port
}

// Source lists a group's members. Each group has exactly one.
type Source interface {
	Endpoints(ctx context.Context) ([]Endpoint, error)
}

// Static is a fixed member list.
type Static []Endpoint

// Endpoints returns the list.
func (s Static) Endpoints(context.Context) ([]Endpoint, error) { return s, nil }

// ParseStatic parses NAME=HOST:PORT items.
func ParseStatic(items []string) (Static, error) {
	var s Static
	for _, it := range items {
		name, addr, ok := strings.Cut(strings.TrimSpace(it), "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("member %q: want NAME=HOST:PORT", it)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("member %q: %w", it, err)
		}
		s = append(s, Endpoint{Name: name, Addr: addr})
	}
	return s, nil
}

// DNS lists the A/AAAA records of a name (a headless Service) at one port.
type DNS struct {
	Name string
	Port string
}

// Endpoints resolves the name.
func (d DNS) Endpoints(ctx context.Context) ([]Endpoint, error) {
	addrs, err := net.DefaultResolver.LookupHost(ctx, d.Name)
	if err != nil {
		return nil, fmt.Errorf("resolve members %s: %w", d.Name, err)
	}
	eps := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = Endpoint{Addr: net.JoinHostPort(a, d.Port)}
	}
	return eps, nil
}

// Membership keeps a group's member list in step with its source and checks
// the members' health, so that routing skips members that are down.
type Membership struct {
	group    *Group
	src      Source
	auth     *wire.Auth
	self     string
	interval time.Duration
	remotes  map[string]*wire.Client // by address
	// listed is every member the source listed lately, by name, with when:
	// one the source stops listing (a pod restarting leaves the ready
	// endpoints at once) stays a member, down, for the group's grace period.
	listed map[string]listing
}

// listing is a member as the source last listed it.
type listing struct {
	member Member
	at     time.Time
}

// NewMembership returns a membership that polls src every interval.
func NewMembership(g *Group, src Source, auth *wire.Auth, interval time.Duration) *Membership {
	return &Membership{group: g, src: src, auth: auth, self: g.self.name, interval: interval,
		remotes: map[string]*wire.Client{}, listed: map[string]listing{}}
}

// Run updates the group until ctx ends.
func (m *Membership) Run(ctx context.Context) {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		m.Refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh reads the source once and health-checks every member.
func (m *Membership) Refresh(ctx context.Context) {
	eps, err := m.src.Endpoints(ctx)
	if err != nil {
		klog.ErrorS(err, "List members; keeping the last list")
		return
	}
	var members []Member
	seen := map[string]bool{m.self: true}
	for _, ep := range eps {
		if ep.Name == m.self {
			continue
		}
		r := m.remotes[ep.Addr]
		if r == nil || (ep.Name != "" && r.Name() != ep.Name) {
			r = wire.NewClient(ep.Name, ep.Addr, m.self, m.auth)
			m.remotes[ep.Addr] = r
		}
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		h, err := r.Health(hctx)
		cancel()
		switch {
		case err == nil && h.Name != "" && ep.Name != "" && h.Name != ep.Name:
			klog.ErrorS(nil, "Member answers with another name; ignored", "address", ep.Addr, "listed", ep.Name, "answered", h.Name)
			continue
		case err == nil && h.Group != "" && h.Group != m.group.Name():
			klog.ErrorS(nil, "Member is of another group; ignored", "address", ep.Addr, "group", h.Group)
			continue
		case err == nil && h.Name == m.self:
			continue // our own address
		case err == nil:
			if h.Name != r.Name() { // a DNS endpoint says its name
				r = wire.NewClient(h.Name, ep.Addr, m.self, m.auth)
				m.remotes[ep.Addr] = r
			}
		case ep.Name == "" && r.Name() == "":
			continue // nameless and silent: nothing to place on it
		}
		if seen[r.Name()] {
			continue
		}
		seen[r.Name()] = true
		weight := 1.0
		if last, ok := m.listed[r.Name()]; ok && last.member.Peer == Peer(r) {
			weight = last.member.Weight // a silent member keeps the weight it said
		}
		if err == nil && h.Weight > 0 {
			weight = h.Weight
		}
		mb := Member{Peer: r, Weight: weight}
		members = append(members, mb)
		m.listed[r.Name()] = listing{member: mb, at: time.Now()}
		m.group.SetLive(r.Name(), err == nil)
	}
	// Members the source no longer lists keep their place, down, for the
	// grace period: placement does not change while one restarts.
	var kept []string
	for name, l := range m.listed {
		switch {
		case seen[name]:
		case time.Since(l.at) < m.group.Grace():
			members = append(members, l.member)
			kept = append(kept, name)
		default:
			delete(m.listed, name)
		}
	}
	m.group.SetMembers(members)
	for _, name := range kept {
		m.group.SetLive(name, false)
	}
	m.group.ExpireGrace()
}
