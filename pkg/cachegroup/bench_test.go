package cachegroup

import (
	"context"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/internal/gentree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// BenchmarkHydrate stages, on a fresh client-only node, a Maven-like tree of
// 10,000 files (250 MB plus one 512 MiB file) held by a group of three
// members on loopback: the cold hydration of issue 3, in one process so
// that a CPU profile shows both the serving and the hydrating side.
func BenchmarkHydrate(b *testing.B) {
	ms := newGroup(b, 3)
	ctx := context.Background()
	a := ms[0]
	vol, err := a.group.CreateVolume(ctx, volume.Spec{Name: "bench", Quota: 1 << 40}, "")
	if err != nil {
		b.Fatal(err)
	}
	spec := gentree.Spec{Seed: 7, Files: 10000, Dirs: 1750, TotalBytes: 250 << 20, MaxJarBytes: 8 << 20, BigFileBytes: 512 << 20}
	var st gentree.Stats
	head := land(b, a, vol, func(upper string) {
		if st, err = gentree.Generate(upper, spec); err != nil {
			b.Fatal(err)
		}
	}, 10*time.Minute)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		c := newClient(b, ms)
		b.StartTimer()
		if _, err := c.node.Materialize(ctx, head.Root, node.Want{VolumeID: vol.ID}); err != nil {
			b.Fatal(err)
		}
	}
	secs := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(st.Files)/secs, "files/s")
	b.ReportMetric(float64(st.Bytes)/1e6/secs, "MB/s")
}
