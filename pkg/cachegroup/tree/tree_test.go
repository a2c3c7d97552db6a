package tree

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

func sampleTree() *Tree {
	return &Tree{Entries: []Entry{
		{Name: "a.jar", Type: TypeFile, Mode: 0o644, UID: 1000, GID: 1000, Mtime: 1700000000123456789, Size: 3, Digest: cas.Sum([]byte("abc"))},
		{Name: "dir", Type: TypeDir, Mode: 0o755, Mtime: 1, Size: 10, Count: 2, Digest: cas.Sum(Empty())},
		{Name: "link", Type: TypeSymlink, Mode: 0o777, Mtime: -5, Size: 5, Target: "../x/y"},
	}}
}

func TestTreeRoundTrip(t *testing.T) {
	in := sampleTree()
	b := in.Encode()
	out, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Encode(), b) {
		t.Fatal("re-encoding differs")
	}
	if len(out.Entries) != 3 || out.Entries[2].Target != "../x/y" || out.Entries[0].Mtime != 1700000000123456789 {
		t.Fatalf("decoded %+v", out.Entries)
	}
	if i := out.Find("dir"); i != 1 {
		t.Fatalf("Find(dir) = %d", i)
	}
	if size, count := out.Totals(); size != 13 || count != 5 {
		t.Fatalf("Totals = %d, %d; want 13, 5", size, count)
	}
}

func TestDecodeTreeRejectsBadNames(t *testing.T) {
	for _, name := range []string{"..", ".", "a/b", "nul\x00byte", "", strings.Repeat("x", 256)} {
		tr := &Tree{Entries: []Entry{{Name: name, Type: TypeFile, Mode: 0o644, Digest: cas.Sum(nil)}}}
		if _, err := Decode(tr.Encode()); err == nil {
			t.Errorf("name %q: decoded without error", name)
		}
	}
}

func TestDecodeTreeRejectsBadTrees(t *testing.T) {
	cases := map[string]*Tree{
		"unsorted": {Entries: []Entry{{Name: "b", Type: TypeFile}, {Name: "a", Type: TypeFile}}},
		"dup":      {Entries: []Entry{{Name: "a", Type: TypeFile}, {Name: "a", Type: TypeFile}}},
		"setuid":   {Entries: []Entry{{Name: "a", Type: TypeFile, Mode: 0o4755}}},
		"badtype":  {Entries: []Entry{{Name: "a", Type: 9}}},
		"symlink":  {Entries: []Entry{{Name: "a", Type: TypeSymlink}}},
		"negative": {Entries: []Entry{{Name: "a", Type: TypeFile, Size: -1}}},
	}
	for name, tr := range cases {
		if _, err := Decode(tr.Encode()); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	good := sampleTree().Encode()
	for i := range good {
		if _, err := Decode(good[:i]); err == nil {
			t.Fatalf("truncated at %d: decoded without error", i)
		}
	}
	if _, err := Decode(append(good, 0)); err == nil {
		t.Fatal("trailing byte: decoded without error")
	}
}

func TestSplitPath(t *testing.T) {
	if p, err := SplitPath("a/b/c"); err != nil || len(p) != 3 {
		t.Fatalf("SplitPath(a/b/c) = %v, %v", p, err)
	}
	for _, bad := range []string{"", "/a", "a/", "a//b", "a/../b", "./a", "a/\x00"} {
		if _, err := SplitPath(bad); err == nil {
			t.Errorf("SplitPath(%q): no error", bad)
		}
	}
}

// A commit that breaks the rules of a tree is ErrInvalid, so that a home can
// tell it from a failure of its own.
func TestInvalidCommitsAreErrInvalid(t *testing.T) {
	file := Entry{Type: TypeFile, Mode: 0o644, Size: 1, Digest: cas.Sum([]byte("x"))}
	for name, op := range map[string]Op{
		"bad path":      {Kind: OpUpsert, Path: "a/../b", Entry: file},
		"unknown kind":  {Kind: 9, Path: "a"},
		"setuid":        {Kind: OpUpsert, Path: "a", Entry: Entry{Type: TypeFile, Mode: 0o4755}},
		"replace file":  {Kind: OpReplace, Path: "a", Entry: file},
		"unknown entry": {Kind: OpUpsert, Path: "a", Entry: Entry{Type: 7}},
	} {
		if err := (&Commit{Ops: []Op{op}}).Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if err := (&Commit{Ops: []Op{{Kind: OpUpsert, Path: "a/b", Entry: file}, {Kind: OpDelete, Path: "c"}}}).Validate(); err != nil {
		t.Fatalf("a valid commit: %v", err)
	}
}

// FuzzDecodeTree checks that any bytes either fail to decode or decode to a
// valid tree that re-encodes to the same bytes.
func FuzzDecodeTree(f *testing.F) {
	f.Add(sampleTree().Encode())
	f.Add(Empty())
	f.Add([]byte("cgt1\x01\x01\x02..\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := Decode(b)
		if err != nil {
			return
		}
		if err := tr.Validate(); err != nil {
			t.Fatalf("decoded an invalid tree: %v", err)
		}
		for _, e := range tr.Entries {
			if ValidName(e.Name) != nil {
				t.Fatalf("decoded bad name %q", e.Name)
			}
		}
		if !bytes.Equal(tr.Encode(), b) {
			t.Fatalf("decode/encode not canonical")
		}
	})
}
