package csiharness

import (
	"context"
	"errors"
	"flag"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachegroup/cachegroup/pkg/mounter"
)

// The test binary doubles as a stand-in driver process: with
// CSIHARNESS_FAKE_DRIVER=1 it serves a minimal CSI Identity service on the
// --endpoint it is given, which is enough to exercise process start, socket
// wait, Probe, RSS and stop without the real driver.
func TestMain(m *testing.M) {
	if os.Getenv("CSIHARNESS_FAKE_DRIVER") == "1" {
		os.Exit(fakeDriver())
	}
	os.Exit(m.Run())
}

type fakeIdentity struct {
	csi.UnimplementedIdentityServer
}

func (fakeIdentity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

type fakeNode struct {
	csi.UnimplementedNodeServer
	calls int
}

// NodeStageVolume answers Aborted twice (a hydration in progress), then OK.
func (n *fakeNode) NodeStageVolume(context.Context, *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	n.calls++
	if n.calls <= 2 {
		return nil, status.Error(codes.Aborted, "hydration in progress")
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

func (n *fakeNode) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	return nil, status.Errorf(codes.InvalidArgument, "unknown mount option %q", req.GetVolumeCapability().GetMount().GetMountFlags())
}

func fakeDriver() int {
	fs := flag.NewFlagSet("fake", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "")
	fs.String("mode", "", "")
	fs.String("node-id", "", "")
	fs.String("store", "", "")
	fs.String("group", "", "")
	ignoreTerm := fs.Bool("ignore-term", false, "")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	sock := strings.TrimPrefix(*endpoint, "unix://")
	l, err := net.Listen("unix", sock)
	if err != nil {
		return 1
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, fakeIdentity{})
	csi.RegisterNodeServer(srv, &fakeNode{})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		for range sig {
			if !*ignoreTerm {
				srv.Stop()
			}
		}
	}()
	_ = srv.Serve(l)
	return 0
}

func startFake(t *testing.T, args ...string) *Driver {
	t.Helper()
	t.Setenv("CSIHARNESS_FAKE_DRIVER", "1")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d, err := Start(context.Background(), Config{
		Binary:      exe,
		StoreDir:    filepath.Join(t.TempDir(), "store"),
		Args:        args,
		StopTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestStartProbeStop(t *testing.T) {
	d := startFake(t)
	if d.PID() <= 0 || !d.Running() {
		t.Fatalf("pid %d running %v", d.PID(), d.Running())
	}
	rss, err := d.PeakRSS()
	if err != nil || rss <= 0 {
		t.Fatalf("PeakRSS = %d, %v", rss, err)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if d.Running() {
		t.Fatal("still running after Stop")
	}
	if _, err := os.Stat(d.SocketPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	if rss, err := d.PeakRSS(); err != nil || rss <= 0 {
		t.Fatalf("PeakRSS after exit = %d, %v", rss, err)
	}
}

func TestStopKillsAfterTimeout(t *testing.T) {
	d := startFake(t, "--ignore-term")
	err := d.Stop()
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Stop = %v, want a kill", err)
	}
	if d.Running() {
		t.Fatal("still running after Stop")
	}
}

func TestNodeCallsRetryAndReport(t *testing.T) {
	d := startFake(t)
	defer d.Stop()
	vol := &csi.Volume{VolumeId: "v1"}
	staging := filepath.Join(t.TempDir(), "staging")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Stage(ctx, vol, staging, "no-sharing"); err != nil {
		t.Fatalf("Stage: %v", err)
	}
	if d.Retries() != 2 {
		t.Fatalf("retries = %d, want 2", d.Retries())
	}
	if st, err := os.Stat(staging); err != nil || !st.IsDir() {
		t.Fatalf("staging dir not created: %v", err)
	}
	err := d.Publish(ctx, vol, staging, filepath.Join(t.TempDir(), "pod", "mnt"), []string{"bogus"}, false)
	if status.Code(errors.Unwrap(err)) != codes.InvalidArgument || !strings.Contains(err.Error(), "NodePublishVolume(volume_id=v1") {
		t.Fatalf("Publish = %v, want InvalidArgument naming the call", err)
	}
}

func TestStartFailsWhenDriverExits(t *testing.T) {
	_, err := Start(context.Background(), Config{Binary: "/bin/false", StoreDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("Start(/bin/false) = %v", err)
	}
}

func TestWaitCommitted(t *testing.T) {
	store := t.TempDir()
	// No outbox at all: the wrong directory, an error.
	if err := WaitCommitted(context.Background(), store); err == nil {
		t.Fatal("WaitCommitted on a store without an outbox succeeded")
	}
	outbox := filepath.Join(store, "node", "outbox")
	if err := os.MkdirAll(outbox, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WaitCommitted(context.Background(), store); err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(outbox, "entry-1")
	if err := os.MkdirAll(entry, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := WaitCommitted(ctx, store)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "entry-1") {
		t.Fatalf("WaitCommitted with a pending entry = %v", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		os.RemoveAll(entry)
	}()
	if err := WaitCommitted(context.Background(), store); err != nil {
		t.Fatal(err)
	}
}

func TestReadVmHWM(t *testing.T) {
	v, err := ReadVmHWM(os.Getpid())
	if err != nil || v <= 0 {
		t.Fatalf("ReadVmHWM(self) = %d, %v", v, err)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/a\040b\011c`); got != "/a b\tc" {
		t.Fatalf("got %q", got)
	}
}

func TestMountsUnderAndUnmount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(a, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", a, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", b, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	points, err := MountsUnder(dir)
	if err != nil || len(points) != 2 || points[0] != b {
		t.Fatalf("MountsUnder = %v, %v", points, err)
	}
	if ok, err := mounter.IsMountPoint(a); !ok || err != nil {
		t.Fatalf("IsMountPoint(a) = %v, %v", ok, err)
	}
	if m, err := MountFor(filepath.Join(b, "x")); err != nil || m.FSType != "tmpfs" || m.Point != b {
		t.Fatalf("MountFor = %+v, %v", m, err)
	}
	done, err := UnmountUnder(dir)
	if err != nil || len(done) != 2 {
		t.Fatalf("UnmountUnder = %v, %v", done, err)
	}
	if points, _ := MountsUnder(dir); len(points) != 0 {
		t.Fatalf("left mounted: %v", points)
	}
}
