package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/mounter"
)

// TestCacheGroup runs a cache group of three members (R=2), A, B and C, each
// the real driver binary in its own network namespace, and plays the
// scenarios of a cache group's life against it, one after the other on the
// same group: each asserts its outcome, and a later one builds on the data
// the earlier ones committed.
func TestCacheGroup(t *testing.T) {
	cl := newCluster(t)
	a, b, c := cl.addHost("a"), cl.addHost("b"), cl.addHost("c")
	abc := []*member{a, b, c}
	three := membersFlag(abc...)
	for _, m := range abc {
		m.start(t, three, cl.Secret)
	}
	waitLive(t, 3, abc...)
	vol := a.createVolume(t, "e2e-cache", 2<<30)
	// want is what the volume holds once every commit so far is applied.
	want := manifest{}
	// keepUp starts a member an earlier failed step left stopped, and waits
	// until every member sees the others live: a member restarted a moment
	// ago is still down in its peers' view until their next health check.
	keepUp := func(t *testing.T) {
		for _, m := range abc {
			m.keepUp(t)
		}
		waitLive(t, 3, abc...)
	}

	// ensureData commits a few files when no earlier scenario did (a run of
	// a single scenario with -run).
	ensureData := func(t *testing.T) {
		if len(want.files()) > 0 {
			return
		}
		p := a.mount(t, vol)
		set, err := writeSet(p.target, "seed", 100, setSpec{Files: 50, MinSize: 1, MaxSize: 16 << 10})
		if err != nil {
			t.Fatal(err)
		}
		p.unmount(t)
		a.waitCommitted(t, time.Minute)
		want.add(set)
	}

	t.Run("1_write_on_A_read_on_C", func(t *testing.T) {
		keepUp(t)
		p := a.mount(t, vol)
		set, err := writeSet(p.target, "set1", 1, setSpec{Files: 300, MinSize: 1, MaxSize: 32 << 10, Big: 8})
		if err != nil {
			t.Fatal(err)
		}
		p.unmount(t)
		took := a.waitCommitted(t, 90*time.Second)
		want.add(set)
		t.Logf("a pod on %s wrote %d files (%.1f MiB); committed %v after unpublish",
			a.Name, len(set.files()), mib(set.bytes()), took.Round(time.Millisecond))
		expectTree(t, c, vol, want)
	})

	t.Run("2_member_down_and_back", func(t *testing.T) {
		keepUp(t)
		p := c.mount(t, vol)
		set2, err := writeSet(p.target, "set2", 2, setSpec{Files: 100, MinSize: 1, MaxSize: 64 << 10, Big: 2})
		if err != nil {
			t.Fatal(err)
		}
		p.unmount(t)
		c.waitCommitted(t, time.Minute)
		want.add(set2)

		b.stop(t)
		t.Logf("stopped %s (SIGTERM)", b.Name)
		have, err := a.blobs()
		if err != nil {
			t.Fatal(err)
		}
		lacking := 0
		for _, s := range set2.sums() {
			if have[s] == 0 {
				lacking++
			}
		}
		fetched0 := a.metric(t, "cachegroup_fetch_blobs_total", "source=owner")
		// Every file is readable from a pod on A, which lacks part of what C
		// wrote: the head from the remaining home, blobs from the remaining
		// owners.
		start := time.Now()
		q := a.mount(t, vol)
		mounted := time.Since(start)
		got, err := scan(q.target)
		if err != nil {
			t.Fatal(err)
		}
		if diffs, n := compare(want, got, 10); n > 0 {
			t.Fatalf("with %s down, a pod on %s reads a tree that differs in %d of %d entries:\n  %s",
				b.Name, a.Name, n, len(want), strings.Join(diffs, "\n  "))
		}
		t.Logf("with %s down, a pod on %s mounted the volume in %v and read all %d files right; "+
			"%d of the %d blobs %s had just written were not on %s, which fetched %v blobs from owners",
			b.Name, a.Name, mounted.Round(time.Millisecond), len(want.files()), lacking, len(set2.sums()), c.Name,
			a.Name, a.metric(t, "cachegroup_fetch_blobs_total", "source=owner")-fetched0)

		// New commits still succeed.
		set3, err := writeSet(q.target, "set3", 3, setSpec{Files: 60, MinSize: 1, MaxSize: 64 << 10, Big: 1})
		if err != nil {
			t.Fatal(err)
		}
		// The outbox also empties when a commit is refused for good; the
		// commit histogram counts applied commits only.
		before := map[string]bool{}
		for _, s := range want.sums() {
			before[s] = true
		}
		applied0 := a.metric(t, "cachegroup_commit_seconds_count")
		q.unmount(t)
		took := a.waitCommitted(t, time.Minute)
		if applied := a.metric(t, "cachegroup_commit_seconds_count"); applied <= applied0 {
			t.Errorf("with %s down, %s's outbox emptied but no commit was applied (cachegroup_commit_seconds_count stayed at %v)", b.Name, a.Name, applied)
		}
		want.add(set3)
		t.Logf("with %s down, %s committed %d new files in %v", b.Name, a.Name, len(set3.files()), took.Round(time.Millisecond))
		expectTree(t, c, vol, want)

		// The member back: every blob regains its R copies at its owners.
		group := names(abc...)
		bOwnsNew := 0 // blobs B owns whose content first appeared while it was down
		for _, s := range set3.sums() {
			if !before[s] && slices.Contains(owners(s, group), b.Name) {
				bOwnsNew++
			}
		}
		pushed0 := a.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed") +
			c.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed")
		start = time.Now()
		b.start(t, three, cl.Secret)
		ok, msg := poll(90*time.Second, 500*time.Millisecond, func() (bool, string) {
			return replicated(want.sums(), group, abc)
		})
		if !ok {
			t.Fatalf("re-replication did not complete within 90s of %s's return: %s", b.Name, msg)
		}
		pushed := a.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed") +
			c.metric(t, "cachegroup_rereplicated_blobs_total", "action=pushed") - pushed0
		t.Logf("%s back: every blob of the volume at both its owners after %v; %s and %s pushed %v copies; %s owns %d of the blobs committed while it was down",
			b.Name, time.Since(start).Round(time.Millisecond), a.Name, c.Name, pushed, b.Name, bOwnsNew)
		if bOwnsNew > 0 && pushed < float64(bOwnsNew) {
			t.Errorf("%s owns %d blobs committed while it was down, but %s and %s counted only %v re-replication pushes",
				b.Name, bOwnsNew, a.Name, c.Name, pushed)
		}
		expectTree(t, b, vol, want)
	})

	t.Run("3_node_plugin_restarted_under_a_live_mount", func(t *testing.T) {
		keepUp(t)
		ensureData(t)
		p := a.mount(t, vol)
		files := want.files()
		var (
			reads, fails atomic.Int64
			mu           sync.Mutex
			firstErrs    []string
			stop         = make(chan struct{})
			done         = make(chan struct{})
		)
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rel := files[(i*7919)%len(files)]
				sum, _, err := hashFile(filepath.Join(p.target, rel))
				if err == nil && sum != want[rel].Sum {
					err = fmt.Errorf("%s: content sha256 %s, want %s", rel, sum, want[rel].Sum)
				}
				if err == nil && i%20 == 0 {
					_, err = os.ReadDir(filepath.Join(p.target, filepath.Dir(rel)))
				}
				if err != nil {
					fails.Add(1)
					mu.Lock()
					if len(firstErrs) < 5 {
						firstErrs = append(firstErrs, err.Error())
					}
					mu.Unlock()
					continue
				}
				reads.Add(1)
			}
		}()
		time.Sleep(300 * time.Millisecond)
		before := reads.Load()
		a.kill(t)
		killed := time.Now()
		atKill := reads.Load()
		// No driver process at all: the pod reads and writes on.
		time.Sleep(time.Second)
		during, err := writeSet(p.target, "set4-restart", 4, setSpec{Files: 30, MinSize: 1, MaxSize: 16 << 10})
		if err != nil {
			t.Errorf("writing while the node plugin is down: %v", err)
		}
		readsDown := reads.Load() - atKill
		a.start(t, three, cl.Secret)
		downFor := time.Since(killed)
		time.Sleep(300 * time.Millisecond)
		close(stop)
		<-done
		waitLive(t, 3, abc...)
		t.Logf("reads of the live mount: %d before SIGKILL, %d while %s was down (%v, until its restart answered CSI calls), %d in all; %d failed",
			before, readsDown, a.Name, downFor.Round(time.Millisecond), reads.Load(), fails.Load())
		if fails.Load() > 0 {
			t.Errorf("%d reads of the live mount failed across the restart of %s, first: %v", fails.Load(), a.Name, firstErrs)
		}
		if readsDown == 0 {
			t.Errorf("no read of the live mount completed while %s was down", a.Name)
		}
		if ok, err := mounter.IsMountPoint(p.target); err != nil || !ok {
			t.Fatalf("the pod's volume %s is no longer mounted after the restart of %s (%v)", p.target, a.Name, err)
		}
		after, err := writeSet(p.target, "set4-after", 5, setSpec{Files: 30, MinSize: 1, MaxSize: 16 << 10})
		if err != nil {
			t.Fatal(err)
		}
		p.unmount(t) // through the new process
		took := a.waitCommitted(t, time.Minute)
		if during != nil {
			want.add(during)
		}
		want.add(after)
		t.Logf("unpublished through the restarted %s: %d files written before and after the restart committed in %v",
			a.Name, len(during.files())+len(after.files()), took.Round(time.Millisecond))
		expectTree(t, c, vol, want)
	})

	t.Run("4_corrupt_copy_on_one_owner", func(t *testing.T) {
		keepUp(t)
		vol2 := a.createVolume(t, "e2e-corrupt", 1<<30)
		p := a.mount(t, vol2)
		set, err := writeSet(p.target, "set5", 6, setSpec{Files: 60, MinSize: 16 << 10, MaxSize: 256 << 10})
		if err != nil {
			t.Fatal(err)
		}
		p.unmount(t)
		a.waitCommitted(t, time.Minute)
		// The blobs that B and A own, B first: C, the reader, owns none of
		// them and tries B's copy first.
		group := names(abc...)
		var bad []string
		for _, s := range set.sums() {
			o := owners(s, group)
			if o[0] == b.Name && o[1] == a.Name && sizeOf(set, s) >= 1024 {
				bad = append(bad, s)
			}
		}
		if len(bad) == 0 {
			t.Fatalf("none of the %d blobs is owned by %s then %s: change the set's seed", len(set.sums()), b.Name, a.Name)
		}
		ok, msg := poll(30*time.Second, 200*time.Millisecond, func() (bool, string) {
			n := 0
			for _, s := range bad {
				if b.hasBlob(s) {
					n++
				}
			}
			return n == len(bad), fmt.Sprintf("%s holds %d of the %d blobs it owns", b.Name, n, len(bad))
		})
		if !ok {
			t.Fatalf("after the commit: %s", msg)
		}
		for _, s := range bad {
			if c.hasBlob(s) {
				t.Fatalf("%s, the reader, holds blob %s it does not own before reading", c.Name, s)
			}
			if err := flipBytes(b.blobPath(s)); err != nil {
				t.Fatal(err)
			}
			if sum, _, err := hashFile(b.blobPath(s)); err != nil || sum == s {
				t.Fatalf("flipping bytes of %s did not corrupt it (%v)", b.blobPath(s), err)
			}
		}
		t.Logf("flipped bytes in %d blobs on %s's disk (owned by %s then %s)", len(bad), b.Name, b.Name, a.Name)
		corrupt0 := c.metric(t, "cachegroup_corrupt_blobs_total")
		servedCorrupt0 := b.metric(t, "cachegroup_corrupt_blobs_total")
		expectTree(t, c, vol2, set)
		detected := c.metric(t, "cachegroup_corrupt_blobs_total") - corrupt0
		t.Logf("%s counted %v corrupt blobs while reading (and %s %v)", c.Name, detected, b.Name,
			b.metric(t, "cachegroup_corrupt_blobs_total")-servedCorrupt0)
		if detected < 1 {
			t.Errorf("%s read right bytes but its cachegroup_corrupt_blobs_total did not increase: the %d corrupted copies on %s, first in its fetch order, were never detected",
				c.Name, len(bad), b.Name)
		}
		// The bad copies are replaced: the owner's files hash right again.
		start := time.Now()
		ok, msg = poll(50*time.Second, time.Second, func() (bool, string) {
			good, missing, wrong := 0, 0, 0
			for _, s := range bad {
				switch sum, _, err := hashFile(b.blobPath(s)); {
				case err != nil:
					missing++
				case sum == s:
					good++
				default:
					wrong++
				}
			}
			return good == len(bad), fmt.Sprintf("of the %d corrupted copies on %s, %d hash right, %d are missing, %d are still corrupt",
				len(bad), b.Name, good, missing, wrong)
		})
		if !ok {
			t.Errorf("the bad copies were not replaced within 50s (two re-replication intervals and more): %s", msg)
		} else {
			t.Logf("the bad copies were replaced %v after the read", time.Since(start).Round(time.Millisecond))
		}
	})

	t.Run("5_peers_without_the_secret_are_refused", func(t *testing.T) {
		keepUp(t)
		ensureData(t)
		refused := func(ms ...*member) float64 {
			var n float64
			for _, m := range ms {
				n += m.metric(t, "cachegroup_refused_requests_total", "reason=unauthenticated")
			}
			return n
		}
		r0 := refused(a)
		hc := http.Client{Timeout: 5 * time.Second}
		get := func(path string, hdr map[string]string) (int, []byte) {
			t.Helper()
			req, err := http.NewRequest("GET", "http://"+a.PeerAddr+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("GET %s on %s: %v", path, a.Name, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			return resp.StatusCode, body
		}
		if code, body := get("/v1/health", nil); code != http.StatusUnauthorized {
			t.Errorf("GET /v1/health without credentials: %d %q, want 401", code, body)
		}
		var blob string
		for _, s := range want.sums() {
			if a.hasBlob(s) && sizeOf(want, s) > 0 {
				blob = s
				break
			}
		}
		if code, body := get("/v1/blobs/"+blob, nil); code != http.StatusUnauthorized || len(body) > 512 {
			t.Errorf("GET a blob without credentials: %d with %d bytes, want 401 and no content", code, len(body))
		}
		forged := make([]byte, 32)
		rand.Read(forged)
		if code, body := get("/v1/health", map[string]string{
			"X-Cachegroup-Member": b.Name,
			"X-Cachegroup-Time":   strconv.FormatInt(time.Now().Unix(), 10),
			"X-Cachegroup-Auth":   hex.EncodeToString(forged),
		}); code != http.StatusUnauthorized {
			t.Errorf("GET /v1/health with forged credentials: %d %q, want 401", code, body)
		}
		if n := refused(a) - r0; n < 3 {
			t.Errorf("%s refused 3 requests but cachegroup_refused_requests_total{reason=\"unauthenticated\"} rose by %v", a.Name, n)
		}

		// A member with the wrong secret, listed by every member (as a
		// DaemonSet pod would be in the EndpointSlices), never becomes part of
		// the group: its health checks fail both ways.
		e := cl.addHost("e")
		all := membersFlag(a, b, c, e)
		wrong := cl.writeSecret("wrong-secret")
		for _, m := range abc {
			m.restart(t, all)
		}
		rb := refused(abc...)
		e.start(t, all, wrong)
		defer func() {
			e.stop(t)
			for _, m := range abc {
				m.restart(t, three)
			}
			waitLive(t, 3, abc...)
		}()
		watch := time.Now().Add(7 * time.Second) // three rounds of health checks
		for time.Now().Before(watch) {
			if live := e.metric(t, "cachegroup_members_live"); live != 1 {
				t.Errorf("%s, with the wrong secret, sees %v live members, want 1 (itself)", e.Name, live)
				break
			}
			for _, m := range abc {
				if live := m.metric(t, "cachegroup_members_live"); live > 3 {
					t.Errorf("%s sees %v live members: %s, with the wrong secret, counts as live", m.Name, live, e.Name)
				}
			}
			time.Sleep(500 * time.Millisecond)
		}
		if n := refused(abc...) - rb; n < 3 {
			t.Errorf("%s's requests were refused %v times by %s, %s and %s in 7s, want at least 3", e.Name, n, a.Name, b.Name, c.Name)
		} else {
			t.Logf("%s, with the wrong secret, saw only itself live; %s, %s and %s refused its requests %v times",
				e.Name, a.Name, b.Name, c.Name, n)
		}
		// Nothing of the group reaches it: a commit places no blob on it, and
		// it cannot stage the group's volume.
		p := a.mount(t, vol)
		set, err := writeSet(p.target, "set6", 7, setSpec{Files: 40, MinSize: 1, MaxSize: 16 << 10})
		if err != nil {
			t.Fatal(err)
		}
		p.unmount(t)
		a.waitCommitted(t, time.Minute)
		want.add(set)
		bl, err := e.blobs()
		if err != nil {
			t.Fatal(err)
		}
		delete(bl, emptyTree) // every store holds the empty directory object
		if len(bl) > 0 {
			t.Errorf("%s, with the wrong secret, holds %d blobs of the group", e.Name, len(bl))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		staging := filepath.Join(cl.Dir, "e", "kubelet", "staging", "0")
		os.MkdirAll(staging, 0o750)
		_, err = e.D.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
			VolumeId:          vol.GetVolumeId(),
			StagingTargetPath: staging,
			VolumeCapability:  csiharness.Capability(mountFlags, false),
			VolumeContext:     vol.GetVolumeContext(),
		})
		if err == nil {
			t.Errorf("%s, with the wrong secret, staged the group's volume", e.Name)
		} else {
			t.Logf("%s cannot stage the group's volume: %v", e.Name, err)
		}
		expectTree(t, c, vol, want)
	})

	// The real build runs before the fourth member joins, so that the join
	// moves thousands of blobs: a tighter measure of the moved fraction.
	t.Run("7_real_build_go_mod_download", func(t *testing.T) {
		keepUp(t)
		goBin, err := exec.LookPath("go")
		if err != nil {
			t.Fatal(err)
		}
		if err := probeProxy(goBin, filepath.Join(cl.Dir, "probe")); err != nil {
			t.Skipf("the Go module proxy cannot be reached from this machine, so the cold download cannot run: %v", err)
		}
		gomod := a.createVolume(t, "e2e-gomodcache", 4<<30)

		p := a.mount(t, gomod)
		cold, err := goModDownload(goBin, filepath.Join(cl.Dir, "build-a"), filepath.Join(p.target, "mod"), false)
		if err != nil {
			t.Fatalf("cold download on %s: %v", a.Name, err)
		}
		files, bytes := countTree(filepath.Join(p.target, "mod"))
		p.unmount(t)
		commit := a.waitCommitted(t, 3*time.Minute)

		start := time.Now()
		q := b.mount(t, gomod)
		hydrate := time.Since(start)
		warm, err := goModDownload(goBin, filepath.Join(cl.Dir, "build-b"), filepath.Join(q.target, "mod"), true)
		if err != nil {
			t.Fatalf("GOPROXY=off download on %s, from the cache alone: %v", b.Name, err)
		}
		start = time.Now()
		out, err := goCmd(goBin, filepath.Join(cl.Dir, "build-b"), filepath.Join(q.target, "mod"), true, "mod", "verify")
		verify := time.Since(start)
		if err != nil || !strings.Contains(out, "all modules verified") {
			t.Errorf("go mod verify on %s: %v\n%s", b.Name, err, out)
		}
		q.unmount(t)
		b.waitCommitted(t, time.Minute)
		t.Logf("real build: %d modules, %d files, %.1f MiB in GOMODCACHE", len(buildModules), files, mib(bytes))
		t.Logf("  cold: go mod download on %s from the module proxy %.2fs; commit after unpublish %.2fs",
			a.Name, cold.Seconds(), commit.Seconds())
		t.Logf("  warm: on %s stage+publish %.2fs, GOPROXY=off go mod download %.2fs (%.3fx cold), go mod verify %.2fs",
			b.Name, hydrate.Seconds(), warm.Seconds(), warm.Seconds()/cold.Seconds(), verify.Seconds())
	})

	t.Run("6_a_fourth_member_joins", func(t *testing.T) {
		keepUp(t)
		d := cl.addHost("d")
		abcd := []*member{a, b, c, d}
		four := membersFlag(abcd...)
		d.start(t, four, cl.Secret)
		for _, m := range abc {
			m.restart(t, four)
		}
		waitLive(t, 4, abcd...)
		group3, group4 := names(abc...), names(abcd...)
		// Copies a member received while a peer was restarting (standing in
		// for it) are dropped by its next pass, at the latest the periodic
		// one 30s later.
		start, lastLog := time.Now(), time.Now()
		var union map[string]bool
		var onD map[string]uint64
		ok, msg := poll(2*time.Minute, time.Second, func() (bool, string) {
			stores := map[string]map[string]uint64{}
			union = map[string]bool{}
			for _, m := range abcd {
				bl, err := m.blobs()
				if err != nil {
					return false, err.Error()
				}
				stores[m.Name] = bl
				for s := range bl {
					union[s] = true
				}
			}
			onD = stores[d.Name]
			var missing, strays []string
			for s := range union {
				o := owners(s, group4)
				for _, n := range o {
					if stores[n][s] == 0 {
						missing = append(missing, n+":"+s[:12])
					}
				}
				for _, m := range abcd {
					// A copy a snapshot on the node links stays; any other copy
					// a member no longer owns is dropped.
					if stores[m.Name][s] == 1 && !slices.Contains(o, m.Name) {
						strays = append(strays, m.Name+":"+s[:12])
					}
				}
			}
			var pending float64
			for _, m := range abcd {
				text, err := m.metricsText()
				if err != nil {
					return false, err.Error()
				}
				pending += parseMetric(text, "cachegroup_rereplication_pending_blobs", nil)
			}
			msg := fmt.Sprintf("%d blobs; %d copies missing at their owners %v; %d copies left at members that no longer own them %v; %v blobs pending re-replication",
				len(union), len(missing), lastN(missing, 5), len(strays), lastN(strays, 5), pending)
			if time.Since(lastLog) > 10*time.Second {
				t.Logf("after %v: %s", time.Since(start).Round(time.Second), msg)
				lastLog = time.Now()
			}
			return len(missing) == 0 && len(strays) == 0 && pending == 0, msg
		})
		if !ok {
			t.Fatalf("the group did not settle within 2 minutes of %s joining: %s", d.Name, msg)
		}
		n := len(union)
		moved, expectMoved := 0, 0
		for s := range union {
			before, after := owners(s, group3), owners(s, group4)
			for _, o := range after {
				if !slices.Contains(before, o) {
					expectMoved++
				}
			}
			if !slices.Contains(after, d.Name) && onD[s] > 0 {
				t.Errorf("%s holds blob %s it does not own", d.Name, s)
			}
		}
		moved = len(onD)
		frac := float64(moved) / float64(replicas*n)
		tol := movedTolerance(n)
		t.Logf("settled %v after the last restart: %s holds %d of the %d copies of %d blobs: %.4f moved (placement says %d copies, %.4f; ideal 0.25 ± %.3f)",
			time.Since(start).Round(time.Millisecond), d.Name, moved, replicas*n, n, frac, expectMoved,
			float64(expectMoved)/float64(replicas*n), tol)
		if frac < 0.25-tol || frac > 0.25+tol {
			t.Errorf("the fraction of copies that moved to the new member is %.4f, want 0.25 ± %.3f", frac, tol)
		}
		expectTree(t, d, vol, want)
	})
}

