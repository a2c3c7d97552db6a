// Command bench measures cachegroup against the raw local disk on this
// machine, side by side in one run, and prints a table of the figures, their
// ratios and the project's targets (met or not): cold metadata walk and cold
// read of a Maven-like tree through an overlay publish and through a
// read-only publish vs the raw tree, warm publish latency, staging a new
// snapshot, committing a 5,000-file upper layer, and the driver's peak RSS.
//
// Then (unless -group=false) the group part (group.go): a cache group of
// members on this machine, each the driver binary in a network namespace of
// its own on one bridge (internal/cluster): cold hydration of the tree from
// the group's owners next to the raw veth throughput between the same
// namespaces; three hosts hydrating one snapshot at once with and without
// sharing, with the bytes each member served; the fraction of blob copies
// that move when a fourth member joins, on the real group and on a
// simulated 100-member ring; and a real build's cold and warm seconds (go
// mod download into a mounted volume). Both tables are printed at the end.
//
// It is what `make bench` runs, as root; -small is a quick smoke run.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/internal/gentree"
)

// Targets on this machine (issue 2, item 9).
const (
	targetOverlayRatio  = 1.15
	targetReadOnlyRatio = 1.05
	targetPublishP50    = 50 * time.Millisecond
	targetStageRate     = 20000 // files/s
	targetCommitRate    = 5000  // files/s
	targetPeakRSS       = 100e6 // bytes
)

// stampVersion changes when the generator's output for a given spec, or the
// way it writes it, does.
const stampVersion = 2

var mountFlags = []string{"cache-group=default", "no-sharing"}

type config struct {
	driver      string
	work        string
	small       bool
	cycles      int
	rounds      int
	commitFiles int
	logLevel    int
	spec        gentree.Spec
	specName    string
	noDrop      bool // do not drop the caches (tests: the machine is shared)
	single      bool // run the single-node part
	layers      bool // run the layers part
	layerFiles  int  // files of its tree
	layersCold  bool // its cold walks and reads
	// layersMillion runs it again on 1,000,000 files.
	layersMillion bool
	group         bool // run the group part after it
	groupBuild    bool // the group part's real build (needs the module proxy)
	joinSettle    time.Duration
	// burstDeadline is the least time the sharing burst gets (4× the
	// no-sharing one if longer) before it counts as stuck.
	burstDeadline time.Duration
	// profileDir, if set, receives a system-wide perf profile of the
	// group part's cold hydration.
	profileDir string
}

