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
// page cache instead: a blob linked into a snapshot here with pages in the
// cache was read (or written) since the kernel last needed the memory. The
// read path pays nothing; the sampler pays one open and one cachestat(2) a
// linked blob per interval.

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
	ids := n.Staged()
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

// cachedBlobs returns the blobs linked into a snapshot on this node that
// have pages in the page cache.
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

// cached reports whether the file at path is linked more than once (into
// a snapshot) and has pages in the page cache.
func cached(path string) bool {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Nlink < 2 {
		return false
	}
	var cs unix.Cachestat_t
	return unix.Cachestat(uint(fd), &unix.CachestatRange{}, &cs, 0) == nil && cs.Cache > 0
}
