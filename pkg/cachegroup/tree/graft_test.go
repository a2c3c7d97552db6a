package tree_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
)

func openStore(t *testing.T) *cas.Store {
	t.Helper()
	s, err := cas.OpenStore(filepath.Join(t.TempDir(), "store"), cas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutBytes(tree.Empty()); err != nil {
		t.Fatal(err)
	}
	return s
}

// loads is a load function that records what it was asked for.
type loads map[cas.Digest]bool

func (l loads) load(d cas.Digest) error {
	l[d] = true
	return nil
}

// apply applies ops on top of root and checks the result's totals.
func apply(t *testing.T, s *cas.Store, root cas.Digest, quota int64, ops ...tree.Op) tree.Applied {
	t.Helper()
	res, err := tree.Apply(s, loads{}.load, root, &tree.Commit{Base: root, Ops: ops}, quota, nil)
	if err != nil {
		t.Fatal(err)
	}
	size, count := checkTotals(t, s, res.Root)
	if size != res.Size || count != res.Count {
		t.Fatalf("Apply says %d bytes in %d entries, the tree holds %d in %d", res.Size, res.Count, size, count)
	}
	return res
}

// checkTotals recomputes the totals of the tree at d from its files and
// fails if any directory entry below says otherwise.
func checkTotals(t *testing.T, s *cas.Store, d cas.Digest) (size, count int64) {
	t.Helper()
	tr, err := tree.Load(s, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tr.Entries {
		count++
		switch e.Type {
		case tree.TypeFile:
			size += e.Size
		case tree.TypeDir:
			ss, sc := checkTotals(t, s, e.Digest)
			if ss != e.Size || sc != e.Count {
				t.Fatalf("directory %q says %d bytes in %d entries, holds %d in %d", e.Name, e.Size, e.Count, ss, sc)
			}
			size, count = size+ss, count+sc
		}
	}
	return size, count
}

// dirAt returns the entry of the directory at p in the tree at root.
func dirAt(t *testing.T, s *cas.Store, root cas.Digest, p string) tree.Entry {
	t.Helper()
	parts, err := tree.SplitPath(p)
	if err != nil {
		t.Fatal(err)
	}
	d := root
	var e tree.Entry
	for _, name := range parts {
		tr, err := tree.Load(s, d)
		if err != nil {
			t.Fatal(err)
		}
		i := tr.Find(name)
		if i < 0 || tr.Entries[i].Type != tree.TypeDir {
			t.Fatalf("no directory %s in %s", p, root)
		}
		e = tr.Entries[i]
		d = e.Digest
	}
	return e
}

// graft returns a graft of the directory at from in the tree at base to p.
func graft(t *testing.T, s *cas.Store, base cas.Digest, from, p string) tree.Op {
	t.Helper()
	return tree.Op{Kind: tree.OpGraft, Path: p, From: from,
		Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755, Digest: dirAt(t, s, base, from).Digest}}
}

func del(p string) tree.Op { return tree.Op{Kind: tree.OpDelete, Path: p} }

// sample returns the root of a small tree: a/{f, sub/g}, b/h, e/ (empty).
func sample(t *testing.T, s *cas.Store) cas.Digest {
	t.Helper()
	return apply(t, s, cas.Sum(tree.Empty()), 0,
		treetest.Dir("a"), treetest.File(t, s, "a/f", "f", 1), treetest.Dir("a/sub"), treetest.File(t, s, "a/sub/g", "gg", 2),
		treetest.Dir("b"), treetest.File(t, s, "b/h", "hhh", 3), treetest.Dir("e")).Root
}

func TestGraftPlacesTheSubtreeInOneOp(t *testing.T) {
	s := openStore(t)
	base := sample(t, s)
	// mv a a2; mv a2/sub a2/sub2; echo x > a2/new; rm a2/f; mv b e (over the empty e).
	res := apply(t, s, base, 0,
		del("a"), graft(t, s, base, "a", "a2"), treetest.File(t, s, "a2/new", "x", 4), del("a2/f"), del("a2/sub"),
		graft(t, s, base, "a/sub", "a2/sub2"), del("b"), graft(t, s, base, "b", "e"))
	want := "a2/ a2/new=x a2/sub2/ a2/sub2/g=gg e/ e/h=hhh"
	if got := treetest.Listing(t, s, res.Root); got != want {
		t.Fatalf("after the renames:\n got %s\nwant %s", got, want)
	}
	if res.Stale != 0 {
		t.Fatalf("%d stale grafts, want none: nothing raced", res.Stale)
	}
	// The grafted subtree is the base's tree object itself, not a copy.
	if got, want := dirAt(t, s, res.Root, "e").Digest, dirAt(t, s, base, "b").Digest; got != want {
		t.Fatalf("e is tree %s, want b's %s", got, want)
	}
}

// Grafts read the head as the commit found it, so a swap needs no
// temporary name and the order of the ops does not matter.
func TestGraftsReadTheHeadBeforeTheCommit(t *testing.T) {
	s := openStore(t)
	base := sample(t, s)
	for _, ops := range [][]tree.Op{
		{graft(t, s, base, "a", "b"), graft(t, s, base, "b", "a")},
		{graft(t, s, base, "b", "a"), graft(t, s, base, "a", "b")},
	} {
		res := apply(t, s, base, 0, ops...)
		if got, want := treetest.Listing(t, s, res.Root), "a/ a/h=hhh b/ b/f=f b/sub/ b/sub/g=gg e/"; got != want {
			t.Fatalf("after the swap:\n got %s\nwant %s", got, want)
		}
	}
	// A directory moved below its own old place: mv a t; mkdir a; mv t a/t.
	res := apply(t, s, base, 0, tree.Op{Kind: tree.OpReplace, Path: "a", Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755}},
		graft(t, s, base, "a", "a/t"))
	if got, want := treetest.Listing(t, s, res.Root), "a/ a/t/ a/t/f=f a/t/sub/ a/t/sub/g=gg b/ b/h=hhh e/"; got != want {
		t.Fatalf("after moving a below itself:\n got %s\nwant %s", got, want)
	}
}

