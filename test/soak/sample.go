package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cachegroup/cachegroup/internal/csiharness"
)

// sample is one look at one node.
type sample struct {
	t    float64 // seconds since the start
	node string
	pid  int
	up   bool // its metrics answered
	// storeDisk is what the store directory takes on disk (allocated
	// blocks, each inode once, not crossing into other file systems).
	storeDisk int64
	// outboxBytes and outboxEntries are the outbox's; oldestEntry the age
	// in seconds of its oldest entry as the sampler has seen it.
	outboxBytes   int64
	outboxEntries int
	oldestEntry   float64
	rss           int64 // VmRSS
	threads       int
	// series are the member's own metrics (cachegroup_*, go_goroutines,
	// process_*), histogram buckets left out.
	series map[string]float64
}

// metric returns the sum of the series of name whose labels include every
// key="value" of labels.
func (sm sample) metric(name string, labels ...string) float64 {
	var sum float64
	for k, v := range sm.series {
		base, lbls, _ := strings.Cut(k, "{")
		if base != name {
			continue
		}
		ok := true
		for _, l := range labels {
			key, val, _ := strings.Cut(l, "=")
			ok = ok && strings.Contains(lbls, key+`="`+val+`"`)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// sampler samples every node each period until ctx ends, and starts again
// a driver that died.
func (s *soak) sampler(ctx context.Context) {
	tick := time.NewTicker(s.c.sample)
	defer tick.Stop()
	for {
		s.sampleOnce()
		s.reviveDead()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sampleOnce takes one sample of every node.
func (s *soak) sampleOnce() {
	now := time.Since(s.start).Seconds()
	present := map[string]bool{}
	for _, n := range s.nodes {
		sm := sample{t: now, node: n.m.Name, pid: n.pid()}
		sm.storeDisk = diskUsage(n.m.Store)
		if ob, err := csiharness.OutboxDir(n.m.Store); err == nil {
			sm.outboxBytes = diskUsage(ob)
		}
		names := outboxEntries(n.m.Store)
		sm.outboxEntries = len(names)
		s.mu.Lock()
		for _, e := range names {
			key := n.m.Name + "/" + e
			present[key] = true
			first, ok := s.entryAge[key]
			if !ok {
				first = time.Now()
				s.entryAge[key] = first
			}
			sm.oldestEntry = max(sm.oldestEntry, time.Since(first).Seconds())
		}
		s.mu.Unlock()
		if sm.pid > 0 {
			sm.rss, sm.threads = procStatus(sm.pid)
			if text, err := n.m.MetricsText(); err == nil {
				sm.up, sm.series = true, parseSeries(text)
			}
		}
		s.mu.Lock()
		s.samples = append(s.samples, sm)
		s.mu.Unlock()
	}
	s.mu.Lock()
	for k := range s.entryAge {
		if !present[k] {
			delete(s.entryAge, k)
		}
	}
	s.mu.Unlock()
}

// reviveDead counts a driver that exited without the harness stopping it
// and starts it again, so the run goes on.
func (s *soak) reviveDead() {
	for _, n := range s.nodes {
		if n.down.Load() || !n.mu.TryLock() {
			continue
		}
		if n.m.D != nil && !n.m.D.Running() && !n.down.Load() {
			n.died.Add(1)
			tail := n.m.D.LogTail(2048)
			s.mu.Lock()
			s.died = append(s.died, fmt.Sprintf("%s (pid %d) exited at %.0fs; log tail:\n%s", n.m.Name, n.m.D.PID(), time.Since(s.start).Seconds(), tail))
			s.mu.Unlock()
			_, err := n.m.KeepUp(context.Background())
			n.starts.Add(1)
			s.event("%s died; started again%s", n.m.Name, errSuffix(err))
		}
		n.mu.Unlock()
	}
}

// parseSeries reads the Prometheus text format into series name{labels}
// to value, keeping the project's metrics, goroutines and process metrics.
func parseSeries(text string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		if !strings.HasPrefix(line, "cachegroup_") && !strings.HasPrefix(line, "go_goroutines") &&
			!strings.HasPrefix(line, "process_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		key := line[:i]
		if strings.Contains(key, "_bucket{") {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[key] = v
		}
	}
	return out
}

// procStatus returns VmRSS in bytes and the thread count of process pid.
func procStatus(pid int) (rss int64, threads int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			kb, _ := strconv.ParseInt(fields[0], 10, 64)
			rss = kb << 10
		case "Threads":
			threads, _ = strconv.Atoi(fields[0])
		}
	}
	return rss, threads
}

// diskUsage returns the allocated bytes below dir, each inode once, not
// crossing into other file systems (a loop-mounted image is counted as
// its image file).
func diskUsage(dir string) int64 {
	var root syscall.Stat_t
	if syscall.Lstat(dir, &root) != nil {
		return 0
	}
	type ino struct{ dev, ino uint64 }
	seen := map[ino]bool{}
	var total int64
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || p != dir {
				return nil // removed while walking
			}
			return err
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) != nil {
			return nil
		}
		if st.Dev != root.Dev {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		k := ino{uint64(st.Dev), st.Ino}
		if !seen[k] {
			seen[k] = true
			total += st.Blocks * 512
		}
		return nil
	})
	return total
}

// byNode returns the samples of node name, in time order.
func byNode(ss []sample, name string) []sample {
	var out []sample
	for _, sm := range ss {
		if sm.node == name {
			out = append(out, sm)
		}
	}
	return out
}

// cumulative returns, per sample of one node, the running total of
// counter name (labels as in metric) across the driver's restarts: a
// value below the last one is a fresh process's count.
func cumulative(ss []sample, name string, labels ...string) []float64 {
	out := make([]float64, len(ss))
	var total, last float64
	lastPID := 0
	for i, sm := range ss {
		if !sm.up {
			out[i] = total
			continue
		}
		v := sm.metric(name, labels...)
		if sm.pid != lastPID || v < last {
			last = 0
			lastPID = sm.pid
		}
		total += v - last
		last = v
		out[i] = total
	}
	return out
}