func main() {
	var c config
	flag.StringVar(&c.driver, "driver", "./bin/cachegroup-csi", "path of the cachegroup-csi driver binary")
	flag.StringVar(&c.work, "work", "/var/tmp/cachegroup-bench", "work directory: the generated tree is kept here between runs")
	flag.BoolVar(&c.small, "small", false, "a tiny tree and few repetitions: a quick check that the benchmark runs")
	flag.IntVar(&c.cycles, "cycles", 50, "publish+unpublish cycles for the warm publish latency (-small: 10)")
	flag.IntVar(&c.rounds, "rounds", 5, "repetitions of each cold walk and read; the median counts (-small: 1)")
	flag.IntVar(&c.commitFiles, "commit-files", 5000, "files the pod writes for the commit measurement (-small: 500)")
	flag.IntVar(&c.logLevel, "driver-v", 1, "driver log verbosity (-v); the log is <work>/run/driver.log")
	flag.BoolVar(&c.single, "single", true, "run the single-node part")
	flag.BoolVar(&c.layers, "layers", true, "run the layers part (layers.go): pod start after commits of 1 file, 1% and 10% vs a fresh stage, cold walk and read through the deepest stack and a flat snapshot, 16 pods at once")
	flag.IntVar(&c.layerFiles, "layers-files", 100000, "files of the layers part's tree (-small: 2000)")
	flag.BoolVar(&c.layersCold, "layers-cold", true, "in the layers part, the cold walks and reads (minutes at 100,000 files)")
	flag.BoolVar(&c.layersMillion, "layers-million", false, "also run the layers part on a tree of 1,000,000 files (takes many minutes)")
	flag.BoolVar(&c.group, "group", true, "run the group part after the single-node one: members in network namespaces, hydration across them vs raw veth, a burst with and without sharing, a member joining, a real build")
	flag.BoolVar(&c.groupBuild, "group-build", true, "in the group part, the real build (go mod download, cold from the module proxy)")
	flag.DurationVar(&c.joinSettle, "join-settle", 3*time.Minute, "how long the group part waits for re-replication to settle after a member joins")
	flag.DurationVar(&c.burstDeadline, "burst-deadline", 90*time.Second, "the least time the sharing burst gets before it counts as stuck (-small: 30s)")
	flag.StringVar(&c.profileDir, "profile-dir", "", "directory for a system-wide perf profile (perf record -a -g) of the group part's cold hydration")
	if len(os.Args) > 1 && os.Args[1] == rawHelper {
		os.Exit(rawMain(os.Args[2:]))
	}
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	c.spec, c.specName = gentree.DefaultSpec(), "default"
	if c.small {
		c.spec, c.specName = gentree.SmallSpec(), "small"
		if !set["cycles"] {
			c.cycles = 10
		}
		if !set["rounds"] {
			c.rounds = 1
		}
		if !set["commit-files"] {
			c.commitFiles = 500
		}
		if !set["layers-files"] {
			c.layerFiles = 2000
		}
		if !set["burst-deadline"] {
			c.burstDeadline = 30 * time.Second
		}
	}
	if c.cycles < 1 || c.rounds < 1 || c.commitFiles < 1 {
		fmt.Fprintln(os.Stderr, "bench: -cycles, -rounds and -commit-files must be at least 1")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		// A second signal ends the process at once; the first one lets
		// the cleanup below run.
		stop()
	}()
	b := &bench{cfg: c, start: time.Now(), published: map[string]bool{}, staged: map[string]bool{}}
	if c.single {
		err := b.run(ctx)
		b.cleanup()
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("%w: %v", errInterrupted, err)
			}
			fmt.Fprintf(os.Stderr, "\nbench FAILED: %v\n", err)
			if b.drv != nil {
				if tail := b.drv.LogTail(3000); tail != "" {
					fmt.Fprintf(os.Stderr, "\n--- driver log (tail) ---\n%s\n", tail)
				}
			}
			os.Exit(1)
		}
	}
	// The layers part, at each size, into a table of its own.
	lt := &bench{cfg: c, start: b.start}
	if c.layers && ctx.Err() == nil {
		sizes := []int{c.layerFiles}
		if c.layersMillion {
			sizes = append(sizes, 1000000)
		}
		for _, n := range sizes {
			if err := lt.runLayers(ctx, n); err != nil {
				fmt.Fprintf(os.Stderr, "\nbench FAILED in the layers part (%d files): %v\n", n, err)
				os.Exit(1)
			}
		}
	}
	var (
		gb   *groupBench
		gerr error
	)
	if c.group && ctx.Err() == nil {
		gb = &groupBench{b: b, stopped: map[string]bool{}}
		gerr = gb.run(ctx)
		gb.cleanup(gerr != nil)
		if gerr != nil && ctx.Err() != nil {
			gerr = fmt.Errorf("%w: %v", errInterrupted, gerr)
		}
	}
	// Both tables at the end, side by side.
	if c.single {
		b.printTable()
	}
	if len(lt.rows) > 0 {
		fmt.Printf("\nlayers (trees of small files, 1 KiB on average, 8 per directory)\n\n")
		printRows("baseline", lt.rows)
		fmt.Printf("\npod start: NodePublishVolume after a pod's commit, on a node with the previous generation staged;\n")
		fmt.Printf("fresh stage: NodeStageVolume of the same generation with nothing of the volume on the node\n")
		printNotes(lt.notes)
	}
	if gb != nil && gerr == nil {
		gb.printTable()
	}
	if gerr != nil {
		fmt.Fprintf(os.Stderr, "\nbench FAILED in the group part: %v\n", gerr)
		os.Exit(1)
	}
}

// bench holds the run's state, so that cleanup can undo whatever was done.
type bench struct {
	cfg      config
	start    time.Time
	prepared bool

	tree, treeStamp string
	runDir          string // <work>/run: store, kubelet dirs, driver log
	drv             *csiharness.Driver
	vol             *csi.Volume
	published       map[string]bool
	staged          map[string]bool

	stats gentree.Stats
	rows  []row
	notes []string
}

// row is one line of the result table.
type row struct {
	name, raw, got, ratio, target, result string
}

