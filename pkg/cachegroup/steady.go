package cachegroup

import (
	"context"
	"time"

	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
)

// DefaultGarbageGrace is how long garbage is left before it is collected:
// longer than a hydration of a replaced head and than a commit takes from
// its pushes to its home's check.
const DefaultGarbageGrace = 3 * time.Minute

// collectInterval is how often garbage is collected when nothing asks.
const collectInterval = time.Minute

// pressureCheck is how often the store is checked for room when no write
// has been refused.
const pressureCheck = 10 * time.Second

// collectOptions are the options of a collection on this member.
func (m *Member) collectOptions(pressure bool) group.CollectOptions {
	opt := group.CollectOptions{Grace: m.cfg.GarbageGrace, Pressure: pressure, Window: m.window}
	if m.node != nil {
		opt.Roots = m.node.Roots()
		opt.InUse = m.node.Keeps()
	}
	return opt
}

// margin is the room the member keeps ahead of its bounds: a twentieth of
// the cache size, at least 8 MiB.
func (m *Member) margin() int64 {
	return max(m.cfg.CacheSize/20, 8<<20)
}

// need is how many bytes the store must lose to be margin inside its
// bounds, 0 if it is.
func (m *Member) need() int64 {
	st := m.store
	var need int64
	if l := st.Limits(); l.CacheSize > 0 {
		need = st.Used() + st.Charged() + m.margin() - l.CacheSize
	}
	if l := st.Limits(); l.FreeFloor > 0 {
		if free, err := st.Free(); err == nil {
			need = max(need, l.FreeFloor+m.margin()-free)
		}
	}
	return max(need, 0)
}

// room makes room for a snapshot this node is building that found the
// store full: garbage at once, then a quarter of the store in node copies
// and snapshots no mounted pod reads, least recently used first. It
// reports whether it freed anything.
func (m *Member) room() bool {
	held := m.store.Used() + m.store.Charged()
	opt := m.collectOptions(true)
	res, _ := m.group.Collect(m.ctx, opt)
	need := max(m.need(), m.cfg.CacheSize/4, m.margin())
	_, evicted := m.node.Evict(m.ctx, need, opt.InUse)
	// relieve, woken by the same refused write, may have freed it first.
	return res.Freed+evicted > 0 || m.store.Used()+m.store.Charged() < held
}

// relieve makes room whenever the store is within its margin of a bound or
// refused a write, until ctx ends: garbage first, at once, then the node's
// copies and snapshots no mounted pod needs, least recently used first.
func (m *Member) relieve(ctx context.Context) {
	full := make(chan struct{}, 1)
	m.store.OnFull(func() {
		select {
		case full <- struct{}{}:
		default:
		}
	})
	for {
		select {
		case <-ctx.Done():
			return
		case <-full:
		case <-time.After(pressureCheck):
			if m.need() == 0 {
				continue
			}
		}
		start := time.Now()
		opt := m.collectOptions(true)
		res, err := m.group.Collect(ctx, opt)
		if err != nil && ctx.Err() == nil {
			klog.InfoS("Collection under pressure incomplete", "err", err)
		}
		var blobs int
		var bytes int64
		if need := m.need(); need > 0 && m.node != nil {
			blobs, bytes = m.node.Evict(ctx, need, opt.InUse)
		}
		klog.InfoS("Made room", "collected", res.Deleted, "freed", res.Freed, "evicted", blobs,
			"evictedBytes", bytes, "stillNeeded", m.need(), "duration", time.Since(start))
		// At most one round a second, however often writes are refused.
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
