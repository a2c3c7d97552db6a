package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// target is one line of the summary table.
type target struct {
	name, measured string
	met            bool
	failure        bool // a correctness failure: the exit code says so
}

// commitResults returns the result labels of cachegroup_commits_total seen
// in any sample, sorted.
func commitResults(ss []sample) []string {
	set := map[string]bool{}
	for _, sm := range ss {
		for k := range sm.series {
			if rest, ok := strings.CutPrefix(k, `cachegroup_commits_total{result="`); ok {
				set[strings.TrimSuffix(rest, `"}`)] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// slope fits y = a + b*x by least squares and returns b.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// warmUp is how long after its start a process's samples are left out of
// a trend.
const warmUp = 20

// trend fits the slope of f over the samples of the second half of the run
// taken from the driver's last process (past its warm-up), and returns the slope per minute,
// the growth it makes over that span, the mean, and the span in seconds.
func trend(ns []sample, end float64, f func(sample) float64) (perMin, growth, mean, span float64) {
	if len(ns) == 0 {
		return 0, 0, 0, 0
	}
	lastPID := ns[len(ns)-1].pid
	born := end
	for _, sm := range ns {
		if sm.pid == lastPID {
			born = min(born, sm.t)
		}
	}
	var xs, ys []float64
	for _, sm := range ns {
		// A process's first seconds are its warm-up, not a trend.
		if sm.t >= end/2 && sm.t >= born+warmUp && sm.pid == lastPID && sm.up {
			xs = append(xs, sm.t)
			ys = append(ys, f(sm))
		}
	}
	if len(xs) < 2 {
		return 0, 0, 0, 0
	}
	b := slope(xs, ys)
	for _, y := range ys {
		mean += y
	}
	mean /= float64(len(ys))
	span = xs[len(xs)-1] - xs[0]
	return b * 60, b * span, mean, span
}

// percentile returns the p-th percentile of ds (sorted in place).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(math.Ceil(p*float64(len(ds))))-1)]
}

// report writes the CSV files, the plots and the summary, prints the
// summary, and returns the exit code.
func (s *soak) report(interrupted bool) int {
	s.mu.Lock()
	ss, bs, died, events := slices.Clone(s.samples), slices.Clone(s.builds), slices.Clone(s.died), slices.Clone(s.events)
	s.mu.Unlock()
	dir := s.c.out
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format+"\n", args...) }
	end := 0.0
	if len(ss) > 0 {
		end = ss[len(ss)-1].t
	}
	const mb = 1 << 20
	var targets []target

	// Correctness of what was read.
	bad := 0
	var badKinds []string
	for _, k := range []string{kindWrong, kindStale, kindResurrected, kindReadError} {
		bad += s.tally.get(k)
		badKinds = append(badKinds, fmt.Sprintf("%s %d", k, s.tally.get(k)))
	}
	targets = append(targets, target{"0 wrong bytes (every file read is a version written at its path; the newest committed while no eviction)",
		strings.Join(badKinds, ", "), bad == 0, bad > 0})

	// Commits retried forever: still in an outbox after the drain.
	left, oldest := 0, 0.0
	lastByNode := map[string]sample{}
	for _, sm := range ss {
		lastByNode[sm.node] = sm
		oldest = max(oldest, sm.oldestEntry)
	}
	var leftBy []string
	for _, n := range s.nodes {
		if e := lastByNode[n.m.Name].outboxEntries; e > 0 {
			left += e
			leftBy = append(leftBy, fmt.Sprintf("%s %d", n.m.Name, e))
		}
	}
	retried := fmt.Sprintf("%d entries still in an outbox %v after the last build", left, s.c.drain)
	if len(leftBy) > 0 {
		retried += " (" + strings.Join(leftBy, ", ") + ")"
	}
	retried += fmt.Sprintf("; oldest entry seen %.0fs old", oldest)
	if interrupted {
		// No drain happened: what is left says nothing of retrying forever.
		retried = "not measured: interrupted before the drain; " + retried
		left = 0
	}
	targets = append(targets, target{"0 commits retried forever", retried, left == 0, left > 0})

	// The store within its cache size plus one commit.
	allow := s.maxCommit.Load()
	var storeParts, acctParts []string
	storeOK, acctOK := true, true
	for _, n := range s.nodes {
		over, worst, acctOver, acctWorst := 0, int64(0), 0, 0.0
		ns := byNode(ss, n.m.Name)
		for _, sm := range ns {
			worst = max(worst, sm.storeDisk)
			if sm.storeDisk > n.cache+allow {
				over++
			}
			if sm.up {
				v := sm.metric("cachegroup_store_bytes")
				acctWorst = max(acctWorst, v)
				if v > float64(n.cache+allow) {
					acctOver++
				}
			}
		}
		storeOK = storeOK && over == 0
		acctOK = acctOK && acctOver == 0
		storeParts = append(storeParts, fmt.Sprintf("%s max %s of %s, %d/%d samples over", n.m.Short, mib(worst), mib(n.cache), over, len(ns)))
		acctParts = append(acctParts, fmt.Sprintf("%s max %s, %d over", n.m.Short, mib(int64(acctWorst)), acctOver))
	}
	targets = append(targets,
		target{fmt.Sprintf("store on disk <= cache size + one commit (%s) at every sample", mib(allow)), strings.Join(storeParts, "; "), storeOK, false},
		target{"the same, as the member counts it (cachegroup_store_bytes)", strings.Join(acctParts, "; "), acctOK, false})

	// The outbox within its bound.
	var obParts []string
	obOK := true
	for _, n := range s.nodes {
		over, worst := 0, int64(0)
		for _, sm := range byNode(ss, n.m.Name) {
			worst = max(worst, sm.outboxBytes)
			if sm.outboxBytes > n.cache {
				over++
			}
		}
		obOK = obOK && over == 0
		obParts = append(obParts, fmt.Sprintf("%s max %s, %d over", n.m.Short, mib(worst), over))
	}
	targets = append(targets, target{"outbox never above its bound (the node's cache size: the product has no outbox bound of its own)",
		strings.Join(obParts, "; "), obOK, false})

	// RSS and goroutines flat over the second half.
	var rssParts, grParts []string
	rssOK, grOK := true, true
	for _, n := range s.nodes {
		ns := byNode(ss, n.m.Name)
		perMin, growth, mean, span := trend(ns, end, func(sm sample) float64 { return float64(sm.rss) })
		flat := growth <= 0.10*mean // a fall is no leak
		rssOK = rssOK && flat
		rssParts = append(rssParts, fmt.Sprintf("%s %+.2f MiB/min (%+.0f%% of %s over %.0fs)", n.m.Short, perMin/mb, 100*growth/math.Max(mean, 1), mib(int64(mean)), span))
		perMin, growth, mean, span = trend(ns, end, func(sm sample) float64 { return sm.metric("go_goroutines") })
		flat = growth <= math.Max(0.10*mean, 5)
		grOK = grOK && flat
		grParts = append(grParts, fmt.Sprintf("%s %+.1f/min (%+.1f around %.0f over %.0fs)", n.m.Short, perMin, growth, mean, span))
	}
	targets = append(targets,
		target{"RSS flat (least-squares slope over the second half, last process; flat: it grows by <= 10%)", strings.Join(rssParts, "; "), rssOK, false},
		target{"goroutines flat (the same; flat: they grow by <= max(10%, 5))", strings.Join(grParts, "; "), grOK, false})

	// The hot set.
	hotBad, hotMounts := 0, 0
	for _, b := range bs {
		if b.files > 0 {
			hotMounts++
		}
	}
	hotBad = s.tally.get(kindHotEvicted)
	targets = append(targets, target{"hot set never evicted while cold paths exist",
		fmt.Sprintf("%d of %d mounts lacked hot paths while cold files remained", hotBad, hotMounts), hotBad == 0, false})

	// Mounts that fail should fail for want of space or time, not because
	// the group lost what a head needs.
	lost := map[string]int{}
	for _, b := range bs {
		if strings.HasPrefix(b.err, "mount:") && !strings.Contains(b.err, "code = ResourceExhausted") &&
			!strings.Contains(b.err, "code = Unavailable") && !strings.Contains(b.err, "code = DeadlineExceeded") {
			lost[shortErr(b.err)]++
		}
	}
	lostN, lostKinds := 0, []string{}
	for k, v := range lost {
		lostN += v
		lostKinds = append(lostKinds, fmt.Sprintf("%d× %s", v, k))
	}
	sort.Strings(lostKinds)
	measured := fmt.Sprintf("%d other failures", lostN)
	if lostN > 0 {
		measured += ": " + strings.Join(lostKinds[:min(3, len(lostKinds))], "; ")
	}
	targets = append(targets, target{"mounts fail only for want of space or time (ResourceExhausted, Unavailable, DeadlineExceeded), never for lost data",
		measured, lostN == 0, false})

	// Processes.
	var diedCount int
	var startParts []string
	for _, n := range s.nodes {
		diedCount += int(n.died.Load())
		startParts = append(startParts, fmt.Sprintf("%s %d", n.m.Short, n.starts.Load()))
	}
	targets = append(targets, target{"no process died", fmt.Sprintf("%d died; starts %s", diedCount, strings.Join(startParts, ", ")), diedCount == 0, diedCount > 0})

	// The builds.
	var starts []time.Duration
	var mountFail, otherFail, strong, landed, dropped, resolved, forgot, hotGone int
	var read, written int64
	errs := map[string]int{}
	for _, b := range bs {
		read += b.read
		written += b.written
		forgot += b.forgot
		switch {
		case strings.HasPrefix(b.err, "mount:"):
			mountFail++
			errs[shortErr(b.err)]++
			continue
		case b.err != "":
			otherFail++
			errs[shortErr(b.err)]++
		}
		starts = append(starts, b.podStart)
		if b.strong {
			strong++
		}
		switch b.prevFate {
		case "landed":
			landed++
		case "dropped":
			dropped++
		}
		if b.resolved {
			resolved++
		}
		if b.hotGone > 0 {
			hotGone++
		}
	}

	p("# cachegroup soak: %s", time.Now().UTC().Format(time.RFC3339))
	mode := "full"
	if s.c.short {
		mode = "short"
	}
	p("")
	p("mode %s; build phase %v (or %d builds), %d at once, %d volumes of %d files (quota %s), seed %d", mode, s.c.duration,
		s.c.maxBuilds, s.c.workers, s.c.volumes, s.c.files, mib(s.c.quota), s.c.seed)
	p("members a, b, c --cache-size %s; client-only x, y --cache-size %s; R=%d; %d restarts of b (%v down each); run %.0fs",
		s.c.memberCache, s.c.clientCache, s.cl.Replicas(), s.c.restarts, s.c.downtime, end)
	if interrupted {
		p("INTERRUPTED: the run was stopped early; the figures cover what ran")
	}
	p("")
	p("## Targets")
	p("")
	p("| target | measured | met |")
	p("| --- | --- | --- |")
	failures := 0
	for _, t := range targets {
		met := "yes"
		if !t.met {
			met = "NO"
			if t.failure {
				met = "NO (failure)"
				failures++
			}
		}
		p("| %s | %s | %s |", t.name, t.measured, met)
	}
	p("")
	p("## Builds")
	p("")
	p("- %d builds (%d seeds): %d could not mount, %d failed later; %d mounts checked against the exact head, the others against every version written",
		len(bs), s.c.volumes, mountFail, otherFail, strong)
	p("- commits: %d left the outbox within %v of the unmount; the next mount saw %d landed and %d dropped", resolved, s.c.resolveWait, landed, dropped)
	p("- read and checked %s, wrote %s; %d paths forgotten (evicted) against the model; %d mounts lacked hot paths", mib(read), mib(written), forgot, hotGone)
	p("- pod start (stage + publish) p50 %v, p95 %v, max %v",
		percentile(starts, 0.5).Round(time.Millisecond), percentile(starts, 0.95).Round(time.Millisecond), percentile(starts, 1).Round(time.Millisecond))
	if len(errs) > 0 {
		p("- build errors by kind:")
		keys := make([]string, 0, len(errs))
		for k := range errs {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return errs[keys[i]] > errs[keys[j]] })
		for _, k := range keys[:min(len(keys), 8)] {
			p("  - %d× %s", errs[k], k)
		}
	}
	p("")
	p("## Members' counters at the end (summed over nodes, across restarts)")
	p("")
	for _, c := range counters(ss, nil) {
		_, ys := totalOverNodes(s, ss, c.name, c.labels...)
		if len(ys) > 0 && (ys[len(ys)-1] != 0 || c.name == "cachegroup_commits_total") {
			p("- %s %.0f", c, ys[len(ys)-1])
		}
	}
	for _, kind := range []string{kindWrong, kindStale, kindResurrected, kindReadError, kindHotEvicted, kindStampOdd} {
		if ex := s.tally.examples(kind); len(ex) > 0 {
			p("")
			p("First %s findings:", kind)
			for _, e := range ex {
				p("- %s", e)
			}
		}
	}
	if lines := s.logErrors(); len(lines) > 0 {
		p("")
		p("Errors the members logged, by message and first reason (ids and numbers left out):")
		for _, l := range lines {
			p("- %s", l)
		}
	}
	if len(events) > 0 {
		p("")
		p("Events:")
		for _, e := range events {
			p("- %s", e)
		}
	}
	for _, d := range died {
		p("")
		p("Died: %s", d)
	}
	if files, err := s.plots(dir, ss, bs); err != nil {
		p("")
		p("plots: %v", err)
	} else {
		p("")
		p("Plots: %s (in %s)", strings.Join(files, ", "), dir)
	}
	if err := s.writeCSV(dir, ss, bs); err != nil {
		p("csv: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "report.md"), []byte(w.String()), 0o644)
	fmt.Print("\n" + w.String())
	if failures > 0 {
		fmt.Printf("\nsoak: %d correctness failures (report in %s)\n", failures, dir)
		return 1
	}
	if interrupted {
		fmt.Printf("\nsoak: interrupted; no correctness failure in what ran (report in %s)\n", dir)
		return 130
	}
	fmt.Printf("\nsoak: no correctness failure (report in %s)\n", dir)
	return 0
}

var (
	errCall   = regexp.MustCompile(`\b(Node[A-Za-z]+Volume)\(`)
	errDigest = regexp.MustCompile(`\b(vol-)?[0-9a-f]{16,}\b`)
	errNumber = regexp.MustCompile(`\d+`)
)

// shortErr makes a build's error a kind: the CSI call and its gRPC status,
// without ids, digests and numbers.
func shortErr(e string) string {
	e, _, _ = strings.Cut(e, "\n")
	call := ""
	if m := errCall.FindStringSubmatch(e); m != nil {
		call = m[1] + ": "
	}
	if _, rest, ok := strings.Cut(e, "rpc error: code = "); ok {
		e = call + strings.Replace(rest, " desc = ", ": ", 1)
	}
	e = errNumber.ReplaceAllString(errDigest.ReplaceAllString(e, "<id>"), "N")
	if len(e) > 200 {
		e = e[:200] + "..."
	}
	return e
}

// counter is one counter series: its name and its labels as key=value.
type counter struct {
	name   string
	labels []string
}

// String is the series as Prometheus writes it.
func (c counter) String() string {
	if len(c.labels) == 0 {
		return c.name
	}
	var ls []string
	for _, l := range c.labels {
		k, v, _ := strings.Cut(l, "=")
		ls = append(ls, fmt.Sprintf("%s=%q", k, v))
	}
	return c.name + "{" + strings.Join(ls, ",") + "}"
}

// counters returns the cachegroup_*_total series seen in any sample whose
// name matches only (all when nil), sorted.
func counters(ss []sample, only *regexp.Regexp) []counter {
	set := map[string]counter{}
	for _, sm := range ss {
		for k := range sm.series {
			base, lbls, _ := strings.Cut(k, "{")
			if !strings.HasPrefix(base, "cachegroup_") || !strings.HasSuffix(base, "_total") || (only != nil && !only.MatchString(base)) {
				continue
			}
			c := counter{name: base}
			for _, l := range strings.Split(strings.TrimSuffix(lbls, "}"), ",") {
				if k, v, ok := strings.Cut(l, "="); ok {
					c.labels = append(c.labels, k+"="+strings.Trim(v, `"`))
				}
			}
			set[c.String()] = c
		}
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]counter, 0, len(keys))
	for _, k := range keys {
		out = append(out, set[k])
	}
	return out
}

// reclaim matches the counters of what frees or refuses space: eviction,
// collection, dropped and quarantined commits, whatever their names.
var reclaim = regexp.MustCompile(`evict|dropped_(commits|entries|layers)|collect|garbage|gc_|quarantin|refus|discard`)

// writeCSV writes samples.csv (one row per node and sample), metrics.csv
// (every series of every sample) and builds.csv.
func (s *soak) writeCSV(dir string, ss []sample, bs []buildRecord) error {
	var a, m, b strings.Builder
	a.WriteString("t,node,pid,up,store_disk_bytes,store_bytes_metric,outbox_bytes,outbox_entries,oldest_entry_s,rss_bytes,threads,goroutines\n")
	m.WriteString("t,node,series,value\n")
	for _, sm := range ss {
		fmt.Fprintf(&a, "%.1f,%s,%d,%v,%d,%.0f,%d,%d,%.0f,%d,%d,%.0f\n", sm.t, sm.node, sm.pid, sm.up, sm.storeDisk,
			sm.metric("cachegroup_store_bytes"), sm.outboxBytes, sm.outboxEntries, sm.oldestEntry, sm.rss, sm.threads, sm.metric("go_goroutines"))
		keys := make([]string, 0, len(sm.series))
		for k := range sm.series {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&m, "%.1f,%s,%q,%g\n", sm.t, sm.node, k, sm.series[k])
		}
	}
	b.WriteString("id,volume,node,at_s,seed,pod_start_s,files,read_bytes,written_bytes,deleted,strong,prev_fate,resolved,commit_s,hot_gone,forgotten,error\n")
	for _, r := range bs {
		fmt.Fprintf(&b, "%d,%s,%s,%.1f,%v,%.3f,%d,%d,%d,%d,%v,%s,%v,%.3f,%d,%d,%q\n", r.id, r.lane, r.node, r.at, r.seed,
			r.podStart.Seconds(), r.files, r.read, r.written, r.deleted, r.strong, r.prevFate, r.resolved, r.commitIn.Seconds(), r.hotGone, r.forgot, r.err)
	}
	for name, text := range map[string]string{"samples.csv": a.String(), "metrics.csv": m.String(), "builds.csv": b.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// klogError matches a klog error line: its message and what follows.
var klogError = regexp.MustCompile(`^E\d{4} [\d:.]+\s+\d+ [^\]]+\] "([^"]*)"(.*)$`)

// logErrors returns the members' error lines counted by message and the
// first line of their error, most frequent first.
func (s *soak) logErrors() []string {
	counts := map[string]int{}
	for _, n := range s.nodes {
		b, err := os.ReadFile(n.m.LogPath)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			m := klogError.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			why := m[2]
			if strings.HasSuffix(why, "err=<") && i+1 < len(lines) {
				why = strings.TrimSpace(lines[i+1])
			} else if _, e, ok := strings.Cut(why, `err="`); ok {
				why, _, _ = strings.Cut(e, `" `)
			}
			counts[n.m.Short+": "+m[1]+": "+shortErr(why)]++
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return counts[keys[i]] > counts[keys[j]] || counts[keys[i]] == counts[keys[j]] && keys[i] < keys[j]
	})
	var out []string
	for _, k := range keys[:min(len(keys), 12)] {
		out = append(out, fmt.Sprintf("%d× %s", counts[k], k))
	}
	return out
}
