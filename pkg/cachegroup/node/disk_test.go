package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"golang.org/x/sys/unix"
)

// needDisks skips a test that makes layer disks where the machine cannot.
func needDisks(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices:", err)
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4 (e2fsprogs)")
	}
}

// mountOverlay mounts, as the driver does, an overlay of lower with the
// layer's upper and work directories at a new target, unmounted at the end
// of the test if it still is.
func mountOverlay(t *testing.T, lower, upper, work string) string {
	t.Helper()
	target := t.TempDir()
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,volatile", lower, upper, work)
	must(t, unix.Mount("overlay", target, "overlay", 0, opts))
	return target
}

// mountsBelow returns the mount points of this process below dir.
func mountsBelow(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	var ms []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			ms = append(ms, f[4])
		}
	}
	return ms
}

// loopsBelow returns the loop devices attached to a file below dir.
func loopsBelow(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir("/sys/block")
	must(t, err)
	var ls []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "loop", "backing_file"))
		if err == nil && strings.HasPrefix(string(b), dir) {
			ls = append(ls, e.Name()+" "+strings.TrimSpace(string(b)))
		}
	}
	return ls
}

// checkReleased fails unless nothing below the node's directory is mounted
// and no loop device is backed by a file there.
func checkReleased(t *testing.T, n *Node) {
	t.Helper()
	n.sweepTrash()
	if ms := mountsBelow(t, n.dir); len(ms) > 0 {
		t.Fatalf("still mounted: %v", ms)
	}
	if ls := loopsBelow(t, n.dir); len(ls) > 0 {
		t.Fatalf("loop devices still attached: %v", ls)
	}
	n.recountDisks()
	var ahead int64
	ents, _ := os.ReadDir(n.disks.dir)
	for _, e := range ents {
		var st unix.Stat_t
		must(t, unix.Stat(filepath.Join(n.disks.dir, e.Name()), &st))
		ahead += st.Blocks * 512
	}
	if n.store.Charged() != ahead {
		t.Fatalf("%d bytes of layer disks charged, %d of them images made ahead", n.store.Charged(), ahead)
	}
}

// A pod of a volume with an 8 MiB quota sees 8 MiB in df, gets ENOSPC at
// the write that goes past it, and what it wrote is committed by copy; the
// disk is gone afterwards.
func TestQuotaBoundsWritesAndCommitsByCopy(t *testing.T) {
	n, h := diskNode(t)
	ctx := context.Background()
	const quota = 8 << 20
	v, err := h.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 30})
	must(t, err)
	upper, work, err := n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/a", Base: v.Root, Commit: true, Quota: quota})
	must(t, err)
	if !strings.HasPrefix(upper, filepath.Join(n.dir, "pods")) || filepath.Dir(upper) == n.LayerDir("/pods/a") {
		t.Fatalf("upper %s is not on the layer's own disk", upper)
	}
	target := mountOverlay(t, t.TempDir(), upper, work)

	var st unix.Statfs_t
	must(t, unix.Statfs(target, &st))
	if size := int64(st.Blocks) * st.Bsize; size < quota*97/100 || size > quota {
		t.Fatalf("df shows %d bytes, want about the quota %d", size, quota)
	}
	// Some bytes that fit, committed afterwards.
	must(t, os.MkdirAll(filepath.Join(target, "d"), 0o755))
	must(t, os.WriteFile(filepath.Join(target, "d", "small"), []byte("small"), 0o640))
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: larger than a copy buffer
	must(t, os.WriteFile(filepath.Join(target, "big"), big, 0o644))
	if used := n.recountAndCharge(); used < 1<<20 || used > 4<<20 {
		t.Fatalf("%d bytes charged for a disk holding 1 MiB", used)
	}
	// Then more than the quota: refused at the write itself.
	f, err := os.Create(filepath.Join(target, "filler"))
	must(t, err)
	chunk := make([]byte, 1<<20)
	var werr error
	for range 16 {
		if _, werr = f.Write(chunk); werr != nil {
			break
		}
	}
	f.Close()
	if !errors.Is(werr, unix.ENOSPC) {
		t.Fatalf("writing 16 MiB into an 8 MiB layer: %v, want ENOSPC at the write", werr)
	}
	must(t, os.Remove(filepath.Join(target, "filler")))
	must(t, unix.Unmount(target, 0))

	must(t, n.Submit("/pods/a"))
	entry := outboxEntry(t, n)
	if _, mounted, err := mountedDev(entry); err != nil || !mounted {
		t.Fatalf("the disk of an entry in the outbox is not mounted: %v", err)
	}
	// Submitted is durable: nothing of the image is left to write back,
	// though the store's filesystem was not synced for it.
	if dirty := dirtyPages(t, filepath.Join(entry, diskImage)); dirty > 0 {
		t.Fatalf("%d pages of a submitted layer's image are not on the disk", dirty)
	}
	must(t, n.commitEntry(ctx, entry))
	cur, err := h.Volume(ctx, v.ID)
	must(t, err)
	if got, want := treetest.Listing(t, n.store, cur.Root), "big="+string(big)+" d/ d/small=small"; got != want {
		t.Fatalf("committed %.80q, want %.80q", got, want)
	}
	checkReleased(t, n)
}

