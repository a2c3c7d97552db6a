package node

import (
	"context"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"golang.org/x/sys/unix"
)

// useInterval is how often the node learns which blobs its pods read when
// no pod ends; useSpacing the least time between two samples.
const useInterval, useSpacing = 2 * time.Minute, 10 * time.Second

// Reads through a pod's overlay never touch the access time of the lower
// file (the overlay opens it O_NOATIME), so the node learns use from the
// page cache instead: a blob of the store with pages in the cache was read
// (or written, or fetched for a snapshot) since the kernel last needed the
// memory. The read path pays nothing; the sampler pays one open and one
// cachestat(2) a blob per sample.
//
// Writing a blob fills the cache too: a snapshot's hydration would make
// every file it fetched look read. So the store tells the node of each blob
// written, and once a hydration is done (or at the next sample, for other
// writes) the node drops those blobs' pages instead of counting them,
// after one syncfs so that the pages are clean and go; from then on only
// reads bring them back. Reads before the drop go unseen: a pod that reads
// as its snapshot is settled, or a commit's files read before the sample.

// maxArrived is how many blobs written the node remembers before it
// settles at once. Until the settle takes them, at most arrivedCap are kept
// (a sample can hold the settle back while a hydration writes on): a blob
// past the cap is not remembered, and its pages count as one read.
const (
	maxArrived = 1 << 16
	arrivedCap = 4 * maxArrived
)

// arrive records that blob d was written into the store.
func (n *Node) arrive(d cas.Digest) {
	n.arrivedMu.Lock()
	defer n.arrivedMu.Unlock()
	if n.arrived == nil {
		n.arrived = map[cas.Digest]struct{}{}
	}
	if len(n.arrived) < arrivedCap {
		n.arrived[d] = struct{}{}
	}
	if len(n.arrived) >= maxArrived {
		kick(n.settleWake)
	}
}

// takeArrived returns the blobs written since it was last called.
func (n *Node) takeArrived() map[cas.Digest]struct{} {
	n.arrivedMu.Lock()
	defer n.arrivedMu.Unlock()
	a := n.arrived
	n.arrived = nil
	return a
}

// usedFor is how long the volume of a pod that ended is told of the blobs
// read on this node: its pod's reads are sampled after it is unstaged.
const usedFor = 5 * time.Minute

// runUse reports the blobs pods read to the homes of the volumes mounted or
// staged here, soon after a pod ends (what it read is in the page cache
// then) and every useInterval, until ctx ends.
func (n *Node) runUse(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.settleWake:
			n.settle()
			continue
		case <-n.useWake:
		case <-time.After(useInterval):
		}
		n.ReportUse(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(useSpacing):
		}
	}
}

// kick wakes whoever waits on c, without waiting.
func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// ReportUse samples the page cache once and tells the homes of the volumes
// mounted or staged here which blobs pods read; it returns how many.
func (n *Node) ReportUse(ctx context.Context) int {
	ids := append(n.Staged(), n.endedLately()...)
	if ls, err := n.Layers(); err == nil {
		for _, l := range ls {
			ids = append(ids, l.VolumeID)
		}
	}
	ds := n.cachedBlobs(ctx)
	if len(ds) == 0 || len(ids) == 0 {
		return 0
	}
	n.group.Used(ctx, ids, ds)
	return len(ds)
}

// ended records that a pod of volume id ended: its reads are told to the
// volume's homes at the next samples.
func (n *Node) ended(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.endedAt == nil {
		n.endedAt = map[string]time.Time{}
	}
	n.endedAt[id] = time.Now()
	kick(n.useWake)
}

// endedLately returns the volumes whose pods ended less than usedFor ago,
// forgetting the others: the map holds the volumes of that window.
func (n *Node) endedLately() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var ids []string
	for id, t := range n.endedAt {
		if time.Since(t) < usedFor {
			ids = append(ids, id)
		} else {
			delete(n.endedAt, id)
		}
	}
	return ids
}

// cachedBlobs returns the blobs of the store that have pages in the page
// cache and were not written since they were last settled (see above); once
// ctx ends, it looks at no more.
func (n *Node) cachedBlobs(ctx context.Context) []cas.Digest { return n.sample(ctx, true) }

// settle drops the pages of the blobs written lately, so that the page cache
// tells of reads alone; it runs after each hydration.
func (n *Node) settle() { n.sample(context.Background(), false) }

// sample drops the pages of the blobs written since the last sample and,
// with report, returns the other blobs that have pages in the page cache.
// It runs at the lowest priority: it is never urgent, and at a million
// blobs a report is a million opens that pod starts should not wait behind.
func (n *Node) sample(ctx context.Context, report bool) []cas.Digest {
	n.sampleMu.Lock() // a report waits for the drops of a settle under way
	defer n.sampleMu.Unlock()
	arrived := n.takeArrived()
	if len(arrived) == 0 && !report {
		return nil
	}
	var used []cas.Digest
	idle(func() {
		if len(arrived) > 0 {
			n.store.Sync() // a dirty page stays when dropped; a failed sync leaves some counted once
		}
		for d := range arrived {
			cached(n.store.Path(d), true)
		}
		if !report {
			return
		}
		n.store.Each(ctx, func(d cas.Digest) {
			if _, ok := arrived[d]; !ok && cached(n.store.Path(d), false) {
				used = append(used, d)
			}
		})
	})
	return used
}

// cached reports whether the file at path has pages in the page cache; with
// drop, it drops them instead and reports false.
func cached(path string, drop bool) bool {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if drop {
		unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
		return false
	}
	var cs unix.Cachestat_t
	return unix.Cachestat(uint(fd), &unix.CachestatRange{}, &cs, 0) == nil && cs.Cache > 0
}
