package driver

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
	"github.com/cachegroup/cachegroup/pkg/mounter"
)

// newWireRig is a fake rig whose driver reaches the volumes through the
// peer protocol: it is a client-only node of a group whose one member, a
// second driver, serves them over HTTP, so an id reaches a URL.
func newWireRig(t *testing.T) (client, home *fakeRig) {
	t.Helper()
	auth := wire.NewSecretAuth([]byte("0123456789abcdef-test-secret"))
	home = &fakeRig{mount: &mounter.Fake{}, dir: t.TempDir()}
	hd, err := New(Config{Mode: ModeAll, Mounter: home.mount,
		Member: cachegroup.Config{NodeID: "home", Dir: filepath.Join(home.dir, "store"), Auth: auth}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hd.Stop)
	home.d = hd
	srv := httptest.NewServer(hd.member.PeerHandler())
	t.Cleanup(srv.Close)
	client = &fakeRig{mount: &mounter.Fake{}, dir: t.TempDir()}
	cd, err := New(Config{Mode: ModeAll, Mounter: client.mount, Member: cachegroup.Config{NodeID: "client",
		Dir: filepath.Join(client.dir, "store"), Auth: auth, ClientOnly: true,
		Members: []string{"home=" + strings.TrimPrefix(srv.URL, "http://")}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cd.Stop)
	client.d = cd
	return client, home
}

// Every volume and snapshot id a call takes is checked before anything is
// done with it: an id no volume or snapshot can have names none, however it
// would read as a path or in a URL.
func TestIDsThatCannotExistNameNothing(t *testing.T) {
	client, home := newWireRig(t)
	ctx := context.Background()
	vol := client.volume(t, "v")
	exists := func(what string) {
		t.Helper()
		if _, err := client.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: vol,
			VolumeCapabilities: []*csi.VolumeCapability{mountCap(nil)}}); err != nil {
			t.Fatalf("after %s, volume %s is gone: %v", what, vol, err)
		}
	}
	// Deletes of such ids succeed (nothing such exists) and delete nothing.
	outside := t.TempDir()
	must(t, os.WriteFile(filepath.Join(outside, "x.json"), []byte("{}"), 0o644))
	for _, r := range []*fakeRig{client, home} {
		for _, id := range []string{vol + "?z", vol + "#z", vol + "/../" + vol, "../volumes/" + vol} {
			_, err := r.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			wantCode(t, "DeleteVolume("+id+")", err, codes.OK, "")
			exists("DeleteVolume(" + id + ")")
		}
		for _, id := range []string{"../volumes/" + vol, "../../../../../../../../" + outside + "/x", "snap-x?y"} {
			_, err := r.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
			wantCode(t, "DeleteSnapshot("+id+")", err, codes.OK, "")
			exists("DeleteSnapshot(" + id + ")")
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "x.json")); err != nil {
		t.Fatalf("DeleteSnapshot removed a file outside the store: %v", err)
	}
	// Lookups of such ids are NotFound.
	target := filepath.Join(client.dir, "pod", "mount")
	for _, id := range []string{vol + "#x", vol + "?x", vol + "/", "../" + vol} {
		wantCode(t, "publish of "+id, client.publish(id, target, false), codes.NotFound, "")
		wantCode(t, "stage of "+id, client.stage(id), codes.NotFound, "")
		_, err := client.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
		wantCode(t, "stats of "+id, err, codes.NotFound, "")
		_, err = client.d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
		wantCode(t, "expand of "+id, err, codes.NotFound, "")
		_, err = client.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id,
			VolumeCapabilities: []*csi.VolumeCapability{mountCap(nil)}})
		wantCode(t, "validate of "+id, err, codes.NotFound, "")
		_, err = client.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: id})
		wantCode(t, "snapshot of "+id, err, codes.NotFound, "")
	}
	snap, err := client.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: vol})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{snap.Snapshot.SnapshotId + "?x", snap.Snapshot.SnapshotId + "#x", "../snapshots/" + snap.Snapshot.SnapshotId} {
		_, err := client.d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: []*csi.VolumeCapability{mountCap(nil)},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}})
		wantCode(t, "clone of snapshot "+id, err, codes.NotFound, "")
	}
	if n := client.mount.Mounts(); n != 0 {
		t.Fatalf("%d mounts made for ids that cannot exist", n)
	}
	exists("the lookups")
}

// An inline volume's id is the kubelet's handle: it is not checked as one
// of ours, and its stats are found by it.
func TestInlineHandlesAreNotVolumeIDs(t *testing.T) {
	r := newFakeRig(t)
	ctx := context.Background()
	target := filepath.Join(r.dir, "pod", "mount")
	_, err := r.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-0123abc", TargetPath: target,
		VolumeCapability: mountCap(nil), VolumeContext: map[string]string{attrEphemeral: "true", attrNamespace: "ci", attrVolume: "gomod"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "csi-0123abc", VolumePath: target}); err != nil {
		t.Fatalf("stats of an inline volume by its handle: %v", err)
	}
	if err := r.unpublish("csi-0123abc", target); err != nil {
		t.Fatal(err)
	}
}

func TestCreateVolumeRefusesBadNamesAndSizes(t *testing.T) {
	r := newFakeRig(t)
	ctx := context.Background()
	create := func(name string, bytes int64) error {
		_, err := r.d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: bytes},
			VolumeCapabilities: []*csi.VolumeCapability{mountCap(nil)}})
		return err
	}
	wantCode(t, "a name with a NUL byte", create("pvc-\x00-1", 1<<20), codes.InvalidArgument, "NUL")
	wantCode(t, "a name of 129 bytes", create(strings.Repeat("n", 129), 1<<20), codes.InvalidArgument, "128")
	wantCode(t, "2 PiB", create("huge", 2<<50), codes.InvalidArgument, "1 PiB")
	if err := create(strings.Repeat("n", 128), 1<<50); err != nil {
		t.Fatalf("a name of 128 bytes and 1 PiB: %v", err)
	}
	_, err := r.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s\x00", SourceVolumeId: r.volume(t, "v")})
	wantCode(t, "a snapshot name with a NUL byte", err, codes.InvalidArgument, "NUL")
}