func (b *bench) logf(format string, args ...any) {
	fmt.Printf("[%7.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// prepare checks the prerequisites, prints the machine and prepares the
// tree, once.
func (b *bench) prepare() error {
	if b.prepared {
		return nil
	}
	c := b.cfg
	if os.Geteuid() != 0 {
		return errors.New("the benchmark mounts filesystems and drops caches: run it as root")
	}
	if _, err := os.Stat(c.driver); err != nil {
		return fmt.Errorf("driver binary %s: %w (build it first: make build)", c.driver, err)
	}
	work, err := filepath.Abs(c.work)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	b.tree = filepath.Join(work, "tree-"+c.specName)
	b.treeStamp = b.tree + ".stamp.json"
	b.runDir = filepath.Join(work, "run")
	b.printMachine(work)
	if err := b.prepareTree(); err != nil {
		return err
	}
	b.prepared = true
	return nil
}

func (b *bench) run(ctx context.Context) error {
	c := b.cfg
	if err := b.prepare(); err != nil {
		return err
	}
	var err error

	// Leftovers of an interrupted run.
	if left, err := csiharness.UnmountUnder(b.runDir); err != nil {
		return fmt.Errorf("clean up an earlier run: %w", err)
	} else if len(left) > 0 {
		b.logf("unmounted %d mounts left by an earlier run", len(left))
	}
	if err := os.RemoveAll(b.runDir); err != nil {
		return err
	}
	if err := os.MkdirAll(b.runDir, 0o755); err != nil {
		return err
	}
	st := b.stats

	// The driver: a one-member group, mode all.
	store := filepath.Join(b.runDir, "store")
	kubelet := filepath.Join(b.runDir, "kubelet")
	staging := func(name string) string {
		return filepath.Join(kubelet, "plugins", "kubernetes.io", "csi", "cachegroup.csi.dev", name, "globalmount")
	}
	target := func(pod string) string {
		return filepath.Join(kubelet, "pods", pod, "volumes", "kubernetes.io~csi", "maven-cache", "mount")
	}
	b.drv, err = csiharness.Start(ctx, csiharness.Config{
		Binary:   c.driver,
		StoreDir: store,
		NodeID:   "bench-node",
		Group:    "default",
		Mode:     "all",
		Args:     []string{fmt.Sprintf("-v=%d", c.logLevel)},
		LogPath:  filepath.Join(b.runDir, "driver.log"),
	})
	if err != nil {
		return err
	}
	b.logf("driver started: pid %d, store %s", b.drv.PID(), store)
	quota := 2*st.Bytes + int64(c.commitFiles)*8<<10 + 1<<30
	b.vol, err = b.drv.CreateVolume(ctx, "maven-cache", quota)
	if err != nil {
		return err
	}
	b.logf("volume %s created (quota %s)", b.vol.GetVolumeId(), mb(quota))

	// Import: a pod copies the tree into the empty cache; its commit.
	stageImport := staging("import")
	if err := b.stage(ctx, stageImport); err != nil {
		return err
	}
	podImport := target("import")
	if err := b.publish(ctx, stageImport, podImport, mountFlags, false); err != nil {
		return err
	}
	cp, err := copyTree(ctx, b.tree, podImport)
	if err != nil {
		return fmt.Errorf("copy the tree into the volume: %w", err)
	}
	b.logf("import: copied %s files, %s into the pod's mount in %s (%s)", commas(cp.Files), mb(cp.Bytes), secs(cp.Dur), mbps(cp.Bytes, cp.Dur))
	importCommit, err := b.unpublishAndCommit(ctx, podImport)
	if err != nil {
		return err
	}
	b.logf("import: unpublish + commit of %s files, %s took %s%s", commas(cp.Files), mb(cp.Bytes), secs(importCommit), b.rssNote())
	if err := b.unstage(ctx, stageImport); err != nil {
		return err
	}

	// Staging the new snapshot: a fresh stage and the first publish of
	// the committed head materialise it on the node.
	stageRead := staging("read")
	// Write back what earlier steps left dirty, so that it does not weigh
	// on the figure.
	syscall.Sync()
	t0 := time.Now()
	if err := b.stage(ctx, stageRead); err != nil {
		return err
	}
	stageDur := time.Since(t0)
	podOverlay := target("reader-overlay")
	t1 := time.Now()
	if err := b.publish(ctx, stageRead, podOverlay, mountFlags, false); err != nil {
		return err
	}
	firstPublish := time.Since(t1)
	stageTotal := stageDur + firstPublish
	b.logf("stage new snapshot: NodeStageVolume %s + first NodePublishVolume %s for %s files%s", secs(stageDur), secs(firstPublish), commas(st.Files), b.rssNote())
	podRO := target("reader-readonly")
	if err := b.publish(ctx, stageRead, podRO, mountFlags, true); err != nil {
		return err
	}
	for _, m := range []string{podOverlay, podRO} {
		mt, err := csiharness.MountFor(m)
		if err != nil {
			return err
		}
		b.logf("mount %s: %s (%s) %s", filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(filepath.Dir(m))))), mt.FSType, mt.Source, mt.Options)
	}

	// Cold walks and reads, raw vs overlay vs read-only, interleaved and
	// rotated so that no kind always runs first.
	kinds := []struct{ name, root string }{{"raw", b.tree}, {"overlay", podOverlay}, {"read-only", podRO}}
	walks := map[string][]treeCount{}
	reads := map[string][]treeCount{}
	buf := make([]byte, 1<<20)
	for r := 0; r < c.rounds; r++ {
		for k := range kinds {
			kind := kinds[(k+r)%len(kinds)]
			w, err := cold(!c.noDrop, func() (treeCount, error) { return metadataWalk(ctx, kind.root) })
			if err != nil {
				return fmt.Errorf("walk %s: %w", kind.name, err)
			}
			rd, err := cold(!c.noDrop, func() (treeCount, error) { return readEvery(ctx, kind.root, buf) })
			if err != nil {
				return fmt.Errorf("read %s: %w", kind.name, err)
			}
			walks[kind.name] = append(walks[kind.name], w)
			reads[kind.name] = append(reads[kind.name], rd)
			b.logf("round %d %-9s walk %s (%s entries)  read %s (%s files, %s, %s)%s", r+1, kind.name,
				secs(w.Dur), commas(w.Files+w.Dirs), secs(rd.Dur), commas(rd.Files), mb(rd.Bytes), mbps(rd.Bytes, rd.Dur), warmNote(w.Cold && rd.Cold))
		}
	}
	raw := walks["raw"][0]
	if raw.Files != st.Files || raw.Dirs != st.Dirs || raw.Bytes != st.Bytes {
		return fmt.Errorf("the tree at %s has %d files, %d dirs, %d bytes but its stamp says %d, %d, %d: delete it and run again",
			b.tree, raw.Files, raw.Dirs, raw.Bytes, st.Files, st.Dirs, st.Bytes)
	}
	for _, k := range kinds[1:] {
		if err := sameTree(k.name+" mount", raw, walks[k.name][0]); err != nil {
			return err
		}
		if err := sameTree(k.name+" mount (read)", reads["raw"][0], reads[k.name][0]); err != nil {
			return err
		}
	}

	if err := b.unpublish(ctx, podRO); err != nil {
		return err
	}
	if _, err := b.unpublishAndCommit(ctx, podOverlay); err != nil {
		return err
	}

	// Warm publish latency: the snapshot is on the node; commit=never so
	// the cycles make no commits. One untimed warm-up cycle first.
	neverFlags := append(append([]string(nil), mountFlags...), "commit=never")
	var pubs, unpubs []time.Duration
	for i := 0; i <= c.cycles; i++ {
		t := target(fmt.Sprintf("warm-%03d", i))
		t0 := time.Now()
		if err := b.publish(ctx, stageRead, t, neverFlags, false); err != nil {
			return err
		}
		t1 := time.Now()
		if err := b.unpublish(ctx, t); err != nil {
			return err
		}
		t2 := time.Now()
		if i > 0 {
			pubs = append(pubs, t1.Sub(t0))
			unpubs = append(unpubs, t2.Sub(t1))
		}
	}
	if err := b.drv.WaitCommitted(ctx); err != nil {
		return err
	}
	b.logf("warm publish: %d cycles, publish p50 %s p99 %s, unpublish p50 %s p99 %s", c.cycles,
		ms(percentile(pubs, 50)), ms(percentile(pubs, 99)), ms(percentile(unpubs, 50)), ms(percentile(unpubs, 99)))

	// Commit: a fresh pod writes new small files; time its unpublish
	// until the commit is applied.
	podWriter := target("writer")
	syscall.Sync()
	if err := b.publish(ctx, stageRead, podWriter, mountFlags, false); err != nil {
		return err
	}
	wr, err := writeNewFiles(podWriter, "commit", c.commitFiles, c.spec.Seed)
	if err != nil {
		return fmt.Errorf("write new files into the pod's mount: %w", err)
	}
	b.logf("commit: the pod wrote %s new files (%s) in %s", commas(wr.Files), mb(wr.Bytes), secs(wr.Dur))
	tu := time.Now()
	if err := b.unpublish(ctx, podWriter); err != nil {
		return err
	}
	unpubDur := time.Since(tu)
	if err := b.waitCommitted(ctx); err != nil {
		return err
	}
	commitDur := time.Since(tu)
	b.logf("commit: unpublish %s, unpublish to committed %s%s", secs(unpubDur), secs(commitDur), b.rssNote())

	rss, err := b.drv.PeakRSS()
	if err != nil {
		return err
	}

	// Table.
	// Times are medians over the rounds; a ratio is the median of the
	// rounds' ratios, each taken between runs made moments apart, so that
	// the disk's drift over the run cancels out.
	for _, k := range []struct {
		kind   string
		target float64
	}{{"overlay", targetOverlayRatio}, {"read-only", targetReadOnlyRatio}} {
		rw, mw := medianCount(walks["raw"]), medianCount(walks[k.kind])
		b.addRatio(fmt.Sprintf("cold metadata walk, %s publish", k.kind), secs(rw.Dur), secs(mw.Dur),
			pairedRatio(walks[k.kind], walks["raw"]), k.target)
		rr, mr := medianCount(reads["raw"]), medianCount(reads[k.kind])
		b.addRatio(fmt.Sprintf("cold read of every file, %s publish", k.kind),
			fmt.Sprintf("%s (%s)", secs(rr.Dur), mbps(rr.Bytes, rr.Dur)),
			fmt.Sprintf("%s (%s)", secs(mr.Dur), mbps(mr.Bytes, mr.Dur)),
			pairedRatio(reads[k.kind], reads["raw"]), k.target)
	}
	p50, p99 := percentile(pubs, 50), percentile(pubs, 99)
	b.rows = append(b.rows,
		row{fmt.Sprintf("warm publish latency p50 (%d cycles)", c.cycles), "", ms(p50), "", "≤ " + ms(targetPublishP50), met(p50 <= targetPublishP50)},
		row{"warm publish latency p99", "", ms(p99), "", "", "(info)"},
		row{"warm unpublish latency p50 / p99", "", ms(percentile(unpubs, 50)) + " / " + ms(percentile(unpubs, 99)), "", "", "(info)"},
	)
	stageRate := float64(st.Files) / stageTotal.Seconds()
	b.rows = append(b.rows, row{
		fmt.Sprintf("stage new snapshot (%s files)", commas(st.Files)), "",
		fmt.Sprintf("%s files/s (stage %s + 1st publish %s)", commas(int(stageRate)), secs(stageDur), secs(firstPublish)),
		"", fmt.Sprintf("≥ %s files/s", commas(targetStageRate)), met(stageRate >= targetStageRate),
	})
	commitRate := float64(wr.Files) / commitDur.Seconds()
	b.rows = append(b.rows, row{
		fmt.Sprintf("commit a %s-file upper (%s)", commas(wr.Files), mb(wr.Bytes)), "",
		fmt.Sprintf("%s files/s, %s (%s)", commas(int(commitRate)), mbps(wr.Bytes, commitDur), secs(commitDur)),
		"", fmt.Sprintf("≥ %s files/s", commas(targetCommitRate)), met(commitRate >= targetCommitRate),
	})
	b.rows = append(b.rows, row{
		fmt.Sprintf("import commit (%s files, %s)", commas(cp.Files), mb(cp.Bytes)), "",
		fmt.Sprintf("%s files/s, %s (%s)", commas(int(float64(cp.Files)/importCommit.Seconds())), mbps(cp.Bytes, importCommit), secs(importCommit)),
		"", "", "(info)",
	})
	b.rows = append(b.rows, row{"driver peak RSS (VmHWM)", "", mb(rss), "", "≤ " + mb(targetPeakRSS), met(rss <= targetPeakRSS)})
	if r := b.drv.Retries(); r > 0 {
		b.notes = append(b.notes, fmt.Sprintf("%d node calls were retried after Aborted/Unavailable (included in the times)", r))
	}
	if !raw.Cold {
		b.notes = append(b.notes, "caches could not be dropped: the cold figures are warm")
	}
	b.notes = append(b.notes, "load average at the end of the measurements: "+loadAvg())
	if c.small {
		b.notes = append(b.notes, "-small: a smoke run on a tiny tree; the figures say little about the targets")
	}

	// Orderly end: unstage, delete, stop.
	if err := b.unstage(ctx, stageRead); err != nil {
		return err
	}
	if err := b.drv.DeleteVolume(ctx, b.vol); err != nil {
		return err
	}
	b.vol = nil
	if err := b.drv.Stop(); err != nil {
		return err
	}
	if rss2, err := b.drv.PeakRSS(); err == nil && rss2 > rss {
		b.notes = append(b.notes, fmt.Sprintf("peak RSS including shutdown: %s", mb(rss2)))
	}
	return nil
}