// A commit never makes the home read a tree object the head does not reach,
// nor take its sizes from the commit.
func TestGraftTrustsOnlyTheHead(t *testing.T) {
	s := openStore(t)
	base := sample(t, s)
	// A tree of something else (another volume's, say) whose digest the
	// committer knows.
	other := apply(t, s, cas.Sum(tree.Empty()), 0, treetest.Dir("secret"), treetest.File(t, s, "secret/key", "k", 1))
	foreign := dirAt(t, s, other.Root, "secret")
	for name, op := range map[string]tree.Op{
		"digest of another tree": {Kind: tree.OpGraft, Path: "x", From: "a",
			Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755, Digest: foreign.Digest}},
		"from a path the head lacks": {Kind: tree.OpGraft, Path: "x", From: "secret",
			Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755, Digest: foreign.Digest}},
		"from a file": {Kind: tree.OpGraft, Path: "x", From: "b/h",
			Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755, Digest: foreign.Digest}},
		"lying totals": {Kind: tree.OpGraft, Path: "x", From: "a",
			Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755, Digest: dirAt(t, s, base, "a").Digest, Size: 1, Count: 1 << 40}},
	} {
		asked := loads{}
		res, err := tree.Apply(s, asked.load, base, &tree.Commit{Base: base, Ops: []tree.Op{op, treetest.File(t, s, "x/n", "n", 5)}}, 0, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if asked[foreign.Digest] {
			t.Errorf("%s: the home loaded the tree object the commit named", name)
		}
		want := "x/ x/n=n"
		if op.From == "a" {
			want = "x/ x/f=f x/n=n x/sub/ x/sub/g=gg"
		}
		if got := treetest.Listing(t, s, res.Root); got != "a/ a/f=f a/sub/ a/sub/g=gg b/ b/h=hhh e/ "+want {
			t.Errorf("%s: got %s, want x to be %s", name, got, want)
		}
		if size, count := checkTotals(t, s, res.Root); size != res.Size || count != res.Count {
			t.Errorf("%s: Apply says %d bytes in %d entries, the tree holds %d in %d", name, res.Size, res.Count, size, count)
		}
		if wantStale := op.Entry.Digest == foreign.Digest; (res.Stale == 1) != wantStale {
			t.Errorf("%s: %d stale grafts", name, res.Stale)
		}
	}
}

