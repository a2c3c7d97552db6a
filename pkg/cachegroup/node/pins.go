package node

import (
	"encoding/binary"
	"slices"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/shortmap"
)

// short is the first 64 bits of d: the key of the sets of blobs a node
// keeps (pins, outbox blobs), a quarter of a digest's size, since a commit
// may name a million. Two blobs may share one; all a false match does is
// keep a blob on this node a little longer.
func short(d cas.Digest) uint64 { return binary.BigEndian.Uint64(d[:8]) }

// pin keeps on this node the blobs whose shorts it holds, sorted, until it
// is dropped: see Pinned. A commit's pin holds what its scan has stored so
// far, then its outbox entry's keys.
type pin struct {
	n  *Node
	id int
}

// newPin returns an empty pin.
func (n *Node) newPin() pin {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pinSeq++
	n.pinned[n.pinSeq] = nil
	return pin{n, n.pinSeq}
}

// set makes keys, sorted, what p keeps: the list itself, not a copy.
func (p pin) set(keys []uint64) {
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	p.n.pinned[p.id] = keys
}

// add keeps the blobs of keys too, merging them into p's list in place
// (under the lock Pinned reads it with).
func (p pin) add(keys []uint64) {
	add := slices.Sorted(slices.Values(keys))
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	p.n.pinned[p.id] = shortmap.Merge(p.n.pinned[p.id], add, nil)
}

// drop lets go of what p keeps.
func (p pin) drop() {
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	delete(p.n.pinned, p.id)
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