// prepareTree reuses the generated tree when its stamp matches the spec,
// and generates it otherwise.
func (b *bench) prepareTree() error {
	type stamp struct {
		Version int           `json:"version"`
		Spec    gentree.Spec  `json:"spec"`
		Stats   gentree.Stats `json:"stats"`
	}
	if data, err := os.ReadFile(b.treeStamp); err == nil {
		var s stamp
		if json.Unmarshal(data, &s) == nil && s.Version == stampVersion && s.Spec == b.cfg.spec {
			if _, err := os.Stat(b.tree); err == nil {
				b.stats = s.Stats
				b.logf("tree: reusing %s: %s", b.tree, describe(s.Stats))
				return nil
			}
		}
	}
	os.Remove(b.treeStamp)
	if err := os.RemoveAll(b.tree); err != nil {
		return err
	}
	b.logf("tree: generating %s (%s) ...", b.tree, b.cfg.spec)
	t0 := time.Now()
	st, err := gentree.Generate(b.tree, b.cfg.spec)
	if err != nil {
		return fmt.Errorf("generate the tree: %w", err)
	}
	data, err := json.MarshalIndent(stamp{Version: stampVersion, Spec: b.cfg.spec, Stats: st}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(b.treeStamp, data, 0o644); err != nil {
		return err
	}
	b.stats = st
	b.logf("tree: generated in %s: %s", secs(time.Since(t0)), describe(st))
	return nil
}

func describe(st gentree.Stats) string {
	return fmt.Sprintf("%s files in %s dirs, %s (%s files ≤ 8 KiB, %s jars up to %s, large file %s)",
		commas(st.Files), commas(st.Dirs), mb(st.Bytes), commas(st.SmallFiles), commas(st.Jars), mb(st.LargestJar), st.BigFile)
}

// rssNote describes the driver's peak RSS so far, for the progress lines.
func (b *bench) rssNote() string {
	rss, err := b.drv.PeakRSS()
	if err != nil {
		return ""
	}
	return fmt.Sprintf(" (driver peak RSS so far %s)", mb(rss))
}

func (b *bench) stage(ctx context.Context, staging string) error {
	if err := b.drv.Stage(ctx, b.vol, staging, mountFlags...); err != nil {
		return err
	}
	b.staged[staging] = true
	return nil
}

func (b *bench) unstage(ctx context.Context, staging string) error {
	if err := b.drv.Unstage(ctx, b.vol, staging); err != nil {
		return err
	}
	delete(b.staged, staging)
	return nil
}

func (b *bench) publish(ctx context.Context, staging, target string, flags []string, readonly bool) error {
	if err := b.drv.Publish(ctx, b.vol, staging, target, flags, readonly); err != nil {
		return err
	}
	b.published[target] = true
	return nil
}

func (b *bench) unpublish(ctx context.Context, target string) error {
	if err := b.drv.Unpublish(ctx, b.vol, target); err != nil {
		return err
	}
	delete(b.published, target)
	return nil
}

// waitCommitted waits for the outbox to drain, for at most 30 minutes.
func (b *bench) waitCommitted(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	return b.drv.WaitCommitted(ctx)
}

// unpublishAndCommit unpublishes target and returns the time until the
// commit of its writes was applied.
func (b *bench) unpublishAndCommit(ctx context.Context, target string) (time.Duration, error) {
	t0 := time.Now()
	if err := b.unpublish(ctx, target); err != nil {
		return 0, err
	}
	if err := b.waitCommitted(ctx); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// cleanup unpublishes and unstages what is left through the driver, deletes
// the volume, stops the driver, unmounts anything left below the run
// directory by path and removes the store (the tree and the driver log
// stay).
func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var problems []string
	if b.drv != nil && b.drv.Running() && b.vol != nil {
		for t := range b.published {
			if err := b.drv.Unpublish(ctx, b.vol, t); err != nil {
				problems = append(problems, err.Error())
			}
		}
		for s := range b.staged {
			if err := b.drv.Unstage(ctx, b.vol, s); err != nil {
				problems = append(problems, err.Error())
			}
		}
		if err := b.drv.DeleteVolume(ctx, b.vol); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if b.drv != nil {
		if err := b.drv.Stop(); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if b.runDir != "" {
		left, err := csiharness.UnmountUnder(b.runDir)
		if len(left) > 0 {
			problems = append(problems, "unmounted by path: "+strings.Join(left, ", "))
		}
		if err != nil {
			problems = append(problems, err.Error())
		} else {
			for _, d := range []string{"store", "kubelet"} {
				if err := os.RemoveAll(filepath.Join(b.runDir, d)); err != nil {
					problems = append(problems, err.Error())
				}
			}
		}
	}
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "cleanup: %s\n", p)
	}
}

func (b *bench) addRatio(name, raw, got string, r, target float64) {
	b.rows = append(b.rows, row{name, raw, got, fmt.Sprintf("%.3f", r), fmt.Sprintf("≤ %.2f", target), met(r <= target)})
}

func (b *bench) printMachine(work string) {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fsDesc := "unknown"
	if m, err := csiharness.MountFor(work); err == nil {
		fsDesc = fmt.Sprintf("%s on %s (mounted at %s)", m.FSType, m.Source, m.Point)
	}
	fmt.Printf("cachegroup bench (%s spec)\n", b.cfg.specName)
	fmt.Printf("  machine  %d CPUs (%s), %s RAM, kernel %s, %s\n", runtime.NumCPU(), cpuModel(), memTotal(), strings.TrimSpace(string(kernel)), runtime.Version())
	fmt.Printf("  load     %s (1/5/15-minute load average at the start; other work on the machine skews the figures)\n", loadAvg())
	fmt.Printf("  work     %s: %s\n", work, fsDesc)
	fmt.Printf("  driver   %s\n\n", b.cfg.driver)
}

func (b *bench) printTable() {
	fmt.Printf("\nresults (%s tree: %s)\n\n", b.cfg.specName, describe(b.stats))
	printRows("raw disk", b.rows)
	fmt.Printf("\ncold figures: caches dropped before each walk and each read; times are medians of %d round(s),\n", b.cfg.rounds)
	fmt.Printf("ratios the median of the per-round ratios (runs of one round are moments apart, in rotating order)\n")
	printNotes(b.notes)
}

// printRows prints a results table whose baseline column is called baseline.
func printRows(baseline string, rows []row) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "measurement\t%s\tcachegroup\tratio\ttarget\tresult\n", baseline)
	fmt.Fprintf(tw, "-----------\t%s\t----------\t-----\t------\t------\n", strings.Repeat("-", len(baseline)))
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.name, dash(r.raw), r.got, dash(r.ratio), dash(r.target), r.result)
	}
	tw.Flush()
}

func printNotes(notes []string) {
	for _, n := range notes {
		fmt.Printf("note: %s\n", n)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func warmNote(cold bool) string {
	if cold {
		return ""
	}
	return " [caches not dropped]"
}

// pairedRatio returns the median over rounds of got[r].Dur / base[r].Dur.
func pairedRatio(got, base []treeCount) float64 {
	var rs []float64
	for r := range got {
		if r < len(base) && base[r].Dur > 0 {
			rs = append(rs, float64(got[r].Dur)/float64(base[r].Dur))
		}
	}
	return median(rs)
}

// median returns the median of xs, 0 if there are none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func secs(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func mb(n int64) string {
	if n >= 1e9 {
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

func mbps(n int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MB/s", float64(n)/1e6/d.Seconds())
}

func commas(n int) string {
	if n < 0 {
		return "-" + commas(-n)
	}
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// loadAvg returns the 1, 5 and 15-minute load averages.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " / ")
}

func memTotal() string {
	data, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(data), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(l, "MemTotal: %d kB", &kb); err == nil {
			return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	return "unknown"
}
