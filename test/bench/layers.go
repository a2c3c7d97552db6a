package main

// The layers part: what a pod start costs after a commit on a node that has
// the previous generation (a thin layer of the change) next to a fresh stage
// of the same generation (a flat snapshot of the whole tree), cold walks
// and reads through a stack at its deepest and through a flat snapshot
// against the raw disk, and 16 pods of one volume starting and ending at
// once on one node.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/internal/gentree"
)

// Targets of the layers part (issue 11, item 6).
const (
	targetLayerStartP50  = 50 * time.Millisecond
	targetLayerShare     = 0.10 // pod start after a 1% commit / fresh stage
	targetFlatWalkRatio  = 1.15
	targetDeepWalkRatio  = 1.30
	targetLayerReadRatio = 1.10
	targetBurstPod       = 100 * time.Millisecond
	burstPods            = 16
	targetStreamRSS      = 256e6 // bytes: peak RSS of a commit, and of a fresh stage
)

// layerSpec is a tree of about n small files, 8 a directory (the generator
// makes about 8 files a directory whatever it is asked for).
func layerSpec(n int) gentree.Spec {
	return gentree.Spec{Seed: 20261202, Files: n * 5 / 4, Dirs: n / 8, TotalBytes: int64(n) * 1 << 10, MaxJarBytes: 64 << 10}
}

