package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	icluster "github.com/cachegroup/cachegroup/internal/cluster"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// operatorGrace is the members' grace period in TestOperatorTool: longer
// than a member's restart here (a few seconds), short enough to wait out.
const operatorGrace = 30 * time.Second

// TestOperatorTool runs the operator's tool, the built cachegroupctl binary,
// against a group of three members (R=2) from outside their network
// namespaces, as through a port-forward to one member (A): it seeds a
// volume from a directory and a tarball, reads the group's status and
// volumes, exports, warms a node, verifies and repairs a store; and then
// measures that a rolling restart of every member within the grace period
// moves no blob, and that a member stopped past it is re-replicated.
func TestOperatorTool(t *testing.T) {
	cl := newCluster(t)
	ctlBin := buildTool(t)
	a, b, c := cl.addHost("a"), cl.addHost("b"), cl.addHost("c")
	abc := []*member{a, b, c}
	three := membersFlag(abc...)
	graceFlag := "--member-grace-period=" + operatorGrace.String()
	for _, m := range abc {
		if err := m.Start(context.Background(), three, cl.Secret, graceFlag); err != nil {
			t.Fatal(err)
		}
	}
	waitLive(t, 3, abc...)
	vol := a.createVolume(t, "ops-cache", 1<<30)
	id := vol.GetVolumeId()
	want := manifest{}
	ctl := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := runTool(ctlBin, a.PeerAddr, cl.Secret, args...)
		if err != nil {
			t.Fatalf("cachegroupctl %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	ctlJSON := func(t *testing.T, v any, args ...string) {
		t.Helper()
		out := ctl(t, append(args, "-o", "json")...)
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("cachegroupctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	t.Run("import_a_directory_and_a_tarball", func(t *testing.T) {
		src := t.TempDir()
		set, err := writeSet(src, "seed", 31, setSpec{Files: 200, MinSize: 1, MaxSize: 32 << 10, Big: 2})
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			Files      int
			Generation uint64
		}
		ctlJSON(t, &res, "import", src, id)
		if res.Files != len(set.files()) || res.Generation == 0 {
			t.Fatalf("import of a directory: %+v, want %d files and a generation", res, len(set.files()))
		}
		want.add(set)
		tarDir := t.TempDir()
		set2, err := writeSet(tarDir, "fromtar", 32, setSpec{Files: 50, MinSize: 1, MaxSize: 8 << 10})
		if err != nil {
			t.Fatal(err)
		}
		tarball := filepath.Join(t.TempDir(), "seed.tar.gz")
		if out, err := exec.Command("tar", "-C", tarDir, "-czf", tarball, ".").CombinedOutput(); err != nil {
			t.Fatalf("tar: %v: %s", err, out)
		}
		out := ctl(t, "import", tarball, id)
		if !strings.Contains(out, fmt.Sprintf("imported %d files", len(set2.files()))) {
			t.Fatalf("import of a tarball says %q, want %d files", out, len(set2.files()))
		}
		want.add(set2)
		expectTree(t, c, vol, want)
	})

	t.Run("metrics_of_the_dashboard_and_alerts_exist", func(t *testing.T) {
		// The volume's series are at its homes only: what any member
		// exports counts.
		var text string
		for _, m := range abc {
			mt, err := m.metricsText()
			if err != nil {
				t.Fatal(err)
			}
			text += mt
		}
		for _, f := range []string{"dashboard.json", "alerts.yaml"} {
			names, err := queriedMetrics(filepath.Join("..", "..", "deploy", "helm", "cachegroup", "files", f))
			if err != nil {
				t.Fatal(err)
			}
			if len(names) < 5 {
				t.Fatalf("%s queries %d metrics: %v", f, len(names), names)
			}
			for _, n := range names {
				if !strings.Contains(text, "\n# TYPE "+n+" ") {
					t.Errorf("%s queries %s, which a running member does not export", f, n)
				}
			}
			t.Logf("%s: all %d metrics it queries are exported", f, len(names))
		}
	})

	t.Run("status", func(t *testing.T) {
		var sts []wire.Status
		ctlJSON(t, &sts, "status")
		listings := map[string]map[string]uint64{}
		for _, m := range abc {
			l, err := m.blobs()
			if err != nil {
				t.Fatal(err)
			}
			listings[m.Name] = l
		}
		if len(sts) != 3 {
			t.Fatalf("status of %d members, want 3: %+v", len(sts), sts)
		}
		for _, st := range sts {
			if st.Error != "" || st.Replicas != replicas || st.GraceSeconds != operatorGrace.Seconds() {
				t.Errorf("%s: %+v", st.Name, st)
			}
			if len(st.Members) != 3 || slices.ContainsFunc(st.Members, func(m wire.MemberStatus) bool { return !m.Live }) {
				t.Errorf("%s sees members %+v, want 3 live", st.Name, st.Members)
			}
			// What the member says it owns is what its store holds of the
			// blobs placement gives it.
			var owned int64
			for sum := range listings[st.Name] {
				if slices.Contains(owners(sum, names(abc...)), st.Name) {
					owned++
				}
			}
			if st.OwnedBlobs != owned || owned == 0 || st.StoreUsed == 0 {
				t.Errorf("%s says it owns %d blobs (store %d bytes); its store holds %d blobs it owns", st.Name, st.OwnedBlobs, st.StoreUsed, owned)
			}
		}
		table := ctl(t, "status")
		for _, m := range abc {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m.Name) + `\s+up\s`).MatchString(table) {
				t.Errorf("the status table has no line for %s up:\n%s", m.Name, table)
			}
		}
		t.Logf("cachegroupctl status:\n%s", table)
	})

	t.Run("volumes", func(t *testing.T) {
		type row struct {
			ID, Name    string
			Size, Count int64
			Quota       int64
			Generation  uint64
		}
		var rows []row
		ctlJSON(t, &rows, "volumes")
		i := slices.IndexFunc(rows, func(r row) bool { return r.ID == id })
		if i < 0 {
			t.Fatalf("volumes lists %+v, not %s", rows, id)
		}
		if r := rows[i]; r.Size != want.bytes() || r.Quota != 1<<30 || r.Generation < 2 || r.Name != "ops-cache" {
			t.Errorf("volume %s: %+v, want %d bytes of files, a quota of 1 GiB, generation 2 or more", id, r, want.bytes())
		}
		table := ctl(t, "volumes")
		if !strings.Contains(table, id) || !strings.Contains(table, "ops-cache") {
			t.Errorf("the volumes table does not list %s:\n%s", id, table)
		}
		t.Logf("cachegroupctl volumes:\n%s", table)
	})

	t.Run("export_to_a_directory_and_a_tar_stream", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "out")
		ctl(t, "export", id, dst)
		got, err := scan(dst)
		if err != nil {
			t.Fatal(err)
		}
		if diffs, n := compare(want, got, 10); n > 0 {
			t.Fatalf("the export differs from the volume in %d of %d entries:\n  %s", n, len(want), strings.Join(diffs, "\n  "))
		}
		out := ctl(t, "export", id, "-")
		files := 0
		tr := tar.NewReader(bytes.NewReader([]byte(out)))
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				files++
			}
		}
		if files != len(want.files()) {
			t.Errorf("the tar stream holds %d files, want %d", files, len(want.files()))
		}
	})

	t.Run("warm_a_node", func(t *testing.T) {
		var res wire.WarmResult
		ctlJSON(t, &res, "warm", b.Name, id)
		if !res.Done || res.Node != b.Name || res.Files == 0 {
			t.Fatalf("warm: %+v", res)
		}
		if _, err := os.Stat(filepath.Join(b.Store, "node", "snaps", res.Root.String())); err != nil {
			t.Fatalf("warm says done, but %s has no snapshot: %v", b.Name, err)
		}
		// A pod on the warmed node fetches nothing.
		fetched := func() float64 {
			return b.metric(t, "cachegroup_fetch_blobs_total", "source=owner") + b.metric(t, "cachegroup_fetch_blobs_total", "source=peer")
		}
		before := fetched()
		expectTree(t, b, vol, want)
		if after := fetched(); after != before {
			t.Errorf("a pod on the warmed node %s fetched %v blobs", b.Name, after-before)
		}
		t.Logf("warmed %s with %d files in %.2fs; a pod there then fetched nothing", b.Name, res.Files, res.Seconds)
	})

	t.Run("verify_repairs_a_corrupt_copy", func(t *testing.T) {
		// Unstaged, C's node keeps no snapshot: a copy there is the store's
		// alone, as a blob owned but not mounted is.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Unstage(ctx, vol); err != nil {
			t.Fatal(err)
		}
		var victim string
		var have map[string]uint64
		ok, msg := poll(30*time.Second, 200*time.Millisecond, func() (bool, string) {
			var err error
			if have, err = c.blobs(); err != nil {
				return false, err.Error()
			}
			for _, sum := range want.sums() {
				if have[sum] == 1 && sizeOf(want, sum) > 128 && slices.Contains(owners(sum, names(abc...)), c.Name) {
					victim = sum
					return true, ""
				}
			}
			return false, "every blob " + c.Name + " owns is still linked into a snapshot"
		})
		if !ok {
			t.Fatal(msg)
		}
		if err := flipBytes(c.blobPath(victim)); err != nil {
			t.Fatal(err)
		}
		var reps []wire.VerifyState
		ctlJSON(t, &reps, "verify", c.Name) // asked of A, passed on to C
		if len(reps) != 1 || reps[0].CorruptCount != 1 || reps[0].Repaired != 1 || len(reps[0].Corrupt) != 1 ||
			reps[0].Corrupt[0].String() != victim || reps[0].Checked < int64(len(have)) {
			t.Fatalf("verify of %s: %+v, want the one corrupt copy %s found and repaired", c.Name, reps, victim[:12])
		}
		sum, _, err := hashFile(c.blobPath(victim))
		if err != nil || sum != victim {
			t.Fatalf("after verify, %s's copy of %s hashes to %s (%v)", c.Name, victim[:12], sum, err)
		}
		t.Logf("verify of %s checked %d blobs (%.1f MiB), found and repaired the corrupt copy of %s",
			c.Name, reps[0].Checked, mib(reps[0].Bytes), victim[:12])
	})

	t.Run("gc_dry_run_walks_every_member", func(t *testing.T) {
		var cs []wire.Collection
		ctlJSON(t, &cs, "gc", "--all", "--dry-run")
		if len(cs) != len(abc) {
			t.Fatalf("gc --all answered for %d members, want %d", len(cs), len(abc))
		}
		for _, c := range cs {
			if c.Deleted != 0 || c.Roots == 0 || c.Held == 0 || c.Garbage > c.Held {
				t.Fatalf("gc --dry-run of %s: %+v, want live roots walked and nothing deleted", c.Member, c)
			}
		}
		t.Logf("gc --dry-run: %+v", cs)
	})

	t.Run("rolling_restart_within_the_grace_period_moves_no_data", func(t *testing.T) {
		before := storeListings(t, abc)
		// Blobs pushed by re-replication over every process during the
		// rollout: a process's counter is read when it is stopped and at the
		// end, less what the first processes had counted before it began.
		moved := 0.0
		for _, m := range abc {
			moved -= m.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed")
		}
		for _, x := range abc {
			others := slices.DeleteFunc(slices.Clone(abc), func(m *member) bool { return m == x })
			passes := passCounts(t, others)
			moved += x.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed")
			stopped := time.Now()
			x.stop(t)
			waitLive(t, 2, others...)
			// Every other member completes a pass over its blobs that found
			// X down: the pass that would copy X's blobs to stand-ins.
			waitPass(t, others, passes, 1)
			passes = passCounts(t, others)
			passes[x.Name] = 0 // a new process
			if err := x.Start(context.Background(), three, cl.Secret, graceFlag); err != nil {
				t.Fatal(err)
			}
			waitLive(t, 3, abc...)
			down := time.Since(stopped)
			if down >= operatorGrace {
				t.Fatalf("%s was down %v, past the grace period %v: a rollout this slow cannot be told from a loss", x.Name, down, operatorGrace)
			}
			// And one with everyone back: the pass that would move them back.
			waitPass(t, abc, passes, 0)
			t.Logf("%s restarted, down %v", x.Name, down.Round(time.Millisecond))
		}
		for _, y := range abc {
			moved += y.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed")
		}
		// No copy was made anywhere, and every member still holds each
		// blob it owns; only copies a member does not own (a node's copies
		// for a pod, unlinked since) may have been let go.
		after := storeListings(t, abc)
		group := names(abc...)
		strays := 0
		for name, l := range before {
			for sum := range after[name] {
				if _, ok := l[sum]; !ok {
					t.Errorf("%s gained blob %s over the rolling restart", name, sum[:12])
				}
			}
			for sum := range l {
				_, kept := after[name][sum]
				switch owns := slices.Contains(owners(sum, group), name); {
				case owns && !kept:
					t.Errorf("%s lost blob %s, which it owns, over the rolling restart", name, sum[:12])
				case !kept:
					strays++
				}
			}
		}
		if moved != 0 {
			t.Errorf("re-replication pushed %v blob copies during a rolling restart within the grace period", moved)
		}
		t.Logf("a rolling restart of %d members within the grace period: re-replication pushed %v blob copies over every process (expected: none); "+
			"every member kept every blob it owns; %d copies members did not own were let go", len(abc), moved, strays)
	})

	t.Run("member_gone_past_the_grace_period_is_rereplicated", func(t *testing.T) {
		for _, m := range abc {
			m.keepUp(t)
		}
		waitLive(t, 3, abc...)
		// The blobs of the volume's files that node-c held: garbage it held
		// (an import replaced it) is collected, not re-replicated.
		all := map[string]bool{}
		held := storeListings(t, []*member{c})[c.Name]
		for _, sum := range want.sums() {
			if _, ok := held[sum]; ok {
				all[sum] = true
			}
		}
		if len(all) == 0 {
			t.Fatalf("%s holds none of the volume's blobs: the test shows nothing", c.Name)
		}
		c.stop(t)
		ab := []*member{a, b}
		ok, msg := poll(operatorGrace+90*time.Second, time.Second, func() (bool, string) {
			gone := a.metric(t, "cachegroup_member_gone", "member="+c.Name)
			var lacking []string
			for sum := range all {
				for _, m := range ab {
					if !m.hasBlob(sum) {
						lacking = append(lacking, m.Name+":"+sum[:12])
					}
				}
			}
			return gone == 1 && len(lacking) == 0, fmt.Sprintf("%s gone: %v; %d copies missing on %s and %s %v",
				c.Name, gone, len(lacking), a.Name, b.Name, lastN(lacking, 4))
		})
		if !ok {
			t.Fatalf("%s stopped past the grace period, its blobs are not back to R=2 copies on the others: %s", c.Name, msg)
		}
		pushed := a.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed") + b.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed")
		if pushed == 0 {
			t.Fatal("no blob was pushed: the copies were there already, the test shows nothing")
		}
		table := ctl(t, "status")
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(c.Name) + `\s+gone\s`).MatchString(table) {
			t.Errorf("status does not show %s gone:\n%s", c.Name, table)
		}
		t.Logf("%s stopped past the grace period: %v blob copies re-replicated to %s and %s; status:\n%s", c.Name, pushed, a.Name, b.Name, table)
	})
}

