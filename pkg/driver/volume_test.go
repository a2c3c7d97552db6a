package driver

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/mounter"
)

// rig is a driver on a fresh store, called directly (the CSI calls are the
// Go methods a gRPC server would call), with real mounts.
type rig struct {
	t     *testing.T
	d     *Driver
	store string
	pods  string
	n     int
	stop  func() // ends the node's Run and waits for it
}

func newRig(t *testing.T) *rig {
	if os.Geteuid() != 0 {
		t.Skip("needs root for mounts")
	}
	base := t.TempDir()
	r := &rig{t: t, store: filepath.Join(base, "store"), pods: filepath.Join(base, "pods")}
	if err := os.MkdirAll(r.pods, 0o755); err != nil {
		t.Fatal(err)
	}
	r.start(true)
	t.Cleanup(func() {
		filepath.WalkDir(r.pods, func(p string, e os.DirEntry, err error) error {
			mounter.Unmount(p)
			return nil
		})
		r.stopDriver()
		csiharness.UnmountUnder(base) // the disks of layers with a quota
	})
	return r
}

// start opens a driver on the rig's store; with commits false its committer
// does not run, as if the process died right after unpublish.
func (r *rig) start(commits bool) {
	d, err := New(Config{Mode: ModeAll, Member: cachegroup.Config{NodeID: "n1", Dir: r.store}})
	if err != nil {
		r.t.Fatal(err)
	}
	r.d = d
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.stop = func() { cancel(); <-done }
	if !commits {
		close(done)
		return
	}
	go func() {
		defer close(done)
		d.node.Run(ctx)
	}()
}

func (r *rig) stopDriver() { r.stop() }

func (r *rig) create(name string, quota int64) string {
	resp, err := r.d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: quota}, VolumeCapabilities: []*csi.VolumeCapability{mountCap(nil)}})
	if err != nil {
		r.t.Fatal(err)
	}
	return resp.Volume.VolumeId
}

func mountCap(flags []string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
	}
}

// publish stages and publishes vol for a new pod and returns its mount.
func (r *rig) publish(vol string, readOnly bool, flags ...string) string {
	r.t.Helper()
	target, err := r.tryPublish(vol, readOnly, flags...)
	if err != nil {
		r.t.Fatal(err)
	}
	return target
}

func (r *rig) tryPublish(vol string, readOnly bool, flags ...string) (string, error) {
	r.n++
	ctx := context.Background()
	staging := filepath.Join(r.pods, "staging")
	target := filepath.Join(r.pods, "pod"+string(rune('a'+r.n-1)), "mount")
	os.MkdirAll(filepath.Dir(target), 0o755)
	if _, err := r.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging,
		VolumeCapability: mountCap(flags)}); err != nil {
		return "", err
	}
	_, err := r.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: mountCap(flags), Readonly: readOnly})
	return target, err
}

func (r *rig) unpublish(vol, target string) {
	r.t.Helper()
	if _, err := r.d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target}); err != nil {
		r.t.Fatal(err)
	}
}

