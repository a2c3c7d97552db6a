package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/internal/gentree"
)

// TestDemoRuns runs the demo's steps with a freshly built driver on a small
// workload and checks that they all pass and leave nothing mounted or
// running.
func TestDemoRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the demo mounts filesystems: run as root")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the driver with")
	}
	bin := filepath.Join(t.TempDir(), "cachegroup-csi")
	if out, err := exec.Command(goBin, "build", "-o", bin, "github.com/cachegroup/cachegroup/cmd/cachegroup-csi").CombinedOutput(); err != nil {
		t.Fatalf("build the driver: %v\n%s", err, out)
	}
	work := t.TempDir()
	d := &demo{
		driverPath: bin,
		workFlag:   work,
		logLevel:   2,
		spec:       gentree.Spec{Seed: 1, Files: 150, Dirs: 30, TotalBytes: 2 << 20, MaxJarBytes: 512 << 10},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err = d.run(ctx)
	d.cleanup()
	if err != nil {
		if d.drv != nil {
			t.Logf("driver log:\n%s", d.drv.LogTail(4000))
		}
		t.Fatal(err)
	}
	if left, _ := csiharness.MountsUnder(work); len(left) > 0 {
		t.Fatalf("mounts left behind: %v", left)
	}
	if d.drv.Running() {
		t.Fatal("driver still running")
	}
	if _, err := os.Stat(filepath.Join(work, "store")); !os.IsNotExist(err) {
		t.Fatalf("store not removed: %v", err)
	}
}