// runLayers runs the layers part for a tree of n files, adding its rows to
// b's table.
func (b *bench) runLayers(ctx context.Context, n int) (err error) {
	c := b.cfg
	work, err := filepath.Abs(c.work)
	if err != nil {
		return err
	}
	lb := &bench{cfg: c, start: b.start, published: map[string]bool{}, staged: map[string]bool{},
		runDir: filepath.Join(work, "layers-run")}
	lb.cfg.spec, lb.cfg.specName = layerSpec(n), fmt.Sprintf("layers-%d", n)
	lb.tree = filepath.Join(work, "tree-"+lb.cfg.specName)
	lb.treeStamp = lb.tree + ".stamp.json"
	defer func() {
		lb.cleanup()
		b.rows = append(b.rows, lb.rows...)
		b.notes = append(b.notes, lb.notes...)
	}()
	if err := lb.prepareTree(); err != nil {
		return err
	}
	if left, err := csiharness.UnmountUnder(lb.runDir); err != nil {
		return err
	} else if len(left) > 0 {
		lb.logf("unmounted %d mounts left by an earlier run", len(left))
	}
	if err := os.RemoveAll(lb.runDir); err != nil {
		return err
	}
	kubelet := filepath.Join(lb.runDir, "kubelet")
	staging := filepath.Join(kubelet, "plugins", "kubernetes.io", "csi", "cachegroup.csi.dev", "layers", "globalmount")
	pod := 0
	target := func() string {
		pod++
		return filepath.Join(kubelet, "pods", fmt.Sprintf("p%04d", pod), "volumes", "kubernetes.io~csi", "c", "mount")
	}
	store := filepath.Join(lb.runDir, "store")
	lb.drv, err = csiharness.Start(ctx, csiharness.Config{Binary: c.driver, StoreDir: store, NodeID: "bench-node",
		Group: "default", Mode: "all", Args: []string{fmt.Sprintf("-v=%d", c.logLevel)},
		LogPath: filepath.Join(lb.runDir, "driver.log")})
	if err != nil {
		return err
	}
	if lb.vol, err = lb.drv.CreateVolume(ctx, "layers", 8*lb.stats.Bytes+1<<30); err != nil {
		return err
	}
	files, err := regularFiles(lb.tree)
	if err != nil {
		return err
	}
	// Import the tree.
	if err := lb.stage(ctx, staging); err != nil {
		return err
	}
	imp := target()
	if err := lb.publish(ctx, staging, imp, mountFlags, false); err != nil {
		return err
	}
	if _, err := copyTree(ctx, lb.tree, imp); err != nil {
		return err
	}
	// The driver's peak RSS while it commits the whole tree, then while it
	// stages it fresh (issue 11, item 3).
	if err := lb.drv.ResetPeakRSS(); err != nil {
		return err
	}
	d, err := lb.unpublishAndCommit(ctx, imp)
	if err != nil {
		return err
	}
	lb.logf("layers %s: imported %s files, committed in %s%s", commas(n), commas(len(files)), secs(d), lb.rssNote())
	lb.addRSS(fmt.Sprintf("[%s files] driver peak RSS, commit of the whole tree", commas(n)))
	// A fresh stage of the head: nothing of the volume on the node. A
	// compaction still running keeps what it reads until it ends, and
	// then its snapshot: unstage again until nothing is left.
	nodeDir := filepath.Join(store, "node")
	freshStage := func() (time.Duration, error) {
		for t0 := time.Now(); ; {
			if err := lb.unstage(ctx, staging); err != nil {
				return 0, err
			}
			if left := snapshotsOn(nodeDir); left == 0 {
				break
			} else if time.Since(t0) > 10*time.Minute {
				return 0, fmt.Errorf("%d snapshots still on the node 10 minutes after unstage", left)
			}
			time.Sleep(500 * time.Millisecond)
		}
		t0 := time.Now()
		err := lb.stage(ctx, staging)
		return time.Since(t0), err
	}
	if err := lb.drv.ResetPeakRSS(); err != nil {
		return err
	}
	first, err := freshStage()
	if err != nil {
		return err
	}
	lb.logf("layers %s: fresh stage in %s%s", commas(n), secs(first), lb.rssNote())
	lb.addRSS(fmt.Sprintf("[%s files] driver peak RSS, fresh stage of the whole tree", commas(n)))
	gen := 0
	// change rewrites k files spread over the tree through the pod's mount.
	change := func(mount string, k int) error {
		gen++
		for i := 0; i < k; i++ {
			p := files[(i*len(files)/k+gen*7919)%len(files)]
			if err := os.WriteFile(filepath.Join(mount, p), []byte(fmt.Sprintf("generation %d file %d\n", gen, i)), 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	// commit makes a pod change k files and commits it.
	commit := func(k int) error {
		t := target()
		if err := lb.publish(ctx, staging, t, mountFlags, false); err != nil {
			return err
		}
		if err := change(t, k); err != nil {
			return err
		}
		_, err := lb.unpublishAndCommit(ctx, t)
		return err
	}

	starts := map[string]time.Duration{}
	fresh := map[string]time.Duration{}
	kinds := []struct {
		name string
		k    int
		reps int
	}{{"1 file", 1, 7}, {"1%", max(n/100, 1), 3}, {"10%", max(n/10, 1), 2}}
	for _, kind := range kinds {
		if err := commit(kind.k); err != nil {
			return err
		}
		var ds []time.Duration
		for r := 0; r < kind.reps; r++ {
			// The timed pod start: the commit before it changed kind.k files.
			t := target()
			retries := lb.drv.Retries()
			t0 := time.Now()
			if err := lb.publish(ctx, staging, t, mountFlags, false); err != nil {
				return err
			}
			ds = append(ds, time.Since(t0))
			depth := stackDepth(t)
			if err := change(t, kind.k); err != nil {
				return err
			}
			if _, err := lb.unpublishAndCommit(ctx, t); err != nil {
				return err
			}
			lb.logf("layers %s: pod start after a %s commit: %s (%d layers, %d retries)", commas(n), kind.name, ms(ds[r]), depth, lb.drv.Retries()-retries)
		}
		starts[kind.name] = percentile(ds, 50)
		fs, err := freshStage()
		if err != nil {
			return err
		}
		fresh[kind.name] = fs
		lb.logf("layers %s: fresh stage of the same generation: %s", commas(n), secs(fs))
	}
	p1 := starts["1 file"]
	lb.rows = append(lb.rows, row{fmt.Sprintf("[%s files] pod start after a 1-file commit, p50 of %d", commas(n), kinds[0].reps),
		secs(fresh["1 file"]) + " (fresh stage)", ms(p1), "", "≤ " + ms(targetLayerStartP50), met(p1 <= targetLayerStartP50)})
	for _, k := range kinds[1:] {
		r := float64(starts[k.name]) / float64(fresh[k.name])
		res, tgt := "(info)", ""
		if k.name == "1%" {
			res, tgt = met(r <= targetLayerShare), fmt.Sprintf("≤ %.2f", targetLayerShare)
		}
		lb.rows = append(lb.rows, row{fmt.Sprintf("[%s files] pod start after a %s commit, p50 of %d / fresh stage", commas(n), k.name, k.reps),
			secs(fresh[k.name]), ms(starts[k.name]), fmt.Sprintf("%.3f", r), tgt, res})
	}

	// The deepest stack: commits of 1% until a pod's stack has compactDepth
	// thin layers, then a flat snapshot once the compaction is done.
	if err := commit(max(n/100, 1)); err != nil {
		return err
	}
	roFlags := append(slices.Clone(mountFlags), "commit=never")
	var deep string
	for i := 0; i < 10 && deep == ""; i++ {
		t := target()
		if err := lb.publish(ctx, staging, t, roFlags, true); err != nil {
			return err
		}
		if stackDepth(t) >= 5 { // 4 thin layers over a flat snapshot
			deep = t
			break
		}
		if err := lb.unpublish(ctx, t); err != nil {
			return err
		}
		if err := commit(max(n/100, 1)); err != nil {
			return err
		}
	}
	if deep == "" {
		return errors.New("layers: no stack reached 4 thin layers")
	}
	var flat string
	for t0 := time.Now(); flat == "" && time.Since(t0) < 10*time.Minute; {
		t := target()
		if err := lb.publish(ctx, staging, t, roFlags, true); err != nil {
			return err
		}
		if stackDepth(t) == 1 {
			flat = t
			break
		}
		if err := lb.unpublish(ctx, t); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
	if flat == "" {
		return errors.New("layers: the compaction made no flat snapshot in 10 minutes")
	}
	lb.logf("layers %s: deepest stack %d layers, compacted to a flat snapshot", commas(n), stackDepth(deep))
	if !c.layersCold {
		lb.notes = append(lb.notes, "-layers-cold=false: no cold walks and reads through stacks")
		return lb.bursts(ctx, n, staging, target)
	}
	mounts := []struct{ name, root string }{{"raw", lb.tree}, {"deepest", deep}, {"flat", flat}}
	walks, reads := map[string][]treeCount{}, map[string][]treeCount{}
	buf := make([]byte, 1<<20)
	for r := 0; r < c.rounds; r++ {
		for k := range mounts {
			m := mounts[(k+r)%len(mounts)]
			w, err := cold(!c.noDrop, func() (treeCount, error) { return metadataWalk(ctx, m.root) })
			if err != nil {
				return err
			}
			rd, err := cold(!c.noDrop, func() (treeCount, error) { return readEvery(ctx, m.root, buf) })
			if err != nil {
				return err
			}
			walks[m.name], reads[m.name] = append(walks[m.name], w), append(reads[m.name], rd)
			lb.logf("layers %s: round %d %-8s walk %s (%s entries) read %s%s", commas(n), r+1, m.name, secs(w.Dur),
				commas(w.Files+w.Dirs), secs(rd.Dur), warmNote(w.Cold && rd.Cold))
		}
	}
	for _, m := range []struct {
		name       string
		walkTarget float64
	}{{"flat", targetFlatWalkRatio}, {"deepest", targetDeepWalkRatio}} {
		// The commits rewrote files with other bytes: the same names count.
		if raw, got := walks["raw"][0], walks[m.name][0]; raw.Files != got.Files || raw.Dirs != got.Dirs {
			return fmt.Errorf("%s mount has %d files, %d dirs; the raw tree %d, %d", m.name, got.Files, got.Dirs, raw.Files, raw.Dirs)
		}
		label := "flat snapshot"
		if m.name == "deepest" {
			label = fmt.Sprintf("stack of %d layers", stackDepth(deep))
		}
		lb.addRatio(fmt.Sprintf("[%s files] cold walk, %s", commas(n), label), secs(medianCount(walks["raw"]).Dur),
			secs(medianCount(walks[m.name]).Dur), pairedRatio(walks[m.name], walks["raw"]), m.walkTarget)
		lb.addRatio(fmt.Sprintf("[%s files] cold read, %s", commas(n), label), secs(medianCount(reads["raw"]).Dur),
			secs(medianCount(reads[m.name]).Dur), pairedRatio(reads[m.name], reads["raw"]), targetLayerReadRatio)
	}
	for _, t := range []string{deep, flat} {
		if err := lb.unpublish(ctx, t); err != nil {
			return err
		}
	}

	if err := lb.bursts(ctx, n, staging, target); err != nil {
		return err
	}
	if rss, err := lb.drv.PeakRSS(); err == nil {
		lb.notes = append(lb.notes, fmt.Sprintf("layers part, %s files: driver peak RSS %s", commas(n), mb(rss)))
	}
	return nil
}

// addRSS adds a row of the driver's peak RSS since it was last reset.
func (b *bench) addRSS(name string) {
	rss, err := b.drv.PeakRSS()
	if err != nil {
		b.notes = append(b.notes, fmt.Sprintf("%s: %v", name, err))
		return
	}
	b.rows = append(b.rows, row{name, "", mb(rss), "", "≤ " + mb(targetStreamRSS), met(rss <= targetStreamRSS)})
}

// bursts starts 16 pods of the staged volume at once and ends them at once,
// twice: the second time the node has learnt the burst (it makes as many
// layer disks ahead as pods found none the first time).
func (b *bench) bursts(ctx context.Context, n int, staging string, target func() string) error {
	for _, round := range []string{"first burst", "next burst"} {
		if err := b.burst(ctx, n, round, staging, target); err != nil {
			return err
		}
	}
	return nil
}

// burst starts burstPods pods of the staged volume at once, each retrying
// as the kubelet does, then ends them at once, and adds the per-pod p50 and
// p99 of both, named for round.
func (b *bench) burst(ctx context.Context, n int, round, staging string, target func() string) error {
	targets := make([]string, burstPods)
	for i := range targets {
		targets[i] = target()
		if err := os.MkdirAll(filepath.Dir(targets[i]), 0o750); err != nil {
			return err
		}
	}
	run := func(call func(i int) error) ([]time.Duration, int, error) {
		ds := make([]time.Duration, burstPods)
		errs := make([]error, burstPods)
		tries := make([]int, burstPods)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range targets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				t0 := time.Now()
				tries[i], errs[i] = kubeletRetry(ctx, func() error { return call(i) })
				ds[i] = time.Since(t0)
			}()
		}
		close(start)
		wg.Wait()
		retries := 0
		for _, t := range tries {
			retries += t
		}
		return ds, retries, errors.Join(errs...)
	}
	vol := b.vol
	starts, r1, err := run(func(i int) error {
		_, err := b.drv.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(),
			StagingTargetPath: staging, TargetPath: targets[i], VolumeCapability: csiharness.Capability(mountFlags, false),
			VolumeContext: vol.GetVolumeContext()})
		return err
	})
	for _, t := range targets {
		b.published[t] = true
	}
	if err != nil {
		return fmt.Errorf("burst publish: %w", err)
	}
	for i, t := range targets {
		if err := os.WriteFile(filepath.Join(t, fmt.Sprintf("burst-%d", i)), []byte("x"), 0o644); err != nil {
			return err
		}
	}
	ends, r2, err := run(func(i int) error {
		_, err := b.drv.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: targets[i]})
		return err
	})
	if err != nil {
		return fmt.Errorf("burst unpublish: %w", err)
	}
	for _, t := range targets {
		delete(b.published, t)
	}
	if err := b.waitCommitted(ctx); err != nil {
		return err
	}
	for _, x := range []struct {
		what    string
		ds      []time.Duration
		retries int
	}{{"start", starts, r1}, {"end", ends, r2}} {
		p50, p99 := percentile(x.ds, 50), percentile(x.ds, 99)
		b.rows = append(b.rows, row{fmt.Sprintf("[%s files] %d pods of one volume %s at once, %s, p50 / p99 per pod (%d retries)", commas(n), burstPods, x.what, round, x.retries),
			"", ms(p50) + " / " + ms(p99), "", "≤ " + ms(targetBurstPod), met(p50 <= targetBurstPod && p99 <= targetBurstPod)})
	}
	return nil
}

