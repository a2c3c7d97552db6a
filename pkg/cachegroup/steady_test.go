package cachegroup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
	"golang.org/x/sys/unix"
)

// dropCache drops the page cache of every blob in m's store, as a kernel
// short of memory does over the hours after a build.
func dropCache(t *testing.T, m *Member) {
	t.Helper()
	if err := m.store.Sync(); err != nil {
		t.Fatal(err)
	}
	all, err := m.store.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range all {
		if f, err := os.Open(m.store.Path(d)); err == nil {
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
		}
	}
}

// readThroughOverlay reads path of the snapshot at dir as a pod does: through
// an overlay mount whose lower layer it is.
func readThroughOverlay(t *testing.T, dir, path string) []byte {
	t.Helper()
	tmp := t.TempDir()
	upper, work, mnt := filepath.Join(tmp, "u"), filepath.Join(tmp, "w"), filepath.Join(tmp, "m")
	for _, d := range []string{upper, work, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", mnt, "overlay", 0, "lowerdir="+dir+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mnt, 0)
	b, err := os.ReadFile(filepath.Join(mnt, path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A Maven cache: a jar written long ago that every build reads outlives
// files written since and never read, when the volume must evict.
func TestAVolumeOverItsQuotaEvictsWhatNoPodRead(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	builder := ms[0]
	vol, err := builder.group.CreateVolume(ctx, volume.Spec{Name: "m2", Quota: 100 << 10}, "")
	if err != nil {
		t.Fatal(err)
	}
	blob := func(s string) string { b := make([]byte, 40<<10); copy(b, s); return string(b) }
	jar, tmp1, tmp2 := blob("jar"), blob("tmp1"), blob("tmp2")
	v1 := commitOver(t, builder, vol, func(upper string) {
		writeFiles(t, map[string]string{"repo/lib.jar": jar})(upper)
		old := time.Now().AddDate(-1, 0, 0)
		os.Chtimes(filepath.Join(upper, "repo/lib.jar"), old, old) // released a year ago
	})
	v2 := commitOver(t, builder, vol, writeFiles(t, map[string]string{"tmp/1": tmp1}))
	// The next build reads the jar, hours later: the kernel has long
	// dropped what the last builds wrote.
	time.Sleep(10 * time.Millisecond)
	dir, err := builder.node.Materialize(ctx, v2.Root, node.Want{VolumeID: vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := builder.node.MarkStaged(vol.ID, true); err != nil { // as NodeStageVolume does
		t.Fatal(err)
	}
	builder.node.ReportUse(ctx) // the samples of the hours between: what commits wrote is no read
	dropCache(t, builder.Member)
	if got := readThroughOverlay(t, dir, "repo/lib.jar"); string(got) != jar {
		t.Fatal("the jar reads wrong")
	}
	if n := builder.node.ReportUse(ctx); n != 1 {
		t.Fatalf("%d blobs reported used, want the jar", n)
	}
	// A third 40 KiB file passes the quota: one of the older two goes.
	v3 := commitOver(t, builder, vol, writeFiles(t, map[string]string{"tmp/2": tmp2}))
	if v3.Count != v1.Count+2 || v3.Size > 100<<10 {
		t.Fatalf("after eviction the head holds %d entries, %d bytes", v3.Count, v3.Size)
	}
	dir, err = builder.node.Materialize(ctx, v3.Root, node.Want{VolumeID: vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "repo/lib.jar")); err != nil || string(b) != jar {
		t.Fatalf("the jar every build reads was evicted (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tmp/1")); err == nil {
		t.Fatal("the file no build read outlived the jar")
	}
}

// pagesCached returns how many pages of the file at path are in the page
// cache.
func pagesCached(t *testing.T, path string) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cs unix.Cachestat_t
	if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &cs, 0); err != nil {
		t.Fatal(err)
	}
	return cs.Cache
}

// A node that stages a snapshot writes every file it fetches, which fills
// the page cache as reads do: the files no pod read are not reported used,
// and those a pod reads after are.
func TestAHydrationsWritesAreNoReads(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "npm", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	v := commitOver(t, ms[0], vol, writeFiles(t, map[string]string{"read/by-builds": "hot", "never/read": "cold", "also/never": "cold too"}))
	c := newClient(t, ms)
	if err := c.node.MarkStaged(vol.ID, true); err != nil {
		t.Fatal(err)
	}
	idle := c.node.ReportUse(ctx) // what the store held before: the empty tree
	dir, err := c.node.Materialize(ctx, v.Root, node.Want{VolumeID: vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	// The node drops what the hydration wrote from the page cache on its
	// own, before any sample: a pod's reads from then on are seen.
	cold := c.store.Path(cas.Sum([]byte("cold")))
	for start := time.Now(); pagesCached(t, cold) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the pages a hydration wrote are still cached 10s after it")
		}
	}
	if n := c.node.ReportUse(ctx); n != idle {
		t.Fatalf("%d blobs reported used after a hydration no pod read from, %d before it", n, idle)
	}
	if got := readThroughOverlay(t, dir, "read/by-builds"); string(got) != "hot" {
		t.Fatal("the file reads wrong")
	}
	if n := c.node.ReportUse(ctx); n != idle+1 {
		t.Fatalf("%d blobs reported used after a pod read one, %d before the hydration", n, idle)
	}
}

// Builds one after the other on a member whose cache holds little more than
// one volume, each replacing the last build's output: garbage is collected
// as the store fills, so every commit lands and the store stays within its
// size.
func TestBuildsOnASmallCacheAllLand(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for ownership of materialised files")
	}
	const cacheSize, files, fileSize = 64 << 20, 30, 1 << 20
	m, err := Open(Config{NodeID: "solo", Dir: t.TempDir(), CacheSize: cacheSize})
	if err != nil {
		t.Fatal(err)
	}
	m.window = 100 * time.Millisecond // blobs just written are left this long under pressure
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	t.Cleanup(func() {
		cancel()
		m.Close()
	})
	solo := &member{Member: m, name: "solo"}
	vol, err := m.group.CreateVolume(ctx, volume.Spec{Name: "builds", Quota: 48 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	for build := range 10 {
		commitOver(t, solo, vol, func(upper string) {
			if build > 0 {
				whiteout(t, upper, fmt.Sprintf("out%d", build-1))
			}
			dir := filepath.Join(upper, fmt.Sprintf("out%d", build))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for i := range files {
				b := make([]byte, fileSize) // of its own content: no two files share a blob
				copy(b, fmt.Sprintf("build %d, file %d", build, i))
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
		if used := m.store.Used() + m.store.Charged(); used > cacheSize {
			t.Fatalf("after build %d the store holds %d bytes, more than its size %d", build, used, cacheSize)
		}
	}
	for _, reason := range []string{"no-space", "outbox-full"} {
		if n := counterValue(t, m.metrics, "cachegroup_dropped_commits_total", reason); n != 0 {
			t.Fatalf("%v commits dropped for %s", n, reason)
		}
	}
	if n := counterValue(t, m.metrics, "cachegroup_collected_blobs_total"); n < files {
		t.Fatalf("%v blobs collected, want at least a build's", n)
	}
}

// A node whose store fills while it builds a snapshot makes room (snapshots
// no pod mounts, node copies) and builds it, instead of failing the start.
func TestAFullNodeMakesRoomForTheSnapshotItBuilds(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	var list []string
	for _, m := range ms {
		list = append(list, m.name+"="+m.addr)
	}
	c := runMember(t, Config{NodeID: "client", Dir: t.TempDir(), Group: "g", Replicas: 2, ClientOnly: true,
		Members: list, Auth: wire.NewSecretAuth(testSecret), CacheSize: 300 << 10})
	big := func(s string) string { b := make([]byte, 200<<10); copy(b, s); return string(b) }
	var roots []volume.Volume
	for _, name := range []string{"one", "two"} {
		vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: name, Quota: 1 << 20}, "")
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, commitOver(t, ms[0], vol, writeFiles(t, map[string]string{"f": big(name)})))
	}
	for i, v := range roots {
		dir, err := c.node.Materialize(ctx, v.Root, node.Want{VolumeID: v.ID})
		if err != nil {
			t.Fatalf("snapshot %d on a node with room for one: %v", i+1, err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || string(b) != big([]string{"one", "two"}[i]) {
			t.Fatalf("snapshot %d reads wrong (%v)", i+1, err)
		}
	}
	if used := c.store.Used() + c.store.Charged(); used > 300<<10 {
		t.Fatalf("the node's store holds %d bytes, past its size", used)
	}
}
