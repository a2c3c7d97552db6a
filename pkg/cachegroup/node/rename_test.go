package node

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/mounter"
	"golang.org/x/sys/unix"
)

// fsOps are file operations on the tree at root, done the same way on a
// local disk and in a pod's overlay.
type fsOps func(t *testing.T, root string)

func put(t *testing.T, root, p, content string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
	must(t, os.WriteFile(filepath.Join(root, p), []byte(content), 0o644))
}

func mv(t *testing.T, root, from, to string) {
	t.Helper()
	// rename(2) itself: no fallback to copying on EXDEV, and unlike
	// os.Rename it replaces an empty directory.
	if err := unix.Rename(filepath.Join(root, from), filepath.Join(root, to)); err != nil {
		t.Fatalf("rename %s %s: %v", from, to, err)
	}
}

func rm(t *testing.T, root, p string) {
	t.Helper()
	must(t, os.RemoveAll(filepath.Join(root, p)))
}

func mkdir(t *testing.T, root, p string) {
	t.Helper()
	must(t, os.Mkdir(filepath.Join(root, p), 0o755))
}

// seed is the volume's content the renames start from: every scenario's base.
func seed(t *testing.T, root string) {
	put(t, root, "a/f", "a/f")
	put(t, root, "a/sub/g", "a/sub/g")
	put(t, root, "a/sub/deep/h", "a/sub/deep/h")
	put(t, root, "b/x/y", "b/x/y")
	put(t, root, "z", "z")
	mkdir(t, root, "e")
	must(t, os.Symlink("../z", filepath.Join(root, "a/link")))
}

