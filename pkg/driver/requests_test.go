package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/mounter"
)

// The tests of this file check what the driver answers, and what it asks the
// mounter for, against a fake mounter: they run without root.

// fakeRig is a driver on a fresh store whose mounts a Fake records.
type fakeRig struct {
	d     *Driver
	mount *mounter.Fake
	dir   string
}

func newFakeRig(t *testing.T) *fakeRig {
	t.Helper()
	r := &fakeRig{mount: &mounter.Fake{}, dir: t.TempDir()}
	// The disks of layers with a quota are real mounts, even with a Fake.
	t.Cleanup(func() { csiharness.UnmountUnder(r.dir) })
	d, err := New(Config{Mode: ModeAll, Mounter: r.mount,
		Member: cachegroup.Config{NodeID: "n1", Dir: filepath.Join(r.dir, "store")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	r.d = d
	return r
}

func (r *fakeRig) volume(t *testing.T, name string) string {
	t.Helper()
	resp, err := r.d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapabilities: []*csi.VolumeCapability{mountCap(nil)}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Volume.VolumeId
}

func (r *fakeRig) stage(vol string) error {
	_, err := r.d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: vol,
		StagingTargetPath: filepath.Join(r.dir, "staging"), VolumeCapability: mountCap(nil)})
	return err
}

func (r *fakeRig) publish(vol, target string, readOnly bool) error {
	_, err := r.d.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: vol,
		StagingTargetPath: filepath.Join(r.dir, "staging"), TargetPath: target, VolumeCapability: mountCap(nil), Readonly: readOnly})
	return err
}

func (r *fakeRig) unpublish(vol, target string) error {
	_, err := r.d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
	return err
}

// wantCode checks err's gRPC code and that its message names what was wrong.
func wantCode(t *testing.T, what string, err error, code codes.Code, names string) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Errorf("%s: code %v (%v), want %v", what, got, err, code)
		return
	}
	if names != "" && !strings.Contains(status.Convert(err).Message(), names) {
		t.Errorf("%s: %q does not name %q", what, status.Convert(err).Message(), names)
	}
}

