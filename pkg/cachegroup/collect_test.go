package cachegroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"golang.org/x/sys/unix"
)

// testGrace is the grace of the collections of these tests.
const testGrace = 50 * time.Millisecond

// collectAll runs three collections on every member of ms, the grace apart:
// a root replaced or deleted lately stays live for the grace, then its
// garbage waits for the grace. It returns the blobs deleted.
func collectAll(t *testing.T, ms []*member) int {
	t.Helper()
	deleted := 0
	for i := range 3 {
		if i > 0 {
			time.Sleep(2 * testGrace)
		}
		for _, m := range ms {
			opt := m.collectOptions(false)
			opt.Grace = testGrace
			res, err := m.group.Collect(context.Background(), opt)
			if err != nil {
				t.Fatalf("collect on %s: %v", m.name, err)
			}
			deleted += res.Deleted
		}
	}
	return deleted
}

// whiteout deletes name in a layer, as an overlay records it in the upper
// directory.
func whiteout(t testing.TB, upper, name string) {
	t.Helper()
	if err := unix.Mknod(filepath.Join(upper, name), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
}

// commitOver commits on m, on top of vol's head, the layer fill makes.
func commitOver(t *testing.T, m *member, vol volume.Volume, fill func(upper string)) volume.Volume {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	head, err := m.group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	submit(t, m, head, fmt.Sprintf("/pods/%d", time.Now().UnixNano()), fill)
	if err := m.node.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	head2, err := m.group.Volume(ctx, vol.ID)
	if err != nil || head2.Generation == head.Generation {
		t.Fatalf("commit on %s did not land: %v", m.name, err)
	}
	return head2
}

// holders returns the members of ms whose stores have blob d.
func holders(ms []*member, d cas.Digest) []string {
	var names []string
	for _, m := range ms {
		if m.store.Has(d) {
			names = append(names, m.name)
		}
	}
	return names
}

// checkHeld fails unless each owner of blob d holds it.
func checkHeld(t *testing.T, ms []*member, d cas.Digest, what string) {
	t.Helper()
	for _, o := range ms[0].group.Owners(d) {
		if !memberByName(ms, o.Name()).store.Has(d) {
			t.Fatalf("%s: owner %s lacks blob %s (held by %v)", what, o.Name(), d, holders(ms, d))
		}
	}
}

func TestCollectDeletesOnlyWhatNoLiveRootReferences(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	a := ms[0]
	vol, err := a.group.CreateVolume(ctx, volume.Spec{Name: "gc", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	kept, old, pinned := cas.Sum([]byte("kept")), cas.Sum([]byte("old")), cas.Sum([]byte("pinned"))
	v1 := commitOver(t, a, vol, writeFiles(t, map[string]string{"kept": "kept", "old": "old", "dir/pinned": "pinned"}))
	v2 := commitOver(t, a, vol, func(upper string) { whiteout(t, upper, "old") })
	snap, err := a.group.CreateSnapshot(ctx, "pin", vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	v3 := commitOver(t, a, vol, func(upper string) { whiteout(t, upper, "dir") })

	if n := collectAll(t, ms); n == 0 {
		t.Fatal("nothing collected")
	}
	if hs := holders(ms, old); len(hs) > 0 {
		t.Fatalf("blob of a deleted file still on %v", hs)
	}
	if hs := holders(ms, v1.Root); len(hs) > 0 {
		t.Fatalf("tree of a replaced head still on %v", hs)
	}
	checkHeld(t, ms, kept, "the head's file")
	checkHeld(t, ms, v3.Root, "the head's tree")
	checkHeld(t, ms, pinned, "a snapshot's file") // v2, pinned by the snapshot
	checkHeld(t, ms, v2.Root, "a snapshot's tree")

	// The head still reads right on a node that never had it.
	c := newClient(t, ms)
	dir, err := c.node.Materialize(ctx, v3.Root, node.Want{VolumeID: vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kept")); err != nil || string(b) != "kept" {
		t.Fatalf("kept: %q %v", b, err)
	}

	// Without the snapshot, its generation is garbage; without the volume,
	// everything is.
	if err := a.group.DeleteSnapshot(ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	collectAll(t, ms)
	if hs := holders(ms, pinned); len(hs) > 0 {
		t.Fatalf("blob of a deleted snapshot still on %v", hs)
	}
	if err := a.group.DeleteVolume(ctx, vol.ID); err != nil {
		t.Fatal(err)
	}
	c.node.Prune() // the client node's snapshot links are its own copies
	collectAll(t, ms)
	empty := cas.Sum(tree.Empty())
	for _, m := range ms {
		all, err := m.store.All()
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 1 || all[0] != empty || m.store.Used() != int64(len(tree.Empty())) {
			t.Fatalf("%s keeps %d blobs, %d bytes, after its only volume was deleted", m.name, len(all), m.store.Used())
		}
	}
}

// A member that does not answer may keep the only head of a volume: nothing
// is deleted until every member answers.
func TestCollectDeletesNothingWhileAMemberIsAway(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "away", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	commitOver(t, ms[0], vol, writeFiles(t, map[string]string{"old": "old"}))
	commitOver(t, ms[0], vol, func(upper string) { whiteout(t, upper, "old") })
	old := cas.Sum([]byte("old"))
	before := holders(ms, old)
	ms[2].srv.Close()
	for range 2 {
		if _, err := ms[0].group.Collect(ctx, group.CollectOptions{Grace: testGrace}); err == nil {
			t.Fatal("a collection with a member away completed")
		}
		time.Sleep(2 * testGrace)
	}
	if hs := holders(ms, old); len(hs) != len(before) {
		t.Fatalf("garbage on %v, before %v", hs, before)
	}
}

// A member that was away while its copies became garbage does not push them
// back: its reconciler leaves what its first collection found garbage.
func TestAMemberBackFromAwayResurrectsNoGarbage(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "back", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("was live once")
	d := cas.Sum(content)
	away := memberByName(ms, ms[0].group.Owners(d)[0].Name())
	commitOver(t, ms[0], vol, writeFiles(t, map[string]string{"f": string(content)}))
	// While away is out of the group, the file is deleted and collected
	// everywhere else.
	var rest []*member
	for _, m := range ms {
		if m != away {
			rest = append(rest, m)
		}
	}
	for _, m := range rest {
		group.NewMembership(m.group, static(rest), m.auth, time.Second).Refresh(ctx)
	}
	writer := rest[0]
	commitOver(t, writer, vol, func(upper string) { whiteout(t, upper, "f") })
	collectAll(t, rest)
	if hs := holders(rest, d); len(hs) > 0 {
		t.Fatalf("garbage kept on %v", hs)
	}
	// Back: the member's copy is the only one, and garbage.
	for _, m := range ms {
		group.NewMembership(m.group, static(ms), m.auth, time.Second).Refresh(ctx)
	}
	if !away.store.Has(d) {
		t.Fatal("the member back lost its copy before collecting")
	}
	if _, err := away.group.Collect(ctx, group.CollectOptions{Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := away.group.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if hs := holders(rest, d); len(hs) > 0 {
		t.Fatalf("garbage pushed back to %v", hs)
	}
	collectAll(t, ms)
	if away.store.Has(d) {
		t.Fatal("the member back kept its garbage")
	}
}

// Commits racing collections under pressure, which delete garbage as soon
// as they find it: no head ever names a blob the group lost.
func TestCommitsRacingCollectionsLoseNoBlob(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "race", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	// Blobs are left for the grace after they are written or kept for a
	// commit, which is applied within milliseconds of that.
	const commits, raceGrace = 12, 500 * time.Millisecond
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var deleted int
	var collectErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			for _, m := range ms {
				opt := m.collectOptions(true)
				opt.Grace = raceGrace
				res, err := m.group.Collect(ctx, opt)
				if err != nil {
					collectErr = err
					return
				}
				deleted += res.Deleted
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	want := map[string]string{}
	for i := range commits {
		// Each build rewrites one file and replaces the last one's output.
		files := map[string]string{"shared": fmt.Sprintf("shared %d", i%3), fmt.Sprintf("out%d", i): fmt.Sprintf("out %d", i)}
		fill := writeFiles(t, files)
		prev := fmt.Sprintf("out%d", i-1)
		commitOver(t, ms[i%3], vol, func(upper string) {
			fill(upper)
			if i > 0 {
				whiteout(t, upper, prev)
			}
		})
		time.Sleep(raceGrace / 4) // older outputs turn garbage the collections may take
		delete(want, prev)
		for p, c := range files {
			want[p] = c
		}
	}
	close(stop)
	wg.Wait()
	if collectErr != nil {
		t.Fatal(collectErr)
	}
	if deleted == 0 {
		t.Fatal("the collections deleted nothing: they did not race the commits")
	}
	head, err := ms[0].group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	for p, c := range want {
		checkHeld(t, ms, cas.Sum([]byte(c)), p)
	}
	dir, err := newClient(t, ms).node.Materialize(ctx, head.Root, node.Want{VolumeID: vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	for p, c := range want {
		if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(b) != c {
			t.Fatalf("%s: %q %v, want %q", p, b, err, c)
		}
	}
}

// A root of this node's snapshots whose tree the group has collected does
// not stop collections: the node's snapshot holds its own links.
func TestCollectGoesOnPastANodeRootTheGroupForgot(t *testing.T) {
	ms := newGroup(t, 3)
	opt := ms[0].collectOptions(false)
	opt.Grace = testGrace
	opt.Roots = append(opt.Roots, cas.Sum([]byte("a tree no member has any more")))
	if _, err := ms[0].group.Collect(context.Background(), opt); err != nil {
		t.Fatalf("collection stopped at a forgotten node root: %v", err)
	}
}

// stopAt is a context that ends at the k-th time Err is asked for (never
// with k 0), counting the asks.
type stopAt struct {
	context.Context
	cancel context.CancelFunc
	k      int64
	asked  atomic.Int64
}

func newStopAt(k int64) *stopAt {
	ctx, cancel := context.WithCancel(context.Background())
	return &stopAt{Context: ctx, cancel: cancel, k: k}
}

func (s *stopAt) Err() error {
	if s.asked.Add(1) == s.k {
		s.cancel()
	}
	return s.Context.Err()
}

// A collection ends with its context, deleting nothing: one of a store of
// millions walks for tens of seconds, and a member stopping waits for it.
func TestACollectionStopsWithItsContext(t *testing.T) {
	ms := newGroup(t, 1)
	m := ms[0]
	vol, err := m.group.CreateVolume(context.Background(), volume.Spec{Name: "gc", Quota: 1 << 30}, "")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for i := range 300 {
		files[fmt.Sprintf("d%03d/e/f", i)] = fmt.Sprint(i)
	}
	commitOver(t, m, vol, writeFiles(t, files))
	garbage, err := m.store.PutBytes([]byte("no tree names this"))
	if err != nil {
		t.Fatal(err)
	}
	opt := m.collectOptions(true) // under pressure: garbage goes at once
	opt.Window = time.Millisecond // once a little older than this
	time.Sleep(10 * opt.Window)
	// How often a whole collection asks its context, deleting nothing.
	dry := opt
	dry.DryRun = true
	whole := newStopAt(0)
	res, err := m.group.Collect(whole, dry)
	if err != nil || res.Garbage == 0 {
		t.Fatalf("dry run: %+v, %v", res, err)
	}
	// Each tree walked and each blob listed (twice: held, then swept) is a
	// point where it can stop.
	if got, want := whole.asked.Load(), int64(res.Trees+2*res.Held); got < want {
		t.Fatalf("a collection of %d trees and %d blobs asked its context %d times, want at least %d", res.Trees, res.Held, got, want)
	}
	for _, k := range []int64{whole.asked.Load() / 4, whole.asked.Load() * 3 / 4} {
		ctx := newStopAt(k)
		res, err := m.group.Collect(ctx, opt)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("context ended at ask %d of %d: collection returned %+v, %v", k, whole.asked.Load(), res, err)
		}
		if !m.store.Has(garbage) || res.Deleted > 0 {
			t.Fatalf("a collection stopped at ask %d of %d deleted %d blobs", k, whole.asked.Load(), res.Deleted)
		}
	}
	if res, err := m.group.Collect(context.Background(), opt); err != nil || m.store.Has(garbage) {
		t.Fatalf("a whole collection left the garbage: %+v, %v", res, err)
	}
}
