package driver

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A pod of a volume with a quota writes into a filesystem of that size,
// made by the node tier at publish: df shows the quota, and a write past it
// fails with ENOSPC; what fits is committed for the next pod.
func TestPublishHoldsThePodToItsQuota(t *testing.T) {
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices:", err)
	}
	r := newRig(t)
	const quota = 8 << 20
	vol := r.create("quota", quota)
	a := r.publish(vol, false)
	var st unix.Statfs_t
	must(t, unix.Statfs(a, &st))
	if size := int64(st.Blocks) * st.Bsize; size < quota*97/100 || size > quota {
		t.Fatalf("df in the pod shows %d bytes, want about its quota %d", size, quota)
	}
	write(t, filepath.Join(a, "kept"), "fits")
	f, err := os.Create(filepath.Join(a, "filler"))
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
		t.Fatalf("writing 16 MiB into a pod of an 8 MiB volume: %v, want ENOSPC", werr)
	}
	must(t, os.Remove(filepath.Join(a, "filler")))
	r.unpublish(vol, a)
	r.committed()
	b := r.publish(vol, false)
	if got := read(t, filepath.Join(b, "kept")); got != "fits" {
		t.Fatalf("the next pod reads %q", got)
	}
}