// listDir lists the tree at root as treetest.Listing lists a tree.
func listDir(t *testing.T, root string) string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, root+"/"))
		switch {
		case d.IsDir():
			out = append(out, rel+"/")
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out = append(out, rel+"->"+target)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out = append(out, rel+"="+string(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// cluster is a node of a group of one, with its committer running.
type cluster struct {
	n   *Node
	h   *volume.Home
	v   volume.Volume
	ctx context.Context
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	n, h := newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	v, err := h.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 30})
	must(t, err)
	go n.Run(ctx)
	c := &cluster{n: n, h: h, v: v, ctx: ctx}
	// The base goes through the committer like any pod's writes.
	layerWith(t, n, v, "/pods/seed", func(up string) { seed(t, up) })
	c.idle(t)
	return c
}

func (c *cluster) idle(t *testing.T) {
	t.Helper()
	must(t, c.n.WaitIdle(c.ctx))
	if q, _ := os.ReadDir(filepath.Join(c.n.dir, "quarantine")); len(q) > 0 {
		reason, _ := os.ReadFile(filepath.Join(c.n.dir, "quarantine", q[0].Name(), "reason"))
		t.Fatalf("a layer was quarantined: %s", reason)
	}
}

func (c *cluster) head(t *testing.T) volume.Volume {
	t.Helper()
	v, err := c.h.Volume(c.ctx, c.v.ID)
	must(t, err)
	return v
}

// pod is a pod's read-write mount of the volume: a real overlay of the
// head's snapshot with a fresh upper layer, as a publish makes it.
type pod struct {
	c      *cluster
	target string
	upper  string
}

func (c *cluster) mount(t *testing.T) *pod {
	t.Helper()
	head := c.head(t)
	snap, err := c.n.Materialize(c.ctx, head.Root, Want{VolumeID: head.ID})
	must(t, err)
	target := filepath.Join(t.TempDir(), "target")
	must(t, os.Mkdir(target, 0o755))
	upper, work, err := c.n.NewLayer(Layer{VolumeID: head.ID, Target: target, Base: head.Root, Commit: true})
	must(t, err)
	must(t, mounter.Overlay(target, snap, upper, work))
	t.Cleanup(func() { mounter.Unmount(target) })
	return &pod{c: c, target: target, upper: upper}
}

// unmount ends the pod's mount, leaving its upper layer as a pod's end
// leaves it, not yet submitted.
func (p *pod) unmount(t *testing.T) {
	t.Helper()
	must(t, mounter.Unmount(p.target))
	must(t, mounter.SyncFS(p.upper))
}

// end unmounts the pod and commits its writes.
func (p *pod) end(t *testing.T) {
	t.Helper()
	p.unmount(t)
	must(t, p.c.n.Submit(p.target))
	p.c.idle(t)
}

// Each scenario's renames succeed in a pod, and the committed tree holds
// what a local disk holds after the same operations.
func TestRenamesInAPodCommitAsOnALocalDisk(t *testing.T) {
	scenarios := map[string]fsOps{
		"in place": func(t *testing.T, r string) { mv(t, r, "a", "a2") },
		"nested": func(t *testing.T, r string) {
			mv(t, r, "a", "a2")
			mv(t, r, "a2/sub", "a2/sub2")
			mv(t, r, "a2/sub2/deep", "deep3")
			mv(t, r, "b/x", "a2/sub2/x2")
		},
		"changes inside": func(t *testing.T, r string) {
			mv(t, r, "a", "a2")
			put(t, r, "a2/f", "changed")
			put(t, r, "a2/new", "added")
			rm(t, r, "a2/sub/g")
			rm(t, r, "a2/sub/deep")
			put(t, r, "a2/nd/n", "in a new dir")
			mv(t, r, "a2/sub", "a2/sub2")
			put(t, r, "a2/sub2/g", "back again")
		},
		"over an empty directory": func(t *testing.T, r string) { mv(t, r, "a", "e") },
		"back": func(t *testing.T, r string) {
			mv(t, r, "a", "a2")
			mv(t, r, "a2", "a")
			mv(t, r, "b", "b2")
			put(t, r, "b2/x/y2", "y2")
			mv(t, r, "b2", "b")
			mv(t, r, "a/sub", "b/sub")
			mv(t, r, "b/sub", "a/sub")
		},
		"across directories": func(t *testing.T, r string) {
			mv(t, r, "a/sub", "b/sub")
			mv(t, r, "b/x", "a/x")
			mv(t, r, "b", "a/x/b") // the new parent of a directory moved into it
		},
		"new in the upper": func(t *testing.T, r string) {
			put(t, r, "n/f", "n/f")
			mv(t, r, "n", "n2")
			mv(t, r, "n2", "a/n3")
			mkdir(t, r, "m")
			mv(t, r, "a", "m/a") // a lower directory into a new one
		},
		"swap": func(t *testing.T, r string) {
			mv(t, r, "a", "t")
			mv(t, r, "b", "a")
			mv(t, r, "t", "b")
		},
		"below its old place": func(t *testing.T, r string) {
			mv(t, r, "a", "t")
			mkdir(t, r, "a")
			mv(t, r, "t", "a/t")
		},
		"then removed": func(t *testing.T, r string) {
			mv(t, r, "a", "a2")
			rm(t, r, "a2")
			mv(t, r, "b", "b2")
			rm(t, r, "b2/x/y")
		},
	}
	for name, ops := range scenarios {
		t.Run(strings.ReplaceAll(name, " ", "-"), func(t *testing.T) {
			local := t.TempDir()
			seed(t, local)
			ops(t, local)
			want := listDir(t, local)

			c := newCluster(t)
			p := c.mount(t)
			ops(t, p.target)
			if got := listDir(t, p.target); got != want {
				t.Fatalf("the pod sees\n %s\nwhere a local disk holds\n %s", got, want)
			}
			p.end(t)
			if got := treetest.Listing(t, c.n.store, c.head(t).Root); got != want {
				t.Fatalf("committed\n %s\nwhere a local disk holds\n %s", got, want)
			}
			// And a pod started after sees it.
			next := c.mount(t)
			if got := listDir(t, next.target); got != want {
				t.Fatalf("the next pod sees\n %s\nwhere a local disk holds\n %s", got, want)
			}
			next.unmount(t)
		})
	}
}

// A renamed directory is one op however much it holds: the commit carries
// the base's subtree by its digest, not its files.
func TestARenamedDirectoryIsOneOp(t *testing.T) {
	c := newCluster(t)
	layerWith(t, c.n, c.head(t), "/pods/big", func(up string) {
		for i := range 300 {
			put(t, up, filepath.Join("big", strconv.Itoa(i%10), strconv.Itoa(i)), "x")
		}
	})
	c.idle(t)
	base := c.head(t)
	p := c.mount(t)
	mv(t, p.target, "big", "big2")
	p.unmount(t)
	m, err := scanUpper(p.upper, nil, &baseTree{store: c.n.store, root: base.Root}, c.n.store, false, nil)
	must(t, err)
	want, ok, err := (&baseTree{store: c.n.store, root: base.Root}).dir("big")
	must(t, err)
	if !ok {
		t.Fatal("no big in the base")
	}
	ops := m.Commit.Ops
	if len(ops) != 2 || ops[0].Kind != tree.OpDelete || ops[0].Path != "big" ||
		ops[1].Kind != tree.OpGraft || ops[1].Path != "big2" || ops[1].From != "big" || ops[1].Entry.Digest != want.Digest {
		t.Fatalf("ops %+v, want a delete of big and a graft of the base's big (%s) to big2", ops, want.Digest)
	}
	must(t, c.n.Submit(p.target))
	c.idle(t)
	if head := c.head(t); head.Count != base.Count || head.Size != base.Size {
		t.Fatalf("after the rename: %d entries of %d bytes, want the base's %d of %d", head.Count, head.Size, base.Count, base.Size)
	}
}

// Pod A renames a to a2 and changes a file below it while pod B, started
// from the same head, writes below a: the outcome Commit's doc states, for
// each order the commits can land in.
func TestRenameRacingWritesToTheOldPath(t *testing.T) {
	podA := func(t *testing.T, r string) {
		mv(t, r, "a", "a2")
		put(t, r, "a2/f", "f by A")
	}
	podB := func(t *testing.T, r string) {
		put(t, r, "a/new", "new by B")
		put(t, r, "a/sub/g", "g by B")
	}
	for _, order := range []string{"B-then-A", "A-then-B"} {
		t.Run(order, func(t *testing.T) {
			// On a local disk, B's writes then A's rename move B's writes
			// along; A's rename then B's writes (a file below a missing
			// directory, so made with its directories) leave B's writes
			// alone at a.
			local := t.TempDir()
			seed(t, local)
			first, second := podB, podA
			if order == "A-then-B" {
				first, second = podA, podB
			}
			first(t, local)
			second(t, local)
			want := listDir(t, local)

			c := newCluster(t)
			a, b := c.mount(t), c.mount(t)
			podA(t, a.target)
			podB(t, b.target)
			if order == "B-then-A" {
				b.end(t)
				a.end(t)
			} else {
				a.end(t)
				b.end(t)
			}
			if got := treetest.Listing(t, c.n.store, c.head(t).Root); got != want {
				t.Fatalf("committed\n %s\nwant\n %s", got, want)
			}
		})
	}
}

// quarantined returns the reasons of the quarantined entries.
func quarantined(t *testing.T, n *Node) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(n.dir, "quarantine"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(n.dir, "quarantine", e.Name(), "reason"))
		must(t, err)
		reasons = append(reasons, string(b))
	}
	return reasons
}

