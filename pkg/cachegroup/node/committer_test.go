package node

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// commits returns the count of outbox entries with result.
func commits(t *testing.T, n *Node, result string) float64 {
	t.Helper()
	var m dto.Metric
	must(t, n.group.Metrics().Commits.WithLabelValues(result).Write(&m))
	return m.GetCounter().GetValue()
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// An entry that can never be committed holds back no other: the good entry
// behind it lands at once, and the bad ones end in quarantine with their
// reasons instead of being retried forever.
func TestABadOutboxEntryHoldsBackNoOther(t *testing.T) {
	n, l := newNode(t)
	n.retry = retryPolicy{first: 100 * time.Millisecond, max: 300 * time.Millisecond, attempts: 5, keep: 8}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20})
	fill := func(name string) func(string) {
		return func(up string) { must(t, os.WriteFile(filepath.Join(up, name), []byte(name), 0o644)) }
	}
	// Oldest first: an entry naming a volume id that cannot exist ...
	malformed := v
	malformed.ID = "vol-../../volumes/x"
	layerWith(t, n, malformed, "/pods/malformed", fill("m"))
	// ... one whose every attempt fails: its manifest names a file that is
	// neither in its upper directory nor anywhere in the group ...
	layerWith(t, n, v, "/pods/failing", fill("f"))
	ents := dirNames(t, filepath.Join(n.dir, "outbox"))
	ghost := tree.Op{Kind: tree.OpUpsert, Path: "ghost", Entry: tree.Entry{Type: tree.TypeFile, Mode: 0o644,
		Digest: cas.Sum([]byte("ghost")), Size: 5}}
	b, _ := json.Marshal(&manifest{Commit: tree.Commit{Base: v.Root, Ops: []tree.Op{ghost}}})
	must(t, files.WriteAtomic(filepath.Join(n.dir, "outbox", ents[1], "manifest.json"), b))
	// ... and a good one.
	layerWith(t, n, v, "/pods/good", fill("good"))

	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go n.Run(rctx)
	for {
		if head, _ := l.Volume(ctx, v.ID); head.Count == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the good entry never landed behind the bad ones")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if q := dirNames(t, filepath.Join(n.dir, "quarantine")); len(q) > 1 {
		t.Fatalf("the good entry waited for the failing one to be given up on (quarantine: %v)", q)
	}
	must(t, n.WaitIdle(ctx))
	q := dirNames(t, filepath.Join(n.dir, "quarantine"))
	if len(q) != 2 || !strings.HasSuffix(q[0], ents[0]) || !strings.HasSuffix(q[1], ents[1]) {
		t.Fatalf("quarantine %v, want the malformed entry, then the failing one", q)
	}
	for i, want := range []string{"vol-../../volumes/x", "failed 5 times"} {
		reason, err := os.ReadFile(filepath.Join(n.dir, "quarantine", q[i], "reason"))
		if err != nil || !strings.Contains(string(reason), want) {
			t.Fatalf("reason of %s: %q (%v), want it to say %q", q[i], reason, err, want)
		}
	}
	if got := commits(t, n, "quarantined"); got != 2 {
		t.Fatalf("%v entries counted quarantined, want 2", got)
	}
	if head, _ := l.Volume(ctx, v.ID); head.Count != 1 {
		t.Fatalf("head holds %d entries, want only the good one", head.Count)
	}
}

// The quarantine keeps only the newest entries.
func TestQuarantineIsBounded(t *testing.T) {
	n, l := newNode(t)
	n.retry.keep = 2
	v, _ := l.CreateVolume(context.Background(), volume.Spec{Name: "v"})
	var names []string
	for _, target := range []string{"/pods/a", "/pods/b", "/pods/c"} {
		layerWith(t, n, v, target, func(string) {})
		name := filepath.Base(outboxEntry(t, n))
		n.quarantine(name, errBadLayer)
		names = append(names, name)
	}
	q := dirNames(t, filepath.Join(n.dir, "quarantine"))
	if len(q) != 2 || !strings.HasSuffix(q[0], names[1]) || !strings.HasSuffix(q[1], names[2]) {
		t.Fatalf("quarantine %v, want the newest two of %v", q, names)
	}
}

// A pod's writes that cannot land are told to Lost with the layer, so that
// whoever runs the node (the driver: a Kubernetes Event) can say so.
func TestLostWritesAreTold(t *testing.T) {
	n, l := newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "small", Quota: 4})
	type told struct {
		l   Layer
		why error
	}
	lost := make(chan told, 1)
	n.Lost = func(l Layer, why error) { lost <- told{l, why} }
	upper, _, err := n.NewLayer(Layer{VolumeID: v.ID, Target: "/pods/big", Base: v.Root, Commit: true, Pod: "ci/build-7"})
	must(t, err)
	must(t, os.WriteFile(filepath.Join(upper, "big"), []byte("more than four bytes"), 0o644))
	must(t, n.Submit("/pods/big"))
	go n.Run(ctx)
	select {
	case got := <-lost:
		if got.l.VolumeID != v.ID || got.l.Pod != "ci/build-7" || !errors.Is(got.why, tree.ErrTooLarge) {
			t.Fatalf("told of %+v: %v", got.l, got.why)
		}
	case <-ctx.Done():
		t.Fatal("a commit larger than the quota was dropped without a word")
	}
	must(t, n.WaitIdle(ctx))
}
