package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cachegroup/cachegroup/pkg/mounter"
)

// outbox lists the ended layers waiting to be committed.
func (r *fakeRig) outbox(t *testing.T) []os.DirEntry {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(r.dir, "store", "node", "outbox"))
	if err != nil {
		t.Fatal(err)
	}
	return ents
}

func TestPathsMustBeAbsoluteAndClean(t *testing.T) {
	r := newFakeRig(t)
	ctx := context.Background()
	vol := r.volume(t, "v")
	for _, p := range []string{"pod/mount", r.dir + "/pod/../other/mount", r.dir + "//pod/mount",
		r.dir + "/pod/./mount", r.dir + "/pod/mount/", r.dir + "/pod\x00/mount"} {
		wantCode(t, "publish to "+p, r.publish(vol, p, false), codes.InvalidArgument, "target path")
		wantCode(t, "unpublish of "+p, r.unpublish(vol, p), codes.InvalidArgument, "target path")
		_, err := r.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: p, VolumeCapability: mountCap(nil)})
		wantCode(t, "stage at "+p, err, codes.InvalidArgument, "staging target path")
		_, err = r.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: p})
		wantCode(t, "unstage at "+p, err, codes.InvalidArgument, "staging target path")
		_, err = r.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: p,
			TargetPath: filepath.Join(r.dir, "pod", "mount"), VolumeCapability: mountCap(nil)})
		wantCode(t, "publish staged at "+p, err, codes.InvalidArgument, "staging target path")
		// No volume is published at such a path.
		_, err = r.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: p})
		wantCode(t, "stats at "+p, err, codes.NotFound, "")
	}
	if n := r.mount.Mounts(); n != 0 {
		t.Fatalf("%d mounts made at unclean paths", n)
	}
	if _, err := os.Lstat(filepath.Join(r.dir, "other")); !os.IsNotExist(err) {
		t.Fatalf("a target with .. was created (%v)", err)
	}
}

// The driver never mounts onto, creates through or removes through a link.
func TestTargetsThroughSymlinksAreRefused(t *testing.T) {
	r := newFakeRig(t)
	vol := r.volume(t, "v")
	elsewhere := filepath.Join(r.dir, "elsewhere")
	must(t, os.MkdirAll(elsewhere, 0o755))
	must(t, os.MkdirAll(filepath.Join(r.dir, "pod"), 0o755))
	link := filepath.Join(r.dir, "pod", "mount")
	must(t, os.Symlink(elsewhere, link))
	must(t, os.Symlink(elsewhere, filepath.Join(r.dir, "podlink")))
	below := filepath.Join(r.dir, "podlink", "mount")
	for _, target := range []string{link, below} {
		wantCode(t, "publish to "+target, r.publish(vol, target, false), codes.InvalidArgument, "symbolic link")
		if _, ok, _ := r.d.node.Layer(target); ok {
			t.Fatalf("a layer is left for the refused publish to %s", target)
		}
		wantCode(t, "unpublish of "+target, r.unpublish(vol, target), codes.InvalidArgument, "symbolic link")
	}
	if n := r.mount.Mounts(); n != 0 {
		t.Fatalf("%d mounts made through links", n)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Fatalf("created %v at the link's destination", ents)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link itself was removed or replaced (%v)", err)
	}
}

// With real mounts: nothing is mounted at a link's destination.
func TestPublishToASymlinkMountsNothing(t *testing.T) {
	r := newRig(t)
	vol := r.create("linked", 1<<30)
	elsewhere := filepath.Join(r.pods, "elsewhere")
	must(t, os.MkdirAll(elsewhere, 0o755))
	must(t, os.MkdirAll(filepath.Join(r.pods, "poda"), 0o755))
	must(t, os.Symlink(elsewhere, filepath.Join(r.pods, "poda", "mount")))
	target, err := r.tryPublish(vol, false)
	if target != filepath.Join(r.pods, "poda", "mount") {
		t.Fatalf("published to %s, not at the link", target)
	}
	wantCode(t, "publish to a link", err, codes.InvalidArgument, "symbolic link")
	if m, _ := mounter.IsMountPoint(elsewhere); m {
		t.Fatal("mounted at the link's destination")
	}
}

