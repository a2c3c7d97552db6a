package cachegroup

import (
	"context"
	"fmt"
	"slices"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/metrics"
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
// and hydrating). Node copies of no-sharing mounts are never served. Each
// answer counts as a hit or a miss of its tier.
func (m *Member) MayServe(ctx context.Context, d cas.Digest, through bool) (string, error) {
	if m.group.IsOwner(d) {
		m.lookup("owner", m.store.Has(d))
		return "owner", nil
	}
	if m.node == nil {
		return "peer", nil
	}
	if !m.store.Has(d) && through && m.node.Through(ctx, d) {
		m.lookup("peer", false)
		return "peer", nil // fetched through from the owners for a node that shares with us
	}
	if !m.node.Offer(d) {
		return "peer", fmt.Errorf("blob %s: %w", d, wire.ErrNotOffered)
	}
	m.lookup("peer", true)
	return "peer", nil
}

// lookup counts a blob request answered as tier.
func (m *Member) lookup(tier string, hit bool) {
	result := "miss"
	if hit {
		result = "hit"
	}
	m.metrics.Lookups.WithLabelValues(tier, result).Inc()
}

// AddHolder records that member shares snapshot root.
func (m *Member) AddHolder(root cas.Digest, member string) { m.group.AddHolder(root, member) }

// Holders lists the members known to share snapshot root.
func (m *Member) Holders(root cas.Digest) []string { return m.group.Holders(root) }

// Admin answers an operator's tool (see admin.go); a client-only process
// serves no peers, so none.
func (m *Member) Admin() wire.Admin { return m.admin }

// homeVolumes is what the metrics export of the volumes this member is a
// home of.
func (m *Member) homeVolumes() []metrics.VolumeState {
	vs, err := m.home.Volumes(m.ctx)
	if err != nil {
		return nil
	}
	var out []metrics.VolumeState
	for _, v := range vs {
		if v.Deleted || !slices.ContainsFunc(m.group.Homes(v.ID), func(p group.Peer) bool { return p.Name() == m.cfg.NodeID }) {
			continue
		}
		out = append(out, metrics.VolumeState{ID: v.ID, Name: v.Name, Generation: v.Generation, Bytes: v.Size,
			Files: v.Count, Quota: v.Quota, Updated: v.Updated})
	}
	return out
}
