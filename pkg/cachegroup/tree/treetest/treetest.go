// Package treetest helps the member's tests build and read trees: commit ops
// whose blobs are in a store, and a listing of a tree's content. It imports
// cas and tree only, so that every layer's tests can use it.
package treetest

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
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

// Same checks that dir holds exactly the tree at root in s: every entry
// with its type, content or target, size, mode, owner and mtime, and no
// entry besides (the root directory's own metadata is not the tree's). It
// returns how many entries it checked.
func Same(t testing.TB, s *cas.Store, root cas.Digest, dir string) int {
	t.Helper()
	var (
		n, bad int
		walk   func(d cas.Digest, path string)
	)
	fail := func(format string, args ...any) {
		t.Helper()
		if bad++; bad <= 10 {
			t.Errorf(format, args...)
		}
	}
	walk = func(d cas.Digest, path string) {
		tr, err := tree.Load(s, d)
		if err != nil {
			t.Fatal(err)
		}
		names, err := os.ReadDir(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(names) != len(tr.Entries) {
			fail("%s: %d entries, want %d", path, len(names), len(tr.Entries))
		}
		for _, e := range tr.Entries {
			n++
			p := filepath.Join(path, e.Name)
			fi, err := os.Lstat(p)
			if err != nil {
				fail("%s: %v", p, err)
				continue
			}
			st := fi.Sys().(*syscall.Stat_t)
			want := map[tree.Type]uint32{tree.TypeFile: syscall.S_IFREG, tree.TypeDir: syscall.S_IFDIR, tree.TypeSymlink: syscall.S_IFLNK}[e.Type]
			if st.Mode&syscall.S_IFMT != want {
				fail("%s: type %o, want %s", p, st.Mode&syscall.S_IFMT, e.Type)
				continue
			}
			if st.Uid != e.UID || st.Gid != e.GID || st.Mtim.Nano() != e.Mtime {
				fail("%s: owner %d:%d mtime %d, want %d:%d %d", p, st.Uid, st.Gid, st.Mtim.Nano(), e.UID, e.GID, e.Mtime)
			}
			if e.Type != tree.TypeSymlink && st.Mode&0o7777 != e.Mode {
				fail("%s: mode %o, want %o", p, st.Mode&0o7777, e.Mode)
			}
			switch e.Type {
			case tree.TypeDir:
				walk(e.Digest, p)
			case tree.TypeSymlink:
				if target, err := os.Readlink(p); err != nil || target != e.Target {
					fail("%s: target %q (%v), want %q", p, target, err, e.Target)
				}
			case tree.TypeFile:
				b, err := os.ReadFile(p)
				if err != nil || int64(len(b)) != e.Size || cas.Sum(b) != e.Digest {
					fail("%s: %d bytes (%v), want %d of %s", p, len(b), err, e.Size, e.Digest)
				}
			}
		}
	}
	walk(root, dir)
	return n
}
