// Package flight collapses concurrent work on one key into one call: the
// first caller claims the key and does the work, the others wait for it.
// It imports nothing of the project.
package flight

import (
	"context"
	"sync"
)

// Call is one piece of work in progress.
type Call struct {
	done chan struct{}
	err  error
}

// Wait waits until the call is done and returns its error, or ctx's if ctx
// ends first (the call goes on).
func (c *Call) Wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Group is a set of calls in progress, by key. The zero Group is ready.
type Group[K comparable] struct {
	mu    sync.Mutex
	calls map[K]*Call
}

// Claim makes the caller the one doing the work for key, unless a call for it
// is in progress: then it returns that call and false. A caller that claims
// must call Done.
func (g *Group[K]) Claim(key K) (*Call, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		return c, false
	}
	if g.calls == nil {
		g.calls = map[K]*Call{}
	}
	c := &Call{done: make(chan struct{})}
	g.calls[key] = c
	return c, true
}

// Done ends the call for key claimed as c, with err for its waiters.
func (g *Group[K]) Done(key K, c *Call, err error) {
	g.mu.Lock()
	delete(g.calls, key)
	g.mu.Unlock()
	c.err = err
	close(c.done)
}

// Keys returns the keys of the calls in progress.
func (g *Group[K]) Keys() []K {
	g.mu.Lock()
	defer g.mu.Unlock()
	ks := make([]K, 0, len(g.calls))
	for k := range g.calls {
		ks = append(ks, k)
	}
	return ks
}