// A layer of a small quota (a 1 Mi claim, an odd size, the smallest) is no
// larger than its quota: df shows about the quota, and a pod writing twice
// its quota gets ENOSPC with no more than the quota written, so its commit
// is never refused for its size.
func TestSmallQuotaLayerHoldsNoMoreThanItsQuota(t *testing.T) {
	n, h := diskNode(t)
	v, err := h.CreateVolume(context.Background(), volume.Spec{Name: "v", Quota: 1 << 30})
	must(t, err)
	for i, quota := range []int64{1 << 20, 3<<20 + 12345, minDiskQuota} {
		target := fmt.Sprintf("/pods/%d", i)
		upper, work, err := n.NewLayer(Layer{VolumeID: v.ID, Target: target, Base: v.Root, Commit: true, Quota: quota})
		must(t, err)
		mnt := mountOverlay(t, t.TempDir(), upper, work)
		var st unix.Statfs_t
		must(t, unix.Statfs(mnt, &st))
		if size := int64(st.Blocks) * st.Bsize; size < quota*90/100 || size > quota {
			t.Errorf("quota %d: df shows %d bytes", quota, size)
		}
		f, err := os.Create(filepath.Join(mnt, "big"))
		must(t, err)
		chunk := make([]byte, 64<<10)
		var written int64
		var werr error
		for written < 2*quota && werr == nil {
			var k int
			k, werr = f.Write(chunk)
			written += int64(k)
		}
		f.Close()
		if !errors.Is(werr, unix.ENOSPC) || written > quota {
			t.Errorf("quota %d: wrote %d bytes, then %v; want ENOSPC within the quota", quota, written, werr)
		}
		must(t, unix.Unmount(mnt, 0))
		n.Drop(target)
	}
	checkReleased(t, n)
}

// dirtyPages returns the pages of the file at path in the page cache that are
// dirty or being written back.
func dirtyPages(t *testing.T, path string) uint64 {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	var cs unix.Cachestat_t
	must(t, unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &cs, 0))
	return cs.Dirty + cs.Writeback
}

// recountAndCharge counts the layer disks and returns what the store is
// charged for them.
func (n *Node) recountAndCharge() int64 {
	n.recountDisks()
	return n.store.Charged()
}

