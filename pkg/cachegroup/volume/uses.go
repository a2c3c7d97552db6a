package volume

import (
	"cmp"
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
	at    map[cas.Digest]int64 // nanoseconds since the epoch
	saved time.Time
	dirty bool
}

const useRecord = len(cas.Digest{}) + 8

func loadUses(path string) *uses {
	u := &uses{path: path, at: map[cas.Digest]int64{}, saved: time.Now()}
	b, err := os.ReadFile(path)
	if err != nil {
		return u // none yet, or unreadable: every file falls back to its mtime
	}
	for ; len(b) >= useRecord; b = b[useRecord:] {
		u.at[cas.Digest(b[:32])] = int64(binary.LittleEndian.Uint64(b[32:useRecord]))
	}
	return u
}

// touch records that ds were used at t.
func (u *uses) touch(ds []cas.Digest, t time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, d := range ds {
		u.at[d] = max(u.at[d], t.UnixNano())
	}
	u.dirty = true
	if len(u.at) > maxUses {
		u.forgetOldest()
	}
	if time.Since(u.saved) >= usesSave {
		u.save()
	}
}

// forgetOldest drops the least recently used tenth; u.mu is held.
func (u *uses) forgetOldest() {
	type use struct {
		d  cas.Digest
		at int64
	}
	all := make([]use, 0, len(u.at))
	for d, at := range u.at {
		all = append(all, use{d, at})
	}
	slices.SortFunc(all, func(a, b use) int { return cmp.Compare(a.at, b.at) })
	for _, x := range all[:len(all)-maxUses*9/10] {
		delete(u.at, x.d)
	}
}

// save writes the table down; u.mu is held. A failure is retried at the
// next touch.
func (u *uses) save() {
	b := make([]byte, 0, len(u.at)*useRecord)
	for d, at := range u.at {
		b = append(b, d[:]...)
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
	if at, ok := u.at[e.Digest]; ok {
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
