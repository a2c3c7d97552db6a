package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// BenchmarkCommit5000 commits a pod layer of 5,000 small files (1-5 KB in
// 100 directories) through the outbox, as the committer does after unpublish.
func BenchmarkCommit5000(b *testing.B) {
	n, l := newNode(b)
	ctx := context.Background()
	v, err := l.CreateVolume(ctx, volume.Spec{Name: "bench", Quota: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 5000)
	b.StopTimer()
	for i := range b.N {
		layerWith(b, n, v, fmt.Sprintf("/pods/%d", i), func(upper string) {
			for f := range 5000 {
				p := filepath.Join(upper, fmt.Sprintf("g%03d/a%d/f%d.pom", f%100, i, f))
				os.MkdirAll(filepath.Dir(p), 0o755)
				copy(buf, fmt.Sprintf("%d-%d", i, f))
				if err := os.WriteFile(p, buf[:1000+f%4000], 0o644); err != nil {
					b.Fatal(err)
				}
			}
		})
		entries, _ := os.ReadDir(filepath.Join(n.dir, "outbox"))
		b.StartTimer()
		if err := n.commitEntry(ctx, filepath.Join(n.dir, "outbox", entries[0].Name())); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
	}
	b.ReportMetric(5000*float64(b.N)/b.Elapsed().Seconds(), "files/s")
}

// BenchmarkThinLayer presents, on a node that has the previous generation,
// a generation that changed 1% of a tree of 20,000 files in 2,500
// directories: one thin layer of the change.
func BenchmarkThinLayer(b *testing.B) {
	n, l := newNode(b)
	n.lay.compactDepth = 1 << 30
	ctx := context.Background()
	v, err := l.CreateVolume(ctx, volume.Spec{Name: "bench", Quota: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	const files, perDir = 20000, 8
	var ops []tree.Op
	for f := range files {
		ops = append(ops, treetest.File(b, n.store, fmt.Sprintf("g%02d/a%03d/v%d/f%d", f/perDir%50, f/perDir/50, f/perDir, f), fmt.Sprint(f), 1))
	}
	r, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: ops})
	if err != nil {
		b.Fatal(err)
	}
	if _, release, err := n.Stack(ctx, r.Volume.Root, Want{VolumeID: v.ID}); err != nil {
		b.Fatal(err)
	} else {
		release()
	}
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		var change []tree.Op
		for k := range files / 100 {
			op := ops[(k*100+i*7)%files]
			change = append(change, treetest.File(b, n.store, op.Path, fmt.Sprintf("gen %d", i), 2))
		}
		r, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: change})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		_, release, err := n.Stack(ctx, r.Volume.Root, Want{VolumeID: v.ID})
		if err != nil {
			b.Fatal(err)
		}
		release()
	}
}
