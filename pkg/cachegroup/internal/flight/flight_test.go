package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestConcurrentClaimsMakeOneCall(t *testing.T) {
	var g Group[string]
	var calls, claimed atomic.Int32
	boom := errors.New("boom")
	release := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, mine := g.Claim("k")
			claimed.Add(1)
			if mine {
				calls.Add(1)
				<-release
				g.Done("k", c, boom)
			}
			errs[i] = c.Wait(context.Background())
		}()
	}
	for claimed.Load() < int32(len(errs)) {
		time.Sleep(time.Millisecond)
	}
	if ks := g.Keys(); len(ks) != 1 || ks[0] != "k" {
		t.Fatalf("keys in progress %v", ks)
	}
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d callers did the work, want 1", n)
	}
	for i, err := range errs {
		if !errors.Is(err, boom) {
			t.Fatalf("caller %d: %v, want the call's error", i, err)
		}
	}
	if len(g.Keys()) != 0 {
		t.Fatal("a finished call is still in progress")
	}
	// Once done, the key can be claimed again.
	if _, mine := g.Claim("k"); !mine {
		t.Fatal("a finished key cannot be claimed")
	}
}

func TestWaitEndsWithItsContext(t *testing.T) {
	var g Group[int]
	c, _ := g.Claim(1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with an ended context: %v", err)
	}
	g.Done(1, c, nil)
	if err := c.Wait(context.Background()); err != nil {
		t.Fatalf("wait after done: %v", err)
	}
}
