package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"k8s.io/klog/v2"
)

// retryPolicy says how the committer retries an outbox entry whose commit
// failed, and when it gives up on it.
type retryPolicy struct {
	first, max time.Duration // the wait after the first failure, doubled up to max
	// An entry is quarantined once it has failed attempts times and its
	// first failure is age old: both, so a short burst of failures and a
	// long outage with few attempts both keep the pod's writes.
	attempts int
	age      time.Duration
	keep     int // quarantined entries kept, the oldest removed past it
	// noSpace is how many attempts in a row may find the group full before
	// the entry is dropped: enough for the members to collect garbage and
	// evict (which a refused write starts at once), not so many that the
	// node's disk holds writes nobody has room for.
	noSpace int
}

// defaultRetry retries for a day: a group partitioned from this node for
// less than that still gets the writes; older writes of a build cache are
// worth less than the disk they hold.
var defaultRetry = retryPolicy{first: time.Second, max: time.Minute, attempts: 30, age: 24 * time.Hour, keep: 32, noSpace: 6}

// retry is what the committer remembers of one entry that failed.
type retry struct {
	attempts int
	noSpace  int       // attempts in a row that found the group full
	size     int64     // bytes on disk, measured once it failed (0: not yet)
	first    time.Time // of the first failure
	next     time.Time // no attempt before
}

// Run drains the outbox until ctx ends: entries left by an earlier process
// first, then each one Submit adds, oldest first. Each entry is retried on
// its own backoff, so one that keeps failing never holds back the others; an
// entry that can never be committed is dropped (over quota, volume deleted)
// or quarantined (unreadable, or failing past the retry bounds) and counted.
func (n *Node) Run(ctx context.Context) {
	// Keyed by entry name, and only entries still in the outbox: bounded
	// by the outbox.
	retries := map[string]*retry{}
	// The node's other loops end with Run, which waits for them: nothing
	// writes below the node's directory once Run has returned.
	var loops sync.WaitGroup
	defer loops.Wait()
	for _, loop := range []func(context.Context){n.runUse, n.emptyTrash, n.countDisks, n.disks.fill} {
		loops.Go(func() { loop(ctx) })
	}
	for {
		wait := n.drain(ctx, retries)
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		case <-time.After(wait):
		}
	}
}