// kubeletRetry calls fn until it succeeds, waiting as the kubelet's
// operation executor does after a retryable failure (500 ms, doubling), and
// returns how many times it retried.
func kubeletRetry(ctx context.Context, fn func() error) (int, error) {
	backoff := 500 * time.Millisecond
	for retries := 0; ; retries++ {
		err := fn()
		if c := status.Code(err); err == nil || c != codes.Aborted && c != codes.Unavailable && c != codes.DeadlineExceeded {
			return retries, err
		}
		select {
		case <-ctx.Done():
			return retries, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Minute)
	}
}

// stackDepth returns how many lower layers the mount at target has: 1 for
// a bind of a flat snapshot, 0 if it cannot tell.
func stackDepth(target string) int {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0
	}
	depth := 0
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+3 >= len(f) || f[4] != target {
			continue
		}
		depth = 1 // the last mount at target is the one seen there
		for _, o := range strings.Split(f[sep+3], ",") {
			if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				depth = strings.Count(v, ":") + 1
			}
		}
	}
	return depth
}

// regularFiles lists the regular files below dir, relative to it.
func regularFiles(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out, err
}

// snapshotsOn counts the flat snapshots, thin layers and work directories
// of the node tier at dir.
func snapshotsOn(dir string) int {
	n := 0
	for _, sub := range []string{"snaps", "layers"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range ents {
			if e.IsDir() {
				n++
			}
		}
	}
	return n
}