func TestStatsOnlyOfAPublishedTarget(t *testing.T) {
	r := newFakeRig(t)
	ctx := context.Background()
	vol, other := r.volume(t, "v"), r.volume(t, "w")
	if err := r.stage(vol); err != nil {
		t.Fatal(err)
	}
	target, otherTarget := filepath.Join(r.dir, "a", "mount"), filepath.Join(r.dir, "b", "mount")
	must(t, r.publish(vol, target, false))
	must(t, r.publish(other, otherTarget, false))
	stats := func(id, path string) error {
		_, err := r.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
		return err
	}
	if err := stats(vol, target); err != nil {
		t.Fatalf("stats of a published target: %v", err)
	}
	for _, p := range []string{"/etc", "/", r.dir, filepath.Join(r.dir, "a"), otherTarget} {
		wantCode(t, "stats of "+vol+" at "+p, stats(vol, p), codes.NotFound, p)
	}
	must(t, r.unpublish(vol, target))
	wantCode(t, "stats of an unpublished target", stats(vol, target), codes.NotFound, target)
}

// An unpublish that cannot remove the mount leaves the pod's live upper
// layer where it is: nothing reaches the outbox while a mount writes to it.
func TestUnpublishThatCannotUnmountKeepsTheLayer(t *testing.T) {
	r := newFakeRig(t)
	vol := r.volume(t, "v")
	if err := r.stage(vol); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(r.dir, "pod", "mount")
	must(t, r.publish(vol, target, false))
	upper := r.d.node.UpperDir(target)
	must(t, os.WriteFile(filepath.Join(upper, "f"), []byte("written"), 0o644))
	for _, failure := range []error{unix.EBUSY, nil} {
		r.mount.KeepMounted(target, failure)
		if err := r.unpublish(vol, target); err == nil {
			t.Fatalf("unpublish while the mount stays (unmount answers %v) succeeded", failure)
		}
		if _, err := os.Stat(filepath.Join(upper, "f")); err != nil {
			t.Fatalf("unmount answered %v: the live layer moved (%v)", failure, err)
		}
		if ents := r.outbox(t); len(ents) != 0 {
			t.Fatalf("unmount answered %v: %d entries in the outbox", failure, len(ents))
		}
		if _, ok := r.mount.Mount(target); !ok {
			t.Fatal("the fake forgot the mount")
		}
	}
	r.mount.Release(target)
	must(t, r.unpublish(vol, target))
	if ents := r.outbox(t); len(ents) != 1 {
		t.Fatalf("%d entries in the outbox after the unmount worked, want 1", len(ents))
	}
}

// Two calls on one target never interleave, whatever volumes they name.
func TestCallsOnOneTargetAreSerialised(t *testing.T) {
	r := newFakeRig(t)
	vol, other := r.volume(t, "v"), r.volume(t, "w")
	target := filepath.Join(r.dir, "pod", "mount")
	must(t, r.d.targets.lock(target)) // a publish of vol to target in progress
	wantCode(t, "publish of another volume to a busy target", r.publish(other, target, false), codes.Aborted, target)
	wantCode(t, "unpublish of a busy target", r.unpublish(vol, target), codes.Aborted, target)
	r.d.targets.unlock(target)
	must(t, r.publish(other, target, false))
	// The volume lock is taken with it: a failed target lock holds none.
	must(t, r.d.targets.lock(filepath.Join(r.dir, "x")))
	wantCode(t, "publish to a busy target", r.publish(vol, filepath.Join(r.dir, "x"), false), codes.Aborted, "")
	must(t, r.publish(vol, filepath.Join(r.dir, "y"), false))
}
