package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/shortmap"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
)

// maxUses bounds the blobs a home remembers the last use of; past it the
// least recently used are forgotten (they fall back to their mtime).
const maxUses = 1 << 20

// usesSave is how often the table is written down: a crash loses at most
// this much of what nodes reported.
const usesSave = time.Minute

// uses is when each blob of this home's volumes was last written or read,
// as commits and nodes report it: what a volume over its quota evicts by.
// It is kept in memory and written to one file of fixed-size records.
type uses struct {
	path string

	mu    sync.Mutex
	at    shortmap.Map[int64] // by the digest's first 64 bits: nanoseconds since the epoch
	saved time.Time
	dirty bool
}

// A record is a key and a time. Keys are a quarter of a digest, for a
// table of a million blobs in some 20 MB; two blobs sharing one only
// share a last use, which orders an eviction a little wrong, never more.
const useRecord = 8 + 8

func useKey(d cas.Digest) uint64 { return binary.LittleEndian.Uint64(d[:8]) }

func loadUses(path string) *uses {
	u := &uses{path: path, saved: time.Now()}
	b, err := os.ReadFile(path)
	if err != nil {
		return u // none yet, or unreadable: every file falls back to its mtime
	}
	for ; len(b) >= useRecord; b = b[useRecord:] {
		u.at.Set(binary.LittleEndian.Uint64(b[:8]), int64(binary.LittleEndian.Uint64(b[8:useRecord])))
	}
	return u
}

// touch records that ds were used at t.
func (u *uses) touch(ds []cas.Digest, t time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, d := range ds {
		k := useKey(d)
		at, _ := u.at.Get(k)
		u.at.Set(k, max(at, t.UnixNano()))
	}
	u.dirty = true
	if u.at.Len() > maxUses {
		u.forgetOldest(maxUses)
	}
	if time.Since(u.saved) >= usesSave {
		u.save()
	}
}

// forgetOldest drops the least recently used, down to 9/10 of bound; u.mu
// is held.
func (u *uses) forgetOldest(bound int) {
	ats := make([]int64, 0, u.at.Len())
	for _, at := range u.at.All() {
		ats = append(ats, at)
	}
	slices.Sort(ats)
	drop := len(ats) - bound*9/10
	newest := ats[drop-1] // the last use of the newest to go
	// Of the uses at newest, as many go as make up drop: a commit records
	// all its blobs at one time.
	ties, _ := slices.BinarySearch(ats, newest)
	ties = drop - ties
	u.at.DeleteFunc(func(_ uint64, at int64) bool {
		if at == newest && ties > 0 {
			ties--
			return true
		}
		return at < newest
	})
}

// save writes the table down; u.mu is held. A failure is retried at the
// next touch.
func (u *uses) save() {
	b := make([]byte, 0, u.at.Len()*useRecord)
	for k, at := range u.at.All() {
		b = binary.LittleEndian.AppendUint64(b, k)
		b = binary.LittleEndian.AppendUint64(b, uint64(at))
	}
	if err := files.WriteAtomic(u.path, b); err == nil || errors.Is(err, fs.ErrNotExist) {
		u.saved, u.dirty = time.Now(), false
	}
}

// recency is the eviction order of a volume's files: the last use
// recorded, or the file's mtime if none was.
func (u *uses) recency(e tree.Entry) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	if at, ok := u.at.Get(useKey(e.Digest)); ok {
		return at
	}
	return e.Mtime
}

// Used records that nodes read the blobs ds now: files of this home's
// volumes that pods read stay longest when a volume must evict.
func (l *Home) Used(_ context.Context, ds []cas.Digest) error {
	l.uses.touch(ds, time.Now())
	return nil
}
