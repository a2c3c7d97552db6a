package cachegroup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/internal/gentree"
)

// BenchmarkCommit5000 commits a pod layer of 5,000 small files (1-5 KB in
// 100 directories) through the outbox, as the committer does after unpublish.
func BenchmarkCommit5000(b *testing.B) {
	n, l := newNode(b)
	ctx := context.Background()
	v, err := l.CreateVolume(ctx, VolumeSpec{Name: "bench", Quota: 1 << 40})
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

// BenchmarkHydrate stages, on a fresh client-only node, a Maven-like tree of
// 10,000 files (250 MB plus one 512 MiB file) held by a group of three
// members on loopback: the cold hydration of issue 3, in one process so
// that a CPU profile shows both the serving and the hydrating side.
func BenchmarkHydrate(b *testing.B) {
	ms := newGroup(b, 3)
	ctx := context.Background()
	a := ms[0]
	vol, err := a.group.CreateVolume(ctx, VolumeSpec{Name: "bench", Quota: 1 << 40}, "")
	if err != nil {
		b.Fatal(err)
	}
	spec := gentree.Spec{Seed: 7, Files: 10000, Dirs: 1750, TotalBytes: 250 << 20, MaxJarBytes: 8 << 20, BigFileBytes: 512 << 20}
	var st gentree.Stats
	layerWith(b, a.node, vol, "/pods/import", func(upper string) {
		if st, err = gentree.Generate(upper, spec); err != nil {
			b.Fatal(err)
		}
	})
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := a.node.WaitIdle(wctx); err != nil {
		b.Fatal(err)
	}
	head, err := a.group.Volume(ctx, vol.ID)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		c := newClient(b, ms)
		b.StartTimer()
		if _, err := c.Snapshot(ctx, head.Root, Want{VolumeID: vol.ID}); err != nil {
			b.Fatal(err)
		}
	}
	secs := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(st.Files)/secs, "files/s")
	b.ReportMetric(float64(st.Bytes)/1e6/secs, "MB/s")
}
