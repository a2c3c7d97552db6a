package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cachegroup/cachegroup/internal/cluster"
	"github.com/cachegroup/cachegroup/internal/csiharness"
)

// mountBackoff is how long a volume whose mount failed waits before its
// next build: about the kubelet's retry of a failed volume.
const mountBackoff = 5 * time.Second

// mountFlags are the build pods' mount options, as a StorageClass for
// ephemeral CI pods gives them.
var mountFlags = []string{"cache-group=default", "no-sharing"}

// node is one host of the group and its driver.
type node struct {
	m      *cluster.Member
	client bool  // a client-only node
	cache  int64 // its --cache-size
	// mu is held for writing while the driver is stopped and started
	// again, and for reading around every call to it.
	mu sync.RWMutex
	// outboxMu makes an unpublish and the outbox listings around it one
	// step, so the entry it adds is known.
	outboxMu sync.Mutex
	// down is set while the harness has the driver stopped on purpose.
	down atomic.Bool
	// starts counts the driver's starts, died its unexpected exits.
	starts, died atomic.Int32
}

// call runs f with n's current driver, bounded by timeout.
func (n *node) call(ctx context.Context, timeout time.Duration, f func(ctx context.Context, d *csiharness.Driver) error) error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.m.D == nil {
		return fmt.Errorf("%s is stopped", n.m.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return f(ctx, n.m.D)
}

// pid returns the driver's process id, or 0 while it is stopped.
func (n *node) pid() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.m.D == nil {
		return 0
	}
	return n.m.D.PID()
}

// lane is one volume and the builds made on it, one at a time: a build
// learns the fate of the previous one from what it sees, so the model can
// know the head exactly.
type lane struct {
	name  string
	vol   *csi.Volume
	model *volModel
	// prev is the id of the volume's last build, prevOps its changes.
	prev    int
	prevOps map[string]op
	// pending are builds whose commits had not left the outbox when last
	// looked at.
	pending []pendingCommit
}

// pendingCommit is a build's outbox entry on a node, not yet gone.
type pendingCommit struct {
	build   int
	n       *node
	entries []string // nil: unknown, gone once the node's outbox is empty
}

// soak is one run.
type soak struct {
	c      config
	cl     *cluster.Cluster
	nodes  []*node
	lanes  []*lane
	tally  *tally
	start  time.Time
	nextID atomic.Int64
	// maxCommit is the most bytes one build wrote: the store may exceed
	// its cache size by one commit.
	maxCommit atomic.Int64

	mu       sync.Mutex
	builds   []buildRecord
	samples  []sample
	died     []string
	events   []string // restarts and the like, for the report
	entryAge map[string]time.Time
}

