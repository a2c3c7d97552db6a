package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"golang.org/x/sys/unix"
)

// bigTree makes at dir a tree of files files, 10 to a directory.
func bigTree(t *testing.T, dir string, files int) {
	t.Helper()
	for f := range files {
		p := filepath.Join(dir, fmt.Sprintf("d%d/e%d", f/100, f/10), fmt.Sprintf("f%d", f))
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, nil, 0o444))
	}
}

// countFiles returns how many files are below dir.
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	must(t, filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	}))
	return n
}

// A sweep told to stop still frees the disk of every layer in the trash
// first, and leaves the rest of a large tree, which the next sweep removes:
// neither the driver's stop nor a pod waits on a snapshot of a million
// links being removed.
func TestASweepFreesDisksFirstAndStops(t *testing.T) {
	needDisks(t)
	n, h := newNode(t)
	v, err := h.CreateVolume(context.Background(), volume.Spec{Name: "v", Quota: 1 << 30})
	must(t, err)
	n.disks.setPerSize(0)
	if _, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/a", Base: v.Root, Quota: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(n.dir, "old-snapshot")
	const files = 3 * removeBatch
	bigTree(t, big, files)
	n.discard(big)
	n.Drop("/pods/a")

	asked := 0
	n.sweep(func() bool { asked++; return true })
	if asked != 1 {
		t.Errorf("stop asked %d times, want once (after the first batch)", asked)
	}
	if ms := mountsBelow(t, n.dir); len(ms) > 0 {
		t.Fatalf("a stopped sweep left disks mounted: %v", ms)
	}
	if ls := loopsBelow(t, n.dir); len(ls) > 0 {
		t.Fatalf("a stopped sweep left loop devices: %v", ls)
	}
	trash := filepath.Join(n.dir, "trash")
	if left := countFiles(t, trash); left < files-removeBatch {
		t.Fatalf("a sweep stopped after one batch left %d of %d files", left, files)
	}
	n.sweepTrash()
	if ents, err := os.ReadDir(trash); err != nil || len(ents) != 0 {
		t.Fatalf("the next sweep left %v %v", ents, err)
	}
	checkReleased(t, n)
}

// The background sweep gives way to one that needs the space now, and to
// the node's stop, and otherwise removes everything.
func TestABackgroundSweepGivesWay(t *testing.T) {
	n, _ := newNode(t)
	trash := filepath.Join(n.dir, "trash")
	const files = 2 * removeBatch
	for _, c := range []struct {
		name   string
		urgent bool
		ended  bool
		layer  bool
	}{{"urgent sweep waiting", true, false, false}, {"node stopping", false, true, false},
		{"pod layer being made", false, false, true}, {"alone", false, false, false}} {
		bigTree(t, filepath.Join(n.dir, "old-snapshot"), files)
		n.discard(filepath.Join(n.dir, "old-snapshot"))
		ctx, cancel := context.WithCancel(context.Background())
		if c.ended {
			cancel()
		}
		if c.urgent {
			n.trash.urgent.Add(1) // as sweepTrash does while it waits
		}
		done := func() {}
		if c.layer {
			done = n.makingLayer()
		}
		n.sweep(n.givesWay(ctx))
		if c.urgent {
			n.trash.urgent.Add(-1)
		}
		done()
		cancel()
		left := countFiles(t, trash)
		if stopped := c.urgent || c.ended || c.layer; stopped && left < files-removeBatch || !stopped && left != 0 {
			t.Errorf("%s: a background sweep left %d of %d files", c.name, left, files)
		}
		n.sweepTrash()
	}
}

// removeTree never removes through a mount: what is mounted below stays,
// with the directories above it, and the removal fails.
func TestRemoveTreeStopsAtAMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	bigTree(t, tree, 50)
	inner := filepath.Join(dir, "elsewhere")
	must(t, os.MkdirAll(inner, 0o755))
	must(t, os.WriteFile(filepath.Join(inner, "kept"), []byte("kept"), 0o644))
	mnt := filepath.Join(tree, "d0", "mnt")
	must(t, os.Mkdir(mnt, 0o755))
	must(t, unix.Mount(inner, mnt, "", unix.MS_BIND, ""))
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })

	if err := removeTree(tree, func() bool { return false }); err == nil || errors.Is(err, errStopped) {
		t.Fatalf("removing a tree with a mount in it: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(inner, "kept")); err != nil || string(b) != "kept" {
		t.Fatalf("a file below a mount was removed: %q %v", b, err)
	}
	must(t, unix.Unmount(mnt, 0))
	must(t, removeTree(tree, func() bool { return false }))
	if _, err := os.Lstat(tree); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tree left: %v", err)
	}
	must(t, removeTree(tree, func() bool { return false })) // gone already: nothing to do

	// Nor through a mount at the path itself.
	must(t, os.Mkdir(tree, 0o755))
	must(t, unix.Mount(inner, tree, "", unix.MS_BIND, ""))
	t.Cleanup(func() { unix.Unmount(tree, unix.MNT_DETACH) })
	if err := removeTree(tree, func() bool { return false }); err == nil {
		t.Fatal("removed a tree that is a mount")
	}
	if b, err := os.ReadFile(filepath.Join(inner, "kept")); err != nil || string(b) != "kept" {
		t.Fatalf("a file below a mount at the removed path was removed: %q %v", b, err)
	}
	must(t, unix.Unmount(tree, 0))
}

// idle runs its function at nice 19 in the idle I/O class, on a thread of
// its own: the caller's thread keeps its priority.
func TestIdleLowersOnlyItsThread(t *testing.T) {
	p, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	must(t, err)
	base := 20 - p
	var nice, class int
	var tid int
	idle(func() {
		tid = unix.Gettid()
		p, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
		must(t, err)
		nice = 20 - p // the raw system call answers 20 - nice
		r, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, 0, 0)
		if errno != 0 {
			t.Fatal(errno)
		}
		class = int(r) >> ioprioClassShift
	})
	if nice != 19 || class != ioprioClassIdle {
		t.Fatalf("idle ran at nice %d, I/O class %d; want 19, %d", nice, class, ioprioClassIdle)
	}
	if tid == unix.Gettid() {
		t.Fatal("idle ran on the caller's thread")
	}
	if p, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err != nil || 20-p == 19 && base != 19 {
		t.Fatalf("the caller's thread is at nice %d (%v)", 20-p, err)
	}
}

// A page-cache sample ends with the node: past its context it opens no
// more blobs (at a million blobs a sample takes minutes).
func TestASampleEndsWithItsContext(t *testing.T) {
	n, _ := newNode(t)
	d, err := n.store.PutBytes([]byte("read by a pod"))
	must(t, err)
	n.settle() // what was written is no read
	if _, err := os.ReadFile(n.store.Path(d)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := n.cachedBlobs(ctx); len(got) != 0 {
		t.Fatalf("a sample past its context found %v", got)
	}
	if got := n.cachedBlobs(context.Background()); !slices.Contains(got, d) {
		t.Fatalf("a sample found %v, want the blob read", got)
	}
}
