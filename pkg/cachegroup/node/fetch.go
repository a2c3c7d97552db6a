package node

import (
	"context"
	"slices"
	"sync"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// sourcing is where one hydration fetches from.
type sourcing struct {
	n       *Node
	holders *sharers // other nodes sharing the snapshot; nil for no-sharing
	private bool     // copies are for a no-sharing mount
}

// sharers is the list of the other nodes sharing a snapshot, which its
// hydration refreshes as it goes.
type sharers struct {
	mu    sync.Mutex
	peers []group.Peer
}

// get returns the list; none of a nil s.
func (s *sharers) get() []group.Peer {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers
}

func (s *sharers) set(peers []group.Peer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peers = peers
}

// fetch makes sure blob d (of size bytes, if known) is in the local store,
// fetching it alone along its sources.
func (s sourcing) fetch(ctx context.Context, d cas.Digest, size int64) error {
	from, err := s.n.fetch(ctx, d, size, s.sources(d))
	if err != nil {
		return err
	}
	s.fetched(d, size, from)
	return nil
}

// fetched counts blob d, of size bytes, as fetched from member from (nil: it
// was here after all) and keeps a no-sharing mount's copy private.
func (s sourcing) fetched(d cas.Digest, size int64, from group.Peer) {
	g := s.n.group
	label := "local"
	if from != nil {
		owners := g.Owners(d)
		label = "peer"
		if slices.Contains(owners, from) {
			label = "owner"
		}
		if s.private && !slices.Contains(owners, g.Self()) {
			s.n.markPrivate(d)
		}
	}
	g.Metrics().FetchBlobs.WithLabelValues(label).Inc()
	g.Metrics().FetchBytes.WithLabelValues(label).Add(float64(size))
}

// sources orders where blob d is fetched from. With other nodes sharing the
// snapshot, the sharers (this node included) are ranked by rendezvous on the
// blob: the first fetches it from the owners, and the others ask it, so a
// burst of nodes costs the owners about one copy of each blob instead of
// one per node. A node asks only a sharer that ranks above itself, which
// asks the owners or one ranking higher still: requests never go round in
// a circle. The owners follow as fallbacks.
func (s sourcing) sources(d cas.Digest) []group.Peer {
	g := s.n.group
	base := g.Sources(d)
	holders := s.holders.get()
	if len(holders) == 0 {
		return base
	}
	key := "blob/" + d.String()
	best, bestScore := g.Self(), group.Score(key, g.Self().Name(), 1)
	for _, p := range holders {
		if sc := group.Score(key, p.Name(), 1); sc > bestScore && g.Live(p.Name()) {
			best, bestScore = p, sc
		}
	}
	if best == g.Self() {
		return base // this node is the one the others ask: straight to the owners
	}
	return append([]group.Peer{best}, slices.DeleteFunc(base, func(p group.Peer) bool { return p == best })...)
}

// fetch makes sure blob d, of size bytes (0 if not known), is in the local
// store; concurrent misses of one blob on this node become one fetch. It
// returns the member that served it, nil if the blob was here or another
// fetch brought it.
func (n *Node) fetch(ctx context.Context, d cas.Digest, size int64, sources []group.Peer) (group.Peer, error) {
	for !n.store.Has(d) {
		c, mine := n.fetches.Claim(d)
		if !mine {
			c.Wait(ctx) // then look again: that fetch may have failed
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			continue
		}
		from, err := n.group.FetchLarge(ctx, d, size, sources)
		n.fetches.Done(d, c, err)
		return from, err
	}
	return nil, nil
}

// Offer reports whether this member may serve blob d to peers: every blob
// but the private node copies of no-sharing mounts.
func (n *Node) Offer(d cas.Digest) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, private := n.private.Get(d.Short())
	return !private
}

// Through fetches blob d from its owners for a peer that shares a snapshot
// with this node, if this node is hydrating a shared snapshot now. A fetch
// of d already under way here is joined: it goes to the owners, since the
// peer asked this node only because it ranks first among the sharers.
func (n *Node) Through(ctx context.Context, d cas.Digest) bool {
	if n.sharing.Load() == 0 {
		return false
	}
	var owners []group.Peer
	for _, p := range n.group.Owners(d) {
		if p != n.group.Self() {
			owners = append(owners, p)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, wire.ThroughTimeout)
	defer cancel()
	_, err := n.fetch(ctx, d, 0, owners)
	return err == nil
}

func (n *Node) markPrivate(d cas.Digest) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.private.Set(d.Short(), n.round)
}
