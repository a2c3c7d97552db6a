package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

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