// buildTool builds cmd/cachegroupctl into a directory of the test's and
// returns the binary.
func buildTool(t *testing.T) string {
	t.Helper()
	root, err := icluster.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "cachegroupctl")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/cachegroupctl")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build cachegroupctl: %v\n%s", err, out)
	}
	return bin
}

// runTool runs the tool against the member at addr with the group's secret,
// bounded by two minutes, and returns what it wrote on stdout.
func runTool(bin, addr, secret string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--address="+addr, "--secret-file="+secret)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// queriedMetrics returns the cachegroup metrics the file at p queries, a
// histogram's series by the histogram's name.
func queriedMetrics(p string) ([]string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, n := range regexp.MustCompile(`\bcachegroup_[a-z0-9_]+`).FindAllString(string(b), -1) {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			n = strings.TrimSuffix(n, suffix)
		}
		seen[n] = true
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// storeListings returns each member's blobs, by member name.
func storeListings(t *testing.T, ms []*member) map[string]map[string]uint64 {
	t.Helper()
	out := map[string]map[string]uint64{}
	for _, m := range ms {
		l, err := m.blobs()
		if err != nil {
			t.Fatal(err)
		}
		out[m.Name] = l
	}
	return out
}

// passCounts returns the re-replication passes each of ms has completed.
func passCounts(t *testing.T, ms []*member) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, m := range ms {
		out[m.Name] = m.metric(t, "cachegroup_rereplication_passes_total")
	}
	return out
}

// waitPass waits until each of ms has completed a re-replication pass
// since it had completed since[its name], the last of which found down
// members down.
func waitPass(t *testing.T, ms []*member, since map[string]float64, down float64) {
	t.Helper()
	ok, msg := poll(90*time.Second, 200*time.Millisecond, func() (bool, string) {
		var seen []string
		done := true
		for _, m := range ms {
			text, err := m.metricsText()
			if err != nil {
				return false, err.Error()
			}
			n := parseMetric(text, "cachegroup_rereplication_passes_total", nil)
			d := parseMetric(text, "cachegroup_rereplication_last_pass_down_members", nil)
			done = done && n > since[m.Name] && d == down
			seen = append(seen, fmt.Sprintf("%s: %v passes (from %v), the last with %v down", m.Name, n, since[m.Name], d))
		}
		return done, strings.Join(seen, "; ")
	})
	if !ok {
		t.Fatalf("no re-replication pass with %v members down: %s", down, msg)
	}
}
