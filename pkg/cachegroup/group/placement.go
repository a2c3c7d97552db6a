package group

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"
)

// namedPeer is a placement-only member: a name and nothing to call.
type namedPeer struct {
	Peer
	name string
}

func (p namedPeer) Name() string { return p.name }

// MovedFraction simulates placement on a group of n equal members with R
// copies of each of blobs blobs, adds one member, and returns the fraction of
// copies whose owner changed, next to the ideal 1/(n+1): with rendezvous
// hashing only the copies the newcomer wins move.
func MovedFraction(n, r, blobs int) (moved, ideal float64) {
	ms := make([]Member, n+1)
	for i := range ms {
		ms[i] = Member{Peer: namedPeer{name: fmt.Sprintf("member-%03d", i)}, Weight: 1}
	}
	count := 0
	for b := range blobs {
		key := fmt.Sprintf("blob/%08d", b)
		before := rank(key, ms[:n])[:r]
		after := rank(key, ms)[:r]
		for _, p := range after {
			if !slices.ContainsFunc(before, func(q Peer) bool { return q.Name() == p.Name() }) {
				count++
			}
		}
	}
	return float64(count) / float64(r*blobs), 1 / float64(n+1)
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
