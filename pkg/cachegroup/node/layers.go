package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/flight"
	"k8s.io/klog/v2"
)

// Layered snapshots: a node that has a volume's generation g (flat or as a
// stack) presents g+1 as a thin layer over it, holding only what changed.
// Layout below the node directory: layers/<root>/ (a thin layer: the changed
// entries as links into the store, deletes as whiteouts, replaced
// directories opaque), layers/<root>.json (its record: parent and root,
// written last, so a layer without one is half-built and never used),
// layers/.work-<root>/ (one being built), heads/<key> (the newest root
// presented for a volume: the base of its next layer).
const (
	// compactDepth is the stack depth at which the newest generation is
	// compacted into a flat snapshot in the background: a cold walk costs
	// about one lookup per layer for each directory a layer holds.
	compactDepth = 4
	// maxDepth bounds a stack: past it (compaction did not keep up) the
	// next generation's layer is built over the flat snapshot at the
	// bottom of the stack, holding the changes of all the layers between.
	maxDepth = 8
	// compactShare: the thin layers of a stack holding more than
	// 1/compactShare of the tree's entries are compacted too.
	compactShare = 4
	// compactMinEntries: below it a tree is compacted by depth only; its
	// layers are small whatever share of it they hold.
	compactMinEntries = 1024
	// maxLowerBytes bounds the lowerdir option, well inside the page that
	// mount(2) copies, leaving room for upperdir, workdir and the rest.
	maxLowerBytes = 2048
)

// layerState is what the node knows of its layered snapshots beyond the disk.
type layerState struct {
	builds flight.Group[cas.Digest] // thin layers being built
	// compactDepth, if set, replaces the package's (for tests).
	compactDepth int

	// mu is held by Prune over its whole pass and to take a hold, so a
	// snapshot a caller holds (or a pod's layer records) is never removed.
	mu    sync.Mutex
	holds map[cas.Digest]int // roots handed out and not yet recorded in a pod's layer
}

// layerMeta is the durable record of a thin layer.
type layerMeta struct {
	Root   cas.Digest `json:"root"`
	Parent cas.Digest `json:"parent"`
	// Depth counts the thin layers of the stack it was built in, this one
	// included (a compaction below makes its stack shallower since).
	Depth int `json:"depth"`
	// Changed counts the entries in this layer; Count those of the tree.
	Changed int64 `json:"changed"`
	Count   int64 `json:"count"`
	// Boot is the boot the layer was built in; one of another boot is
	// never used (its entries were not synced).
	Boot string `json:"boot"`
}

func (n *Node) layersDir() string                { return filepath.Join(n.dir, "layers") }
func (n *Node) layerPath(root cas.Digest) string { return filepath.Join(n.layersDir(), root.String()) }
func (n *Node) layerMetaPath(root cas.Digest) string {
	return filepath.Join(n.layersDir(), root.String()+".json")
}
func (n *Node) headPath(vol string) string { return filepath.Join(n.dir, "heads", layerKey(vol)) }

// Stack presents the tree at root on this node as overlay lower layers,
// newest first: a flat snapshot, or thin layers over one. When the node has
// an earlier generation of want's volume, only the difference is built.
// The snapshots returned are kept (Prune leaves them) until release is
// called, which the caller does once a pod's layer records root as its base
// or the mount failed. Like Materialize, a build goes on if ctx ends first.
func (n *Node) Stack(ctx context.Context, root cas.Digest, want Want) (lowers []string, release func(), err error) {
	release = n.hold(root)
	lowers, err = n.stack(ctx, root, want)
	if err != nil {
		release()
		return nil, nil, err
	}
	return lowers, release, nil
}

