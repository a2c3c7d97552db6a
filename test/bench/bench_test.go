package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/internal/cluster"
	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/internal/gentree"
)

// buildDriver builds cmd/cachegroup-csi into a temporary directory.
func buildDriver(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the driver with")
	}
	bin := filepath.Join(t.TempDir(), "cachegroup-csi")
	out, err := exec.Command(goBin, "build", "-o", bin, "github.com/cachegroup/cachegroup/cmd/cachegroup-csi").CombinedOutput()
	if err != nil {
		t.Fatalf("build the driver: %v\n%s", err, out)
	}
	return bin
}

// TestMain lets the test binary serve as the raw network sender and
// receiver of the group part, as the benchmark program does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == rawHelper {
		os.Exit(rawMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestBenchRuns runs the benchmark end to end on a tiny tree, as `-small`
// does but smaller still and without dropping the machine's caches, the
// single-node part and then the group part (without the real build, which
// needs the module proxy): it checks that the benchmark runs, not the
// figures.
func TestBenchRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the benchmark mounts filesystems: run as root")
	}
	spec := gentree.SmallSpec()
	spec.Files, spec.Dirs, spec.TotalBytes, spec.BigFileBytes = 200, 40, 1<<20, 2<<20
	work := t.TempDir()
	b := &bench{
		cfg: config{
			driver:      buildDriver(t),
			work:        work,
			small:       true,
			cycles:      3,
			rounds:      1,
			commitFiles: 100,
			spec:        spec,
			specName:    "test",
			noDrop:      true,
			single:      true,
			group:       true,
			groupBuild:  false,
			// A stuck sharing burst (reported as such) should not hold
			// the test up long.
			burstDeadline: 15 * time.Second,
			joinSettle:    time.Minute,
		},
		start:     time.Now(),
		published: map[string]bool{},
		staged:    map[string]bool{},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := b.run(ctx)
	b.cleanup()
	if err != nil {
		if b.drv != nil {
			t.Logf("driver log:\n%s", b.drv.LogTail(4000))
		}
		t.Fatal(err)
	}
	if len(b.rows) < 8 {
		t.Fatalf("only %d result rows", len(b.rows))
	}
	if left, _ := csiharness.MountsUnder(work); len(left) > 0 {
		t.Fatalf("mounts left behind: %v", left)
	}
	if b.drv.Running() {
		t.Fatal("driver still running")
	}

	if err := cluster.Prerequisites(); err != nil {
		t.Logf("group part skipped: %v", err)
		return
	}
	gb := &groupBench{b: b, stopped: map[string]bool{}}
	err = gb.run(ctx)
	gb.cleanup(err != nil)
	if err != nil {
		t.Fatalf("group part: %v", err)
	}
	gb.printTable()
	if len(gb.rows) < 10 {
		t.Fatalf("only %d group result rows", len(gb.rows))
	}
	for _, r := range gb.rows {
		if r.result == "FAILED" {
			t.Logf("the benchmark reports a failure: %s: %s", r.name, r.got)
		}
	}
	if left, _ := csiharness.MountsUnder(work); len(left) > 0 {
		t.Fatalf("mounts left behind by the group part: %v", left)
	}
	for _, m := range gb.cl.Hosts {
		if m.Running() {
			t.Fatalf("%s still running", m.Name)
		}
		if _, err := os.Stat("/run/netns/" + m.NS); err == nil {
			t.Fatalf("network namespace %s left behind", m.NS)
		}
		if cluster.LinkExists(m.Veth) {
			t.Fatalf("link %s left behind", m.Veth)
		}
	}
	if cluster.LinkExists(gb.cl.Bridge) {
		t.Fatalf("bridge %s left behind", gb.cl.Bridge)
	}
}

// TestLayersBenchRuns runs the layers part end to end on a tiny tree
// without dropping caches: it checks that it runs and cleans up, not the
// figures.
func TestLayersBenchRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the benchmark mounts filesystems: run as root")
	}
	work := t.TempDir()
	b := &bench{cfg: config{driver: buildDriver(t), work: work, small: true, rounds: 1, noDrop: true, layersCold: true},
		start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := b.runLayers(ctx, 400); err != nil {
		t.Fatal(err)
	}
	if len(b.rows) != 13 { // two bursts of 16 pods, each a start row and an end row
		t.Fatalf("%d result rows, want 13", len(b.rows))
	}
	if left, _ := csiharness.MountsUnder(work); len(left) > 0 {
		t.Fatalf("mounts left behind: %v", left)
	}
}
