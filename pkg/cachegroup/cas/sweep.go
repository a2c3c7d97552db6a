package cas

import (
	"slices"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/shortmap"
	"golang.org/x/sys/unix"
)

// fresh remembers the blobs written or kept lately: a collection that finds
// one of them unreferenced leaves it, since a commit in flight may name it
// (its blobs are pushed, then checked at their owners, then the commit is
// applied). Entries older than the longest window are dropped by Sweep, so
// the map holds only what was written or kept in that window: every blob a
// hydration fetches, so a mark is kept small, keyed by the digest's first 8
// bytes, about 20 bytes a blob instead of about 100. A mark another blob
// shares only keeps that blob from a sweep or an eviction longer; Settle,
// which forgets marks, forgets no shared one.
type fresh struct {
	mu sync.Mutex
	at shortmap.Map[int64] // by Digest.Short: when, as a stamp
}

// epoch is what fresh's times count from: time.Since of it is monotonic, as
// the time.Time values the marks replace were.
var epoch = time.Now()

// stamp is t as a time of fresh.
func stamp(t time.Time) int64 { return int64(t.Sub(epoch)) }

func (f *fresh) touch(d Digest) {
	now := stamp(time.Now())
	f.mu.Lock()
	f.at.Set(d.Short(), now)
	f.mu.Unlock()
}

// since reports whether d was written or kept at or after t.
func (f *fresh) since(d Digest, t time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.at.Get(d.Short())
	return ok && at >= stamp(t)
}

// when returns when d was written or kept last, if it was in the window.
func (f *fresh) when(d Digest) (time.Time, bool) {
	f.mu.Lock()
	at, ok := f.at.Get(d.Short())
	f.mu.Unlock()
	return epoch.Add(time.Duration(at)), ok
}

// expire forgets what was written or kept before t.
func (f *fresh) expire(t time.Time) {
	before := stamp(t)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.at.DeleteFunc(func(_ uint64, at int64) bool { return at < before })
}

// Keep returns the size of blob d, or -1 if the store lacks it, and keeps a
// blob it has from the next collections for a while: a home asks this of a
// commit's blobs just before it applies the commit.
func (s *Store) Keep(d Digest) int64 {
	mu := s.lock(d)
	mu.Lock()
	defer mu.Unlock()
	n := s.Size(d)
	if n >= 0 {
		s.fresh.touch(d)
	}
	return n
}

// Sweep deletes the blobs of garbage, as a collection found them: blobs no
// live root references. It leaves those written or kept (see Keep) at or
// after since, and those linked into a snapshot on this node, and returns
// how many blobs and bytes it deleted.
func (s *Store) Sweep(garbage []Digest, since time.Time) (blobs int, bytes int64) {
	for _, d := range garbage {
		if n := s.sweep(d, since); n >= 0 {
			blobs++
			bytes += n
		}
	}
	return blobs, bytes
}

// sweep deletes blob d unless it is fresh or linked, returning its size, or
// -1 if it stays. It holds d's lock, so a Keep of d either comes first (and
// d stays) or finds it gone.
func (s *Store) sweep(d Digest, since time.Time) int64 {
	mu := s.lock(d)
	mu.Lock()
	defer mu.Unlock()
	if s.fresh.since(d, since) {
		return -1
	}
	var st unix.Stat_t
	if unix.Lstat(s.Path(d), &st) != nil || st.Nlink > 1 {
		return -1 // gone already, or linked into a snapshot on this node
	}
	if unix.Unlink(s.Path(d)) != nil {
		return -1
	}
	s.used.Add(-st.Size)
	return st.Size
}

// Forget forgets what was written or kept before t, so that the marks stay
// bounded by what a window sees even while no collection completes.
func (s *Store) Forget(t time.Time) { s.fresh.expire(t) }

// Evict deletes blob d, a copy the member may do without, unless a snapshot
// on this node links it, or it was written or kept less than window ago and
// has not been linked since (a hydration links what it fetched; one that
// linked it and let go is done with it).
func (s *Store) Evict(d Digest, window time.Duration) bool {
	mu := s.lock(d)
	mu.Lock()
	defer mu.Unlock()
	var st unix.Stat_t
	if unix.Lstat(s.Path(d), &st) != nil || st.Nlink > 1 {
		return false
	}
	if at, ok := s.fresh.when(d); ok && time.Since(at) < window && st.Ctim.Nano() <= at.UnixNano() {
		return false
	}
	if unix.Unlink(s.Path(d)) != nil {
		return false
	}
	s.used.Add(-st.Size)
	return true
}

// Settle forgets that the blobs of Short keys[i] for which live(i) were
// written or kept before t: a collection found them referenced by a root
// listed after t, so the commits that wrote them have landed, and once they
// turn garbage only a new Keep (a new commit naming them) should hold them
// back. keys is the Shorts of the store, listed after t: a mark two blobs
// share may be the other's, for a commit in flight, and stays (as does one
// that a blob stored since shares: it is newer than t).
func (s *Store) Settle(keys []uint64, live func(i int) bool, t time.Time) {
	before := stamp(t)
	s.fresh.mu.Lock()
	defer s.fresh.mu.Unlock()
	s.fresh.at.DeleteFunc(func(k uint64, at int64) bool {
		if at >= before {
			return false
		}
		i, ok := slices.BinarySearch(keys, k) // the first of k's run
		return ok && live(i) && (i+1 == len(keys) || keys[i+1] != k)
	})
}
