package group

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

func TestSnapshotsAndClone(t *testing.T) {
	ctx := context.Background()
	s, err := cas.OpenStore(t.TempDir(), cas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := volume.Open(s, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	g := New(Config{Name: "g", Member: "m1", Home: l, Store: s, Replicas: 1})
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "src", Quota: 100})
	l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{treetest.File(t, s, "f", "v1", 1)}})
	snap, err := g.CreateSnapshot(ctx, "s1", v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := g.CreateSnapshot(ctx, "s1", v.ID); err != nil || again.ID != snap.ID {
		t.Fatalf("idempotent snapshot: %v %v", again, err)
	}
	l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{treetest.File(t, s, "f", "v2", 2)}})
	clone, err := g.CreateVolume(ctx, volume.Spec{Name: "clone", Quota: 100}, snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := treetest.Listing(t, s, clone.Root); got != "f=v1" {
		t.Fatalf("clone holds %q, want the snapshot's f=v1", got)
	}
	if _, err := g.CreateVolume(ctx, volume.Spec{Name: "clone", Quota: 200}, snap.ID); !errors.Is(err, volume.ErrExists) {
		t.Fatalf("same name, other quota: %v", err)
	}
}

// Blobs whose digests share a Short share a mark: one referenced keeps the
// other, and a blob stored after the listing is never taken for garbage.
func TestHeldKeepsBlobsSharingAShort(t *testing.T) {
	a, b, c, later := cas.Sum([]byte("a")), cas.Sum([]byte("b")), cas.Sum([]byte("c")), cas.Sum([]byte("later"))
	copy(b[:8], a[:8]) // b shares a's Short
	keys := []uint64{a.Short(), b.Short(), c.Short()}
	slices.Sort(keys)
	h := newHeld(keys)
	h.mark(b)
	for _, x := range []struct {
		d            cas.Digest
		live, listed bool
	}{{a, true, true}, {b, true, true}, {c, false, true}, {later, false, false}} {
		if live, listed := h.held(x.d); live != x.live || listed != x.listed {
			t.Errorf("held(%s) = %v, %v; want %v, %v", x.d, live, listed, x.live, x.listed)
		}
	}
}
