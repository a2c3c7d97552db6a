package cachegroup

import (
	"fmt"
	"slices"
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
