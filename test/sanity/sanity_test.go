// Package sanity runs the CSI conformance suite (csi-sanity, from
// kubernetes-csi/csi-test) against the cachegroup driver, served in-process on
// a unix socket with a private store, and with real mounts.
package sanity

import (
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/moby/sys/mountinfo"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/driver"
)

// driverLog keeps the driver's log: csi-sanity makes many calls that are
// meant to fail, and each failure is logged, which would drown the suite's own
// report on stderr.
var driverLog = flag.String("driver-log", "", "write the driver's log to this file (default: discard)")

// skipped collects, per reason, the specs csi-sanity skipped, so that a run
// says what it did not check and why.
var skipped = map[string][]string{}

// ran is set once the suite has run in this process.
var ran bool

var _ = ginkgo.ReportAfterEach(func(r ginkgo.SpecReport) {
	switch r.State {
	case types.SpecStateSkipped:
		skipped[r.Failure.Message] = append(skipped[r.Failure.Message], r.FullText())
	case types.SpecStatePending:
		skipped["pending in csi-test itself"] = append(skipped["pending in csi-test itself"], r.FullText())
	}
})

// TestSanity runs every csi-sanity spec against one driver in mode all.
//
// No spec is focused or skipped here (no -ginkgo.focus or -ginkgo.skip):
// csi-sanity skips on its own the specs of capabilities the driver does not
// advertise, and the test logs each of them with csi-sanity's reason.
func TestSanity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("csi-sanity publishes volumes with real overlay and bind mounts: run as root")
	}
	if ran {
		t.Skip("Ginkgo runs its suite once per process: use -count=1")
	}
	ran = true
	quietDriverLog(t)
	plainGinkgoOutput(t)

	// Not t.TempDir: its removal would walk into any mount a failed spec
	// left behind. cleanup unmounts everything below dir first.
	dir, err := os.MkdirTemp("", "cachegroup-sanity-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanup(t, dir) })

	d, err := driver.New(driver.Config{
		Mode:   driver.ModeAll,
		Member: cachegroup.Config{NodeID: "sanity-node", Dir: filepath.Join(dir, "store")},
	})
	if err != nil {
		t.Fatalf("new driver: %v", err)
	}
	endpoint := "unix://" + filepath.Join(dir, "csi.sock")
	l, err := driver.Listen(endpoint)
	if err != nil {
		t.Fatalf("listen on %s: %v", endpoint, err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(l) }()
	t.Cleanup(func() {
		d.Stop()
		if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("serve: %v", err)
		}
	})

	cfg := sanity.NewTestConfig() // IdempotentCount > 0: the idempotency specs run
	cfg.Address = endpoint
	// csi-sanity creates these itself before each spec (not their parents)
	// and removes them after it; the driver creates TargetPath/target.
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	// The default 10 GiB TestVolumeSize stays: a quota is bookkeeping and
	// reserves no disk space.
	sanity.Test(t, cfg)

	reasons := make([]string, 0, len(skipped))
	for r := range skipped {
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	for _, r := range reasons {
		t.Logf("not run: %2d spec(s): %s", len(skipped[r]), r) // -ginkgo.v names them
	}
}

// plainGinkgoOutput turns off Ginkgo's colours, which only clutter logs,
// unless -ginkgo.no-color was given.
func plainGinkgoOutput(t *testing.T) {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "ginkgo.no-color" })
	if !given {
		if err := flag.Set("ginkgo.no-color", "true"); err != nil {
			t.Fatal(err)
		}
	}
}

// quietDriverLog sends klog output to -driver-log, every call included, or
// discards it.
func quietDriverLog(t *testing.T) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	settings := map[string]string{"logtostderr": "false", "alsologtostderr": "false",
		"stderrthreshold": "FATAL", "one_output": "true"}
	var w io.Writer = io.Discard
	if *driverLog != "" {
		f, err := os.Create(*driverLog)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { klog.Flush(); f.Close() })
		w = f
		settings["v"] = "3" // the driver logs each CSI call at 3
	}
	for k, v := range settings {
		if err := fs.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	klog.SetOutput(w)
}

// cleanup unmounts whatever is still mounted below dir, deepest first, and
// removes dir unless something could not be unmounted.
func cleanup(t *testing.T, dir string) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Errorf("list mounts below %s: %v (left in place)", dir, err)
		return
	}
	var points []string
	for _, m := range mounts {
		points = append(points, m.Mountpoint)
	}
	// Deepest first; a path mounted several times is listed once per mount.
	sort.Slice(points, func(i, j int) bool { return strings.Count(points[i], "/") > strings.Count(points[j], "/") })
	busy := false
	for _, p := range points {
		t.Errorf("left mounted after the suite: %s", p)
		if err := unix.Unmount(p, 0); err != nil {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				t.Errorf("unmount %s: %v", p, err)
				busy = true
			}
		}
	}
	if busy {
		t.Errorf("%s kept: mounts below it could not be removed", dir)
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Errorf("remove %s: %v", dir, err)
	}
}