// run sets the group up, runs the builds and the sampler, drains, and
// writes the report; it returns the exit code.
func run(ctx context.Context, c config) (code int) {
	s := &soak{c: c, tally: newTally(), entryAge: map[string]time.Time{}}
	if err := cluster.Prerequisites(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	out, _ := filepath.Abs(c.out)
	s.c.out = out
	// Named like a run directory, so CleanStale removes it after a crash.
	binDir, err := os.MkdirTemp("", fmt.Sprintf("cgsoak-%d-", os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	defer os.RemoveAll(binDir)
	if s.c.driver == "" {
		bin, took, err := cluster.BuildDriver(binDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			return 2
		}
		s.c.driver = bin
		logf("built the driver in %v", took.Round(time.Millisecond))
	} else if s.c.driver, err = filepath.Abs(s.c.driver); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	s.cl, err = cluster.New(cluster.Config{Binary: s.c.driver, Prefix: "cgsoak", LogLevel: c.logLevel, CallTimeout: time.Minute})
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	defer s.teardown()
	logf("run directory %s, bridge %s on %s.0/24; report to %s", s.cl.Dir, s.cl.Bridge, s.cl.Subnet, s.c.out)
	if err := s.setUp(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "soak: set up:", err)
		return 2
	}
	s.start = time.Now()
	sctx, stopSampler := context.WithCancel(context.Background())
	var sampled sync.WaitGroup
	sampled.Go(func() { s.sampler(sctx) })

	s.seed(ctx)
	s.buildPhase(ctx)
	s.drainPhase(ctx)
	stopSampler()
	sampled.Wait()
	s.sampleOnce() // the last word on every outbox
	s.stopAll()
	return s.report(ctx.Err() != nil)
}

// stopAll stops every driver (SIGTERM, SIGKILL after 15 s) and notes one
// that did not stop cleanly.
func (s *soak) stopAll() {
	for _, n := range s.nodes {
		n.mu.Lock()
		n.down.Store(true)
		if err := n.m.Stop(); err != nil {
			s.event("%s did not stop cleanly: %v", n.m.Name, err)
		}
		n.mu.Unlock()
	}
}

// setUp adds the hosts, starts the members and the client-only nodes, and
// creates the volumes.
func (s *soak) setUp(ctx context.Context) error {
	var members []*cluster.Member
	for i, short := range []string{"a", "b", "c", "x", "y"} {
		m, err := s.cl.AddHost(short)
		if err != nil {
			return err
		}
		n := &node{m: m, client: i >= 3, cache: s.c.memberBytes}
		if n.client {
			n.cache = s.c.clientBytes
		} else {
			members = append(members, m)
		}
		s.nodes = append(s.nodes, n)
	}
	list := cluster.MembersFlag(members...)
	for _, n := range s.nodes {
		// A grace of 20 s: garbage is collected many times in a run.
		extra := []string{"--cache-size=" + fmt.Sprint(n.cache), "--garbage-grace-period=20s"}
		if n.client {
			extra = append(extra, "--client-only")
		}
		if err := n.m.Start(ctx, list, s.cl.Secret, extra...); err != nil {
			return err
		}
		n.starts.Add(1)
	}
	var all []*cluster.Member
	for _, n := range s.nodes {
		all = append(all, n.m)
	}
	if err := cluster.WaitLive(45*time.Second, len(members), all...); err != nil {
		return err
	}
	for i := range s.c.volumes {
		name := fmt.Sprintf("soak-%d", i)
		var vol *csi.Volume
		err := s.nodes[i%3].call(ctx, time.Minute, func(ctx context.Context, d *csiharness.Driver) error {
			var err error
			vol, err = d.CreateVolume(ctx, name, s.c.quota)
			return err
		})
		if err != nil {
			return err
		}
		s.lanes = append(s.lanes, &lane{name: name, vol: vol, model: newVolModel(name)})
	}
	logf("members %s (--cache-size %s), client-only %s (--cache-size %s); %d volumes of quota %s",
		strings.Join(cluster.Names(members...), ", "), s.c.memberCache, s.nodes[3].m.Name+", "+s.nodes[4].m.Name,
		s.c.clientCache, len(s.lanes), mib(s.c.quota))
	return nil
}

// seed writes every volume's first tree from a member, a few at once.
func (s *soak) seed(ctx context.Context) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, s.c.workers)
	for i, ln := range s.lanes {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.record(s.build(ctx, ln, s.nodes[i%3], int(s.nextID.Add(1)), true))
		})
	}
	wg.Wait()
	logf("seeded %d volumes of %d files", len(s.lanes), s.c.files)
}

// buildPhase runs builds, workers at once, each on a volume no other build
// has, until the duration or the build count is reached; it restarts one
// member evenly spaced in between.
func (s *soak) buildPhase(ctx context.Context) {
	phase := time.Now()
	deadline := phase.Add(s.c.duration)
	free := make(chan *lane, len(s.lanes))
	for _, ln := range s.lanes {
		free <- ln
	}
	var wg, restarts sync.WaitGroup
	rctx, stopRestarts := context.WithCancel(ctx)
	defer func() { stopRestarts(); restarts.Wait() }()
	restarts.Go(func() { s.restarter(rctx, phase) })
	// Builds that mounted count against maxBuilds, and every attempt
	// against three times that: a mount that fails frees its volume only
	// after a back-off, as the kubelet retries a pod's volume.
	var mountedN, attempts atomic.Int64
	for w := range s.c.workers {
		wg.Go(func() {
			for {
				if ctx.Err() != nil || time.Now().After(deadline) || mountedN.Load() >= int64(s.c.maxBuilds) ||
					attempts.Add(1) > 3*int64(s.c.maxBuilds) {
					return
				}
				var ln *lane
				select {
				case ln = <-free:
				case <-ctx.Done():
					return
				case <-time.After(time.Until(deadline)):
					return
				}
				id := int(s.nextID.Add(1))
				n := s.nodes[int(splitmix(s.c.seed+uint64(id)*7+uint64(w))%uint64(len(s.nodes)))]
				rec := s.build(ctx, ln, n, id, false)
				s.record(rec)
				if strings.HasPrefix(rec.err, "mount:") {
					time.AfterFunc(mountBackoff, func() { free <- ln }) // free has room for every lane
					continue
				}
				mountedN.Add(1)
				free <- ln
			}
		})
	}
	progress := time.NewTicker(30 * time.Second)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			progress.Stop()
			logf("build phase over after %v: %d builds", time.Since(phase).Round(time.Second), len(s.buildsCopy()))
			return
		case <-progress.C:
			s.progress()
		}
	}
}

