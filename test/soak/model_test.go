package main

import (
	"crypto/sha256"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/internal/cluster"
)

func sum(b []byte) digest { return sha256.Sum256(b) }

// seeded returns a model of a volume whose seed build 1 landed with files
// a (hot) and b, and the tree a mount then shows.
func seeded(t *testing.T) (*volModel, map[string]digest) {
	t.Helper()
	v := newVolModel("v")
	v.hot["hot/a"] = true
	ops := map[string]op{}
	for _, p := range []string{"hot/a", "b"} {
		s := sum(content("v", p, 1, 100))
		v.wrote(p, s)
		ops[p] = op{sum: s}
	}
	st := sum(stampContent(1))
	v.wrote(stampPath, st)
	ops[stampPath] = op{sum: st}
	if res := v.check(map[string]digest{}, 0, 0, nil, true, true); len(res.findings) != 0 || !res.strong {
		t.Fatalf("an empty volume before any build: %+v", res)
	}
	seen := map[string]digest{}
	for p, o := range ops {
		seen[p] = o.sum
	}
	res := v.check(seen, 1, 1, ops, true, true)
	if res.prevFate != "landed" || !res.strong || len(res.findings) != 0 {
		t.Fatalf("the seed landed: %+v", res)
	}
	return v, seen
}

func kinds(res checkResult) map[string]int {
	out := map[string]int{}
	for _, f := range res.findings {
		out[f.kind]++
	}
	return out
}

func TestCheckFindsWrongStaleAndResurrected(t *testing.T) {
	v, seen := seeded(t)
	// Build 2 rewrites b and deletes nothing; its commit lands.
	nb := sum(content("v", "b", 2, 50))
	v.wrote("b", nb)
	st2 := sum(stampContent(2))
	v.wrote(stampPath, st2)
	ops := map[string]op{"b": {sum: nb}, stampPath: {sum: st2}}

	stale := map[string]digest{"hot/a": seen["hot/a"], "b": seen["b"], stampPath: st2}
	if k := kinds(v.clone().check(stale, 2, 2, ops, true, true)); k[kindStale] != 1 {
		t.Errorf("the old b after build 2 landed: %v, want one stale", k)
	}
	wrong := map[string]digest{"hot/a": seen["hot/a"], "b": sum([]byte("junk")), stampPath: st2}
	if k := kinds(v.clone().check(wrong, 2, 2, ops, true, true)); k[kindWrong] != 1 {
		t.Errorf("junk at b: %v, want one wrong", k)
	}
	// Build 2 deleted b instead: b back is resurrected.
	del := map[string]op{"b": {del: true}, stampPath: {sum: st2}}
	if k := kinds(v.clone().check(stale, 2, 2, del, true, true)); k[kindResurrected] != 1 {
		t.Errorf("b back after its delete landed: %v, want one resurrected", k)
	}
	// Build 2 dropped: the old tree is right.
	old := map[string]digest{"hot/a": seen["hot/a"], "b": seen["b"], stampPath: seen[stampPath]}
	res := v.clone().check(old, 1, 2, ops, true, true)
	if res.prevFate != "dropped" || len(res.findings) != 0 {
		t.Errorf("build 2 dropped: %+v", res)
	}
	// Its commit still pending: only the weak check, and old and new both pass.
	w := v.clone()
	if res := w.check(old, 1, 2, ops, false, false); res.strong || len(res.findings) != 0 {
		t.Errorf("pending, old tree: %+v", res)
	}
	if res := w.check(stale, 2, 2, ops, false, false); res.strong || len(res.findings) != 0 {
		t.Errorf("pending, half new tree: %+v", res)
	}
	// Once nothing is pending the model is certain again.
	if res := w.check(stale, 2, 2, ops, true, true); len(res.findings) != 0 || !w.certain {
		t.Errorf("settled: %+v, certain %v", res, w.certain)
	}
}

func TestCheckForgottenAndHot(t *testing.T) {
	v, seen := seeded(t)
	st2 := sum(stampContent(2))
	v.wrote(stampPath, st2)
	ops := map[string]op{stampPath: {sum: st2}}
	// b evicted: forgotten, allowed.
	res := v.clone().check(map[string]digest{"hot/a": seen["hot/a"], stampPath: st2}, 2, 2, ops, true, true)
	if k := kinds(res); res.forgotten != 1 || k[kindHotEvicted] != 0 {
		t.Errorf("b evicted: %+v", res)
	}
	for _, f := range res.findings {
		if correctness(f.kind) {
			t.Errorf("an eviction is no failure: %v", f)
		}
	}
	// The hot a evicted while cold b remains.
	res = v.clone().check(map[string]digest{"b": seen["b"], stampPath: st2}, 2, 2, ops, true, true)
	if k := kinds(res); k[kindHotEvicted] != 1 {
		t.Errorf("hot a evicted before cold b: %v", k)
	}
	// The stamp forgotten: the lane goes uncertain.
	res = v.clone().check(seen, 0, 2, ops, true, true)
	if k := kinds(res); k[kindStampOdd] != 1 {
		t.Errorf("the stamp forgotten: %v", k)
	}
}

