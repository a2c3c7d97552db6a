package node

import (
	"cmp"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"golang.org/x/sys/unix"
)

// evictWindow is how long a copy just fetched is left by eviction: a
// hydration links what it fetched within it.
const evictWindow = 30 * time.Second

// Roots returns the roots of the snapshots on this node, flat or thin
// layers, and the newest root presented for each volume: live roots for
// garbage collection, since a new generation is built as the difference
// from the one a node has, which needs its tree.
func (n *Node) Roots() []cas.Digest {
	roots := n.heads()
	for _, dir := range []string{filepath.Join(n.dir, "snaps"), n.layersDir()} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") || !e.IsDir() {
				continue // being built, or a layer's record
			}
			if d, err := cas.ParseDigest(e.Name()); err == nil {
				roots = append(roots, d)
			}
		}
	}
	return roots
}

// Keeps returns whether this node needs blob d kept: a commit in progress
// holds it, or an outbox entry's manifest names it (moved into the store by
// an attempt that failed, and, until its commit is applied, perhaps its only
// copy). The manifests are read when Keeps is called.
func (n *Node) Keeps() func(cas.Digest) bool {
	names := map[uint64]bool{} // by short: a million files of an entry fit
	ents, _ := os.ReadDir(filepath.Join(n.dir, "outbox"))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(n.dir, "outbox", e.Name(), "manifest.json"))
		if err != nil {
			continue // no manifest: nothing moved into the store yet
		}
		var m manifest
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		keep := func(ops []tree.Op) {
			for _, op := range ops {
				if op.Entry.Type == tree.TypeFile {
					names[short(op.Entry.Digest)] = true
				}
			}
		}
		keep(m.Commit.Ops)
		for _, p := range m.Commit.Parts {
			names[short(p.Digest)] = true
			// A part gone from here names nothing this node must keep.
			if ops, err := tree.ReadPart(n.store, func(cas.Digest) error { return nil }, p); err == nil {
				keep(ops)
			}
		}
	}
	return func(d cas.Digest) bool { return names[short(d)] || n.Pinned(d) }
}

// roomy runs build (a hydration or a thin layer, both resumable) and, if it
// found the store full, has Room make room and runs it once more: a node
// that fills as it builds a snapshot makes room for it as a write refused
// at commit does, instead of failing the pod's start.
func (n *Node) roomy(build func() error) error {
	err := build()
	if errors.Is(err, cas.ErrNoSpace) && n.Room != nil && n.Room() {
		err = build()
	}
	return err
}

// Evict makes room on this node's disk, need bytes if it can: it removes
// the snapshots no mounted pod reads (staged volumes rebuild theirs at the
// next pod start), then the node's copies of blobs this member does not
// own and no snapshot links, least recently used first. A copy was last
// used when the last snapshot linking it went, which is its inode's change
// time (access times say nothing: reads through an overlay never set them).
// keeps says which blobs this node needs kept (see Keeps), read once by the
// caller for the collection and the eviction of one round. It returns what
// it removed.
func (n *Node) Evict(need int64, keeps func(cas.Digest) bool) (blobs int, bytes int64) {
	if err := n.Prune(); err == nil {
		n.sweepTrash()
	}
	type copy struct {
		d    cas.Digest
		used int64
		size int64
	}
	all, err := n.store.All()
	if err != nil {
		return 0, 0
	}
	var cs []copy
	for _, d := range all {
		if n.group.IsOwner(d) || keeps(d) {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(n.store.Path(d), &st) != nil || st.Nlink > 1 {
			continue
		}
		cs = append(cs, copy{d, st.Ctim.Nano(), st.Size})
	}
	slices.SortFunc(cs, func(a, b copy) int { return cmp.Compare(a.used, b.used) })
	for _, c := range cs {
		if bytes >= need {
			break
		}
		if n.store.Evict(c.d, evictWindow) {
			blobs++
			bytes += c.size
		}
	}
	m := n.group.Metrics()
	m.EvictedBlobs.Add(float64(blobs))
	m.EvictedBytes.Add(float64(bytes))
	return blobs, bytes
}
