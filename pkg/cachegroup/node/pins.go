package node

import (
	"encoding/binary"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// short is the first 64 bits of d: the key of the sets of blobs a node
// keeps (pins, outbox blobs), a quarter of a digest's size, since a commit
// may name a million. Two blobs may share one; all a false match does is
// keep a blob on this node a little longer.
func short(d cas.Digest) uint64 { return binary.BigEndian.Uint64(d[:8]) }

// pin keeps blobs ds on this node until unpin is given what it returns:
// see Pinned.
func (n *Node) pin(ds []cas.Digest) []uint64 {
	keys := make([]uint64, len(ds))
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, d := range ds {
		keys[i] = short(d)
		n.pinned[keys[i]]++
	}
	return keys
}

func (n *Node) unpin(keys []uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range keys {
		if n.pinned[k]--; n.pinned[k] <= 0 {
			delete(n.pinned, k)
		}
	}
}

// Pinned reports whether blob d belongs to a commit this node is making;
// re-replication keeps such a blob here even where placement says it may go,
// because the commit pushes it from here and, until the commit is applied,
// this copy may be the only one.
func (n *Node) Pinned(d cas.Digest) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pinned[short(d)] > 0
}
