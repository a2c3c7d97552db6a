package node

import (
	"encoding/binary"
	"slices"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// short is the first 64 bits of d: the key of the sets of blobs a node
// keeps (pins, outbox blobs), a quarter of a digest's size, since a commit
// may name a million. Two blobs may share one; all a false match does is
// keep a blob on this node a little longer.
func short(d cas.Digest) uint64 { return binary.BigEndian.Uint64(d[:8]) }

// pin keeps on this node, until the returned unpin is called, the blobs
// whose shorts are keys, sorted (an outbox entry's keys): see Pinned. The
// list is the commit's own, held while it runs, not a copy in a set.
func (n *Node) pin(keys []uint64) (unpin func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pinSeq++
	id := n.pinSeq
	n.pinned[id] = keys
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.pinned, id)
	}
}

// Pinned reports whether blob d belongs to a commit this node is making;
// re-replication keeps such a blob here even where placement says it may go,
// because the commit pushes it from here and, until the commit is applied,
// this copy may be the only one.
func (n *Node) Pinned(d cas.Digest) bool {
	k := short(d)
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, keys := range n.pinned {
		if _, ok := slices.BinarySearch(keys, k); ok {
			return true
		}
	}
	return false
}
