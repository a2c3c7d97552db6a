package node

import (
	"context"
	"fmt"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// A thin layer whose change spans many chunks (directories compared, new
// directories filled whole, deletes, directories whose metadata alone
// changed) presents the new tree exactly, metadata included.
func TestThinLayerOfManyChunksIsExact(t *testing.T) {
	n, l := newNode(t)
	ctx := context.Background()
	v, err := l.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 30})
	must(t, err)
	i := 0
	meta := func(e tree.Entry) tree.Entry {
		i++
		e.UID, e.GID, e.Mtime = uint32(1000*(i%3)), uint32(i%2), 1717243200000000000+int64(i)*1e9+int64(i)
		return e
	}
	dir := func(p string, mode uint32) tree.Op {
		return tree.Op{Kind: tree.OpUpsert, Path: p, Entry: meta(tree.Entry{Type: tree.TypeDir, Mode: mode})}
	}
	file := func(p, c string) tree.Op {
		d, err := n.store.PutBytes([]byte(c))
		must(t, err)
		return tree.Op{Kind: tree.OpUpsert, Path: p, Entry: meta(tree.Entry{Type: tree.TypeFile, Mode: []uint32{0o644, 0o755, 0o600}[i%3], Size: int64(len(c)), Digest: d})}
	}
	var base, change []tree.Op
	for g := range 40 {
		for a := range 40 {
			d := fmt.Sprintf("g%02d/a%02d", g, a)
			base = append(base, dir(d, 0o755), file(d+"/f0", d), file(d+"/f1", "shared"), file(d+"/gone", d+" gone"))
			switch a % 4 {
			case 0, 1: // a file changes, one goes, one comes
				change = append(change, file(d+"/f0", d+" changed"), del(d+"/gone"), file(d+"/new", d+" new"))
			case 2: // only the directory's metadata
				change = append(change, dir(d, 0o700))
			}
		}
	}
	for g := range 30 {
		for a := range 40 {
			d := fmt.Sprintf("new/g%02d/a%02d", g, a)
			change = append(change, dir(d, 0o750), file(d+"/f", d))
		}
	}
	root1 := commitOps(t, l, v.ID, base...)
	stackOf(t, n, v.ID, root1)
	root2 := commitOps(t, l, v.ID, change...)
	lowers := stackOf(t, n, v.ID, root2)
	defer n.running.Wait()
	if len(lowers) != 2 {
		t.Fatalf("presented as %d layers, want a thin layer over the first generation", len(lowers))
	}
	treetest.Same(t, n.store, root2, mountRO(t, lowers))
}