// A restarted node tier finds a live layer's disk and keeps using it, still
// mounted or not; a disk half made is never used; a layer dropped releases
// its disk.
func TestQuotaLayerSurvivesRestart(t *testing.T) {
	n, h := diskNode(t)
	ctx := context.Background()
	v, err := h.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 30})
	must(t, err)
	upper, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/a", Base: v.Root, Commit: true, Quota: 4 << 20})
	must(t, err)
	must(t, os.WriteFile(filepath.Join(upper, "f"), []byte("before"), 0o644))
	// A layer whose disk a crash left half made.
	half := n.layerDir("/pods/half")
	must(t, os.MkdirAll(half, 0o700))
	must(t, os.WriteFile(filepath.Join(half, diskPart), []byte("partial"), 0o600))

	// A restart with the mount in place.
	n2, err := Open(n.dir, n.group)
	must(t, err)
	if got := n2.UpperDir("/pods/a"); got != upper {
		t.Fatalf("upper after restart %s, was %s", got, upper)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "f")); err != nil || string(b) != "before" {
		t.Fatalf("after restart: %q %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(half, diskPart)); !os.IsNotExist(err) {
		t.Fatalf("a half-made disk is kept: %v", err)
	}
	if _, mounted, _ := mountedDev(half); mounted || hasDisk(half) {
		t.Fatal("a half-made disk is used")
	}
	// A restart that finds the mount gone (a new mount namespace): the
	// image is mounted again, from a new loop device.
	must(t, unix.Unmount(filepath.Join(n.layerDir("/pods/a"), diskMount), 0))
	n3, err := Open(n.dir, n.group)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(n3.UpperDir("/pods/a"), "g"), []byte("after"), 0o644))
	if _, mounted, err := mountedDev(n.layerDir("/pods/a")); err != nil || !mounted {
		t.Fatalf("the live layer's disk is not mounted again: %v", err)
	}
	must(t, n3.Submit("/pods/a"))
	must(t, n3.commitEntry(ctx, outboxEntry(t, n3)))
	cur, err := h.Volume(ctx, v.ID)
	must(t, err)
	if got := treetest.Listing(t, n.store, cur.Root); got != "f=before g=after" {
		t.Fatalf("committed %q", got)
	}
	// A layer dropped before its pod ran, and one whose pod does not commit.
	for _, target := range []string{"/pods/b", "/pods/c"} {
		_, _, err := n3.NewLayer(Layer{VolumeID: v.ID, Target: target, Base: v.Root, Quota: 4 << 20})
		must(t, err)
	}
	n3.Drop("/pods/b")
	must(t, n3.Submit("/pods/c"))
	os.RemoveAll(half)
	checkReleased(t, n3)
}

// The trash never removes files through a mounted disk: a disk still busy
// stays with its files until it is free. A disk an overlay still uses is
// unmounted and its loop device detaches once the overlay is gone.
func TestTrashKeepsABusyDisk(t *testing.T) {
	n, h := diskNode(t)
	ctx := context.Background()
	v, err := h.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 30})
	must(t, err)
	upper, work, err := n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/a", Base: v.Root, Quota: 4 << 20})
	must(t, err)
	must(t, os.WriteFile(filepath.Join(upper, "f"), []byte("kept"), 0o644))
	// A process working in the disk itself keeps it mounted.
	busy, err := os.Open(upper)
	must(t, err)
	n.Drop("/pods/a")
	ents, err := os.ReadDir(filepath.Join(n.dir, "trash"))
	must(t, err)
	if len(ents) != 1 {
		t.Fatalf("trash: %v", ents)
	}
	dir := filepath.Join(n.dir, "trash", ents[0].Name())
	n.kickTrash()
	if err := freeDisk(dir); err == nil {
		t.Fatal("a disk in use was freed")
	}
	if b, err := os.ReadFile(filepath.Join(dir, diskMount, "upper", "f")); err != nil || string(b) != "kept" {
		t.Fatalf("a busy disk lost its files: %q %v", b, err)
	}
	busy.Close()
	must(t, freeDisk(dir))
	n.recountDisks()
	checkReleased(t, n)

	// An overlay holds the filesystem, not the mount: the mount goes, the
	// pod keeps its files until its overlay does, and the device goes then.
	upper, work, err = n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/b", Base: v.Root, Quota: 4 << 20})
	must(t, err)
	target := mountOverlay(t, t.TempDir(), upper, work)
	must(t, os.WriteFile(filepath.Join(target, "f"), []byte("pod"), 0o644))
	n.Drop("/pods/b")
	if b, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(b) != "pod" {
		t.Fatalf("the pod lost its files: %q %v", b, err)
	}
	must(t, unix.Unmount(target, 0))
	checkReleased(t, n)
}

// pooled fills n's pool and checks it holds count mounted disks of size
// bytes and nothing else, returning the inodes of their images.
func pooled(t *testing.T, n *Node, size int64, count int) map[uint64]bool {
	t.Helper()
	n.disks.fillOnce()
	ents, err := os.ReadDir(n.disks.dir)
	must(t, err)
	ahead := map[uint64]bool{}
	for _, e := range ents {
		dir := filepath.Join(n.disks.dir, e.Name())
		if s, ok := poolSize(e.Name()); !ok || s != size {
			t.Fatalf("pool holds %s", e.Name())
		}
		if _, mounted, err := mountedDev(dir); err != nil || !mounted {
			t.Fatalf("pool disk %s is not mounted: %v", e.Name(), err)
		}
		var st unix.Stat_t
		must(t, unix.Stat(filepath.Join(dir, diskImage), &st))
		ahead[st.Ino] = true
	}
	if len(ahead) != count {
		t.Fatalf("pool holds %d disks, want %d", len(ahead), count)
	}
	return ahead
}

