package node

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/mounter"
	"golang.org/x/sys/unix"
)

// fsListing lists the files below dir as treetest.Listing lists a tree.
func fsListing(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case e.IsDir():
			out = append(out, rel+"/")
		case e.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out = append(out, rel+"->"+target)
		case e.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out = append(out, rel+"="+string(b))
		default:
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
				out = append(out, rel+"(whiteout)") // in a layer, or showing through
			} else {
				out = append(out, rel+"?"+e.Type().String())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// mountRO mounts lowers read-only at a fresh directory, as a read-only
// publish does, until the test ends.
func mountRO(t *testing.T, lowers []string) string {
	t.Helper()
	target := t.TempDir()
	if err := (mounter.System{}).Stack(target, lowers, "", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mounter.Unmount(target) })
	return target
}

// stackOf presents root for vol and releases the hold at the test's end.
func stackOf(t *testing.T, n *Node, vol string, root cas.Digest) []string {
	t.Helper()
	lowers, release, err := n.Stack(context.Background(), root, Want{VolumeID: vol})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return lowers
}

func commitOps(t *testing.T, h *volume.Home, vol string, ops ...tree.Op) cas.Digest {
	t.Helper()
	r, err := h.Commit(context.Background(), vol, &tree.Commit{Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	return r.Volume.Root
}

func del(path string) tree.Op { return tree.Op{Kind: tree.OpDelete, Path: path} }
func replace(path string) tree.Op {
	return tree.Op{Kind: tree.OpReplace, Path: path, Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755}}
}
func symlink(path, target string) tree.Op {
	return tree.Op{Kind: tree.OpUpsert, Path: path, Entry: tree.Entry{Type: tree.TypeSymlink, Mode: 0o777, Size: int64(len(target)), Target: target}}
}

// generations commits a history that deletes, re-creates, replaces
// directories and changes types, returning the root of each generation.
func generations(t *testing.T, n *Node, h *volume.Home, vol string) []cas.Digest {
	s := n.store
	f := func(p, c string) tree.Op { return treetest.File(t, s, p, c, 7) }
	return []cas.Digest{
		commitOps(t, h, vol, f("a", "a0"), treetest.Dir("d"), f("d/b", "b0"), treetest.Dir("d/e"), f("d/e/f", "f0"),
			f("x", "x0"), treetest.Dir("y"), f("y/z", "z0"), symlink("s", "a"), treetest.Dir("keep"),
			f("keep/1", "k1"), f("keep/2", "k2"), treetest.Dir("keep/sub"), f("keep/sub/3", "k3")),
		// A new file deep down and a delete at the top.
		commitOps(t, h, vol, f("d/e/new", "n1"), del("a")),
		// A replaced directory: nothing of the old one shows through.
		commitOps(t, h, vol, replace("d"), f("d/only", "o2")),
		// Types change both ways.
		commitOps(t, h, vol, del("x"), treetest.Dir("x"), f("x/in", "i3"), del("y"), f("y", "y3")),
		// A subtree goes, a file changes, a symlink points elsewhere.
		commitOps(t, h, vol, del("keep"), f("d/only", "o4"), symlink("s", "d/only")),
		// What a lower layer whited out comes back, as another type.
		commitOps(t, h, vol, treetest.Dir("a"), f("a/q", "q5"), treetest.Dir("keep"), f("keep/1", "again")),
	}
}

// A stack of thin layers serves exactly the tree of its generation, and
// each older stack, still mounted, its own.
func TestStackServesTheNewestTree(t *testing.T) {
	n, h := newNode(t)
	n.lay.compactDepth = maxDepth + 1 // this test builds deep stacks
	v, _ := h.CreateVolume(context.Background(), volume.Spec{Name: "v"})
	roots := generations(t, n, h, v.ID)
	mounts := make([]string, len(roots))
	for i, root := range roots {
		lowers := stackOf(t, n, v.ID, root)
		if len(lowers) != i+1 {
			t.Fatalf("generation %d: %d layers, want %d: %v", i, len(lowers), i+1, lowers)
		}
		mounts[i] = mountRO(t, lowers)
		if got, want := fsListing(t, mounts[i]), treetest.Listing(t, n.store, root); got != want {
			t.Fatalf("generation %d through %d layers:\n got %s\nwant %s", i, len(lowers), got, want)
		}
	}
	for i, m := range mounts {
		if got, want := fsListing(t, m), treetest.Listing(t, n.store, roots[i]); got != want {
			t.Fatalf("generation %d, mounted earlier, now:\n got %s\nwant %s", i, got, want)
		}
	}
	// The thin layers hold only what changed: generation 1's holds the new
	// file, a whiteout and the directories on the way.
	if got := fsListing(t, stackOf(t, n, v.ID, roots[1])[0]); got != "a(whiteout) d/ d/e/ d/e/new=n1" {
		t.Fatalf("layer of generation 1: %s", got)
	}
	// A pod's writable mount over the stack serves the same tree.
	lowers := stackOf(t, n, v.ID, roots[len(roots)-1])
	upper, work := t.TempDir(), t.TempDir()
	target := t.TempDir()
	must(t, mounter.OverlayStack(target, lowers, upper, work))
	defer mounter.Unmount(target)
	if got, want := fsListing(t, target), treetest.Listing(t, n.store, roots[len(roots)-1]); got != want {
		t.Fatalf("read-write mount:\n got %s\nwant %s", got, want)
	}
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(target, "a/q"), &st))
	if st.Mtim.Nano() != 7 || st.Mode&0o7777 != 0o644 {
		t.Fatalf("a/q: mtime %d mode %o", st.Mtim.Nano(), st.Mode&0o7777)
	}
}

