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
	ds := n.cachedBlobs()
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
// cache.
func (n *Node) cachedBlobs() []cas.Digest {
	all, err := n.store.All()
	if err != nil {
		return nil
	}
	var used []cas.Digest
	for _, d := range all {
		if cached(n.store.Path(d)) {
			used = append(used, d)
		}
	}
	return used
}

// cached reports whether the file at path has pages in the page cache.
func cached(path string) bool {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var cs unix.Cachestat_t
	return unix.Cachestat(uint(fd), &unix.CachestatRange{}, &cs, 0) == nil && cs.Cache > 0
}