// clone copies the model, so one state can be checked several ways.
func (v *volModel) clone() *volModel {
	w := newVolModel(v.name)
	for p, s := range v.versions {
		w.versions[p] = map[digest]bool{}
		for d := range s {
			w.versions[p][d] = true
		}
	}
	for p := range v.hot {
		w.hot[p] = true
	}
	for p, d := range v.want {
		w.want[p] = d
	}
	w.certain, w.stamp = v.certain, v.stamp
	return w
}

func TestContentAndStamp(t *testing.T) {
	a, b := content("v", "p", 3, 1000), content("v", "p", 3, 1000)
	if string(a) != string(b) || len(a) < 1000 {
		t.Fatal("content is not deterministic")
	}
	if string(content("v", "p", 4, 1000)) == string(a) || string(content("v", "q", 3, 1000)) == string(a) {
		t.Fatal("content does not depend on build and path")
	}
	if got := parseStamp(stampContent(42)); got != 42 {
		t.Fatalf("stamp 42 reads %d", got)
	}
	if got := parseStamp([]byte("nonsense")); got != -1 {
		t.Fatalf("a bad stamp reads %d", got)
	}
}

func TestSlopeCumulativeAndSeries(t *testing.T) {
	if b := slope([]float64{0, 1, 2, 3}, []float64{1, 3, 5, 7}); math.Abs(b-2) > 1e-9 {
		t.Fatalf("slope %v, want 2", b)
	}
	text := "# HELP x\ncachegroup_commits_total{result=\"applied\"} 5\ncachegroup_commits_total{result=\"failed\"} 2\n" +
		"go_goroutines 40\ncachegroup_hydrate_seconds_bucket{le=\"1\"} 3\nother 1\n"
	ser := parseSeries(text)
	if len(ser) != 3 {
		t.Fatalf("series %v", ser)
	}
	sm := sample{series: ser, up: true, pid: 1}
	if sm.metric("cachegroup_commits_total") != 7 || sm.metric("cachegroup_commits_total", "result=failed") != 2 {
		t.Fatalf("metric sums wrong: %v", ser)
	}
	// A restart (new pid, counter from zero) keeps the running total.
	mk := func(pid int, v float64) sample {
		return sample{up: true, pid: pid, series: map[string]float64{"c_total": v}}
	}
	got := cumulative([]sample{mk(1, 3), mk(1, 5), {pid: 0}, mk(2, 1), mk(2, 4)}, "c_total")
	want := []float64{3, 5, 5, 6, 9}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("cumulative %v, want %v", got, want)
		}
	}
}

func TestShortErr(t *testing.T) {
	e := `mount: NodeStageVolume(volume_id=vol-7edbd6ebd72a33f3ef8eeb88, staging_target_path=/tmp/x/staging/soak-0, mount_flags=["a"]): rpc error: code = ResourceExhausted desc = stage volume vol-f95051e04c090f58bff14122: snapshot e21577d9db2bad51004ba45d4137ee2c5db69fc4404a6b264d0701d7eff52f29: store blob: cache store is full: 67108860 bytes used of 67108864`
	want := "NodeStageVolume: ResourceExhausted: stage volume <id>: snapshot <id>: store blob: cache store is full: N bytes used of N"
	if got := shortErr(e); got != want {
		t.Fatalf("shortErr:\n got %s\nwant %s", got, want)
	}
}

func TestPlots(t *testing.T) {
	s := &soak{c: config{memberCache: "64Mi", clientCache: "32Mi", memberBytes: 64 << 20, clientBytes: 32 << 20}}
	for _, name := range []string{"node-a", "node-x"} {
		s.nodes = append(s.nodes, &node{m: &cluster.Member{Name: name, Short: name[5:]}, cache: 64 << 20})
	}
	var ss []sample
	for i := range 20 {
		for _, n := range s.nodes {
			ss = append(ss, sample{t: float64(i), node: n.m.Name, pid: 1, up: true, storeDisk: int64(i) << 20, rss: 50 << 20,
				series: map[string]float64{`cachegroup_commits_total{result="applied"}`: float64(i), "go_goroutines": 40}})
		}
	}
	bs := []buildRecord{{at: 1, podStart: time.Second}, {at: 2, podStart: time.Second, err: "mount: x"}}
	dir := t.TempDir()
	files, err := s.plots(dir, ss, bs)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"soak.png", "store.png", "commits.png", "podstart.png", "rss.png", "goroutines.png", "outbox.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() < 1000 {
			t.Errorf("%s: %v (files %v)", f, err, files)
		}
	}
}
