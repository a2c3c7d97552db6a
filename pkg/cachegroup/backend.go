package cachegroup

import (
	"context"
	"fmt"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// The member is the peer server's backend: what it says of itself and what
// of its store it may serve.
var _ wire.Backend = (*Member)(nil)

// Health is what the member says of itself to its peers.
func (m *Member) Health() wire.Health {
	h := wire.Health{Name: m.cfg.NodeID, Group: m.group.Name(), Weight: m.group.Weight()}
	if !m.cfg.ClientOnly {
		h.Capacity = m.store.Capacity()
	}
	return h
}

// MayServe says whether this member may serve blob d, and as what: as its
// owner, or as a sharing peer (pulling it through from the owners if asked
// and hydrating). Node copies of no-sharing mounts are never served.
func (m *Member) MayServe(ctx context.Context, d cas.Digest, through bool) (string, error) {
	if m.group.IsOwner(d) {
		return "owner", nil
	}
	if m.node == nil {
		return "peer", nil
	}
	if !m.store.Has(d) && through && m.node.Through(ctx, d) {
		return "peer", nil // fetched through from the owners for a node that shares with us
	}
	if !m.node.Offer(d) {
		return "peer", fmt.Errorf("blob %s: %w", d, wire.ErrNotOffered)
	}
	return "peer", nil
}

// AddHolder records that member shares snapshot root.
func (m *Member) AddHolder(root cas.Digest, member string) { m.group.AddHolder(root, member) }

// Holders lists the members known to share snapshot root.
func (m *Member) Holders(root cas.Digest) []string { return m.group.Holders(root) }
