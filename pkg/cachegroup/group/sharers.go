package group

import (
	"context"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// sharers remembers, per snapshot, the sharing nodes that hydrate or hold
// it: a volume's home keeps this list for the snapshots of the volume.
type sharers struct {
	mu    sync.Mutex
	m     map[cas.Digest]map[string]time.Time
	swept time.Time // when stale entries of every snapshot were last dropped
}

func newSharers() *sharers { return &sharers{m: map[cas.Digest]map[string]time.Time{}} }

// sharerTTL is how long a node stays listed without announcing itself again.
const sharerTTL = 10 * time.Minute

func (h *sharers) add(root cas.Digest, member string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Every snapshot ever announced would stay a key: drop the stale ones
	// once a TTL, so the map holds only what was announced within one.
	if now := time.Now(); now.Sub(h.swept) > sharerTTL {
		for r := range h.m {
			h.stale(r)
		}
		h.swept = now
	}
	if h.m[root] == nil {
		h.m[root] = map[string]time.Time{}
	}
	h.m[root][member] = time.Now()
}

func (h *sharers) list(root cas.Digest) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stale(root)
	out := []string{}
	for m := range h.m[root] {
		out = append(out, m)
	}
	return out
}

// stale drops the members of snapshot root not announced within the TTL,
// and root with them if none is left; h.mu is held.
func (h *sharers) stale(root cas.Digest) {
	for m, t := range h.m[root] {
		if time.Since(t) >= sharerTTL {
			delete(h.m[root], m)
		}
	}
	if len(h.m[root]) == 0 {
		delete(h.m, root)
	}
}

// AddHolder records at this member that member shares snapshot root.
func (g *Group) AddHolder(root cas.Digest, member string) { g.self.sharers.add(root, member) }

// Holders lists the members this member knows to share snapshot root.
func (g *Group) Holders(root cas.Digest) []string { return g.self.sharers.list(root) }

// Announce tells volume id's home that this node shares snapshot root and
// returns the other nodes that do.
func (g *Group) Announce(ctx context.Context, id string, root cas.Digest) []Peer {
	if len(g.Members()) < 2 || id == "" {
		return nil
	}
	var names []string
	for _, h := range g.liveFirst(g.Homes(id)) {
		err := h.AddHolder(ctx, root, g.self.name)
		if err == nil {
			names, err = h.Holders(ctx, root)
		}
		if err == nil {
			break
		}
		g.Failed(h, err)
	}
	byName := map[string]Peer{}
	for _, m := range g.Members() {
		byName[m.Name()] = m.Peer
	}
	var out []Peer
	for _, name := range names {
		if p, ok := byName[name]; ok && name != g.self.name {
			out = append(out, p)
		}
	}
	return out
}