// A crash between building a layer and recording it leaves a layer that is
// never used: the next start rebuilds it. A restart reuses every complete
// layer as it is.
func TestRestartReusesLayersAndRebuildsHalfBuiltOnes(t *testing.T) {
	n, h := newNode(t)
	n.lay.compactDepth = maxDepth + 1
	v, _ := h.CreateVolume(context.Background(), volume.Spec{Name: "v"})
	roots := generations(t, n, h, v.ID)[:4]
	var lowers []string
	for _, root := range roots {
		lowers = stackOf(t, n, v.ID, root)
	}
	var before unix.Stat_t
	must(t, unix.Lstat(lowers[1], &before))
	// Crash: generation 3's layer is in place, its record never written
	// (nor, after it, the volume's newest root), and junk a half-done build
	// could have left is in it.
	must(t, os.Remove(n.layerMetaPath(roots[3])))
	must(t, os.WriteFile(n.headPath(v.ID), []byte(roots[2].String()), 0o600))
	must(t, os.WriteFile(filepath.Join(lowers[0], "junk"), []byte("half"), 0o644))
	must(t, os.MkdirAll(filepath.Join(n.layersDir(), ".work-"+roots[2].String(), "stale"), 0o755))

	n2, err := Open(n.dir, n.group)
	must(t, err)
	if _, ok := n2.resolve(roots[3]); ok {
		t.Fatal("a layer without its record resolves")
	}
	again := stackOf(t, n2, v.ID, roots[3])
	if strings.Join(again, ":") != strings.Join(lowers, ":") {
		t.Fatalf("after restart: %v, want %v", again, lowers)
	}
	var after unix.Stat_t
	must(t, unix.Lstat(again[1], &after))
	if after.Ino != before.Ino {
		t.Fatal("a complete layer was rebuilt after restart instead of reused")
	}
	if got, want := fsListing(t, mountRO(t, again)), treetest.Listing(t, n.store, roots[3]); got != want {
		t.Fatalf("rebuilt stack:\n got %s\nwant %s", got, want)
	}
	// Generation 2, complete, resolves to its stack without a build.
	if st, ok := n2.resolve(roots[2]); !ok || len(st.lowers) != 3 {
		t.Fatalf("generation 2 after restart: %v %v", st.lowers, ok)
	}
	// A layer of an earlier boot may have lost entries in the crash of the
	// machine: it is never used.
	b, err := os.ReadFile(n.layerMetaPath(roots[2]))
	must(t, err)
	must(t, os.WriteFile(n.layerMetaPath(roots[2]), []byte(strings.Replace(string(b), bootID(), "an-earlier-boot", 1)), 0o600))
	if _, ok := n2.resolve(roots[2]); ok {
		t.Fatal("a layer of an earlier boot resolves")
	}
	must(t, n2.Prune(roots[3]))
	if _, err := os.Lstat(filepath.Join(n.layersDir(), ".work-"+roots[2].String())); !os.IsNotExist(err) {
		t.Fatalf("stale work directory kept: %v", err)
	}
}

