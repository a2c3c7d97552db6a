package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// newBoundNode is newNode on a store of limits.
func newBoundNode(t *testing.T, limits cas.Limits) (*Node, *volume.Home) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for ownership and whiteouts")
	}
	base := t.TempDir()
	s, err := cas.OpenStore(filepath.Join(base, "store"), limits)
	must(t, err)
	h, err := volume.Open(s, filepath.Join(base, "meta"))
	must(t, err)
	n, err := Open(filepath.Join(base, "node"), group.New(group.Config{Name: "g", Member: "m1", Home: h, Store: s, Replicas: 1}))
	must(t, err)
	return n, h
}

// dropped returns the commits n dropped for reason.
func dropped(t *testing.T, n *Node, reason string) float64 {
	t.Helper()
	var m dto.Metric
	must(t, n.group.Metrics().DroppedCommits.WithLabelValues(reason).Write(&m))
	return m.GetCounter().GetValue()
}

// A commit the group has no room for is retried a few times, while the
// members make room, then dropped with its reason: never retried forever.
func TestACommitWithNoRoomIsDroppedWithItsReason(t *testing.T) {
	n, l := newBoundNode(t, cas.Limits{CacheSize: 256 << 10})
	n.retry = retryPolicy{first: 10 * time.Millisecond, max: 40 * time.Millisecond, attempts: 100, age: time.Hour, keep: 4, noSpace: 3}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := l.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20})
	must(t, err)
	// The store is full of blobs nobody collects here.
	_, err = n.store.PutBytes(bytes.Repeat([]byte{'y'}, 220<<10))
	must(t, err)
	lost := make(chan error, 1)
	n.Lost = func(_ Layer, why error) { lost <- why }
	layerWith(t, n, v, "/pods/big", func(up string) {
		must(t, os.WriteFile(filepath.Join(up, "big"), bytes.Repeat([]byte{'x'}, 50<<10), 0o644))
	})
	go n.Run(ctx)
	select {
	case why := <-lost:
		if !errors.Is(why, cas.ErrNoSpace) {
			t.Fatalf("dropped because %v", why)
		}
	case <-ctx.Done():
		t.Fatal("a commit with no room was never given up on")
	}
	must(t, n.WaitIdle(ctx))
	if got := dropped(t, n, "no-space"); got != 1 {
		t.Fatalf("%v commits counted dropped for no space, want 1", got)
	}
	if q := dirNames(t, filepath.Join(n.dir, "quarantine")); len(q) != 0 {
		t.Fatalf("a dropped commit kept on disk in quarantine: %v", q)
	}
}

// The outbox holds at most the cache size: past it the oldest entries are
// dropped, counted and told, and what is left is charged to the store's
// budget.
func TestTheOutboxIsBoundedOldestDroppedFirst(t *testing.T) {
	n, l := newBoundNode(t, cas.Limits{CacheSize: 256 << 10})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := l.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20})
	must(t, err)
	var told []string
	n.Lost = func(l Layer, _ error) { told = append(told, l.Target) }
	for i := range 4 {
		layerWith(t, n, v, fmt.Sprintf("/pods/%d", i), func(up string) {
			must(t, os.WriteFile(filepath.Join(up, fmt.Sprintf("f%d", i)), bytes.Repeat([]byte{byte('a' + i)}, 100<<10), 0o644))
		})
	}
	names := dirNames(t, filepath.Join(n.dir, "outbox"))
	left := n.bound(names, map[string]*retry{})
	if len(left) != 2 || left[0] != names[2] || left[1] != names[3] {
		t.Fatalf("left %v of %v, want the newest two", left, names)
	}
	if len(told) != 2 || told[0] != "/pods/0" || told[1] != "/pods/1" {
		t.Fatalf("told of %v, want the two oldest", told)
	}
	if got := dropped(t, n, "outbox-full"); got != 2 {
		t.Fatalf("%v counted dropped for a full outbox, want 2", got)
	}
	if c := n.store.Charged(); c < 200<<10 || c > 250<<10 {
		t.Fatalf("the outbox charges %d bytes to the store, want its two entries", c)
	}
	go n.Run(ctx)
	must(t, n.WaitIdle(ctx))
	head, err := l.Volume(ctx, v.ID)
	must(t, err)
	if head.Count != 2 {
		t.Fatalf("head holds %d entries, want the two kept", head.Count)
	}
}

// Submits that come while a sync of the store runs share the next one, and
// none returns before a sync that started after it came has finished.
func TestSubmitsShareSyncs(t *testing.T) {
	var s syncs
	const callers = 16
	var mu sync.Mutex
	var started []int // callers arrived when each flush started
	arrived, returned := 0, 0
	block := make(chan struct{})
	flush := func() error {
		mu.Lock()
		started = append(started, arrived)
		first := len(started) == 1
		mu.Unlock()
		if first {
			<-block // the others come while the first runs
		}
		return nil
	}
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			arrived++
			if arrived == callers {
				close(block)
			}
			mu.Unlock()
			must(t, s.do(flush))
			mu.Lock()
			returned++
			if len(started) < 2 && returned > 1 {
				t.Error("a caller that came during the first sync returned before a second one")
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(started) != 2 || started[1] != callers {
		t.Fatalf("flushes started with %v callers arrived, want one, then one for all %d", started, callers)
	}
}

// The blobs written that a node remembers until it drops their pages are
// bounded: the one that reaches the bound asks for a settle at once.
func TestArrivedBlobsAreBounded(t *testing.T) {
	n := &Node{settleWake: make(chan struct{}, 1)}
	for i := range maxArrived - 1 {
		n.arrive(cas.Sum(fmt.Append(nil, i)))
	}
	select {
	case <-n.settleWake:
		t.Fatalf("a settle was asked for at %d blobs, under the bound of %d", maxArrived-1, maxArrived)
	default:
	}
	n.arrive(cas.Sum([]byte("the last")))
	select {
	case <-n.settleWake:
	default:
		t.Fatalf("no settle was asked for at the bound of %d blobs", maxArrived)
	}
	if a := n.takeArrived(); len(a) != maxArrived {
		t.Fatalf("%d blobs remembered, want %d", len(a), maxArrived)
	}
	if a := n.takeArrived(); len(a) != 0 {
		t.Fatalf("%d blobs remembered after they were taken", len(a))
	}
	// No settle comes (a long sample holds it back): the set stops at its cap.
	for i := range arrivedCap + 1000 {
		n.arrive(cas.Sum(fmt.Append(nil, "held back", i)))
	}
	if a := n.takeArrived(); len(a) != arrivedCap {
		t.Fatalf("%d blobs remembered while no settle came, want the cap of %d", len(a), arrivedCap)
	}
}
