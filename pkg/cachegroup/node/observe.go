package node

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Outbox returns how many ended layers wait in the outbox and when the
// oldest of them was submitted (an entry is named after that time, see
// Submit).
func (n *Node) Outbox() (entries int, oldest time.Time) {
	ents, err := os.ReadDir(filepath.Join(n.dir, "outbox"))
	if err != nil {
		return 0, time.Time{}
	}
	for _, e := range ents {
		seq, _, _ := strings.Cut(e.Name(), "-")
		ns, err := strconv.ParseInt(seq, 10, 64)
		if err != nil {
			continue
		}
		entries++
		if t := time.Unix(0, ns); oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	return entries, oldest
}

// RetryThreshold is the failed attempts in a row after which a commit is
// reported (metric, Retrying): some 30 seconds of backoff, past a blip.
const RetryThreshold = 6

// retrying counts an attempt of outbox entry name that failed for the
// attempts-th time and, at RetryThreshold, tells Retrying of it once.
func (n *Node) retrying(name string, attempts int, why error) {
	if attempts < RetryThreshold {
		return
	}
	n.group.Metrics().CommitRetries.Inc()
	if attempts != RetryThreshold || n.Retrying == nil {
		return
	}
	l, ok, err := readLayer(filepath.Join(n.dir, "outbox", name))
	if err != nil || !ok {
		return
	}
	n.Retrying(l, attempts, why)
}
