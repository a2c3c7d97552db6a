package tree_test

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
)

// inParts stores ops as parts of at most n ops and returns the commit
// naming them.
func inParts(t *testing.T, s *cas.Store, base cas.Digest, ops []tree.Op, n int) *tree.Commit {
	t.Helper()
	c := &tree.Commit{Base: base}
	for start := 0; start < len(ops); start += n {
		b := tree.EncodePart(ops[start:min(start+n, len(ops))])
		d, err := s.PutBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		c.Parts = append(c.Parts, cas.Ref{Digest: d, Size: int64(len(b))})
	}
	return c
}

// A commit sent in parts, applied a part at a time by an edit that lets
// go of its directories every few entries, makes the very tree the same
// ops make inline in one edit: the same root, the same evictions, the same
// stale grafts.
func TestACommitInPartsMakesTheSameTree(t *testing.T) {
	s := openStore(t)
	var ops []tree.Op
	for d := range 12 {
		ops = append(ops, treetest.Dir(fmt.Sprintf("d%02d", d)))
		for f := range 25 {
			ops = append(ops, treetest.File(t, s, fmt.Sprintf("d%02d/sub%d/f%02d", d, f%3, f), fmt.Sprintf("content %d %d", d, f), int64(d*100+f)))
		}
	}
	base := apply(t, s, cas.Sum(tree.Empty()), 0, ops...).Root
	// Into an empty tree, in parts: the entries the edit adds count
	// towards its bound as loaded ones do, so it lets go as it goes (its
	// flushes write more tree objects) and makes the same tree.
	empty := cas.Sum(tree.Empty())
	inline, err := tree.Apply(s, loads{}.load, empty, &tree.Commit{Base: empty, Ops: ops}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	restore := tree.SetFlushEntries(8)
	imported, err := tree.Apply(s, loads{}.load, empty, inParts(t, s, empty, ops, 5), 0, nil)
	restore()
	if err != nil {
		t.Fatal(err)
	}
	if imported.Root != inline.Root || len(imported.Trees) <= len(inline.Trees) {
		t.Fatalf("import in parts: root %s, %d trees written; inline: root %s, %d trees", imported.Root, len(imported.Trees), inline.Root, len(inline.Trees))
	}
	// Changes across the whole tree, coming back to directories an earlier
	// part changed: renames, deletes, replaces, writes into renamed trees.
	change := []tree.Op{
		del("d00"), graft(t, s, base, "d00", "moved"), treetest.File(t, s, "moved/sub0/new", "new", 5000),
		del("d03/sub1"), {Kind: tree.OpReplace, Path: "d04", Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o700}},
		treetest.File(t, s, "d04/only", "only", 5001),
	}
	for d := range 12 {
		change = append(change, treetest.File(t, s, fmt.Sprintf("d%02d/sub2/f%02d", d, 2), fmt.Sprintf("rewritten %d", d), int64(6000+d)))
	}
	change = append(change, treetest.File(t, s, "moved/sub2/f02", "after the rename", 7000), del("d11"),
		graft(t, s, base, "d11/sub0", "d11again"))
	const quota = 2000 // below what the tree holds: the commit evicts
	for _, q := range []int64{0, quota} {
		want, err := tree.Apply(s, loads{}.load, base, &tree.Commit{Base: base, Ops: change}, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		restore := tree.SetFlushEntries(8)
		got, err := tree.Apply(s, loads{}.load, base, inParts(t, s, base, change, 5), q, nil)
		restore()
		if err != nil {
			t.Fatal(err)
		}
		if got.Root != want.Root || got.Size != want.Size || got.Count != want.Count || got.Evicted != want.Evicted || got.Stale != want.Stale {
			t.Fatalf("quota %d: in parts %+v\ninline %+v", q, got, want)
		}
		if q > 0 && got.Evicted == 0 {
			t.Fatalf("quota %d: nothing evicted from a tree of %d bytes", q, want.Size)
		}
		if l := treetest.Listing(t, s, got.Root); l != treetest.Listing(t, s, want.Root) {
			t.Fatalf("quota %d: listings differ", q)
		}
		checkTotals(t, s, got.Root)
	}
}

// A part is hostile until read: one that is not what the commit says, or
// breaks a rule an inline op must keep, is refused as invalid before any
// of it is applied; one nobody has is not found.
func TestHostilePartsAreRefused(t *testing.T) {
	s := openStore(t)
	base := sample(t, s)
	put := func(b []byte) cas.Ref {
		d, err := s.PutBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		return cas.Ref{Digest: d, Size: int64(len(b))}
	}
	good := put(tree.EncodePart([]tree.Op{treetest.File(t, s, "a/new", "new", 9)}))
	many := make([]tree.Op, tree.PartOps+1)
	for i := range many {
		many[i] = del(fmt.Sprintf("x%d", i))
	}
	for name, c := range map[string]struct {
		parts []cas.Ref
		want  error
	}{
		"a path out of the volume": {[]cas.Ref{put(tree.EncodePart([]tree.Op{del("../etc")}))}, tree.ErrInvalid},
		"a wrong size":             {[]cas.Ref{{Digest: good.Digest, Size: good.Size + 1}}, tree.ErrInvalid},
		"too many ops":             {[]cas.Ref{put(tree.EncodePart(many))}, tree.ErrInvalid},
		"not a part":               {[]cas.Ref{put([]byte(`{"ops":[],"extra":1}`))}, tree.ErrInvalid},
		"not JSON":                 {[]cas.Ref{put([]byte("\x00\x01"))}, tree.ErrInvalid},
		"too many parts":           {make([]cas.Ref, tree.MaxParts+1), tree.ErrInvalid},
		"a size past the bound":    {[]cas.Ref{{Digest: good.Digest, Size: tree.MaxPartBytes + 1}}, tree.ErrInvalid},
		"a good part, then a bad":  {[]cas.Ref{good, put(tree.EncodePart([]tree.Op{{Kind: 99, Path: "a"}}))}, tree.ErrInvalid},
		"a part nobody has":        {[]cas.Ref{{Digest: cas.Sum([]byte("absent")), Size: 10}}, cas.ErrNotFound},
	} {
		_, err := tree.Apply(s, loads{}.load, base, &tree.Commit{Base: base, Parts: c.parts}, 0, nil)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

// A part whose bytes on disk no longer match its digest is refused as
// corrupt, not applied, though what it decodes to is valid.
func TestACorruptPartIsRefused(t *testing.T) {
	s := openStore(t)
	base := sample(t, s)
	b := tree.EncodePart([]tree.Op{del("a")})
	d, err := s.PutBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	other := tree.EncodePart([]tree.Op{del("b")}) // as long, as valid
	if len(other) != len(b) {
		t.Fatalf("the parts differ in size: %d, %d", len(other), len(b))
	}
	os.Chmod(s.Path(d), 0o644)
	if err := os.WriteFile(s.Path(d), other, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = tree.Apply(s, loads{}.load, base, &tree.Commit{Base: base, Parts: []cas.Ref{{Digest: d, Size: int64(len(b))}}}, 0, nil)
	if !errors.Is(err, cas.ErrCorrupt) {
		t.Fatalf("a corrupt part: %v, want %v", err, cas.ErrCorrupt)
	}
}
