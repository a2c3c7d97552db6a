package group

import (
	"context"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// capacityTimeout bounds how long one member may take to say its capacity.
const capacityTimeout = 2 * time.Second

// maxMemberCapacity bounds what one member may claim, so that a hostile or
// broken answer cannot overflow the sum.
const maxMemberCapacity = 1 << 56

// healthPeer is a remote member that says what it is, its capacity among it.
type healthPeer interface {
	Health(ctx context.Context) (wire.Health, error)
}

// Capacity returns how many more bytes of data the group may take: what the
// live members' stores may take together, divided by the copies each blob
// is kept in (R, or fewer members). It answers the same on a member, a
// client-only node and the controller, which asks the members; a member that
// does not answer counts for nothing.
func (g *Group) Capacity(ctx context.Context) int64 {
	var (
		mu    sync.Mutex
		total int64
		live  int
		wg    sync.WaitGroup
	)
	add := func(c int64) {
		mu.Lock()
		total += min(max(c, 0), maxMemberCapacity)
		live++
		mu.Unlock()
	}
	for _, m := range g.Members() {
		if !g.Live(m.Name()) {
			continue
		}
		if m.Peer == Peer(g.self) {
			add(g.self.store.Capacity())
			continue
		}
		hp, ok := m.Peer.(healthPeer)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			hctx, cancel := context.WithTimeout(ctx, capacityTimeout)
			defer cancel()
			if h, err := hp.Health(hctx); err == nil {
				add(h.Capacity)
			}
		}()
	}
	wg.Wait()
	if live == 0 {
		return 0
	}
	return total / int64(min(g.replicas, live))
}
