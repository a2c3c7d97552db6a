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
)

// Member is a peer with its placement weight (its capacity share).
type Member struct {
	Peer
	Weight float64
}

// Group is a named set of members. It picks, by weighted rendezvous hashing,
// the R homes of each volume and the R owners of each blob, and routes every
// operation to them. A group of one member routes everything to that member.
type Group struct {
	name     string
	local    *Local
	members  []Member
	replicas int
}

// NewGroup returns the group called name whose members are members; local is
// this process's own member (it may also be in members) and replicas is R.
func NewGroup(name string, local *Local, members []Member, replicas int) *Group {
	if len(members) == 0 {
		members = []Member{{Peer: local, Weight: 1}}
	}
	return &Group{name: name, local: local, members: members, replicas: max(replicas, 1)}
}

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Local returns this process's member.
func (g *Group) Local() *Local { return g.local }

// Members returns the group's members.
func (g *Group) Members() []Member { return slices.Clone(g.members) }

// rank returns the members in rendezvous order for key: each member scores
// -weight/ln(u), u a uniform hash of (key, member name); highest first. A
// member joining or leaving moves only the keys it wins or held.
func (g *Group) rank(key string) []Peer {
	type scored struct {
		p Peer
		s float64
	}
	ss := make([]scored, len(g.members))
	for i, m := range g.members {
		h := sha256.Sum256([]byte(key + "\x00" + m.Name()))
		u := (float64(binary.BigEndian.Uint64(h[:8])>>11) + 0.5) / (1 << 53)
		w := m.Weight
		if w <= 0 {
			w = 1
		}
		ss[i] = scored{m.Peer, -w / math.Log(u)}
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].s > ss[j].s })
	out := make([]Peer, len(ss))
	for i, s := range ss {
		out[i] = s.p
	}
	return out
}

// Homes returns the R members that keep volume id's head, primary first.
func (g *Group) Homes(id string) []Peer {
	r := g.rank("volume/" + id)
	return r[:min(g.replicas, len(r))]
}

// Home returns the primary home of volume or snapshot id.
func (g *Group) Home(id string) Home { return g.Homes(id)[0] }

// Owners returns the members that hold blob d in rendezvous order: the R
// owners first, then the rest as fallbacks.
func (g *Group) Owners(d Digest) []Peer { return g.rank("blob/" + d.String()) }

// Volumes lists the volumes of every member, each once.
func (g *Group) Volumes(ctx context.Context) ([]Volume, error) {
	seen := map[string]bool{}
	var all []Volume
	for _, m := range g.members {
		vs, err := m.Volumes(ctx)
		if err != nil {
			return nil, fmt.Errorf("list volumes of %s: %w", m.Name(), err)
		}
		for _, v := range vs {
			if !seen[v.ID] {
				seen[v.ID] = true
				all = append(all, v)
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	return all, nil
}

// Snapshots lists the snapshots of every member, each once.
func (g *Group) Snapshots(ctx context.Context) ([]Snapshot, error) {
	seen := map[string]bool{}
	var all []Snapshot
	for _, m := range g.members {
		ss, err := m.Snapshots(ctx)
		if err != nil {
			return nil, fmt.Errorf("list snapshots of %s: %w", m.Name(), err)
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

// Fetch stores blob d in the local store from the first member that has it,
// verifying what arrives; a copy that fails verification is discarded and the
// next source tried.
func (g *Group) Fetch(ctx context.Context, d Digest) error {
	st := g.local.Store()
	if st.Has(d) {
		return nil
	}
	var errs []error
	for _, p := range g.Owners(d) {
		if p == Peer(g.local) {
			continue
		}
		err := func() error {
			r, err := p.Fetch(ctx, d)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = st.Put(r, d)
			return err
		}()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", p.Name(), err))
	}
	if len(errs) == 0 {
		return fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return fmt.Errorf("fetch blob %s: %w", d, errors.Join(errs...))
}

// Push sends blob d from the local store to those of its R owners that are
// not this member.
func (g *Group) Push(ctx context.Context, d Digest) error {
	owners := g.Owners(d)
	for _, p := range owners[:min(g.replicas, len(owners))] {
		if p == Peer(g.local) {
			continue
		}
		err := func() error {
			f, err := g.local.Store().Open(d)
			if err != nil {
				return err
			}
			defer f.Close()
			return p.Push(ctx, d, io.Reader(f))
		}()
		if err != nil {
			return fmt.Errorf("push blob %s to %s: %w", d, p.Name(), err)
		}
	}
	return nil
}