func TestInvalidGraftsAreErrInvalid(t *testing.T) {
	d := cas.Sum([]byte("tree"))
	dir := tree.Entry{Type: tree.TypeDir, Mode: 0o755, Digest: d}
	for name, op := range map[string]tree.Op{
		"no from":         {Kind: tree.OpGraft, Path: "a", Entry: dir},
		"absolute from":   {Kind: tree.OpGraft, Path: "a", From: "/b", Entry: dir},
		"from with ..":    {Kind: tree.OpGraft, Path: "a", From: "b/../../etc", Entry: dir},
		"from with //":    {Kind: tree.OpGraft, Path: "a", From: "b//c", Entry: dir},
		"from with NUL":   {Kind: tree.OpGraft, Path: "a", From: "b\x00", Entry: dir},
		"bad path":        {Kind: tree.OpGraft, Path: "../a", From: "b", Entry: dir},
		"graft of a file": {Kind: tree.OpGraft, Path: "a", From: "b", Entry: tree.Entry{Type: tree.TypeFile, Mode: 0o644, Digest: d}},
		"no digest":       {Kind: tree.OpGraft, Path: "a", From: "b", Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755}},
		"setgid":          {Kind: tree.OpGraft, Path: "a", From: "b", Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o2755, Digest: d}},
		"from on upsert":  {Kind: tree.OpUpsert, Path: "a", From: "b", Entry: dir},
		"from on delete":  {Kind: tree.OpDelete, Path: "a", From: "b"},
	} {
		if err := (&tree.Commit{Ops: []tree.Op{op}}).Validate(); !errors.Is(err, tree.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if err := (&tree.Commit{Ops: []tree.Op{{Kind: tree.OpGraft, Path: "a", From: "b/c", Entry: dir}}}).Validate(); err != nil {
		t.Fatalf("a valid graft: %v", err)
	}
}

// The race of Commit's doc: pod A renames a to a2 and changes a file below
// it; pod B, from the same base, adds and changes files below a.
func TestGraftRacingWritesToTheOldPath(t *testing.T) {
	s := openStore(t)
	base := sample(t, s)
	podA := []tree.Op{del("a"), graft(t, s, base, "a", "a2"), treetest.File(t, s, "a2/f", "f by A", 10)}
	podB := []tree.Op{treetest.Dir("a"), treetest.File(t, s, "a/new", "new by B", 11), treetest.Dir("a/sub"),
		treetest.File(t, s, "a/sub/g", "g by B", 12)}

	// B first: B's writes move to a2 with the rename, A's own change wins
	// over what it changed, and a is gone.
	afterB := apply(t, s, base, 0, podB...)
	res := apply(t, s, afterB.Root, 0, podA...)
	if got, want := treetest.Listing(t, s, res.Root), "a2/ a2/f=f by A a2/new=new by B a2/sub/ a2/sub/g=g by B b/ b/h=hhh e/"; got != want {
		t.Fatalf("B then A:\n got %s\nwant %s", got, want)
	}
	if res.Stale != 1 {
		t.Fatalf("B then A: %d stale grafts, want 1", res.Stale)
	}

	// A first: a2 is the base's a with A's change; B's writes recreate a
	// holding them alone.
	afterA := apply(t, s, base, 0, podA...)
	res = apply(t, s, afterA.Root, 0, podB...)
	if got, want := treetest.Listing(t, s, res.Root), "a/ a/new=new by B a/sub/ a/sub/g=g by B a2/ a2/f=f by A a2/sub/ a2/sub/g=gg b/ b/h=hhh e/"; got != want {
		t.Fatalf("A then B:\n got %s\nwant %s", got, want)
	}

	// B removed a before A's commit: a2 holds only what A wrote below it.
	afterRm := apply(t, s, base, 0, del("a"))
	res = apply(t, s, afterRm.Root, 0, podA...)
	if got, want := treetest.Listing(t, s, res.Root), "a2/ a2/f=f by A b/ b/h=hhh e/"; got != want {
		t.Fatalf("rm by B then A:\n got %s\nwant %s", got, want)
	}
}

// A graft counts against the quota like any other write: the volume's
// oldest files go first.
func TestGraftWithinQuota(t *testing.T) {
	s := openStore(t)
	base := sample(t, s) // 6 bytes in files
	res := apply(t, s, base, 6, graft(t, s, base, "b", "b2"))
	if res.Size > 6 || res.Evicted == 0 {
		t.Fatalf("%d bytes after grafting 3 more within a quota of 6, %d evicted", res.Size, res.Evicted)
	}
}

// What a commit writes is never what it evicts to stay within the quota,
// however old the mtimes it brings (a tar extracted keeps its own).
func TestEvictionSparesWhatTheCommitWrote(t *testing.T) {
	s := openStore(t)
	base := sample(t, s) // 6 bytes: a/f (mtime 1), a/sub/g (2), b/h (3)
	res := apply(t, s, base, 7, treetest.File(t, s, "old", "oo", 0))
	if got := treetest.Listing(t, s, res.Root); res.Evicted != 1 || !strings.Contains(got, "old=oo") || strings.Contains(got, "a/f=") {
		t.Fatalf("evicted %d, left %s; want a/f gone and old kept", res.Evicted, got)
	}
}
