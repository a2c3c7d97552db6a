// Command cachegroup-demo shows a cache volume end to end on this machine:
// it starts a one-member cache group (the cachegroup-csi driver in mode all),
// creates a volume through the CSI controller, and runs two build "pods" one
// after the other through real CSI node calls and real mounts. The first pod
// fills the cache as a first Maven build would; the second, mounted after
// the first one's writes were committed, finds every file with identical
// bytes. Each step is printed with its time. It is what `make demo` runs, as
// root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/internal/gentree"
	"github.com/cachegroup/cachegroup/pkg/mounter"
)

const (
	volumeName = "maven-cache"
	quota      = 1 << 30
)

// mountFlags are the mount options of the demo's StorageClass: the default
// group, and client-only mounts as recommended for ephemeral build pods.
var mountFlags = []string{"cache-group=default", "no-sharing"}

func main() {
	driver := flag.String("driver", "./bin/cachegroup-csi", "path of the cachegroup-csi driver binary")
	work := flag.String("work", "", "work directory (default: a new temporary directory, removed at the end)")
	keep := flag.Bool("keep", false, "keep the work directory (store, driver log) at the end")
	files := flag.Int("files", 2000, "number of files the first pod writes")
	mb := flag.Int("mb", 40, "megabytes the first pod writes")
	logLevel := flag.Int("driver-v", 2, "driver log verbosity (-v); the log is in the work directory")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d := &demo{
		driverPath: *driver,
		workFlag:   *work,
		keep:       *keep,
		logLevel:   *logLevel,
		spec: gentree.Spec{
			Seed:        42,
			Files:       *files,
			Dirs:        max(3, *files*7/40),
			TotalBytes:  int64(*mb) * 1_000_000,
			MaxJarBytes: 4 << 20,
		},
	}
	err := d.run(ctx)
	d.cleanup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo FAILED: %v\n", err)
		if d.drv != nil {
			if tail := d.drv.LogTail(3000); tail != "" {
				fmt.Fprintf(os.Stderr, "\n--- driver log (tail) ---\n%s\n", tail)
			}
		}
		os.Exit(1)
	}
}

// demo holds what the demo started, so that cleanup can undo it whatever
// step failed.
type demo struct {
	driverPath, workFlag string
	keep                 bool
	logLevel             int
	spec                 gentree.Spec

	work      string
	tempWork  bool
	drv       *csiharness.Driver
	vol       *csi.Volume
	deleted   bool
	staging   string
	staged    bool
	published map[string]bool // target paths still published

	n     int
	start time.Time
}

// step runs fn as numbered step title and prints one aligned line with its
// duration and fn's detail.
func (d *demo) step(title string, fn func() (string, error)) error {
	d.n++
	t0 := time.Now()
	detail, err := fn()
	el := time.Since(t0)
	if err != nil {
		fmt.Printf("%3d  %-50s %10s  FAILED\n", d.n, title, fmtDur(el))
		return fmt.Errorf("step %d (%s): %w", d.n, title, err)
	}
	fmt.Printf("%3d  %-50s %10s  %s\n", d.n, title, fmtDur(el), detail)
	return nil
}

