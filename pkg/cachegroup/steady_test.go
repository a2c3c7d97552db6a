package cachegroup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// Builds one after the other on a member whose cache holds little more than
// one volume, each replacing the last build's output: garbage is collected
// as the store fills, so every commit lands and the store stays within its
// size.
func TestBuildsOnASmallCacheAllLand(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for ownership of materialised files")
	}
	const cacheSize, files, fileSize = 64 << 20, 30, 1 << 20
	m, err := Open(Config{NodeID: "solo", Dir: t.TempDir(), CacheSize: cacheSize})
	if err != nil {
		t.Fatal(err)
	}
	m.window = 100 * time.Millisecond // blobs just written are left this long under pressure
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	t.Cleanup(func() {
		cancel()
		m.Close()
	})
	solo := &member{Member: m, name: "solo"}
	vol, err := m.group.CreateVolume(ctx, volume.Spec{Name: "builds", Quota: 48 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	for build := range 10 {
		commitOver(t, solo, vol, func(upper string) {
			if build > 0 {
				whiteout(t, upper, fmt.Sprintf("out%d", build-1))
			}
			dir := filepath.Join(upper, fmt.Sprintf("out%d", build))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for i := range files {
				b := make([]byte, fileSize) // of its own content: no two files share a blob
				copy(b, fmt.Sprintf("build %d, file %d", build, i))
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
		if used := m.store.Used() + m.store.Charged(); used > cacheSize {
			t.Fatalf("after build %d the store holds %d bytes, more than its size %d", build, used, cacheSize)
		}
	}
	for _, reason := range []string{"no-space", "outbox-full"} {
		if n := counterValue(t, m.metrics, "cachegroup_dropped_commits_total", reason); n != 0 {
			t.Fatalf("%v commits dropped for %s", n, reason)
		}
	}
	if n := counterValue(t, m.metrics, "cachegroup_collected_blobs_total"); n < files {
		t.Fatalf("%v blobs collected, want at least a build's", n)
	}
}
