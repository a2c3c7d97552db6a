package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
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
}

// defaultRetry retries for a day: a group partitioned from this node for
// less than that still gets the writes; older writes of a build cache are
// worth less than the disk they hold.
var defaultRetry = retryPolicy{first: time.Second, max: time.Minute, attempts: 30, age: 24 * time.Hour, keep: 32}

// retry is what the committer remembers of one entry that failed.
type retry struct {
	attempts int
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

// attempt commits entry name once and returns its retry state, or nil once
// the entry has left the outbox.
func (n *Node) attempt(ctx context.Context, name string, r *retry) *retry {
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
		klog.ErrorS(err, "Commit refused; the layer is dropped", "entry", name)
		n.lost(name, err)
		n.discard(filepath.Join(n.dir, "outbox", name))
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

// quarantine moves outbox entry name out of the outbox, with a file reason
// saying why it could never be committed, and keeps only the newest
// quarantined entries.
func (n *Node) quarantine(name string, reason error) {
	n.group.Metrics().Commits.WithLabelValues("quarantined").Inc()
	klog.ErrorS(reason, "Outbox entry quarantined; it is not retried", "entry", name)
	n.lost(name, reason)
	src := filepath.Join(n.dir, "outbox", name)
	n.releaseDisk(src) // a quarantined entry keeps its record, not its disk
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