func (d *demo) run(ctx context.Context) error {
	d.start = time.Now()
	d.published = map[string]bool{}
	if os.Geteuid() != 0 {
		return errors.New("the demo mounts filesystems and must run as root")
	}
	if _, err := os.Stat(d.driverPath); err != nil {
		return fmt.Errorf("driver binary %s: %w (build it first: make build, or go build -o bin/cachegroup-csi ./cmd/cachegroup-csi)", d.driverPath, err)
	}
	if d.workFlag == "" {
		w, err := os.MkdirTemp("", "cachegroup-demo-")
		if err != nil {
			return err
		}
		d.work, d.tempWork = w, true
	} else {
		w, err := filepath.Abs(d.workFlag)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(w, 0o755); err != nil {
			return err
		}
		d.work = w
		// Leftovers of an earlier run in a given work directory.
		if _, err := csiharness.UnmountUnder(w); err != nil {
			return err
		}
		for _, name := range []string{"store", "kubelet", "driver.log"} {
			if err := os.RemoveAll(filepath.Join(w, name)); err != nil {
				return err
			}
		}
	}
	store := filepath.Join(d.work, "store")
	kubelet := filepath.Join(d.work, "kubelet")
	d.staging = filepath.Join(kubelet, "plugins", "kubernetes.io", "csi", "cachegroup.csi.dev", volumeName, "globalmount")
	target := func(pod string) string {
		return filepath.Join(kubelet, "pods", pod, "volumes", "kubernetes.io~csi", volumeName, "mount")
	}
	logPath := filepath.Join(d.work, "driver.log")

	fmt.Printf("cachegroup demo: a one-member cache group on this machine, two build pods one after the other\n")
	fmt.Printf("  driver   %s\n  work     %s\n  log      %s\n  options  %s\n\n", d.driverPath, d.work, logPath, strings.Join(mountFlags, ","))

	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 5*time.Minute) }

	if err := d.step(`start cache group "default" (1 member, mode all)`, func() (string, error) {
		drv, err := csiharness.Start(ctx, csiharness.Config{
			Binary:   d.driverPath,
			StoreDir: store,
			NodeID:   "demo-node",
			Group:    "default",
			Mode:     "all",
			Args:     []string{fmt.Sprintf("-v=%d", d.logLevel)},
			LogPath:  logPath,
		})
		if err != nil {
			return "", err
		}
		d.drv = drv
		return fmt.Sprintf("pid %d, %s", drv.PID(), drv.Endpoint), nil
	}); err != nil {
		return err
	}

	if err := d.step(fmt.Sprintf("create volume %q (quota 1 GiB)", volumeName), func() (string, error) {
		c, cancel := call()
		defer cancel()
		vol, err := d.drv.CreateVolume(c, volumeName, quota)
		if err != nil {
			return "", err
		}
		d.vol = vol
		return "volume_id " + vol.GetVolumeId(), nil
	}); err != nil {
		return err
	}

	if err := d.step("node: stage volume", func() (string, error) {
		c, cancel := call()
		defer cancel()
		if err := d.drv.Stage(c, d.vol, d.staging, mountFlags...); err != nil {
			return "", err
		}
		d.staged = true
		return "empty cache", nil
	}); err != nil {
		return err
	}

	pod1 := target("pod-1")
	if err := d.publish("pod 1: publish", pod1); err != nil {
		return err
	}

	var want gentree.Manifest
	if err := d.step("pod 1: first build downloads dependencies", func() (string, error) {
		t0 := time.Now()
		st, man, err := gentree.GenerateManifest(pod1, d.spec)
		if err != nil {
			return "", err
		}
		want = man
		return fmt.Sprintf("%s files in %s dirs, %s (%s)",
			commas(st.Files), commas(st.Dirs), fmtMB(st.Bytes), rate(st.Bytes, time.Since(t0))), nil
	}); err != nil {
		return err
	}

	if err := d.unpublish("pod 1: unpublish (writes go to the outbox)", pod1); err != nil {
		return err
	}

	if err := d.step("commit pod 1's writes to the cache group", func() (string, error) {
		c, cancel := call()
		defer cancel()
		if err := d.drv.WaitCommitted(c); err != nil {
			return "", err
		}
		return "outbox empty", nil
	}); err != nil {
		return err
	}

	pod2 := target("pod-2")
	if err := d.publish("pod 2: publish on a new target", pod2); err != nil {
		return err
	}

	if err := d.step("pod 2: verify and read every file", func() (string, error) {
		cold := "warm cache"
		if csiharness.DropCaches() == nil {
			cold = "caches dropped first"
		}
		t0 := time.Now()
		got, err := gentree.Scan(pod2)
		if err != nil {
			return "", err
		}
		el := time.Since(t0)
		diffs, n := gentree.Compare(want, got, 10)
		wantFiles, _, _ := want.Totals()
		files, _, bytes := got.Totals()
		if n > 0 {
			return "", fmt.Errorf("pod 2 does not see what pod 1 wrote: %d differences:\n    %s", n, strings.Join(diffs, "\n    "))
		}
		if files == 0 {
			return "", errors.New("pod 2 sees an empty volume")
		}
		return fmt.Sprintf("%s/%s files identical (bytes, mode, mtime), %s read at %s (%s)",
			commas(files), commas(wantFiles), fmtMB(bytes), rate(bytes, el), cold), nil
	}); err != nil {
		return err
	}

	if err := d.unpublish("pod 2: unpublish", pod2); err != nil {
		return err
	}
	if err := d.step("commit (pod 2 wrote nothing)", func() (string, error) {
		c, cancel := call()
		defer cancel()
		return "outbox empty", d.drv.WaitCommitted(c)
	}); err != nil {
		return err
	}

	if err := d.step("node: unstage volume", func() (string, error) {
		c, cancel := call()
		defer cancel()
		if err := d.drv.Unstage(c, d.vol, d.staging); err != nil {
			return "", err
		}
		d.staged = false
		return "", nil
	}); err != nil {
		return err
	}

	if err := d.step(fmt.Sprintf("delete volume %q", volumeName), func() (string, error) {
		c, cancel := call()
		defer cancel()
		if err := d.drv.DeleteVolume(c, d.vol); err != nil {
			return "", err
		}
		d.deleted = true
		return "", nil
	}); err != nil {
		return err
	}

	if err := d.step("stop driver", func() (string, error) {
		rss, rssErr := d.drv.PeakRSS()
		err := d.drv.Stop()
		if rss2, err2 := d.drv.PeakRSS(); err2 == nil {
			rss, rssErr = rss2, nil
		}
		if err != nil {
			return "", err
		}
		if rssErr != nil {
			return "stopped", nil
		}
		return fmt.Sprintf("stopped on SIGTERM, peak RSS %s", fmtMB(rss)), nil
	}); err != nil {
		return err
	}

	files, _, _ := want.Totals()
	fmt.Printf("\ndone in %s: pod 2 found all %s files pod 1 wrote, through a volume created and mounted with CSI calls.\n",
		fmtDur(time.Since(d.start)), commas(files))
	return nil
}

