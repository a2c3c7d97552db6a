package tree

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// OpKind says what an Op does to its path.
type OpKind uint8

// The changes a commit can make to a path.
const (
	// OpUpsert creates or replaces a file or symlink, or creates a directory
	// (keeping its children if it exists) and sets its metadata.
	OpUpsert OpKind = iota + 1
	// OpDelete removes the path and everything below it; a missing path is fine.
	OpDelete
	// OpReplace makes the path an empty directory with the given metadata,
	// dropping whatever was there (an overlay's opaque directory).
	OpReplace
)

// Op is one change of a commit.
type Op struct {
	Kind OpKind `json:"k"`
	// Path is slash-separated and relative to the volume root.
	Path string `json:"p"`
	// Entry is the new entry for upserts and replaces; its Name is ignored.
	Entry Entry `json:"e"`
}

// Commit is a pod's writes: changes computed against the snapshot the pod
// started from (Base), applied on top of the current head in order. The last
// writer wins per path.
type Commit struct {
	Base cas.Digest `json:"base"`
	Ops  []Op       `json:"ops"`
}

// Validate checks every op's path and entry; what it finds wrong is
// ErrInvalid.
func (c *Commit) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func (c *Commit) validate() error {
	for i, op := range c.Ops {
		if _, err := SplitPath(op.Path); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		switch op.Kind {
		case OpDelete:
		case OpUpsert, OpReplace:
			e := op.Entry
			e.Name = "x"
			if op.Kind == OpReplace && e.Type != TypeDir {
				return fmt.Errorf("op %d: replace of %q with a %s", i, op.Path, e.Type)
			}
			if e.Type == TypeDir {
				e.Size, e.Count, e.Digest = 0, 0, cas.Digest{}
			}
			if err := (&Tree{Entries: []Entry{e}}).Validate(); err != nil {
				return fmt.Errorf("op %d on %q: %w", i, op.Path, err)
			}
		default:
			return fmt.Errorf("op %d: unknown kind %d", i, op.Kind)
		}
	}
	return nil
}

// Files returns the blobs of the files the commit writes with the sizes the
// commit gives them, each pair once.
func (c *Commit) Files() []cas.Ref {
	seen := map[cas.Ref]bool{}
	var refs []cas.Ref
	for _, op := range c.Ops {
		ref := cas.Ref{Digest: op.Entry.Digest, Size: op.Entry.Size}
		if op.Kind == OpUpsert && op.Entry.Type == TypeFile && !seen[ref] {
			seen[ref] = true
			refs = append(refs, ref)
		}
	}
	return refs
}

// Bytes returns the bytes of the files the commit writes.
func (c *Commit) Bytes() int64 {
	var n int64
	for _, op := range c.Ops {
		if op.Kind == OpUpsert && op.Entry.Type == TypeFile {
			n += op.Entry.Size
		}
	}
	return n
}

// mtree is a tree being edited: directories are loaded from the store when
// first walked into and written back, bottom-up, when the edit is done.
type mtree struct {
	store   *cas.Store
	load    func(cas.Digest) error // makes a tree object present in store
	trees   *[]cas.Digest          // tree objects written by this edit
	entries []Entry
	subs    map[string]*mtree // loaded subdirectories by name
	dirty   bool
}

// Load reads, verifies and decodes tree object d from s.
func Load(s *cas.Store, d cas.Digest) (*Tree, error) {
	b, err := s.ReadAll(d)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", d, err)
	}
	return Decode(b)
}

func (m *mtree) open(d cas.Digest) (*mtree, error) {
	if err := m.load(d); err != nil {
		return nil, fmt.Errorf("tree %s: %w", d, err)
	}
	t, err := Load(m.store, d)
	if err != nil {
		return nil, err
	}
	return &mtree{store: m.store, load: m.load, trees: m.trees, entries: t.Entries}, nil
}

// empty returns a new empty directory of the same edit.
func (m *mtree) empty() *mtree {
	return &mtree{store: m.store, load: m.load, trees: m.trees, dirty: true}
}

func (m *mtree) find(name string) int {
	return (&Tree{Entries: m.entries}).Find(name)
}

// sub returns the loaded subdirectory name, loading it if needed.
func (m *mtree) sub(name string) (*mtree, error) {
	if s, ok := m.subs[name]; ok {
		return s, nil
	}
	i := m.find(name)
	if i < 0 || m.entries[i].Type != TypeDir {
		return nil, fmt.Errorf("%q is not a directory", name)
	}
	s, err := m.open(m.entries[i].Digest)
	if err != nil {
		return nil, err
	}
	if m.subs == nil {
		m.subs = map[string]*mtree{}
	}
	m.subs[name] = s
	return s, nil
}

// put sets entry e (by e.Name), replacing whatever had that name.
func (m *mtree) put(e Entry, child *mtree) {
	m.dirty = true
	i, found := slices.BinarySearchFunc(m.entries, e.Name, func(x Entry, n string) int { return strings.Compare(x.Name, n) })
	if found {
		m.entries[i] = e
	} else {
		m.entries = slices.Insert(m.entries, i, e)
	}
	if m.subs == nil {
		m.subs = map[string]*mtree{}
	}
	if child != nil {
		m.subs[e.Name] = child
	} else {
		delete(m.subs, e.Name)
	}
}

func (m *mtree) remove(name string) {
	if i := m.find(name); i >= 0 {
		m.entries = slices.Delete(m.entries, i, i+1)
		delete(m.subs, name)
		m.dirty = true
	}
}