// diskNode is newNode for a test that makes layer disks, with no images
// made ahead: whatever the test leaves mounted below the node's directory
// is unmounted at its end.
func diskNode(t *testing.T) (*Node, *volume.Home) {
	t.Helper()
	needDisks(t)
	n, h := newNode(t)
	// No images made ahead unless a test asks: the charges stay exact.
	n.disks.setPerSize(0)
	t.Cleanup(func() {
		ms := mountsBelow(t, filepath.Dir(n.dir))
		for i := len(ms) - 1; i >= 0; i-- {
			unix.Unmount(ms[i], unix.MNT_DETACH)
		}
	})
	return n, h
}

// Layers without a quota keep plain directories on the store's disk and
// commit by rename.
func TestNoQuotaNoDisk(t *testing.T) {
	n, h := newNode(t)
	v, err := h.CreateVolume(context.Background(), volume.Spec{Name: "v"})
	must(t, err)
	upper, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/a", Base: v.Root})
	must(t, err)
	if upper != filepath.Join(n.LayerDir("/pods/a"), "upper") || hasDisk(n.LayerDir("/pods/a")) {
		t.Fatalf("a layer without a quota has a disk: %s", upper)
	}
}

func TestDiskSize(t *testing.T) {
	for _, c := range []struct{ quota, total, size int64 }{
		{8 << 20, 1 << 40, 8<<20 + 2048*256},
		{1, 1 << 40, minDiskQuota + minDiskQuota/4096*256},
		{1 << 50, 1 << 30, 1<<30 + (1<<30)/4096*256}, // no larger than the disk
	} {
		if size, _ := diskSize(c.quota, c.total); size != c.size {
			t.Errorf("diskSize(%d, %d) = %d, want %d", c.quota, c.total, size, c.size)
		}
	}
}

// A layer takes a disk the pool made ahead, mounted, for its size; the pool
// keeps only a few, of sizes asked for, one more for each layer that found
// it empty, and never hands out one half made.
func TestLayerTakesADiskMadeAhead(t *testing.T) {
	n, h := diskNode(t)
	n.disks.setPerSize(poolPerSize)
	v, err := h.CreateVolume(context.Background(), volume.Spec{Name: "v", Quota: 1 << 30})
	must(t, err)
	_, _, err = n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/a", Base: v.Root, Quota: 4 << 20})
	must(t, err)
	want, _ := diskSize(4<<20, 1<<40)
	// The first layer found the pool empty: one more than poolPerSize.
	ahead := pooled(t, n, want, poolPerSize+1)
	if n.recountAndCharge() <= diskUsage(n.layerDir("/pods/a")) {
		t.Fatal("disks made ahead are not charged")
	}
	upper, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/b", Base: v.Root, Quota: 4 << 20})
	must(t, err)
	var st unix.Stat_t
	must(t, unix.Stat(filepath.Join(n.layerDir("/pods/b"), diskImage), &st))
	if !ahead[st.Ino] {
		t.Fatal("the layer did not take a disk made ahead")
	}
	if _, mounted, err := mountedDev(n.layerDir("/pods/b")); err != nil || !mounted {
		t.Fatalf("the disk taken is not mounted: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(upper, "f"), []byte("x"), 0o644))
	pooled(t, n, want, poolPerSize+1) // a hit: no more than before
	// Restarted, the node drops the disks an earlier process made ahead,
	// whole or not.
	must(t, os.Mkdir(filepath.Join(n.disks.dir, "1-2-3.part"), 0o700))
	must(t, os.WriteFile(filepath.Join(n.disks.dir, "1-2-4.img"), []byte("old"), 0o600))
	n2, err := Open(n.dir, n.group)
	must(t, err)
	if ents, _ := os.ReadDir(n2.disks.dir); len(ents) != 0 {
		t.Fatalf("disks made by an earlier process are kept: %v", ents)
	}
	if ms := mountsBelow(t, n2.disks.dir); len(ms) > 0 {
		t.Fatalf("still mounted: %v", ms)
	}
	n.Drop("/pods/a")
	n.Drop("/pods/b")
	n.sweepTrash()
	if ms := mountsBelow(t, n.dir); len(ms) > 0 {
		t.Fatalf("still mounted: %v", ms)
	}
}