// A redirect set by hand on an upper directory (a pod cannot set one
// through the overlay) never leads a commit outside the volume: one the
// kernel would refuse to follow refuses the layer; a well-formed one is
// resolved in the volume's base only, so a path the base lacks (though
// another volume on the node holds it) gives the directory's own content.
func TestHostileRedirects(t *testing.T) {
	c := newCluster(t)
	// Another volume, whose trees are in the same store.
	other, err := c.h.CreateVolume(c.ctx, volume.Spec{Name: "other"})
	must(t, err)
	layerWith(t, c.n, other, "/pods/other", func(up string) { put(t, up, "secret/key", "key") })
	c.idle(t)
	base := c.head(t)

	redirected := func(redirect string) func(string) {
		return func(up string) {
			put(t, up, "x/mine", "mine")
			must(t, unix.Setxattr(filepath.Join(up, "x"), redirectXattr, []byte(redirect), 0))
		}
	}
	refused := []string{"", "/", "//a", "/a//sub", "/a/./sub", "/a/../b", "/../other", "/a/sub/", "..", ".", "../b",
		"a/sub", "x\x00y", "/" + strings.Repeat("d", 256)}
	for i, r := range refused {
		layerWith(t, c.n, base, "/pods/refused"+strconv.Itoa(i), redirected(r))
		must(t, c.n.WaitIdle(c.ctx))
		reasons := quarantined(t, c.n)
		if len(reasons) != i+1 || !strings.Contains(reasons[i], "redirect") {
			t.Fatalf("redirect %q: quarantined %q, want the layer refused for its redirect", r, reasons)
		}
		if head := c.head(t); head.Root != base.Root {
			t.Fatalf("redirect %q: a refused layer changed the head", r)
		}
	}

	for name, tc := range map[string]struct {
		fill func(up string)
		want string // the listing of the head besides the base's
	}{
		"to another volume's directory":     {redirected("/secret"), "x/ x/mine=mine"},
		"to a file":                         {redirected("/z"), "x/ x/mine=mine"},
		"relative to a name the base lacks": {redirected("secret"), "x/ x/mine=mine"},
		"long":                              {redirected(strings.Repeat("/d", 1500)), "x/ x/mine=mine"},
		"on a file": {func(up string) {
			put(t, up, "x", "a file")
			must(t, unix.Setxattr(filepath.Join(up, "x"), redirectXattr, []byte("/a"), 0))
		}, "x=a file"},
		// Opaque hides the lower layer before any redirect is looked at.
		"opaque and redirected": {func(up string) {
			redirected("/a")(up)
			must(t, unix.Setxattr(filepath.Join(up, "x"), "trusted.overlay.opaque", []byte("y"), 0))
		}, "x/ x/mine=mine"},
		"on the root": {func(up string) {
			put(t, up, "x/mine", "mine")
			must(t, unix.Setxattr(up, redirectXattr, []byte("/a"), 0))
		}, "x/ x/mine=mine"},
		// Within the volume a redirect is followed, as the kernel would:
		// the layer's writer could have written these files anyway.
		"to a directory of the volume": {redirected("/a/sub"), "x/ x/deep/ x/deep/h=a/sub/deep/h x/g=a/sub/g x/mine=mine"},
	} {
		t.Run(strings.ReplaceAll(name, " ", "-"), func(t *testing.T) {
			q := len(quarantined(t, c.n))
			_, err := c.h.Commit(c.ctx, c.v.ID, &tree.Commit{Base: c.head(t).Root, Ops: []tree.Op{{Kind: tree.OpDelete, Path: "x"}}})
			must(t, err)
			layerWith(t, c.n, c.head(t), "/pods/"+strings.ReplaceAll(name, " ", "-"), tc.fill)
			must(t, c.n.WaitIdle(c.ctx))
			if reasons := quarantined(t, c.n); len(reasons) != q {
				t.Fatalf("quarantined: %q", reasons[q:])
			}
			got := treetest.Listing(t, c.n.store, c.head(t).Root)
			want := treetest.Listing(t, c.n.store, base.Root) + " " + tc.want
			if sorted(got) != sorted(want) {
				t.Fatalf("committed\n %s\nwant\n %s", got, want)
			}
		})
	}
}

func sorted(listing string) string {
	s := strings.Fields(listing)
	sort.Strings(s)
	return strings.Join(s, " ")
}

// A redirect longer than the buffer the scan reads it into refuses the
// layer (on ext4 no value that long can even be set).
func TestLongRedirectRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for trusted.* attributes")
	}
	d := t.TempDir()
	must(t, unix.Setxattr(d, redirectXattr, []byte("/0123456789abcdef"), 0))
	if _, err := readRedirect(d, make([]byte, 8)); !errors.Is(err, errBadLayer) {
		t.Fatalf("redirect past the buffer: %v, want a bad layer", err)
	}
	if r, err := readRedirect(d, make([]byte, maxRedirect+1)); err != nil || r != "/0123456789abcdef" {
		t.Fatalf("readRedirect = %q, %v", r, err)
	}
}