// committed waits until the outbox is drained.
func (r *rig) committed() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.d.WaitIdle(ctx); err != nil {
		r.t.Fatal(err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func missing(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("%s exists (err %v)", path, err)
	}
}

func TestWritesReachTheNextPod(t *testing.T) {
	r := newRig(t)
	vol := r.create("m2", 1<<30)
	a := r.publish(vol, false, "cache-group=default", "no-sharing")
	write(t, filepath.Join(a, "org/acme/lib/1.0/lib-1.0.jar"), "jar bytes")
	r.unpublish(vol, a)
	missing(t, a)
	r.committed()
	b := r.publish(vol, false)
	if got := read(t, filepath.Join(b, "org/acme/lib/1.0/lib-1.0.jar")); got != "jar bytes" {
		t.Fatalf("pod B reads %q", got)
	}
	// Its mount is an overlay, nosuid and nodev.
	if opts := mountFlagsAt(t, b); !strings.Contains(opts, "nosuid") || !strings.Contains(opts, "nodev") {
		t.Fatalf("mount options %q", opts)
	}
}

func TestConcurrentPodsSeeOnlyTheirOwnWrites(t *testing.T) {
	r := newRig(t)
	vol := r.create("shared", 1<<30)
	a := r.publish(vol, false)
	b := r.publish(vol, false)
	write(t, filepath.Join(a, "only-a"), "a")
	write(t, filepath.Join(b, "only-b"), "b")
	missing(t, filepath.Join(b, "only-a"))
	missing(t, filepath.Join(a, "only-b"))
	r.unpublish(vol, a)
	r.committed()
	missing(t, filepath.Join(b, "only-a")) // a live mount's snapshot never changes
	r.unpublish(vol, b)
	r.committed()
	c := r.publish(vol, false)
	if read(t, filepath.Join(c, "only-a")) != "a" || read(t, filepath.Join(c, "only-b")) != "b" {
		t.Fatal("pod C does not see both commits")
	}
}

func TestDeletesRenamesAndReplacedDirectories(t *testing.T) {
	r := newRig(t)
	vol := r.create("edits", 1<<30)
	a := r.publish(vol, false)
	write(t, filepath.Join(a, "keep/k"), "k")
	write(t, filepath.Join(a, "gone/g"), "g")
	write(t, filepath.Join(a, "old-name"), "moved")
	write(t, filepath.Join(a, "dir/x"), "x")
	write(t, filepath.Join(a, "dir/y"), "y")
	r.unpublish(vol, a)
	r.committed()

	b := r.publish(vol, false)
	must(t, os.RemoveAll(filepath.Join(b, "gone")))
	must(t, os.Rename(filepath.Join(b, "old-name"), filepath.Join(b, "new-name")))
	must(t, os.RemoveAll(filepath.Join(b, "dir")))
	write(t, filepath.Join(b, "dir/z"), "z")
	r.unpublish(vol, b)
	r.committed()

	c := r.publish(vol, false)
	missing(t, filepath.Join(c, "gone"))
	missing(t, filepath.Join(c, "old-name"))
	missing(t, filepath.Join(c, "dir/x"))
	missing(t, filepath.Join(c, "dir/y"))
	if read(t, filepath.Join(c, "new-name")) != "moved" || read(t, filepath.Join(c, "dir/z")) != "z" || read(t, filepath.Join(c, "keep/k")) != "k" {
		t.Fatal("renamed or replaced content wrong")
	}
}

func TestMetadataIsPreserved(t *testing.T) {
	r := newRig(t)
	vol := r.create("meta", 1<<30)
	a := r.publish(vol, false)
	f := filepath.Join(a, "bin/tool")
	write(t, f, "#!/bin/sh\n")
	must(t, os.Chmod(f, 0o4751)) // setuid is stripped on commit
	must(t, os.Chown(f, 1234, 5678))
	must(t, os.Mkdir(filepath.Join(a, "empty"), 0o700))
	must(t, os.Symlink("../outside/target", filepath.Join(a, "bin/link")))
	mtime := time.Date(2020, 2, 3, 4, 5, 6, 789, time.UTC)
	must(t, os.Chtimes(f, mtime, mtime))
	must(t, syscall.Mkfifo(filepath.Join(a, "fifo"), 0o644))
	r.unpublish(vol, a)
	r.committed()

	b := r.publish(vol, false)
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(b, "bin/tool"), &st))
	if st.Mode&0o7777 != 0o751 || st.Uid != 1234 || st.Gid != 5678 || st.Mtim.Nano() != mtime.UnixNano() {
		t.Fatalf("tool: mode %o uid %d gid %d mtime %d", st.Mode&0o7777, st.Uid, st.Gid, st.Mtim.Nano())
	}
	must(t, unix.Lstat(filepath.Join(b, "empty"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o7777 != 0o700 {
		t.Fatalf("empty dir: mode %o", st.Mode)
	}
	if target, err := os.Readlink(filepath.Join(b, "bin/link")); err != nil || target != "../outside/target" {
		t.Fatalf("symlink: %q %v", target, err)
	}
	missing(t, filepath.Join(b, "fifo"))
	if got := r.d.node.Stats.Dropped.Load(); got != 1 {
		t.Fatalf("dropped %d special files, want 1", got)
	}
}

func TestOwnerOption(t *testing.T) {
	r := newRig(t)
	vol := r.create("owned", 1<<30)
	a := r.publish(vol, false, "owner=1000:1001")
	var st unix.Stat_t
	must(t, unix.Stat(a, &st))
	if st.Uid != 1000 || st.Gid != 1001 {
		t.Fatalf("mount root owned by %d:%d", st.Uid, st.Gid)
	}
	write(t, filepath.Join(a, "d/f"), "x")
	r.unpublish(vol, a)
	r.committed()
	b := r.publish(vol, false)
	for _, p := range []string{"d", "d/f"} {
		must(t, unix.Lstat(filepath.Join(b, p), &st))
		if st.Uid != 1000 || st.Gid != 1001 {
			t.Fatalf("%s owned by %d:%d", p, st.Uid, st.Gid)
		}
	}
}

func TestSymlinkInUpperCannotEscape(t *testing.T) {
	r := newRig(t)
	vol := r.create("escape", 1<<30)
	outside := filepath.Join(t.TempDir(), "secret")
	write(t, outside, "host secret")
	a := r.publish(vol, false)
	// A symlink to a host file, and a directory symlink with a file "below" it.
	must(t, os.Symlink(outside, filepath.Join(a, "leak")))
	must(t, os.Symlink(filepath.Dir(outside), filepath.Join(a, "dirlink")))
	r.unpublish(vol, a)
	r.committed()
	b := r.publish(vol, true)
	if target, _ := os.Readlink(filepath.Join(b, "leak")); target != outside {
		t.Fatalf("symlink recorded as %q", target)
	}
	// The committed tree holds a symlink, not the host file's bytes.
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(b, "leak"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Fatal("leak is not a symlink")
	}
	if read(t, outside) != "host secret" {
		t.Fatal("host file changed")
	}
	if opts := mountFlagsAt(t, b); !strings.HasPrefix(opts, "ro,") {
		t.Fatalf("read-only publish mounted %q", opts)
	}
	if err := os.WriteFile(filepath.Join(b, "x"), nil, 0o644); err == nil {
		t.Fatal("wrote into a read-only publish")
	}
}

func TestCommitNeverPublishesNothing(t *testing.T) {
	r := newRig(t)
	vol := r.create("untrusted", 1<<30)
	a := r.publish(vol, false, "commit=never")
	write(t, filepath.Join(a, "poison"), "bad")
	r.unpublish(vol, a)
	r.committed()
	b := r.publish(vol, false)
	missing(t, filepath.Join(b, "poison"))
	if r.d.node.Stats.Commits.Load() != 0 {
		t.Fatal("a commit=never layer was committed")
	}
}

func TestRestartBetweenUnpublishAndCommitLosesNothing(t *testing.T) {
	r := newRig(t)
	r.stopDriver()
	r.start(false) // no committer: the process "dies" after unpublish
	vol := r.create("durable", 1<<30)
	a := r.publish(vol, false)
	write(t, filepath.Join(a, "acknowledged"), "kept")
	r.unpublish(vol, a)
	r.stopDriver()
	r.start(true)
	r.committed()
	b := r.publish(vol, false)
	if read(t, filepath.Join(b, "acknowledged")) != "kept" {
		t.Fatal("write lost across restart")
	}
}

func TestBadOptionsAreRejectedAndNothingIsMounted(t *testing.T) {
	r := newRig(t)
	vol := r.create("opts", 1<<30)
	for _, flags := range [][]string{{"cache-grup=ci"}, {"commit=sometimes"}, {"owner=x"}, {"cache-group=other"}} {
		target, err := r.tryPublish(vol, false, flags...)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), strings.Split(flags[0], "=")[0]) {
			t.Fatalf("%v: %v", flags, err)
		}
		if m, _ := mounter.IsMountPoint(target); m {
			t.Fatalf("%v: mounted", flags)
		}
	}
	if _, err := r.tryPublish("vol-000000000000000000000000", false); status.Code(err) != codes.NotFound {
		t.Fatalf("missing volume: %v", err)
	}
}

