package volume

import (
	"context"
	"errors"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
)

func newHome(t *testing.T) *Home {
	t.Helper()
	s, err := cas.OpenStore(t.TempDir(), cas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := Open(s, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestCommitUpsertDeleteReplace(t *testing.T) {
	ctx := context.Background()
	l := newHome(t)
	s := l.store
	v, err := l.CreateVolume(ctx, Spec{Name: "v", Quota: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c1 := &tree.Commit{Ops: []tree.Op{treetest.Dir("a"), treetest.File(t, s, "a/x", "one", 1), treetest.Dir("b"), treetest.File(t, s, "b/y", "two", 2),
		{Kind: tree.OpUpsert, Path: "l", Entry: tree.Entry{Type: tree.TypeSymlink, Mode: 0o777, Target: "/etc/passwd", Size: 11}}}}
	r, err := l.Commit(ctx, v.ID, c1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := treetest.Listing(t, s, r.Volume.Root), "a/ a/x=one b/ b/y=two l->/etc/passwd"; got != want {
		t.Fatalf("after c1: %q, want %q", got, want)
	}
	if r.Volume.Size != 6 || r.Volume.Count != 5 || r.Volume.Generation != 2 {
		t.Fatalf("totals: size %d count %d gen %d", r.Volume.Size, r.Volume.Count, r.Volume.Generation)
	}
	// A second writer from the same base: deletes a, replaces b, adds c/z
	// below a directory that no op creates.
	c2 := &tree.Commit{Base: v.Root, Ops: []tree.Op{{Kind: tree.OpDelete, Path: "a"},
		{Kind: tree.OpReplace, Path: "b", Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o700}}, treetest.File(t, s, "b/new", "n", 3),
		treetest.File(t, s, "c/z", "zz", 4), {Kind: tree.OpDelete, Path: "missing/deep"}}}
	r, err = l.Commit(ctx, v.ID, c2)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := treetest.Listing(t, s, r.Volume.Root), "b/ b/new=n c/ c/z=zz l->/etc/passwd"; got != want {
		t.Fatalf("after c2: %q, want %q", got, want)
	}
	if r.Volume.Size != 3 || r.Volume.Count != 5 {
		t.Fatalf("totals after c2: size %d count %d", r.Volume.Size, r.Volume.Count)
	}
	// The head survives a restart of the member.
	l2, err := Open(s, l.Dir())
	if err != nil {
		t.Fatal(err)
	}
	v2, err := l2.Volume(ctx, v.ID)
	if err != nil || v2.Root != r.Volume.Root {
		t.Fatalf("after reopen: %v %v", v2.Root, err)
	}
}

func TestCommitQuota(t *testing.T) {
	ctx := context.Background()
	l := newHome(t)
	s := l.store
	v, _ := l.CreateVolume(ctx, Spec{Name: "q", Quota: 10})
	if _, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{treetest.File(t, s, "old", "1234", 1), treetest.File(t, s, "mid", "5678", 2)}}); err != nil {
		t.Fatal(err)
	}
	// 4 more bytes make 12 > 10: of the two written together and never
	// read, the one with the oldest mtime goes.
	r, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{treetest.File(t, s, "new", "abcd", 3)}})
	if err != nil {
		t.Fatal(err)
	}
	if got := treetest.Listing(t, s, r.Volume.Root); got != "mid=5678 new=abcd" || r.Evicted != 1 {
		t.Fatalf("after eviction: %q (evicted %d)", got, r.Evicted)
	}
	// One commit larger than the quota is refused and changes nothing.
	_, err = l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{treetest.File(t, s, "huge", "0123456789A", 4)}})
	if !errors.Is(err, tree.ErrTooLarge) {
		t.Fatalf("huge commit: %v, want tree.ErrTooLarge", err)
	}
	if cur, _ := l.Volume(ctx, v.ID); cur.Root != r.Volume.Root {
		t.Fatal("refused commit changed the head")
	}
}

func TestCommitRejectsBadPaths(t *testing.T) {
	ctx := context.Background()
	l := newHome(t)
	v, _ := l.CreateVolume(ctx, Spec{Name: "p"})
	for _, p := range []string{"../escape", "a/../../b", "/abs", "a//b", "nul\x00"} {
		op := treetest.File(t, l.store, "ok", "x", 1)
		op.Path = p
		if _, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{op}}); err == nil {
			t.Errorf("path %q: committed", p)
		}
	}
	// A commit naming a blob that is not in the store is refused.
	op := treetest.File(t, l.store, "ok", "x", 1)
	op.Entry.Digest = cas.Sum([]byte("absent"))
	if _, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{op}}); !errors.Is(err, ErrMissingBlob) {
		t.Errorf("missing blob: %v", err)
	}
	// So is one that says a blob has another size than it has.
	op = treetest.File(t, l.store, "ok", "x", 1)
	op.Entry.Size = 1 << 30
	if _, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{op}}); !errors.Is(err, tree.ErrInvalid) {
		t.Errorf("wrong size: %v", err)
	}
}
