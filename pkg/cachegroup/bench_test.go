package cachegroup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
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
		target := fmt.Sprintf("/pods/%d", i)
		upper, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: target, Base: v.Root, Commit: true})
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
	}
	b.ReportMetric(5000*float64(b.N)/b.Elapsed().Seconds(), "files/s")
}