// Compaction while pods are mounted on older stacks: their mounts keep
// working and keep their generation; new pods get the flat snapshot; the
// old layers go only once their pods are gone.
func TestCompactionKeepsMountedStacks(t *testing.T) {
	n, h := newNode(t)
	n.lay.compactDepth = 2
	ctx := context.Background()
	v, _ := h.CreateVolume(ctx, volume.Spec{Name: "v"})
	must(t, n.MarkStaged(v.ID, true))
	roots := generations(t, n, h, v.ID)[:3]
	_, release0, err := n.Stack(ctx, roots[0], Want{VolumeID: v.ID})
	must(t, err)
	release0()
	// A pod on generation 1 (one thin layer), recorded as the driver does.
	lowers1, release, err := n.Stack(ctx, roots[1], Want{VolumeID: v.ID})
	must(t, err)
	target := filepath.Join(t.TempDir(), "pod")
	must(t, os.Mkdir(target, 0o755))
	upper, work, err := n.NewLayer(Layer{VolumeID: v.ID, Target: target, Base: roots[1]})
	must(t, err)
	must(t, mounter.OverlayStack(target, lowers1, upper, work))
	defer mounter.Unmount(target)
	release()
	// Generation 2 is the second thin layer: it is compacted.
	l2, release2, err := n.Stack(ctx, roots[2], Want{VolumeID: v.ID})
	must(t, err)
	if len(l2) != 3 {
		t.Fatalf("generation 2: %v", l2)
	}
	release2()
	n.running.Wait()
	must(t, n.Prune()) // as the compaction does, once no caller holds the stack
	if l := stackOf(t, n, v.ID, roots[2]); len(l) != 1 || l[0] != n.snapPath(roots[2]) {
		t.Fatalf("after compaction a new pod gets %v, not the flat snapshot", l)
	}
	if _, err := os.Lstat(n.layerPath(roots[2])); !os.IsNotExist(err) {
		t.Fatalf("generation 2's layer, which no pod mounts, kept after compaction: %v", err)
	}
	for _, p := range lowers1 {
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("a layer under a live mount removed: %v", err)
		}
	}
	if got, want := fsListing(t, target), treetest.Listing(t, n.store, roots[1]); got != want {
		t.Fatalf("the pod's mount after compaction:\n got %s\nwant %s", got, want)
	}
	// The pod ends: its layers go at the next prune.
	must(t, mounter.Unmount(target))
	n.Drop(target)
	must(t, n.Prune())
	for _, p := range lowers1 {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("layer %s kept after its last pod ended: %v", p, err)
		}
	}
	if _, ok := n.resolve(roots[2]); !ok {
		t.Fatal("the staged volume's newest snapshot pruned")
	}
}

// A stack that compaction did not keep up with stops at maxDepth: the next
// layer is built over the flat snapshot at its bottom.
func TestDeepStackRebasesOnItsBottom(t *testing.T) {
	n, h := newNode(t)
	n.lay.compactDepth = 100
	v, _ := h.CreateVolume(context.Background(), volume.Spec{Name: "v"})
	root := commitOps(t, h, v.ID, treetest.File(t, n.store, "f", "0", 1))
	stackOf(t, n, v.ID, root)
	for i := 1; i <= maxDepth+1; i++ {
		root = commitOps(t, h, v.ID, treetest.File(t, n.store, fmt.Sprintf("d%d/f", i), "x", 1))
		lowers := stackOf(t, n, v.ID, root)
		want := i + 1
		if i > maxDepth {
			want = 2
		}
		if len(lowers) != want {
			t.Fatalf("generation %d: %d layers, want %d", i, len(lowers), want)
		}
		if got, want := fsListing(t, mountRO(t, lowers)), treetest.Listing(t, n.store, root); got != want {
			t.Fatalf("generation %d:\n got %s\nwant %s", i, got, want)
		}
	}
}
