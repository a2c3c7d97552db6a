package node

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
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
// copy). Each entry's keys are read when Keeps is called: 8 bytes a blob,
// not the manifest's parts, which a collection would otherwise decode whole
// every round.
func (n *Node) Keeps() func(cas.Digest) bool {
	var keys [][]uint64 // sorted, one list an entry
	ents, _ := os.ReadDir(filepath.Join(n.dir, "outbox"))
	for _, e := range ents {
		entry := filepath.Join(n.dir, "outbox", e.Name())
		if ks, err := n.readKeys(entry); err == nil {
			keys = append(keys, ks)
		}
	}
	return func(d cas.Digest) bool {
		k := short(d)
		for _, ks := range keys {
			if _, ok := slices.BinarySearch(ks, k); ok {
				return true
			}
		}
		return n.Pinned(d)
	}
}

// keysFile holds, in an outbox entry, the sorted shorts of the blobs its
// manifest names, little-endian.
const keysFile = "keys"

// writeKeys writes keys, sorted, as the keys of outbox entry.
func writeKeys(entry string, keys []uint64) error {
	slices.Sort(keys)
	b := make([]byte, 0, 8*len(keys))
	for _, k := range keys {
		b = binary.LittleEndian.AppendUint64(b, k)
	}
	return files.WriteAtomic(filepath.Join(entry, keysFile), b)
}

// readKeys returns the keys of outbox entry: none if it has no manifest
// yet (nothing moved into the store), and, for a manifest written before
// entries had keys, those its commit names, written down once.
func (n *Node) readKeys(entry string) ([]uint64, error) {
	b, err := os.ReadFile(filepath.Join(entry, keysFile))
	if errors.Is(err, fs.ErrNotExist) {
		return n.oldKeys(entry)
	}
	if err != nil {
		return nil, err
	}
	keys := make([]uint64, len(b)/8)
	for i := range keys {
		keys[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return keys, nil
}

// oldKeys reads the keys of outbox entry from its manifest and its parts.
func (n *Node) oldKeys(entry string) ([]uint64, error) {
	b, err := os.ReadFile(filepath.Join(entry, "manifest.json"))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	var keys []uint64
	keep := func(ops []tree.Op) {
		for _, op := range ops {
			if op.Entry.Type == tree.TypeFile {
				keys = append(keys, short(op.Entry.Digest))
			}
		}
	}
	keep(m.Commit.Ops)
	for _, p := range m.Commit.Parts {
		keys = append(keys, short(p.Digest))
		// A part gone from here names nothing this node must keep.
		if ops, err := tree.ReadPart(n.store, func(cas.Digest) error { return nil }, p); err == nil {
			keep(ops)
		}
	}
	return keys, writeKeys(entry, keys)
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
// it removed, and removes no copies once ctx ends.
func (n *Node) Evict(ctx context.Context, need int64, keeps func(cas.Digest) bool) (blobs int, bytes int64) {
	if err := n.Prune(); err == nil {
		n.sweepTrash()
	}
	type copy struct {
		d    cas.Digest
		used int64
		size int64
	}
	var cs []copy
	err := n.store.Each(ctx, func(d cas.Digest) {
		if n.group.IsOwner(d) || keeps(d) {
			return
		}
		var st unix.Stat_t
		if unix.Lstat(n.store.Path(d), &st) != nil || st.Nlink > 1 {
			return
		}
		cs = append(cs, copy{d, st.Ctim.Nano(), st.Size})
	})
	if err != nil {
		return 0, 0
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
