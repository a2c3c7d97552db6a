package cas

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// fresh remembers the blobs written or kept lately: a collection that finds
// one of them unreferenced leaves it, since a commit in flight may name it
// (its blobs are pushed, then checked at their owners, then the commit is
// applied). Entries older than the longest window are dropped by Sweep, so
// the map holds only what was written or kept in that window.
type fresh struct {
	mu sync.Mutex
	at map[Digest]time.Time
}

func (f *fresh) touch(d Digest) {
	f.mu.Lock()
	if f.at == nil {
		f.at = map[Digest]time.Time{}
	}
	f.at[d] = time.Now()
	f.mu.Unlock()
}

// since reports whether d was written or kept at or after t.
func (f *fresh) since(d Digest, t time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.at[d]
	return ok && !at.Before(t)
}

// expire forgets what was written or kept before t.
func (f *fresh) expire(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for d, at := range f.at {
		if at.Before(t) {
			delete(f.at, d)
		}
	}
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
// how many blobs and bytes it deleted. What was written or kept before
// forget is forgotten.
func (s *Store) Sweep(garbage []Digest, since, forget time.Time) (blobs int, bytes int64) {
	for _, d := range garbage {
		if n := s.sweep(d, since); n >= 0 {
			blobs++
			bytes += n
		}
	}
	s.fresh.expire(forget)
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
	s.fresh.mu.Lock()
	at, ok := s.fresh.at[d]
	s.fresh.mu.Unlock()
	if ok && time.Since(at) < window && st.Ctim.Nano() <= at.UnixNano() {
		return false
	}
	if unix.Unlink(s.Path(d)) != nil {
		return false
	}
	s.used.Add(-st.Size)
	return true
}

// Settle forgets that the blobs of live were written or kept before t: a
// collection found them referenced by a root listed at t, so the commits
// that wrote them have landed, and once they turn garbage only a new Keep
// (a new commit naming them) should hold them back.
func (s *Store) Settle(live []Digest, t time.Time) {
	s.fresh.mu.Lock()
	defer s.fresh.mu.Unlock()
	for _, d := range live {
		if at, ok := s.fresh.at[d]; ok && at.Before(t) {
			delete(s.fresh.at, d)
		}
	}
}