// publish publishes the volume for a pod at target with the demo's options.
func (d *demo) publish(title, target string) error {
	return d.step(title, func() (string, error) {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := d.drv.Publish(c, d.vol, d.staging, target, mountFlags, false); err != nil {
			return "", err
		}
		d.published[target] = true
		m, err := csiharness.MountFor(target)
		if err != nil {
			return "", err
		}
		if m.Point != target {
			return "", fmt.Errorf("NodePublishVolume succeeded but %s is not a mount point", target)
		}
		return fmt.Sprintf("%s mount at %s", m.FSType, shorten(target, d.work)), nil
	})
}

// unpublish unpublishes the volume at target.
func (d *demo) unpublish(title, target string) error {
	return d.step(title, func() (string, error) {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := d.drv.Unpublish(c, d.vol, target); err != nil {
			return "", err
		}
		delete(d.published, target)
		if ok, _ := mounter.IsMountPoint(target); ok {
			return "", fmt.Errorf("NodeUnpublishVolume succeeded but %s is still mounted", target)
		}
		return "", nil
	})
}

// cleanup undoes whatever is left: unpublishes and unstages through the
// driver, deletes the volume, stops the driver, unmounts anything left below
// the work directory by path, and removes the work directory (only what the
// demo made in it, when it was given with -work) unless -keep.
func (d *demo) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var problems []string
	if d.drv != nil && d.drv.Running() {
		for t := range d.published {
			if err := d.drv.Unpublish(ctx, d.vol, t); err != nil {
				problems = append(problems, err.Error())
			}
		}
		if d.staged {
			if err := d.drv.Unstage(ctx, d.vol, d.staging); err != nil {
				problems = append(problems, err.Error())
			}
		}
		if d.vol != nil && !d.deleted {
			if err := d.drv.DeleteVolume(ctx, d.vol); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	if d.drv != nil {
		if err := d.drv.Stop(); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if d.work != "" {
		left, err := csiharness.UnmountUnder(d.work)
		if len(left) > 0 {
			problems = append(problems, fmt.Sprintf("unmounted by path: %s", strings.Join(left, ", ")))
		}
		if err != nil {
			problems = append(problems, err.Error())
		}
		switch {
		case d.keep:
			fmt.Printf("work directory kept: %s\n", d.work)
		case err != nil:
			fmt.Printf("work directory not removed (mounts left): %s\n", d.work)
		case d.tempWork:
			if err := os.RemoveAll(d.work); err != nil {
				problems = append(problems, err.Error())
			}
		default:
			for _, name := range []string{"store", "kubelet", "driver.log"} {
				if err := os.RemoveAll(filepath.Join(d.work, name)); err != nil {
					problems = append(problems, err.Error())
				}
			}
		}
	}
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "cleanup: %s\n", p)
	}
}

func shorten(p, base string) string {
	if r, err := filepath.Rel(base, p); err == nil && !strings.HasPrefix(r, "..") {
		return "<work>/" + r
	}
	return p
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	case d < time.Minute:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return d.Round(time.Second).String()
	}
}

func fmtMB(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }

func rate(b int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MB/s", float64(b)/1e6/d.Seconds())
}

// commas formats n with thousands separators.
func commas(n int) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + commas(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
