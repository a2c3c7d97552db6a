package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// BenchmarkCommit5000 commits a pod layer of 5,000 small files (1-5 KB in
// 100 directories) through the outbox, as the committer does after unpublish:
// a layer without a quota, whose files are renamed into the store.
func BenchmarkCommit5000(b *testing.B) { benchCommit(b, 0) }

// BenchmarkCommit5000Quota is BenchmarkCommit5000 for a layer with a quota,
// on its own disk, whose files are copied into the store.
func BenchmarkCommit5000Quota(b *testing.B) {
	needDisks(b)
	benchCommit(b, 1<<30)
}

func benchCommit(b *testing.B, quota int64) {
	n, l := newNode(b)
	// Neither images made ahead nor the trash of the last commit compete
	// with the commit measured.
	n.disks.setPerSize(0)
	b.Cleanup(n.sweepTrash)
	ctx := context.Background()
	v, err := l.CreateVolume(ctx, volume.Spec{Name: "bench", Quota: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 5000)
	b.StopTimer()
	for i := range b.N {
		target := fmt.Sprintf("/pods/%d", i)
		upper, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: target, Base: v.Root, Commit: true, Quota: quota})
		if err != nil {
			b.Fatal(err)
		}
		for f := range 5000 {
			p := filepath.Join(upper, fmt.Sprintf("g%03d/a%d/f%d.pom", f%100, i, f))
			os.MkdirAll(filepath.Dir(p), 0o755)
			copy(buf, fmt.Sprintf("%d-%d", i, f))
			if err := os.WriteFile(p, buf[:1000+f%4000], 0o644); err != nil {
				b.Fatal(err)
			}
		}
		if err := n.Submit(target); err != nil {
			b.Fatal(err)
		}
		entries, _ := os.ReadDir(filepath.Join(n.dir, "outbox"))
		b.StartTimer()
		if err := n.commitEntry(ctx, filepath.Join(n.dir, "outbox", entries[0].Name())); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		n.sweepTrash()
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

// BenchmarkNewLayerQuota measures what a layer with a quota adds to a pod's
// start, for the default quota of an inline volume, against a layer without
// one: with an image the pool made ahead (a rename, a loop device, a mount),
// and with an image made then (mkfs too).
func BenchmarkNewLayerQuota(b *testing.B) {
	needDisks(b)
	for _, mode := range []string{"no-quota", "made-ahead", "mkfs"} {
		b.Run(mode, func(b *testing.B) {
			n, l := newNode(b)
			b.Cleanup(n.sweepTrash)
			quota := int64(10 << 30)
			if mode == "no-quota" {
				quota = 0
			}
			if mode == "mkfs" {
				n.disks.setPerSize(0)
			}
			v, err := l.CreateVolume(context.Background(), volume.Spec{Name: "bench", Quota: 10 << 30})
			if err != nil {
				b.Fatal(err)
			}
			for i := range b.N {
				target := fmt.Sprintf("/pods/%d", i)
				if _, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: target, Base: v.Root, Quota: quota}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				n.Drop(target)
				n.disks.fillOnce() // not raced by the filler while timed
				b.StartTimer()
			}
		})
	}
}

// BenchmarkDropLayerQuota measures the end of a layer with a quota: unmount,
// detach and delete its disk (in the trash, off the unpublish path).
func BenchmarkDropLayerQuota(b *testing.B) {
	needDisks(b)
	n, l := newNode(b)
	b.Cleanup(n.sweepTrash)
	v, err := l.CreateVolume(context.Background(), volume.Spec{Name: "bench", Quota: 10 << 30})
	if err != nil {
		b.Fatal(err)
	}
	for i := range b.N {
		target := fmt.Sprintf("/pods/%d", i)
		b.StopTimer()
		if _, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: target, Base: v.Root, Quota: 10 << 30}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		n.Drop(target)
		n.sweepTrash()
	}
}

// BenchmarkNewLayerBurst makes the layers of 16 pods starting at once, with
// a disk made ahead for each, and reports the median and the slowest.
func BenchmarkNewLayerBurst(b *testing.B) {
	needDisks(b)
	const pods = 16
	n, l := newNode(b)
	b.Cleanup(n.sweepTrash)
	const quota = 10 << 30
	v, err := l.CreateVolume(context.Background(), volume.Spec{Name: "bench", Quota: quota})
	if err != nil {
		b.Fatal(err)
	}
	size, _ := diskSize(quota, 1<<40)
	n.disks.setPerSize(pods)
	var p50, worst time.Duration
	for i := range b.N {
		b.StopTimer()
		n.disks.ask(size, false)
		n.disks.fillOnce()
		b.StartTimer()
		ds := make([]time.Duration, pods)
		var wg sync.WaitGroup
		for p := range pods {
			wg.Go(func() {
				t0 := time.Now()
				if _, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: fmt.Sprintf("/pods/%d-%d", i, p), Base: v.Root, Quota: quota}); err != nil {
					b.Error(err)
				}
				ds[p] = time.Since(t0)
			})
		}
		wg.Wait()
		b.StopTimer()
		slices.Sort(ds)
		p50, worst = p50+ds[pods/2], worst+ds[pods-1]
		for p := range pods {
			n.Drop(fmt.Sprintf("/pods/%d-%d", i, p))
		}
		n.sweepTrash()
		b.StartTimer()
	}
	b.ReportMetric(float64(p50.Microseconds())/1000/float64(b.N), "p50-ms")
	b.ReportMetric(float64(worst.Microseconds())/1000/float64(b.N), "max-ms")
}
