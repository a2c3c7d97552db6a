package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// A hydration that fails leaves its work directory; Prune removes it, but
// never the work directory of a hydration in progress.
func TestPruneRemovesWorkDirectoriesOfFailedHydrations(t *testing.T) {
	n, l := newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "v"})
	missing := cas.Sum([]byte("a tree that is nowhere in the group"))
	if _, err := n.Materialize(ctx, missing, Want{VolumeID: v.ID}); err == nil {
		t.Fatal("materialised a tree the group does not have")
	}
	failed := filepath.Join(n.dir, "snaps", ".work-"+missing.String())
	if _, err := os.Lstat(failed); err != nil {
		t.Fatalf("the failed hydration left no work directory (%v): the test proves nothing", err)
	}
	// A hydration in progress, as Materialize claims it.
	busy := cas.Sum([]byte("a tree being hydrated"))
	c, mine := n.hydrations.Claim(busy)
	if !mine {
		t.Fatal("claim")
	}
	defer n.hydrations.Done(busy, c, nil)
	inProgress := filepath.Join(n.dir, "snaps", ".work-"+busy.String())
	must(t, os.MkdirAll(filepath.Join(inProgress, "d"), 0o755))

	if err := n.Prune(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(failed); !os.IsNotExist(err) {
		t.Fatalf("work directory of a failed hydration kept (%v)", err)
	}
	if _, err := os.Lstat(filepath.Join(inProgress, "d")); err != nil {
		t.Fatalf("work directory of a hydration in progress removed: %v", err)
	}
}

// The marks of private copies last only as long as the copies: a node that
// fetched many blobs for no-sharing mounts over months keeps marks only for
// the blobs it still holds.
func TestPruneForgetsThePrivateMarksOfBlobsGone(t *testing.T) {
	n, _ := newNode(t)
	kept, err := n.store.PutBytes([]byte("still here"))
	must(t, err)
	gone := cas.Sum([]byte("dropped by re-replication"))
	n.markPrivate(kept)
	n.markPrivate(gone)
	must(t, n.Prune())
	if n.Offer(kept) {
		t.Fatal("a private copy still on the node lost its mark")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.private.Get(gone.Short()); ok || n.private.Len() != 1 {
		t.Fatalf("%d marks kept, the one of a blob the node no longer has among them", n.private.Len())
	}
}