func TestInlineVolumesAreScopedByNamespace(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	pub := func(ns, handle string) string {
		target := filepath.Join(r.pods, handle)
		_, err := r.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: handle, TargetPath: target,
			VolumeCapability: mountCap(nil), VolumeContext: map[string]string{
				attrEphemeral: "true", attrNamespace: ns, attrVolume: "gomod", attrSize: "1Gi"}})
		if err != nil {
			t.Fatal(err)
		}
		return target
	}
	a := pub("team-a", "csi-1")
	write(t, filepath.Join(a, "mod"), "a's")
	r.unpublish("csi-1", a)
	r.committed()
	if read(t, filepath.Join(pub("team-a", "csi-2"), "mod")) != "a's" {
		t.Fatal("same namespace does not share")
	}
	missing(t, filepath.Join(pub("team-b", "csi-3"), "mod"))
}

func TestVolumeStats(t *testing.T) {
	r := newRig(t)
	vol := r.create("stats", 1000)
	a := r.publish(vol, false)
	write(t, filepath.Join(a, "f"), strings.Repeat("x", 100))
	r.unpublish(vol, a)
	r.committed()
	b := r.publish(vol, false)
	resp, err := r.d.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: b})
	if err != nil {
		t.Fatal(err)
	}
	u := resp.Usage[0]
	if u.Total != 1000 || u.Used != 100 || u.Available != 900 || resp.Usage[1].Used != 1 {
		t.Fatalf("usage %v", resp.Usage)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// mountFlagsAt returns the mount options of the mount at path.
func mountFlagsAt(t *testing.T, path string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) > 5 && f[4] == path {
			return f[5]
		}
	}
	t.Fatalf("%s is not mounted", path)
	return ""
}