// expectTree mounts vol in a new pod on m, checks that it reads exactly
// want (every file's SHA-256, modes, symlinks, directories), and ends the pod.
func expectTree(t *testing.T, m *member, vol *csi.Volume, want manifest) {
	t.Helper()
	start := time.Now()
	p := m.mount(t, vol)
	mounted := time.Since(start)
	got, err := scan(p.target)
	if err != nil {
		t.Fatalf("read the volume in a pod on %s: %v", m.Name, err)
	}
	if diffs, n := compare(want, got, 10); n > 0 {
		t.Errorf("a pod on %s reads a tree that differs from what was committed in %d of %d entries:\n  %s",
			m.Name, n, len(want), strings.Join(diffs, "\n  "))
	} else {
		t.Logf("a new pod on %s mounted the volume in %v and read all %d files (%.1f MiB) right",
			m.Name, mounted.Round(time.Millisecond), len(want.files()), mib(want.bytes()))
	}
	p.unmount(t)
	m.waitCommitted(t, time.Minute)
}

// replicated reports whether every blob of sums is at each of its owners
// among group, and no member has re-replication pending.
func replicated(sums, group []string, ms []*member) (bool, string) {
	var missing []string
	for _, s := range sums {
		for _, o := range owners(s, group) {
			if !byName(o, ms...).hasBlob(s) {
				missing = append(missing, o+":"+s[:12])
			}
		}
	}
	var pending float64
	for _, m := range ms {
		text, err := m.metricsText()
		if err != nil {
			return false, err.Error()
		}
		pending += parseMetric(text, "cachegroup_rereplication_pending_blobs", nil)
	}
	return len(missing) == 0 && pending == 0,
		fmt.Sprintf("%d copies missing at their owners %v, %v blobs pending", len(missing), lastN(missing, 5), pending)
}

// emptyTree is the digest of the empty directory object.
var emptyTree = cas.Sum(tree.Empty()).String()

// sizeOf returns the size of the files of m with content sum.
func sizeOf(m manifest, sum string) int64 {
	for _, e := range m {
		if e.Kind == 'f' && e.Sum == sum {
			return e.Size
		}
	}
	return -1
}

// flipBytes inverts 64 bytes in the middle of the file at p, in place, as
// a failing disk would.
func flipBytes(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	off := fi.Size() / 2
	b := make([]byte, min(64, fi.Size()-off))
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	for i := range b {
		b[i] ^= 0xff
	}
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return f.Sync()
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// countTree returns the files and bytes below dir.
func countTree(dir string) (files int, bytes int64) {
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			files++
			bytes += fi.Size()
		}
		return nil
	})
	return files, bytes
}