// drain attempts every outbox entry that is due, oldest first, and returns
// how long until the next one is.
func (n *Node) drain(ctx context.Context, retries map[string]*retry) time.Duration {
	ents, err := os.ReadDir(filepath.Join(n.dir, "outbox"))
	if err != nil {
		klog.ErrorS(err, "Read outbox")
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	names = n.bound(names, retries)
	listed := make(map[string]bool, len(names))
	wait := time.Minute
	for _, name := range names {
		listed[name] = true
		if ctx.Err() != nil {
			return 0
		}
		r := retries[name]
		if r != nil && time.Now().Before(r.next) {
			wait = min(wait, time.Until(r.next))
			continue
		}
		if r = n.attempt(ctx, name, r); r != nil {
			retries[name] = r
			wait = min(wait, time.Until(r.next))
		} else {
			delete(retries, name)
		}
	}
	for name := range retries {
		if !listed[name] {
			delete(retries, name) // gone from the outbox by other means
		}
	}
	return max(wait, 0)
}

// bound keeps the outbox within the member's cache size and the disk above
// its free floor, dropping the oldest entries (names, oldest first) past
// either, and charges what is left to the store's budget, so that blobs and
// outbox together stay within the cache size. It returns the names left.
func (n *Node) bound(names []string, retries map[string]*retry) []string {
	lim := n.store.Limits()
	sizes := make([]int64, len(names))
	var total int64
	for i, name := range names {
		r := retries[name]
		if r != nil && r.size > 0 {
			sizes[i] = r.size
		} else {
			sizes[i] = entryUsage(filepath.Join(n.dir, "outbox", name))
			if r != nil {
				r.size = sizes[i]
			}
		}
		total += sizes[i]
	}
	over := func() bool {
		if lim.CacheSize > 0 && total > lim.CacheSize {
			return true
		}
		free, err := n.store.Free()
		return lim.FreeFloor > 0 && err == nil && free < lim.FreeFloor
	}
	dropped := 0
	for dropped < len(names) && total > 0 && over() {
		n.drop(names[dropped], "outbox-full", fmt.Errorf("the outbox holds %d bytes, past the cache size %d or the free floor %d",
			total, lim.CacheSize, lim.FreeFloor))
		n.sweepTrash()
		n.store.Charge(outboxCharge(names[dropped]), 0)
		total -= sizes[dropped]
		dropped++
	}
	for i := dropped; i < len(names); i++ {
		if !hasDisk(filepath.Join(n.dir, "outbox", names[i])) { // the disks' account has those
			n.store.Charge(outboxCharge(names[i]), sizes[i])
		}
	}
	n.group.Metrics().OutboxBytes.Set(float64(total))
	return names[dropped:]
}

// entryUsage returns the bytes outbox entry dir takes on the disk: its
// layer image's, or its upper directory's files'.
func entryUsage(dir string) int64 {
	if hasDisk(dir) {
		return diskUsage(dir)
	}
	return files.DiskUsage(filepath.Join(dir, "upper"))
}

// outboxCharge names the charge of outbox entry name to the store's budget.
func outboxCharge(name string) string { return "outbox/" + name }

// attempt commits entry name once and returns its retry state, or nil once
// the entry has left the outbox.
func (n *Node) attempt(ctx context.Context, name string, r *retry) *retry {
	// The attempt moves the entry's files into the store, whose own
	// accounting takes them over; the next bound charges what is left.
	n.store.Charge(outboxCharge(name), 0)
	err := n.commitEntry(ctx, filepath.Join(n.dir, "outbox", name))
	switch {
	case err == nil:
		n.group.Metrics().Commits.WithLabelValues("applied").Inc()
		return nil
	case errors.Is(err, errBadLayer):
		n.quarantine(name, err)
		return nil
	case permanent(err):
		n.group.Metrics().Commits.WithLabelValues("refused").Inc()
		n.drop(name, dropReason(err), err)
		return nil
	case ctx.Err() != nil:
		return r // stopped, not failed: the next process tries again
	}
	n.group.Metrics().Commits.WithLabelValues("failed").Inc()
	n.Stats.CommitFailures.Add(1)
	if r == nil {
		r = &retry{first: time.Now()}
	}
	r.attempts++
	n.retrying(name, r.attempts, err)
	r.size = 0 // files moved into the store: measured again
	if errors.Is(err, cas.ErrNoSpace) {
		r.noSpace++
	} else {
		r.noSpace = 0
	}
	if r.noSpace > 0 && r.noSpace >= n.retry.noSpace {
		n.drop(name, "no-space", fmt.Errorf("the group had no room for it in %d attempts: %w", r.noSpace, err))
		return nil
	}
	if r.attempts >= n.retry.attempts && time.Since(r.first) >= n.retry.age {
		n.quarantine(name, fmt.Errorf("failed %d times since %s, last: %w", r.attempts, r.first.UTC().Format(time.RFC3339), err))
		return nil
	}
	backoff := n.retry.first
	for i := 1; i < r.attempts && backoff < n.retry.max; i++ {
		backoff *= 2
	}
	backoff = min(backoff, n.retry.max)
	r.next = time.Now().Add(backoff)
	klog.ErrorS(err, "Commit failed; will retry", "entry", name, "attempts", r.attempts, "backoff", backoff)
	return r
}

// drop gives up on outbox entry name for reason (a metric label) and removes
// it: its writes reach no later pod.
func (n *Node) drop(name, reason string, err error) {
	n.group.Metrics().DroppedCommits.WithLabelValues(reason).Inc()
	klog.ErrorS(err, "Commit dropped", "entry", name, "reason", reason)
	n.lost(name, err)
	n.discard(filepath.Join(n.dir, "outbox", name))
}

// dropReason names why a permanent failure drops a commit.
func dropReason(err error) string {
	switch {
	case errors.Is(err, tree.ErrTooLarge):
		return "too-large"
	case errors.Is(err, errVolumeGone):
		return "volume-gone"
	case errors.Is(err, cas.ErrNoSpace):
		return "no-space"
	}
	return "invalid"
}

// quarantine moves outbox entry name out of the outbox, with a file reason
// saying why it could never be committed, and keeps only the newest
// quarantined entries.
func (n *Node) quarantine(name string, reason error) {
	n.group.Metrics().Commits.WithLabelValues("quarantined").Inc()
	n.group.Metrics().DroppedCommits.WithLabelValues("quarantined").Inc()
	klog.ErrorS(reason, "Outbox entry quarantined; it is not retried", "entry", name)
	n.lost(name, reason)
	src := filepath.Join(n.dir, "outbox", name)
	// A quarantined entry keeps its record, not the pod's files nor its disk.
	n.releaseDisk(src)
	for _, sub := range []string{"upper", "work"} {
		n.discard(filepath.Join(src, sub))
	}
	// The reason is written first, so a quarantined entry always has one.
	if err := files.WriteAtomic(filepath.Join(src, "reason"), []byte(reason.Error()+"\n")); err != nil {
		klog.ErrorS(err, "Write the reason of a quarantined entry; it is dropped", "entry", name)
		n.discard(src)
		return
	}
	qdir := filepath.Join(n.dir, "quarantine")
	dst := filepath.Join(qdir, fmt.Sprintf("%020d-%s", time.Now().UnixNano(), name))
	if err := os.Rename(src, dst); err != nil {
		klog.ErrorS(err, "Move an entry into quarantine; it is dropped", "entry", name)
		n.discard(src) // never retried forever
		return
	}
	ents, err := os.ReadDir(qdir)
	if err != nil {
		return
	}
	// Names start with the time of quarantine: ReadDir's order is oldest first.
	for i := 0; i < len(ents)-n.retry.keep; i++ {
		n.discard(filepath.Join(qdir, ents[i].Name()))
	}
}

// lost tells Lost, if set, of outbox entry name's layer, whose writes are
// not committed because of why.
func (n *Node) lost(name string, why error) {
	if n.Lost == nil {
		return
	}
	l, ok, err := readLayer(filepath.Join(n.dir, "outbox", name))
	if err != nil || !ok {
		l = Layer{} // unreadable: Lost still hears why
	}
	n.Lost(l, why)
}

// WaitIdle waits until every layer submitted before the call is committed,
// dropped or quarantined, nudging the committer while it waits.
func (n *Node) WaitIdle(ctx context.Context) error {
	for {
		ents, err := os.ReadDir(filepath.Join(n.dir, "outbox"))
		if err != nil {
			return err
		}
		if len(ents) == 0 {
			return nil
		}
		n.kick()
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
