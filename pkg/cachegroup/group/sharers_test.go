package group

import (
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// The sharing nodes of snapshots announced long ago are forgotten, and so
// are the snapshots: the list holds only what was announced within the TTL.
func TestSharersForgetWhatWasNotAnnouncedAgain(t *testing.T) {
	h := newSharers()
	old, cur := cas.Sum([]byte("old")), cas.Sum([]byte("cur"))
	h.add(old, "node-a")
	h.m[old]["node-a"] = time.Now().Add(-2 * sharerTTL)
	h.swept = time.Now().Add(-2 * sharerTTL)
	h.add(cur, "node-b")
	if _, ok := h.m[old]; ok || len(h.m) != 1 {
		t.Fatalf("a snapshot announced two TTLs ago is still kept: %d snapshots", len(h.m))
	}
	if got := h.list(cur); len(got) != 1 || got[0] != "node-b" {
		t.Fatalf("sharers of the current snapshot: %v", got)
	}
}
