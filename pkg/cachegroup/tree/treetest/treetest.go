// Package treetest helps the member's tests build and read trees: commit ops
// whose blobs are in a store, and a listing of a tree's content. It imports
// cas and tree only, so that every layer's tests can use it.
package treetest

import (
	"sort"
	"strings"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
)

// File returns an upsert of a file with content c, storing the blob in s.
func File(t testing.TB, s *cas.Store, path, c string, mtime int64) tree.Op {
	t.Helper()
	d, err := s.PutBytes([]byte(c))
	if err != nil {
		t.Fatal(err)
	}
	return tree.Op{Kind: tree.OpUpsert, Path: path, Entry: tree.Entry{Type: tree.TypeFile, Mode: 0o644, Mtime: mtime, Size: int64(len(c)), Digest: d}}
}

// Dir returns an upsert of a directory.
func Dir(path string) tree.Op {
	return tree.Op{Kind: tree.OpUpsert, Path: path, Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755}}
}

// Listing returns "path=content" for every file, "path/" for directories
// and "path->target" for symlinks of the tree at root in s, sorted.
func Listing(t testing.TB, s *cas.Store, root cas.Digest) string {
	t.Helper()
	var out []string
	var walk func(d cas.Digest, prefix string)
	walk = func(d cas.Digest, prefix string) {
		tr, err := tree.Load(s, d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range tr.Entries {
			p := prefix + e.Name
			switch e.Type {
			case tree.TypeDir:
				out = append(out, p+"/")
				walk(e.Digest, p+"/")
			case tree.TypeSymlink:
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