// restarter stops member B and starts it again, restarts times evenly
// spaced over the build phase.
func (s *soak) restarter(ctx context.Context, phase time.Time) {
	n := s.nodes[1]
	for i := 1; i <= s.c.restarts; i++ {
		at := phase.Add(s.c.duration * time.Duration(i) / time.Duration(s.c.restarts+1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(at)):
		}
		n.mu.Lock()
		n.down.Store(true)
		err := n.m.Stop()
		s.event("restart %d of %s: stopped (SIGTERM)%s", i, n.m.Name, errSuffix(err))
		select {
		case <-ctx.Done():
		case <-time.After(s.c.downtime):
		}
		err = n.m.Start(context.Background(), n.m.LastMembers, n.m.LastSecret, n.m.LastExtra...)
		n.starts.Add(1)
		n.down.Store(false)
		n.mu.Unlock()
		s.event("restart %d of %s: started again after %v down%s", i, n.m.Name, s.c.downtime, errSuffix(err))
	}
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

// event logs and keeps a line for the report.
func (s *soak) event(format string, args ...any) {
	msg := fmt.Sprintf("%6.1fs ", time.Since(s.start).Seconds()) + fmt.Sprintf(format, args...)
	logf("%s", msg)
	s.mu.Lock()
	s.events = append(s.events, msg)
	s.mu.Unlock()
}

// drainPhase waits, up to the drain period, until every outbox is empty.
func (s *soak) drainPhase(ctx context.Context) {
	start := time.Now()
	for {
		left := 0
		for _, n := range s.nodes {
			left += len(outboxEntries(n.m.Store))
		}
		if left == 0 {
			logf("every outbox empty %v after the last build", time.Since(start).Round(time.Second))
			return
		}
		if time.Since(start) > s.c.drain || ctx.Err() != nil {
			logf("%d outbox entries still there %v after the last build", left, time.Since(start).Round(time.Second))
			return
		}
		time.Sleep(time.Second)
	}
}

// teardown unmounts everything, stops every driver and removes the hosts,
// keeping the member logs in the report directory.
func (s *soak) teardown() {
	logDir := filepath.Join(s.c.out, "logs")
	os.RemoveAll(logDir)
	os.MkdirAll(logDir, 0o755)
	// No call should be running any more; one stuck past a minute (a
	// panic elsewhere) does not keep the cleanup from happening.
	locked := make([]bool, len(s.nodes))
	for i, n := range s.nodes {
		n.down.Store(true)
		for t := time.Now(); !locked[i] && time.Since(t) < time.Minute; {
			if locked[i] = n.mu.TryLock(); !locked[i] {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	for _, n := range s.nodes {
		n.m.Stop()
	}
	for _, n := range s.nodes {
		if b, err := os.ReadFile(n.m.LogPath); err == nil {
			os.WriteFile(filepath.Join(logDir, filepath.Base(n.m.LogPath)), b, 0o644)
		}
	}
	if err := s.cl.Close(false); err != nil {
		fmt.Fprintln(os.Stderr, "soak: teardown:", err)
	}
	for i, n := range s.nodes {
		if locked[i] {
			n.mu.Unlock()
		}
	}
}

// record keeps a build's record.
func (s *soak) record(r buildRecord) {
	s.mu.Lock()
	s.builds = append(s.builds, r)
	s.mu.Unlock()
}

func (s *soak) buildsCopy() []buildRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.builds)
}

// progress prints a line of the run so far.
func (s *soak) progress() {
	bs := s.buildsCopy()
	failed := 0
	for _, b := range bs {
		if b.err != "" {
			failed++
		}
	}
	var parts []string
	s.mu.Lock()
	if k := len(s.samples); k > 0 {
		last := map[string]sample{}
		for _, sm := range s.samples[max(0, k-3*len(s.nodes)):] {
			last[sm.node] = sm
		}
		for _, n := range s.nodes {
			if sm, ok := last[n.m.Name]; ok {
				parts = append(parts, fmt.Sprintf("%s %s/%s", n.m.Short, mib(sm.storeDisk), mib(n.cache)))
			}
		}
	}
	s.mu.Unlock()
	logf("%d builds (%d failed); wrong %d, stale %d; store %s", len(bs), failed,
		s.tally.get(kindWrong), s.tally.get(kindStale), strings.Join(parts, ", "))
}

// outboxEntries lists the entries of the outbox of the store at dir (none
// when it has no outbox yet).
func outboxEntries(dir string) []string {
	ob, err := csiharness.OutboxDir(dir)
	if err != nil {
		return nil
	}
	ents, err := os.ReadDir(ob)
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// gone reports whether p's entries have all left its node's outbox.
func (p pendingCommit) gone() bool {
	have := outboxEntries(p.n.m.Store)
	if p.entries == nil {
		return len(have) == 0
	}
	for _, e := range p.entries {
		if slices.Contains(have, e) {
			return false
		}
	}
	return true
}

// splitmix is a 64-bit mixing function, for choices that depend only on
// the seed and the build.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