// parent walks to the directory holding the last component of parts,
// creating missing directories with meta's ownership.
func (m *mtree) parent(parts []string, meta Entry) (*mtree, error) {
	cur := m
	for _, name := range parts[:len(parts)-1] {
		i := cur.find(name)
		if i < 0 || cur.entries[i].Type != TypeDir {
			// A missing parent (or a file where a directory now is) becomes a directory.
			d := Entry{Name: name, Type: TypeDir, Mode: 0o755, UID: meta.UID, GID: meta.GID, Mtime: meta.Mtime}
			child := m.empty()
			cur.put(d, child)
			cur = child
			continue
		}
		next, err := cur.sub(name)
		if err != nil {
			return nil, err
		}
		cur.dirty = true
		cur = next
	}
	return cur, nil
}

// apply makes one change.
func (m *mtree) apply(op Op) error {
	parts, err := SplitPath(op.Path)
	if err != nil {
		return err
	}
	name := parts[len(parts)-1]
	if op.Kind == OpDelete {
		// Walk without creating: deleting below a missing directory is a no-op.
		cur := m
		for _, p := range parts[:len(parts)-1] {
			if i := cur.find(p); i < 0 || cur.entries[i].Type != TypeDir {
				return nil
			}
			if cur, err = cur.sub(p); err != nil {
				return err
			}
		}
		cur.remove(name)
		// Mark the path dirty so that totals are recomputed up to the root.
		return m.touch(parts[:len(parts)-1])
	}
	dir, err := m.parent(parts, op.Entry)
	if err != nil {
		return err
	}
	e := op.Entry
	e.Name = name
	switch {
	case e.Type != TypeDir:
		dir.put(e, nil)
	case op.Kind == OpReplace:
		dir.put(e, m.empty())
	default:
		if i := dir.find(name); i >= 0 && dir.entries[i].Type == TypeDir {
			child, err := dir.sub(name)
			if err != nil {
				return err
			}
			child.dirty = true
			dir.put(e, child)
		} else {
			dir.put(e, m.empty())
		}
	}
	return nil
}

// touch marks every directory along parts dirty.
func (m *mtree) touch(parts []string) error {
	cur := m
	cur.dirty = true
	for _, p := range parts {
		next, err := cur.sub(p)
		if err != nil {
			return nil // already gone: nothing below to recompute
		}
		next.dirty = true
		cur = next
	}
	return nil
}

// write stores every dirty directory, bottom-up, and returns the root's
// digest and totals.
func (m *mtree) write() (cas.Digest, int64, int64, error) {
	for i := range m.entries {
		e := &m.entries[i]
		child, ok := m.subs[e.Name]
		if !ok || !child.dirty || e.Type != TypeDir {
			continue
		}
		d, size, count, err := child.write()
		if err != nil {
			return cas.Digest{}, 0, 0, err
		}
		e.Digest, e.Size, e.Count = d, size, count
	}
	t := &Tree{Entries: m.entries}
	size, count := t.Totals()
	d, err := m.store.PutBytes(t.Encode())
	*m.trees = append(*m.trees, d)
	m.dirty = false
	return d, size, count, err
}

// files calls fn for every file below m with its path, loading the whole tree.
func (m *mtree) files(prefix string, fn func(path string, e Entry)) error {
	for _, e := range slices.Clone(m.entries) {
		p := e.Name
		if prefix != "" {
			p = prefix + "/" + e.Name
		}
		switch e.Type {
		case TypeDir:
			s, err := m.sub(e.Name)
			if err != nil {
				return err
			}
			if err := s.files(p, fn); err != nil {
				return err
			}
		default:
			fn(p, e)
		}
	}
	return nil
}

// Empty returns the encoding of a directory with nothing in it.
func Empty() []byte { return (&Tree{}).Encode() }

// Applied is the outcome of Apply.
type Applied struct {
	Root        cas.Digest
	Size, Count int64
	Evicted     int          // files evicted to stay within quota
	Trees       []cas.Digest // tree objects the new root added
}

// Apply applies c on top of the tree at root in s and enforces quota: if the
// result is larger, the files the commit did not touch are evicted, least
// recent first by recency (nil: by mtime). load makes a tree object present
// in s before it is read.
func Apply(s *cas.Store, load func(cas.Digest) error, root cas.Digest, c *Commit, quota int64, recency func(Entry) int64) (Applied, error) {
	var res Applied
	if err := c.Validate(); err != nil {
		return res, err
	}
	if quota > 0 && c.Bytes() > quota {
		return res, fmt.Errorf("%w: %d bytes written, quota %d", ErrTooLarge, c.Bytes(), quota)
	}
	m, err := (&mtree{store: s, load: load, trees: &res.Trees}).open(root)
	if err != nil {
		return res, err
	}
	touched := make(map[string]bool, len(c.Ops))
	for _, op := range c.Ops {
		if err := m.apply(op); err != nil {
			return res, fmt.Errorf("apply %q: %w", op.Path, err)
		}
		touched[op.Path] = true
	}
	res.Root, res.Size, res.Count, err = m.write()
	if err != nil || quota <= 0 || res.Size <= quota {
		return res, err
	}
	if recency == nil {
		recency = func(e Entry) int64 { return e.Mtime }
	}
	if res.Evicted, err = evict(m, res.Size-quota, touched, recency); err != nil {
		return res, err
	}
	res.Root, res.Size, res.Count, err = m.write()
	return res, err
}

// evict deletes files not in keep, least recent first (of files as recent,
// the oldest mtime first), until need bytes are freed.
func evict(m *mtree, need int64, keep map[string]bool, recency func(Entry) int64) (int, error) {
	type victim struct {
		path          string
		recent, mtime int64
		size          int64
	}
	var vs []victim
	err := m.files("", func(p string, e Entry) {
		if !keep[p] && e.Type == TypeFile {
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