func TestNodeRequestsAreValidatedBeforeAnythingIsMounted(t *testing.T) {
	r := newFakeRig(t)
	ctx := context.Background()
	vol := r.volume(t, "v")
	staging, target := filepath.Join(r.dir, "staging"), filepath.Join(r.dir, "pod", "mount")
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: mountCap(nil).AccessMode}
	noMode := &csi.VolumeCapability{AccessType: mountCap(nil).AccessType}
	inline := func(attrs map[string]string) *csi.NodePublishVolumeRequest {
		attrs["csi.storage.k8s.io/ephemeral"] = "true"
		return &csi.NodePublishVolumeRequest{VolumeId: "csi-abc", TargetPath: target, VolumeCapability: mountCap(nil), VolumeContext: attrs}
	}
	stage := func(req *csi.NodeStageVolumeRequest) error { _, err := r.d.NodeStageVolume(ctx, req); return err }
	publish := func(req *csi.NodePublishVolumeRequest) error { _, err := r.d.NodePublishVolume(ctx, req); return err }
	for _, c := range []struct {
		what  string
		err   error
		names string
	}{
		{"stage without a volume id", stage(&csi.NodeStageVolumeRequest{StagingTargetPath: staging, VolumeCapability: mountCap(nil)}), "volume id"},
		{"stage without a staging path", stage(&csi.NodeStageVolumeRequest{VolumeId: vol, VolumeCapability: mountCap(nil)}), "staging target path"},
		{"stage without a capability", stage(&csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging}), "capability"},
		{"stage of a block volume", stage(&csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: block}), "block"},
		{"stage without an access mode", stage(&csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: noMode}), "access mode"},
		{"stage with an unknown option", stage(&csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: mountCap([]string{"frobnicate"})}), "frobnicate"},
		{"stage of another group", stage(&csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: mountCap([]string{"cache-group=other"})}), "other"},
		{"publish without a volume id", publish(&csi.NodePublishVolumeRequest{TargetPath: target, StagingTargetPath: staging, VolumeCapability: mountCap(nil)}), "volume id"},
		{"publish without a target", publish(&csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: mountCap(nil)}), "target path"},
		{"publish without a staging path", publish(&csi.NodePublishVolumeRequest{VolumeId: vol, TargetPath: target, VolumeCapability: mountCap(nil)}), "staging target path"},
		{"publish with a malformed option", publish(&csi.NodePublishVolumeRequest{VolumeId: vol, TargetPath: target, StagingTargetPath: staging, VolumeCapability: mountCap([]string{"commit=sometimes"})}), "commit=sometimes"},
		{"inline volume without a name", publish(inline(map[string]string{"csi.storage.k8s.io/pod.namespace": "ci"})), `"volume"`},
		{"inline volume with a path for a name", publish(inline(map[string]string{"volume": "../x", "csi.storage.k8s.io/pod.namespace": "ci"})), "volume"},
		{"inline volume without its namespace", publish(inline(map[string]string{"volume": "m2"})), "podInfoOnMount"},
		{"inline volume with a bad size", publish(inline(map[string]string{"volume": "m2", "size": "lots", "csi.storage.k8s.io/pod.namespace": "ci"})), "size"},
		{"inline volume with an unknown attribute", publish(inline(map[string]string{"volume": "m2", "colour": "red", "csi.storage.k8s.io/pod.namespace": "ci"})), "colour"},
	} {
		wantCode(t, c.what, c.err, codes.InvalidArgument, c.names)
	}
	_, err := r.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol})
	wantCode(t, "unpublish without a target", err, codes.InvalidArgument, "target path")
	_, err = r.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: filepath.Join(r.dir, "nowhere")})
	wantCode(t, "stats of a path that does not exist", err, codes.NotFound, "nowhere")
	if n := r.mount.Mounts(); n != 0 {
		t.Fatalf("%d mounts made for refused requests", n)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("a refused publish created its target (%v)", err)
	}
}

func TestNodeCallsAreIdempotent(t *testing.T) {
	r := newFakeRig(t)
	vol, other := r.volume(t, "v"), r.volume(t, "w")
	if again := r.volume(t, "v"); again != vol {
		t.Fatalf("CreateVolume again: %s, want %s", again, vol)
	}
	for range 2 {
		if err := r.stage(vol); err != nil {
			t.Fatal(err)
		}
	}
	rw, ro := filepath.Join(r.dir, "a", "mount"), filepath.Join(r.dir, "b", "mount")
	for range 2 {
		if err := r.publish(vol, rw, false); err != nil {
			t.Fatal(err)
		}
		if err := r.publish(vol, ro, true); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.mount.Mounts(); n != 2 {
		t.Fatalf("%d mounts for two targets published twice", n)
	}
	if m, _ := r.mount.Mount(rw); m.ReadOnly || m.Upper == "" {
		t.Fatalf("read-write publish: %+v, want an overlay with an upper layer", m)
	}
	if m, _ := r.mount.Mount(ro); !m.ReadOnly || m.Upper != "" {
		t.Fatalf("read-only publish: %+v, want a read-only bind", m)
	}
	wantCode(t, "another volume at a mounted target", r.publish(other, rw, false), codes.AlreadyExists, rw)
	wantCode(t, "the same volume read-only at a read-write target", r.publish(vol, rw, true), codes.AlreadyExists, rw)
	for range 2 {
		if err := r.unpublish(vol, rw); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := r.mount.Mount(rw); ok {
		t.Fatal("still mounted after unpublish")
	}
	if _, err := os.Stat(rw); !os.IsNotExist(err) {
		t.Fatalf("target left after unpublish (%v)", err)
	}
	ctx := context.Background()
	for range 2 {
		if _, err := r.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: filepath.Join(r.dir, "staging")}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: other}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}, VolumeCapabilities: []*csi.VolumeCapability{mountCap(nil)}})
	wantCode(t, "CreateVolume again with another size", err, codes.AlreadyExists, "")
}
