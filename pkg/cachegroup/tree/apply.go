package tree

import (
	"cmp"
	"fmt"
	"hash/maphash"
	"slices"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// flushEntries bounds the directory entries an edit holds in memory: past
// it, the directories changed so far are written to the store and all are
// let go, to be read back if a later op walks into them. So a commit of a
// million files holds a few directories at a time, not the tree; the tree
// objects written at a flush and changed again after are garbage.
var flushEntries = 1 << 16

// Applied is the outcome of Apply.
type Applied struct {
	Root        cas.Digest
	Size, Count int64
	Evicted     int          // files evicted to stay within quota
	Trees       []cas.Digest // tree objects the new root added
	// Stale counts the grafts whose From the head no longer held as the
	// commit's base did: renames that raced another commit (see Commit).
	Stale int
}

// Apply applies c on top of the tree at root in s and enforces quota: if the
// result is larger, the files the commit did not touch are evicted, least
// recent first by recency (nil: by mtime). load makes a tree object or a
// part present in s before it is read. A graft copies the directory the
// tree at root holds at its From; a tree object the commit names is never
// read (see Commit). A commit in parts is read twice, a part at a time.
func Apply(s *cas.Store, load func(cas.Digest) error, root cas.Digest, c *Commit, quota int64, recency func(Entry) int64) (Applied, error) {
	var res Applied
	if err := c.Validate(); err != nil {
		return res, err
	}
	m, err := (&mtree{store: s, load: load, trees: &res.Trees, loaded: new(int)}).open(root)
	if err != nil {
		return res, err
	}
	// First the bytes written, for the quota, and what each graft copies:
	// the head's directory at its From, before any op.
	var (
		written int64
		srcs    = map[int]*Entry{} // by index of the graft among all ops
	)
	err = m.each(c, func(i int, op Op) (err error) {
		if op.Kind == OpUpsert && op.Entry.Type == TypeFile {
			written += op.Entry.Size
		}
		if op.Kind == OpGraft {
			srcs[i], err = m.source(op)
		}
		return err
	})
	if err != nil {
		return res, err
	}
	if quota > 0 && written > quota {
		return res, fmt.Errorf("%w: %d bytes written, quota %d", ErrTooLarge, written, quota)
	}
	err = m.each(c, func(i int, op Op) (err error) {
		if op.Kind == OpGraft {
			if src := srcs[i]; src == nil || src.Digest != op.Entry.Digest {
				res.Stale++
			}
			err = m.graft(op, srcs[i])
		} else {
			err = m.apply(op)
		}
		if err != nil {
			return fmt.Errorf("apply %q: %w", op.Path, err)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	res.Root, res.Size, res.Count, err = m.write()
	if err != nil || quota <= 0 || res.Size <= quota {
		return res, err
	}
	if recency == nil {
		recency = func(e Entry) int64 { return e.Mtime }
	}
	// The paths written are kept from eviction, known by a hash (a
	// collision keeps one more file): read again from the commit only
	// now, as an eviction is rare and the set as large as the commit.
	seed, touched := maphash.MakeSeed(), map[uint64]bool{}
	err = c.Runs(s, load, func(ops []Op) error {
		for _, op := range ops {
			touched[maphash.String(seed, op.Path)] = true
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	keep := func(p string) bool { return touched[maphash.String(seed, p)] }
	if res.Evicted, err = evict(m, res.Size-quota, keep, recency); err != nil {
		return res, err
	}
	res.Root, res.Size, res.Count, err = m.write()
	return res, err
}

// each calls fn with every op of c and its index, in order, keeping the
// edit rooted at m within its bound between ops.
func (m *mtree) each(c *Commit, fn func(i int, op Op) error) error {
	i := 0
	return c.Runs(m.store, m.load, func(ops []Op) error {
		for _, op := range ops {
			if err := fn(i, op); err != nil {
				return err
			}
			i++
			if err := m.bound(); err != nil {
				return err
			}
		}
		return nil
	})
}

// source returns the directory entry at graft op's From in m as it is now
// (nil: none there), for the graft to copy once m has changed.
func (m *mtree) source(op Op) (*Entry, error) {
	parts, err := SplitPath(op.From)
	if err != nil {
		return nil, err
	}
	e, err := m.lookup(parts)
	if err != nil {
		return nil, fmt.Errorf("graft %q from %q: %w", op.Path, op.From, err)
	}
	return e, nil
}

// bound keeps the edit rooted at m within flushEntries: past it, what
// changed is written and every loaded directory let go.
func (m *mtree) bound() error {
	if *m.loaded <= flushEntries {
		return nil
	}
	if m.dirty {
		if _, _, _, err := m.write(); err != nil {
			return err
		}
	}
	m.subs = nil
	*m.loaded = len(m.entries)
	return nil
}

// evict deletes files not kept, least recent first (of files as recent,
// the oldest mtime first), until need bytes are freed. It reads the whole
// tree: a volume over its quota is the one case an edit is not bounded.
func evict(m *mtree, need int64, keep func(path string) bool, recency func(Entry) int64) (int, error) {
	type victim struct {
		path          string
		recent, mtime int64
		size          int64
	}
	var vs []victim
	err := m.files("", func(p string, e Entry) {
		if e.Type == TypeFile && !keep(p) {
			vs = append(vs, victim{p, recency(e), e.Mtime, e.Size})
		}
	})
	if err != nil {
		return 0, err
	}
	slices.SortFunc(vs, func(a, b victim) int { return cmp.Or(cmp.Compare(a.recent, b.recent), cmp.Compare(a.mtime, b.mtime)) })
	n := 0
	for _, v := range vs {
		if need <= 0 {
			break
		}
		if err := m.apply(Op{Kind: OpDelete, Path: v.path}); err != nil {
			return n, err
		}
		need -= v.size
		n++
	}
	return n, nil
}
