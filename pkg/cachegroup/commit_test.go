package cachegroup

import (
	"bytes"
	"context"
	"errors"
	"sort"
	"strings"
	"testing"
)

func newLocal(t *testing.T) *Local {
	t.Helper()
	s, err := OpenStore(t.TempDir(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLocal("m1", s, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// file returns an upsert of a file with content c, storing the blob.
func file(t *testing.T, s *Store, path, c string, mtime int64) Op {
	t.Helper()
	d, err := s.PutBytes([]byte(c))
	if err != nil {
		t.Fatal(err)
	}
	return Op{Kind: OpUpsert, Path: path, Entry: Entry{Type: TypeFile, Mode: 0o644, Mtime: mtime, Size: int64(len(c)), Digest: d}}
}

func dir(path string) Op {
	return Op{Kind: OpUpsert, Path: path, Entry: Entry{Type: TypeDir, Mode: 0o755}}
}

// listing returns "path=content" for every file, "path/" for directories
// and "path->target" for symlinks of the tree at root.
func listing(t *testing.T, s *Store, root Digest) string {
	t.Helper()
	var out []string
	var walk func(d Digest, prefix string)
	walk = func(d Digest, prefix string) {
		tr, err := loadTree(s, d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range tr.Entries {
			p := prefix + e.Name
			switch e.Type {
			case TypeDir:
				out = append(out, p+"/")
				walk(e.Digest, p+"/")
			case TypeSymlink:
				out = append(out, p+"->"+e.Target)
			default:
				b, err := s.ReadAll(e.Digest)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, p+"="+string(b))
			}
		}
	}
	walk(root, "")
	sort.Strings(out)
	return strings.Join(out, " ")
}

func TestCommitUpsertDeleteReplace(t *testing.T) {
	ctx := context.Background()
	l := newLocal(t)
	s := l.Store()
	v, err := l.CreateVolume(ctx, VolumeSpec{Name: "v", Quota: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c1 := &Commit{Ops: []Op{dir("a"), file(t, s, "a/x", "one", 1), dir("b"), file(t, s, "b/y", "two", 2),
		{Kind: OpUpsert, Path: "l", Entry: Entry{Type: TypeSymlink, Mode: 0o777, Target: "/etc/passwd", Size: 11}}}}
	r, err := l.Commit(ctx, v.ID, c1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := listing(t, s, r.Volume.Root), "a/ a/x=one b/ b/y=two l->/etc/passwd"; got != want {
		t.Fatalf("after c1: %q, want %q", got, want)
	}
	if r.Volume.Size != 6 || r.Volume.Count != 5 || r.Volume.Generation != 2 {
		t.Fatalf("totals: size %d count %d gen %d", r.Volume.Size, r.Volume.Count, r.Volume.Generation)
	}
	// A second writer from the same base: deletes a, replaces b, adds c/z
	// below a directory that no op creates.
	c2 := &Commit{Base: v.Root, Ops: []Op{{Kind: OpDelete, Path: "a"},
		{Kind: OpReplace, Path: "b", Entry: Entry{Type: TypeDir, Mode: 0o700}}, file(t, s, "b/new", "n", 3),
		file(t, s, "c/z", "zz", 4), {Kind: OpDelete, Path: "missing/deep"}}}
	r, err = l.Commit(ctx, v.ID, c2)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := listing(t, s, r.Volume.Root), "b/ b/new=n c/ c/z=zz l->/etc/passwd"; got != want {
		t.Fatalf("after c2: %q, want %q", got, want)
	}
	if r.Volume.Size != 3 || r.Volume.Count != 5 {
		t.Fatalf("totals after c2: size %d count %d", r.Volume.Size, r.Volume.Count)
	}
	// The head survives a restart of the member.
	l2, err := OpenLocal("m1", s, l.dir)
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
	l := newLocal(t)
	s := l.Store()
	v, _ := l.CreateVolume(ctx, VolumeSpec{Name: "q", Quota: 10})
	if _, err := l.Commit(ctx, v.ID, &Commit{Ops: []Op{file(t, s, "old", "1234", 1), file(t, s, "mid", "5678", 2)}}); err != nil {
		t.Fatal(err)
	}
	// 4 more bytes make 12 > 10: the oldest file goes.
	r, err := l.Commit(ctx, v.ID, &Commit{Ops: []Op{file(t, s, "new", "abcd", 3)}})
	if err != nil {
		t.Fatal(err)
	}
	if got := listing(t, s, r.Volume.Root); got != "mid=5678 new=abcd" || r.Evicted != 1 {
		t.Fatalf("after eviction: %q (evicted %d)", got, r.Evicted)
	}
	// One commit larger than the quota is refused and changes nothing.
	_, err = l.Commit(ctx, v.ID, &Commit{Ops: []Op{file(t, s, "huge", "0123456789A", 4)}})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("huge commit: %v, want ErrTooLarge", err)
	}
	if cur, _ := l.Volume(ctx, v.ID); cur.Root != r.Volume.Root {
		t.Fatal("refused commit changed the head")
	}
}

func TestCommitRejectsBadPaths(t *testing.T) {
	ctx := context.Background()
	l := newLocal(t)
	v, _ := l.CreateVolume(ctx, VolumeSpec{Name: "p"})
	for _, p := range []string{"../escape", "a/../../b", "/abs", "a//b", "nul\x00"} {
		op := file(t, l.Store(), "ok", "x", 1)
		op.Path = p
		if _, err := l.Commit(ctx, v.ID, &Commit{Ops: []Op{op}}); err == nil {
			t.Errorf("path %q: committed", p)
		}
	}
	// A commit naming a blob that is not in the store is refused.
	op := file(t, l.Store(), "ok", "x", 1)
	op.Entry.Digest = Sum([]byte("absent"))
	if _, err := l.Commit(ctx, v.ID, &Commit{Ops: []Op{op}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v", err)
	}
}

func TestSnapshotsAndClone(t *testing.T) {
	ctx := context.Background()
	l := newLocal(t)
	g := NewGroup("g", l, 1, nil, false)
	s := l.Store()
	v, _ := l.CreateVolume(ctx, VolumeSpec{Name: "src", Quota: 100})
	l.Commit(ctx, v.ID, &Commit{Ops: []Op{file(t, s, "f", "v1", 1)}})
	snap, err := g.CreateSnapshot(ctx, "s1", v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := g.CreateSnapshot(ctx, "s1", v.ID); err != nil || again.ID != snap.ID {
		t.Fatalf("idempotent snapshot: %v %v", again, err)
	}
	l.Commit(ctx, v.ID, &Commit{Ops: []Op{file(t, s, "f", "v2", 2)}})
	clone, err := g.CreateVolume(ctx, VolumeSpec{Name: "clone", Quota: 100}, snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := listing(t, s, clone.Root); got != "f=v1" {
		t.Fatalf("clone holds %q, want the snapshot's f=v1", got)
	}
	if _, err := g.CreateVolume(ctx, VolumeSpec{Name: "clone", Quota: 200}, snap.ID); !errors.Is(err, ErrExists) {
		t.Fatalf("same name, other quota: %v", err)
	}
}

func TestStoreVerifies(t *testing.T) {
	s, err := OpenStore(t.TempDir(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	good := []byte("content")
	if _, err := s.Put(bytes.NewReader([]byte("wrong")), Sum(good)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Put of wrong bytes: %v", err)
	}
	if s.Has(Sum(good)) {
		t.Fatal("wrong bytes were stored")
	}
	d, err := s.Put(bytes.NewReader(good), Sum(good))
	if err != nil || d != Sum(good) {
		t.Fatal(err)
	}
	// Bytes flipped on disk are caught before use and the blob dropped.
	if err := writeFileAtomic(s.Path(d), []byte("CONTENT")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAll(d); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadAll of flipped blob: %v", err)
	}
	if s.Has(d) {
		t.Fatal("corrupt blob kept")
	}
	small, _ := OpenStore(t.TempDir(), Limits{CacheSize: 4})
	if _, err := small.PutBytes([]byte("12345")); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("over cache size: %v", err)
	}
}
