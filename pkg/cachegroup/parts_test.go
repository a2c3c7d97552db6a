package cachegroup

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// A commit of more ops than one part goes to its home as parts, blobs at
// their owners, in a request that does not grow with it, and lands whole:
// a reader of the head sees the volume before it or with all of it, and a
// node that stages the new head finds every file.
func TestALargeCommitGoesInPartsAndLandsWhole(t *testing.T) {
	var biggest atomic.Int64 // the largest commit request body
	peerWrap = func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/commit") {
				for n := r.ContentLength; n > biggest.Load(); {
					if biggest.CompareAndSwap(biggest.Load(), n) {
						break
					}
				}
			}
			h.ServeHTTP(w, r)
		})
	}
	ms := newGroup(t, 3)
	peerWrap = nil
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "large", Quota: 1 << 30}, "")
	if err != nil {
		t.Fatal(err)
	}
	// The committer is no home of the volume: the commit crosses the wire.
	_, _, c := roles(ms, ms[0].group.Homes(vol.ID))
	const files, perDir = tree.PartOps + 300, 64 // two parts
	dirs := (files + perDir - 1) / perDir
	content := func(i int) string { return fmt.Sprintf("file %d of the first build", i) }

	// A reader polls the head while the commit is applied.
	stop := make(chan struct{})
	var (
		wg   sync.WaitGroup
		seen = map[int64]bool{}
	)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if v, err := c.group.Volume(ctx, vol.ID); err == nil {
				seen[v.Count] = true
			}
		}
	})
	submit(t, c, vol, "/pods/large", func(upper string) {
		for i := range files {
			p := filepath.Join(upper, fmt.Sprintf("d%03d", i/perDir), fmt.Sprintf("f%05d", i))
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte(content(i)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err = c.node.WaitIdle(wctx)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if c.node.Stats.Commits.Load() != 1 {
		t.Fatalf("%d commits landed (failures %d), want 1", c.node.Stats.Commits.Load(), c.node.Stats.CommitFailures.Load())
	}
	head, err := ms[0].group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(files + dirs); head.Count != want {
		t.Fatalf("head holds %d entries, want %d", head.Count, want)
	}
	for n := range seen {
		if n != 0 && n != head.Count {
			t.Fatalf("a reader saw a head of %d entries: half of a commit of %d", n, head.Count)
		}
	}
	// Inline, the ops alone are some 250 bytes of JSON each.
	if b := biggest.Load(); b <= 0 || b > 64<<10 {
		t.Fatalf("the largest commit request was %d bytes; %d ops inline would be about %d", b, files+dirs, (files+dirs)*250)
	}
	// Every file reads back on a node that stages the head.
	other := ms[0]
	if other == c {
		other = ms[1]
	}
	dir, err := other.node.Materialize(ctx, head.Root, node.Want{VolumeID: vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	for i := range files {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("d%03d", i/perDir), fmt.Sprintf("f%05d", i)))
		if err != nil || string(b) != content(i) {
			t.Fatalf("file %d: %q, %v", i, b, err)
		}
	}
}