func (n *Node) stack(ctx context.Context, root cas.Digest, want Want) ([]string, error) {
	if st, ok := n.resolve(root); ok {
		n.presented(root, st, want)
		return st.lowers, nil
	}
	if base := n.head(want.VolumeID); !base.IsZero() && base != root {
		releaseBase := n.hold(base) // and the whole stack below it
		bs, ok := n.resolve(base)
		if ok && (bs.depth >= maxDepth || lowerBytes(bs.lowers)+len(n.layerPath(root))+1 > maxLowerBytes) {
			// Too deep: over the flat snapshot at the bottom instead.
			base, bs = bs.bottom, stackInfo{lowers: bs.lowers[len(bs.lowers)-1:], bottom: bs.bottom}
		}
		if ok {
			c, mine := n.lay.builds.Claim(root)
			if mine {
				n.running.Go(func() {
					err := n.roomy(func() error { return n.buildLayer(root, base, bs, want) })
					releaseBase()
					n.lay.builds.Done(root, c, err)
				})
			} else {
				releaseBase()
			}
			err := c.Wait(ctx)
			if err == nil {
				if st, ok := n.resolve(root); ok {
					n.presented(root, st, want)
					return st.lowers, nil
				}
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			klog.ErrorS(err, "Build thin layer; materialising a flat snapshot instead", "root", root, "base", base)
		} else {
			releaseBase()
		}
	}
	dir, err := n.Materialize(ctx, root, want)
	if err != nil {
		return nil, err
	}
	n.presented(root, stackInfo{lowers: []string{dir}, bottom: root}, want)
	return []string{dir}, nil
}

// lowerBytes is the length of lowers joined as an overlay lowerdir option.
func lowerBytes(lowers []string) int {
	b := 0
	for _, l := range lowers {
		b += len(l) + 1
	}
	return b
}

// presented records root as the newest of want's volume here and, when its
// stack is deep or its thin layers large, compacts it in the background.
func (n *Node) presented(root cas.Digest, st stackInfo, want Want) {
	if want.VolumeID != "" && n.head(want.VolumeID) != root {
		if err := os.MkdirAll(filepath.Join(n.dir, "heads"), 0o700); err == nil {
			// Not synced: a head lost in a crash costs the next pod a
			// bigger layer or a flat snapshot, nothing more.
			if err := writeRenamed(n.headPath(want.VolumeID), []byte(root.String())); err != nil {
				klog.ErrorS(err, "Record the newest snapshot", "volume", want.VolumeID)
			}
		}
	}
	depth := compactDepth
	if n.lay.compactDepth > 0 {
		depth = n.lay.compactDepth
	}
	if st.depth >= depth || st.depth > 0 && st.count >= compactMinEntries && st.changed*compactShare > st.count {
		n.compact(root, want)
	}
}

// compact materialises a flat snapshot of root in the background; new pods
// use it once it is there, and the thin layers nothing uses any more are
// pruned. The snapshots under live mounts are not touched.
func (n *Node) compact(root cas.Digest, want Want) {
	if _, err := os.Lstat(n.snapPath(root)); err == nil {
		return
	}
	for _, k := range n.hydrations.Keys() {
		if k == root {
			return // already being compacted
		}
	}
	release := n.hold(root)
	n.running.Go(func() {
		defer release()
		if _, err := n.Materialize(context.Background(), root, want); err != nil {
			klog.ErrorS(err, "Compact snapshot", "root", root)
			return
		}
		release()
		release = func() {}
		if err := n.Prune(n.heads()...); err != nil {
			klog.ErrorS(err, "Prune after compaction", "root", root)
		}
	})
}

// head returns the newest root presented for volume vol here, or zero.
func (n *Node) head(vol string) cas.Digest {
	var d cas.Digest
	if vol == "" {
		return d
	}
	b, err := os.ReadFile(n.headPath(vol))
	if err != nil || d.UnmarshalText(b) != nil {
		return cas.Digest{}
	}
	return d
}

// heads returns the newest root presented for every volume here.
func (n *Node) heads() []cas.Digest {
	ents, _ := os.ReadDir(filepath.Join(n.dir, "heads"))
	var ds []cas.Digest
	for _, e := range ents {
		var d cas.Digest
		if b, err := os.ReadFile(filepath.Join(n.dir, "heads", e.Name())); err == nil && d.UnmarshalText(b) == nil {
			ds = append(ds, d)
		}
	}
	return ds
}

// stackInfo is the stack that presents a root here.
type stackInfo struct {
	lowers []string   // newest first
	depth  int        // thin layers
	bottom cas.Digest // the root of the flat snapshot at the bottom
	// changed counts the entries of the thin layers, count the tree's.
	changed, count int64
}

// resolve returns the stack that presents root, preferring a flat snapshot
// and then the chain of thin layers down to the newest flat snapshot below
// (which a compaction may have made since the layers were built); ok is
// false if root has no complete stack here.
func (n *Node) resolve(root cas.Digest) (st stackInfo, ok bool) {
	if _, err := os.Lstat(n.snapPath(root)); err == nil {
		return stackInfo{lowers: []string{n.snapPath(root)}, bottom: root}, true
	}
	chain, ok := n.chain(root)
	if !ok {
		return st, false
	}
	for _, m := range chain {
		st.lowers = append(st.lowers, n.layerPath(m.Root))
		st.changed += m.Changed
	}
	st.depth, st.count, st.bottom = len(chain), chain[0].Count, chain[len(chain)-1].Parent
	st.lowers = append(st.lowers, n.snapPath(st.bottom))
	return st, true
}

// chain returns the records of root's thin layers, newest first, down to
// the flat snapshot its oldest stands on; ok is false unless every layer is
// complete and that snapshot is here.
func (n *Node) chain(root cas.Digest) ([]layerMeta, bool) {
	var chain []layerMeta
	for d := root; len(chain) <= maxDepth; {
		m, ok := n.readLayerMeta(d)
		if !ok {
			return nil, false
		}
		chain = append(chain, m)
		if _, err := os.Lstat(n.snapPath(m.Parent)); err == nil {
			return chain, true
		}
		d = m.Parent
	}
	return nil, false
}

// readLayerMeta reads the record of root's thin layer; ok is false if the
// layer is missing, half-built or its record unreadable.
func (n *Node) readLayerMeta(root cas.Digest) (layerMeta, bool) {
	var m layerMeta
	b, err := os.ReadFile(n.layerMetaPath(root))
	if err != nil || json.Unmarshal(b, &m) != nil || m.Root != root || m.Boot != bootID() {
		return m, false
	}
	if fi, err := os.Lstat(n.layerPath(root)); err != nil || !fi.IsDir() {
		return m, false
	}
	return m, true
}

// hold keeps the snapshots of root from Prune until the returned function
// is called.
func (n *Node) hold(root cas.Digest) func() {
	n.lay.mu.Lock()
	defer n.lay.mu.Unlock()
	if n.lay.holds == nil {
		n.lay.holds = map[cas.Digest]int{}
	}
	n.lay.holds[root]++
	var once sync.Once
	return func() {
		once.Do(func() {
			n.lay.mu.Lock()
			defer n.lay.mu.Unlock()
			if n.lay.holds[root]--; n.lay.holds[root] <= 0 {
				delete(n.lay.holds, root)
			}
		})
	}
}

// inUse returns the names (below snaps/ and layers/) of every snapshot
// that may be under a mount or about to be: for each root pods read or a
// caller holds, its flat snapshot and its whole chain of thin layers (a pod
// mounted before a compaction stays on the chain); for each root in keep,
// the stack a new pod would get. Called with n.lay.mu held.
func (n *Node) inUse(live []cas.Digest, keep []cas.Digest) (snaps, layers map[string]bool) {
	snaps, layers = map[string]bool{}, map[string]bool{}
	add := func(root cas.Digest, all bool) {
		if _, err := os.Lstat(n.snapPath(root)); err == nil {
			snaps[root.String()] = true
			if !all {
				return
			}
		}
		// Also a chain whose flat base is gone: its layers stay while used.
		for d, i := root, 0; i <= maxDepth; i++ {
			m, ok := n.readLayerMeta(d)
			if !ok {
				return
			}
			layers[d.String()] = true
			snaps[m.Parent.String()] = true
			d = m.Parent
		}
	}
	for d := range n.lay.holds {
		live = append(live, d)
	}
	// The newest snapshot of each volume staged here: the base of its next
	// thin layer.
	for _, id := range n.Staged() {
		if d := n.head(id); !d.IsZero() {
			keep = append(keep, d)
		}
	}
	for _, d := range live {
		add(d, true)
	}
	for _, d := range keep {
		add(d, false)
	}
	return snaps, layers
}

// pruneLayers removes the thin layers not in use, the half-built ones and
// the work directories of builds that ended. Called with n.lay.mu held.
func (n *Node) pruneLayers(used map[string]bool) error {
	ents, err := os.ReadDir(n.layersDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	building := map[string]bool{}
	for _, d := range n.lay.builds.Keys() {
		building[d.String()] = true
	}
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp"):
			os.Remove(filepath.Join(n.layersDir(), name))
		case strings.HasSuffix(name, ".json"):
			root := strings.TrimSuffix(name, ".json")
			if !used[root] && !building[root] {
				// The record goes first: a layer without one is never used.
				if err := os.Remove(filepath.Join(n.layersDir(), name)); err != nil {
					return fmt.Errorf("prune layer %s: %w", root, err)
				}
				n.discard(filepath.Join(n.layersDir(), root))
			}
		default:
			// A work directory, or a layer without its record: half-built.
			root, _ := strings.CutPrefix(name, ".work-")
			if building[root] {
				continue
			}
			if _, err := os.Lstat(filepath.Join(n.layersDir(), root+".json")); err != nil || root != name {
				n.discard(filepath.Join(n.layersDir(), name))
			}
		}
	}
	return nil
}

// writeRenamed writes b to path through a temporary file and a rename, so a
// reader sees the old content or the new, without syncing.
func writeRenamed(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
